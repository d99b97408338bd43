"""Reading one episode's rows: exactly one row group of one data file, only the columns asked for."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from streamnodes.errors import DatasetConsistencyError, DatasetFormatError, check_hint
from streamnodes.format.retry import RetryingRangeFile

if TYPE_CHECKING:
    from streamnodes.format.metadata import DatasetMeta, EpisodeRef


def column_to_numpy(column: pa.ChunkedArray | pa.Array, shape: Sequence[int] = ()) -> np.ndarray:
    """Arrow column -> numpy array of shape ``[rows, *shape]`` (fixed-size or equal-length lists stacked)."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_fixed_size_list(array.type) or pa.types.is_list(array.type) or pa.types.is_large_list(array.type):
        rows = len(array)
        values = array.flatten()
        while pa.types.is_fixed_size_list(values.type) or pa.types.is_list(values.type):
            values = values.flatten()
        flat = values.to_numpy(zero_copy_only=False)
        per_row = flat.size // rows if rows else 0
        inner = tuple(shape) if shape and int(np.prod(shape)) == per_row else (per_row,)
        return flat.reshape(rows, *inner)
    return array.to_numpy(zero_copy_only=False)


def open_parquet(meta: DatasetMeta, relative_path: str) -> pq.ParquetFile:
    """Open a data file of ``meta`` and parse its footer, with errors that name the file.

    Remote files are read through :class:`~streamnodes.format.retry.RetryingRangeFile`: every ranged
    request is retried on transient failures, and :class:`DownloadError` names the URL when the
    retries run out.
    """
    path = meta.url(relative_path)
    try:
        handle = RetryingRangeFile(meta.fs, path) if meta.is_remote else meta.fs.open(path, "rb")
    except FileNotFoundError:
        raise DatasetFormatError(
            f"{path}: data file missing (the episodes table points to it). Restore or re-download it. "
            f"{check_hint(meta.root)}",
            path=path,
        ) from None
    try:
        return pq.ParquetFile(handle)
    except (pa.ArrowInvalid, OSError) as e:
        handle.close()
        raise DatasetFormatError(
            f"{path}: not a readable parquet file (corrupt or truncated footer: {e}). Re-download or re-write it. "
            f"{check_hint(meta.root)}",
            path=path,
        ) from None


class ParquetFileCache:
    """A small LRU of open parquet files, so consecutive episodes of one file parse its footer once."""

    def __init__(self, meta: DatasetMeta, max_open: int = 4) -> None:
        self.meta = meta
        self.max_open = max_open
        self._open: OrderedDict[str, pq.ParquetFile] = OrderedDict()

    def get(self, relative_path: str) -> pq.ParquetFile:
        pf = self._open.get(relative_path)
        if pf is not None:
            self._open.move_to_end(relative_path)
            return pf
        pf = open_parquet(self.meta, relative_path)
        self._open[relative_path] = pf
        while len(self._open) > self.max_open:
            _, old = self._open.popitem(last=False)
            old.close(force=True)
        return pf

    def close(self) -> None:
        for pf in self._open.values():
            pf.close(force=True)
        self._open.clear()


def read_episode_columns(
    meta: DatasetMeta,
    ref: EpisodeRef,
    columns: Sequence[str],
    files: ParquetFileCache | None = None,
) -> dict[str, np.ndarray]:
    """Read ``columns`` of one episode (its row group only) as numpy arrays of ``ref.length`` rows.

    The ``index`` column is always read and checked against the episode's global index range, so a
    data file that drifted from the episodes table fails here with the file and episode named.
    """
    wanted = list(dict.fromkeys([*columns, "index"]))
    own = files is None
    files = files or ParquetFileCache(meta, max_open=1)
    path = meta.url(ref.data_path)
    try:
        pf = files.get(ref.data_path)
        if ref.row_group >= pf.metadata.num_row_groups:
            raise DatasetConsistencyError(
                f"{path}: episode {ref.episode_index} should be row group {ref.row_group}, but the file has "
                f"{pf.metadata.num_row_groups} row groups. Repair it with streamnodes.format.rewrite_row_groups "
                "or re-write the episodes table.",
                path=path, episode_index=ref.episode_index,
            )
        missing = [c for c in wanted if c not in pf.schema_arrow.names]
        if missing:
            raise DatasetFormatError(
                f"{path}: episode {ref.episode_index}: columns {missing} are not in the data file "
                f"(it has {pf.schema_arrow.names}). Ask only for features of this dataset.",
                path=path, episode_index=ref.episode_index,
            )
        table = pf.read_row_group(ref.row_group, columns=wanted)  # remote: ranges retried in RetryingRangeFile
    except (pa.ArrowInvalid, OSError) as e:
        raise DatasetFormatError(
            f"{path}: episode {ref.episode_index} (row group {ref.row_group}) cannot be read ({e}). "
            f"The file is damaged; re-download or re-write it. {check_hint(meta.root)}",
            path=path, episode_index=ref.episode_index,
        ) from None
    finally:
        if own:
            files.close()
    if table.num_rows != ref.length:
        raise DatasetConsistencyError(
            f"{path}: episode {ref.episode_index} has {table.num_rows} rows in row group {ref.row_group}, "
            f"but length {ref.length} in the episodes table. Re-write the episodes table or the data file.",
            path=path, episode_index=ref.episode_index,
        )
    out = {}
    for name in wanted:
        feature = meta.features.get(name)
        shape = feature.shape if feature is not None else ()
        out[name] = column_to_numpy(table.column(name), shape)
    index = out["index"]
    if index[0] != ref.dataset_from_index or index[-1] != ref.dataset_to_index - 1:
        raise DatasetConsistencyError(
            f"{path}: episode {ref.episode_index} (row group {ref.row_group}) holds global index "
            f"{index[0]}..{index[-1]}, but the episodes table says [{ref.dataset_from_index}, {ref.dataset_to_index}). "
            "Re-write the episodes table or repair the data file with rewrite_row_groups.",
            path=path, episode_index=ref.episode_index,
        )
    return out
