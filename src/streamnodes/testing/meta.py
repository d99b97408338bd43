"""The ``meta/`` files besides ``info.json``: info features, episodes table, tasks, global statistics."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from streamnodes.format.metadata import EPISODES_PATH, TASKS_PATH
from streamnodes.testing.identity import _identity_images
from streamnodes.testing.layout import _Camera, _Episode
from streamnodes.testing.stats import _image_stats, _stats_sample, _tabular_stats
from streamnodes.testing.tabular import ACTION_KEY, IDENTITY_KEYS, STATE_KEY, _rows_columns
from streamnodes.testing.video import _PIXEL_FORMAT


def _features(
    cameras: Sequence[_Camera], fps: int, state_dim: int, action_dim: int, codec: str
) -> dict[str, Any]:
    """``info.json`` features, in LeRobot's order: state, action, cameras, identity columns."""
    features: dict[str, Any] = {}
    for key, dim in ((STATE_KEY, state_dim), (ACTION_KEY, action_dim)):
        if dim:
            features[key] = {"dtype": "float32", "shape": [dim], "names": [f"joint_{d}" for d in range(dim)]}
    for camera in cameras:
        features[camera.key] = {
            "dtype": "video",
            "shape": [camera.height, camera.width, 3],
            "names": ["height", "width", "channels"],
            "info": {
                "video.height": camera.height,
                "video.width": camera.width,
                "video.codec": codec,
                "video.pix_fmt": _PIXEL_FORMAT,
                "video.is_depth_map": False,
                "video.fps": fps,
                "video.channels": 3,
                "has_audio": False,
            },
        }
    features["timestamp"] = {"dtype": "float32", "shape": [1], "names": None}
    for key in IDENTITY_KEYS[1:]:
        features[key] = {"dtype": "int64", "shape": [1], "names": None}
    return features


def _list_array(values: np.ndarray, kind: pa.DataType) -> pa.Array:
    """``values`` ``[E, d1, d2, ...]`` as an Arrow array of E nested lists of type ``kind``, built from the
    flat buffer (no Python list per episode)."""
    array: pa.Array = pa.array(np.ascontiguousarray(values).reshape(-1), type=kind_leaf(kind))
    for size in reversed(values.shape[1:]):
        offsets = pa.array(np.arange(0, len(array) + 1, size, dtype=np.int32))
        array = pa.ListArray.from_arrays(offsets, array)
    return array.cast(kind)


def kind_leaf(kind: pa.DataType) -> pa.DataType:
    while pa.types.is_list(kind):
        kind = kind.value_type
    return kind


def _write_episodes_table(
    root: Path,
    columns: dict[str, Any],
    ep_stats: Mapping[str, Mapping[str, np.ndarray]],
    features: Mapping[str, Any],
    tasks: Sequence[str] = (),
) -> None:
    """``meta/episodes/chunk-000/file-000.parquet``: one row per episode, LeRobot's columns and types.

    ``columns`` holds numpy arrays (or lists) per column, ``columns["tasks"]`` the task index of each
    episode; ``ep_stats[key][name]`` is the statistic of every episode, ``[episodes, ...]``.
    """
    fields = [
        pa.field("episode_index", pa.int64()),
        pa.field("tasks", pa.list_(pa.string())),
        pa.field("length", pa.int64()),
        pa.field("data/chunk_index", pa.int64()),
        pa.field("data/file_index", pa.int64()),
        pa.field("dataset_from_index", pa.int64()),
        pa.field("dataset_to_index", pa.int64()),
    ]
    n = len(columns["episode_index"])
    arrays: dict[str, Any] = {}
    task_index = np.asarray(columns["tasks"], dtype=np.int64)
    arrays["tasks"] = pa.ListArray.from_arrays(
        pa.array(np.arange(n + 1, dtype=np.int32)), pa.array(list(tasks), type=pa.string()).take(pa.array(task_index))
    )
    for name in columns:
        if name.startswith("videos/"):
            kind = pa.float64() if name.endswith("_timestamp") else pa.int64()
            fields.append(pa.field(name, kind))
    for key, feature in features.items():
        is_int = feature["dtype"] == "int64"
        is_image = feature["dtype"] in ("video", "image")
        value_type: pa.DataType = (
            pa.list_(pa.list_(pa.list_(pa.float64()))) if is_image else pa.list_(pa.float64())
        )
        for name, values in ep_stats[key].items():
            if name == "count" or name in ("min", "max") and is_int:
                kind = pa.list_(pa.int64())
            else:
                kind = value_type
            column = f"stats/{key}/{name}"
            fields.append(pa.field(column, kind))
            arrays[column] = _list_array(np.asarray(values), kind)
    fields += [
        pa.field("meta/episodes/chunk_index", pa.int64()),
        pa.field("meta/episodes/file_index", pa.int64()),
    ]
    columns["meta/episodes/chunk_index"] = np.zeros(n, dtype=np.int64)
    columns["meta/episodes/file_index"] = np.zeros(n, dtype=np.int64)
    schema = pa.schema(fields)
    for f in schema:
        if f.name not in arrays:
            arrays[f.name] = pa.array(np.asarray(columns[f.name]), type=f.type)
    table = pa.Table.from_arrays([arrays[f.name] for f in schema], schema=schema)
    path = root / EPISODES_PATH.format(chunk_index=0, file_index=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def _write_tasks(root: Path, tasks: Sequence[str]) -> None:
    """``meta/tasks.parquet``: a pandas frame indexed by task string with a ``task_index`` column."""
    import pandas as pd

    frame = pd.DataFrame({"task_index": np.arange(len(tasks), dtype=np.int64)}, index=pd.Index(list(tasks)))
    frame.to_parquet(root / TASKS_PATH)


def _global_stats(
    episodes: Sequence[_Episode],
    cameras: Sequence[_Camera],
    image_stats: Mapping[str, Sequence[Mapping[str, np.ndarray]]],
    feature_order: Sequence[str],
    fps: int,
    state_dim: int,
    action_dim: int,
) -> dict[str, dict[str, np.ndarray]]:
    """``meta/stats.json``: exact statistics over all frames for tabular features; for images, over the
    frames sampled for the per-episode statistics (counts add up)."""
    def column(name: str) -> np.ndarray:
        return np.fromiter((getattr(e, name) for e in episodes), dtype=np.int64, count=len(episodes))

    columns = _rows_columns(column("index"), column("length"), column("from_index"), column("task_index"),
                            fps, state_dim, action_dim)
    stats = _tabular_stats(columns, fps)
    for camera in cameras:
        sampled = [
            _identity_images(e.index, _stats_sample(e.length), camera.height, camera.width, camera.index)
            for e in episodes
        ]
        stats[camera.key] = _image_stats(np.concatenate(sampled))
        stats[camera.key]["count"] = np.array(
            [sum(int(s["count"][0]) for s in image_stats[camera.key])], dtype=np.int64
        )
    return {key: stats[key] for key in feature_order}
