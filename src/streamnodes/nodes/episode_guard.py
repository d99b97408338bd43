"""EpisodeGuard: the ``on_error`` policy for damaged episodes, applied where episodes are admitted."""

from __future__ import annotations

import logging
from typing import Any, Literal

import numpy as np
from torchdata.nodes import BaseNode

from streamnodes.decoder_cache import DecoderCache
from streamnodes.errors import ConfigError, StreamNodesError, short_text
from streamnodes.format.metadata import DatasetMeta
from streamnodes.nodes._state import require_keys, shutdown_source
from streamnodes.nodes.video_decode import decode_query
from streamnodes.types import Episode, VideoQuery

log = logging.getLogger(__name__)

OnError = Literal["raise", "skip"]


class EpisodeGuard(BaseNode[Episode]):
    """Admits only episodes that can be read, and with ``on_error="skip"`` skips damaged ones whole.

    Sits right before the pool, so a decision is made before any frame of the episode is emitted:
    a skipped episode is never half-emitted. Checked at admission:

    - reading the episode failed upstream (corrupt or missing data file, row group that disagrees
      with the episodes table, video download that failed after its retries): the source has already
      moved past that episode, so the guard records it and asks for the next one;
    - each camera's first and last frame of the episode decode within ``tolerance_s`` (missing,
      truncated or unopenable mp4, episode beyond the end of its file, timestamps off the video).

    Damage inside an episode that these probes cannot see (a corrupt frame in the middle of an
    otherwise readable file) still raises in VideoDecode: at that point frames of the episode have
    been emitted, and skipping the rest would half-emit it.

    With ``on_error="raise"`` the guard only passes errors through; the recipe omits it then.
    Skips are logged (WARNING, with episode and reason) and counted in the state, so they survive
    a resume and the loader can report them.

    State: ``{"source", "skipped": [[episode_index, reason], ...]}`` (this epoch's skips).
    """

    SOURCE_KEY = "source"
    SKIPPED_KEY = "skipped"

    def __init__(
        self,
        source: BaseNode[Episode],
        meta: DatasetMeta,
        *,
        on_error: OnError = "skip",
        tolerance_s: float = 1e-4,
        download_timeout_s: float | None = None,
    ) -> None:
        super().__init__()
        if on_error not in ("raise", "skip"):
            raise ConfigError(f"on_error must be 'raise' or 'skip', got {on_error!r}.")
        self.source = source
        self.meta = meta
        self.on_error = on_error
        self.tolerance_s = tolerance_s
        self.download_timeout_s = download_timeout_s
        self._cache = DecoderCache(max_decoders=2)
        self._skipped: list[list[Any]] = []

    def reset(self, initial_state: dict[str, Any] | None = None) -> None:
        super().reset(initial_state)
        if initial_state is None:
            self.source.reset(None)
            self._skipped = []
            return
        require_keys("EpisodeGuard", initial_state, (self.SOURCE_KEY, self.SKIPPED_KEY))
        self.source.reset(initial_state[self.SOURCE_KEY])
        self._skipped = [[int(e), str(r)] for e, r in initial_state[self.SKIPPED_KEY]]

    def next(self) -> Episode:
        while True:
            try:
                episode = next(self.source)
            except StreamNodesError as error:
                if self.on_error == "raise":
                    raise
                self._skip(error.episode_index, error)  # set by the reader (or None: unknown)
                continue
            if self.on_error == "raise":
                return episode
            try:
                self._probe(episode)
            except StreamNodesError as error:
                self._skip(episode.ref.episode_index, error)
                continue
            return episode

    def _probe(self, episode: Episode) -> None:
        """Decode each camera's first and last frame of the episode (raises what decoding would)."""
        timestamps = episode.columns.get("timestamp")
        if timestamps is None:  # no cameras to locate (DeltaWindow refuses cameras without timestamps)
            return
        for segment in episode.ref.videos:
            ends = segment.from_timestamp + timestamps[[0, -1]].astype(np.float64)
            query = VideoQuery(segment.key, episode.video_files[segment.key], episode.ref.episode_index, ends)
            decode_query(self._cache, query, tolerance_s=self.tolerance_s, timeout=self.download_timeout_s)

    def _skip(self, episode_index: int | None, error: StreamNodesError) -> None:
        reason = short_text(error, limit=500)
        self._skipped.append([-1 if episode_index is None else int(episode_index), f"{type(error).__name__}: {reason}"])
        log.warning("skipping episode %s (on_error='skip'): %s", episode_index, reason)

    def shutdown(self) -> None:
        """Close the probe decoders, then shut the source down."""
        self._cache.clear()
        shutdown_source(self.source)

    def get_state(self) -> dict[str, Any]:
        return {self.SOURCE_KEY: self.source.state_dict(), self.SKIPPED_KEY: [list(s) for s in self._skipped]}

    @property
    def skipped(self) -> list[tuple[int, str]]:
        """(episode_index, reason) of every episode skipped this epoch."""
        return [(e, r) for e, r in self._skipped]

    def __repr__(self) -> str:
        return f"EpisodeGuard(on_error={self.on_error!r}, skipped={len(self._skipped)})"
