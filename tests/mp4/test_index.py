"""read_index: per-sample tables equal to what ffprobe and torchcodec see, a constant number of ranged
reads whether moov is at the front or the end, and Mp4IndexError for files it cannot index."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from torchcodec.decoders import VideoDecoder

from streamnodes.errors import StreamNodesError, VideoDecodeError
from streamnodes.mp4 import Mp4IndexError, read_index
from tests.mp4.conftest import ffmpeg
from tests.mp4.fake_mp4 import fake_mp4
from tests.mp4.helpers import RecordingReader


def index_file(path: Path, **kwargs: object):  # noqa: ANN201
    reader = RecordingReader(path)
    return read_index(reader, reader.size, **kwargs), reader


def ffprobe_packets(path: Path) -> dict[str, np.ndarray]:
    """Every video packet's pts, byte position, size and key flag, in file (decode) order."""
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "packet=pts,pos,size,flags",
         "-of", "csv=p=0", str(path)],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    rows = [line.split(",") for line in out.split()]
    return {
        "pts": np.array([int(r[0]) for r in rows]),
        "sizes": np.array([int(r[1]) for r in rows]),
        "offsets": np.array([int(r[2]) for r in rows]),
        "keyframes": np.array([r[3].startswith("K") for r in rows]),
    }


def test_index_matches_ffprobe_and_torchcodec(dataset: Path, bframes_mp4: Path) -> None:
    for path in [*sorted(dataset.rglob("*.mp4")), bframes_mp4]:
        index, _ = index_file(path)
        packets = ffprobe_packets(path)
        for name, values in packets.items():
            assert np.array_equal(getattr(index, name), values), (path, name)
        frames = VideoDecoder(str(path)).get_frames_in_range(0, index.num_frames)
        assert len(frames) == index.num_frames
        assert np.array_equal(frames.pts_seconds.numpy(), index.frame_pts_seconds)


def moov_size(index) -> int:  # noqa: ANN001
    return len(index.moov)


def test_reads_with_moov_at_the_end(dataset: Path) -> None:
    path = dataset / "videos" / "observation.images.cam" / "chunk-000" / "file-000.mp4"
    probe = 64
    index, reader = index_file(path, probe_size=probe)
    assert index.moov_offset > index.offsets.max()  # the layout this test is about
    # The head (ftyp, free, mdat header), a probe at moov (after skipping mdat), the rest of moov.
    assert reader.reads == [
        (0, probe),
        (index.moov_offset, probe),
        (index.moov_offset + probe, moov_size(index) - probe),
    ]
    # The default probe on a file larger than the probe: no byte of mdat's samples beyond the first probe.
    probe = 1024
    index, reader = index_file(path, probe_size=probe)
    assert reader.size > 2 * probe + moov_size(index)
    assert len(reader.reads) <= 3 and reader.bytes_read <= 2 * probe + moov_size(index)


def test_reads_with_moov_at_the_front(dataset: Path, tmp_path: Path) -> None:
    source = dataset / "videos" / "observation.images.cam" / "chunk-000" / "file-000.mp4"
    path = tmp_path / "front.mp4"
    ffmpeg("-i", str(source), "-c", "copy", "-movflags", "+faststart", str(path))
    probe = 64
    index, reader = index_file(path, probe_size=probe)
    assert index.moov_offset < index.offsets.min()
    head = index.moov_offset + moov_size(index)
    assert reader.reads == [(0, probe), (probe, head - probe)]  # the head, then the rest of moov
    index, reader = index_file(path)  # the default probe holds all of this moov
    assert reader.reads == [(0, min(reader.size, 64 * 1024))]


def test_read_count_does_not_grow_with_the_file(tmp_path: Path) -> None:
    reads = []
    for frames in (20, 400):
        path = tmp_path / f"{frames}.mp4"
        ffmpeg("-f", "lavfi", "-i", "testsrc2=size=64x64:rate=10", "-frames:v", str(frames), "-c:v", "libx264",
               "-g", "10", str(path))  # fmt: skip
        index, reader = index_file(path, probe_size=4096)
        assert index.num_samples == frames
        assert reader.bytes_read <= 2 * 4096 + moov_size(index)
        reads.append(len(reader.reads))
    assert reads[0] <= reads[1] <= 3


# Unindexable files: the caller falls back to the whole file.


def test_fragmented_mp4(dataset: Path, tmp_path: Path) -> None:
    source = dataset / "videos" / "observation.images.cam" / "chunk-000" / "file-000.mp4"
    path = tmp_path / "fragmented.mp4"
    ffmpeg("-i", str(source), "-c", "copy", "-movflags", "frag_keyframe+empty_moov", str(path))
    with pytest.raises(Mp4IndexError, match="fragmented mp4") as caught:
        index_file(path, name=str(path))
    assert caught.value.path == str(path) and str(caught.value).startswith(f"{path}: ")
    assert isinstance(caught.value, VideoDecodeError) and isinstance(caught.value, StreamNodesError)


def test_truncated_mp4(dataset: Path, tmp_path: Path) -> None:
    data = (dataset / "videos" / "observation.images.cam" / "chunk-000" / "file-000.mp4").read_bytes()
    path = tmp_path / "truncated.mp4"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(Mp4IndexError, match="truncated"):
        index_file(path)
    path.write_bytes(data[:40])  # ends right after ftyp and free
    with pytest.raises(Mp4IndexError, match="no moov box"):
        index_file(path)
    path.write_bytes(data[:45])  # ends inside the mdat header
    with pytest.raises(Mp4IndexError, match="ends inside a box header"):
        index_file(path)


def test_not_an_mp4(dataset: Path) -> None:
    parquet = next((dataset / "data").rglob("*.parquet"))
    with pytest.raises(Mp4IndexError):
        index_file(parquet)


def read_fake(data: bytes):  # noqa: ANN201
    return read_index(lambda offset, length: data[offset : offset + length], len(data), name="fake.mp4")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"drop": [b"stsz"]}, "no stsz or stz2 box"),
        ({"drop": [b"stco"]}, "no stco or co64 box"),
        ({"drop": [b"stts"]}, "no stts box"),
        ({"drop": [b"stsc"]}, "no stsc box"),
        ({"drop": [b"stsd"]}, "no stsd box"),
        ({"handler": b"soun"}, "no video track"),
        ({"mvex": True}, "fragmented mp4"),
        ({"sync": [1, 2]}, "first sample is not a keyframe"),
        ({"sync": [0, 9]}, "stss names samples outside"),
        ({"edits": [(100, 0), (100, 2)]}, "not a single plain edit"),
        ({"edits": [(400, 2)]}, "FFmpeg would hide those frames"),  # starts after samples 0, 1
        ({"edits": [(200, 0)]}, "FFmpeg would hide those frames"),  # ends before samples 2, 3
        ({"cts": [0, 0, 0, -1]}, "same presentation time"),
    ],
)
def test_unindexable_tables(kwargs: dict, message: str) -> None:
    with pytest.raises(Mp4IndexError, match=message) as caught:
        read_fake(fake_mp4([1] * 4, timescale=10, **kwargs))
    assert caught.value.path == "fake.mp4"


def test_tables_pointing_past_the_end() -> None:
    data = fake_mp4([1] * 4, timescale=10)  # moov first: the walk stops at moov, before mdat
    read_fake(data)
    with pytest.raises(Mp4IndexError, match="past the end of the file"):
        read_fake(data[:-10])


def patch_u32(data: bytes, box_type: bytes, field: int, value: int) -> bytes:
    """``data`` with the ``field``-th u32 after ``box_type``'s version/flags set to ``value``."""
    position = data.index(box_type) + 4 + 4 + 4 * field
    return data[:position] + value.to_bytes(4, "big") + data[position + 4 :]


@pytest.mark.parametrize(
    ("box_type", "field", "value", "message"),
    [
        (b"stts", 1, 3, "stts describes 3 samples, stsz 4"),  # entry (count 4 -> 3, delta 1)
        (b"stsc", 2, 5, "stsc places 5 samples in chunks, stsz has 4"),  # entry (chunk 1, 4 -> 5 samples)
        (b"stsz", 1, 5, "stsz holds fewer sizes than its sample count"),
        (b"stsc", 1, 2, "first-chunk numbers are not increasing from 1"),
    ],
)
def test_tables_disagreeing(box_type: bytes, field: int, value: int, message: str) -> None:
    good = fake_mp4([1] * 4, timescale=10)
    read_fake(good)  # the same file without the damage indexes
    with pytest.raises(Mp4IndexError, match=message):
        read_fake(patch_u32(good, box_type, field, value))
