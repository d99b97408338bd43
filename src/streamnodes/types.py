"""The items that flow between nodes: Episode -> Frame -> Sample -> dict.

- :class:`Episode`: an :class:`~streamnodes.format.EpisodeRef` plus its tabular columns (numpy) and,
  per camera, where to decode from (a path/URL string, or a :class:`VideoFile` handle the
  Prefetcher hands out for a local copy that may still be downloading).
- :class:`Frame`: one position inside a resident episode (what EpisodePool emits).
- :class:`Sample`: a frame with its windows cut (what DeltaWindow emits): tabular arrays, pads,
  identity, task, and per camera a :class:`VideoQuery` still to decode. No pixels.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from streamnodes.format.metadata import EpisodeRef


@dataclass(frozen=True, eq=False)
class FrameMap:
    """How the frames of a local file that holds only part of a video relate to the original's.

    The Prefetcher's span cache writes, per episode and camera, a small mp4 holding only the samples that
    decode the episode's frames (:mod:`streamnodes.mp4`); it keeps the original presentation times. The
    decode path computes frame indices on the ORIGINAL file (``round(t * fps)``, its ``num_frames``) and
    maps them to the local file's with :meth:`local`; pts checks stay against the original timestamps.

    Attributes:
        fps: the original file's frame rate (frame index = ``round(t * fps)``).
        num_frames: the original file's frame count (the bounds check).
        kept: ascending original frame numbers the local file presents, in its own frame order.
    """

    fps: float
    num_frames: int
    kept: np.ndarray

    def local(self, frames: list[int]) -> list[int] | None:
        """The local file's frame numbers of original ``frames``; ``None`` if one is not in the file."""
        wanted = np.asarray(frames, dtype=np.int64)
        positions = np.searchsorted(self.kept, wanted)
        clipped = np.minimum(positions, len(self.kept) - 1)
        if len(self.kept) == 0 or np.any(self.kept[clipped] != wanted):
            return None
        return positions.tolist()


@dataclass(frozen=True, slots=True)
class LocalVideo:
    """A local file to open, and its :class:`FrameMap` (``None``: the whole original file)."""

    path: str
    frames: FrameMap | None = None


@runtime_checkable
class VideoFile(Protocol):
    """A video file that may not be local yet (see Prefetcher). ``local_path`` blocks until it is.

    A handle may also offer ``use(timeout)``: a context manager yielding a :class:`LocalVideo` and
    keeping the file on disk while it is open (the span cache may evict unpinned files to make room);
    see :func:`use_video`.
    """

    def local_path(self, timeout: float | None = None) -> str: ...


VideoLocation = str | VideoFile


def resolve_video(location: VideoLocation, timeout: float | None = None) -> str:
    """The path torchcodec should open for ``location`` (waiting for a download when needed)."""
    return location if isinstance(location, str) else location.local_path(timeout)


@contextlib.contextmanager
def use_video(location: VideoLocation, timeout: float | None = None) -> Iterator[LocalVideo]:
    """The local file of ``location`` and how its frames map (waiting for a fetch when needed), kept on
    disk until the ``with`` block ends. Paths and whole-file handles map frames as they are."""
    if isinstance(location, str):
        yield LocalVideo(location)
        return
    use = getattr(location, "use", None)
    if use is None:
        yield LocalVideo(location.local_path(timeout))
        return
    with use(timeout) as local:
        yield local


@dataclass(eq=False, slots=True)
class Episode:
    """One episode resident in memory: its ref, numpy columns (``ref.length`` rows each), video sources."""

    ref: EpisodeRef
    columns: dict[str, np.ndarray]
    video_files: dict[str, VideoLocation] = field(default_factory=dict)

    @property
    def episode_index(self) -> int:
        return self.ref.episode_index

    @property
    def length(self) -> int:
        return self.ref.length

    def __repr__(self) -> str:
        return f"Episode({self.ref.episode_index}, length={self.ref.length}, columns={sorted(self.columns)})"


@dataclass(eq=False, slots=True)
class Frame:
    """Position ``position`` (0-based frame index) inside a resident episode."""

    episode: Episode
    position: int

    @property
    def ref(self) -> tuple[int, int]:
        """(episode_index, position): enough to rebuild this frame from metadata."""
        return (self.episode.ref.episode_index, self.position)

    def __repr__(self) -> str:
        return f"Frame(episode={self.episode.ref.episode_index}, position={self.position})"


@dataclass(eq=False, slots=True)
class VideoQuery:
    """Frames still to decode for one camera of one sample.

    ``timestamps`` are absolute seconds inside ``file`` (episode ``from_timestamp`` + the timestamp
    column of the clamped rows), one per window position; ``single`` marks a key without deltas,
    decoded as ``[C, H, W]`` instead of ``[T, C, H, W]``.
    """

    key: str
    file: VideoLocation
    episode_index: int
    timestamps: np.ndarray
    single: bool = False


@dataclass(eq=False, slots=True)
class Sample:
    """A frame's tabular windows and identity plus its pending video queries. Cheap to keep in buffers."""

    episode_index: int
    frame_index: int
    data: dict[str, Any]
    videos: dict[str, VideoQuery] = field(default_factory=dict)

    @property
    def ref(self) -> tuple[int, int]:
        """(episode_index, frame_index): enough to rebuild this sample from metadata."""
        return (self.episode_index, self.frame_index)

    def __repr__(self) -> str:
        return (
            f"Sample(episode={self.episode_index}, frame={self.frame_index}, "
            f"keys={sorted(self.data)}, cameras={sorted(self.videos)})"
        )
