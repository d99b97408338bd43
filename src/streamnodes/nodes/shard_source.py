"""ShardSource: the EpisodeRefs (whole episodes or parts) one consumer (rank x worker) reads in an epoch."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from torchdata.nodes import BaseNode

from streamnodes.distributed import Consumer, current_consumer
from streamnodes.format.metadata import DatasetMeta, EpisodeRef
from streamnodes.nodes._state import check_config, next_epoch, require_keys
from streamnodes.sharding import Piece, Remainder, epoch_share

log = logging.getLogger(__name__)


class ShardSource(BaseNode[EpisodeRef]):
    """Emits this consumer's share of the epoch, in the epoch's order: one EpisodeRef per piece.

    All consumers derive the same global permutation from ``(seed, epoch)`` and cut its frames into
    contiguous shares balanced to one frame (:func:`streamnodes.sharding.plan_epoch`): across
    consumers, every frame exactly once per epoch. An episode on a share boundary is split; its ref's
    ``part`` says which frames are this consumer's (the pool draws only those). ``shuffle=False`` keeps
    storage order.

    ``remainder``: the undelivered rest of an epoch after an elastic resume (docs/checkpointing.md); in
    that epoch its pieces are dealt over the consumers instead of the epoch's own plan.

    Epochs: the first ``reset()`` starts ``epoch``; each later ``reset()`` without a state starts
    the next one (as ``torchdata.nodes.Loader`` does between epochs). The epoch is in the state.

    State: ``{"epoch": int, "offset": episodes emitted this epoch, "config": what must match}``.
    """

    EPOCH_KEY = "epoch"
    OFFSET_KEY = "offset"
    CONFIG_KEY = "config"

    def __init__(
        self,
        meta: DatasetMeta,
        *,
        seed: int = 0,
        shuffle: bool = True,
        epoch: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        worker_id: int | None = None,
        num_workers: int | None = None,
        episodes: Sequence[int] | None = None,
        remainder: Remainder | None = None,
    ) -> None:
        super().__init__()
        self.meta = meta
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.initial_epoch = int(epoch)
        self.consumer: Consumer = current_consumer(rank, world_size, worker_id, num_workers)
        subset = sorted({int(e) for e in episodes}) if episodes is not None else None
        lengths = meta.episode_lengths(subset)  # from the columns: no EpisodeRef per episode
        self._episodes = np.fromiter(lengths.keys(), dtype=np.int64, count=len(lengths))
        self._lengths = np.fromiter(lengths.values(), dtype=np.int64, count=len(lengths))
        order = np.argsort(self._episodes, kind="stable")
        self._episodes, self._lengths = self._episodes[order], self._lengths[order]
        self.episode_subset = subset
        self.remainder = remainder
        self.epoch: int | None = None
        self._offset = 0
        self._mine: Sequence[Piece] = ()  # this consumer's pieces this epoch; refs are made one at a time

    def share(self, epoch: int) -> Sequence[Piece]:
        """This consumer's pieces in ``epoch``: the remainder's deal in its epoch, else the epoch's own
        deal made from the episode columns (no object per episode)."""
        if self.remainder is not None and self.remainder.epoch == epoch:
            return self.remainder.deal(self.consumer.count)[self.consumer.id]
        return epoch_share(
            self._episodes, self._lengths, seed=self.seed, epoch=epoch, shuffle=self.shuffle,
            num_consumers=self.consumer.count, consumer=self.consumer.id,
        )

    def _config(self) -> dict[str, Any]:
        c = self.consumer
        return {
            "dataset": self.meta.fingerprint,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "episodes": self.episode_subset,
            "consumer": [c.rank, c.world_size, c.worker_id, c.num_workers],
            "remainder": _digest(self.remainder),
        }

    def reset(self, initial_state: dict[str, Any] | None = None) -> None:
        super().reset(initial_state)
        if initial_state is not None:
            require_keys("ShardSource", initial_state, (self.EPOCH_KEY, self.OFFSET_KEY, self.CONFIG_KEY))
            check_config("ShardSource", initial_state[self.CONFIG_KEY], self._config())
        self.epoch = next_epoch(initial_state[self.EPOCH_KEY] if initial_state is not None else None, self.epoch, self.initial_epoch)
        self._offset = int(initial_state[self.OFFSET_KEY]) if initial_state is not None else 0
        self._mine = self.share(self.epoch)
        if not self._mine:
            msg = (
                f"ShardSource: consumer {self.consumer.id} (rank {self.consumer.rank}, worker "
                f"{self.consumer.worker_id}) has no frames in epoch {self.epoch}: {self.consumer.count} consumers "
                f"share {int(self._lengths.sum())} frames. Use fewer workers or ranks."
            )
            warnings.warn(msg, stacklevel=2)
            log.warning(msg)

    def next(self) -> EpisodeRef:
        if self._offset >= len(self._mine):
            raise StopIteration
        piece = self._mine[self._offset]
        self._offset += 1
        ref = self.meta.episode(piece.episode)
        return ref if piece == Piece.whole(piece.episode, ref.length) else dataclasses.replace(ref, part=piece)

    def get_state(self) -> dict[str, Any]:
        return {self.EPOCH_KEY: self.epoch, self.OFFSET_KEY: self._offset, self.CONFIG_KEY: self._config()}

    def __repr__(self) -> str:
        c = self.consumer
        return (
            f"ShardSource(consumer={c.id}/{c.count} (rank {c.rank}/{c.world_size}, worker {c.worker_id}/"
            f"{c.num_workers}), episodes={len(self._episodes)}, seed={self.seed}, shuffle={self.shuffle}, "
            f"epoch={self.epoch}, offset={self._offset})"
        )


def _digest(remainder: Remainder | None) -> str | None:
    """A short fingerprint of an elastic remainder (a state saved in a re-dealt epoch needs the same one)."""
    if remainder is None:
        return None
    return hashlib.sha256(repr(remainder.to_state()).encode()).hexdigest()[:16]
