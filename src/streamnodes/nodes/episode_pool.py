"""EpisodePool: N whole episodes in RAM, uniformly random frames across them (docs/nodes.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from torchdata.nodes import BaseNode

from streamnodes.errors import ConfigError, StateError
from streamnodes.nodes._state import check_config, next_epoch, require_keys, shutdown_source
from streamnodes.rng import make_rng, rng_from_state, rng_state, weighted_choice
from streamnodes.sharding import Piece, frame_order
from streamnodes.types import Episode, Frame


class EpisodeLoader(Protocol):
    """Reads one episode by index outside the stream (an :class:`~streamnodes.episode_reader.EpisodeReader`)."""

    def __call__(self, episode_index: int) -> Episode: ...


@dataclass
class _Slot:
    """A resident episode and the piece of it this consumer draws: ``order[next:hi]`` are pending."""

    episode: Episode
    piece: Piece
    order: np.ndarray  # frame_order of the piece's frames [start, stop)
    next: int  # the draw position of the next frame

    @property
    def pending(self) -> int:
        return self.piece.hi - self.next

    def state(self) -> list[int]:
        return [self.piece.episode, self.piece.start, self.piece.stop, self.next, self.piece.hi]


class EpisodePool(BaseNode[Frame]):
    """Keeps ``pool_size`` episodes and emits frames uniformly at random among all pending ones.

    Each episode comes with the part of its frames this consumer draws (its ref's ``part``, a
    :class:`~streamnodes.sharding.Piece`; every frame when ``None``); the whole episode's rows are
    resident, so windows reach past the part. Each draw picks a slot with probability proportional to its
    pending frames (exact integer arithmetic), then that piece's next frame in its fixed random order
    (:func:`~streamnodes.sharding.frame_order`). A drained slot is evicted; the next draw first admits
    the next episode from the source. The epoch ends when the source is exhausted and the pool drained:
    every frame of this consumer's pieces exactly once. ``shuffle=False`` drains one piece at a time in
    storage order.

    Give every consumer its own ``seed`` for the slot draws (the recipes use
    :func:`streamnodes.rng.derive_seed`); ``order_seed`` (default ``seed``) keys the frame orders of
    pieces and must be the same for every consumer for an elastic resume to hand a partly drawn piece
    to another consumer (the recipes pass the stream's seed).

    ``reader`` re-reads an episode by index (the consumer's
    :class:`~streamnodes.episode_reader.EpisodeReader`, the one its EpisodeBatcher reads through):
    a restore re-reads the pooled episodes with it, O(pool).

    State: ``{"source", "epoch", "pool": [[episode_index, start, stop, next, hi], ...] in slot order (each
    slot's piece with its next draw position), "rng", "config"}``.
    """

    SOURCE_KEY = "source"
    EPOCH_KEY = "epoch"
    POOL_KEY = "pool"
    RNG_KEY = "rng"
    CONFIG_KEY = "config"

    def __init__(
        self,
        source: BaseNode[Episode],
        *,
        reader: EpisodeLoader,
        pool_size: int = 64,
        seed: int = 0,
        shuffle: bool = True,
        epoch: int = 0,
        order_seed: int | None = None,
    ) -> None:
        super().__init__()
        if pool_size < 1:
            raise ConfigError(f"EpisodePool: pool_size must be >= 1, got {pool_size}.")
        if not callable(reader):
            raise ConfigError(
                f"EpisodePool: reader must be callable as reader(episode_index) -> Episode (an EpisodeReader), got "
                f"{type(reader).__name__}. Pass the EpisodeReader its EpisodeBatcher reads through."
            )
        self.source = source
        self.reader = reader
        self.pool_size = int(pool_size)
        self.seed = int(seed)
        self.order_seed = self.seed if order_seed is None else int(order_seed)
        self.shuffle = bool(shuffle)
        self.initial_epoch = int(epoch)
        self.epoch: int | None = None
        self._slots: list[_Slot] = []
        self._pending: list[int] = []  # pending frames per slot, in step with _slots (the draw's weights)
        self._total = 0  # sum(self._pending)
        self._rng = make_rng(self.seed, 0, "pool")
        self._source_done = False

    def _config(self) -> dict[str, Any]:
        return {"pool_size": self.pool_size, "seed": self.seed, "order_seed": self.order_seed, "shuffle": self.shuffle}

    def _admit(self, episode: Episode, piece: Piece | None = None) -> None:
        if piece is None:  # admitted from the source: the part ShardSource gave it, or every frame
            ref = episode.ref
            piece = Piece(*ref.part) if ref.part is not None else Piece.whole(ref.episode_index, ref.length)
        order = frame_order(
            piece.stop - piece.start, seed=self.order_seed, epoch=self.epoch or 0, episode_index=piece.episode,
            shuffle=self.shuffle, start=piece.start,
        )
        slot = _Slot(episode, piece, order, piece.lo)
        self._slots.append(slot)
        self._pending.append(slot.pending)
        self._total += slot.pending

    def _clear(self) -> None:
        self._slots = []
        self._pending = []
        self._total = 0

    def reset(self, initial_state: dict[str, Any] | None = None) -> None:
        super().reset(initial_state)
        self._source_done = False
        if initial_state is None:
            self.epoch = next_epoch(None, self.epoch, self.initial_epoch)
            self.source.reset(None)
            self._clear()
            self._rng = make_rng(self.seed, self.epoch, "pool")
            return
        require_keys("EpisodePool", initial_state, (self.SOURCE_KEY, self.EPOCH_KEY, self.POOL_KEY, self.RNG_KEY, self.CONFIG_KEY))
        check_config("EpisodePool", initial_state[self.CONFIG_KEY], self._config())
        self.epoch = int(initial_state[self.EPOCH_KEY])
        self.source.reset(initial_state[self.SOURCE_KEY])
        self._rng = rng_from_state(initial_state[self.RNG_KEY])
        self._clear()
        for entry in initial_state[self.POOL_KEY]:
            if len(entry) != 5:
                raise StateError(
                    f"EpisodePool: pool entry {entry!r} is not [episode_index, start, stop, next, hi]: the state was "
                    "written by another streamnodes version. Start the data stream fresh."
                )
            episode_index, start, stop, nxt, hi = (int(v) for v in entry)
            episode = self.reader(episode_index)
            if not (0 <= start < stop <= episode.ref.length and 0 <= nxt < hi <= stop - start):
                raise StateError(
                    f"EpisodePool: the state says episode {episode_index} has frames [{start}, {stop}) drawn up to "
                    f"{nxt} of {hi}, but it has {episode.ref.length} frames. The state belongs to another dataset."
                )
            self._admit(episode, Piece(episode_index, start, stop, nxt, hi))

    def _fill(self) -> None:
        while len(self._slots) < self.pool_size and not self._source_done:
            try:
                episode = next(self.source)
            except StopIteration:
                self._source_done = True
                break
            self._admit(episode)

    def next(self) -> Frame:
        if len(self._slots) < self.pool_size and not self._source_done:
            self._fill()
        if not self._slots:
            raise StopIteration
        pending = self._pending
        if self.shuffle and len(pending) > 1:
            i = weighted_choice(pending, int(self._rng.integers(self._total)))
        else:
            i = 0
        slot = self._slots[i]
        position = int(slot.order[slot.next])
        slot.next += 1
        self._total -= 1
        if pending[i] == 1:  # drained: evict
            del self._slots[i], pending[i]
        else:
            pending[i] -= 1
        return Frame(slot.episode, position)

    def get_state(self) -> dict[str, Any]:
        return {
            self.SOURCE_KEY: self.source.state_dict(),
            self.EPOCH_KEY: self.epoch,
            self.POOL_KEY: [s.state() for s in self._slots],
            self.RNG_KEY: rng_state(self._rng),
            self.CONFIG_KEY: self._config(),
        }

    def shutdown(self) -> None:
        """Drop the resident episodes (releasing their video handles), then shut the source down."""
        self._clear()
        shutdown_source(self.source)

    @property
    def pending_frames(self) -> int:
        return self._total

    def __repr__(self) -> str:
        return (
            f"EpisodePool(pool_size={self.pool_size}, resident={len(self._slots)}, pending_frames="
            f"{self.pending_frames}, seed={self.seed}, shuffle={self.shuffle}, epoch={self.epoch})"
        )
