"""Bounded retries for reads of remote files (http, hf, object stores) that fail transiently.

fsspec's HTTP file system does not retry: one ``500`` or dropped connection fails the read, and a
failed size lookup surfaces as ``FileNotFoundError`` with the real error as its cause. Local reads
are never retried. What counts as transient is decided from the whole exception chain: server
errors (5xx), 408/429, dropped or reset connections, timeouts and truncated payloads. A 404/403
is permanent, and so is anything without such evidence (a missing file, a corrupt footer).
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable
from typing import TypeVar

from streamnodes.errors import DownloadError, short_text

log = logging.getLogger(__name__)

T = TypeVar("T")
RETRIES = 5
BACKOFF_S = 0.2
MAX_BACKOFF_S = 5.0
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


def is_transient(error: BaseException) -> bool:
    """Whether retrying a remote read that raised ``error`` can help (evidence of a network fault)."""
    for e in _chain(error):
        status = getattr(e, "status", None)
        if isinstance(status, int) and 400 <= status < 600:
            return status >= 500 or status in (408, 429)
        if type(e).__name__ in _TRANSIENT_NAMES or isinstance(e, (ConnectionError, TimeoutError)):
            return True
    return False


def _kind(error: BaseException) -> str:
    """``error``'s type, with its cause's type and HTTP status: fsspec reports a 500 on a size request as
    ``FileNotFoundError`` raised from the real error."""
    cause = error.__cause__
    if cause is None:
        return type(error).__name__
    status = getattr(cause, "status", None)
    return f"{type(error).__name__} from {type(cause).__name__}" + (f" {status}" if isinstance(status, int) else "")


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
) -> T:
    """Run ``fn``; for remote files retry transient failures up to ``retries`` times with backoff.

    Retry ``k`` first waits ``min(max_backoff_s, backoff_s * 2**(k-1))`` seconds through ``sleep``, once
    per retry: a caller may count retries there, or raise from it to stop waiting (a closed cache).

    When the retries are used up, :class:`DownloadError` names ``what`` and the last error (its ``path``
    attribute is ``path``, the file being read). Permanent errors
    (a missing file, a corrupt footer) are raised at once, unchanged, for the caller to word.
    """
    attempt = 0
    while True:
        try:
            return fn()
        except Exception as error:
            if not remote or not is_transient(error):
                raise
            attempt += 1
            if attempt > retries:
                raise DownloadError(
                    f"{what}: still failing after {retries} retries, failed {attempt} times in a row (retries={retries}) "
                    f"({_kind(error)}: "
                    f"{short_text(error)}). The server keeps failing; check it or retry later.",
                    path=path,
                ) from error
            delay = min(max_backoff_s, backoff_s * 2 ** (attempt - 1))
            log.info("retrying %s in %.2fs after %s (attempt %d/%d)", what, delay, type(error).__name__, attempt, retries)
            sleep(delay)


class ShortRead(ConnectionError):
    """A ranged read returned fewer bytes than asked for (a dropped connection): transient."""


class RetryingRangeFile(io.RawIOBase):
    """A read-only, seekable view of a remote file where every read is one retried ranged request.

    pyarrow reads parquet footers and column chunks through it; each ``read`` is a single
    ``fs.cat_file(path, start, end)`` retried on transient failures, so a flaky server costs a
    retry of that range, not of the whole file. Used for remote files only.
    """

    def __init__(self, fs, path: str, *, retries: int = RETRIES, backoff_s: float = BACKOFF_S) -> None:  # noqa: ANN001
        super().__init__()
        self.fs, self.path = fs, path
        self.retries, self.backoff_s = retries, backoff_s
        self.size = int(with_retries(lambda: fs.size(path), what=path, remote=True, retries=retries, backoff_s=backoff_s, path=path))
        self._pos = 0

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

    def read(self, n: int = -1) -> bytes:
        start = self._pos
        end = self.size if n is None or n < 0 else min(self.size, start + n)
        if end <= start:
            return b""

        def fetch() -> bytes:
            data = self.fs.cat_file(self.path, start=start, end=end)
            if len(data) != end - start:
                raise ShortRead(f"got {len(data)} of {end - start} bytes")
            return data

        data = with_retries(fetch, what=f"{self.path} [{start}:{end}]", remote=True, retries=self.retries, backoff_s=self.backoff_s, path=self.path)
        self._pos = end
        return data

    def readinto(self, buffer) -> int:  # noqa: ANN001 - any writable buffer
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def readall(self) -> bytes:
        return self.read(-1)
