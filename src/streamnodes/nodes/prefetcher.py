"""Prefetcher: Episode -> Episode whose remote video files are local copies being downloaded.

For a remote dataset (``meta.is_remote``: http, hf, s3 ...) each episode's ``video_files[camera]`` URL
is swapped for a :class:`~streamnodes.video_cache.CachedSpan` handle from a bounded, refcounted
:class:`~streamnodes.video_cache.SpanCache`: only the bytes that decode the episode's frames are fetched
(byte ranges found in the file's own index, read once per file), written as a small mp4 that the decode
path opens and maps frames into (docs/prefetch.md). With ``byte_ranges=False`` the handles are
:class:`~streamnodes.video_cache.CachedVideo` on whole files from a :class:`~streamnodes.video_cache.VideoCache`.
The download starts when the episode passes through,
so it overlaps with the pool drawing frames from the episodes already resident; VideoDecode blocks
in ``resolve_video`` only if the copy is not complete by the time a sample of it leaves the graph.
A whole file is deleted when the last handle on it goes (the episode left the pool and no buffered sample
still refers to it); a span stays on disk, least recently used first out, until its space is needed or the
source is exhausted. For a local dataset the node is a pass-through: same objects, no cache, no thread.
"""

from __future__ import annotations

import os
import weakref
from typing import Any

from torchdata.nodes import BaseNode

from streamnodes.format.metadata import DatasetMeta, EpisodeRef
from streamnodes.nodes._state import require_keys, shutdown_source
from streamnodes.types import Episode
from streamnodes.video_cache import GiB, SpanCache, VideoCache
from streamnodes.video_cache.span_cache import DEFAULT_PROBE_BYTES


class Prefetcher(BaseNode[Episode]):
    """Swaps remote video URLs for handles on local copies downloaded in the background.

    Args:
        source: a node of :class:`~streamnodes.types.Episode` (EpisodeBatcher).
        meta: the dataset; the node acts only when ``meta.is_remote``.
        cache_dir: parent directory of the download cache (each Prefetcher makes its own subdirectory,
            removed on ``close()``); ``None``: the system temp dir.
        max_bytes: most bytes of video on disk at once for this node (so per DataLoader worker). It
            must hold the spans of the largest episode (all cameras; the largest file when a file is
            fetched whole), and should hold ``pool_size`` episodes' spans or the prefetch lookahead
            shortens (nothing stalls); see docs/prefetch.md.
        num_threads: concurrent prefetches per consumer (a decoder waiting on a span no thread has
            started fetches it itself).
        retries: failed attempts in a row per file before :class:`~streamnodes.errors.DownloadError`.
        backoff_s: first retry delay (doubles per failure).
        space_timeout_s: how long VideoDecode may wait on a download that cannot get space before a
            :class:`~streamnodes.errors.ConfigError` says to raise ``max_bytes`` or lower the pool size.
        chunk_bytes: bytes per read (one HTTP range request) of whole files; retries resume at the last chunk.
        byte_ranges: fetch episode spans (default); ``False``: whole files (the VideoCache).
        probe_bytes: first ranged read of each file's index (span mode).
        reach: ``(before, after)``: how many frames before and after a frame its samples decode (the
            video keys' window offsets). With it, an episode split between consumers (``ref.part``)
            fetches only the span of its part's frames widened by the reach (span mode); ``None``:
            always the whole episode.

    State: ``{"source": ...}``; nothing of its own (restored pools re-acquire through their reader,
    which applies :meth:`wrap`).
    """

    SOURCE_KEY = "source"

    def __init__(
        self,
        source: BaseNode[Episode],
        meta: DatasetMeta,
        *,
        cache_dir: str | os.PathLike[str] | None = None,
        max_bytes: int = 2 * GiB,
        num_threads: int = 4,
        retries: int = 5,
        backoff_s: float = 0.2,
        space_timeout_s: float = 60.0,
        chunk_bytes: int = 8 * 1024**2,
        byte_ranges: bool = True,
        probe_bytes: int = DEFAULT_PROBE_BYTES,
        reach: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.source = source
        self.meta = meta
        self.remote = bool(meta.is_remote)
        self.cache_dir = cache_dir
        self.max_bytes = int(max_bytes)
        self.num_threads = int(num_threads)
        self.retries = int(retries)
        self.backoff_s = float(backoff_s)
        self.space_timeout_s = float(space_timeout_s)
        self.chunk_bytes = int(chunk_bytes)
        self.byte_ranges = bool(byte_ranges)
        self.probe_bytes = int(probe_bytes)
        self.reach = (int(reach[0]), int(reach[1])) if reach is not None else None
        self._cache: SpanCache | VideoCache | None = None
        self.episodes_wrapped = 0

    @property
    def cache(self) -> SpanCache | VideoCache | None:
        """The download cache (created on the first remote episode; ``None`` for local datasets)."""
        return self._cache

    def _get_cache(self) -> SpanCache | VideoCache:
        if self._cache is not None and not self._cache.closed:
            return self._cache
        common: dict[str, Any] = {
            "max_bytes": self.max_bytes, "num_threads": self.num_threads, "retries": self.retries,
            "backoff_s": self.backoff_s, "chunk_bytes": self.chunk_bytes,
        }
        if self.byte_ranges:
            self._cache = SpanCache(self.meta.fs, self.cache_dir, probe_bytes=self.probe_bytes, **common)
            # a dropped graph deletes its spans: the finalizer holds the cache, not this node
            weakref.finalize(self, self._cache.close)
        else:
            self._cache = VideoCache(self.meta.fs, self.cache_dir, space_timeout_s=self.space_timeout_s, **common)
        return self._cache

    def reset(self, initial_state: dict[str, Any] | None = None) -> None:
        super().reset(initial_state)
        if initial_state is None:
            self.source.reset(None)
            return
        require_keys("Prefetcher", initial_state, (self.SOURCE_KEY,))
        self.source.reset(initial_state[self.SOURCE_KEY])

    def next(self) -> Episode:
        try:
            episode = next(self.source)
        except StopIteration:
            if isinstance(self._cache, SpanCache):
                self._cache.drain()  # no more episodes: spans go with their last handle, not kept for reuse
            raise
        return self.wrap(episode)

    def wrap(self, episode: Episode) -> Episode:
        """``episode`` with its remote video URLs swapped for handles on local copies (downloads start now).

        The graph factory gives it to the consumer's EpisodeReader (``reader.with_videos(prefetcher.wrap)``)
        so that episodes re-read by a restore hold handles too."""
        if not self.remote or not episode.video_files:
            return episode
        cache = self._get_cache()
        if isinstance(cache, SpanCache):
            first, count = self.frames_to_fetch(episode.ref)
            remote = [
                (camera, location, episode.ref.video(camera).from_timestamp + first / self.meta.fps, count)
                for camera, location in episode.video_files.items()
                if isinstance(location, str)
            ]
            files = {**episode.video_files, **cache.acquire_episode(episode.episode_index, remote)}
        else:
            files = {
                camera: cache.acquire(location) if isinstance(location, str) else location
                for camera, location in episode.video_files.items()
            }
        self.episodes_wrapped += 1
        # A new Episode: the source's object (which it may keep) never holds references into the cache.
        return Episode(ref=episode.ref, columns=episode.columns, video_files=files)

    def frames_to_fetch(self, ref: EpisodeRef) -> tuple[int, int]:
        """``(first frame, frame count)`` of the episode whose video spans are fetched: the part's frames
        widened by ``reach`` (clamped to the episode) when the episode is split and a reach is known,
        else the whole episode."""
        if ref.part is None or self.reach is None:
            return 0, ref.length
        _episode, start, stop, _lo, _hi = ref.part
        first, end = max(0, start - self.reach[0]), min(ref.length, stop + self.reach[1])
        return first, end - first

    def get_state(self) -> dict[str, Any]:
        return {self.SOURCE_KEY: self.source.state_dict()}

    def stats(self) -> dict[str, Any]:
        """Counters for benchmarks: the cache's (downloads, bytes, retries, peak_bytes, wait_s ...)."""
        out: dict[str, Any] = {"remote": self.remote, "episodes_wrapped": self.episodes_wrapped}
        if self._cache is not None:
            out.update(self._cache.stats())
        return out

    def shutdown(self) -> None:
        """Delete the local copies and stop the download threads (handles still alive stop working),
        then shut the source down (torchdata's shutdown chain)."""
        if self._cache is not None:
            self._cache.close()
        shutdown_source(self.source)

    close = shutdown  # the name the first releases used

    def __getstate__(self) -> dict[str, Any]:
        # A copy in another process (a DataLoader worker) makes its own cache on its first episode.
        state = dict(self.__dict__)
        state["_cache"] = None
        return state

    def __repr__(self) -> str:
        if not self.remote:
            return "Prefetcher(local: pass-through)"
        return f"Prefetcher({self._cache!r})"
