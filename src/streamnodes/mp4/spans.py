"""Which samples, and which byte ranges, decoding frames ``first..last`` of an indexed mp4 needs.

Frames are numbered in presentation order (see :mod:`streamnodes.mp4.index`). Decoding starts at a
keyframe at or before the first wanted frame in decode order and runs, in decode order, up to the last
sample any wanted frame is. With B-frames (``ctts``) a frame is decoded after samples presented later,
so the kept samples can include frames presented after ``last`` (and, from the keyframe, before
``first``): :attr:`Span.kept_frames` lists every frame the kept samples present, and
:meth:`Span.synthesized_frame` maps an original frame number to its number in the synthesized file.
All arithmetic here is pure; :func:`fetch_span` is the one function that reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from streamnodes.errors import VideoDecodeError
from streamnodes.mp4.index import Mp4Index, ReadRange


@dataclass(frozen=True, eq=False)
class Span:
    """The samples and bytes that decode frames ``first_frame..last_frame`` (inclusive).

    Attributes:
        first_frame, last_frame: the wanted frames (presentation order), inclusive.
        start_sample, end_sample: the kept samples, ``[start_sample, end_sample)`` in decode order;
            ``start_sample`` is a keyframe where decoding can start (``Mp4Index.random_access``).
        ranges: ``(offset, length)`` file byte ranges holding the kept samples, ascending, merged where
            adjacent (or closer than the ``max_gap`` of :func:`episode_span`).
        kept_frames: ascending original frame numbers of the kept samples: the frames the synthesized
            mp4 presents, in its own frame order.
    """

    first_frame: int
    last_frame: int
    start_sample: int
    end_sample: int
    ranges: tuple[tuple[int, int], ...]
    kept_frames: np.ndarray

    @property
    def num_bytes(self) -> int:
        """Bytes the ranges cover (what a fetch downloads)."""
        return sum(length for _, length in self.ranges)

    @property
    def num_samples(self) -> int:
        return self.end_sample - self.start_sample

    @property
    def samples(self) -> np.ndarray:
        """The kept samples' indices, decode order."""
        return np.arange(self.start_sample, self.end_sample)

    def synthesized_frame(self, frame: int | np.ndarray) -> int | np.ndarray:
        """Frame number in the synthesized mp4 of original frame ``frame`` (a number or an array).

        Raises:
            ValueError: a frame the span does not keep.
        """
        frames = np.asarray(frame)
        positions = np.searchsorted(self.kept_frames, frames)
        clipped = np.minimum(positions, len(self.kept_frames) - 1)
        if np.any(self.kept_frames[clipped] != frames):
            raise ValueError(
                f"frame(s) {frame} not in this span (kept frames {self.kept_frames[0]}..{self.kept_frames[-1]})"
            )
        return int(positions) if positions.ndim == 0 else positions


def episode_span(index: Mp4Index, first_frame: int, last_frame: int, *, max_gap: int = 0) -> Span:
    """The span that decodes frames ``first_frame..last_frame`` (inclusive, presentation order).

    Decoding starts at the last random-access keyframe (see ``Mp4Index.random_access``) at or before
    every wanted frame in decode order, and ends with the last wanted frame in decode order. Byte ranges closer than ``max_gap`` bytes are merged
    (fewer requests for a few unused bytes; samples of one video track are usually adjacent anyway).

    Raises:
        VideoDecodeError: the frames are not in the file (``0 <= first_frame <= last_frame < num_frames``).
    """
    if not 0 <= first_frame <= last_frame < index.num_frames:
        raise VideoDecodeError(
            f"frames {first_frame}..{last_frame} are not in the video, which has {index.num_frames} frames: "
            "the episodes table's timestamps do not fit this mp4"
        )
    wanted = index.presentation[first_frame : last_frame + 1]
    first_decoded = int(wanted.min())
    last_decoded = int(wanted.max())
    start = start_sample(index.random_access, first_decoded)
    end = last_decoded + 1
    return Span(
        first_frame=first_frame,
        last_frame=last_frame,
        start_sample=start,
        end_sample=end,
        ranges=merge_ranges(index.offsets[start:end], index.sizes[start:end], max_gap=max_gap),
        kept_frames=np.sort(index.frame_of_sample[start:end]),
    )


def frame_at(index: Mp4Index, seconds: float, *, tolerance_s: float = 1e-4) -> int:
    """The frame (presentation order) presented at ``seconds``: the one whose pts is nearest.

    For a LeRobot episode, ``frame_at(index, from_timestamp)`` is its first frame and the episode
    holds frames ``first .. first + length - 1``.

    Raises:
        VideoDecodeError: no frame's pts is within ``tolerance_s`` of ``seconds``.
    """
    times = index.frame_pts_seconds
    position = int(np.searchsorted(times, seconds))
    nearby = [p for p in (position - 1, position) if 0 <= p < len(times)]
    best = min(nearby, key=lambda p: abs(times[p] - seconds))
    if abs(times[best] - seconds) > tolerance_s:
        raise VideoDecodeError(
            f"no frame is presented at {seconds:.6f} s (nearest: {times[best]:.6f} s, tolerance {tolerance_s} s): "
            "the episodes table's timestamps do not fit this mp4"
        )
    return best


def start_sample(random_access: np.ndarray, first_decoded: int) -> int:
    """The latest sample at or before ``first_decoded`` (decode order) where decoding can start.

    Sample 0 when there is none (a stream's first sample is always where decoding starts).
    """
    candidates = np.flatnonzero(random_access[: first_decoded + 1])
    return int(candidates[-1]) if candidates.size else 0


def merge_ranges(offsets: np.ndarray, sizes: np.ndarray, *, max_gap: int = 0) -> tuple[tuple[int, int], ...]:
    """``(offset, length)`` ranges covering every ``(offsets[i], sizes[i])``, ascending, merged when the
    gap between two is at most ``max_gap`` bytes (0: only touching or overlapping ones)."""
    if len(offsets) == 0:
        return ()
    order = np.argsort(offsets, kind="stable")
    starts = np.asarray(offsets)[order].astype(np.int64)
    ends = starts + np.asarray(sizes)[order].astype(np.int64)
    ends = np.maximum.accumulate(ends)
    breaks = np.flatnonzero(starts[1:] > ends[:-1] + max_gap) + 1
    first = np.concatenate([[0], breaks])
    last = np.concatenate([breaks - 1, [len(starts) - 1]])
    return tuple((int(starts[a]), int(ends[b] - starts[a])) for a, b in zip(first, last, strict=True))


def fetch_span(read_range: ReadRange, span: Span) -> list[bytes]:
    """Read ``span.ranges`` (one ``read_range`` call per range), for :func:`~streamnodes.mp4.synth.synthesize`."""
    return [read_range(offset, length) for offset, length in span.ranges]


def sample_bytes(index: Mp4Index, span: Span, range_bytes: Sequence[bytes]) -> list[bytes]:
    """The kept samples' bytes, decode order, cut from the bytes of ``span.ranges`` (same order).

    Raises:
        VideoDecodeError: ``range_bytes`` does not match ``span.ranges`` (count or lengths).
    """
    if len(range_bytes) != len(span.ranges) or any(
        len(data) != length for data, (_, length) in zip(range_bytes, span.ranges, strict=False)
    ):
        got = [len(data) for data in range_bytes]
        raise VideoDecodeError(f"byte ranges {list(span.ranges)} were answered with chunks of {got} bytes")
    starts = np.array([offset for offset, _ in span.ranges], dtype=np.int64)
    out = []
    for sample in span.samples.tolist():
        offset, size = int(index.offsets[sample]), int(index.sizes[sample])
        r = int(np.searchsorted(starts, offset, side="right")) - 1
        begin = offset - int(starts[r])
        out.append(bytes(memoryview(range_bytes[r])[begin : begin + size]))
    return out
