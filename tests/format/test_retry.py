"""Retries of remote reads: what is transient, and ranged reads that survive a flaky real server."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import fsspec
import pytest

from streamnodes.errors import DownloadError
from streamnodes.format.retry import (
    RETRY_AFTER_JITTER,
    RetryingRangeFile,
    ShortRead,
    backoff_delay,
    http_status,
    is_transient,
    parse_retry_after,
    retry_after,
    with_retries,
)
from streamnodes.testing_http import Faults, serve_directory
from tests.conftest import REF_ROOT


class _Status(Exception):
    """An HTTP error as aiohttp's ClientResponseError carries it: ``status`` and the response ``headers``."""

    def __init__(self, status: int, headers: dict | None = None) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.headers = headers


def _caused(outer: BaseException, inner: BaseException) -> BaseException:
    try:
        raise outer from inner
    except BaseException as e:  # noqa: BLE001
        return e


def test_transient_classification() -> None:
    assert is_transient(_Status(500)) and is_transient(_Status(503)) and is_transient(_Status(429))
    assert not is_transient(_Status(404)) and not is_transient(_Status(403))
    assert is_transient(_caused(FileNotFoundError("u"), _Status(500)))  # fsspec's failed HEAD
    assert not is_transient(_caused(FileNotFoundError("u"), _Status(404)))
    assert not is_transient(FileNotFoundError("u"))
    assert is_transient(ShortRead("3 of 8")) and is_transient(ConnectionResetError())
    assert not is_transient(ValueError("corrupt footer"))


def test_with_retries_is_bounded_and_local_never_retries() -> None:
    calls = []

    def failing():
        calls.append(1)
        raise _Status(500)

    with pytest.raises(DownloadError, match=r"thing: still failing after 2 retries"):
        with_retries(failing, what="thing", remote=True, retries=2, backoff_s=0.001, sleep=lambda s: None)
    assert len(calls) == 3
    calls.clear()
    with pytest.raises(_Status):
        with_retries(failing, what="thing", remote=False, retries=2, backoff_s=0.001, sleep=lambda s: None)
    assert len(calls) == 1
    with pytest.raises(FileNotFoundError):
        with_retries(lambda: (_ for _ in ()).throw(FileNotFoundError("x")), what="x", remote=True)


def test_ranged_reads_through_a_flaky_server_equal_the_file() -> None:
    path = REF_ROOT / "data/chunk-000/file-000.parquet"
    original = path.read_bytes()
    faults = Faults(error_rate=0.4, drop_rate=0.3, seed=3, max_consecutive=3)
    with serve_directory(REF_ROOT, faults=faults) as server:
        fs = fsspec.filesystem("http")
        f = RetryingRangeFile(fs, server.url_of("data/chunk-000/file-000.parquet"), backoff_s=0.001)
        assert f.size == len(original)
        chunks = []
        while chunk := f.read(1000):
            chunks.append(chunk)
        assert b"".join(chunks) == original
        f.seek(-8, 2)
        assert f.read() == original[-8:]
        assert sum(server.faults_injected.values()) > 3


NOW = datetime(2030, 5, 17, 12, 0, 0, tzinfo=UTC)


def test_retry_after_values() -> None:
    assert parse_retry_after("120") == 120.0 and parse_retry_after(" 0 ") == 0.0
    assert parse_retry_after("Fri, 17 May 2030 12:00:42 GMT", now=NOW) == 42.0  # an HTTP date
    assert parse_retry_after("Fri, 17 May 2030 11:00:00 GMT", now=NOW) == 0.0  # already past: no wait
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None and parse_retry_after("-3") is None
    date = (NOW + timedelta(seconds=9)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    # Only 429 and 503 carry a wait; found anywhere in the chain (fsspec's FileNotFoundError from a HEAD).
    assert retry_after(_caused(FileNotFoundError("u"), _Status(503, {"Retry-After": date})), now=NOW) == 9.0
    assert retry_after(_Status(429, {"Retry-After": "4"})) == 4.0
    assert retry_after(_Status(500, {"Retry-After": "4"})) is None and retry_after(_Status(429)) is None
    assert retry_after(ConnectionResetError()) is None
    assert http_status(_caused(FileNotFoundError("u"), _Status(403))) == 403 and http_status(ValueError()) is None


def test_backoff_delays_with_jitter_and_caps() -> None:
    def delay(attempt: int, u: float, **kw) -> float:
        return backoff_delay(attempt, backoff_s=1.0, max_backoff_s=5.0, u=u, **kw)

    assert [delay(k, 0.0) for k in (1, 2, 3, 4, 5)] == [1.0, 2.0, 4.0, 5.0, 5.0]  # doubling, capped
    assert [delay(k, 0.999, jitter=0.5) for k in (1, 3)] == pytest.approx([0.5005, 2.002])  # shortened by jitter
    assert delay(3, 0.7, jitter=0.0) == 4.0
    # Retry-After: at least what the server asked, lengthened by up to RETRY_AFTER_JITTER, capped.
    assert delay(1, 0.0, retry_after_s=7.0) == 7.0 and delay(1, 0.5, retry_after_s=7.0) == 7.0 * (1 + RETRY_AFTER_JITTER / 2)
    assert delay(1, 0.9, retry_after_s=600.0, max_retry_after_s=30.0) == 30.0
    assert delay(1, 0.9, retry_after_s=7.0, jitter=0.0) == 7.0  # max_backoff_s does not apply to it


def test_with_retries_honours_retry_after_and_counts_it_as_a_retry() -> None:
    errors = [_Status(429, {"Retry-After": "3"}), _Status(503, {"Retry-After": "100"}), ConnectionResetError()]
    sleeps: list[float] = []

    def flaky() -> str:
        if errors:
            raise errors.pop(0)
        return "ok"

    assert with_retries(flaky, what="x", remote=True, sleep=sleeps.append, rng=random.Random(0), backoff_s=1.0) == "ok"
    draws = random.Random(0)
    u = [draws.random() for _ in range(3)]
    assert sleeps == [3 * (1 + RETRY_AFTER_JITTER * u[0]), 30.0, 4.0 * (1 - 0.5 * u[2])]
    errors[:] = [_Status(429, {"Retry-After": "1"})] * 3
    with pytest.raises(DownloadError, match=r"^x: still failing after 2 retries.*rate-limiting \(429\)"):
        with_retries(flaky, what="x", remote=True, retries=2, sleep=lambda s: None)


def test_a_403_re_resolves_once_then_says_not_authorised() -> None:
    calls, resolved = [], []

    def forbidden_once() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise _caused(FileNotFoundError("u"), _Status(403))
        return "ok"

    def never(delay: float) -> None:
        raise AssertionError(f"a 403 does not back off (asked to sleep {delay})")

    assert with_retries(forbidden_once, what="u", remote=True, sleep=never, reresolve=lambda: resolved.append(1)) == "ok"
    assert len(calls) == 2 and resolved == [1]

    def always() -> None:
        calls.append(1)
        raise _Status(403)

    calls.clear(), resolved.clear()
    with pytest.raises(DownloadError, match=r"^http://h/f: .*403 Forbidden, again after re-resolving.*not authorised") as info:
        with_retries(always, what="http://h/f", remote=True, sleep=never, reresolve=lambda: resolved.append(1), path="http://h/f")
    assert len(calls) == 2 and resolved == [1] and info.value.path == "http://h/f"
    assert isinstance(info.value.__cause__, _Status)

    def failing_resolve() -> None:
        resolved.append(1)
        raise _Status(403)

    calls.clear(), resolved.clear()
    with pytest.raises(DownloadError, match="again after re-resolving"):  # a failing re-resolve: the read decides
        with_retries(always, what="u", remote=True, sleep=never, reresolve=failing_resolve)
    assert len(calls) == 2 and resolved == [1]
    calls.clear()
    with pytest.raises(DownloadError, match=r"^u: the server refused access \(HTTP 403 Forbidden\): the URL is not"):
        with_retries(always, what="u", remote=True, sleep=never)  # no hook: at once
    assert len(calls) == 1
    with pytest.raises(_Status):
        with_retries(always, what="u", remote=False, sleep=never, reresolve=lambda: None)  # local: untouched
