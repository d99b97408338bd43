"""Weighted mixtures of datasets: how many samples each source gives per consumer, and merged statistics.

Pure functions of metadata and configuration (no I/O), so every consumer computes the same numbers
and they are tested without data (``tests/test_mixing.py``); the mixture recipe is
:mod:`streamnodes.recipes.mixture`, the draw :class:`~streamnodes.nodes.weighted_mix.WeightedMix`.

Arithmetic is exact: weights become :class:`fractions.Fraction` (``0.7`` is ``7/10``, from its
shortest decimal form), so the counts do not depend on float rounding and are the same on every
machine.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any

import numpy as np

from streamnodes.errors import ConfigError

#: The epoch ends when the scarcest source (relative to its weight) has given all its frames.
FIRST_EXHAUSTED = "first_exhausted"
#: The epoch ends when every source has given every frame (the mix then follows the frame counts).
ALL_EXHAUSTED = "all_exhausted"
STOP_CRITERIA = (FIRST_EXHAUSTED, ALL_EXHAUSTED)

_QUANTILE = re.compile(r"^q(\d\d)$")


def exact_weights(weights: Sequence[float], count: int) -> list[Fraction]:
    """``weights`` as exact fractions summing to 1; a :class:`ConfigError` unless ``count`` finite values > 0."""
    if isinstance(weights, (str, bytes)) or not isinstance(weights, Sequence):
        raise ConfigError(f"weights must be a list of {count} numbers > 0 (one per source), got {weights!r}.")
    if len(weights) != count:
        raise ConfigError(f"weights has {len(weights)} values for {count} sources; give one weight per source.")
    out = []
    for i, w in enumerate(weights):
        if isinstance(w, bool) or not isinstance(w, (int, float, Fraction, np.integer, np.floating)):
            raise ConfigError(f"weights[{i}] must be a number > 0, got {w!r}.")
        if not (math.isfinite(float(w)) and float(w) > 0):
            raise ConfigError(f"weights[{i}] must be finite and > 0 (drop a source instead of weighting it 0), got {w!r}.")
        out.append(w if isinstance(w, Fraction) else Fraction(int(w)) if isinstance(w, (int, np.integer)) else Fraction(repr(float(w))))
    total = sum(out)
    return [w / total for w in out]


def apportion(total: int, weights: Sequence[Fraction]) -> list[int]:
    """Split ``total`` into integers proportional to ``weights`` (summing to 1) by largest remainder.

    Each share is ``floor(total * w_i)`` or one more; the units left go to the largest fractional
    parts (ties: the lower index). The result sums to ``total``.
    """
    exact = [total * w for w in weights]
    counts = [math.floor(x) for x in exact]
    left = total - sum(counts)
    by_remainder = sorted(range(len(weights)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in by_remainder[:left]:
        counts[i] += 1
    return counts


def mix_counts(frames: Sequence[int], weights: Sequence[Fraction], stop: str = FIRST_EXHAUSTED) -> list[int]:
    """Samples each source contributes to one consumer's epoch, given the frames it has there.

    ``stop="first_exhausted"``: the largest total ``N`` whose :func:`apportion` by ``weights`` fits
    every source (``counts[i] <= frames[i]``); the source scarcest relative to its weight sets the
    epoch's length, and the shares are the weights up to rounding (``|counts[i] / N - w_i| < 1 / N``).
    ``stop="all_exhausted"``: every frame once (``counts == frames``).
    """
    if stop not in STOP_CRITERIA:
        raise ConfigError(f"stop must be one of {list(STOP_CRITERIA)}, got {stop!r}.")
    frames = [int(f) for f in frames]
    if stop == ALL_EXHAUSTED:
        return frames
    feasible = min(math.floor(f / w) for f, w in zip(frames, weights, strict=True))  # always fits (see below)
    upper = min(math.ceil((f + 1) / w) - 1 for f, w in zip(frames, weights, strict=True))  # floor(N w_i) <= f_i
    for total in range(min(upper, sum(frames)), feasible, -1):  # largest remainder is not monotone in N
        counts = apportion(total, weights)
        if all(c <= f for c, f in zip(counts, frames, strict=True)):
            return counts
    # N = min floor(f_i / w_i): N w_i <= f_i, so ceil(N w_i) <= f_i and every share fits
    return apportion(feasible, weights)


# ---- statistics ---------------------------------------------------------------------------------------


def merge_stats(per_source: Sequence[Mapping[str, Mapping[str, Any]] | None]) -> dict[str, dict[str, Any]]:
    """The statistics of the mixture of several datasets' ``meta/stats.json``, weighted by ``count``.

    Per feature, over the sources that have it with the same shapes: ``count`` summed; ``mean`` the
    count-weighted mean; ``std`` from pooled second moments (``sum n_i (std_i^2 + (mean_i - mean)^2) / N``,
    the population std of the concatenated values, exactly); ``min`` / ``max`` elementwise. These are
    what the concatenation of the sources' values would give (up to float rounding).

    Quantiles (``q01`` ... ``q99``, those every source has) cannot be exact from per-source summaries:
    each is estimated by inverting the count-weighted mixture of the sources' CDFs, each CDF taken as
    piecewise linear through ``(min, 0)``, the source's quantiles and ``(max, 1)``, and clipped to the
    bound that always holds for a count-weighted mixture: between the smallest and the largest of the
    sources' values of that quantile. A source without stats, and features whose shapes differ
    between sources, are left out (a feature of one source only keeps that source's values).
    """
    sources = [s for s in per_source if s]
    merged: dict[str, dict[str, Any]] = {}
    for key in dict.fromkeys(k for s in sources for k in s):
        having = [s[key] for s in sources if key in s and _mergeable(s[key])]
        if not having or len({tuple(np.shape(h["mean"])) for h in having}) != 1:
            continue
        merged[key] = _merge_feature(having)
    return merged


def _mergeable(stats: Mapping[str, Any]) -> bool:
    return all(name in stats for name in ("mean", "std", "min", "max", "count"))


def _merge_feature(having: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    counts = np.array([float(np.sum(h["count"])) for h in having])
    total = counts.sum()
    weights = counts / total if total > 0 else np.full(len(having), 1 / len(having))
    shape = (len(having), *np.shape(having[0]["mean"]))
    w = weights.reshape((-1,) + (1,) * (len(shape) - 1))
    means = np.asarray([h["mean"] for h in having], dtype=np.float64).reshape(shape)
    stds = np.asarray([h["std"] for h in having], dtype=np.float64).reshape(shape)
    mean = (w * means).sum(axis=0)
    var = (w * (stds**2 + (means - mean) ** 2)).sum(axis=0)
    mins = [np.asarray(h["min"]) for h in having]
    maxs = [np.asarray(h["max"]) for h in having]
    out: dict[str, Any] = {
        "min": np.minimum.reduce(mins).tolist(),
        "max": np.maximum.reduce(maxs).tolist(),
        "mean": mean.tolist(),
        "std": np.sqrt(np.maximum(var, 0.0)).tolist(),
        "count": [int(total)],
    }
    names = [n for n in having[0] if _QUANTILE.match(n) and all(n in h for h in having)]
    if names:
        levels = [int(_QUANTILE.match(n).group(1)) / 100 for n in names]  # type: ignore[union-attr]
        order = np.argsort(levels, kind="stable")
        names = [names[i] for i in order]
        levels = [levels[i] for i in order]
        values = {n: np.asarray([h[n] for h in having], dtype=np.float64).reshape(shape) for n in names}
        lows = np.asarray([np.asarray(m, dtype=np.float64) for m in mins]).reshape(shape)
        highs = np.asarray([np.asarray(m, dtype=np.float64) for m in maxs]).reshape(shape)
        estimates = _mixture_quantiles(weights, lows, highs, [values[n] for n in names], levels)
        for name, estimate in zip(names, estimates, strict=True):
            out[name] = estimate.tolist()
    return out


def _mixture_quantiles(
    weights: np.ndarray, lows: np.ndarray, highs: np.ndarray, quantiles: Sequence[np.ndarray], levels: Sequence[float]
) -> list[np.ndarray]:
    """Per element, invert ``F(x) = sum_i w_i F_i(x)`` at each level (see :func:`merge_stats`)."""
    n = lows.shape[0]
    flat_q = [q.reshape(n, -1) for q in quantiles]
    flat_lo, flat_hi = lows.reshape(n, -1), highs.reshape(n, -1)
    probs = np.array([0.0, *levels, 1.0])
    results = [np.empty(flat_lo.shape[1]) for _ in levels]
    for j in range(flat_lo.shape[1]):
        knots = [np.maximum.accumulate(np.array([flat_lo[i, j], *(q[i, j] for q in flat_q), flat_hi[i, j]])) for i in range(n)]
        grid = np.unique(np.concatenate(knots))
        cdf = sum(w * _cdf(grid, x, probs) for w, x in zip(weights, knots, strict=True))
        for k, level in enumerate(levels):
            at = np.array([q[i, j] for i, q in ((i, flat_q[k]) for i in range(n))])
            estimate = float(np.interp(level, cdf, grid)) if len(grid) > 1 else float(grid[0])
            results[k][j] = min(max(estimate, at.min()), at.max())
    return [r.reshape(quantiles[0].shape[1:]) for r in results]


def _cdf(x: np.ndarray, knots: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """A source's CDF, piecewise linear through ``(knots, probs)`` (a step where knots repeat)."""
    return np.interp(x, knots, probs, left=0.0, right=1.0)
