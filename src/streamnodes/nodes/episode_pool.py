"""EpisodePool: N whole episodes in RAM, uniformly random frames across them (docs/nodes.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from torchdata.nodes import BaseNode

from streamnodes.errors import ConfigError, StateError
from streamnodes.nodes._state import check_config, next_epoch, require_keys, shutdown_source
from streamnodes.rng import make_rng, rng_from_state, rng_state, weighted_choice
from streamnodes.types import Episode, Frame


class EpisodeLoader(Protocol):
    """Reads one episode by index outside the stream (an :class:`~streamnodes.episode_reader.EpisodeReader`)."""

    def __call__(self, episode_index: int) -> Episode: ...


def frame_order(length: int, *, seed: int, epoch: int, episode_index: int, shuffle: bool) -> np.ndarray:
    """The order a pooled episode's frames are drawn in: a permutation fixed by (seed, epoch, episode).

    Drawing "the next frame of this order" is the same as drawing uniformly among the episode's
    pending frames, and it makes the pending set a counter (``consumed``) instead of a list.
    """
    if not shuffle:
        return np.arange(length)
    return make_rng(seed, epoch, "frame-order", episode_index).permutation(length)


@dataclass
class _Slot:
    episode: Episode
    order: np.ndarray
    consumed: int = 0

    @property
    def pending(self) -> int:
        return self.episode.ref.length - self.consumed


class EpisodePool(BaseNode[Frame]):
    """Keeps ``pool_size`` whole episodes and emits frames uniformly at random among all pending ones.

    Each draw picks a slot with probability proportional to its pending frames (exact integer
    arithmetic), then that episode's next frame in its fixed random order. A drained episode is
    evicted; the next draw first admits the next episode from the source. The epoch ends when the
    source is exhausted and the pool drained: every frame of this consumer's episodes exactly once.
    ``shuffle=False`` drains one episode at a time in storage order.

    Give every consumer its own ``seed`` (the recipes use :func:`streamnodes.rng.derive_seed`).

    ``reader`` re-reads an episode by index (the consumer's
    :class:`~streamnodes.episode_reader.EpisodeReader`, the one its EpisodeBatcher reads through):
    a restore re-reads the pooled episodes with it, O(pool).

    State: ``{"source", "epoch", "pool": [[episode_index, consumed], ...] in slot order, "rng",
    "config"}``.
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
        self.shuffle = bool(shuffle)
        self.initial_epoch = int(epoch)
        self.epoch: int | None = None
        self._slots: list[_Slot] = []
        self._pending: list[int] = []  # pending frames per slot, in step with _slots (the draw's weights)
        self._total = 0  # sum(self._pending)
        self._rng = make_rng(self.seed, 0, "pool")
        self._source_done = False

    def _config(self) -> dict[str, Any]:
        return {"pool_size": self.pool_size, "seed": self.seed, "shuffle": self.shuffle}

    def _admit(self, episode: Episode, consumed: int = 0) -> None:
        order = frame_order(
            episode.ref.length, seed=self.seed, epoch=self.epoch or 0, episode_index=episode.ref.episode_index,
            shuffle=self.shuffle,
        )
        slot = _Slot(episode, order, consumed)
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
        for episode_index, consumed in initial_state[self.POOL_KEY]:
            episode = self.reader(int(episode_index))
            if not 0 <= int(consumed) < episode.ref.length:
                raise StateError(
                    f"EpisodePool: the state says episode {episode_index} has {consumed} frames consumed, but it "
                    f"has {episode.ref.length} frames. The state belongs to another dataset."
                )
            self._admit(episode, int(consumed))

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
        position = int(slot.order[slot.consumed])
        slot.consumed += 1
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
            self.POOL_KEY: [[s.episode.ref.episode_index, s.consumed] for s in self._slots],
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
