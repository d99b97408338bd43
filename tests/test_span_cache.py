"""SpanCache against a real HTTP server on 127.0.0.1: decoded frames equal the whole file's, bytes counted."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from streamnodes.decoder_cache import DecoderCache
from streamnodes.format import open_dataset
from streamnodes.nodes.video_decode import decode_query
from streamnodes.testing_http import serve_directory
from streamnodes.types import FrameMap, VideoQuery
from streamnodes.video_cache import SpanCache
from streamnodes.video_cache.span_cache import known_then_fetch

CAM = "observation.images.front"
LENGTHS = [9, 14, 7, 12, 10, 8, 11]


@pytest.fixture(scope="module", params=["av1", "h264"])
def datasets(request, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(several episodes in one mp4, one episode per mp4), in the codec of the param."""
    from streamnodes.testing import write_dataset

    base = tmp_path_factory.mktemp(f"spans-{request.param}")
    many = write_dataset(base / "many", episode_lengths=LENGTHS, fps=10, cameras={CAM: (64, 64)}, codec=request.param)
    one = write_dataset(
        base / "one", episode_lengths=[13, 9], fps=10, cameras={CAM: (64, 64)}, codec=request.param,
        video_files_size_in_mb=0.0001,
    )
    return many, one


def _query(meta, ep, handle) -> VideoQuery:
    seg = ep.video(CAM)
    times = seg.from_timestamp + np.arange(ep.length) / meta.fps
    return VideoQuery(CAM, handle, ep.episode_index, times)


def _acquire(cache: SpanCache, meta, ep):
    seg = ep.video(CAM)
    return cache.acquire_episode(ep.episode_index, [(CAM, meta.url(seg.path), seg.from_timestamp, ep.length)])[CAM]


def test_frames_equal_the_whole_file_for_first_middle_last_and_single_episode_files(datasets, tmp_path: Path) -> None:
    many, one = datasets
    for root, picks in ((many, [0, len(LENGTHS) // 2, len(LENGTHS) - 1]), (one, [0, 1])):
        local_meta = open_dataset(root)
        assert len({ep.video(CAM).path for ep in local_meta.episodes}) == (1 if root is many else 2)
        with serve_directory(root) as server:
            meta = open_dataset(server.url)
            with SpanCache(meta.fs, tmp_path) as cache:
                for i in picks:
                    ep = meta.episodes[i]
                    handle = _acquire(cache, meta, ep)
                    remote, _ = decode_query(DecoderCache(), _query(meta, ep, handle), timeout=30)
                    whole, _ = decode_query(DecoderCache(), _query(meta, local_meta.episodes[i], str(root / ep.video(CAM).path)))
                    assert torch.equal(remote, whole), (root.name, i)
                    if root is many:
                        assert isinstance(handle.frames, FrameMap)
                        assert Path(handle.local_path()).stat().st_size < (root / ep.video(CAM).path).stat().st_size
                stats = cache.stats()
                assert stats["index_reads"] == len({meta.episodes[i].video(CAM).path for i in picks})  # once per file
                assert stats["spans_fetched"] == len(picks) and stats["whole_files"] == 0


def test_released_spans_stay_lru_and_are_not_fetched_again(datasets, tmp_path: Path) -> None:
    many, _ = datasets
    with serve_directory(many) as server:
        meta = open_dataset(server.url)
        rel = meta.episodes[0].video(CAM).path
        with SpanCache(meta.fs, tmp_path) as cache:
            handle = _acquire(cache, meta, meta.episodes[2])
            path = handle.local_path(timeout=30)
            sent = server.bytes_of(rel)
            handle.release()
            assert Path(path).exists() and cache.files == 1  # kept after its last release
            again = _acquire(cache, meta, meta.episodes[2])
            assert again.local_path(timeout=30) == path and server.bytes_of(rel) == sent
            assert cache.stats()["spans_fetched"] == 1 and cache.stats()["hits"] == 1
            again.release()
            cache.drain()  # the source is exhausted: unreferenced spans go now
            assert not Path(path).exists() and cache.current_bytes == 0


def test_pool_of_4_with_a_bound_of_one_and_a_half_spans_never_deadlocks(datasets, tmp_path: Path) -> None:
    many, _ = datasets
    local_meta = open_dataset(many)
    with serve_directory(many) as server:
        meta = open_dataset(server.url)
        probe = SpanCache(meta.fs, tmp_path)
        sizes = [ _acquire(probe, meta, ep) for ep in meta.episodes[:4]]
        biggest = max(Path(h.local_path(timeout=30)).stat().st_size for h in sizes)
        del sizes
        probe.close()
        bound = int(1.5 * biggest) + 512  # the reservation is an upper bound (moov + slack): room for 1 span
        with SpanCache(meta.fs, tmp_path, max_bytes=bound, num_threads=2) as cache:
            pool = {i: _acquire(cache, meta, meta.episodes[i]) for i in range(4)}  # every pooled episode holds one
            rng = random.Random(0)
            decoded = Counter()
            decoders = DecoderCache()
            for _ in range(24):
                i = rng.randrange(4)
                ep = meta.episodes[i]
                got, _ = decode_query(decoders, _query(meta, ep, pool[i]), timeout=60)
                want, _ = decode_query(DecoderCache(), _query(meta, ep, str(many / ep.video(CAM).path)))
                assert torch.equal(got, want)
                decoded[i] += 1
            stats = cache.stats()
        assert len(decoded) == 4 and stats["peak_bytes"] <= bound
        assert stats["evictions"] > 0 and stats["refetches"] > 0  # referenced spans gave way to the decoder
        assert local_meta.episodes[0].length == LENGTHS[0]


def test_server_ignoring_range_sends_each_file_once_and_spans_are_cut_from_it(datasets, tmp_path: Path) -> None:
    many, _ = datasets
    with serve_directory(many, ranges=False) as server:
        meta = open_dataset(server.url)
        rel = meta.episodes[0].video(CAM).path
        with SpanCache(meta.fs, tmp_path) as cache:
            for ep in meta.episodes:
                handle = _acquire(cache, meta, ep)
                got, _ = decode_query(DecoderCache(), _query(meta, ep, handle), timeout=30)
                want, _ = decode_query(DecoderCache(), _query(meta, ep, str(many / ep.video(CAM).path)))
                assert torch.equal(got, want)
            assert server.count(rel) == 1 and server.bytes_of(rel) == (many / rel).stat().st_size
            assert cache.stats()["spans_fetched"] == len(LENGTHS)


def test_known_then_fetch_reads_only_the_gaps() -> None:
    data = bytes(range(200))
    reads = []

    def fetch(offset: int, length: int) -> bytes:
        reads.append((offset, length))
        return data[offset : offset + length]

    known = [(0, data[0:50]), (120, data[120:150])]
    assert bytes(known_then_fetch(known, 40, 130, fetch)) == data[40:170]
    assert reads == [(50, 70), (150, 20)]
    assert bytes(known_then_fetch(known, 10, 20, fetch)) == data[10:30] and len(reads) == 2
