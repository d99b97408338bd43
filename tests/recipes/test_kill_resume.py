"""SIGKILL `recipes/train.py --dummy` at random steps and resume: nothing lost, nothing repeated.

The training script logs the `index` of every sample it consumed (`--log_indices`: one line per step
and rank, written before that step's checkpoint). A run is killed at 5 seeded random steps across
two epochs and restarted each time with `--resume_from auto`. Removing each rolled-back tail (the
steps a killed process logged after its last complete checkpoint) must leave exactly the sequence
of an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from streamnodes import build_loader

ROOT = Path(__file__).resolve().parents[2]
TRAIN = ROOT / "recipes" / "train.py"
ACCELERATE = Path(sys.executable).with_name("accelerate")
LENGTHS = [9, 14, 8, 17, 11, 6, 13, 10, 15, 12]
ARGS = ["--batch_size", "4", "--num_workers", "2", "--episode_pool_size", "3", "--seed", "2", "--save_every", "3", "--dummy"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    from streamnodes.testing import write_dataset

    return write_dataset(tmp_path_factory.mktemp("kill") / "ds", episode_lengths=LENGTHS, cameras={"observation.images.cam": (64, 64)})


def _command(dataset: Path, out: Path, log: Path, steps: int, ranks: int) -> list[str]:
    script = [str(TRAIN), "--dataset", str(dataset), "--output_dir", str(out), "--steps", str(steps),
              "--log_indices", str(log), "--resume_from", "auto", *ARGS]
    if ranks == 1:
        return [sys.executable, *script]
    return [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", str(ranks), "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", *script]


def _env() -> dict[str, str]:
    drop = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    return {k: v for k, v in os.environ.items() if k not in drop}


def _read(log: Path) -> list[tuple[int, int, list[int]]]:
    if not log.exists():
        return []
    out = []
    for line in log.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and line.endswith(tuple("0123456789")):
            out.append((int(parts[0]), int(parts[1]), [int(x) for x in parts[2:]]))
    return out


def _run_to_end(cmd: list[str]) -> None:
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=_env(), timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]


def _process_tree(root_pid: int) -> list[int]:
    """``root_pid`` and all its descendants (from /proc): torchrun starts ranks in sessions of their own,
    so killing the launcher's process group would leave the ranks running."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, todo = [], [root_pid]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def _kill_tree(root_pid: int) -> None:
    for pid in _process_tree(root_pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _run_and_kill(cmd: list[str], log: Path, at_step: int) -> int:
    """Start ``cmd``; SIGKILL its whole process tree once the log shows ``at_step``. Returns the exit code."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if any(step >= at_step for step, _, _ in _read(log)):
                break
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            _kill_tree(proc.pid)
        proc.wait(timeout=60)
    assert proc.returncode != 0 or any(step >= at_step for step, _, _ in _read(log)), "the run ended early"
    return proc.returncode


def _consumed(log: Path, ranks: int) -> dict[int, list[tuple[int, list[int]]]]:
    """Per rank, the log with every rolled-back tail removed.

    A restarted process resumes from its newest complete checkpoint c and logs steps c+1, ...; every
    earlier line with a step > c belongs to a killed process's rolled-back tail.
    """
    per_rank: dict[int, list[tuple[int, list[int]]]] = {r: [] for r in range(ranks)}
    for step, rank, indices in _read(log):
        seq = per_rank[rank]
        while seq and seq[-1][0] >= step:  # a restart from checkpoint step - 1
            seq.pop()
        seq.append((step, indices))
    return per_rank


def _steps_for_two_epochs(dataset: Path, ranks: int) -> int:
    loader = build_loader(dataset, batch_size=4, num_workers=2, episode_pool_size=3, seed=2, rank=0, world_size=ranks)
    return loader.batches_per_epoch(0) + loader.batches_per_epoch(1)


@pytest.mark.slow
@pytest.mark.parametrize("ranks", [1, 2], ids=["python", "accelerate-2-ranks"])
def test_killed_training_resumes_without_loss_or_repeat(dataset, tmp_path, ranks) -> None:
    steps = _steps_for_two_epochs(dataset, ranks)
    ref_log = tmp_path / "reference.log"
    _run_to_end(_command(dataset, tmp_path / "reference", ref_log, steps, ranks))
    reference = _consumed(ref_log, ranks)
    assert all([s for s, _ in reference[r]] == list(range(1, steps + 1)) for r in range(ranks))

    kill_steps = sorted(random.Random(1234 + ranks).sample(range(2, steps - 1), 5))
    log = tmp_path / "killed.log"
    cmd = _command(dataset, tmp_path / "killed", log, steps, ranks)
    codes = [_run_and_kill(cmd, log, at) for at in kill_steps]
    _run_to_end(cmd)  # the last restart finishes the two epochs
    assert all(code == -signal.SIGKILL for code in codes), codes

    lines = _read(log)
    consumed = _consumed(log, ranks)
    rolled_back = len(lines) - sum(len(v) for v in consumed.values())
    assert rolled_back > 0  # kills landed between checkpoints, so tails really were rolled back
    for r in range(ranks):
        assert consumed[r] == reference[r], f"rank {r}: the resumed stream differs from the uninterrupted one"
    # and that stream is right: per epoch, disjoint across ranks, every frame once (minus the trim)
    loader = build_loader(dataset, batch_size=4, num_workers=2, episode_pool_size=3, seed=2, rank=0, world_size=ranks)
    bounds = [0, loader.batches_per_epoch(0), steps]
    for epoch in range(2):
        seen = [i for r in range(ranks) for s, idx in consumed[r] if bounds[epoch] < s <= bounds[epoch + 1] for i in idx]
        _, trimmed = loader.graph.quotas(epoch, ranks, 2)
        assert len(seen) == len(set(seen)) == sum(LENGTHS) - trimmed


def _command_with(dataset: Path, out: Path, log: Path, steps: int, ranks: int, workers: int) -> list[str]:
    cmd = _command(dataset, out, log, steps, ranks)
    i = cmd.index("--num_workers")
    return [*cmd[: i + 1], str(workers), *cmd[i + 2 :]]


def _rest_of_epoch(dataset: Path, checkpoint: Path, ranks: int, workers: int) -> tuple[int, int]:
    """(epoch, batches each new rank yields in the rest of it) after the elastic restore, read as train.py does."""
    from streamnodes.recipes.checkpoint import load_checkpoint

    counts = set()
    fps = json.loads((dataset / "meta" / "info.json").read_text())["fps"]
    chunk = {"action": [k / fps for k in range(10)]}  # train.py's default --chunk 10
    for rank in range(ranks):
        loader = build_loader(dataset, batch_size=4, num_workers=workers, episode_pool_size=3, seed=2, rank=rank,
                              world_size=ranks, delta_timestamps=chunk)  # train.py's stream settings
        loader.load_state_dict(load_checkpoint(checkpoint, rank, world_size=ranks)["loader"])
        counts.add((loader.epoch, len(loader)))
    assert len(counts) == 1, counts  # every new rank yields the same number of batches
    return counts.pop()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("before", "after"),
    [((2, 2), (1, 2)), ((1, 2), (2, 2)), ((1, 2), (1, 1))],
    ids=["2-ranks-to-1", "1-rank-to-2", "2-workers-to-1"],
)
def test_killed_training_resumes_elastically(dataset, tmp_path, before, after) -> None:
    """Killed mid-epoch, resumed with another number of processes (or workers): across the change, no
    sample of the epoch repeats and none is lost beyond each topology's trim (at most a frame per consumer)."""
    from streamnodes.recipes.checkpoint import checkpoint_step, latest_checkpoint

    (ranks_a, workers_a), (ranks_b, workers_b) = before, after
    out, log = tmp_path / "run", tmp_path / "indices.log"
    first = build_loader(dataset, batch_size=4, num_workers=workers_a, episode_pool_size=3, seed=2, rank=0, world_size=ranks_a)
    epoch0 = first.batches_per_epoch(0)
    code = _run_and_kill(_command_with(dataset, out, log, 10 * epoch0, ranks_a, workers_a), log, at_step=epoch0 // 2 + 2)
    assert code == -signal.SIGKILL
    checkpoint = latest_checkpoint(out)
    assert checkpoint is not None
    saved = checkpoint_step(checkpoint)
    assert 0 < saved < epoch0
    epoch, rest = _rest_of_epoch(dataset, checkpoint, ranks_b, workers_b)
    assert epoch == 0 and rest > 0
    killed = _read(log)
    _run_to_end(_command_with(dataset, out, log, saved + rest, ranks_b, workers_b))  # exactly the rest of epoch 0

    kept = [line for line in killed if line[0] <= saved]  # the killed run up to its checkpoint (its tail rolled back)
    assert len(kept) == saved * ranks_a
    resumed = _read(log)[len(killed) :]
    assert {s for s, _, _ in resumed} == set(range(saved + 1, saved + rest + 1))
    assert all(sum(1 for s, r, _ in resumed if r == rank) == rest for rank in range(ranks_b))
    seen = [i for _, _, idx in kept for i in idx] + [i for _, _, idx in resumed for i in idx]
    assert len(seen) == len(set(seen)), "a sample was delivered twice across the change"
    missing = sum(LENGTHS) - len(seen)
    assert 0 <= missing <= ranks_a * max(1, workers_a) + ranks_b * max(1, workers_b), missing
