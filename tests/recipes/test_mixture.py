"""Weighted mixtures through build_loader: alignment, values, shares, epochs, ranks, statistics, errors.

Resume in a fresh process is in test_mixture_resume.py; parity with LeRobot's reference (local and
over HTTP) in test_mixture_parity.py.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from streamnodes import ConfigError, Source, StateError, build_loader, open_dataset
from streamnodes.mixing import exact_weights, mix_counts
from streamnodes.testing import (
    camera_identity,
    expected_action,
    expected_state,
    frame_identity,
    write_dataset,
)
from tests.recipes.mixture_data import A_DELTAS, CAM, TOP, WRIST, aligned_b, write_a, write_b
from tests.recipes.resume_child import batch_ids


@pytest.fixture(scope="module")
def a(tmp_path_factory) -> Path:
    return write_a(tmp_path_factory.mktemp("mix-a") / "ds")


@pytest.fixture(scope="module")
def b(tmp_path_factory) -> Path:
    return write_b(tmp_path_factory.mktemp("mix-b") / "ds")


def _pairs(loader) -> list[tuple[int, int]]:
    return [tuple(p) for batch in loader for p in batch_ids(batch)]


# ---- samples -----------------------------------------------------------------------------------------


def test_batched_mixture_of_aligned_sources_yields_each_sample_from_its_own_dataset(a, b) -> None:
    loader = build_loader([a, aligned_b(b)], weights=[0.5, 0.5], batch_size=4, delta_timestamps=A_DELTAS,
                          image_dtype=torch.uint8, seed=3)
    seen = []
    for batch in loader:
        assert batch["dataset_index"].dtype == torch.int64
        assert batch[CAM].shape[1:] == (3, 32, 32) and batch["action"].shape[1:] == (2, 6)
        assert TOP not in batch and WRIST not in batch
        for row, (source, index) in enumerate(batch_ids(batch)):
            episode, frame = int(batch["episode_index"][row]), int(batch["frame_index"][row])
            assert torch.equal(batch["observation.state"][row], torch.from_numpy(expected_state(episode, frame)))
            # each source's window at its own fps: 0.1 s at 10 fps and 1/15 s at 15 fps are both one frame ahead
            length = ([6, 4, 7, 5], [8, 5, 9])[source][episode]
            nxt = min(frame + 1, length - 1)
            assert torch.equal(batch["action"][row], torch.from_numpy(expected_action(episode, [frame, nxt])))
            assert frame_identity(batch[CAM][row]) == (episode, frame)
            assert camera_identity(batch[CAM][row]) == 0  # b's wrist_left is its camera 0; top would be 1
            seen.append((source, index))
    assert len(seen) == len(set(seen)) == loader.samples_per_epoch() == 44  # 22 + 22 at equal weights


def test_unbatched_mixture_may_mix_keys_and_shapes(a, b) -> None:
    loader = build_loader([a, b], weights=[1, 1], batch_size=None, image_dtype=torch.uint8)
    keys = {}
    for sample in loader:
        keys.setdefault(int(sample["dataset_index"]), {k: tuple(v.shape) for k, v in sample.items() if k != "task"})
    assert keys[0][CAM] == (3, 32, 32) and CAM not in keys[1]
    assert keys[1][WRIST] == (3, 32, 32) and keys[1][TOP] == (3, 32, 48)


def test_every_frame_at_most_once_per_epoch_and_all_exhausted_gives_every_frame_once(a, b) -> None:
    first = build_loader([a, aligned_b(b)], weights=[0.8, 0.2], batch_size=5, delta_timestamps=A_DELTAS, num_workers=2)
    e0, e1 = _pairs(first), _pairs(first)
    for epoch, pairs in enumerate((e0, e1)):
        assert len(pairs) == len(set(pairs)) == first.samples_per_epoch(epoch)
    assert e0 != e1  # a new order every epoch
    every = build_loader([a, aligned_b(b)], weights=[0.8, 0.2], stop="all_exhausted", batch_size=5,
                         delta_timestamps=A_DELTAS, num_workers=2)
    pairs = _pairs(every)
    assert sorted(pairs) == [(0, i) for i in range(22)] + [(1, i) for i in range(22)]


# ---- shares --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tabular(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("mix-tab")
    small = write_dataset(root / "small", episode_lengths=[40] * 8, fps=10, cameras=None)  # 320 frames
    large = write_dataset(root / "large", episode_lengths=[60] * 9, fps=20, cameras=None)  # 540 frames
    return small, large


@pytest.mark.parametrize("num_workers", [0, 2])
def test_observed_shares_follow_the_weights(tabular, num_workers) -> None:
    """Per consumer the epoch holds exactly ``mix_counts`` samples of each source (shares within 1/N of the
    weights); each prefix of the stream is a draw without replacement from those counts, so its share of
    source 0 is within 4.5 hypergeometric standard deviations of the weight (deterministic given the seed;
    that bound fails with probability < 1e-5 per prefix for a random seed)."""
    small, large = tabular
    weights = [0.2, 0.8]
    loader = build_loader([small, large], weights=weights, batch_size=None, num_workers=num_workers, seed=11)
    stream = [int(s["dataset_index"]) for s in loader]
    total = len(stream)
    plan = loader.graph.worker_counts(0, 1, max(1, num_workers))
    assert plan == [mix_counts(f, exact_weights(weights, 2)) for f in zip(*(
        g.worker_samples(0, 1, max(1, num_workers)) for g in loader.graph.graphs), strict=True)]
    assert Counter(stream) == {0: sum(c[0] for c in plan), 1: sum(c[1] for c in plan)}
    assert abs(Counter(stream)[0] / total - 0.2) < max(1, num_workers) / total + 1e-12
    # the large source is the scarce one relative to its weight: 540 / 0.8 = 675 samples (135 + 540)
    if num_workers == 0:
        assert plan == [[135, 540]]
    for k in range(20, total, 20):
        share = stream[:k].count(0)
        p = Counter(stream)[0] / total
        sd = math.sqrt(k * p * (1 - p) * (total - k) / (total - 1))
        assert abs(share - k * p) <= 4.5 * sd + 1, (k, share, k * p)


# ---- ranks ---------------------------------------------------------------------------------------------


def test_every_rank_yields_the_same_batches_and_ranks_are_disjoint(a, b) -> None:
    kwargs = {"weights": [0.5, 0.5], "batch_size": 3, "num_workers": 2, "delta_timestamps": A_DELTAS, "world_size": 2}
    per_rank = []
    for rank in (0, 1):
        loader = build_loader([a, aligned_b(b)], rank=rank, **kwargs)
        batches = [batch_ids(batch) for batch in loader]
        assert len(batches) == len(loader) == loader.batches_per_epoch()
        per_rank.append(batches)
    assert [len(b) for b in per_rank[0]] == [len(b) for b in per_rank[1]]
    flat = [set(map(tuple, sum(batches, []))) for batches in per_rank]
    assert not flat[0] & flat[1]


# ---- statistics ----------------------------------------------------------------------------------------


def _column(root: Path, key: str) -> np.ndarray:
    tables = [pq.read_table(p, columns=[key]) for p in sorted(root.glob("data/*/*.parquet"))]
    return np.concatenate([np.stack(t.column(key).to_numpy(zero_copy_only=False)) for t in tables]).astype(np.float64)


def test_merged_statistics_equal_numpy_on_the_concatenated_values(a, b) -> None:
    loader = build_loader([a, aligned_b(b)], weights=[0.9, 0.1], batch_size=4, delta_timestamps=A_DELTAS)
    per_source = loader.source_stats
    assert per_source[0] == open_dataset(a).stats
    assert CAM in per_source[1] and WRIST not in per_source[1] and TOP not in per_source[1]  # under output names
    merged = loader.dataset_stats
    for key in ("observation.state", "action"):
        every = np.concatenate([_column(a, key), _column(b, key)])
        np.testing.assert_allclose(merged[key]["mean"], every.mean(0), rtol=1e-9)
        np.testing.assert_allclose(merged[key]["std"], every.std(0), rtol=1e-9)
        np.testing.assert_allclose(merged[key]["min"], every.min(0))
        np.testing.assert_allclose(merged[key]["max"], every.max(0))
        assert merged[key]["count"] == [len(every)]
        for name in ("q01", "q10", "q50", "q90", "q99"):
            values = np.array([s[key][name] for s in per_source])
            assert np.all(values.min(0) <= merged[key][name]) and np.all(np.array(merged[key][name]) <= values.max(0))
    # counts weight the statistics, not the sampling weights: the merged view describes the data
    assert np.shape(merged[CAM]["mean"]) == (3, 1, 1)


# ---- errors, raised by build_loader in the calling process --------------------------------------------


def test_batching_sources_whose_camera_shapes_differ_names_key_sources_and_shapes(a, b) -> None:
    misaligned = Source(b, rename={TOP: CAM, WRIST: None}, delta_timestamps={"action": [0.0, 1 / 15]})
    with pytest.raises(ConfigError) as error:
        build_loader([a, misaligned], weights=[1, 1], batch_size=4, delta_timestamps=A_DELTAS)
    text = str(error.value)
    assert f"key '{CAM}' differs" in text and f"source 0 ({a}): [3, 32, 32]" in text and f"source 1 ({b}): [3, 32, 48]" in text


def test_batching_sources_with_different_keys_or_window_lengths_is_refused(a, b) -> None:
    with pytest.raises(ConfigError, match=rf"key '{CAM}' is in source\(s\) 0 \({a}\) but not in 1 \({b}\)"):
        build_loader([a, b], weights=[1, 1], batch_size=4)
    longer = Source(b, rename={WRIST: CAM, TOP: None}, delta_timestamps={"action": [0.0, 1 / 15, 2 / 15]})
    with pytest.raises(ConfigError, match=r"key 'action' differs .*\[2, 6\] float32.*\[3, 6\] float32"):
        build_loader([a, longer], weights=[1, 1], batch_size=4, delta_timestamps=A_DELTAS)


@pytest.mark.parametrize(
    ("rename", "words"),
    [({"observation.images.nope": CAM}, "rename has keys \\['observation.images.nope'\\]"),
     ({WRIST: TOP}, "gives names \\['observation.images.top'\\] to more than one feature"),
     ({WRIST: "dataset_index"}, "names \\['dataset_index'\\] reserved for the loader"),
     ({WRIST: "x_is_pad"}, "names \\['x_is_pad'\\] reserved")],
)
def test_bad_renames_name_the_source(a, b, rename, words) -> None:
    with pytest.raises(ConfigError, match=rf"source 1 \({b}\): .*{words}"):
        build_loader([a, Source(b, rename=rename)], weights=[1, 1], batch_size=None)


def test_windows_are_checked_at_each_sources_own_fps(a, b) -> None:
    # 0.1 s is one frame at 10 fps but 1.5 frames at 15 fps: source b needs its own delta_timestamps
    with pytest.raises(ConfigError, match=rf"source 1 \({b}\): .*delta_timestamps"):
        build_loader([a, b], weights=[1, 1], batch_size=None, delta_timestamps=A_DELTAS)
    with pytest.raises(ConfigError, match=r"source 1 .*keys \['observation.images.cam'\] that this source does not have"):
        build_loader([a, b], weights=[1, 1], batch_size=None, delta_timestamps={CAM: [0.0]})


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [({"weights": [1.0]}, "1 values for 2 sources"), ({"weights": [1, 0]}, "weights\\[1\\] must be finite and > 0"),
     ({"stop": "never"}, "stop must be one of"), ({"episodes": [0]}, "give each Source\\(episodes=...\\)")],
)
def test_bad_mixture_settings_are_config_errors(a, b, kwargs, words) -> None:
    with pytest.raises(ConfigError, match=words):
        build_loader([a, b], batch_size=None, **kwargs)


def test_weights_for_one_dataset_and_an_empty_list_are_config_errors(a) -> None:
    with pytest.raises(ConfigError, match="weights= and stop= are for a mixture"):
        build_loader(a, weights=[1.0])
    with pytest.raises(ConfigError, match="the list of sources is empty"):
        build_loader([], batch_size=None)


def test_per_source_episodes_and_default_weights_concatenate(a, b) -> None:
    loader = build_loader([a, Source(b, episodes=[0, 2])], batch_size=None, stop="first_exhausted")
    pairs = _pairs(loader)
    # default weights: each source's frames (22 and 8 + 9), so first_exhausted takes every frame once
    assert sorted(pairs) == [(0, i) for i in range(22)] + [(1, i) for i in [*range(8), *range(13, 22)]]


def test_a_state_of_another_mixture_or_topology_is_refused(a, b) -> None:
    kwargs = {"batch_size": 4, "delta_timestamps": A_DELTAS, "num_workers": 0}
    loader = build_loader([a, aligned_b(b)], weights=[0.5, 0.5], **kwargs)
    next(iter(loader))
    state = loader.state_dict()
    with pytest.raises(StateError, match="another stream configuration"):
        build_loader([a, aligned_b(b)], weights=[0.6, 0.4], **kwargs).load_state_dict(state)
    with pytest.raises(StateError, match="another stream configuration"):
        build_loader([a, aligned_b(b)], weights=[0.5, 0.5], stop="all_exhausted", **kwargs).load_state_dict(state)
    with pytest.raises(StateError, match="a mixture.s state restores only with the world size and num_workers it was saved"):
        build_loader([a, aligned_b(b)], weights=[0.5, 0.5], **{**kwargs, "num_workers": 2}).load_state_dict(state)
    with pytest.raises(StateError, match="a different dataset"):
        build_loader([b, aligned_b(b)], weights=[0.5, 0.5], batch_size=None, delta_timestamps={"action": [0.0, 1 / 15]}).load_state_dict(state)
