"""Pure arithmetic of the span cache: which frames of an mp4 one episode needs, and how many bytes on disk.

No I/O: the cache reads the file's index once (:func:`streamnodes.mp4.read_index`) and plans every
episode of that file from it.
"""

from __future__ import annotations

from dataclasses import dataclass

from streamnodes.mp4 import Mp4Index, Span, episode_span
from streamnodes.types import FrameMap

__all__ = ["SYNTH_SLACK", "SpanPlan", "episode_frames", "original_fps", "plan_span"]

SYNTH_SLACK = 256  # bytes a synthesized moov may exceed the original's by (its new edit list, a wider mdat header)


def original_fps(index: Mp4Index) -> float:
    """The file's average frame rate: frames per second of media time (what FFmpeg reports for mp4)."""
    duration = int(index.durations.sum())
    if duration <= 0:
        return 0.0
    return index.num_frames * index.timescale / duration


def episode_frames(index: Mp4Index, from_timestamp: float, length: int) -> tuple[int, int]:
    """First and last frame (inclusive, presentation order) of an episode of ``length`` frames that starts
    at ``from_timestamp`` seconds: ``round(from_timestamp * fps)`` on, as the decode path numbers them."""
    first = round(from_timestamp * original_fps(index))
    return first, first + max(int(length), 1) - 1


@dataclass(frozen=True, eq=False)
class SpanPlan:
    """What to fetch for one episode of one file, and what it costs on disk.

    Attributes:
        span: the byte ranges (:func:`streamnodes.mp4.episode_span`).
        frames: how the decode path maps the original file's frames to the synthesized file's.
        max_size: an upper bound of the synthesized file's size (reserved before the fetch, trimmed after).
    """

    span: Span
    frames: FrameMap
    max_size: int


def plan_span(index: Mp4Index, from_timestamp: float, length: int) -> SpanPlan:
    """The span of the episode's frames, clamped to the file's last frame.

    Raises:
        VideoDecodeError: the episode's first frame is not in the file (the table disagrees with the video).
    """
    first, last = episode_frames(index, from_timestamp, length)
    span = episode_span(index, first, min(last, index.num_frames - 1))
    frames = FrameMap(fps=original_fps(index), num_frames=index.num_frames, kept=span.kept_frames)
    header = len(index.ftyp or b"") + len(index.moov) + SYNTH_SLACK
    return SpanPlan(span=span, frames=frames, max_size=header + span.num_bytes)
