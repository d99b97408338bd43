"""Two real processes under `accelerate launch`: disjoint ranks, equal batches, per-rank resume.

accelerate 1.15 starts several CPU processes only through torchrun (`--multi_gpu`; `--cpu` alone
runs one process unless mpirun is used), so the child builds `Accelerator(cpu=True)` (gloo backend).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from streamnodes import build_loader

ROOT = Path(__file__).resolve().parents[2]
ACCELERATE = Path(sys.executable).with_name("accelerate")


def _launch(*args: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    cmd = [str(ACCELERATE), "launch", "--num_processes", "2", "--num_machines", "1", "--multi_gpu", "--mixed_precision", "no",
           "--dynamo_backend", "no", "-m", "tests.recipes.accelerate_child", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]


@pytest.mark.slow
@pytest.mark.parametrize("lengths", [[8] * 12, [9, 4, 13, 6, 11, 7, 5, 10, 12, 3]], ids=["even", "uneven"])
def test_two_ranks_under_accelerate_launch(tmp_path, lengths) -> None:
    from streamnodes.testing import write_dataset

    root = write_dataset(tmp_path / "ds", episode_lengths=lengths, cameras={"observation.images.cam": (64, 64)})
    out = tmp_path / "out"
    out.mkdir()
    _launch(str(root), str(out), "run", "2")
    runs = [json.loads((out / f"run-rank{r}.json").read_text()) for r in range(2)]
    total = sum(lengths)
    for epoch in ("0", "1"):
        per_rank = [[i for b in run["epochs"][epoch] for i in b] for run in runs]
        assert not set(per_rank[0]) & set(per_rank[1])  # disjoint
        assert all(len(p) == len(set(p)) for p in per_rank)  # no repeats
        # every rank yields the same number of batches, as computed from metadata alone
        assert len(runs[0]["epochs"][epoch]) == len(runs[1]["epochs"][epoch]) == runs[0]["expected_batches"][int(epoch)]
        # the trimmed frames are exactly what the policy reports; with even shards nothing is trimmed
        loader = build_loader(root, batch_size=4, num_workers=2, episode_pool_size=3, seed=5, rank=0, world_size=2)
        _, trimmed = loader.graph.quotas(int(epoch), 2, 2)
        assert len(per_rank[0]) + len(per_rank[1]) == total - trimmed
        if lengths == [8] * 12:
            assert trimmed == 0 and sorted(per_rank[0] + per_rank[1]) == list(range(total))
    # each rank restores its own state file in a fresh launch and continues exactly
    _launch(str(root), str(out), "resume", "2")
    for r in range(2):
        resumed = json.loads((out / f"resume-rank{r}.json").read_text())
        assert resumed["epochs"]["1"] == runs[r]["epochs"]["1"][2:]
        assert resumed["epoch_after_resume"] == 1


@pytest.mark.slow
def test_accelerator_prepare_leaves_the_loader_as_it_is(tmp_path) -> None:
    """LeRobot's habit, ``accelerator.prepare(loader)``, under two real processes: accelerate returns the
    loader unchanged (it would otherwise re-shard a stream that is already per rank and fail to dispatch
    string keys), and each rank reads exactly what it reads without prepare."""
    from streamnodes.testing import write_dataset

    lengths = [9, 4, 13, 6, 11, 7, 5, 10]
    root = write_dataset(tmp_path / "ds", episode_lengths=lengths, cameras={"observation.images.cam": (64, 64)})
    out = tmp_path / "out"
    out.mkdir()
    _launch(str(root), str(out), "prepare", "0")
    for rank in range(2):
        run = json.loads((out / f"prepare-rank{rank}.json").read_text())
        assert run["prepared_is_loader"] is True
        loader = build_loader(root, batch_size=4, num_workers=2, episode_pool_size=3, seed=5, rank=rank, world_size=2,
                              delta_timestamps={"action": [0.0, 0.1, 0.2]})
        expected = [batch["index"].tolist() for batch in loader]
        assert run["epochs"]["0"] == expected
        assert run["len"] == len(expected) == loader.batches_per_epoch()
