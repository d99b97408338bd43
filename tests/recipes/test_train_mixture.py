"""recipes/train.py on a weighted mixture of two datasets at different fps: trains, checkpoints, and a resume
in a fresh process continues the uninterrupted run's stream."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.recipes.test_train import REPO, TRAIN, read_log, run_train

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from streamnodes.testing import write_dataset

    root = tmp_path_factory.mktemp("train-mix")
    cam = {"observation.images.cam": (32, 32)}
    return (write_dataset(root / "a", episode_lengths=[9, 14, 7], fps=10, cameras=cam),
            write_dataset(root / "b", episode_lengths=[12, 20], fps=20, cameras=cam))


def test_train_on_two_datasets_with_weights_and_resume(datasets: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = datasets
    mix = ["--dataset", str(b), "--weights", "0.7", "0.3", "--num_workers", "0"]
    full = tmp_path / "full"
    result = run_train(a, full, *mix, "--steps", "8", "--save_every", "4", "--log_indices", str(full / "idx.log"))
    assert "train done: steps 0->8" in result.stdout
    summary = json.loads((full / "summary.json").read_text())
    assert summary["steps"] == 8 and summary["final_loss"] is not None
    part = tmp_path / "part"
    run_train(a, part, *mix, "--steps", "4", "--save_every", "4", "--log_indices", str(part / "idx.log"))
    run_train(a, part, *mix, "--steps", "8", "--save_every", "4", "--log_indices", str(part / "idx.log"), "--resume_from", "auto")
    assert read_log(part / "idx.log") == read_log(full / "idx.log")


def test_weights_must_match_the_datasets(datasets: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = datasets
    command = [sys.executable, str(TRAIN), "--dataset", str(a), "--dataset", str(b), "--weights", "1", "--output_dir", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 2 and "--weights has 1 values for 2 --dataset" in result.stderr
