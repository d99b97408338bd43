"""FrameShuffle: a shuffle buffer that resumes exactly (nothing dropped, nothing repeated)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torchdata.nodes import BaseNode

from streamnodes.errors import ConfigError, StateError
from streamnodes.nodes._state import check_config, next_epoch, require_keys, shutdown_source
from streamnodes.rng import make_rng, rng_from_state, rng_state
from streamnodes.types import Sample

Rebuild = Callable[[Sequence[tuple[int, int]]], list[Sample]]


class FrameShuffle(BaseNode[Sample]):
    """Keeps ``buffer_size`` samples and emits a uniformly random one, refilling from the source.

    Unlike a shuffle buffer that is lost on resume, the state lists the buffered samples by ref
    ``[episode_index, frame_index]`` and restore rebuilds them with ``rebuild(refs)`` (given by whoever
    builds the graph: ``DeltaWindow.rebuilder(reader)`` re-reads each episode once through the
    consumer's EpisodeReader and cuts the windows again): O(buffer) episode reads, nothing replayed,
    nothing dropped.

    State: ``{"source", "epoch", "buffer": [[episode_index, frame_index], ...], "rng", "config"}``.
    """

    SOURCE_KEY = "source"
    EPOCH_KEY = "epoch"
    BUFFER_KEY = "buffer"
    RNG_KEY = "rng"
    CONFIG_KEY = "config"

    def __init__(
        self,
        source: BaseNode[Sample],
        *,
        rebuild: Rebuild,
        buffer_size: int,
        seed: int = 0,
        epoch: int = 0,
    ) -> None:
        super().__init__()
        if buffer_size < 1:
            raise ConfigError(f"FrameShuffle: buffer_size must be >= 1, got {buffer_size}.")
        if not callable(rebuild):
            raise ConfigError(
                f"FrameShuffle: rebuild must be callable as rebuild(refs) -> samples, got {type(rebuild).__name__}. "
                "Pass DeltaWindow.rebuilder(reader)."
            )
        self.source = source
        self.rebuild = rebuild
        self.buffer_size = int(buffer_size)
        self.seed = int(seed)
        self.initial_epoch = int(epoch)
        self.epoch: int | None = None
        self._buffer: list[Sample] = []
        self._rng = make_rng(self.seed, 0, "frame-shuffle")
        self._source_done = False

    def _config(self) -> dict[str, Any]:
        return {"buffer_size": self.buffer_size, "seed": self.seed}

    def reset(self, initial_state: dict[str, Any] | None = None) -> None:
        super().reset(initial_state)
        self._source_done = False
        if initial_state is None:
            self.epoch = next_epoch(None, self.epoch, self.initial_epoch)
            self.source.reset(None)
            self._buffer = []
            self._rng = make_rng(self.seed, self.epoch, "frame-shuffle")
            return
        require_keys("FrameShuffle", initial_state, (self.SOURCE_KEY, self.EPOCH_KEY, self.BUFFER_KEY, self.RNG_KEY, self.CONFIG_KEY))
        check_config("FrameShuffle", initial_state[self.CONFIG_KEY], self._config())
        refs = [(int(e), int(f)) for e, f in initial_state[self.BUFFER_KEY]]
        if len(refs) > self.buffer_size:
            raise StateError(f"FrameShuffle: the state buffers {len(refs)} samples, more than buffer_size={self.buffer_size}.")
        self.epoch = int(initial_state[self.EPOCH_KEY])
        self.source.reset(initial_state[self.SOURCE_KEY])
        self._rng = rng_from_state(initial_state[self.RNG_KEY])
        self._buffer = self.rebuild(refs)

    def next(self) -> Sample:
        while len(self._buffer) < self.buffer_size and not self._source_done:
            try:
                self._buffer.append(next(self.source))
            except StopIteration:
                self._source_done = True
        if not self._buffer:
            raise StopIteration
        i = int(self._rng.integers(len(self._buffer)))
        item = self._buffer[i]
        last = self._buffer.pop()
        if i < len(self._buffer):
            self._buffer[i] = last
        return item

    def get_state(self) -> dict[str, Any]:
        return {
            self.SOURCE_KEY: self.source.state_dict(),
            self.EPOCH_KEY: self.epoch,
            self.BUFFER_KEY: [[s.episode_index, s.frame_index] for s in self._buffer],
            self.RNG_KEY: rng_state(self._rng),
            self.CONFIG_KEY: self._config(),
        }

    def shutdown(self) -> None:
        """Drop the buffered samples (releasing their video handles), then shut the source down."""
        self._buffer = []
        shutdown_source(self.source)

    def __repr__(self) -> str:
        return f"FrameShuffle(buffer_size={self.buffer_size}, buffered={len(self._buffer)}, seed={self.seed}, epoch={self.epoch})"
