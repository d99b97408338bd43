"""Exact resume of build_loader: states saved with torch.save, restored in a fresh process.

For num_workers 0..3 and two batch sizes, states are taken at the start, mid-epoch, right after a
partial batch, at the end of an epoch (before and after the loader noticed it) and in the next
epoch; a fresh process restores each and must continue batch for batch as the uninterrupted run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from streamnodes import build_loader
from tests.recipes.resume_child import assert_plan_resumes, rest_of_run


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    from streamnodes.testing import write_dataset

    return write_dataset(
        tmp_path_factory.mktemp("resume") / "ds",
        episode_lengths=[9, 4, 13, 6, 11, 7, 5, 10],
        cameras={"observation.images.cam": (64, 64)},
        video_files_size_in_mb=0.01,
    )


def _uninterrupted(loader) -> tuple[list[list[int]], list[tuple[str, int, dict]]]:
    """Two epochs; every state the loader passed through, labelled, with the batch count before it."""
    batches: list[list[int]] = []
    states = [("start", 0, loader.state_dict())]
    for epoch in range(2):
        for batch in loader:
            batches.append(batch["index"].tolist())
            states.append((f"e{epoch}-after-{len(batches)}", len(batches), loader.state_dict()))
        states.append((f"e{epoch}-finished", len(batches), loader.state_dict()))
    return batches, states


def _pick(states, batches, batch_size):
    """start, mid-epoch, right after the first partial batch, end of epoch 0 (two kinds), mid epoch 1."""
    epoch0 = [s for s in states if s[0].startswith("e0-after")]
    n0 = epoch0[-1][1]
    partial = next(k for k, b in enumerate(batches) if len(b) < batch_size) + 1
    wanted = {0, n0 // 2, partial, n0, n0 + (len(batches) - n0) // 2}
    picked = [s for s in states if s[1] in wanted and "finished" not in s[0]]
    picked.append(next(s for s in states if s[0] == "e0-finished"))
    return picked


@pytest.mark.parametrize("num_workers", [0, 1, 2, 3])
@pytest.mark.parametrize("batch_size", [3, 8])
def test_resume_in_fresh_process(dataset, tmp_path, num_workers, batch_size) -> None:
    kwargs = {"batch_size": batch_size, "num_workers": num_workers, "episode_pool_size": 3, "frame_shuffle_size": 5,
              "seed": 7, "delta_timestamps": {"action": [0.0, 0.1]}}
    batches, states = _uninterrupted(build_loader(dataset, **kwargs))
    epoch0 = next(s[1] for s in states if s[0] == "e0-finished")
    assert sorted(i for b in batches[:epoch0] for i in b) == list(range(65))  # every frame once per epoch
    assert sorted(i for b in batches[epoch0:] for i in b) == list(range(65))
    assert batches[:epoch0] != batches[epoch0:]  # the next epoch has a new order
    picked = _pick(states, batches, batch_size)
    files = []
    for label, _, state in picked:
        path = tmp_path / f"{label}.pt"
        torch.save(state, path)
        files.append(str(path))
    plan = [{"root": str(dataset), "kwargs": kwargs, "states": files}]
    assert_plan_resumes(plan, [(label, batches[k:]) for label, k, _ in picked], tmp_path / "plan.json", timeout=300)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    from streamnodes.testing import write_dataset

    return write_dataset(tmp_path_factory.mktemp("tiny") / "ds", episode_lengths=[4, 3, 5, 2],
                         cameras={"observation.images.cam": (32, 32)})


# (num_workers, batch_size): unbatched gives a state after every sample; workers end partial batches.
EVERY_POSITION = [(0, 3), (1, None), (1, 4), (2, 3)]


def test_resume_in_fresh_process_at_every_position(tiny, tmp_path) -> None:
    """Every state of epoch 0 (each batch boundary, and the finished epoch) restored in one fresh process
    continues batch for batch to the end of epoch 1, for 0, 1 and 2 workers and several batch sizes."""
    plan, expected = [], []
    for num_workers, batch_size in EVERY_POSITION:
        kwargs = {"batch_size": batch_size, "num_workers": num_workers, "episode_pool_size": 2,
                  "frame_shuffle_size": 3, "seed": 2, "delta_timestamps": {"action": [-0.1, 0.0]}}
        loader = build_loader(tiny, **kwargs)
        batches, states = [], [loader.state_dict()]
        for batch in loader:
            idx = batch["index"]
            batches.append(idx.tolist() if idx.ndim else [int(idx)])
            states.append(loader.state_dict())
        states.append(loader.state_dict())  # after the loader noticed the end of the epoch
        epoch0 = len(batches)
        batches += rest_of_run(loader)  # epoch 1 on the same loader
        assert sorted(i for b in batches[:epoch0] for i in b) == list(range(14))
        files = []
        for k, state in enumerate(states):
            path = tmp_path / f"w{num_workers}-b{batch_size}-{k}.pt"
            torch.save(state, path)
            files.append(str(path))
            expected.append((f"workers={num_workers} batch_size={batch_size} state {k}", batches[min(k, epoch0):]))
        plan.append({"root": str(tiny), "kwargs": kwargs, "states": files})
    assert_plan_resumes(plan, expected, tmp_path / "plan.json", timeout=300)


def test_resume_in_process_with_persistent_workers(dataset) -> None:
    kwargs = {"batch_size": 4, "num_workers": 2, "persistent_workers": True, "episode_pool_size": 2, "seed": 1}
    batches, states = _uninterrupted(build_loader(dataset, **kwargs))
    for label, k, state in states[:: max(1, len(states) // 5)]:
        loader = build_loader(dataset, **kwargs)
        loader.load_state_dict(state)
        assert rest_of_run(loader) == batches[k:], label


def test_unbatched_and_partial_state_sizes_are_small(dataset) -> None:
    loader = build_loader(dataset, batch_size=None, num_workers=2, episode_pool_size=4)
    it = iter(loader)
    for _ in range(10):
        sample = next(it)
    assert sample["index"].ndim == 0
    state = loader.state_dict()
    assert len(json.dumps(state)) < 20_000


def test_spawn_workers_resume_and_match_fork(dataset) -> None:
    """Workers started with spawn receive a pickled graph factory and stream exactly what fork workers do."""
    kwargs = {"batch_size": 4, "num_workers": 2, "episode_pool_size": 2, "seed": 4, "frame_shuffle_size": 3}
    fork_batches, _ = _uninterrupted(build_loader(dataset, multiprocessing_context="fork", **kwargs))
    spawn_loader = build_loader(dataset, multiprocessing_context="spawn", **kwargs)
    it = iter(spawn_loader)
    head = [next(it)["index"].tolist() for _ in range(3)]
    state = spawn_loader.state_dict()
    assert head == fork_batches[:3]
    resumed = build_loader(dataset, multiprocessing_context="spawn", **kwargs)
    resumed.load_state_dict(state)
    assert rest_of_run(resumed) == fork_batches[3:]


def test_custom_collate_fn_runs_in_workers(dataset) -> None:
    def indices_only(samples):
        return torch.stack([s["index"] for s in samples])

    loader = build_loader(dataset, batch_size=5, num_workers=2, episode_pool_size=2, collate_fn=indices_only)
    batches = list(loader)
    assert all(isinstance(b, torch.Tensor) and b.dtype == torch.int64 for b in batches)
    assert sorted(int(i) for b in batches for i in b) == list(range(65))
