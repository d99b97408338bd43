"""Bounded retries for reads of remote files (http, hf, object stores), and the one ranged-read primitive.

fsspec's HTTP file system does not retry: one ``500`` or dropped connection fails the read, and a
failed size lookup surfaces as ``FileNotFoundError`` with the real error as its cause. Local reads
are never retried. What counts as transient is decided from the whole exception chain: server
errors (5xx), 408/429, dropped or reset connections, timeouts and truncated payloads. A 404 is
permanent, and so is anything without such evidence (a missing file, a corrupt footer).

HTTP as it is (servers differ from the textbook):

- ``429``/``503`` with ``Retry-After`` (seconds or an HTTP date): the wait is what the server asked for,
  capped at ``max_retry_after_s`` and spread by jitter; other transient errors back off exponentially,
  with jitter. Every wait counts against the same ``retries``.
- ``403``: a signed URL that expired. With a ``reresolve`` hook (:func:`reresolve_url`: forget what the
  file system cached about the URL and look it up again) the read is tried once more; a second ``403``
  (or one without a hook) is a :class:`DownloadError` saying the URL is not authorised and what to do.
- A server that ignores ``Range`` (Python's ``http.server``) answers a ranged GET with ``200`` and the
  whole file. :func:`read_range` recognises it at once (the body is the whole file, not a short read)
  and raises :class:`RangeIgnored` carrying the body, which is not retried: the caller keeps the bytes
  and serves the file's later ranges from them (:class:`RetryingRangeFile`), or writes them as the
  downloaded file (:mod:`streamnodes.video_cache.download`). Logged once per file.
"""

from __future__ import annotations

import email.utils
import io
import logging
import random
import threading
import time
import urllib.parse
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TypeVar

import fsspec

from streamnodes.errors import DownloadError, short_text

log = logging.getLogger(__name__)

T = TypeVar("T")
RETRIES = 5
BACKOFF_S = 0.2
MAX_BACKOFF_S = 5.0
MAX_RETRY_AFTER_S = 30.0
JITTER = 0.5  # an exponential wait of d seconds is drawn from [(1 - JITTER) * d, d]
RETRY_AFTER_JITTER = 0.2  # a Retry-After of s seconds waits [s, (1 + RETRY_AFTER_JITTER) * s], capped
_RNG = random.Random()
_TRANSIENT_NAMES = {
    "ShortRead", "ClientPayloadError", "ServerDisconnectedError", "ClientOSError", "ClientConnectionError",
    "ServerTimeoutError", "ContentLengthError", "TransferEncodingError", "IncompleteRead",
}


def _chain(error: BaseException) -> list[BaseException]:
    out, seen = [], set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        out.append(current)
        current = current.__cause__ or current.__context__
    return out


def _http_error(error: BaseException) -> BaseException | None:
    """The first exception in ``error``'s chain with an HTTP error status (aiohttp's ClientResponseError)."""
    for e in _chain(error):
        status = getattr(e, "status", None)
        if isinstance(status, int) and 400 <= status < 600:
            return e
    return None


def http_status(error: BaseException) -> int | None:
    """The HTTP error status (4xx/5xx) found in ``error``'s chain, ``None`` if there is none."""
    e = _http_error(error)
    return None if e is None else e.status  # type: ignore[attr-defined]


def is_transient(error: BaseException) -> bool:
    """Whether retrying a remote read that raised ``error`` can help (evidence of a network fault)."""
    for e in _chain(error):
        status = getattr(e, "status", None)
        if isinstance(status, int) and 400 <= status < 600:
            return status >= 500 or status in (408, 429)
        if type(e).__name__ in _TRANSIENT_NAMES or isinstance(e, (ConnectionError, TimeoutError)):
            return True
    return False


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """A ``Retry-After`` header value -> seconds to wait (``>= 0``); ``None`` if absent or unreadable.

    The value is either delta-seconds (``"120"``) or an HTTP date (``"Wed, 21 Oct 2015 07:28:00 GMT"``),
    which is measured from ``now`` (default: the current UTC time).
    """
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    now = now or datetime.now(UTC)
    return max(0.0, (when - now).total_seconds())


def retry_after(error: BaseException, now: datetime | None = None) -> float | None:
    """Seconds a ``429``/``503`` in ``error``'s chain asked to wait (its ``Retry-After``), else ``None``."""
    e = _http_error(error)
    if e is None or e.status not in (429, 503):  # type: ignore[attr-defined]
        return None
    headers = getattr(e, "headers", None)
    if not headers:
        return None
    try:
        value = headers.get("Retry-After")
    except AttributeError:
        return None
    return parse_retry_after(value, now)


def backoff_delay(
    attempt: int,
    *,
    backoff_s: float,
    max_backoff_s: float,
    u: float,
    jitter: float = JITTER,
    retry_after_s: float | None = None,
    max_retry_after_s: float = MAX_RETRY_AFTER_S,
) -> float:
    """Seconds to wait before retry ``attempt`` (1, 2, ...); ``u`` is a uniform draw in ``[0, 1)``.

    Without ``retry_after_s``: ``min(max_backoff_s, backoff_s * 2**(attempt-1))`` shortened by up to
    ``jitter`` of itself. With it (the server's ``Retry-After``): at least that long, lengthened by up to
    ``RETRY_AFTER_JITTER`` of itself when ``jitter > 0``, and never more than ``max_retry_after_s``.
    """
    if retry_after_s is not None:
        spread = RETRY_AFTER_JITTER * u if jitter > 0 else 0.0
        return min(max_retry_after_s, retry_after_s * (1.0 + spread))
    base = min(max_backoff_s, backoff_s * 2 ** (attempt - 1))
    return base * (1.0 - jitter * u)


def _kind(error: BaseException) -> str:
    """``error``'s type, with its cause's type and HTTP status: fsspec reports a 500 on a size request as
    ``FileNotFoundError`` raised from the real error."""
    cause = error.__cause__
    if cause is None:
        return type(error).__name__
    status = getattr(cause, "status", None)
    return f"{type(error).__name__} from {type(cause).__name__}" + (f" {status}" if isinstance(status, int) else "")


def forbidden_error(what: str, path: str | None, *, reresolved: bool) -> DownloadError:
    """The error for a ``403``: the URL is not authorised (a token, or a signed link that expired)."""
    again = ", again after re-resolving the URL" if reresolved else ""
    return DownloadError(
        f"{what}: the server refused access (HTTP 403 Forbidden{again}): the URL is not authorised, "
        "because a token is missing or wrong, or a signed link expired. Check the token (HF_TOKEN, or the "
        "file system's storage_options) or get a fresh link, then run again.",
        path=path,
    )


def with_retries(
    fn: Callable[[], T],
    *,
    what: str,
    remote: bool,
    retries: int = RETRIES,
    backoff_s: float = BACKOFF_S,
    max_backoff_s: float = MAX_BACKOFF_S,
    sleep: Callable[[float], None] = time.sleep,
    path: str | None = None,
    rng: random.Random | None = None,
    jitter: float = JITTER,
    max_retry_after_s: float = MAX_RETRY_AFTER_S,
    reresolve: Callable[[], object] | None = None,
) -> T:
    """Run ``fn``; for remote files retry transient failures up to ``retries`` times with backoff.

    Retry ``k`` first waits :func:`backoff_delay` seconds through ``sleep``, once per retry: the server's
    ``Retry-After`` for a ``429``/``503`` that sends one (capped at ``max_retry_after_s``), else
    ``min(max_backoff_s, backoff_s * 2**(k-1))``, both spread by a draw from ``rng`` (``jitter=0``: none).
    A caller may count retries in ``sleep``, or raise from it to stop waiting (a closed cache).

    A ``403`` calls ``reresolve()`` (an expired signed URL: look it up again) and runs ``fn`` once more,
    without waiting and without using a retry; a second ``403``, or one without ``reresolve``, raises
    :class:`DownloadError` saying the URL is not authorised. When the retries are used up,
    :class:`DownloadError` names ``what`` and the last error (its ``path`` attribute is ``path``, the file
    being read). Other permanent errors (a missing file, a corrupt footer) are raised at once,
    unchanged, for the caller to word.
    """
    rng = rng or _RNG
    attempt = 0
    reresolved = False
    while True:
        try:
            return fn()
        except Exception as error:
            if not remote:
                raise
            status = http_status(error)
            if status == 403:
                if reresolve is None or reresolved:
                    raise forbidden_error(what, path, reresolved=reresolved) from error
                reresolved = True
                log.info("%s: HTTP 403 Forbidden; re-resolving the URL once (a signed link may have expired)", what)
                try:
                    reresolve()
                except Exception as e:  # noqa: BLE001 - the read that follows decides
                    log.debug("re-resolving %s failed: %s", what, short_text(e))
                continue
            if not is_transient(error):
                raise
            attempt += 1
            if attempt > retries:
                busy = " The server is rate-limiting (429): lower num_workers or retry later." if status == 429 else ""
                raise DownloadError(
                    f"{what}: still failing after {retries} retries, failed {attempt} times in a row (retries={retries}) "
                    f"({_kind(error)}: "
                    f"{short_text(error)}). The server keeps failing; check it or retry later.{busy}",
                    path=path,
                ) from error
            asked = retry_after(error)
            delay = backoff_delay(
                attempt, backoff_s=backoff_s, max_backoff_s=max_backoff_s, u=rng.random(), jitter=jitter,
                retry_after_s=asked, max_retry_after_s=max_retry_after_s,
            )
            if asked is None:
                log.info("retrying %s in %.2fs after %s (attempt %d/%d)", what, delay, type(error).__name__, attempt, retries)
            else:
                log.info(
                    "retrying %s in %.2fs: HTTP %s with Retry-After %.0fs (capped at %.0fs; attempt %d/%d)",
                    what, delay, status, asked, max_retry_after_s, attempt, retries,
                )
            sleep(delay)


def reresolve_url(fs: fsspec.AbstractFileSystem, url: str) -> None:
    """Forget what ``fs`` cached about ``url`` and look it up again (a fresh ``fs.info``).

    For a file system that resolves paths to signed URLs (the Hub's), this fetches a fresh link after
    an expired one answered ``403``; for plain HTTP it is one ``HEAD``.
    """
    fs.invalidate_cache(url)
    fs.info(url)


class ShortRead(ConnectionError):
    """A ranged read returned fewer bytes than asked for (a dropped connection): transient."""


class RangeIgnored(Exception):  # noqa: N818 - a signal, not a failure
    """The server ignored ``Range`` and sent the whole file: ``body`` holds all of it. Not transient.

    Not a :class:`~streamnodes.errors.StreamNodesError`: callers of :func:`read_range` that pass a size
    catch it and use ``body`` (no retry, no second request).
    """

    def __init__(self, url: str, body: bytes) -> None:
        super().__init__(f"{url}: the server ignored the Range header and sent the whole file ({len(body)} bytes)")
        self.url = url
        self.body = body


def read_range(fs: fsspec.AbstractFileSystem, url: str, start: int, end: int, *, size: int | None = None) -> bytes:
    """Bytes ``[start, end)`` of ``url`` in one ranged request (no retries: wrap it in :func:`with_retries`).

    Fewer bytes raise :class:`ShortRead` (transient). A body of the whole file (``size`` bytes, more
    than asked) raises :class:`RangeIgnored` carrying it; a longer body that is not the whole file is a
    :class:`DownloadError` (the server's Range support is broken).
    """
    data = fs.cat_file(url, start=start, end=end)
    want = end - start
    if len(data) == want:
        return data
    if len(data) < want:
        raise ShortRead(f"{url}: the server sent {len(data)} of bytes [{start}:{end}]")
    if size is not None and len(data) == size:
        raise RangeIgnored(url, data)
    whole = f"the whole file has {size}" if size is not None else "the file's size is unknown"
    raise DownloadError(
        f"{url} [{start}:{end}]: the server sent {len(data)} bytes for a {want}-byte range ({whole}): neither "
        "the range nor the whole file, so its Range support is broken. Use another server, or download the "
        "dataset and pass its local path.",
        path=url,
    )


_noted_lock = threading.Lock()
_noted_files: set[str] = set()
_noted_hosts: set[str] = set()


def note_range_ignored(url: str, size: int) -> None:
    """Log that ``url``'s server ignores ``Range``: WARNING once per host, INFO once per file (per process)."""
    host = urllib.parse.urlsplit(url).netloc or url
    with _noted_lock:
        if url in _noted_files:
            return
        _noted_files.add(url)
        first_of_host = host not in _noted_hosts
        _noted_hosts.add(host)
    level = logging.WARNING if first_of_host else logging.INFO
    log.log(
        level,
        "%s: the server ignores Range requests (it answered a ranged GET with the whole file, %d bytes), so whole "
        "files are fetched instead of the byte ranges needed: each file once, kept in memory or the video cache. "
        "Serve the dataset with a server that supports Range requests to fetch less.",
        url, size,
    )


class SizedReader(io.RawIOBase):
    """A read-only, seekable view of ``size`` bytes: subclasses set ``size`` and implement ``read(n)``
    from ``self._pos`` (advancing it). Position, seeking and ``readinto`` live here, once."""

    size: int
    _pos: int = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer) -> int:  # noqa: ANN001 - any writable buffer
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


class RetryingRangeFile(SizedReader):
    """A read-only, seekable view of a remote file where every read is one retried ranged request.

    pyarrow reads parquet footers and column chunks through it; each ``read`` is a single
    :func:`read_range` retried on transient failures, so a flaky server costs a retry of that range,
    not of the whole file. A ``403`` re-resolves the URL once. If the server ignores ``Range``, the
    first read receives the whole file: it is kept here (memory: one file, until :meth:`close`) and every
    later read is served from it without a request; so is a read that asked for the whole file (pyarrow
    reads a file smaller than its footer read whole). Used for remote files only.
    """

    def __init__(
        self, fs, path: str, *, retries: int = RETRIES, backoff_s: float = BACKOFF_S,  # noqa: ANN001
        sleep: Callable[[float], None] = time.sleep, rng: random.Random | None = None,
    ) -> None:
        super().__init__()
        self.fs, self.path = fs, path
        self.retries, self.backoff_s = retries, backoff_s
        self._sleep, self._rng = sleep, rng
        self._whole: bytes | None = None
        self.size = int(self._retry(lambda: fs.size(path), path))
        self._pos = 0

    def _retry(self, fn: Callable[[], T], what: str) -> T:
        return with_retries(
            fn, what=what, remote=True, retries=self.retries, backoff_s=self.backoff_s, sleep=self._sleep,
            path=self.path, rng=self._rng, reresolve=lambda: reresolve_url(self.fs, self.path),
        )

    @property
    def whole_file_held(self) -> bool:
        """Whether the server ignored ``Range`` and the whole file is held here."""
        return self._whole is not None

    def read_at(self, offset: int, length: int) -> bytes:
        """Bytes ``[offset, offset + length)`` (fewer only past the end of the file); the position is unchanged."""
        end = min(self.size, offset + length)
        if end <= offset:
            return b""
        if self._whole is not None:
            return self._whole[offset:end]
        try:
            data = self._retry(
                lambda: read_range(self.fs, self.path, offset, end, size=self.size), f"{self.path} [{offset}:{end}]"
            )
        except RangeIgnored as e:
            note_range_ignored(self.path, len(e.body))
            self._whole = e.body
            return self._whole[offset:end]
        if offset == 0 and end == self.size:
            self._whole = data  # pyarrow reads a small file whole on open: its later reads need no request
        return data

    def read(self, n: int = -1) -> bytes:
        start = self._pos
        end = self.size if n is None or n < 0 else min(self.size, start + n)
        data = self.read_at(start, end - start)
        self._pos = start + len(data)
        return data

    def readall(self) -> bytes:
        return self.read(-1)

    def close(self) -> None:
        self._whole = None
        super().close()
