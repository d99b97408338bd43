"""The IterableDataset bridge: a node graph per DataLoader worker, checkpointed per worker.

``StatefulDataLoader`` saves each worker's ``dataset.state_dict()`` and, on restore, calls the
worker's ``dataset.load_state_dict(state)`` before ``iter(dataset)``. The bridge keeps the state
pending and applies it eagerly in a plain ``__iter__`` (DESIGN §9: applying it lazily inside a
generator, or resetting at exhaustion, replays or loses data at epoch and partial-batch boundaries).
The epoch is explicit: in the state, and set by the loader before each epoch (workers that are not
persistent are rebuilt from the main process's copy every epoch, so a worker-local counter would
be lost).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from torch.utils.data import IterableDataset
from torchdata.nodes import BaseNode

from streamnodes.distributed import Consumer, rank_and_world_size, worker_and_count
from streamnodes.errors import StateError

log = logging.getLogger(__name__)

STATE_VERSION = 1
GraphFactory = Callable[[Consumer, int], BaseNode]


class _GraphIterator(Iterator[Any]):
    """What ``iter(dataset)`` returns: a thin iterator over the live graph, with no state of its own."""

    def __init__(self, graph: BaseNode) -> None:
        self.graph = graph

    def __iter__(self) -> _GraphIterator:
        return self

    def __next__(self) -> Any:
        return next(self.graph)


class NodeIterableDataset(IterableDataset):
    """Runs ``factory(consumer, epoch)`` inside each worker and exposes its state to StatefulDataLoader.

    ``factory`` must be picklable (workers receive a copy). The consumer is this rank and worker;
    rank and world size are resolved when the dataset is made (in the main process, where
    accelerate/torch.distributed/env are visible), the worker when it iterates.

    State (per worker): ``{"version", "epoch", "consumer": [rank, world, worker, workers],
    "config": fingerprint, "graph": the graph's nested node states or None}``.
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
        self._graph: BaseNode | None = None
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
        consumer = self.consumer()
        state, self._pending = self._pending, None
        if state is not None:
            self._check(state, consumer)
            self.epoch = int(state["epoch"])
            graph = self.factory(consumer, self.epoch)
            graph.reset(state["graph"])
        else:
            if not self._epoch_is_set:  # a persistent worker's next epoch
                self.epoch += 1
            graph = self.factory(consumer, self.epoch)
            graph.reset(None)
        self._epoch_is_set = False
        self._graph, self._consumer = graph, consumer
        return _GraphIterator(graph)

    def state_dict(self) -> dict[str, Any]:
        if self._pending is not None:
            return self._pending
        consumer = self._consumer or self.consumer()
        return {
            "version": STATE_VERSION,
            "epoch": self.epoch,
            "consumer": [consumer.rank, consumer.world_size, consumer.worker_id, consumer.num_workers],
            "config": self.config_fingerprint,
            "graph": self._graph.state_dict() if self._graph is not None else None,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not isinstance(state_dict, dict) or "graph" not in state_dict or "epoch" not in state_dict:
            raise StateError(
                f"NodeIterableDataset: not a streamnodes dataset state (keys: {sorted(state_dict) if isinstance(state_dict, dict) else type(state_dict).__name__})."
            )
        self._pending = state_dict

    def _check(self, state: dict[str, Any], consumer: Consumer) -> None:
        if state.get("version") != STATE_VERSION:
            raise StateError(
                f"the loader state has version {state.get('version')!r}; this streamnodes writes version {STATE_VERSION}. "
                "States do not carry over between these versions: start the data stream fresh."
            )
        saved = state.get("consumer")
        now = [consumer.rank, consumer.world_size, consumer.worker_id, consumer.num_workers]
        if saved != now:
            raise StateError(
                f"the loader state was saved by consumer [rank, world_size, worker, num_workers] = {saved}; it is "
                f"being restored into {now}. Restore each rank's own state file with the same world size and "
                "num_workers."
            )
        if state.get("config") != self.config_fingerprint:
            raise StateError(
                "the loader state was saved with another stream configuration (seed, pool size, shuffle buffer, "
                "delta_timestamps, shuffle or episode subset differ). Build the loader with the saved settings to resume."
            )

    def __repr__(self) -> str:
        return f"NodeIterableDataset(rank={self.rank}/{self.world_size}, epoch={self.epoch}, factory={self.factory!r})"
