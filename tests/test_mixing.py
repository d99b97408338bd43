"""The mixture arithmetic without I/O: exact weights, apportionment, per-consumer counts, merged statistics."""

from __future__ import annotations

import itertools
from fractions import Fraction

import numpy as np
import pytest

from streamnodes.errors import ConfigError
from streamnodes.mixing import (
    ALL_EXHAUSTED,
    FIRST_EXHAUSTED,
    apportion,
    exact_weights,
    merge_stats,
    mix_counts,
)

QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)


def test_weights_are_exact_fractions_of_their_decimal_form() -> None:
    assert exact_weights([0.7, 0.3], 2) == [Fraction(7, 10), Fraction(3, 10)]
    assert exact_weights([2, 1, 1], 3) == [Fraction(1, 2), Fraction(1, 4), Fraction(1, 4)]
    assert sum(exact_weights([0.1, 0.2, 0.3], 3)) == 1


@pytest.mark.parametrize(
    ("weights", "words"),
    [([0.5], "1 values for 2 sources"), ([1.0, 0.0], "weights[1] must be finite and > 0"),
     ([1.0, -2], "weights[1]"), ([float("nan"), 1.0], "weights[0]"), ([True, 1.0], "weights[0] must be a number"),
     (["0.5", 0.5], "weights[0] must be a number"), ("ab", "list of 2 numbers")],
)
def test_bad_weights_are_config_errors(weights, words) -> None:
    with pytest.raises(ConfigError, match=words.replace("[", r"\[").replace("]", r"\]")):
        exact_weights(weights, 2)


def test_apportion_sums_to_the_total_and_stays_within_one_of_the_exact_share() -> None:
    rng = np.random.default_rng(0)
    for _ in range(300):
        raw = [int(x) for x in rng.integers(1, 20, size=int(rng.integers(1, 5)))]
        weights = exact_weights(raw, len(raw))
        total = int(rng.integers(0, 500))
        counts = apportion(total, weights)
        assert sum(counts) == total
        assert all(abs(c - total * w) < 1 for c, w in zip(counts, weights, strict=True))


def test_apportion_ties_go_to_the_lower_index() -> None:
    assert apportion(1, exact_weights([1, 1], 2)) == [1, 0]
    assert apportion(5, exact_weights([1, 1], 2)) == [3, 2]


def _brute_force_first_exhausted(frames, weights):
    best = None
    for total in range(sum(frames) + 1):
        counts = apportion(total, weights)
        if all(c <= f for c, f in zip(counts, frames, strict=True)):
            best = counts
    return best


def test_first_exhausted_is_the_largest_total_that_fits_every_source() -> None:
    rng = np.random.default_rng(1)
    for _ in range(150):
        n = int(rng.integers(1, 4))
        frames = [int(x) for x in rng.integers(0, 40, size=n)]
        weights = exact_weights([float(x) for x in rng.choice([0.05, 0.1, 0.25, 0.3, 0.7, 1.0, 3.0], size=n)], n)
        counts = mix_counts(frames, weights, FIRST_EXHAUSTED)
        assert counts == _brute_force_first_exhausted(frames, weights), (frames, weights)
        total = sum(counts)
        if total:
            assert all(abs(Fraction(c, total) - w) < Fraction(1, total) for c, w in zip(counts, weights, strict=True))


def test_first_exhausted_worked_example() -> None:
    # 26 and 30 frames at 0.7 / 0.3: the first source is the scarce one, 26 / 0.7 = 37.1 -> 37 samples, 26 + 11
    assert mix_counts([26, 30], exact_weights([0.7, 0.3], 2)) == [26, 11]
    assert mix_counts([0, 30], exact_weights([0.5, 0.5], 2)) == [0, 0]  # a consumer without one source yields nothing


def test_all_exhausted_takes_every_frame_and_bad_stop_is_an_error() -> None:
    assert mix_counts([26, 30, 0], exact_weights([0.7, 0.2, 0.1], 3), ALL_EXHAUSTED) == [26, 30, 0]
    with pytest.raises(ConfigError, match="stop must be one of"):
        mix_counts([1, 2], exact_weights([1, 1], 2), "never")


# ---- statistics ---------------------------------------------------------------------------------------


def _stats(values: np.ndarray) -> dict:
    """LeRobot-shaped statistics of ``values [N, D]`` (as streamnodes.testing writes them: exact, numpy)."""
    out = {"min": values.min(0).tolist(), "max": values.max(0).tolist(), "mean": values.mean(0).tolist(),
           "std": values.std(0).tolist(), "count": [len(values)]}
    for q, v in zip(QUANTILES, np.quantile(values, QUANTILES, axis=0), strict=True):
        out[f"q{round(q * 100):02d}"] = v.tolist()
    return out


def test_merged_moments_equal_numpy_on_the_concatenated_values() -> None:
    rng = np.random.default_rng(2)
    parts = [rng.normal(0, 1, (50, 3)), rng.normal(5, 3, (200, 3)), rng.uniform(-10, 1, (7, 3))]
    merged = merge_stats([{"x": _stats(p)} for p in parts])["x"]
    every = np.concatenate(parts)
    np.testing.assert_allclose(merged["mean"], every.mean(0), rtol=1e-12)
    np.testing.assert_allclose(merged["std"], every.std(0), rtol=1e-12)
    assert merged["min"] == every.min(0).tolist() and merged["max"] == every.max(0).tolist()
    assert merged["count"] == [257]


def test_merged_quantiles_stay_within_the_per_source_bound_and_near_the_truth() -> None:
    rng = np.random.default_rng(3)
    parts = [rng.normal(0, 1, (400, 2)), rng.normal(3, 0.5, (1200, 2))]
    per_source = [_stats(p) for p in parts]
    merged = merge_stats([{"x": s} for s in per_source])["x"]
    every = np.concatenate(parts)
    for q in QUANTILES:
        name = f"q{round(q * 100):02d}"
        values = np.array([s[name] for s in per_source])
        got = np.array(merged[name])
        assert np.all(values.min(0) <= got) and np.all(got <= values.max(0)), name
        truth = np.quantile(every, q, axis=0)
        # the documented bound, and in practice much closer than its width (piecewise-linear CDFs)
        assert np.all(np.abs(got - truth) <= 0.25 * (values.max(0) - values.min(0)) + 0.05), (name, got, truth)


def test_identical_sources_merge_to_themselves_including_quantiles() -> None:
    stats = _stats(np.random.default_rng(4).normal(0, 1, (100, 2)))
    merged = merge_stats([{"x": stats}, {"x": stats}])["x"]
    for name in ("min", "max", "mean", "std", *(f"q{round(q * 100):02d}" for q in QUANTILES)):
        np.testing.assert_allclose(merged[name], stats[name], rtol=1e-12, atol=1e-12, err_msg=name)
    assert merged["count"] == [200]


def test_image_shaped_stats_keep_their_shape_and_features_of_other_shapes_are_left_out() -> None:
    image = {k: np.full((3, 1, 1), v).tolist() for k, v in (("min", 0.0), ("max", 1.0), ("mean", 0.5), ("std", 0.1))}
    image["count"] = [10]
    other = {**image, "mean": np.full((3, 1, 1), 0.7).tolist(), "count": [30]}
    state6 = _stats(np.zeros((4, 6)))
    state7 = _stats(np.zeros((4, 7)))
    merged = merge_stats([{"cam": image, "state": state6, "only_a": state6}, None, {"cam": other, "state": state7}])
    assert np.shape(merged["cam"]["mean"]) == (3, 1, 1)
    np.testing.assert_allclose(merged["cam"]["mean"], np.full((3, 1, 1), 0.65))
    assert "state" not in merged  # [6] and [7]: no merged view
    assert merged["only_a"]["mean"] == state6["mean"]  # one source has it: its own values


def test_combinations_of_three_sources_are_order_independent_for_moments() -> None:
    rng = np.random.default_rng(5)
    parts = [{"x": _stats(rng.normal(i, 1 + i, (20 + 10 * i, 1)))} for i in range(3)]
    results = [merge_stats(list(p))["x"] for p in itertools.permutations(parts)]
    for r in results[1:]:
        np.testing.assert_allclose(r["mean"], results[0]["mean"], rtol=1e-12)
        np.testing.assert_allclose(r["std"], results[0]["std"], rtol=1e-12)
