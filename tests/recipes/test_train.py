"""recipes/train.py end to end, in fresh processes: checkpoint, resume, the same stream as without a stop."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
TRAIN = REPO / "recipes" / "train.py"
ARGS = ["--batch_size", "4", "--num_workers", "2", "--episode_pool_size", "2", "--seed", "3", "--chunk", "4"]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 episodes, 41 frames, one 64x64 AV1 camera: an epoch is ~11 batches of 4, so runs cross epochs."""
    from streamnodes.testing import write_dataset

    return write_dataset(
        tmp_path_factory.mktemp("train") / "ds",
        episode_lengths=[9, 14, 7, 11],
        fps=10,
        cameras={"observation.images.cam": (64, 64)},
    )


def run_train(dataset: Path, out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
    command = [sys.executable, str(TRAIN), "--dataset", str(dataset), "--output_dir", str(out), *ARGS, *args]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env, timeout=240)
    assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return result


def read_log(path: Path) -> dict[tuple[int, int], list[int]]:
    out: dict[tuple[int, int], list[int]] = {}
    for line in path.read_text().splitlines():
        step, rank, *indices = (int(x) for x in line.split())
        out[(step, rank)] = indices
    return out


@pytest.fixture(scope="module")
def full_run(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """16 training steps without a stop, checkpoints every 6: the reference stream."""
    full = tmp_path_factory.mktemp("full")
    result = run_train(dataset, full, "--steps", "16", "--save_every", "6", "--log_indices", str(full / "idx.log"))
    return full, result.stdout


def test_resume_in_a_fresh_process_continues_the_uninterrupted_stream(
    dataset: Path, full_run: tuple[Path, str], tmp_path: Path
) -> None:
    full, stdout = full_run
    resumed = tmp_path / "resumed"
    assert "train done: steps 0->16" in stdout and "frames/s" in stdout
    assert sorted(p.name for p in full.glob("step-*")) == ["step-00000006", "step-00000012", "step-00000016"]
    assert sorted(p.name for p in (full / "step-00000006").iterdir()) == [
        "complete-rank0",
        "loader-rank0.pt",
        "model.pt",
        "optimizer.pt",
    ]
    uninterrupted = read_log(full / "idx.log")
    assert sorted(uninterrupted) == [(s, 0) for s in range(1, 17)]
    consumed = [i for s in range(1, 17) for i in uninterrupted[(s, 0)]]
    assert all(0 <= i < 41 for i in consumed) and len(consumed) > 41  # more than one epoch
    summary = json.loads((full / "summary.json").read_text())
    assert summary["epoch"] >= 1 and summary["steps"] == 16

    run_train(
        dataset,
        resumed,
        "--steps", "16", "--save_every", "6", "--log_indices", str(resumed / "idx.log"),
        "--resume_from", str(full / "step-00000006"),
    )  # fmt: skip
    after = read_log(resumed / "idx.log")
    assert sorted(after) == [(s, 0) for s in range(7, 17)]
    assert after == {k: v for k, v in uninterrupted.items() if k[0] > 6}
    # the model resumed too: the same weights as the run that never stopped
    a = torch.load(full / "step-00000016" / "model.pt", weights_only=True)
    b = torch.load(resumed / "step-00000016" / "model.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=0, atol=1e-6) for k in a)


def test_dummy_mode_and_resume_auto(dataset: Path, full_run: tuple[Path, str], tmp_path: Path) -> None:
    out, log = tmp_path / "dummy", tmp_path / "dummy" / "idx.log"
    result = run_train(dataset, out, "--dummy", "--steps", "9", "--save_every", "5", "--log_indices", str(log))
    assert "dummy done: steps 0->9" in result.stdout and "frames/s" in result.stdout
    assert sorted(p.name for p in out.glob("step-*")) == ["step-00000005", "step-00000009"]
    assert not (out / "step-00000005" / "model.pt").exists()  # data loading only: no model
    assert json.loads((out / "summary.json").read_text())["dummy"] is True

    # a half-written newer checkpoint (a kill mid-save) is skipped by --resume_from auto
    (out / "step-00000010").mkdir()
    (out / "step-00000010" / ".loader-rank0.pt.x.tmp").write_bytes(b"partial")
    result = run_train(dataset, out, "--dummy", "--steps", "14", "--resume_from", "auto", "--log_indices", str(log))
    assert "dummy done: steps 9->14" in result.stdout
    lines = log.read_text().splitlines()
    assert [int(line.split()[0]) for line in lines] == list(range(1, 15))

    # without a model the stream is the same as the training run's (the model does not touch the data)
    full, _ = full_run
    assert read_log(log) == {k: v for k, v in read_log(full / "idx.log").items() if k[0] <= 14}
