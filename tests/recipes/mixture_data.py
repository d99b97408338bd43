"""Datasets and sources shared by the mixture tests: different fps, cameras and image sizes."""

from __future__ import annotations

from pathlib import Path

from streamnodes import Source
from streamnodes.testing import write_dataset

CAM = "observation.images.cam"
WRIST = "observation.images.wrist_left"
TOP = "observation.images.top"


def write_a(root: Path) -> Path:
    """10 fps, one 32x32 camera ``observation.images.cam``: 22 frames in 4 episodes."""
    return write_dataset(root, episode_lengths=[6, 4, 7, 5], fps=10, cameras={CAM: (32, 32)})


def write_b(root: Path) -> Path:
    """15 fps, cameras ``wrist_left`` 32x32 and ``top`` 32x48: 22 frames in 3 episodes."""
    return write_dataset(root, episode_lengths=[8, 5, 9], fps=15, cameras={WRIST: (32, 32), TOP: (32, 48)})


def aligned_b(b: Path | str) -> Source:
    """``b`` aligned with ``a``: its wrist camera renamed to ``cam``, ``top`` dropped, a 2-step action
    window at its own 15 fps (``a`` gets ``[0, 0.1]`` s at 10 fps from the loader's delta_timestamps)."""
    return Source(b, rename={WRIST: CAM, TOP: None}, delta_timestamps={"action": [0.0, 1 / 15]})


A_DELTAS = {"action": [0.0, 0.1]}
