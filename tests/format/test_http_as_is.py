"""HTTP as it is: servers that ignore Range, throttle with Retry-After, expire signed URLs, or lack a file.

Real servers on 127.0.0.1 (streamnodes.testing_http, and Python's own http.server), real fsspec, real
loaders; waits are counted through an injected ``sleep``, never timed.
"""

from __future__ import annotations

import functools
import io
import itertools
import logging
import random
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import fsspec
import pytest
import torch

from streamnodes import DownloadError, build_loader
from streamnodes.format import open_dataset
from streamnodes.format.retry import (
    RETRY_AFTER_JITTER,
    RangeIgnored,
    RetryingRangeFile,
    ShortRead,
    read_range,
    reresolve_url,
    with_retries,
)
from streamnodes.sharding import plan_epoch
from streamnodes.testing import write_dataset
from streamnodes.testing_http import Faults, serve_directory
from streamnodes.video_cache import VideoCache
from streamnodes.video_cache.download import copy_sized

DATA = "data/chunk-000/file-000.parquet"
SEED = 3


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two cameras, two data files larger than pyarrow's footer read (so reading one takes ranged requests,
    not one whole read) and several mp4s per camera (episodes share files)."""
    root = write_dataset(
        tmp_path_factory.mktemp("as_is") / "ds",
        episode_lengths=[40, 25, 50, 30, 35, 20],
        fps=10,
        state_dim=128,
        action_dim=128,
        cameras={"observation.images.front": (64, 64), "observation.images.wrist": (64, 96)},
        data_files_size_in_mb=0.15,
        video_files_size_in_mb=0.01,
        chunks_size=3,
    )
    assert all(p.stat().st_size > 100_000 for p in root.glob("data/*/*.parquet"))
    return root


def _same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b) > 0
    for x, y in zip(a, b, strict=True):
        assert set(x) == set(y)
        for key, value in x.items():
            assert torch.equal(value, y[key]) if isinstance(value, torch.Tensor) else value == y[key], key


def _files_per_consumer(root: Path, num_consumers: int) -> list[set[str]]:
    """The data and video files each consumer reads in epoch 0 (from the sharding plan, default shuffle)."""
    meta = open_dataset(root)
    plan = plan_epoch({e.episode_index: e.length for e in meta.episodes}, seed=SEED, epoch=0, shuffle=True,
                      num_consumers=num_consumers)
    by_index = {e.episode_index: e for e in meta.episodes}
    out = []
    for episodes in plan.episodes:
        files = set()
        for index in episodes:
            ref = by_index[index]
            files.add(ref.data_path)
            files.update(segment.path for segment in ref.videos)
        out.append(files)
    return out


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_server_that_ignores_range_streams_each_file_whole_once_per_consumer(
    dataset: Path, tmp_path: Path, num_workers: int, caplog: pytest.LogCaptureFixture
) -> None:
    kwargs = {"batch_size": 4, "num_workers": num_workers, "seed": SEED}
    local = list(build_loader(dataset, **kwargs))
    caplog.set_level(logging.INFO, logger="streamnodes.format.retry")
    with serve_directory(dataset, ranges=False) as server:
        remote = list(build_loader(server.url, cache_dir=str(tmp_path / "cache"), **kwargs))
        gets = {path: n for (method, path), n in server.requests.items() if method == "GET"}
        sent = server.bytes_by_path
    _same(local, remote)
    consumers = _files_per_consumer(dataset, max(1, num_workers))
    files = {p.relative_to(dataset).as_posix() for p in dataset.rglob("*") if p.suffix in (".parquet", ".mp4")}
    data_files = {f for f in files if f.startswith("data/")}
    videos = {f for f in files if f.endswith(".mp4")}
    assert len(data_files) >= 2 and len(videos) >= 4
    for path in data_files | videos:
        readers = sum(path in c for c in consumers)
        # One whole-file GET per consumer that reads the file, plus open_dataset's footer check of data files:
        # no retry, no second fetch within a consumer.
        expected = readers + (path in data_files)
        assert gets.get(path, 0) == expected, path
        assert sent.get(path, 0) == expected * (dataset / path).stat().st_size, path
    # Logged in this process (workers log in their own) once per file: WARNING for the server's first file,
    # INFO for the others; the URL named. open_dataset's footer check met both data files here, and without
    # workers this process also read every video (the span cache keeps each body and cuts spans from it).
    ignored = [r for r in caplog.records if "the server ignores Range requests" in r.getMessage()]
    named = sorted(r.getMessage().split(": the server ignores")[0] for r in ignored)
    here = data_files | (videos if num_workers == 0 else set())
    assert named == sorted(server.url_of(p) for p in here)
    assert [r.levelno for r in ignored] == [logging.WARNING] + [logging.INFO] * (len(here) - 1)


class _QuietHandler(SimpleHTTPRequestHandler):
    """Python's own static file handler (no Range support), without its request log on stderr."""

    def log_message(self, format: str, *args) -> None:  # noqa: A002
        pass


@pytest.fixture
def python_http_server(dataset: Path) -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(dataset)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def test_python_http_server_streams_a_dataset(dataset: Path, python_http_server: str, tmp_path: Path) -> None:
    kwargs = {"batch_size": 4, "seed": SEED, "delta_timestamps": {"observation.images.front": [-0.1, 0.0]}}
    local = list(itertools.islice(build_loader(dataset, **kwargs), 3))
    remote = list(itertools.islice(build_loader(python_http_server, cache_dir=str(tmp_path / "c"), **kwargs), 3))
    _same(local, remote)


def test_ranged_reads_of_a_range_ignoring_server_make_one_request(dataset: Path) -> None:
    original = (dataset / DATA).read_bytes()
    with serve_directory(dataset, ranges=False) as server:
        f = RetryingRangeFile(fsspec.filesystem("http"), server.url_of(DATA), sleep=pytest.fail)
        assert f.read_at(10, 20) == original[10:30] and f.whole_file_held
        f.seek(-8, io.SEEK_END)
        assert f.read() == original[-8:] and f.read_at(len(original) - 3, 100) == original[-3:]
        assert server.count(DATA) == 1 and server.bytes_of(DATA) == len(original)
        f.close()
        # A body cut short by a dropped connection is still a transient failure: retried, then whole.
        server.set_faults(Faults(drop_rate=1.0, max_faults=1))
        server.reset_counts()
        sleeps: list[float] = []
        g = RetryingRangeFile(fsspec.filesystem("http"), server.url_of(DATA), sleep=sleeps.append)
        assert g.read_at(100, 50) == original[100:150]
        assert len(sleeps) == 1 and server.count(DATA) == 2 and server.faults_injected == {"drop": 1}


def test_read_range_tells_whole_bodies_from_short_ones(dataset: Path) -> None:
    original = (dataset / DATA).read_bytes()
    n = len(original)
    fs = fsspec.filesystem("http")
    with serve_directory(dataset, ranges=False) as server:
        url = server.url_of(DATA)
        with pytest.raises(RangeIgnored) as info:
            read_range(fs, url, 5, 10, size=n)
        assert info.value.body == original and url in str(info.value)
        with pytest.raises(DownloadError, match=rf"^{url} \[5:10\]: the server sent {n} bytes for a 5-byte range"):
            read_range(fs, url, 5, 10, size=n + 1)  # longer than asked, not the file: broken, not retried
    with serve_directory(dataset) as server:
        url = server.url_of(DATA)
        assert read_range(fs, url, 5, 10, size=n) == original[5:10]
        with pytest.raises(ShortRead, match="sent 3 of bytes"):
            read_range(fs, url, n - 3, n + 5, size=n)  # the server has fewer bytes: short, transient


def test_video_cache_writes_the_whole_body_of_a_range_ignoring_server_once(dataset: Path, tmp_path: Path) -> None:
    video = sorted(p.relative_to(dataset).as_posix() for p in dataset.rglob("*.mp4"))[0]
    data = (dataset / video).read_bytes()
    with serve_directory(dataset, ranges=False) as server:
        fs = fsspec.filesystem("http")
        out, chunks = io.BytesIO(), []
        copy_sized(
            fs, server.url_of(video), len(data), out, chunk_bytes=256, retry=lambda fn, what: fn(),
            before_chunk=lambda: None, on_chunk=chunks.append,
        )
        assert out.getvalue() == data and chunks == [len(data)]
        assert server.count(video) == 1 and server.bytes_of(video) == len(data)
        with VideoCache(fs, tmp_path / "c", chunk_bytes=256) as cache:
            handle = cache.acquire(server.url_of(video))
            assert Path(handle.local_path(timeout=60)).read_bytes() == data
            assert cache.stats()["retries"] == 0 and cache.stats()["bytes_downloaded"] == len(data)
        assert server.count(video) == 2 and server.bytes_of(video) == 2 * len(data)


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_seconds_is_honoured_with_jitter(dataset: Path, status: int) -> None:
    original = (dataset / DATA).read_bytes()
    faults = Faults(throttle_rate=1.0, throttle_status=status, retry_after="7", max_faults=2)
    with serve_directory(dataset, faults=faults) as server:
        url, sleeps = server.url_of(DATA), []
        data = with_retries(
            functools.partial(read_range, fsspec.filesystem("http"), url, 0, 100, size=len(original)),
            what=url, remote=True, sleep=sleeps.append, rng=random.Random(5),
        )
        assert data == original[:100] and server.count(DATA) == 3 and server.faults_injected == {"throttle": 2}
    draws = random.Random(5)
    assert sleeps == [7.0 * (1 + RETRY_AFTER_JITTER * draws.random()) for _ in range(2)]
    assert all(7.0 <= s <= 7.0 * (1 + RETRY_AFTER_JITTER) for s in sleeps) and sleeps[0] != sleeps[1]


def test_retry_after_is_capped_bounded_by_retries_and_dates_are_read(dataset: Path) -> None:
    faults = Faults(throttle_rate=1.0, throttle_status=429, retry_after="3600", max_consecutive=100)
    with serve_directory(dataset, faults=faults) as server:
        url, sleeps = server.url_of(DATA), []
        with pytest.raises(DownloadError, match=rf"^{url}: still failing after 3 retries.*rate-limiting \(429\)"):
            with_retries(
                functools.partial(read_range, fsspec.filesystem("http"), url, 0, 100), what=url, remote=True,
                retries=3, sleep=sleeps.append, max_retry_after_s=30.0, path=url,
            )
        assert sleeps == [30.0, 30.0, 30.0] and server.count(DATA) == 4
        # An HTTP date decades ahead: read as a date (not ignored), then capped the same way.
        server.set_faults(Faults(throttle_rate=1.0, retry_after="Wed, 01 Jan 2098 00:00:00 GMT", max_faults=1))
        server.reset_counts()
        sleeps.clear()
        with_retries(
            functools.partial(read_range, fsspec.filesystem("http"), url, 0, 100), what=url, remote=True,
            sleep=sleeps.append,
        )
        assert sleeps == [30.0]
        # No Retry-After: the exponential backoff, shortened by jitter.
        server.set_faults(Faults(throttle_rate=1.0, retry_after=None, max_faults=3))
        server.reset_counts()
        sleeps.clear()
        with_retries(
            functools.partial(read_range, fsspec.filesystem("http"), url, 0, 100), what=url, remote=True,
            sleep=sleeps.append, backoff_s=1.0, rng=random.Random(1),
        )
        assert len(sleeps) == 3 and all(0.5 * b <= s <= b for s, b in zip(sleeps, [1.0, 2.0, 4.0], strict=True))
        assert sleeps != [1.0, 2.0, 4.0]


def test_a_loader_through_a_throttling_server_equals_local(dataset: Path, tmp_path: Path) -> None:
    kwargs = {"batch_size": 4, "seed": SEED}
    local = list(build_loader(dataset, **kwargs))
    faults = Faults(throttle_rate=0.3, throttle_status=429, retry_after="0", seed=4, max_consecutive=2)
    with serve_directory(dataset, faults=faults) as server:
        remote = list(build_loader(server.url, cache_dir=str(tmp_path / "c"), **kwargs))
        assert server.faults_injected.get("throttle", 0) > 3
    _same(local, remote)


def test_an_expired_url_is_re_resolved_once(dataset: Path) -> None:
    original = (dataset / DATA).read_bytes()
    fs = fsspec.filesystem("http")
    with serve_directory(dataset) as server:
        url = server.url_of(DATA)
        f = RetryingRangeFile(fs, url, sleep=pytest.fail)
        server.set_faults(Faults(forbidden={DATA: 1}))
        server.reset_counts()
        assert f.read_at(0, 64) == original[:64]
        # The refused GET, the re-resolving HEAD, the GET that worked; no backoff.
        assert server.requests == {("GET", DATA): 2, ("HEAD", DATA): 1}
        assert server.faults_injected == {"forbidden": 1}
        # Refused again after re-resolving: not authorised, named, no further attempt.
        server.set_faults(Faults(forbidden={DATA: 100}))
        server.reset_counts()
        with pytest.raises(DownloadError, match=rf"^{url} \[64:128\]: .*403 Forbidden, again after re-resolving") as info:
            f.read_at(64, 64)
        assert "not authorised" in str(info.value) and "token" in str(info.value) and info.value.path == url
        # GET refused; re-resolve: HEAD refused, fsspec's GET fallback refused; GET refused again.
        assert server.requests == {("GET", DATA): 3, ("HEAD", DATA): 1}
    with serve_directory(dataset, faults=Faults(forbidden={DATA: 100})) as server:
        url = server.url_of(DATA)
        with pytest.raises(DownloadError, match=rf"^{url}: the server refused access \(HTTP 403 Forbidden\): "):
            with_retries(functools.partial(read_range, fs, url, 0, 8), what=url, remote=True, sleep=pytest.fail)
        assert server.count(DATA) == 1  # without a re-resolve hook: at once


def test_the_video_cache_and_the_loader_recover_from_an_expired_url(dataset: Path, tmp_path: Path) -> None:
    videos = sorted(p.relative_to(dataset).as_posix() for p in dataset.rglob("*.mp4"))
    data = (dataset / videos[0]).read_bytes()
    fs = fsspec.filesystem("http")
    # Its size lookup (HEAD, then fsspec's GET fallback) is refused: re-resolved once, then downloaded.
    with serve_directory(dataset, faults=Faults(forbidden={videos[0]: 2})) as server:
        with VideoCache(fs, tmp_path / "c") as cache:
            assert Path(cache.acquire(server.url_of(videos[0])).local_path(timeout=60)).read_bytes() == data
            assert cache.stats()["retries"] == 0 and cache.stats()["failures"] == 0
        assert server.faults_injected == {"forbidden": 2}
    with serve_directory(dataset, faults=Faults(forbidden={videos[0]: 100})) as server:
        url = server.url_of(videos[0])
        refused = rf"{url}.*403 Forbidden, again after re-resolving.*not authorised"
        with VideoCache(fs, tmp_path / "c2") as cache, pytest.raises(DownloadError, match=refused):
            cache.acquire(url).local_path(timeout=60)
    kwargs = {"batch_size": 4, "seed": SEED}
    local = list(build_loader(dataset, **kwargs))
    with serve_directory(dataset, faults=Faults(forbidden={v: 2 for v in videos} | {DATA: 2})) as server:
        remote = list(build_loader(server.url, cache_dir=str(tmp_path / "l"), **kwargs))
        assert server.faults_injected == {"forbidden": 2 * (len(videos) + 1)}
    _same(local, remote)


def test_a_missing_file_fails_at_once_naming_its_url(dataset: Path) -> None:
    fs = fsspec.filesystem("http")
    with serve_directory(dataset) as server:
        url = server.url_of("data/chunk-000/nope.parquet")
        with pytest.raises(FileNotFoundError, match=url):
            with_retries(functools.partial(read_range, fs, url, 0, 8), what=url, remote=True, sleep=pytest.fail,
                         reresolve=functools.partial(reresolve_url, fs, url))
        assert server.requests == {("GET", "data/chunk-000/nope.parquet"): 1}
