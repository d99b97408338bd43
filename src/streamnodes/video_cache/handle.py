"""The handle a :class:`~streamnodes.video_cache.VideoCache` hands out: one reference to one cached file."""

from __future__ import annotations

import weakref

from streamnodes.errors import DownloadError
from streamnodes.video_cache.core import _Core
from streamnodes.video_cache.entries import Entry

__all__ = ["CachedVideo"]


class CachedVideo:
    """One reference to a cached remote video: a :class:`~streamnodes.types.VideoFile`.

    ``local_path()`` blocks until the local copy exists. The reference ends with ``release()`` or when
    the handle is garbage collected; the file is deleted when its last handle ends. Handles are not
    picklable (they name a file of this process's cache); pickle the URL instead.
    """

    __slots__ = ("url", "_core", "_entry", "_finalizer", "__weakref__")

    def __init__(self, core: _Core, entry: Entry) -> None:
        self.url = entry.url
        self._core = core
        self._entry = entry
        self._finalizer = weakref.finalize(self, core.release, entry)

    def local_path(self, timeout: float | None = None) -> str:
        """The local file's path, once downloaded (blocks; ``timeout`` in seconds, ``None``: no limit).

        Raises:
            DownloadError: the download failed after the allowed retries (or timed out); names the URL.
            ConfigError: the file can never fit in ``max_bytes``, or waits for space that every cached,
                still referenced file holds (raise ``max_bytes`` or lower the pool size).
        """
        if not self._finalizer.alive:
            raise DownloadError(f"{self.url}: this handle was released; acquire the file again.", path=self.url)
        return self._core.wait(self._entry, timeout)

    @property
    def ready(self) -> bool:
        """True when ``local_path()`` would return at once (downloaded, or failed)."""
        return self._entry.done.is_set()

    def release(self) -> None:
        """Drop this reference now (idempotent). The file is deleted if no other handle holds it."""
        self._finalizer()

    def __reduce__(self):
        raise TypeError(
            f"CachedVideo({self.url}) is a reference into one process's download cache and cannot be pickled; "
            "build the pipeline (and its Prefetcher) inside each worker, or pass the URL."
        )

    def __repr__(self) -> str:
        state = self._entry.state.value if self._finalizer.alive else "released"
        return f"CachedVideo({self.url!r}, {state})"
