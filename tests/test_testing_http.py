"""The test HTTP server: ranges, HEAD, counters, faults, and fsspec/pyarrow reading a dataset through it."""

from __future__ import annotations

import http.client
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from streamnodes.format import open_dataset, read_episode_columns
from streamnodes.testing_http import Faults, serve_directory
from tests.conftest import REF_ROOT

VIDEO = "videos/observation.images.cam/chunk-000/file-000.mp4"


def _get(url: str, headers: dict | None = None, method: str = "GET") -> tuple[int, dict, bytes]:
    request = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_get_head_and_ranges() -> None:
    data = (REF_ROOT / VIDEO).read_bytes()
    n = len(data)
    with serve_directory(REF_ROOT) as srv:
        assert srv.url.startswith("http://127.0.0.1:")
        status, headers, body = _get(srv.url_of(VIDEO))
        assert status == 200 and body == data and headers["Content-Length"] == str(n)
        assert headers["Accept-Ranges"] == "bytes"
        status, headers, body = _get(srv.url_of(VIDEO), method="HEAD")
        assert status == 200 and body == b"" and headers["Content-Length"] == str(n)
        for header, (start, stop) in {
            "bytes=10-19": (10, 20),
            "bytes=100-": (100, n),
            "bytes=-8": (n - 8, n),
            f"bytes={n - 5}-{n + 100}": (n - 5, n),
        }.items():
            status, headers, body = _get(srv.url_of(VIDEO), {"Range": header})
            assert status == 206, header
            assert body == data[start:stop], header
            assert headers["Content-Range"] == f"bytes {start}-{stop - 1}/{n}", header
        for bad in (f"bytes={n}-", "bytes=5-2", "bytes=0-1,4-5", "items=0-1"):
            status, headers, _ = _get(srv.url_of(VIDEO), {"Range": bad})
            assert status == 416 and headers["Content-Range"] == f"bytes */{n}", bad
        assert _get(srv.url_of("nope.mp4"))[0] == 404
        assert _get(srv.url + "/meta/../../etc/passwd")[0] in (403, 404)
        assert srv.count(VIDEO) == 1 + 4 + 4 and srv.count(VIDEO, "HEAD") == 1
        assert srv.requests[("GET", "nope.mp4")] == 1
        assert srv.bytes_sent == n + 10 + (n - 100) + 8 + 5
        url = srv.url
    with pytest.raises(urllib.error.URLError):  # stopped with the block
        urllib.request.urlopen(url + "/meta/info.json", timeout=2)


def test_only_loopback_hosts() -> None:
    with pytest.raises(ValueError, match="loopback"), serve_directory(REF_ROOT, host="0.0.0.0"):
        pass


def test_faults_are_seeded_bounded_and_counted(tmp_path: Path) -> None:
    (tmp_path / "a.bin").write_bytes(bytes(range(256)) * 40)
    (tmp_path / "b.txt").write_bytes(b"hello")

    def statuses(faults: Faults) -> list[int]:
        with serve_directory(tmp_path, faults=faults) as srv:
            out = [_get(srv.url_of("a.bin"))[0] for _ in range(40)]
            assert _get(srv.url_of("b.txt"))[0] == 200  # not matched by suffixes
            injected = srv.faults_injected
            assert injected.get("error", 0) + injected.get("fail_path", 0) == out.count(500)
        return out

    faults = Faults(error_rate=0.5, suffixes=(".bin",), seed=1, max_consecutive=2)
    first = statuses(faults)
    assert first == statuses(Faults(error_rate=0.5, suffixes=(".bin",), seed=1, max_consecutive=2))
    assert first != statuses(Faults(error_rate=0.5, suffixes=(".bin",), seed=2, max_consecutive=2))
    assert 5 <= first.count(500) <= 30
    assert "500,500,500" not in ",".join(map(str, first))  # at most 2 in a row
    assert statuses(Faults(error_rate=1.0, max_faults=3, max_consecutive=100)).count(500) == 3
    assert set(statuses(Faults(fail_paths=["a.bin"], max_faults=0))) == {500}  # whatever the bounds


def test_fault_streaks_are_per_request_not_per_file(tmp_path: Path) -> None:
    """Two clients reading different ranges of one file (two loader workers): neither's requests
    extend or reset the other's streak, so each sees at most ``max_consecutive`` faults in a row."""
    (tmp_path / "a.bin").write_bytes(bytes(range(256)) * 40)
    with serve_directory(tmp_path, faults=Faults(error_rate=1.0, max_consecutive=2)) as srv:
        url = srv.url_of("a.bin")
        first, second = {"Range": "bytes=0-9"}, {"Range": "bytes=10-19"}
        seen = [(_get(url, first)[0], _get(url, second)[0]) for _ in range(3)]
    assert seen == [(500, 500), (500, 500), (206, 206)]  # per file it would be 500, 500, 206, 500, 500, 206


def test_dropped_connections_and_delays(tmp_path: Path) -> None:
    payload = bytes(range(256)) * 64
    (tmp_path / "a.bin").write_bytes(payload)
    with serve_directory(tmp_path, faults=Faults(drop_rate=1.0, max_faults=1)) as srv:
        host, port = srv.url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        conn.request("GET", "/a.bin")
        response = conn.getresponse()
        assert response.status == 200 and response.getheader("Content-Length") == str(len(payload))
        with pytest.raises(http.client.IncompleteRead) as info:
            response.read()
        assert len(info.value.partial) == len(payload) // 2
        conn.close()
        assert _get(srv.url_of("a.bin"))[2] == payload  # the bound is reached: served whole
        assert srv.faults_injected == {"drop": 1}
        srv.set_faults(Faults(delay_s=0.2))
        t0 = time.monotonic()
        assert _get(srv.url_of("a.bin"))[0] == 200
        assert time.monotonic() - t0 >= 0.2
        assert srv.count("a.bin") == 3


def test_open_dataset_over_http_matches_local() -> None:
    local = open_dataset(REF_ROOT)
    with serve_directory(REF_ROOT) as srv:
        remote = open_dataset(srv.url)
        assert remote.is_remote and not local.is_remote
        assert remote.episodes == local.episodes and remote.tasks == local.tasks
        assert (
            remote.url(VIDEO) == srv.url_of(VIDEO)
            and remote.fs.size(remote.url(VIDEO)) == (REF_ROOT / VIDEO).stat().st_size
        )
        # One episode's rows over HTTP equal the local ones.
        ref = remote.episodes[3]
        columns = read_episode_columns(remote, ref, ["observation.state", "timestamp"])
        expected = read_episode_columns(local, local.episodes[3], ["observation.state", "timestamp"])
        for key, value in expected.items():
            np.testing.assert_array_equal(columns[key], value)
        requests = srv.requests
        assert all(method in ("GET", "HEAD") for method, _ in requests)


def test_ignoring_range_like_python_http_server_and_bytes_per_file(tmp_path: Path) -> None:
    payload = bytes(range(256)) * 20
    (tmp_path / "a.bin").write_bytes(payload)
    (tmp_path / "b.bin").write_bytes(b"hello")
    with serve_directory(tmp_path, ranges=False) as srv:
        assert srv.ranges is False
        status, headers, body = _get(srv.url_of("a.bin"), {"Range": "bytes=10-19"})
        assert status == 200 and body == payload and "Content-Range" not in headers and "Accept-Ranges" not in headers
        assert _get(srv.url_of("a.bin"), {"Range": "bytes=999999-"})[0] == 200  # not even checked
        status, headers, body = _get(srv.url_of("a.bin"), method="HEAD")
        assert status == 200 and body == b"" and headers["Content-Length"] == str(len(payload))
        assert _get(srv.url_of("b.bin"))[2] == b"hello"
        assert srv.bytes_of("a.bin") == 2 * len(payload) and srv.bytes_of("/b.bin") == 5
        assert srv.bytes_by_path == {"a.bin": 2 * len(payload), "b.bin": 5} and srv.bytes_sent == 2 * len(payload) + 5
        srv.ranges = True  # switchable while serving
        status, headers, body = _get(srv.url_of("a.bin"), {"Range": "bytes=10-19"})
        assert status == 206 and body == payload[10:20] and srv.bytes_of("a.bin") == 2 * len(payload) + 10
        srv.reset_counts()
        assert srv.bytes_by_path == {} and srv.bytes_sent == 0


def test_throttling_with_retry_after_and_urls_that_expire(tmp_path: Path) -> None:
    (tmp_path / "a.bin").write_bytes(b"x" * 100)
    (tmp_path / "b.bin").write_bytes(b"y" * 10)
    faults = Faults(throttle_rate=1.0, throttle_status=429, retry_after="7", max_faults=2, suffixes=(".bin",))
    with serve_directory(tmp_path, faults=faults) as srv:
        first, second, third = (_get(srv.url_of("a.bin")) for _ in range(3))
        assert first[0] == second[0] == 429 and first[1]["Retry-After"] == "7" and third[0] == 200
        assert srv.faults_injected == {"throttle": 2} and srv.bytes_of("a.bin") == 100  # error pages not counted
        srv.reset_counts()  # max_faults counts the faults injected since the last reset
        srv.set_faults(Faults(throttle_rate=1.0, throttle_status=503, retry_after=None, max_faults=1))
        status, headers, _ = _get(srv.url_of("a.bin"))
        assert status == 503 and "Retry-After" not in headers
        # The first 2 requests of b.bin (any method) are refused, then it is served; other files are not touched.
        srv.set_faults(Faults(forbidden={"/b.bin": 2}))
        assert [_get(srv.url_of("b.bin"), method="HEAD")[0], _get(srv.url_of("b.bin"))[0]] == [403, 403]
        assert _get(srv.url_of("a.bin"))[0] == 200 and _get(srv.url_of("b.bin"))[2] == b"y" * 10
        assert srv.faults_injected["forbidden"] == 2
        srv.set_faults(Faults(forbidden={"b.bin": 1}))  # re-armed by set_faults
        assert _get(srv.url_of("b.bin"))[0] == 403 and _get(srv.url_of("b.bin"))[0] == 200
    with pytest.raises(ValueError, match="throttle_status"):
        Faults(throttle_status=500)
    with pytest.raises(ValueError, match="throttle_rate"):
        Faults(throttle_rate=2.0)
