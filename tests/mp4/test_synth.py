"""Synthesized mp4s decode, with torchcodec's public VideoDecoder, to exactly the frames and pts of the
whole file: episodes at the start, middle and end of multi-episode files, one-episode files, windows
reaching episode ends, B-frames, open GOPs, moov at the front or the end, and LeRobot's own file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torchcodec.decoders import VideoDecoder

from streamnodes.mp4 import episode_span, fetch_span, frame_at, read_index, synthesize
from streamnodes.mp4.spans import Span
from streamnodes.testing import frame_identity
from tests.mp4.conftest import FPS, EpisodeVideo, episode_videos, ffmpeg
from tests.mp4.helpers import RecordingReader

REF_ROOT = Path(__file__).parents[1] / "data" / "lerobot_v3_ref" / "dataset"


def decode_span(path: Path, first: int, last: int) -> tuple[Span, bytes, RecordingReader]:
    """Index ``path``, fetch the span of frames ``first..last`` and synthesize its mp4; assert the
    decoded frames equal the whole file's bit for bit, by frame number (exact and approximate seeking)
    and by the original pts."""
    reader = RecordingReader(path)
    index = read_index(reader, reader.size)
    span = episode_span(index, first, last)
    index_reads = len(reader.reads)
    small = synthesize(index, span, fetch_span(reader, span))
    assert len(reader.reads) - index_reads == len(span.ranges)  # one read per byte range

    whole = VideoDecoder(str(path)).get_frames_in_range(first, last + 1)
    wanted = span.synthesized_frame(np.arange(first, last + 1)).tolist()
    decoder = VideoDecoder(small)
    assert decoder.metadata.num_frames == len(span.kept_frames)
    for frames in (
        decoder.get_frames_at(wanted),
        VideoDecoder(small, seek_mode="approximate").get_frames_at(wanted),
        decoder.get_frames_played_at(whole.pts_seconds.tolist()),  # original timestamps, same frames
    ):
        assert torch.equal(frames.data, whole.data)
        assert torch.equal(frames.pts_seconds, whole.pts_seconds)
    # Random order on a fresh decoder: every seek inside the small file lands right.
    fresh = VideoDecoder(small)
    for k in np.random.default_rng(first).permutation(len(wanted)).tolist():
        assert torch.equal(fresh.get_frame_at(wanted[k]).data, whole.data[k])
    return span, small, reader


def check_episode(video: EpisodeVideo, first: int | None = None, last: int | None = None) -> Span:
    first = video.first if first is None else first
    last = video.last if last is None else last
    span, small, reader = decode_span(video.path, first, last)
    frames = VideoDecoder(small).get_frames_at(span.synthesized_frame(np.arange(first, last + 1)).tolist())
    identities = [frame_identity(image) for image in frames.data]
    assert identities == [(video.episode_index, f - video.first) for f in range(first, last + 1)]
    assert span.num_bytes < reader.size
    return span


def in_file(dataset: Path, file_name: str) -> list[EpisodeVideo]:
    return [v for v in episode_videos(dataset) if v.path.name == file_name]


@pytest.mark.parametrize("position", [0, 1, 2], ids=["first", "middle", "last"])
def test_episode_of_a_multi_episode_file(dataset: Path, position: int) -> None:
    videos = in_file(dataset, "file-000.mp4")
    assert len(videos) == 3  # the layout this test is about: three episodes in one mp4
    video = videos[position]
    span = check_episode(video)
    index = read_index(RecordingReader(video.path), video.path.stat().st_size)
    assert frame_at(index, video.first / FPS) == video.first
    # Only this episode's bytes (and at most the keyframe run-in, none here: episodes start on keyframes).
    assert span.kept_frames[0] == video.first and span.kept_frames[-1] == video.last
    assert len(span.ranges) == 1


def test_windows_reaching_episode_ends(dataset: Path) -> None:
    video = in_file(dataset, "file-000.mp4")[1]
    check_episode(video, video.first, video.first + 2)
    check_episode(video, video.last - 2, video.last)
    span = check_episode(video, video.first + 3, video.first + 3)  # a non-keyframe: starts one before
    assert span.start_sample < video.first + 3


def test_one_episode_files(dataset: Path, single_episode_dataset: Path) -> None:
    alone = in_file(dataset, "file-002.mp4")
    assert len(alone) == 1
    check_episode(alone[0])
    for video in episode_videos(single_episode_dataset):
        check_episode(video)


def test_moov_at_the_front_or_the_end(dataset: Path, tmp_path: Path) -> None:
    video = in_file(dataset, "file-000.mp4")[1]
    front = tmp_path / "front.mp4"
    ffmpeg("-i", str(video.path), "-c", "copy", "-movflags", "+faststart", str(front))
    end_index = read_index(RecordingReader(video.path), video.path.stat().st_size)
    front_index = read_index(RecordingReader(front), front.stat().st_size)
    assert end_index.moov_offset > end_index.offsets.max()  # write_dataset: moov after mdat
    assert front_index.moov_offset < front_index.offsets.min()
    for name in ("sizes", "pts", "keyframes"):
        assert np.array_equal(getattr(end_index, name), getattr(front_index, name))
    check_episode(EpisodeVideo(video.episode_index, front, video.first, video.length))


def test_lerobot_reference_file() -> None:
    """LeRobot's own writer's mp4 (SVT-AV1, many episodes per file)."""
    fps = json.loads((REF_ROOT / "meta" / "info.json").read_text())["fps"]
    videos = [v for v in episode_videos(REF_ROOT, fps) if v.path.name == "file-000.mp4"]
    assert len(videos) >= 3
    for video in (videos[0], videos[len(videos) // 2], videos[-1]):
        span, _, _ = decode_span(video.path, video.first, video.last)
        assert span.kept_frames[0] == video.first


def test_b_frames(bframes_mp4: Path) -> None:
    index = read_index(RecordingReader(bframes_mp4), bframes_mp4.stat().st_size)
    assert index.has_ctts and np.any(np.diff(index.pts) < 0)  # decode order differs from presentation
    # Frame 1 is a B-frame decoded after the P-frame shown at 3 or later: that frame is kept too.
    span, _, _ = decode_span(bframes_mp4, 1, 1)
    assert span.kept_frames[-1] > 1
    for first, last in [(0, 11), (12, 23), (5, 17), (13, 13), (23, 25), (48, 59), (40, 59)]:
        span, _, _ = decode_span(bframes_mp4, first, last)
        assert index.keyframes[span.start_sample]
        assert span.kept_frames[0] <= first and span.kept_frames[-1] >= last
        assert span.start_sample > 0 or first < 12  # the nearest keyframe, not the file start


def test_open_gop(open_gop_mp4: Path) -> None:
    index = read_index(RecordingReader(open_gop_mp4), open_gop_mp4.stat().st_size)
    keyframes = np.flatnonzero(index.keyframes)
    assert len(keyframes) > 1 and np.flatnonzero(index.random_access).tolist() == [0]
    for first, last in [(13, 20), (12, 13), (52, 52), (30, 59)]:
        span, _, _ = decode_span(open_gop_mp4, first, last)
        assert span.start_sample == 0  # open-GOP I-frames are not starting points
