"""The cache's shared state and its threads: who holds the lock, runs the downloads, waits, counts.

The parts it coordinates are small and lock-free on their own: :class:`~.entries.EntryTable`
(references and entry states), :class:`~.space.SpaceBudget` (bytes against ``max_bytes``, in
acquisition order), :mod:`.download` (copying through the project's retry policy) and
:class:`~.locking.DeferringLock` (releases from finalizers in any thread).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import fsspec

from streamnodes.errors import ConfigError, DownloadError
from streamnodes.format.retry import reresolve_url, with_retries
from streamnodes.video_cache.download import copy_sized, copy_unsized, file_size
from streamnodes.video_cache.entries import Entry, EntryState, EntryTable, Release
from streamnodes.video_cache.locking import DeferringLock
from streamnodes.video_cache.space import SpaceBudget, human

log = logging.getLogger("streamnodes.video_cache")

_POLL_S = 0.05
_GC_AFTER_S = 0.5  # a download blocked on space this long triggers gc.collect() (handles in cycles)


class _Closed(Exception):
    """Internal: the cache was closed or the entry released while its download ran."""


def _new_counters() -> dict[str, Any]:
    return {
        "acquires": 0,
        "hits": 0,
        "downloads": 0,
        "bytes_downloaded": 0,
        "retries": 0,
        "failures": 0,
        "deleted": 0,
        "cancelled": 0,
        "wait_s": 0.0,
        "space_wait_s": 0.0,
        "gc_collections": 0,
    }


def _delete_file(path: str) -> None:
    # Truncate first: a decoder still holding the file open (VideoDecode caches decoders by path)
    # would otherwise keep its blocks on disk after the unlink. Names are unique per residency,
    # so no one opens this path again.
    with contextlib.suppress(OSError):
        os.truncate(path, 0)
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


class _Core:
    """The cache's state, shared by the :class:`VideoCache` front and every handle.

    Every section that reads or changes the table, the budget or the counters holds ``self.lock``.
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
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.space_timeout_s = space_timeout_s
        self.chunk_bytes = chunk_bytes
        self.lock: DeferringLock[Entry] = DeferringLock(self._release_held)
        self.table = EntryTable(directory)
        self.space = SpaceBudget(max_bytes)
        self.thread_name_prefix = f"VideoCache-{os.path.basename(directory)}"
        self.executor = ThreadPoolExecutor(max_workers=num_threads, thread_name_prefix=self.thread_name_prefix)
        self.worker_threads: set[int] = set()
        self.closed = False
        self.stalled_since: float | None = None  # since when the first download in line cannot reserve
        self.last_gc = 0.0
        self.counters = _new_counters()

    @property
    def max_bytes(self) -> int:
        return self.space.max_bytes

    # ---- references ---------------------------------------------------------------------------------
    def acquire(self, url: str) -> Entry:
        with self.lock.held():
            if self.closed:
                raise RuntimeError("VideoCache is closed; build a new one (or a new Prefetcher).")
            self.counters["acquires"] += 1
            entry, hit = self.table.acquire(url)
            if hit:
                self.counters["hits"] += 1
                return entry
        self.executor.submit(self._download, entry)
        return entry

    def release(self, entry: Entry) -> None:
        """Drop one reference (a handle's finalizer, from any thread: never blocks)."""
        self.lock.defer(entry)

    def _release_held(self, entry: Entry) -> None:
        outcome = self.table.release(entry)
        if outcome is Release.DELETE:
            _delete_file(entry.path)
            self._free_held(entry)
            self.counters["deleted"] += 1
        elif outcome is Release.CANCEL:  # the worker notices, removes its part file and frees the space
            self.counters["cancelled"] += 1
            self.lock.cond.notify_all()

    def _free_held(self, entry: Entry) -> None:
        self.space.release(entry)
        self.lock.cond.notify_all()

    # ---- downloading (worker threads) ---------------------------------------------------------------
    def _download(self, entry: Entry) -> None:
        self.worker_threads.add(threading.get_ident())
        part = os.path.join(self.directory, f".{entry.name}.part")
        retry = functools.partial(self._retry, entry)
        try:
            self._check_alive(entry)
            entry.size = retry(lambda: file_size(self.fs, entry.url), entry.url)
            if entry.size is not None:
                self._reserve(entry, entry.size)
            with self.lock.held():
                self._check_alive_held(entry)
                entry.move(EntryState.DOWNLOADING)
            with open(part, "wb") as out:
                if entry.size is not None:
                    copy_sized(
                        self.fs, entry.url, entry.size, out, chunk_bytes=self.chunk_bytes, retry=retry,
                        before_chunk=lambda: self._check_alive(entry), on_chunk=self._count_bytes,
                    )
                else:
                    copy_unsized(
                        self.fs, entry.url, out, chunk_bytes=self.chunk_bytes, retry=retry,
                        grow=lambda total: self._grow(entry, total), on_chunk=self._count_bytes,
                    )
            with self.lock.held():
                self._check_alive_held(entry)
                os.replace(part, entry.path)
                entry.move(EntryState.READY)
                self.counters["downloads"] += 1
            entry.done.set()
        except _Closed:
            self._abandon(entry, part, None)
        except BaseException as e:  # noqa: BLE001 - every failure reaches the consumer via the handle
            self._abandon(entry, part, e)

    def _retry(self, entry: Entry, fn, what: str) -> Any:  # noqa: ANN001 - fn: () -> T
        """``fn()`` through the project's retry policy; backoff waits stop when the entry is released."""
        return with_retries(
            fn, what=what, remote=True, retries=self.retries, backoff_s=self.backoff_s,
            max_backoff_s=self.max_backoff_s, sleep=lambda delay: self._back_off(entry, delay), path=entry.url,
            reresolve=functools.partial(reresolve_url, self.fs, entry.url),
        )

    def _back_off(self, entry: Entry, delay: float) -> None:
        with self.lock.held():
            self.counters["retries"] += 1
        deadline = time.monotonic() + delay
        while True:
            self._check_alive(entry)
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(_POLL_S, left))

    def _count_bytes(self, n: int) -> None:
        with self.lock.held():
            self.counters["bytes_downloaded"] += n

    def _grow(self, entry: Entry, total: int) -> None:
        """Size unknown: reserve as bytes arrive, up to ``total`` for this entry."""
        self._check_alive(entry)
        with self.lock.held():
            need = total - self.space.held(entry)
        if need > 0:
            self._reserve(entry, need)

    def _abandon(self, entry: Entry, part: str, error: BaseException | None) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.remove(part)
        with self.lock.held():
            self.space.leave(entry)
            self._free_held(entry)
            if error is not None:
                self.counters["failures"] += 1
                self.table.forget(entry)  # the next acquire tries afresh
            if entry.state is not EntryState.RELEASED:
                entry.move(EntryState.FAILED)
            entry.error = error if error is not None else RuntimeError("VideoCache closed during the download")
        if error is not None and not isinstance(error, ConfigError):
            log.warning("download failed: %s", error)
        entry.done.set()

    def _check_alive(self, entry: Entry) -> None:
        with self.lock.held():
            self._check_alive_held(entry)

    def _check_alive_held(self, entry: Entry) -> None:
        # The main thread ends before interpreter exit joins executor threads: stop waiting then.
        if self.closed or entry.state is EntryState.RELEASED or not threading.main_thread().is_alive():
            raise _Closed

    def _reserve(self, entry: Entry, nbytes: int) -> None:
        """Wait (in acquisition order) until ``nbytes`` more fit within ``max_bytes``, then take them."""
        with self.lock.held():
            self.space.require_fits_alone(entry, nbytes, entry.url)
            self.space.join(entry)
            started = time.monotonic()
            try:
                while True:
                    self._check_alive_held(entry)
                    if self.space.may_take(entry, nbytes):
                        break
                    entry.move(EntryState.WAITING_SPACE)
                    now = time.monotonic()
                    if self.stalled_since is None:
                        self.stalled_since = now
                    elif now - self.stalled_since > _GC_AFTER_S:
                        self._collect_held()
                    self.lock.cond.wait(_POLL_S * 4)
            finally:
                self.space.leave(entry)
                self.stalled_since = None  # progress (or a waiter left): the next in line starts afresh
                self.lock.cond.notify_all()
            self.space.take(entry, nbytes)
            self.counters["space_wait_s"] += time.monotonic() - started
            entry.move(EntryState.DOWNLOADING)

    def _collect_held(self) -> None:
        """Run the garbage collector (without the lock): handles caught in reference cycles free space."""
        now = time.monotonic()
        if now - self.last_gc < _GC_AFTER_S:
            return
        self.last_gc = now
        self.counters["gc_collections"] += 1
        with self.lock.let_go():
            gc.collect()

    # ---- waiting (consumer threads) -----------------------------------------------------------------
    def wait(self, entry: Entry, timeout: float | None) -> str:
        start = time.monotonic()
        try:
            while not entry.done.wait(_POLL_S):
                now = time.monotonic()
                if self.closed:
                    raise DownloadError(f"{entry.url}: the VideoCache was closed before the download finished.", path=entry.url)
                since = self.stalled_since
                if (
                    entry.state in (EntryState.PENDING, EntryState.WAITING_SPACE)
                    and since is not None
                    and now - max(since, start) > self.space_timeout_s
                ):
                    raise ConfigError(self._starved_message(entry, now - max(since, start)), path=entry.url)
                if timeout is not None and now - start > timeout:
                    raise DownloadError(
                        f"{entry.url}: not downloaded after {timeout:.1f}s ({entry.state.value}); the network is "
                        "slow or the server stalls. Raise the timeout, or check the server.",
                        path=entry.url,
                    )
        finally:
            with self.lock.held():
                self.counters["wait_s"] += time.monotonic() - start
        if entry.state is EntryState.READY:
            return entry.path
        if self.closed:
            raise DownloadError(f"{entry.url}: the VideoCache was closed; its local copies are gone.", path=entry.url)
        error = entry.error
        if isinstance(error, ConfigError):
            raise ConfigError(str(error), path=entry.url) from error
        if isinstance(error, DownloadError):
            raise DownloadError(str(error), path=entry.url) from error
        raise DownloadError(f"{entry.url}: download failed ({entry.state.value}): {error}", path=entry.url) from error

    def _starved_message(self, entry: Entry, waited: float) -> str:
        with self.lock.held():
            held, reserved = self.space.holders, self.space.used
        need = entry.size or 0
        return (
            f"{entry.url}: waited {waited:.0f}s for space in the video cache (no download could start): its {held} files "
            f"({human(reserved)} of max_bytes={human(self.max_bytes)}) are all still in use by "
            f"episodes in the pool or samples buffered downstream, and this file needs {human(need)}. "
            f"Raise the Prefetcher's max_bytes (to at least {human(reserved + need)}) or lower the "
            "pool size (EpisodePool pool_size) or the shuffle buffer."
        )

    # ---- closing and counters -----------------------------------------------------------------------
    def close(self) -> None:
        with self.lock.held():
            if self.closed:
                return
            self.closed = True
            entries = self.table.clear()
            for entry in entries:
                if entry.state is EntryState.READY:
                    _delete_file(entry.path)
                    self.space.release(entry)
                    entry.move(EntryState.RELEASED)
            self.lock.cond.notify_all()
        in_worker = threading.get_ident() in self.worker_threads
        self.executor.shutdown(wait=not in_worker, cancel_futures=True)
        for entry in entries:
            entry.done.set()  # waiters see the closed cache
        shutil.rmtree(self.directory, ignore_errors=True)

    def stats(self) -> dict[str, Any]:
        with self.lock.held():
            out = dict(self.counters)
            out["peak_bytes"] = self.space.peak
            out["current_bytes"] = self.space.used
            out["files"] = self.table.ready
            out["entries"] = len(self.table)
            out["max_bytes"] = self.max_bytes
        out["wait_s"] = round(out["wait_s"], 4)
        out["space_wait_s"] = round(out["space_wait_s"], 4)
        return out
