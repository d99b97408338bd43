"""Exact resume of a mixture: every state of an epoch, restored in one fresh process, continues batch for
batch (same sources, same samples) to the end of the next epoch, with 0 and 2 workers."""

from __future__ import annotations

import json

import pytest
import torch

from streamnodes import build_loader
from tests.recipes.mixture_data import A_DELTAS, CAM, TOP, WRIST, write_a, write_b
from tests.recipes.resume_child import assert_plan_resumes, batch_ids, rest_of_run, sources


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> list:
    a = write_a(tmp_path_factory.mktemp("mixr-a") / "ds")
    b = write_b(tmp_path_factory.mktemp("mixr-b") / "ds")
    b_source = {"root": str(b), "rename": {WRIST: CAM, TOP: None}, "delta_timestamps": {"action": [0.0, 1 / 15]}}
    return [str(a), b_source]


# (num_workers, batch_size, stop): unbatched gives a state after every sample; workers end partial batches.
EVERY_POSITION = [(0, 3, "first_exhausted"), (2, 3, "first_exhausted"), (2, None, "all_exhausted"), (0, 4, "all_exhausted")]


def test_mixture_resumes_in_a_fresh_process_at_every_position(roots, tmp_path) -> None:
    plan, expected = [], []
    for num_workers, batch_size, stop in EVERY_POSITION:
        kwargs = {"weights": [0.6, 0.4], "stop": stop, "batch_size": batch_size, "num_workers": num_workers,
                  "episode_pool_size": 2, "frame_shuffle_size": 3, "seed": 5, "delta_timestamps": A_DELTAS}
        loader = build_loader(sources(roots), **kwargs)
        batches, states = [], [loader.state_dict()]
        for batch in loader:
            batches.append(batch_ids(batch))
            states.append(loader.state_dict())
        states.append(loader.state_dict())  # after the loader noticed the end of the epoch
        epoch0 = len(batches)
        batches += rest_of_run(loader)  # epoch 1 on the same loader
        pairs = [tuple(p) for b in batches[:epoch0] for p in b]
        assert len(pairs) == len(set(pairs)) == loader.samples_per_epoch(0)
        assert {p[0] for p in pairs} == {0, 1}
        assert len(json.dumps(states[len(states) // 2])) < 20_000  # refs and counters
        files = []
        for k, state in enumerate(states):
            path = tmp_path / f"w{num_workers}-b{batch_size}-{stop}-{k}.pt"
            torch.save(state, path)
            files.append(str(path))
            expected.append((f"workers={num_workers} batch_size={batch_size} stop={stop} state {k}", batches[min(k, epoch0):]))
        plan.append({"root": roots, "kwargs": kwargs, "states": files})
    assert_plan_resumes(plan, expected, tmp_path / "plan.json", timeout=600)
