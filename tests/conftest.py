"""Shared fixtures: the LeRobot-written reference dataset and datasets made with our own writer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

REF_DIR = Path(__file__).parent / "data" / "lerobot_v3_ref"
REF_ROOT = REF_DIR / "dataset"


@pytest.fixture(scope="session")
def reference() -> dict[str, np.ndarray]:
    """What LeRobot's map-style reader returned for every frame of the reference dataset."""
    with np.load(REF_DIR / "reference.npz") as npz:
        return {k: npz[k] for k in npz.files}


@pytest.fixture(scope="session")
def reference_config() -> dict:
    return json.loads((REF_DIR / "reference.json").read_text())


@pytest.fixture
def ref_copy(tmp_path: Path) -> Path:
    """A writable copy of the reference dataset, for tests that damage it."""
    dst = tmp_path / "ref"
    shutil.copytree(REF_ROOT, dst)
    for p in dst.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    return dst


@pytest.fixture(scope="session")
def tabular_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A camera-less dataset written by streamnodes' writer: 7 episodes, several data files and chunks."""
    from streamnodes.testing import write_dataset

    root = tmp_path_factory.mktemp("tabular") / "ds"
    return write_dataset(
        root,
        episode_lengths=[5, 9, 1, 14, 7, 3, 11],
        fps=10,
        cameras=None,
        data_files_size_in_mb=0.004,
        chunks_size=2,
    )


@pytest.fixture(scope="session")
def video_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dataset with two cameras, several episodes per mp4 and several mp4s per camera."""
    from streamnodes.testing import write_dataset

    root = tmp_path_factory.mktemp("video") / "ds"
    return write_dataset(
        root,
        episode_lengths=[12, 7, 15, 9, 11],
        fps=10,
        cameras={"observation.images.front": (64, 64), "observation.images.wrist": (64, 96)},
        data_files_size_in_mb=0.012,
        video_files_size_in_mb=0.005,
        chunks_size=3,
    )
