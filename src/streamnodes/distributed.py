"""Who am I: rank, world size, DataLoader worker, and the consumer id derived from them.

Resolution order for rank / world size: explicit arguments, then accelerate's state (when an
``Accelerator``/``PartialState`` exists), then ``torch.distributed`` (when initialised), then the
``RANK`` / ``WORLD_SIZE`` environment (set by ``torchrun`` and ``accelerate launch``), else 0 / 1.
Worker id / count come from ``torch.utils.data.get_worker_info()`` unless given.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from streamnodes.errors import ConfigError


@dataclass(frozen=True)
class Consumer:
    """One reader of the stream: a (rank, worker) pair. ``id = rank * num_workers + worker_id``."""

    rank: int = 0
    world_size: int = 1
    worker_id: int = 0
    num_workers: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ConfigError(f"rank {self.rank} is not in [0, world_size={self.world_size}).")
        if not 0 <= self.worker_id < self.num_workers:
            raise ConfigError(f"worker_id {self.worker_id} is not in [0, num_workers={self.num_workers}).")

    @property
    def id(self) -> int:
        return self.rank * self.num_workers + self.worker_id

    @property
    def count(self) -> int:
        return self.world_size * self.num_workers


def rank_and_world_size(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """This process's (rank, world_size), from the arguments or the environment (see module doc)."""
    if rank is not None and world_size is not None:
        return int(rank), int(world_size)
    env = _from_env()
    found = reconcile(_from_accelerate(), env) or _from_torch_distributed() or env or (0, 1)
    return (int(rank) if rank is not None else found[0], int(world_size) if world_size is not None else found[1])


def reconcile(accelerate: tuple[int, int] | None, env: tuple[int, int] | None) -> tuple[int, int] | None:
    """accelerate's (rank, world size), checked against the launcher's ``RANK``/``WORLD_SIZE``.

    A launcher can start several processes while accelerate believes it runs one (on a machine
    without GPUs, ``accelerate launch --multi_gpu`` with an ``Accelerator()`` not built with
    ``cpu=True``). Trusting accelerate then would make every process rank 0 and read the whole
    stream, so every sample would be seen ``world_size`` times: that disagreement is an error.
    """
    if accelerate is None or env is None or accelerate == env:
        return accelerate
    raise ConfigError(
        f"accelerate reports rank {accelerate[0]} of {accelerate[1]} processes, but the launcher set RANK={env[0]}, "
        f"WORLD_SIZE={env[1]}. accelerate did not join the launched processes: on a machine without GPUs build "
        "Accelerator(cpu=True); or pass rank= and world_size= to the loader explicitly."
    )


def _from_accelerate() -> tuple[int, int] | None:
    try:
        from accelerate.state import PartialState
    except ImportError:  # pragma: no cover - accelerate is a dependency
        return None
    if not PartialState._shared_state:  # not created: do not create it (it may init a process group)
        return None
    state = PartialState()
    return state.process_index, state.num_processes


def _from_torch_distributed() -> tuple[int, int] | None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return None


def _from_env() -> tuple[int, int] | None:
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    return None


def worker_and_count(worker_id: int | None = None, num_workers: int | None = None) -> tuple[int, int]:
    """This DataLoader worker's (id, count); (0, 1) in the main process."""
    if worker_id is not None and num_workers is not None:
        return int(worker_id), int(num_workers)
    from torch.utils.data import get_worker_info

    info = get_worker_info()
    found = (info.id, info.num_workers) if info is not None else (0, 1)
    return (
        int(worker_id) if worker_id is not None else found[0],
        int(num_workers) if num_workers is not None else found[1],
    )


def current_consumer(
    rank: int | None = None,
    world_size: int | None = None,
    worker_id: int | None = None,
    num_workers: int | None = None,
) -> Consumer:
    """The :class:`Consumer` this code runs as (explicit arguments win over discovery)."""
    r, w = rank_and_world_size(rank, world_size)
    wid, nw = worker_and_count(worker_id, num_workers)
    return Consumer(rank=r, world_size=w, worker_id=wid, num_workers=nw)
