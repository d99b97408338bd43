"""The video cache's downloads through the project's retry policy, against a real HTTP server; its lock."""

from __future__ import annotations

import functools
import io
import os
import random
import threading
import time
from pathlib import Path

import fsspec
import pytest

from streamnodes.errors import DownloadError
from streamnodes.format.retry import with_retries
from streamnodes.testing_http import Faults, serve_directory
from streamnodes.video_cache import VideoCache
from streamnodes.video_cache.download import copy_sized, copy_unsized, file_size, read_range
from streamnodes.video_cache.locking import DeferringLock

NAME = "videos/file-000.mp4"


@pytest.fixture
def served(tmp_path: Path) -> tuple[Path, bytes]:
    data = random.Random(0).randbytes(10_000)
    (tmp_path / "videos").mkdir()
    (tmp_path / NAME).write_bytes(data)
    return tmp_path, data


def _retry(retries: int, delays: list[float]):
    """The cache's retry function: with_retries with a sleep hook that records (counts) each retry."""

    def retry(fn, what):
        return with_retries(fn, what=what, remote=True, retries=retries, backoff_s=0.001, sleep=delays.append, jitter=0.0)

    return retry


def test_chunks_survive_a_flaky_server_each_retried_on_its_own(served) -> None:
    root, data = served
    faults = Faults(error_rate=0.3, drop_rate=0.2, seed=5, max_consecutive=3)
    with serve_directory(root, faults=faults) as server:
        fs = fsspec.filesystem("http")
        url = server.url_of(NAME)
        out, delays, chunks, checks = io.BytesIO(), [], [], []
        copy_sized(
            fs, url, len(data), out, chunk_bytes=1024, retry=_retry(3, delays),
            before_chunk=lambda: checks.append(1), on_chunk=chunks.append,
        )
        injected = server.faults_injected
        gets = server.count(NAME)
    assert out.getvalue() == data
    assert chunks == [1024] * 9 + [784] and len(checks) == 10
    # 3 retries per chunk suffice although more than 3 faults hit the file: a success resets the count.
    assert injected["error"] + injected.get("drop", 0) > 3
    assert len(delays) == gets - 10 == injected["error"] + injected.get("drop", 0)


def test_a_failing_range_raises_download_error_naming_url_and_attempts(served) -> None:
    root, data = served
    with serve_directory(root, faults=Faults(fail_paths=[NAME])) as server:
        fs = fsspec.filesystem("http")
        url = server.url_of(NAME)
        delays: list[float] = []
        with pytest.raises(
            DownloadError, match=rf"^{url} \[0:1024\]: still failing after 2 retries, failed 3 times in a row \(retries=2\)"
        ):
            copy_sized(
                fs, url, len(data), io.BytesIO(), chunk_bytes=1024, retry=_retry(2, delays),
                before_chunk=lambda: None, on_chunk=lambda n: None,
            )
        assert server.count(NAME) == 3 and delays == [0.001, 0.002]
        # The size request too: fsspec reports its 500 as FileNotFoundError; the message says so.
        with pytest.raises(DownloadError, match=r"failed 2 times in a row \(retries=1\) \(FileNotFoundError from ClientResponseError 500"):
            _retry(1, [])(functools.partial(file_size, fs, url), url)


def test_a_missing_file_is_not_retried(served) -> None:
    root, _ = served
    with serve_directory(root) as server:
        fs = fsspec.filesystem("http")
        delays: list[float] = []
        with pytest.raises(FileNotFoundError):
            _retry(5, delays)(functools.partial(read_range, fs, server.url_of("videos/nope.mp4"), 0, 10), "nope")
        assert delays == [] and server.count("videos/nope.mp4") == 1


def test_a_raising_backoff_stops_the_retries(served) -> None:
    root, data = served

    class Cancelled(Exception):
        pass

    def cancel(delay: float) -> None:
        raise Cancelled

    with serve_directory(root, faults=Faults(fail_paths=[NAME])) as server:
        fs = fsspec.filesystem("http")
        with pytest.raises(Cancelled):
            with_retries(
                functools.partial(read_range, fs, server.url_of(NAME), 0, 10), what="x", remote=True, sleep=cancel
            )
        assert server.count(NAME) == 1


def test_backoff_doubles_up_to_max_backoff_s() -> None:
    delays: list[float] = []
    calls = []

    def failing() -> None:
        calls.append(1)
        raise ConnectionResetError("dropped")

    with pytest.raises(DownloadError, match="failed 6 times in a row"):
        with_retries(
            failing, what="x", remote=True, retries=5, backoff_s=1.0, max_backoff_s=5.0, sleep=delays.append, jitter=0.0
        )
    assert delays == [1.0, 2.0, 4.0, 5.0, 5.0] and len(calls) == 6


def test_unknown_size_reads_to_the_end_and_starts_over_after_a_failure(tmp_path: Path) -> None:
    data = random.Random(1).randbytes(5000)
    fs = fsspec.filesystem("memory")
    fs.pipe_file("/vc-test/file.mp4", data)
    try:
        out, grown, chunks = io.BytesIO(), [], []
        failed: list[int] = []

        def grow(total: int) -> None:
            grown.append(total)
            if total > 3000 and not failed:
                failed.append(total)
                raise ConnectionResetError("dropped mid-file")  # transient: the copy starts over

        out.write(b"stale bytes of an earlier attempt")
        copy_unsized(
            fs, "/vc-test/file.mp4", out, chunk_bytes=2048, retry=_retry(2, delays := []),
            grow=grow, on_chunk=chunks.append,
        )
        assert out.getvalue() == data and delays == [0.001]
        assert grown == [2048, 4096, 2048, 4096, 5000] and chunks == [2048, 2048, 2048, 904]
        assert file_size(fs, "/vc-test/file.mp4") == 5000
    finally:
        fs.rm("/vc-test", recursive=True)


def test_deferred_work_is_applied_by_the_holder_or_at_once() -> None:
    applied: list[str] = []
    lock: DeferringLock[str] = DeferringLock(applied.append)
    lock.defer("free")  # the lock is free: applied now
    assert applied == ["free"]
    with lock.held():
        lock.defer("same thread")  # a finalizer inside a locked section: must not deadlock
        done = threading.Event()
        threading.Thread(target=lambda: (lock.defer("other thread"), done.set())).start()
        assert done.wait(10)  # the other thread did not block on the held lock
        assert applied == ["free"]  # ... and nothing ran under the holder's feet
        with lock.let_go():
            pass  # taking the lock back applies what was queued
        assert applied == ["free", "same thread", "other thread"]
        lock.defer("later")
    assert applied == ["free", "same thread", "other thread", "later"]  # applied on the way out


def test_a_missing_video_fails_at_once_naming_its_url(served, tmp_path: Path) -> None:
    root, _ = served
    with serve_directory(root) as server, VideoCache(fsspec.filesystem("http"), tmp_path / "c", retries=5) as cache:
        url = server.url_of("videos/nope.mp4")
        with pytest.raises(DownloadError, match=rf"^{url}: download failed \(failed\): "):
            cache.acquire(url).local_path(timeout=30)
        stats = cache.stats()
        assert server.count("videos/nope.mp4", "HEAD") == 1  # a 404 is permanent: no retry
        assert stats["retries"] == 0 and stats["failures"] == 1 and stats["entries"] == 0


def test_releasing_a_download_in_progress_cancels_it_and_frees_everything(served, tmp_path: Path) -> None:
    root, _ = served
    faults = Faults(delay_s=0.2, delay_rate=1.0)  # every request waits: the release comes first
    with serve_directory(root, faults=faults) as server, VideoCache(fsspec.filesystem("http"), tmp_path / "c") as cache:
        handle = cache.acquire(server.url_of(NAME))
        handle.release()
        assert cache.stats()["cancelled"] == 1 and cache.stats()["entries"] == 0
        deadline = time.monotonic() + 30
        while (os.listdir(cache.directory) or cache.current_bytes) and time.monotonic() < deadline:
            time.sleep(0.05)
        stats = cache.stats()
        assert os.listdir(cache.directory) == [] and stats["current_bytes"] == 0
        assert stats["downloads"] == 0 and stats["failures"] == 0 and stats["bytes_downloaded"] == 0
