"""DecoderCache on real mp4 files: LRU counters, the count and byte bounds, errors naming the file."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from torchcodec.decoders import VideoDecoder

from streamnodes.decoder_cache import DecoderCache, MiB, estimate_decoder_bytes, open_video
from streamnodes.errors import VideoDecodeError

MP4 = (
    Path(__file__).parent
    / "data"
    / "lerobot_v3_ref"
    / "dataset"
    / "videos"
    / "observation.images.cam"
    / "chunk-000"
    / "file-000.mp4"
)


@pytest.fixture
def two_files(tmp_path: Path) -> tuple[str, str]:
    a, b = tmp_path / "a.mp4", tmp_path / "b.mp4"
    shutil.copyfile(MP4, a)
    shutil.copyfile(MP4, b)
    return str(a), str(b)


def test_open_video_reads_what_the_decode_path_needs():
    video = open_video(str(MP4))
    assert isinstance(video.decoder, VideoDecoder)
    assert (video.width, video.height, video.num_frames, video.average_fps, video.codec) == (
        64,
        48,
        237,
        10.0,
        "av1",
    )
    assert video.nbytes == estimate_decoder_bytes(64, 48, 237, "av1")
    assert "64x48 av1, 237 frames @ 10 fps" in repr(video)


def test_counters_with_one_decoder_over_two_files(two_files):
    a, b = two_files
    cache = DecoderCache(max_decoders=1)
    assert cache.hit_rate == 0.0
    first = cache.get(a)
    assert cache.get(a) is first
    assert (cache.hits, cache.misses, cache.evictions) == (1, 1, 0)
    cache.get(b)
    assert (cache.hits, cache.misses, cache.evictions) == (1, 2, 1)
    assert a not in cache and b in cache and len(cache) == 1
    assert cache.get(a) is not first  # re-opened after eviction
    assert (cache.hits, cache.misses, cache.evictions) == (1, 3, 2)
    assert cache.hit_rate == pytest.approx(1 / 4)


def test_least_recently_used_goes_first(two_files, tmp_path):
    a, b = two_files
    c = str(tmp_path / "c.mp4")
    shutil.copyfile(MP4, c)
    cache = DecoderCache(max_decoders=2)
    cache.get(a)
    cache.get(b)
    cache.get(a)  # b is now the least recently used
    cache.get(c)
    assert a in cache and c in cache and b not in cache


def test_byte_bound_evicts(two_files):
    a, b = two_files
    one = estimate_decoder_bytes(64, 48, 237, "av1")
    cache = DecoderCache(max_decoders=16, max_bytes=one + one // 2)
    cache.get(a)
    assert cache.estimated_bytes == one
    cache.get(b)
    assert (len(cache), cache.evictions, cache.estimated_bytes) == (1, 1, one) and b in cache
    # A decoder larger than the whole budget is still kept (alone): decoding must go on.
    tiny = DecoderCache(max_bytes=1)
    tiny.get(a)
    tiny.get(b)
    assert len(tiny) == 1 and b in tiny


def test_clear_evict_stats_repr(two_files):
    a, b = two_files
    cache = DecoderCache(max_decoders=4, max_bytes=64 * MiB)
    cache.get(a)
    cache.get(b)
    assert cache.evict(a) and not cache.evict(a)
    stats = cache.stats()
    assert stats["open_decoders"] == 1 and stats["misses"] == 2 and stats["evictions"] == 1
    assert repr(cache).startswith("DecoderCache(open=1/4, ~0.5/64 MiB, hits=0, misses=2, evictions=1")
    cache.clear()
    assert len(cache) == 0 and cache.estimated_bytes == 0 and cache.misses == 2


def test_estimate_follows_the_measurements():
    # Measured RSS per used decoder here (docs/video.md): AV1 0.51 MiB at 64x48, 1.96 at 640x480,
    # 4.85 at 1280x720; H.264 1.57 / 4.78 / 11.4. The estimate must not undershoot them by much.
    for (w, h), av1, h264 in [((64, 48), 0.51, 1.57), ((640, 480), 1.96, 4.78), ((1280, 720), 4.85, 11.36)]:
        assert av1 * 0.9 <= estimate_decoder_bytes(w, h, 300, "av1") / MiB <= av1 * 1.5
        assert h264 * 0.9 <= estimate_decoder_bytes(w, h, 300, "h264") / MiB <= h264 * 1.5
    assert (
        estimate_decoder_bytes(96, 96, 30_000, "av1") - estimate_decoder_bytes(96, 96, 0, "av1")
        == 32 * 30_000
    )


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, r"gone\.mp4 \(episode 4\): video file not found"),
        (b"not a video\n", r"bad\.mp4 \(episode 4\): cannot open the video .*re-download"),
        ("head", r"bad\.mp4 \(episode 4\): cannot open the video"),
    ],
)
def test_open_errors_name_the_file_and_episode(tmp_path, content, match):
    if content is None:
        path = tmp_path / "gone.mp4"
    else:
        path = tmp_path / "bad.mp4"
        path.write_bytes(MP4.read_bytes()[:100] if content == "head" else content)
    cache = DecoderCache()
    with pytest.raises(VideoDecodeError, match=match):
        cache.get(str(path), episode_index=4)
    assert len(cache) == 0 and cache.misses == 1


def test_bad_bounds():
    with pytest.raises(ValueError, match="max_decoders"):
        DecoderCache(max_decoders=0)
    with pytest.raises(ValueError, match="max_bytes"):
        DecoderCache(max_bytes=0)
