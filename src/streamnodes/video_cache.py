"""A bounded, refcounted local cache of remote video files (what the Prefetcher hands out).

``VideoCache.acquire(url)`` returns a :class:`CachedVideo` handle at once and starts the download in a
background thread; ``handle.local_path()`` blocks until the local copy is complete. Every handle holds
one reference to its file's cache entry. The file is deleted when its last handle goes away, either by
``handle.release()`` or when the handle is garbage collected: samples buffered downstream (a shuffle
buffer) keep their episode's handles, and so the file, alive after the episode left the pool.

Several episodes usually share one mp4: while any handle on a URL is alive, acquiring it again counts
one more reference and reuses the same local copy (one download per residency).

Disk use is bounded: a download first reserves its file's size (``fs.size``) and waits, in acquisition
order, until the reservation fits within ``max_bytes``. A file larger than ``max_bytes`` fails at once
with :class:`~streamnodes.errors.ConfigError`; a consumer that waits on a file whose download cannot
get space for ``space_timeout_s`` (every cached file still referenced: the pool holds more than
``max_bytes``) gets a ``ConfigError`` saying to raise ``max_bytes`` or lower the pool size.

Local names are unique per residency (``000042-file-007.mp4``); a deleted file is truncated before it
is unlinked, so a decoder that still holds it open (VideoDecode caches decoders by path) does not keep
its bytes on disk. Downloads go to ``.<name>.part`` and are renamed when complete. A failed read is retried from the
byte where it stopped, with exponential backoff; ``retries`` failures in a row without progress raise
:class:`~streamnodes.errors.DownloadError` naming the URL.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import posixpath
import shutil
import tempfile
import threading
import time
import urllib.parse
import weakref
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import fsspec

from streamnodes.errors import ConfigError, DownloadError

__all__ = ["GiB", "MiB", "CachedVideo", "VideoCache"]

log = logging.getLogger(__name__)

MiB = 1024**2
GiB = 1024**3

_PENDING, _WAITING_SPACE, _DOWNLOADING, _READY, _FAILED, _RELEASED = (
    "pending",
    "waiting for space",
    "downloading",
    "ready",
    "failed",
    "released",
)
_POLL_S = 0.05
_GC_AFTER_S = 0.5  # a download blocked on space this long triggers gc.collect() (handles in cycles)


class _Closed(Exception):
    """Internal: the cache was closed or the entry released while its download ran."""


@dataclass(eq=False)
class _Entry:
    url: str
    name: str
    state: str = _PENDING
    refs: int = 0
    size: int | None = None  # bytes, once known
    reserved: int = 0  # bytes of max_bytes this entry holds (file or part file)
    path: str = ""
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)


class _Core:
    """The cache's state, shared by the :class:`VideoCache` front and every handle.

    Locking: one plain (non-reentrant) lock guards the state. Handle finalizers may run in any thread,
    including inside a locked section of the same thread (a garbage collection triggered there), so a
    finalizer never blocks on the lock: it queues the release and drains the queue only if the lock is
    free; whoever holds the lock drains the queue before letting go (:meth:`_locked`).
    """

    def __init__(
        self,
        fs: fsspec.AbstractFileSystem,
        directory: str,
        max_bytes: int,
        num_threads: int,
        retries: int,
        backoff_s: float,
        max_backoff_s: float,
        space_timeout_s: float,
        chunk_bytes: int,
    ) -> None:
        self.fs = fs
        self.directory = directory
        self.max_bytes = max_bytes
        self.num_threads = num_threads
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.space_timeout_s = space_timeout_s
        self.chunk_bytes = chunk_bytes
        self.lock = threading.Lock()
        self.space = threading.Condition(self.lock)
        self.entries: dict[str, _Entry] = {}  # url -> entry, while referenced
        self.space_queue: deque[_Entry] = deque()  # downloads waiting for space, in acquisition order
        self.releases: deque[_Entry] = deque()
        self.thread_name_prefix = f"VideoCache-{os.path.basename(directory)}"
        self.executor = ThreadPoolExecutor(
            max_workers=num_threads, thread_name_prefix=self.thread_name_prefix
        )
        self.worker_threads: set[int] = set()
        self.closed = False
        self.serial = 0
        self.reserved = 0
        self.stalled_since: float | None = None  # since when the head of space_queue cannot reserve
        self.last_gc = 0.0
        self.counters = {
            "acquires": 0,
            "hits": 0,
            "downloads": 0,
            "bytes_downloaded": 0,
            "retries": 0,
            "failures": 0,
            "deleted": 0,
            "cancelled": 0,
            "peak_bytes": 0,
            "wait_s": 0.0,
            "space_wait_s": 0.0,
            "gc_collections": 0,
        }

    # ---- locking ------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self):
        """Hold the lock; on the way out, apply the releases queued meanwhile (every section uses this)."""
        with self.lock:
            try:
                yield
            finally:
                self._drain_locked()
        self._drain()

    def _drain_locked(self) -> None:
        while True:
            try:
                entry = self.releases.popleft()
            except IndexError:
                return
            self._release_locked(entry)

    def _drain(self) -> None:
        while self.releases:
            if not self.lock.acquire(blocking=False):
                return  # the holder drains before releasing the lock
            try:
                self._drain_locked()
            finally:
                self.lock.release()

    def release(self, entry: _Entry) -> None:
        """Drop one reference (called by a handle's finalizer, from any thread)."""
        self.releases.append(entry)
        self._drain()

    def _release_locked(self, entry: _Entry) -> None:
        entry.refs -= 1
        if entry.refs > 0:
            return
        if self.entries.get(entry.url) is entry:
            del self.entries[entry.url]
        if entry.state == _READY:
            self._delete_locked(entry)
            self.counters["deleted"] += 1
        elif entry.state in (_PENDING, _WAITING_SPACE, _DOWNLOADING):
            # The worker notices, removes its part file and returns the reservation.
            entry.state = _RELEASED
            self.counters["cancelled"] += 1
            self.space.notify_all()

    def _delete_locked(self, entry: _Entry) -> None:
        # Truncate first: a decoder still holding the file open (VideoDecode caches decoders by path)
        # would otherwise keep its blocks on disk after the unlink. Names are unique per residency,
        # so no one opens this path again.
        with contextlib.suppress(OSError):
            os.truncate(entry.path, 0)
        with contextlib.suppress(FileNotFoundError):
            os.remove(entry.path)
        self._unreserve_locked(entry)
        entry.state = _RELEASED

    def _unreserve_locked(self, entry: _Entry) -> None:
        self.reserved -= entry.reserved
        entry.reserved = 0
        self.space.notify_all()

    # ---- acquiring ---------------------------------------------------------------------------------
    def acquire(self, url: str) -> _Entry:
        with self._locked():
            if self.closed:
                raise RuntimeError("VideoCache is closed; build a new one (or a new Prefetcher).")
            self.counters["acquires"] += 1
            entry = self.entries.get(url)
            if entry is not None:
                self.counters["hits"] += 1
                entry.refs += 1
                return entry
            self.serial += 1
            base = posixpath.basename(urllib.parse.urlsplit(url).path) or "video"
            entry = _Entry(url=url, name=f"{self.serial:06d}-{base}", refs=1)
            entry.path = os.path.join(self.directory, entry.name)
            self.entries[url] = entry
        self.executor.submit(self._download, entry)
        return entry

    # ---- downloading (worker threads) --------------------------------------------------------------
    def _download(self, entry: _Entry) -> None:
        self.worker_threads.add(threading.get_ident())
        part = os.path.join(self.directory, f".{entry.name}.part")
        try:
            self._check_alive(entry)
            size = self._with_retries(entry, lambda: _file_size(self.fs, entry.url), what="reading the size")
            entry.size = size
            if size is not None:
                self._reserve(entry, size)
            self._fetch(entry, part)
            with self._locked():
                self._check_alive_locked(entry)
                os.replace(part, entry.path)
                entry.state = _READY
                self.counters["downloads"] += 1
            entry.done.set()
        except _Closed:
            self._abandon(entry, part, None)
        except BaseException as e:  # noqa: BLE001 - every failure reaches the consumer via the handle
            self._abandon(entry, part, e)

    def _abandon(self, entry: _Entry, part: str, error: BaseException | None) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.remove(part)
        with self._locked():
            with contextlib.suppress(ValueError):
                self.space_queue.remove(entry)
            self._unreserve_locked(entry)
            if error is not None:
                self.counters["failures"] += 1
                if self.entries.get(entry.url) is entry:
                    del self.entries[entry.url]  # the next acquire tries afresh
                entry.state = _FAILED
            elif entry.state != _RELEASED:
                entry.state = _FAILED
            entry.error = (
                error if error is not None else RuntimeError("VideoCache closed during the download")
            )
        if error is not None and not isinstance(error, ConfigError):
            log.warning("download failed: %s", error)
        entry.done.set()

    def _check_alive(self, entry: _Entry) -> None:
        with self._locked():
            self._check_alive_locked(entry)

    def _check_alive_locked(self, entry: _Entry) -> None:
        # The main thread ends before interpreter exit joins executor threads: stop waiting then.
        if self.closed or entry.state == _RELEASED or not threading.main_thread().is_alive():
            raise _Closed

    def _reserve(self, entry: _Entry, nbytes: int) -> None:
        """Wait (in acquisition order) until ``nbytes`` more fit within ``max_bytes``, then take them."""
        if entry.reserved + nbytes > self.max_bytes:
            raise ConfigError(
                f"{entry.url}: {_human(entry.reserved + nbytes)} does not fit in the video cache "
                f"(max_bytes={_human(self.max_bytes)}). Raise the Prefetcher's max_bytes above the "
                "largest video file of the dataset (several files, as many as the pool holds at once, are best)."
            )
        with self._locked():
            self.space_queue.append(entry)
            started = time.monotonic()
            try:
                while True:
                    self._check_alive_locked(entry)
                    if self.space_queue[0] is entry and self.reserved + nbytes <= self.max_bytes:
                        break
                    entry.state = _WAITING_SPACE
                    now = time.monotonic()
                    if self.stalled_since is None:
                        self.stalled_since = now
                    elif now - self.stalled_since > _GC_AFTER_S:
                        self._collect_locked()
                    self.space.wait(_POLL_S * 4)
            finally:
                with contextlib.suppress(ValueError):
                    self.space_queue.remove(entry)
                self.stalled_since = None  # progress (or a waiter left): the next head starts afresh
                self.space.notify_all()
            entry.reserved += nbytes
            self.reserved += nbytes
            self.counters["peak_bytes"] = max(self.counters["peak_bytes"], self.reserved)
            self.counters["space_wait_s"] += time.monotonic() - started
            entry.state = _DOWNLOADING

    def _collect_locked(self) -> None:
        """Run the garbage collector (without the lock): handles caught in reference cycles free space."""
        now = time.monotonic()
        if now - self.last_gc < _GC_AFTER_S:
            return
        self.last_gc = now
        self.counters["gc_collections"] += 1
        self.lock.release()
        try:
            gc.collect()
        finally:
            self.lock.acquire()
        self._drain_locked()

    def _fetch(self, entry: _Entry, part: str) -> None:
        """Copy ``entry.url`` to ``part``, resuming after failures from the last byte written."""
        with self._locked():
            self._check_alive_locked(entry)
            entry.state = _DOWNLOADING
        done = 0
        failures = 0
        kwargs: dict[str, Any] = {"block_size": self.chunk_bytes, "cache_type": "none"}
        if entry.size and _is_http(self.fs):
            kwargs["size"] = entry.size  # HTTPFileSystem would otherwise ask (HEAD) again
        with open(part, "wb") as out:
            while True:
                try:
                    with self.fs.open(entry.url, "rb", **kwargs) as src:
                        if done:
                            src.seek(done)
                        while True:
                            self._check_alive(entry)
                            want = (
                                self.chunk_bytes
                                if entry.size is None
                                else min(self.chunk_bytes, entry.size - done)
                            )
                            if want <= 0:
                                break
                            chunk = src.read(want)
                            if not chunk:
                                if entry.size is not None and done < entry.size:
                                    raise OSError(f"the server sent {done} of {entry.size} bytes")
                                break
                            if entry.size is None:
                                self._reserve(entry, len(chunk))  # size unknown: reserve as bytes arrive
                            out.write(chunk)
                            done += len(chunk)
                            failures = 0
                            with self._locked():
                                self.counters["bytes_downloaded"] += len(chunk)
                    return
                except _Closed:
                    raise
                except ConfigError:
                    raise
                except Exception as e:  # noqa: BLE001 - network errors come in many types
                    failures += 1
                    self._retry_or_raise(entry, failures, e, what=f"downloading (at byte {done})")

    def _with_retries(self, entry: _Entry, call, what: str) -> Any:
        failures = 0
        while True:
            self._check_alive(entry)
            try:
                return call()
            except Exception as e:  # noqa: BLE001
                failures += 1
                self._retry_or_raise(entry, failures, e, what=what)

    def _retry_or_raise(self, entry: _Entry, failures: int, error: Exception, what: str) -> None:
        if failures > self.retries:
            raise DownloadError(
                f"{entry.url}: {what} failed {failures} times in a row (retries={self.retries}); last error: "
                f"{_describe(error)}. Check the URL and the network, or raise the Prefetcher's retries."
            ) from error
        with self._locked():
            self.counters["retries"] += 1
        delay = min(self.max_backoff_s, self.backoff_s * 2 ** (failures - 1))
        log.debug(
            "%s: %s failed (%s); retry %d/%d in %.2fs", entry.url, what, error, failures, self.retries, delay
        )
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline:
            self._check_alive(entry)
            time.sleep(min(_POLL_S, max(0.0, deadline - time.monotonic())))

    # ---- waiting (consumer threads) ----------------------------------------------------------------
    def wait(self, entry: _Entry, timeout: float | None) -> str:
        start = time.monotonic()
        try:
            while not entry.done.wait(_POLL_S):
                now = time.monotonic()
                if self.closed:
                    raise DownloadError(
                        f"{entry.url}: the VideoCache was closed before the download finished."
                    )
                since = self.stalled_since
                if (
                    entry.state in (_PENDING, _WAITING_SPACE)
                    and since is not None
                    and now - max(since, start) > self.space_timeout_s
                ):
                    raise ConfigError(self._starved_message(entry, now - max(since, start)))
                if timeout is not None and now - start > timeout:
                    raise DownloadError(
                        f"{entry.url}: not downloaded after {timeout:.1f}s ({entry.state}); the network is slow "
                        "or the server stalls. Raise the timeout, or check the server."
                    )
        finally:
            with self._locked():
                self.counters["wait_s"] += time.monotonic() - start
        if entry.state == _READY:
            return entry.path
        if self.closed:
            raise DownloadError(f"{entry.url}: the VideoCache was closed; its local copies are gone.")
        error = entry.error
        if isinstance(error, ConfigError):
            raise ConfigError(str(error)) from error
        if isinstance(error, DownloadError):
            raise DownloadError(str(error)) from error
        raise DownloadError(f"{entry.url}: download failed ({entry.state}): {error}") from error

    def _starved_message(self, entry: _Entry, waited: float) -> str:
        with self._locked():
            held = [e for e in self.entries.values() if e.reserved]
            reserved = self.reserved
        need = entry.size or 0
        return (
            f"{entry.url}: waited {waited:.0f}s for space in the video cache (no download could start): its {len(held)} files "
            f"({_human(reserved)} of max_bytes={_human(self.max_bytes)}) are all still in use by "
            f"episodes in the pool or samples buffered downstream, and this file needs {_human(need)}. "
            f"Raise the Prefetcher's max_bytes (to at least {_human(reserved + need)}) or lower the "
            "pool size (EpisodePool pool_size) or the shuffle buffer."
        )

    # ---- closing ------------------------------------------------------------------------------------
    def close(self) -> None:
        with self._locked():
            if self.closed:
                return
            self.closed = True
            entries = list(self.entries.values())
            self.entries.clear()
            for entry in entries:
                if entry.state == _READY:
                    self._delete_locked(entry)
            self.space.notify_all()
        in_worker = threading.get_ident() in self.worker_threads
        self.executor.shutdown(wait=not in_worker, cancel_futures=True)
        for entry in entries:
            entry.done.set()  # waiters see the closed cache
        shutil.rmtree(self.directory, ignore_errors=True)

    def stats(self) -> dict[str, Any]:
        with self._locked():
            out = dict(self.counters)
            out["current_bytes"] = self.reserved
            out["files"] = sum(1 for e in self.entries.values() if e.state == _READY)
            out["entries"] = len(self.entries)
            out["max_bytes"] = self.max_bytes
        out["wait_s"] = round(out["wait_s"], 4)
        out["space_wait_s"] = round(out["space_wait_s"], 4)
        return out


def _file_size(fs: fsspec.AbstractFileSystem, url: str) -> int | None:
    """The file's size from the file system (``fs.size``, else ``fs.info``), ``None`` if it gives none."""
    try:
        size = fs.size(url)
    except (NotImplementedError, AttributeError):
        size = fs.info(url).get("size")
    return None if size is None else int(size)


def _human(nbytes: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if abs(nbytes) < 1024:
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return f"{nbytes:.2f} GiB"


def _describe(error: BaseException) -> str:
    """``Type: message``, plus the cause (fsspec's HTTP reports a 500 as FileNotFoundError from it)."""
    text = f"{type(error).__name__}: {error}"
    cause = error.__cause__
    if cause is not None:
        text += f" (from {type(cause).__name__}: {cause})"
    return text


def _is_http(fs: fsspec.AbstractFileSystem) -> bool:
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return bool({"http", "https"} & set(protocols))


class CachedVideo:
    """One reference to a cached remote video: a :class:`~streamnodes.types.VideoFile`.

    ``local_path()`` blocks until the local copy exists. The reference ends with ``release()`` or when
    the handle is garbage collected; the file is deleted when its last handle ends. Handles are not
    picklable (they name a file of this process's cache); pickle the URL instead.
    """

    __slots__ = ("url", "_core", "_entry", "_finalizer", "__weakref__")

    def __init__(self, core: _Core, entry: _Entry) -> None:
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
            raise DownloadError(f"{self.url}: this handle was released; acquire the file again.")
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
        state = self._entry.state if self._finalizer.alive else "released"
        return f"CachedVideo({self.url!r}, {state})"


class VideoCache:
    """A local, size-bounded, refcounted download cache of remote (video) files.

    Args:
        fs: the fsspec file system the URLs belong to (``DatasetMeta.fs``).
        cache_dir: parent directory of the cache; each cache makes its own fresh subdirectory in it
            (``None``: the system temp dir), so caches of several DataLoader workers never collide.
        max_bytes: most bytes on disk at once (complete and partial files). Each DataLoader worker has
            its own cache, so the total is ``num_workers * max_bytes``.
        num_threads: parallel downloads.
        retries: failed attempts in a row (without progress) tolerated per file before DownloadError.
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
        retries: int = 5,
        backoff_s: float = 0.2,
        *,
        max_backoff_s: float = 10.0,
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
        return self._core.counters["peak_bytes"]

    @property
    def current_bytes(self) -> int:
        return self._core.reserved

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
            f"VideoCache(dir={self.directory!r}, files={s['files']}, current={_human(s['current_bytes'])}, "
            f"peak={_human(s['peak_bytes'])}, max={_human(s['max_bytes'])}, downloads={s['downloads']}, "
            f"retries={s['retries']}{', closed' if self.closed else ''})"
        )
