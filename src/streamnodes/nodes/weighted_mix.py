"""WeightedMix: interleave several sources, each giving exactly its count of items per epoch (docs/mixtures.md)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, TypeVar

from torchdata.nodes import BaseNode

from streamnodes.errors import ConfigError, StateError
from streamnodes.nodes._state import check_config, next_epoch, require_keys, shutdown_source
from streamnodes.rng import make_rng, rng_from_state, rng_state, weighted_choice

log = logging.getLogger(__name__)

T = TypeVar("T")


class WeightedMix(BaseNode[T]):
    """Per epoch, source ``i`` gives exactly ``counts[i]`` items, interleaved at random.

    Each draw picks source ``i`` with probability ``remaining[i] / sum(remaining)`` (exact integer
    arithmetic, :func:`streamnodes.rng.weighted_choice`) and passes that source's next item on. That is
    a uniformly random interleaving of the sources' streams: every position of the epoch comes from
    source ``i`` with probability ``counts[i] / sum(counts)``, and the epoch has ``sum(counts)`` items
    whatever the draws, so its length is known from metadata (equal batches per rank).

    A source that ends before giving its count (episodes skipped with ``on_error="skip"``) is dropped
    for the rest of the epoch, with a log line; the epoch is then that much shorter.

    The counts belong to one epoch (the recipe builds a node per epoch from
    :func:`streamnodes.mixing.mix_counts`); ``seed`` should differ per consumer.

    State: ``{"sources": [each source's state], "remaining": [...], "epoch", "rng", "config"}``.
    """

    SOURCES_KEY = "sources"
    REMAINING_KEY = "remaining"
    EPOCH_KEY = "epoch"
    RNG_KEY = "rng"
    CONFIG_KEY = "config"

    def __init__(self, sources: Sequence[BaseNode[T]], counts: Sequence[int], *, seed: int = 0, epoch: int = 0) -> None:
        super().__init__()
        if not sources or len(sources) != len(counts):
            raise ConfigError(f"WeightedMix: give one count per source (got {len(sources)} sources, {len(counts)} counts).")
        if any(isinstance(c, bool) or int(c) != c or c < 0 for c in counts):
            raise ConfigError(f"WeightedMix: counts must be integers >= 0, got {list(counts)}.")
        self.sources = list(sources)
        self.counts = [int(c) for c in counts]
        self.seed = int(seed)
        self.initial_epoch = int(epoch)
        self.epoch: int | None = None
        self._remaining = list(self.counts)
        self._total = sum(self._remaining)
        self._rng = make_rng(self.seed, self.initial_epoch, "mix")

    def _config(self) -> dict[str, Any]:
        return {"counts": self.counts, "seed": self.seed}

    def reset(self, initial_state: dict[str, Any] | None = None) -> None:
        super().reset(initial_state)
        if initial_state is None:
            self.epoch = next_epoch(None, self.epoch, self.initial_epoch)
            for source in self.sources:
                source.reset(None)
            self._remaining = list(self.counts)
            self._rng = make_rng(self.seed, self.epoch, "mix")
        else:
            keys = (self.SOURCES_KEY, self.REMAINING_KEY, self.EPOCH_KEY, self.RNG_KEY, self.CONFIG_KEY)
            require_keys("WeightedMix", initial_state, keys)
            check_config("WeightedMix", initial_state[self.CONFIG_KEY], self._config())
            remaining = [int(r) for r in initial_state[self.REMAINING_KEY]]
            states = initial_state[self.SOURCES_KEY]
            if len(states) != len(self.sources) or any(not 0 <= r <= c for r, c in zip(remaining, self.counts, strict=True)):
                raise StateError(
                    f"WeightedMix: the state has remaining counts {remaining} for counts {self.counts}; it was saved "
                    "by another mixture. Restore a state saved by the same pipeline."
                )
            self.epoch = int(initial_state[self.EPOCH_KEY])
            for source, state in zip(self.sources, states, strict=True):
                source.reset(state)
            self._remaining = remaining
            self._rng = rng_from_state(initial_state[self.RNG_KEY])
        self._total = sum(self._remaining)

    def next(self) -> T:
        while self._total > 0:
            i = weighted_choice(self._remaining, int(self._rng.integers(self._total))) if len(self.sources) > 1 else 0
            try:
                item = next(self.sources[i])
            except StopIteration:
                log.warning(
                    "WeightedMix: source %d ended %d items before its count of %d this epoch (skipped episodes?); "
                    "the epoch goes on without it", i, self._remaining[i], self.counts[i],
                )  # fmt: skip
                self._total -= self._remaining[i]
                self._remaining[i] = 0
                continue
            self._remaining[i] -= 1
            self._total -= 1
            return item
        raise StopIteration

    def get_state(self) -> dict[str, Any]:
        return {
            self.SOURCES_KEY: [source.state_dict() for source in self.sources],
            self.REMAINING_KEY: list(self._remaining),
            self.EPOCH_KEY: self.epoch,
            self.RNG_KEY: rng_state(self._rng),
            self.CONFIG_KEY: self._config(),
        }

    def shutdown(self) -> None:
        """Shut every source down (torchdata's shutdown chain)."""
        for source in self.sources:
            shutdown_source(source)

    def __repr__(self) -> str:
        return f"WeightedMix(sources={len(self.sources)}, counts={self.counts}, remaining={self._remaining}, epoch={self.epoch})"
