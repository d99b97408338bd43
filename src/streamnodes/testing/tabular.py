"""The data parquet files: one row group per episode, LeRobot's columns, schema and ``huggingface`` metadata."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from streamnodes.format.metadata import DATA_PATH
from streamnodes.testing.identity import expected_action, expected_state
from streamnodes.testing.layout import _assign_files, _Episode, _groups
from streamnodes.testing.stats import _tabular_stats_stacked

STATE_KEY = "observation.state"
ACTION_KEY = "action"
# The identity columns in the order LeRobot's writer lays them out (features and parquet schema);
# the same set as streamnodes.format's IDENTITY_COLUMNS, which the reader does not order.
IDENTITY_KEYS = ("timestamp", "frame_index", "episode_index", "index", "task_index")


def _episode_columns(episode: _Episode, fps: int, state_dim: int, action_dim: int) -> dict[str, np.ndarray]:
    """The data-file columns of one episode as numpy arrays (vectors as ``[N, D]``)."""
    return _rows_columns(
        np.array([episode.index]), np.array([episode.length]), np.array([episode.from_index]),
        np.array([episode.task_index]), fps, state_dim, action_dim,
    )


def _rows_columns(
    index: np.ndarray, length: np.ndarray, start: np.ndarray, task: np.ndarray, fps: int, state_dim: int, action_dim: int
) -> dict[str, np.ndarray]:
    """The data-file columns of consecutive episodes (arrays of their index, length, first global index
    and task), rows in episode order: the same values as :func:`_episode_columns` of each, concatenated."""
    length = np.asarray(length, dtype=np.int64)
    total = int(length.sum())
    first_row = np.concatenate([[0], np.cumsum(length)[:-1]]).astype(np.int64)
    frames = np.arange(total, dtype=np.int64) - np.repeat(first_row, length)
    episode = np.repeat(np.asarray(index, dtype=np.int64), length)
    columns: dict[str, np.ndarray] = {}
    if state_dim:
        columns[STATE_KEY] = expected_state(episode, frames, state_dim)
    if action_dim:
        columns[ACTION_KEY] = expected_action(episode, frames, action_dim)
    columns["timestamp"] = (frames / fps).astype(np.float32)
    columns["frame_index"] = frames
    columns["episode_index"] = episode
    columns["index"] = np.repeat(np.asarray(start, dtype=np.int64), length) + frames
    columns["task_index"] = np.repeat(np.asarray(task, dtype=np.int64), length)
    return columns


def _data_schema(state_dim: int, action_dim: int, fingerprint: str) -> pa.Schema:
    """The data-file schema, with the ``huggingface`` metadata LeRobot (via ``datasets``) writes."""
    fields: list[pa.Field] = []
    hf_features: dict[str, Any] = {}
    for key, dim in ((STATE_KEY, state_dim), (ACTION_KEY, action_dim)):
        if dim:
            fields.append(pa.field(key, pa.list_(pa.float32(), dim)))
            hf_features[key] = {
                "feature": {"dtype": "float32", "_type": "Value"},
                "length": dim,
                "_type": "List",
            }
    fields.append(pa.field("timestamp", pa.float32()))
    hf_features["timestamp"] = {"dtype": "float32", "_type": "Value"}
    for key in IDENTITY_KEYS[1:]:
        fields.append(pa.field(key, pa.int64()))
        hf_features[key] = {"dtype": "int64", "_type": "Value"}
    metadata = {"huggingface": json.dumps({"info": {"features": hf_features}, "fingerprint": fingerprint})}
    return pa.schema(fields, metadata=metadata)


def _to_arrow(columns: Mapping[str, np.ndarray], schema: pa.Schema) -> pa.Table:
    arrays = []
    for field in schema:
        values = columns[field.name]
        if pa.types.is_fixed_size_list(field.type):
            arrays.append(
                pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), field.type.list_size)
            )
        else:
            arrays.append(pa.array(values, type=field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


# Up to this many episodes each one's size alone is measured (the layout of every dataset written before
# datasets grew past it); beyond, once per distinct length (sizes barely depend on the values), and
# files are written without dictionary encoding, which costs more than half of the time of a row group
# of a few rows (still valid parquet; one row group per episode either way).
EXACT_SIZES_UP_TO = 16_384
_BLOCK_ROWS = 1 << 20  # rows generated at once for statistics


def _write_data(
    root: Path,
    episodes: Sequence[_Episode],
    fps: int,
    state_dim: int,
    action_dim: int,
    limit_mb: float,
    chunks_size: int,
) -> tuple[list[tuple[int, int]], dict[str, dict[str, np.ndarray]]]:
    """Write the data parquet files (one row group per episode); return each episode's (chunk, file) and
    the statistics of its tabular features as columns: ``stats[key][name]`` is ``[episodes, ...]``.

    Content and statistics are computed with array operations over many episodes at once, so a
    million short episodes take seconds per step rather than a Python pass per episode.
    """
    index = np.fromiter((e.index for e in episodes), dtype=np.int64, count=len(episodes))
    length = np.fromiter((e.length for e in episodes), dtype=np.int64, count=len(episodes))
    start = np.fromiter((e.from_index for e in episodes), dtype=np.int64, count=len(episodes))
    task = np.fromiter((e.task_index for e in episodes), dtype=np.int64, count=len(episodes))
    fingerprint = hashlib.sha256(
        json.dumps(np.stack([length, task], axis=1).tolist() + [fps, state_dim, action_dim]).encode()
    ).hexdigest()[:16]
    schema = _data_schema(state_dim, action_dim, fingerprint)

    def table_of(rows: slice) -> pa.Table:
        return _to_arrow(_rows_columns(index[rows], length[rows], start[rows], task[rows], fps, state_dim, action_dim), schema)

    # Sizes as written: each episode alone, and what two row groups in one file share (magic bytes,
    # schema and metadata in the footer), so the file sizes the roll-over sees are the real ones.
    first = table_of(slice(0, 1))
    options: dict[str, Any] = {}
    if len(episodes) <= EXACT_SIZES_UP_TO:
        sizes = [_parquet_size(schema, [table_of(slice(i, i + 1))]) for i in range(len(episodes))]
    else:
        options = {"use_dictionary": False}
        values, firsts = np.unique(length, return_index=True)
        by_length = {
            int(v): _parquet_size(schema, [table_of(slice(int(i), int(i) + 1))], **options)
            for v, i in zip(values, firsts, strict=True)
        }
        sizes = [by_length[v] for v in length.tolist()]
    shared = 2 * sizes[0] - _parquet_size(schema, [first, first], **options)
    assignment = _assign_files(sizes, limit_mb, chunks_size, shared_bytes=shared)
    for (chunk_index, file_index), members in _groups(assignment):
        path = root / DATA_PATH.format(chunk_index=chunk_index, file_index=file_index)
        path.parent.mkdir(parents=True, exist_ok=True)
        lo, hi = members[0], members[-1] + 1
        table = table_of(slice(lo, hi))
        with pq.ParquetWriter(path, schema, **options) as writer:
            offset = 0
            for run_length, count in _runs(length[lo:hi]):  # equal lengths: one call, one row group each
                rows = run_length * count
                writer.write_table(table.slice(offset, rows), row_group_size=run_length)
                offset += rows
    return assignment, _episode_stats(index, length, start, task, fps, state_dim, action_dim)


def _runs(values: np.ndarray) -> list[tuple[int, int]]:
    """Runs of equal consecutive values: ``[(value, count), ...]``."""
    if not len(values):
        return []
    bounds = np.flatnonzero(np.diff(values)) + 1
    starts = np.concatenate([[0], bounds])
    counts = np.diff(np.concatenate([starts, [len(values)]]))
    return list(zip(values[starts].tolist(), counts.tolist(), strict=True))


def _episode_stats(
    index: np.ndarray, length: np.ndarray, start: np.ndarray, task: np.ndarray, fps: int, state_dim: int, action_dim: int
) -> dict[str, dict[str, np.ndarray]]:
    """Per-episode statistics (:func:`~streamnodes.testing.stats._tabular_stats` of each episode), as
    columns ``[episodes, ...]``, computed for all episodes of one length at once."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for value in np.unique(length).tolist():
        members = np.flatnonzero(length == value)
        step = max(1, _BLOCK_ROWS // value)
        for lo in range(0, len(members), step):
            rows = members[lo:lo + step]
            columns = _rows_columns(index[rows], length[rows], start[rows], task[rows], fps, state_dim, action_dim)
            stats = _tabular_stats_stacked(columns, fps, len(rows), int(value))
            for key, named in stats.items():
                for name, array in named.items():
                    target = out.setdefault(key, {}).get(name)
                    if target is None:
                        target = out[key][name] = np.empty((len(length), *array.shape[1:]), dtype=array.dtype)
                    target[rows] = array
    return out


def _parquet_size(schema: pa.Schema, tables: Sequence[pa.Table], **options: Any) -> int:
    """Bytes of a parquet file holding ``tables``, one row group each, written like the data files."""
    sink = pa.BufferOutputStream()
    with pq.ParquetWriter(sink, schema, **options) as writer:
        for table in tables:
            writer.write_table(table, row_group_size=table.num_rows)
    return len(sink.getvalue())
