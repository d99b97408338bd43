"""Statistics shaped like LeRobot's ``compute_episode_stats`` / ``aggregate_stats`` output."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
_IMAGE_STATS_FRAMES = 16  # frames per episode sampled for image statistics


def _stats(values: np.ndarray, *, keep_int: bool) -> dict[str, np.ndarray]:
    """Per-column statistics of ``values [N, D]``; min/max keep the integer type when ``keep_int``."""
    return {key: value[0] for key, value in _stats_stacked(values[None], keep_int=keep_int).items()}


def _stats_stacked(values: np.ndarray, *, keep_int: bool) -> dict[str, np.ndarray]:
    """:func:`_stats` of each ``values[e]`` (``[E, N, D]``: E episodes of N rows), stacked: ``[E, ...]``."""
    as_float = values.astype(np.float64)
    stats: dict[str, np.ndarray] = {
        "min": values.min(axis=1) if keep_int else as_float.min(axis=1),
        "max": values.max(axis=1) if keep_int else as_float.max(axis=1),
        "mean": as_float.mean(axis=1),
        "std": as_float.std(axis=1),
        "count": np.full((len(values), 1), values.shape[1], dtype=np.int64),
    }
    for q, v in zip(QUANTILES, np.quantile(as_float, QUANTILES, axis=1), strict=True):
        stats[f"q{round(q * 100):02d}"] = v
    return stats


def _image_stats(frames: np.ndarray) -> dict[str, np.ndarray]:
    """Per-channel statistics of uint8 frames ``[N, 3, H, W]`` in [0, 1], shaped ``[3, 1, 1]``.

    Like LeRobot, large frames are subsampled (every k-th pixel so the longer side is about 150).
    """
    step = max(1, max(frames.shape[2:]) // 150)
    frames = frames[:, :, ::step, ::step]
    pixels = frames.transpose(1, 0, 2, 3).reshape(3, -1).T / 255.0  # [N*H*W, 3]
    stats = _stats(pixels, keep_int=False)
    stats["count"] = np.array([len(frames)], dtype=np.int64)
    return {k: (v if k == "count" else v.reshape(3, 1, 1)) for k, v in stats.items()}


def _to_json(stats: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, dict[str, Any]]:
    return {key: {name: value.tolist() for name, value in feature.items()} for key, feature in stats.items()}


def _tabular_stats(columns: Mapping[str, np.ndarray], fps: int) -> dict[str, dict[str, np.ndarray]]:
    stats: dict[str, dict[str, np.ndarray]] = {}
    for key, values in columns.items():
        if key == "timestamp":  # from the exact times, as LeRobot does, not the float32-rounded column
            values = columns["frame_index"] / fps
        stats[key] = _stats(values.reshape(len(values), -1), keep_int=values.dtype == np.int64)
    return stats


def _tabular_stats_stacked(
    columns: Mapping[str, np.ndarray], fps: int, episodes: int, length: int
) -> dict[str, dict[str, np.ndarray]]:
    """:func:`_tabular_stats` of ``episodes`` episodes of ``length`` rows each, whose rows are
    concatenated in ``columns``: every statistic stacked over the episodes (``[episodes, ...]``)."""
    stats: dict[str, dict[str, np.ndarray]] = {}
    for key, values in columns.items():
        if key == "timestamp":
            values = columns["frame_index"] / fps
        stacked = values.reshape(episodes, length, -1)
        stats[key] = _stats_stacked(stacked, keep_int=values.dtype == np.int64)
    return stats


def _stats_sample(length: int) -> np.ndarray:
    """Frame indices of an episode used for its image statistics: up to 16, evenly spread."""
    return np.unique(np.linspace(0, length - 1, _IMAGE_STATS_FRAMES).round().astype(np.int64))
