"""The IterableDataset bridge: a node graph per DataLoader worker, checkpointed per worker.

``StatefulDataLoader`` saves each worker's ``dataset.state_dict()`` and, on restore, calls the
worker's ``dataset.load_state_dict(state)`` before ``iter(dataset)``. The bridge keeps the state
pending and applies it eagerly in a plain ``__iter__`` (docs/checkpointing.md: applying it lazily inside a
generator, or resetting at exhaustion, replays or loses data at epoch and partial-batch boundaries).
The epoch is explicit: in the state, and set by the loader before each epoch (workers that are not
persistent are rebuilt from the main process's copy every epoch, so a worker-local counter would
be lost).
"""

from __future__ import annotations

import logging
import signal
import sys
import traceback
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any, Protocol

from torch.utils.data import IterableDataset, get_worker_info
from torchdata.nodes import BaseNode

from streamnodes.distributed import Consumer, rank_and_world_size, worker_and_count
from streamnodes.errors import StateError, StreamNodesError
from streamnodes.recipes.state import STATE_VERSION, check_header, write_header

log = logging.getLogger(__name__)

__all__ = ["STATE_VERSION", "NodeIterableDataset"]


class Built(Protocol):
    """What a graph factory returns for one consumer (``BuiltGraph``, ``BuiltMixture``): the node to
    iterate, this epoch's skipped episodes, and the release of its decoders, downloads and files."""

    @property
    def output(self) -> BaseNode: ...

    def skipped(self) -> list[list[object]]: ...

    def shutdown(self) -> None: ...


GraphFactory = Callable[[Consumer, int], Built]
CONSUMER_KEY = "consumer"
GRAPH_KEY = "graph"
SKIPPED_KEY = "skipped"


def _quiet_hang_ups_while_sending() -> None:
    """In a worker: a main process that stops (Ctrl-C) while receiving a batch's file descriptor is not an error.

    A worker hands each batch's shared memory to the main process through multiprocessing's
    resource-sharer thread. If the main process is interrupted mid-transfer, that thread's send fails
    with ``BrokenPipeError`` and multiprocessing prints its traceback through ``sys.excepthook``,
    although nothing is lost (the main process is shutting the worker down). Only that case is logged
    at debug level; every other exception goes to the previous hook.
    """
    previous = sys.excepthook
    if getattr(previous, "_streamnodes_quiet", False):
        return

    def hook(kind: type[BaseException], error: BaseException, tb: TracebackType | None) -> None:
        first = traceback.extract_tb(tb, limit=1) if tb is not None else []
        if issubclass(kind, (BrokenPipeError, ConnectionResetError)) and first and first[0].filename.endswith(
            "resource_sharer.py"
        ):
            log.debug("the main process hung up while receiving a batch (it is stopping): %s", error)
            return
        previous(kind, error, tb)

    hook._streamnodes_quiet = True  # type: ignore[attr-defined]
    sys.excepthook = hook


class WorkerError:
    """A :class:`StreamNodesError` raised in a DataLoader worker, sent to the main process as an item.

    torch re-raises a worker's exception as ``Type("Caught Type in DataLoader worker process N ...
    Original Traceback ...")``: the attributes (path, episode, camera) are lost and the user reads a
    worker traceback. The bridge sends our errors whole instead (they pickle with their attributes),
    and the loader raises the original in the main process (``StreamLoader``).
    """

    __slots__ = ("error",)

    def __init__(self, error: StreamNodesError) -> None:
        self.error = error


def _in_worker() -> bool:
    return get_worker_info() is not None


class _GraphIterator(Iterator[Any]):
    """What ``iter(dataset)`` returns: a thin iterator over the live graph, with no state of its own.

    In a worker, a :class:`StreamNodesError` becomes one :class:`WorkerError` item, then the iterator ends.
    """

    def __init__(self, graph: BaseNode | None, error: StreamNodesError | None = None) -> None:
        self.graph = graph
        self.error = error

    def __iter__(self) -> _GraphIterator:
        return self

    def __next__(self) -> Any:
        if self.error is not None:
            error, self.error, self.graph = self.error, None, None
            return WorkerError(error)
        if self.graph is None:
            raise StopIteration
        try:
            return next(self.graph)
        except StreamNodesError as error:
            if not _in_worker():
                raise
            self.graph = None
            return WorkerError(error)


class NodeIterableDataset(IterableDataset):
    """Runs ``factory(consumer, epoch)`` inside each worker and exposes its state to StatefulDataLoader.

    ``factory`` must be picklable (workers receive a copy). The consumer is this rank and worker;
    rank and world size are resolved when the dataset is made (in the main process, where
    accelerate/torch.distributed/env are visible), the worker when it iterates.

    State (per worker): the header (:mod:`streamnodes.recipes.state`: ``"version", "epoch",
    "consumer": [rank, world, worker, workers], "config": fingerprint``), ``"graph"``: the graph's
    nested node states or None, and ``"skipped"``: this epoch's skipped episodes (``loader.stats()``).
    """

    def __init__(
        self,
        factory: GraphFactory,
        *,
        rank: int | None = None,
        world_size: int | None = None,
        epoch: int = 0,
        config_fingerprint: str = "",
    ) -> None:
        super().__init__()
        self.factory = factory
        self.rank, self.world_size = rank_and_world_size(rank, world_size)
        self.epoch = int(epoch)
        self.config_fingerprint = config_fingerprint
        self._pending: dict[str, Any] | None = None
        self._graph: Built | None = None
        self._consumer: Consumer | None = None
        self._epoch_is_set = True  # the next __iter__ starts self.epoch (not epoch + 1)

    def consumer(self) -> Consumer:
        worker_id, num_workers = worker_and_count()
        return Consumer(self.rank, self.world_size, worker_id, num_workers)

    def set_epoch(self, epoch: int) -> None:
        """Make the next ``iter()`` start ``epoch`` (the loader calls this before every epoch)."""
        self.epoch = int(epoch)
        self._epoch_is_set = True

    def __iter__(self) -> Iterator[Any]:
        if _in_worker():
            # Ctrl-C in a terminal signals the whole process group. The main process handles it and shuts
            # the workers down (done event, then join/terminate); a worker interrupted on its own could
            # die mid-batch or block at exit on a full result pipe, so workers ignore SIGINT.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            _quiet_hang_ups_while_sending()
        try:
            return self._start()
        except StreamNodesError as error:
            if not _in_worker():
                raise
            return _GraphIterator(None, error)

    def _start(self) -> Iterator[Any]:
        consumer = self.consumer()
        state, self._pending = self._pending, None
        if state is not None:
            check_header(
                state, CONSUMER_KEY, _topology(consumer), self.config_fingerprint,
                names=("rank", "world_size", "worker", "num_workers"),
                remedy="Restore each rank's own state file with the same world size and num_workers.",
            )
            self.epoch = int(state["epoch"])
        elif not self._epoch_is_set:  # a persistent worker's next epoch
            self.epoch += 1
        self.shutdown()  # the previous epoch's graph, if any: its decoders, downloads and files
        graph = self.factory(consumer, self.epoch)
        graph.output.reset(state[GRAPH_KEY] if state is not None else None)
        self._epoch_is_set = False
        self._graph, self._consumer = graph, consumer
        return _GraphIterator(graph.output)

    def shutdown(self) -> None:
        """Release the live graph's resources (decoders, downloads, open files); the next iter() builds anew."""
        graph, self._graph = self._graph, None
        if graph is not None:
            graph.shutdown()

    def decode_stats(self) -> dict[str, Any] | None:
        """Counters of this process's live graph's decoding node (``VideoDecode.stats()``: frames, decoder
        cache hits and misses), None before the first ``iter()``. In a DataLoader worker, that worker's
        (``get_worker_info().dataset``); for benchmarks and monitoring."""
        stats = getattr(self._graph.output, "stats", None) if self._graph is not None else None
        return stats() if callable(stats) else None

    def state_dict(self) -> dict[str, Any]:
        if self._pending is not None:
            return self._pending
        consumer = self._consumer or self.consumer()
        graph = self._graph
        return {
            **write_header(self.epoch, CONSUMER_KEY, _topology(consumer), self.config_fingerprint),
            GRAPH_KEY: graph.output.state_dict() if graph is not None else None,
            SKIPPED_KEY: graph.skipped() if graph is not None else [],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not isinstance(state_dict, dict) or GRAPH_KEY not in state_dict or "epoch" not in state_dict:
            raise StateError(
                f"NodeIterableDataset: not a streamnodes dataset state (keys: {sorted(state_dict) if isinstance(state_dict, dict) else type(state_dict).__name__})."
            )
        self._pending = state_dict

    def __repr__(self) -> str:
        return f"NodeIterableDataset(rank={self.rank}/{self.world_size}, epoch={self.epoch}, factory={self.factory!r})"


def _topology(consumer: Consumer) -> list[int]:
    return [consumer.rank, consumer.world_size, consumer.worker_id, consumer.num_workers]
