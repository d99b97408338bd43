"""Retries of remote reads: what is transient, and ranged reads that survive a flaky real server."""

from __future__ import annotations

import fsspec
import pytest

from streamnodes.errors import DownloadError
from streamnodes.format.retry import RetryingRangeFile, ShortRead, is_transient, with_retries
from streamnodes.testing_http import Faults, serve_directory
from tests.conftest import REF_ROOT


class _Status(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


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
        with_retries(failing, what="thing", remote=True, retries=2, backoff_s=0.001)
    assert len(calls) == 3
    calls.clear()
    with pytest.raises(_Status):
        with_retries(failing, what="thing", remote=False, retries=2, backoff_s=0.001)
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
