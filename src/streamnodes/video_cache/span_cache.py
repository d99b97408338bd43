"""A byte-bounded cache of episode spans of remote mp4s: what the Prefetcher hands out for remote datasets.

Per (episode, camera) the cache fetches only the bytes that decode the episode's frames and writes them as
a small self-contained mp4 (:mod:`streamnodes.mp4`: ``read_index`` -> ``episode_span`` -> ranged reads ->
``synthesize``), which keeps the original presentation times; the handle's :class:`~streamnodes.types.FrameMap`
tells the decode path how original frame numbers map into it. Each file's index is read once per cache
(1-3 ranged reads, kept in memory). A file that cannot be indexed (:class:`~streamnodes.mp4.Mp4IndexError`,
or an episode whose frames are not in it) is fetched whole instead, once per residency, logged once per file.
A server that ignores ``Range`` answers the first read with the whole file: the body is written once to
the cache directory (memory-mapped, so it costs page cache, not heap) and every span of that file is cut
from it without another request; bodies are dropped least recently used first when together they would
exceed ``max_bytes``.

Space: at most ``max_bytes`` on disk (complete and partial files). Entries are refcounted by their handles
(pooled episodes and buffered samples hold them); an entry whose last handle went stays on disk, least
recently used first out, so a span needed again is not fetched again. Two kinds of need compete for space:

- prefetch (the cache's threads, ``num_threads`` at once): served in acquisition order, and may evict only
  unreferenced entries. A bound too small for the pool makes them wait: the lookahead shortens.
- demand (a decoder waiting in ``handle.use()``): goes first, and may also evict referenced entries that
  no decoder is using right now (they are fetched again when a decoder wants them). A span being decoded
  is pinned. So the span the decoder waits for always gets space once the pins of other decodes end: no
  deadlock whatever the pool holds. A decoder that finds its span not yet started fetches it itself.

An episode whose spans (all cameras) exceed ``max_bytes`` can never be decoded: its handles raise a
:class:`~streamnodes.errors.ConfigError` naming both sizes as soon as they are used.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import logging
import mmap
import os
import posixpath
import shutil
import tempfile
import threading
import time
import urllib.parse
import weakref
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import fsspec

from streamnodes.errors import ConfigError, DownloadError, StreamNodesError, VideoDecodeError
from streamnodes.format.retry import (
    BACKOFF_S,
    MAX_BACKOFF_S,
    RETRIES,
    RangeIgnored,
    note_range_ignored,
    read_range,
    reresolve_url,
    with_retries,
)
from streamnodes.mp4 import Mp4Index, Mp4IndexError, fetch_span, read_index, synthesize
from streamnodes.types import LocalVideo
from streamnodes.video_cache.download import copy_sized, file_size
from streamnodes.video_cache.locking import DeferringLock
from streamnodes.video_cache.space import human
from streamnodes.video_cache.span_plan import SpanPlan, plan_span

__all__ = ["CachedSpan", "SpanCache", "SpanState"]

log = logging.getLogger("streamnodes.video_cache")

_POLL_S = 0.05
DEFAULT_PROBE_BYTES = 4 * 1024  # the head of the file; spans reuse what the index reads read


class _Closed(Exception):
    """Internal: the cache closed, or the entry lost its last reference before its fetch started."""


class SpanState(enum.Enum):
    PENDING = "pending"  # acquired, fetch not started
    WAITING_SPACE = "waiting for space"
    FETCHING = "fetching"
    READY = "ready"  # on disk
    EVICTED = "evicted"  # was on disk, deleted for space while still referenced: fetched again on use
    FAILED = "failed"
    DROPPED = "dropped"  # out of the table (released before its fetch, or evicted unreferenced)


@dataclass(eq=False)
class _File:
    """What the cache knows of one remote file: its size and index (or why it has none), read once."""

    url: str
    lock: threading.Lock = field(default_factory=threading.Lock)
    size: int | None = None
    index: Mp4Index | None = None
    whole: bool = False  # no usable index: spans of this file are the whole file
    read: bool = False
    body: bytes | mmap.mmap | None = None  # the whole file (mapped), when its server ignored Range
    known: list[tuple[int, bytes]] = field(default_factory=list)  # what the index reads read: spans reuse it


@dataclass(eq=False)
class _Entry:
    """One episode's span of one camera's file (or the whole file), its references and its local copy."""

    key: tuple[str, float, int]
    url: str
    episode_index: int | None
    camera: str
    from_timestamp: float
    length: int
    serial: int
    name: str = ""
    path: str = ""
    refs: int = 0
    pins: int = 0  # decoders using it (or waiting for it)
    state: SpanState = SpanState.PENDING
    claimed: bool = False  # a thread fetches it
    plan: SpanPlan | None = None
    whole: bool = False  # the whole file (no plan)
    need: int = 0  # bytes it takes on disk (an upper bound until written)
    held: int = 0  # bytes reserved for it
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)
    siblings: tuple[_Entry, ...] = ()  # the same episode's other cameras
    fetches: int = 0


def _delete_file(path: str) -> None:
    # Truncate first: a decoder still holding the file open keeps no blocks on disk (names are unique).
    with contextlib.suppress(OSError):
        os.truncate(path, 0)
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


def known_then_fetch(known: Sequence[tuple[int, bytes]], offset: int, length: int, fetch) -> bytearray:  # noqa: ANN001
    """Bytes ``[offset, offset + length)`` taken from the ``known`` ``(offset, bytes)`` chunks where they
    cover them, the gaps read with ``fetch(offset, length)`` (one read per gap). Pure but for ``fetch``."""
    chunks = sorted(known, key=lambda c: c[0])
    out = bytearray()
    pos, end = offset, offset + length
    while pos < end:
        inside = next((c for c in chunks if c[0] <= pos < c[0] + len(c[1])), None)
        if inside is not None:
            start, data = inside
            take = min(end, start + len(data)) - pos
            out += memoryview(data)[pos - start : pos - start + take]
            pos += take
            continue
        following = [c[0] for c in chunks if c[0] > pos]
        stop = min([end, *following])
        out += fetch(pos, stop - pos)
        pos = stop
    return out


class SpanCache:
    """Local copies of episode spans of remote mp4s, bounded by ``max_bytes``; see the module docstring.

    Args:
        fs: the fsspec file system of the URLs.
        cache_dir: parent directory (a fresh subdirectory is made in it); ``None``: the system temp dir.
        max_bytes: most bytes on disk at once.
        num_threads: concurrent prefetches (decoders waiting on a span not yet started fetch it themselves).
        retries, backoff_s, max_backoff_s: the project's retry policy per read.
        chunk_bytes: bytes per read of whole-file fallbacks.
        probe_bytes: first read of each file's index (a front ``moov`` of short files fits).
        keep_bodies: deprecated, unused: whole bodies from servers that ignore ``Range`` are kept on disk
            within ``max_bytes`` instead.
    """

    def __init__(
        self,
        fs: fsspec.AbstractFileSystem,
        cache_dir: str | os.PathLike[str] | None = None,
        max_bytes: int = 2 * 1024**3,
        num_threads: int = 4,
        retries: int = RETRIES,
        backoff_s: float = BACKOFF_S,
        *,
        max_backoff_s: float = MAX_BACKOFF_S,
        chunk_bytes: int = 8 * 1024**2,
        probe_bytes: int = DEFAULT_PROBE_BYTES,
        keep_bodies: int = 2,
    ) -> None:
        if int(max_bytes) <= 0:
            raise ConfigError(f"SpanCache: max_bytes must be > 0, got {max_bytes}.")
        if int(num_threads) < 1:
            raise ConfigError(f"SpanCache: num_threads must be >= 1, got {num_threads}.")
        parent = None if cache_dir is None else os.fspath(cache_dir)
        if parent is not None:
            os.makedirs(parent, exist_ok=True)
        self.fs = fs
        self.directory = tempfile.mkdtemp(prefix="streamnodes-spans-", dir=parent)
        self.max_bytes = int(max_bytes)
        self.retries, self.backoff_s, self.max_backoff_s = int(retries), float(backoff_s), float(max_backoff_s)
        self.chunk_bytes, self.probe_bytes, self.keep_bodies = int(chunk_bytes), int(probe_bytes), int(keep_bodies)
        self.lock: DeferringLock[_Entry] = DeferringLock(self._release_held)
        self._entries: dict[tuple[str, float, int], _Entry] = {}
        self._lru: OrderedDict[_Entry, None] = OrderedDict()  # READY entries, least recently used first
        self._waiting: set[_Entry] = set()
        self._files: dict[str, _File] = {}
        self._files_lock = threading.Lock()
        self._bodies: OrderedDict[str, None] = OrderedDict()
        self._serial = 0
        self.used = 0
        self.peak = 0
        self.closed = False
        self.keep_released = True  # False once no more acquires are expected: released entries go at once
        self.counters: dict[str, Any] = dict.fromkeys(
            ("acquires", "hits", "downloads", "spans_fetched", "whole_files", "index_reads", "bytes_downloaded",
             "index_bytes", "evictions", "refetches", "demand_fetches", "retries", "failures", "deleted"), 0
        )
        self.counters.update(wait_s=0.0, space_wait_s=0.0)
        self._executor = ThreadPoolExecutor(max_workers=int(num_threads), thread_name_prefix="SpanCache")
        self._threads: set[int] = set()
        # No finalizer here: one holding ``self._close`` would keep the cache alive forever. The owner closes
        # it: the Prefetcher registers ``weakref.finalize(prefetcher, cache.close)``, so a dropped graph
        # deletes its spans.

    # ---- references ---------------------------------------------------------------------------------
    def acquire_episode(
        self, episode_index: int | None, videos: Sequence[tuple[str, str, float, int]]
    ) -> dict[str, CachedSpan]:
        """Handles on one episode's spans: ``videos`` holds ``(camera, url, from_timestamp, length)``.
        Fetches start in the background, in acquisition order."""
        started: list[_Entry] = []
        handles: dict[str, CachedSpan] = {}
        with self.lock.held():
            if self.closed:
                raise RuntimeError("SpanCache is closed; build a new one (or a new Prefetcher).")
            entries = []
            for camera, url, from_timestamp, length in videos:
                self.counters["acquires"] += 1
                key = (url, float(from_timestamp), int(length))
                entry = self._entries.get(key)
                if entry is None:
                    self._serial += 1
                    entry = _Entry(key, url, episode_index, camera, float(from_timestamp), int(length), self._serial)
                    self._name(entry)
                    self._entries[key] = entry
                    started.append(entry)
                else:
                    self.counters["hits"] += 1  # on disk (kept or referenced), or on its way
                entry.refs += 1
                entries.append(entry)
                handles[camera] = CachedSpan(self, entry)
            for entry in entries:
                entry.siblings = tuple(e for e in entries if e is not entry)
        for entry in started:
            self._executor.submit(self._prefetch, entry)
        return handles

    def _name(self, entry: _Entry) -> None:
        base = posixpath.basename(urllib.parse.urlsplit(entry.url).path) or "video.mp4"
        stem, ext = os.path.splitext(base)
        self._serial += 1
        entry.name = f"{self._serial:06d}-{stem}-{entry.from_timestamp:g}s{ext or '.mp4'}"
        entry.path = os.path.join(self.directory, entry.name)

    def release(self, entry: _Entry) -> None:
        """Drop one reference (a handle's finalizer, any thread: never blocks)."""
        self.lock.defer(entry)

    def _release_held(self, entry: _Entry) -> None:
        entry.refs -= 1
        if entry.refs > 0:
            return
        if entry.state is SpanState.READY and self.keep_released and not self.closed:
            self._lru.pop(entry, None)
            self._lru[entry] = None  # kept: the least recently used unreferenced entries go first
        elif entry.state in (SpanState.READY, SpanState.PENDING, SpanState.WAITING_SPACE, SpanState.EVICTED,
                             SpanState.FAILED):
            self._drop_held(entry)
        self.lock.cond.notify_all()

    def _drop_held(self, entry: _Entry) -> None:
        """Take ``entry`` out of the table; delete its file and free its bytes (unless a fetch runs)."""
        if self._entries.get(entry.key) is entry:
            del self._entries[entry.key]
        self._lru.pop(entry, None)
        if entry.state is SpanState.READY:
            _delete_file(entry.path)
            self.counters["deleted"] += 1
        if entry.state is not SpanState.FETCHING:
            self._free_held(entry)
            entry.state = SpanState.DROPPED

    def _free_held(self, entry: _Entry) -> None:
        self.used -= entry.held
        entry.held = 0
        self.lock.cond.notify_all()

    def drain(self) -> None:
        """No more acquires are expected (the source is exhausted): entries go when their last handle does,
        and unreferenced ones go now."""
        with self.lock.held():
            self.keep_released = False
            for entry in [e for e in self._lru if e.refs == 0]:
                self._drop_held(entry)

    # ---- fetching -----------------------------------------------------------------------------------
    def _prefetch(self, entry: _Entry) -> None:
        self._threads.add(threading.get_ident())
        with contextlib.suppress(_Closed):
            self._fetch(entry, demand=False)

    def _fetch(self, entry: _Entry, *, demand: bool) -> None:
        """Fetch ``entry`` unless another thread does or did; failures go to ``entry.error``."""
        with self.lock.held():
            if entry.claimed or entry.state not in (SpanState.PENDING, SpanState.EVICTED):
                return
            if entry.refs <= 0 or self.closed:
                raise _Closed
            entry.claimed = True
            again = entry.state is SpanState.EVICTED
            entry.state = SpanState.PENDING
            if again:
                self.counters["refetches"] += 1
                self._name(entry)  # a new residency: decoders cached by the old path never see the new file
            if demand:
                self.counters["demand_fetches"] += 1
        part = os.path.join(self.directory, f".{entry.name}.part")
        try:
            self._plan(entry)
            self._check_episode(entry)
            self._reserve(entry, entry.need)
            with self.lock.held():
                self._alive_held(entry, started=True)
                entry.state = SpanState.FETCHING
            written = self._write(entry, part)
            with self.lock.held():
                if self.closed:
                    raise _Closed
                os.replace(part, entry.path)
                self.used -= entry.held - written  # the bound reserved, trimmed to the real size
                entry.held = entry.need = written
                entry.state = SpanState.READY
                entry.fetches += 1
                self.counters["downloads"] += 1
                self.counters["whole_files" if entry.whole else "spans_fetched"] += 1
                if entry.refs <= 0:  # released during the fetch
                    if self.keep_released:
                        self._lru[entry] = None
                    else:
                        self._drop_held(entry)
                else:
                    self._lru[entry] = None
                entry.claimed = False
                self.lock.cond.notify_all()
            entry.done.set()
        except BaseException as error:  # noqa: BLE001 - every failure reaches the consumer via the handle
            with contextlib.suppress(FileNotFoundError):
                os.remove(part)
            self._fail(entry, error)
            if isinstance(error, _Closed):
                raise

    def _fail(self, entry: _Entry, error: BaseException) -> None:
        with self.lock.held():
            self._waiting.discard(entry)
            self._free_held(entry)
            entry.claimed = False
            if isinstance(error, _Closed):
                if entry.refs <= 0 or self.closed:
                    self._drop_held(entry)
                else:  # the entry lost no reference: the cache closed
                    entry.state = SpanState.FAILED
                    entry.error = RuntimeError("the SpanCache was closed")
            else:
                self.counters["failures"] += 1
                entry.state = SpanState.FAILED
                entry.error = error
                if self._entries.get(entry.key) is entry:
                    del self._entries[entry.key]  # the next acquire tries afresh
        if not isinstance(error, (_Closed, StreamNodesError)):
            log.warning("fetch of %s failed: %s", entry.url, error)
        entry.done.set()

    def _alive_held(self, entry: _Entry, *, started: bool = False) -> None:
        if self.closed or not threading.main_thread().is_alive():
            raise _Closed
        if entry.refs <= 0 and not started:
            raise _Closed

    def _plan(self, entry: _Entry, *, read: bool = True) -> None:
        """Decide what ``entry`` fetches (span or whole file) and how many bytes it needs (index read once;
        ``read=False``: only if its file's index was read already)."""
        if entry.plan is not None or entry.whole:
            return
        if not read:
            with self._files_lock:
                known = self._files.get(entry.url)
            if known is None or not known.read:
                return
        info = self._file(entry.url)
        if info.index is not None:
            try:
                entry.plan = plan_span(info.index, entry.from_timestamp, entry.length)
                entry.need = entry.plan.max_size
                return
            except VideoDecodeError as error:  # the decode path reports the mismatch, on the whole file
                log.warning("%s: episode %s does not fit the file's index (%s); fetching the whole file",
                            entry.url, entry.episode_index, error)
        entry.whole = True
        entry.need = int(info.size or 0)

    def _check_episode(self, entry: _Entry) -> None:
        """ConfigError when the episode's spans (every camera) can never be on disk at once."""
        for sibling in entry.siblings:  # those not planned yet check the episode when they are
            self._plan(sibling, read=False)
        total = entry.need + sum(s.need for s in entry.siblings)
        if total > self.max_bytes:
            parts = ", ".join(f"{e.camera} {human(e.need)}" for e in (entry, *entry.siblings))
            raise ConfigError(
                f"episode {entry.episode_index}: its video spans need {human(total)} ({total} bytes: {parts}) but the "
                f"prefetch cache holds max_bytes={human(self.max_bytes)} ({self.max_bytes} bytes). Raise "
                "prefetch_max_bytes (the Prefetcher's max_bytes) to at least the largest episode's spans; "
                "a few episodes' worth is best.",
                path=entry.url, episode_index=entry.episode_index, camera=entry.camera,
            )

    def _file(self, url: str) -> _File:
        with self._files_lock:
            info = self._files.setdefault(url, _File(url))
        with info.lock:
            if info.read:
                return info
            info.size = self._retry(url, lambda: file_size(self.fs, url))
            if info.size is None:
                info.whole = info.read = True
                return info
            reads = self._reader(info)
            try:
                info.index = read_index(reads, info.size, probe_size=self.probe_bytes, name=url)
            except Mp4IndexError as error:
                log.warning("%s cannot be read by byte ranges (%s); each episode fetches the whole file", url, error)
                info.whole = True
            with self.lock.held():
                self.counters["index_reads"] += 1
            info.read = True
            return info

    def _reader(self, info: _File, *, count: str = "index_bytes"):  # noqa: ANN202 - a ReadRange
        def read(offset: int, length: int) -> bytes:
            body = info.body
            if body is not None:
                return body[offset : offset + length]
            if count == "index_bytes":
                data = fetch(offset, length)
                info.known.append((offset, data))
                return data
            return bytes(known_then_fetch(info.known, offset, length, fetch))

        def fetch(offset: int, length: int) -> bytes:
            body = info.body
            if body is not None:
                return body[offset : offset + length]
            try:
                data = self._retry(
                    info.url, functools.partial(read_range, self.fs, info.url, offset, offset + length, size=info.size)
                )
            except RangeIgnored as whole:
                note_range_ignored(info.url, len(whole.body))
                self._keep_body(info, whole.body)
                self._count(len(whole.body), count)
                return whole.body[offset : offset + length]
            self._count(len(data), count)
            return data

        return read

    def _keep_body(self, info: _File, body: bytes) -> None:
        """Keep a whole body (its server ignored Range) as a memory-mapped file in the cache directory, so
        every later span of the file is cut from it: one whole GET per file and consumer while the bodies
        fit in ``max_bytes`` together (least recently used ones are dropped first)."""
        with self._files_lock:
            self._serial += 1
            path = os.path.join(self.directory, f".whole-{self._serial:06d}.mp4")
            with open(path, "wb") as f:
                f.write(body)
            self._map_body(info, path)

    def _keep_body_file(self, info: _File, local: str) -> None:
        """Keep a whole file just downloaded to ``local`` (an unindexable file) as the file's body, so the
        file's other episodes copy it instead of downloading it again. A copy, not a hard link: a span
        file is truncated when it is deleted, which would empty a mapping of the same inode."""
        with self._files_lock:
            self._serial += 1
            path = os.path.join(self.directory, f".whole-{self._serial:06d}.mp4")
            shutil.copyfile(local, path)
            self._map_body(info, path)

    def _map_body(self, info: _File, path: str) -> None:
        """Map the whole body at ``path`` (caller holds ``_files_lock``), unlink it, and keep the bodies
        within ``max_bytes`` (least recently used dropped first)."""
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            info.body = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        os.unlink(path)  # the mapping keeps the bytes; nothing is left behind if the process dies
        self._bodies.pop(info.url, None)
        self._bodies[info.url] = None
        total = sum(len(self._files[u].body or b"") for u in self._bodies)
        while total > self.max_bytes and len(self._bodies) > 1:
            old, _ = self._bodies.popitem(last=False)
            total -= len(self._files[old].body or b"")
            self._files[old].body = None

    def _count(self, n: int, what: str) -> None:
        with self.lock.held():
            self.counters["bytes_downloaded"] += n
            if what == "index_bytes":
                self.counters["index_bytes"] += n

    def _write(self, entry: _Entry, part: str) -> int:
        """Fetch ``entry``'s bytes into ``part``; returns the bytes written."""
        info = self._file(entry.url)
        with open(part, "wb") as out:
            if entry.plan is not None:
                reads = self._reader(info, count="span")
                assert info.index is not None  # a plan is made from the file's index (_plan)
                data = synthesize(info.index, entry.plan.span, fetch_span(reads, entry.plan.span))
                out.write(data)
                return len(data)
            body = info.body
            if body is not None:
                out.write(body)
                return len(body)
            size = int(info.size or 0)
            copy_sized(  # a server that ignores Range: copy_sized writes the one whole body
                self.fs, entry.url, size, out, chunk_bytes=self.chunk_bytes,
                retry=lambda fn, what: self._retry(entry.url, fn),
                before_chunk=lambda: self._alive(entry), on_chunk=lambda n: self._count(n, "whole"),
            )
        self._keep_body_file(info, part)  # the file's other episodes copy it: one whole download per file
        return size

    def _alive(self, entry: _Entry) -> None:
        with self.lock.held():
            self._alive_held(entry, started=True)

    def _retry(self, url: str, fn):  # noqa: ANN001, ANN202 - fn: () -> T
        return with_retries(
            fn, what=url, remote=True, retries=self.retries, backoff_s=self.backoff_s,
            max_backoff_s=self.max_backoff_s, sleep=self._back_off, path=url,
            reresolve=functools.partial(reresolve_url, self.fs, url),
        )

    def _back_off(self, delay: float) -> None:
        with self.lock.held():
            self.counters["retries"] += 1
        deadline = time.monotonic() + delay
        while (left := deadline - time.monotonic()) > 0:
            if self.closed:
                raise _Closed
            time.sleep(min(_POLL_S, left))

    # ---- space --------------------------------------------------------------------------------------
    def _reserve(self, entry: _Entry, nbytes: int) -> None:
        """Wait until ``nbytes`` fit (prefetch: in acquisition order, evicting only unreferenced entries;
        demand: first, evicting any entry no decoder uses), then take them."""
        started = time.monotonic()
        with self.lock.held():
            self._waiting.add(entry)
            entry.state = SpanState.WAITING_SPACE
            try:
                while True:
                    self._alive_held(entry)
                    if entry.refs <= 0 and entry.pins <= 0:
                        raise _Closed
                    if self._may_take_held(entry, nbytes):
                        break
                    self.lock.cond.wait(_POLL_S * 4)
            finally:
                self._waiting.discard(entry)
                self.lock.cond.notify_all()
            self.used += nbytes
            entry.held += nbytes
            self.peak = max(self.peak, self.used)
            self.counters["space_wait_s"] += time.monotonic() - started

    def _may_take_held(self, entry: _Entry, nbytes: int) -> bool:
        demand = entry.pins > 0
        if not demand:
            for other in self._waiting:
                if other.pins > 0 or other.serial < entry.serial:
                    return False  # decoders first, then prefetches in acquisition order
        free = self.max_bytes - self.used
        if free >= nbytes:
            return True
        victims: list[_Entry] = []
        candidates = [e for e in self._lru if e.pins == 0 and e.refs == 0]
        if demand:
            candidates += [e for e in self._lru if e.pins == 0 and e.refs > 0]
        for victim in candidates:
            victims.append(victim)
            free += victim.held
            if free >= nbytes:
                for v in victims:
                    self._evict_held(v)
                return True
        return False

    def _evict_held(self, entry: _Entry) -> None:
        self.counters["evictions"] += 1
        if entry.refs <= 0:
            self._drop_held(entry)
            return
        self._lru.pop(entry, None)
        _delete_file(entry.path)
        self._free_held(entry)
        entry.state = SpanState.EVICTED
        entry.done.clear()

    # ---- using (decoder threads) --------------------------------------------------------------------
    @contextlib.contextmanager
    def use(self, entry: _Entry, timeout: float | None) -> Iterator[LocalVideo]:
        """Pin ``entry`` on disk for the block, fetching it first (with priority) if it is not there."""
        start = time.monotonic()
        with self.lock.held():
            entry.pins += 1
            self.lock.cond.notify_all()
        try:
            while True:
                with self.lock.held():
                    if self.closed:
                        raise DownloadError(f"{entry.url}: the SpanCache was closed.", path=entry.url)
                    state = entry.state
                    if state is SpanState.READY:
                        self._lru.pop(entry, None)
                        self._lru[entry] = None
                        self.counters["wait_s"] += time.monotonic() - start
                        local = LocalVideo(entry.path, None if entry.plan is None else entry.plan.frames)
                        break
                    fetch_here = not entry.claimed and state in (SpanState.PENDING, SpanState.EVICTED)
                if state in (SpanState.FAILED, SpanState.DROPPED):
                    self._raise(entry)
                if fetch_here:
                    self._fetch(entry, demand=True)
                    continue
                entry.done.wait(_POLL_S)
                if timeout is not None and time.monotonic() - start > timeout:
                    raise DownloadError(
                        f"{entry.url}: episode {entry.episode_index}'s span not fetched after {timeout:.1f}s "
                        f"({entry.state.value}); the network is slow or the server stalls. Raise the timeout.",
                        path=entry.url,
                    )
            yield local
        finally:
            with self.lock.held():
                entry.pins -= 1
                if entry.refs <= 0 and entry.pins <= 0 and not self.keep_released and entry.state is SpanState.READY:
                    self._drop_held(entry)
                self.lock.cond.notify_all()

    def _raise(self, entry: _Entry) -> None:
        error = entry.error
        if isinstance(error, StreamNodesError):
            raise error
        raise DownloadError(f"{entry.url}: fetch failed ({entry.state.value}): {error}", path=entry.url) from error

    # ---- closing and counters -----------------------------------------------------------------------
    def close(self) -> None:
        """Delete every local copy and the directory, stop the threads (idempotent)."""
        self._close()

    def _close(self) -> None:
        with self.lock.held():
            if self.closed:
                return
            self.closed = True
            for entry in list(self._entries.values()) + list(self._lru):
                if entry.state is SpanState.READY:
                    _delete_file(entry.path)
                entry.done.set()
            self._entries.clear()
            self._lru.clear()
            self.used = 0
            self.lock.cond.notify_all()
        in_worker = threading.get_ident() in self._threads
        self._executor.shutdown(wait=not in_worker, cancel_futures=True)
        shutil.rmtree(self.directory, ignore_errors=True)

    def stats(self) -> dict[str, Any]:
        with self.lock.held():
            out = dict(self.counters)
            out["peak_bytes"], out["current_bytes"], out["max_bytes"] = self.peak, self.used, self.max_bytes
            out["files"] = sum(1 for e in self._lru if e.state is SpanState.READY)
            out["entries"] = len(self._entries)
        out["wait_s"], out["space_wait_s"] = round(out["wait_s"], 4), round(out["space_wait_s"], 4)
        return out

    @property
    def bytes_downloaded(self) -> int:
        return self.counters["bytes_downloaded"]

    @property
    def peak_bytes(self) -> int:
        return self.peak

    @property
    def current_bytes(self) -> int:
        return self.used

    @property
    def files(self) -> int:
        return self.stats()["files"]

    def __enter__(self) -> SpanCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        s = self.stats()
        return (
            f"SpanCache(dir={self.directory!r}, files={s['files']}, current={human(s['current_bytes'])}, "
            f"peak={human(s['peak_bytes'])}, max={human(s['max_bytes'])}, spans={s['spans_fetched']}, "
            f"whole_files={s['whole_files']}{', closed' if self.closed else ''})"
        )


class CachedSpan:
    """One reference to one episode's span of one camera's remote mp4: a :class:`~streamnodes.types.VideoFile`.

    ``use(timeout)`` (what the decode path calls) yields the local file and its frame map and keeps the
    file on disk for the block; ``local_path(timeout)`` returns the path without pinning it. The reference
    ends with ``release()`` or when the handle is garbage collected. Not picklable.
    """

    __slots__ = ("url", "_cache", "_entry", "_finalizer", "__weakref__")

    def __init__(self, cache: SpanCache, entry: _Entry) -> None:
        self.url = entry.url
        self._cache = cache
        self._entry = entry
        self._finalizer = weakref.finalize(self, cache.release, entry)

    @contextlib.contextmanager
    def use(self, timeout: float | None = None) -> Iterator[LocalVideo]:
        if not self._finalizer.alive:
            raise DownloadError(f"{self.url}: this handle was released; acquire the span again.", path=self.url)
        with self._cache.use(self._entry, timeout) as local:
            yield local

    def local_path(self, timeout: float | None = None) -> str:
        """The local file's path once fetched (blocks). It may be evicted later: decoders use ``use()``."""
        with self.use(timeout) as local:
            return local.path

    @property
    def frames(self):  # noqa: ANN201 - FrameMap | None
        """How original frame numbers map into the local file (``None``: whole file, or not planned yet)."""
        plan = self._entry.plan
        return None if plan is None else plan.frames

    @property
    def ready(self) -> bool:
        return self._entry.state is SpanState.READY

    def release(self) -> None:
        """Drop this reference now (idempotent)."""
        self._finalizer()

    def __reduce__(self):
        raise TypeError(
            f"CachedSpan({self.url}) is a reference into one process's span cache and cannot be pickled; "
            "build the pipeline (and its Prefetcher) inside each worker, or pass the URL."
        )

    def __repr__(self) -> str:
        e = self._entry
        return f"CachedSpan({self.url!r}, episode={e.episode_index}, {e.state.value})"
