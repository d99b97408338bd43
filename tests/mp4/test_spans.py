"""Span arithmetic without I/O: keyframes, B-frame reordering, open GOPs, byte ranges, frame mapping.

The indices come from hand-built containers (fake_mp4) parsed in memory."""

from __future__ import annotations

import numpy as np
import pytest

from streamnodes.errors import VideoDecodeError
from streamnodes.mp4 import Mp4Index, episode_span, frame_at, read_index, synthesize
from streamnodes.mp4.spans import merge_ranges, sample_bytes, start_sample
from tests.mp4.fake_mp4 import CHUNK_GAP, fake_mp4, sample_data


def index_of(data: bytes) -> Mp4Index:
    return read_index(lambda offset, length: data[offset : offset + length], len(data))


# Decode order I P B B | I P B B: presented 0 3 1 2 | 4 7 5 6 (ctts +1, undone by the edit at media time 1).
IPBB_PTS = [0, 3, 1, 2, 4, 7, 5, 6]


def ipbb(**kwargs: object) -> Mp4Index:
    cts = [p + 1 - i for i, p in enumerate(IPBB_PTS)]
    return index_of(fake_mp4([1] * 8, cts=cts, sync=[0, 4], edits=[(800, 1)], timescale=10, **kwargs))


def test_presentation_order_follows_ctts_and_the_edit_list() -> None:
    index = ipbb()
    assert index.pts.tolist() == IPBB_PTS
    assert index.presentation.tolist() == [0, 2, 3, 1, 4, 6, 7, 5]  # frame -> sample
    assert index.frame_of_sample.tolist() == IPBB_PTS
    assert np.allclose(index.frame_pts_seconds, np.arange(8) / 10)
    assert index.keyframes.tolist() == [True, False, False, False, True, False, False, False]
    assert index.random_access.tolist() == index.keyframes.tolist()  # closed GOPs


@pytest.mark.parametrize(
    ("first", "last", "start", "end", "kept"),
    [
        (0, 0, 0, 1, [0]),  # the keyframe alone
        (1, 1, 0, 3, [0, 1, 3]),  # B1 comes after P3 in decode order: P3 is kept, B2 is not
        (3, 3, 0, 2, [0, 3]),  # P3 needs only the keyframe
        (2, 4, 0, 5, [0, 1, 2, 3, 4]),  # across a GOP boundary: both GOPs' samples up to I4
        (5, 5, 4, 7, [4, 5, 7]),  # starts at the second keyframe, not the file start
        (4, 7, 4, 8, [4, 5, 6, 7]),
        (7, 7, 4, 6, [4, 7]),
    ],
)
def test_span_with_b_frames(first: int, last: int, start: int, end: int, kept: list[int]) -> None:
    span = episode_span(ipbb(), first, last)
    assert (span.start_sample, span.end_sample) == (start, end)
    assert span.kept_frames.tolist() == kept
    assert span.synthesized_frame(np.arange(first, last + 1)).tolist() == [
        kept.index(f) for f in range(first, last + 1)
    ]


def test_synthesized_frame_rejects_frames_not_kept() -> None:
    span = episode_span(ipbb(), 1, 1)  # keeps frames 0, 1, 3
    assert span.synthesized_frame(3) == 2
    with pytest.raises(ValueError, match="not in this span"):
        span.synthesized_frame(2)
    with pytest.raises(ValueError, match="not in this span"):
        span.synthesized_frame(9)


def test_open_gop_keyframe_is_not_a_starting_point() -> None:
    # Decode order I0 P2 B1 | I5 B3 B4 P7 B6: I5's leading B3, B4 reference the first GOP.
    pts = [0, 2, 1, 5, 3, 4, 7, 6]
    index = index_of(
        fake_mp4(
            [1] * 8, cts=[p + 1 - i for i, p in enumerate(pts)], sync=[0, 3], edits=[(800, 1)], timescale=10
        )
    )
    assert index.keyframes[3] and not index.random_access[3]
    assert episode_span(index, 6, 7).start_sample == 0
    assert start_sample(index.random_access, 6) == 0


def test_without_stss_every_sample_is_a_keyframe() -> None:
    index = index_of(fake_mp4([2] * 5))
    assert index.keyframes.all() and not index.has_stss
    span = episode_span(index, 3, 4)
    assert (span.start_sample, span.end_sample) == (3, 5)


def test_ranges_across_chunks_and_merging() -> None:
    index = index_of(fake_mp4([1] * 6, sync=[0], chunks=[2, 2, 2]))
    span = episode_span(index, 1, 4)  # samples 0-4 (keyframe 0): chunks 0, 1 and part of 2
    sizes = index.sizes.tolist()
    assert [length for _, length in span.ranges] == [sizes[0] + sizes[1], sizes[2] + sizes[3], sizes[4]]
    merged = episode_span(index, 1, 4, max_gap=CHUNK_GAP)
    assert merged.ranges == ((span.ranges[0][0], sum(sizes[:5]) + 2 * CHUNK_GAP),)
    assert merged.num_bytes > span.num_bytes
    data = fake_mp4([1] * 6, sync=[0], chunks=[2, 2, 2])
    for s in (span, merged):
        got = sample_bytes(index, s, [data[o : o + n] for o, n in s.ranges])
        assert got == [sample_data(i, sizes[i]) for i in range(5)]


def test_merge_ranges() -> None:
    offsets = np.array([30, 0, 10, 100])
    sizes = np.array([5, 10, 15, 1])  # [0,10) [10,25) touch, [30,35) 5 apart, [100,101) far
    assert merge_ranges(offsets, sizes) == ((0, 25), (30, 5), (100, 1))
    assert merge_ranges(offsets, sizes, max_gap=5) == ((0, 35), (100, 1))
    assert merge_ranges(np.array([0, 2]), np.array([10, 3])) == ((0, 10),)  # overlap
    assert merge_ranges(np.array([], dtype=np.int64), np.array([], dtype=np.int64)) == ()


def test_sample_bytes_rejects_wrong_chunks() -> None:
    index = ipbb()
    span = episode_span(index, 0, 3)
    with pytest.raises(VideoDecodeError, match="answered with chunks"):
        sample_bytes(index, span, [b"short"])
    with pytest.raises(VideoDecodeError, match="answered with chunks"):
        sample_bytes(index, span, [])


@pytest.mark.parametrize(("first", "last"), [(-1, 2), (3, 2), (0, 8)])
def test_frames_outside_the_file(first: int, last: int) -> None:
    with pytest.raises(VideoDecodeError, match="not in the video, which has 8 frames"):
        episode_span(ipbb(), first, last)


def test_frame_at() -> None:
    index = ipbb()
    assert frame_at(index, 0.0) == 0
    assert frame_at(index, 0.70001) == 7
    assert frame_at(index, 0.3) == 3
    with pytest.raises(VideoDecodeError, match="no frame is presented at 0.350000"):
        frame_at(index, 0.35)
    assert frame_at(index, 0.35, tolerance_s=0.06) in (3, 4)


@pytest.mark.parametrize("first_last", [(0, 0), (1, 1), (2, 4), (5, 5), (4, 7), (7, 7)])
@pytest.mark.parametrize(
    "variant", [{}, {"co64": True}, {"stz2": True}, {"moov_first": False}, {"chunks": [3, 1, 4]}]
)
def test_synthesized_tables_keep_samples_and_timeline(first_last: tuple[int, int], variant: dict) -> None:
    """The synthesized file, indexed again, holds the kept samples' bytes, original pts and keyframes."""
    data = fake_mp4([1] * 8, cts=[p + 1 - i for i, p in enumerate(IPBB_PTS)], sync=[0, 4], edits=[(800, 1)],
                    timescale=10, **variant)  # fmt: skip
    index = index_of(data)
    span = episode_span(index, *first_last)
    small = synthesize(index, span, [data[o : o + n] for o, n in span.ranges])
    again = index_of(small)
    kept = span.samples
    assert again.num_samples == span.num_samples
    assert again.pts.tolist() == index.pts[kept].tolist()  # original presentation times
    assert again.sizes.tolist() == index.sizes[kept].tolist()
    assert again.keyframes.tolist() == index.keyframes[kept].tolist()
    assert [small[o : o + n] for o, n in zip(again.offsets, again.sizes, strict=True)] == [
        sample_data(i, int(index.sizes[i])) for i in kept
    ]
    assert again.timescale == again.movie_timescale == 10


def test_synthesized_file_keeps_an_original_empty_edit() -> None:
    # The original starts presenting at 0.5 s (an empty edit of 500 ms): the kept frames keep their pts.
    data = fake_mp4([1] * 6, sync=[0, 3], edits=[(500, -1), (600, 0)], timescale=10)
    index = index_of(data)
    assert index.empty_duration == 5 and index.pts.tolist() == [5, 6, 7, 8, 9, 10]
    span = episode_span(index, 4, 5)
    again = index_of(synthesize(index, span, [data[o : o + n] for o, n in span.ranges]))
    assert again.pts.tolist() == [8, 9, 10]
