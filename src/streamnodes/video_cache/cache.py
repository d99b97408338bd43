"""The :class:`VideoCache` front: validates its settings, makes the cache directory, hands out handles."""

from __future__ import annotations

import os
import tempfile
import weakref
from typing import Any

import fsspec

from streamnodes.errors import ConfigError
from streamnodes.format.retry import BACKOFF_S, MAX_BACKOFF_S, RETRIES
from streamnodes.video_cache.core import _Core
from streamnodes.video_cache.handle import CachedVideo
from streamnodes.video_cache.space import human

__all__ = ["GiB", "MiB", "VideoCache"]

MiB = 1024**2
GiB = 1024**3


class VideoCache:
    """A local, size-bounded, refcounted download cache of remote (video) files.

    Args:
        fs: the fsspec file system the URLs belong to (``DatasetMeta.fs``).
        cache_dir: parent directory of the cache; each cache makes its own fresh subdirectory in it
            (``None``: the system temp dir), so caches of several DataLoader workers never collide.
        max_bytes: most bytes on disk at once (complete and partial files). Each DataLoader worker has
            its own cache, so the total is ``num_workers * max_bytes``.
        num_threads: parallel downloads.
        retries: transient failures in a row (without progress) tolerated per read before DownloadError
            (the project's retry policy, :mod:`streamnodes.format.retry`; a permanent error fails at once).
        backoff_s: first retry delay; doubles per failure up to ``max_backoff_s``.
        space_timeout_s: how long ``local_path`` waits on a download blocked for space before it
            raises ConfigError (the pool holds more than ``max_bytes``).
        chunk_bytes: bytes per read (one HTTP range request each); a retry resumes at a chunk boundary.

    Usable as a context manager; ``close()`` deletes every file and stops the threads.
    """

    def __init__(
        self,
        fs: fsspec.AbstractFileSystem,
        cache_dir: str | os.PathLike[str] | None = None,
        max_bytes: int = 2 * GiB,
        num_threads: int = 4,
        retries: int = RETRIES,
        backoff_s: float = BACKOFF_S,
        *,
        max_backoff_s: float = MAX_BACKOFF_S,
        space_timeout_s: float = 60.0,
        chunk_bytes: int = 8 * MiB,
    ) -> None:
        if int(max_bytes) <= 0:
            raise ConfigError(f"VideoCache: max_bytes must be > 0, got {max_bytes}.")
        if int(num_threads) < 1:
            raise ConfigError(f"VideoCache: num_threads must be >= 1, got {num_threads}.")
        if int(retries) < 0:
            raise ConfigError(f"VideoCache: retries must be >= 0, got {retries}.")
        if int(chunk_bytes) < 1:
            raise ConfigError(f"VideoCache: chunk_bytes must be >= 1, got {chunk_bytes}.")
        parent = None if cache_dir is None else os.fspath(cache_dir)
        if parent is not None:
            os.makedirs(parent, exist_ok=True)
        directory = tempfile.mkdtemp(prefix="streamnodes-videos-", dir=parent)
        self._core = _Core(
            fs=fs,
            directory=directory,
            max_bytes=int(max_bytes),
            num_threads=int(num_threads),
            retries=int(retries),
            backoff_s=float(backoff_s),
            max_backoff_s=float(max_backoff_s),
            space_timeout_s=float(space_timeout_s),
            chunk_bytes=int(chunk_bytes),
        )
        self._finalizer = weakref.finalize(self, self._core.close)

    @property
    def directory(self) -> str:
        """Where the local copies live (removed by ``close()``)."""
        return self._core.directory

    @property
    def max_bytes(self) -> int:
        return self._core.max_bytes

    @property
    def closed(self) -> bool:
        return self._core.closed

    def acquire(self, url: str) -> CachedVideo:
        """A handle on ``url``'s local copy; starts its download unless a live handle already holds it."""
        return CachedVideo(self._core, self._core.acquire(url))

    def stats(self) -> dict[str, Any]:
        """Counters: acquires, hits, downloads, bytes_downloaded, retries, failures, deleted, cancelled,
        peak_bytes, current_bytes, files, entries, max_bytes, wait_s (consumers blocked in local_path),
        space_wait_s (downloads blocked for space), gc_collections."""
        return self._core.stats()

    @property
    def downloads(self) -> int:
        return self._core.counters["downloads"]

    @property
    def bytes_downloaded(self) -> int:
        return self._core.counters["bytes_downloaded"]

    @property
    def retries(self) -> int:
        return self._core.counters["retries"]

    @property
    def peak_bytes(self) -> int:
        return self._core.space.peak

    @property
    def current_bytes(self) -> int:
        return self._core.space.used

    @property
    def files(self) -> int:
        return self.stats()["files"]

    def close(self) -> None:
        """Delete every local copy and the cache directory, stop the download threads (idempotent).

        Handles still alive afterwards raise DownloadError from ``local_path``.
        """
        self._finalizer()

    def __enter__(self) -> VideoCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        s = self.stats()
        return (
            f"VideoCache(dir={self.directory!r}, files={s['files']}, current={human(s['current_bytes'])}, "
            f"peak={human(s['peak_bytes'])}, max={human(s['max_bytes'])}, downloads={s['downloads']}, "
            f"retries={s['retries']}{', closed' if self.closed else ''})"
        )
