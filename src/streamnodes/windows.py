"""``delta_timestamps`` -> integer offsets, and the clamped windows LeRobot's map-style reader returns.

LeRobot's window arithmetic: ``d = round(dt * fps)``; ``q = clamp(i + d, from, to - 1)``; ``is_pad = not from <= i + d < to``.
Here positions are episode-local (0..length-1), the same arithmetic shifted by ``from``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np

from streamnodes.errors import ConfigError


def delta_indices(
    delta_timestamps: Mapping[str, Sequence[float]] | None,
    fps: float,
    *,
    tolerance_s: float = 1e-4,
    features: Collection[str] | None = None,
) -> dict[str, np.ndarray]:
    """Validate ``delta_timestamps`` and turn each key's deltas into int64 frame offsets.

    Raises :class:`ConfigError` for keys not among ``features`` and for deltas farther than
    ``tolerance_s`` from the frame grid of ``fps`` (LeRobot's check).
    """
    if not delta_timestamps:
        return {}
    if features is not None:
        unknown = [k for k in delta_timestamps if k not in features]
        if unknown:
            raise ConfigError(
                f"delta_timestamps has keys {unknown} that are not features of the dataset "
                f"(features: {sorted(features)}). Use feature names from meta/info.json."
            )
    out = {}
    for key, deltas in delta_timestamps.items():
        dts = np.asarray(list(deltas), dtype=np.float64)
        if dts.ndim != 1 or dts.size == 0:
            raise ConfigError(f"delta_timestamps[{key!r}] must be a non-empty list of seconds, got {deltas!r}.")
        steps = dts * fps
        off_grid = np.abs(steps - np.round(steps)) / fps > tolerance_s
        if off_grid.any():
            bad = dts[off_grid].tolist()
            raise ConfigError(
                f"delta_timestamps[{key!r}] has {bad}, not multiples of 1/fps = {1 / fps:.6g} s within "
                f"tolerance_s={tolerance_s}. Use multiples of 1/fps (the dataset is {fps} fps)."
            )
        out[key] = np.round(steps).astype(np.int64)
    return out


def window(position: int, length: int, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows to read for a window around ``position`` in an episode of ``length`` rows, and pad flags.

    Returns ``(rows, is_pad)``: ``rows = clip(position + offsets, 0, length - 1)``,
    ``is_pad = position + offsets`` outside ``[0, length)``.
    """
    target = position + offsets
    if target.min() >= 0 and target.max() < length:  # inside the episode (most windows): no clamp
        return target, np.zeros(target.shape, dtype=bool)
    rows = np.clip(target, 0, length - 1)
    is_pad = (target < 0) | (target >= length)
    return rows, is_pad


def cut_windows(
    columns: Mapping[str, np.ndarray],
    position: int,
    length: int,
    offsets: Mapping[str, np.ndarray],
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """One sample's tabular values at ``position`` of an episode of ``length`` rows: ``(values, is_pad)``.

    ``values[key]`` is ``columns[key][position]`` for a key without offsets, and for a key with
    ``offsets[key]`` the rows of :func:`window` stacked ``[T, *shape]``; ``is_pad[key]`` flags, for
    every column with offsets, the window positions outside the episode. Keys of ``offsets`` that are
    not columns are ignored; to cut a camera's frame timestamps, pass the ``timestamp`` column under
    the camera's key. Each distinct offsets array is clamped once per call; every key gets its own
    ``is_pad`` array and its own values, so no two keys share memory. Pure: no I/O, no state.
    """
    cut: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}
    values: dict[str, Any] = {}
    is_pad: dict[str, np.ndarray] = {}
    for key, column in columns.items():
        key_offsets = offsets.get(key)
        if key_offsets is None:
            values[key] = column[position]
            continue
        token = key_offsets.tobytes()
        found = cut.get(token)
        if found is None:
            found = cut[token] = window(position, length, key_offsets)
            is_pad[key] = found[1]
        else:
            is_pad[key] = found[1].copy()
        values[key] = column.take(found[0], axis=0)  # == column[rows], a new array
    return values, is_pad
