"""Real mp4 files for the byte-range tests: LeRobot v3 datasets from ``write_dataset`` (AV1 and H.264,
several episodes per file and one-episode files) and H.264 files with B-frames made with the ffmpeg CLI."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from streamnodes.testing import write_dataset

CAMERA = "observation.images.cam"
FPS = 10
# With 0.006 MiB files (64x64 frames, AV1 or H.264): file-000 holds episodes 0-2, file-001 3-5, file-002 6.
EPISODE_LENGTHS = (7, 12, 9, 15, 5, 8, 10)


@dataclass(frozen=True)
class EpisodeVideo:
    """Where one episode's frames are: ``path`` and its first frame ``first`` (``round(from * fps)``)."""

    episode_index: int
    path: Path
    first: int
    length: int

    @property
    def last(self) -> int:
        return self.first + self.length - 1


def episode_videos(root: Path, fps: int = FPS) -> list[EpisodeVideo]:
    """Every episode's video location, from the episodes table (as LeRobot locates frames)."""
    out = []
    for file in sorted((root / "meta" / "episodes").rglob("*.parquet")):
        for row in pq.read_table(file).to_pylist():
            path = (
                root
                / "videos"
                / CAMERA
                / (
                    f"chunk-{row[f'videos/{CAMERA}/chunk_index']:03d}/file-{row[f'videos/{CAMERA}/file_index']:03d}.mp4"
                )
            )
            first = round(row[f"videos/{CAMERA}/from_timestamp"] * fps)
            out.append(EpisodeVideo(row["episode_index"], path, first, row["length"]))
    return out


@pytest.fixture(scope="session", params=["av1", "h264"])
def dataset(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Several episodes per mp4 (moov after mdat, as ffmpeg's concat writes it) and a one-episode file."""
    root = tmp_path_factory.mktemp(f"mp4_{request.param}") / "ds"
    return write_dataset(
        root, episode_lengths=EPISODE_LENGTHS, fps=FPS, codec=request.param, video_files_size_in_mb=0.006
    )


@pytest.fixture(scope="session")
def single_episode_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One episode per mp4 (each file is torchcodec's encoder output, not remuxed by ffmpeg)."""
    root = tmp_path_factory.mktemp("mp4_single") / "ds"
    return write_dataset(root, episode_lengths=(9, 6), fps=FPS, codec="h264", video_files_size_in_mb=0.0001)


def ffmpeg(*args: str) -> None:
    command = [shutil.which("ffmpeg") or "ffmpeg", "-hide_banner", "-loglevel", "error", "-y", *args]
    subprocess.run(command, check=True, capture_output=True)


@pytest.fixture(scope="session")
def bframes_mp4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 H.264 frames with up to 3 B-frames, a keyframe every 12, closed GOPs, moov at the front."""
    path = tmp_path_factory.mktemp("bframes") / "bframes.mp4"
    ffmpeg("-f", "lavfi", "-i", f"testsrc2=size=64x64:rate={FPS}", "-frames:v", "60", "-c:v", "libx264",
           "-pix_fmt", "yuv420p", "-bf", "3", "-g", "12", "-sc_threshold", "0", "-movflags", "+faststart",
           str(path))  # fmt: skip
    return path


@pytest.fixture(scope="session")
def open_gop_mp4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Like ``bframes_mp4`` but open GOPs: I-frames after the first are followed by B-frames shown before them."""
    path = tmp_path_factory.mktemp("open_gop") / "open_gop.mp4"
    ffmpeg("-f", "lavfi", "-i", f"testsrc2=size=64x64:rate={FPS}", "-frames:v", "60", "-c:v", "libx264",
           "-pix_fmt", "yuv420p", "-bf", "3", "-g", "12", "-sc_threshold", "0", "-x264-params", "open-gop=1",
           str(path))  # fmt: skip
    return path
