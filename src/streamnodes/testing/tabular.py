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
from streamnodes.testing.stats import _tabular_stats

STATE_KEY = "observation.state"
ACTION_KEY = "action"
# The identity columns in the order LeRobot's writer lays them out (features and parquet schema);
# the same set as streamnodes.format's IDENTITY_COLUMNS, which the reader does not order.
IDENTITY_KEYS = ("timestamp", "frame_index", "episode_index", "index", "task_index")


def _episode_columns(episode: _Episode, fps: int, state_dim: int, action_dim: int) -> dict[str, np.ndarray]:
    """The data-file columns of one episode as numpy arrays (vectors as ``[N, D]``)."""
    frames = np.arange(episode.length, dtype=np.int64)
    columns: dict[str, np.ndarray] = {}
    if state_dim:
        columns[STATE_KEY] = expected_state(episode.index, frames, state_dim)
    if action_dim:
        columns[ACTION_KEY] = expected_action(episode.index, frames, action_dim)
    columns["timestamp"] = (frames / fps).astype(np.float32)
    columns["frame_index"] = frames
    columns["episode_index"] = np.full(episode.length, episode.index, dtype=np.int64)
    columns["index"] = episode.from_index + frames
    columns["task_index"] = np.full(episode.length, episode.task_index, dtype=np.int64)
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


def _write_data(
    root: Path,
    episodes: Sequence[_Episode],
    fps: int,
    state_dim: int,
    action_dim: int,
    limit_mb: float,
    chunks_size: int,
) -> tuple[list[tuple[int, int]], list[dict[str, dict[str, np.ndarray]]]]:
    """Write the data parquet files (one row group per episode); return each episode's (chunk, file) and
    the statistics of its tabular features."""
    fingerprint = hashlib.sha256(
        json.dumps([[e.length, e.task_index] for e in episodes] + [fps, state_dim, action_dim]).encode()
    ).hexdigest()[:16]
    schema = _data_schema(state_dim, action_dim, fingerprint)
    tables: list[pa.Table] = []
    stats: list[dict[str, dict[str, np.ndarray]]] = []
    for episode in episodes:
        columns = _episode_columns(episode, fps, state_dim, action_dim)
        tables.append(_to_arrow(columns, schema))
        stats.append(_tabular_stats(columns, fps))

    # Sizes as written: each episode alone, and what two row groups in one file share (magic bytes,
    # schema and metadata in the footer), so the file sizes the roll-over sees are the real ones.
    sizes = [_parquet_size(schema, [table]) for table in tables]
    shared = 2 * sizes[0] - _parquet_size(schema, [tables[0], tables[0]])
    assignment = _assign_files(sizes, limit_mb, chunks_size, shared_bytes=shared)
    for (chunk_index, file_index), members in _groups(assignment):
        path = root / DATA_PATH.format(chunk_index=chunk_index, file_index=file_index)
        path.parent.mkdir(parents=True, exist_ok=True)
        with pq.ParquetWriter(path, schema) as writer:
            for i in members:
                writer.write_table(tables[i], row_group_size=tables[i].num_rows)  # one row group each
    return assignment, stats


def _parquet_size(schema: pa.Schema, tables: Sequence[pa.Table]) -> int:
    """Bytes of a parquet file holding ``tables``, one row group each, written like the data files."""
    sink = pa.BufferOutputStream()
    with pq.ParquetWriter(sink, schema) as writer:
        for table in tables:
            writer.write_table(table, row_group_size=table.num_rows)
    return len(sink.getvalue())
