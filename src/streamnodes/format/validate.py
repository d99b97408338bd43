"""Checks of data files against the episodes table, and the repair for files with the wrong row groups.

LeRobot's writer stores one parquet row group per episode, which is what lets a reader fetch one
episode with one ranged read. Bulk rewrites (``df.to_parquet``, ``datasets.push_to_hub``) merge row
groups; :func:`rewrite_row_groups` restores the layout.
"""

from __future__ import annotations

import logging
import os
import posixpath
import tempfile
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from streamnodes.errors import DatasetConsistencyError, DatasetFormatError, check_hint
from streamnodes.format.fs import fs_is_local
from streamnodes.format.reader import open_parquet

if TYPE_CHECKING:
    from streamnodes.format.metadata import DatasetMeta, EpisodeRef  # noqa: F401

log = logging.getLogger(__name__)


def check_data_file(meta: DatasetMeta, relative_path: str, episodes: list[EpisodeRef]) -> None:
    """Check one data file's footer against the episodes it should hold (sorted by row group)."""
    pf = open_parquet(meta, relative_path)
    path = meta.url(relative_path)
    try:
        names = set(pf.schema_arrow.names)
        missing = [k for k in meta.data_keys if k not in names]
        if missing:
            raise DatasetFormatError(
                f"{path}: columns {missing} are in meta/info.json features but not in this data file "
                f"(it has {sorted(names)}). Re-write the data file or remove those features from info.json.",
                path=path,
            )
        md = pf.metadata
        ep_desc = [(ep.episode_index, ep.length) for ep in episodes]
        groups = [md.row_group(i).num_rows for i in range(md.num_row_groups)]
        expected_rows = sum(ep.length for ep in episodes)
        if md.num_rows != expected_rows:
            raise DatasetConsistencyError(
                f"{path}: holds {md.num_rows} rows in {md.num_row_groups} row groups {groups}, but the episodes "
                f"table puts {len(episodes)} episodes (index, length) {ep_desc} with {expected_rows} rows in it: "
                "rows are missing or extra. Restore or re-download the data file (or re-write the episodes table "
                f"if episodes were removed on purpose). {check_hint(meta.root)}",
                path=path,
            )
        if md.num_row_groups != len(episodes):
            raise DatasetConsistencyError(
                f"{path}: {md.num_row_groups} row group(s) with {groups} rows, but the episodes table puts "
                f"{len(episodes)} episodes (index, length) {ep_desc} in it; streamnodes needs one row group "
                f"per episode (LeRobot's writer guarantees it; bulk rewrites break it). Repair the file with "
                f"streamnodes.format.rewrite_row_groups({path!r}).",
                path=path,
            )
        for i, ep in enumerate(episodes):
            if groups[i] != ep.length:
                raise DatasetConsistencyError(
                    f"{path}: episode {ep.episode_index} is row group {i} with {groups[i]} rows, but has length "
                    f"{ep.length} in the episodes table. The table disagrees with the data: re-write the "
                    "episodes table (meta/episodes/) from the data files.",
                    path=path, episode_index=ep.episode_index,
                )
        index_col = pf.schema_arrow.get_field_index("index")
        for i, ep in enumerate(episodes):
            stats = md.row_group(i).column(index_col).statistics if index_col >= 0 else None
            expected = (ep.dataset_from_index, ep.dataset_to_index - 1)
            if stats is not None and stats.has_min_max and (int(stats.min), int(stats.max)) != expected:
                raise DatasetConsistencyError(
                    f"{path}: row group {i} holds global index {stats.min}..{stats.max}, but episode "
                    f"{ep.episode_index} is [{ep.dataset_from_index}, {ep.dataset_to_index}) in the episodes "
                    f"table. Re-write the episodes table or repair the file with rewrite_row_groups.",
                    path=path, episode_index=ep.episode_index,
                )
    finally:
        pf.close(force=True)


def check_data_files(meta: DatasetMeta, *, max_threads: int = 8) -> None:
    """Check every data file of ``meta`` (footers only; in parallel for remote datasets)."""
    by_file: dict[str, list[EpisodeRef]] = defaultdict(list)
    for ep in meta.episodes:
        by_file[ep.data_path].append(ep)
    jobs = [(path, sorted(eps, key=lambda e: e.row_group)) for path, eps in by_file.items()]
    threads = max(1, min(max_threads, len(jobs))) if meta.is_remote else 1
    if threads == 1:
        for path, eps in jobs:
            check_data_file(meta, path, eps)
        return
    with ThreadPoolExecutor(threads) as pool:
        for future in [pool.submit(check_data_file, meta, path, eps) for path, eps in jobs]:
            future.result()


def rewrite_row_groups(path: str | os.PathLike[str], out: str | os.PathLike[str] | None = None) -> int:
    """Rewrite a data file so it holds exactly one row group per episode, rows in global index order.

    ``path`` may be any fsspec URL; ``out`` defaults to ``path`` (replaced atomically when local).
    Schema and schema metadata are kept. Returns the number of row groups written.
    """
    src = str(path)
    dst = str(out) if out is not None else src
    fs, fs_src = fsspec.core.url_to_fs(src)
    try:
        with fs.open(fs_src, "rb") as f:
            table = pq.read_table(f)
    except (pa.ArrowInvalid, OSError) as e:
        raise DatasetFormatError(f"{src}: cannot read it to rewrite its row groups ({e}).", path=src) from None
    for col in ("episode_index", "index"):
        if col not in table.column_names:
            raise DatasetFormatError(f"{src}: has no {col!r} column; it is not a LeRobot data file.", path=src)
    table = table.take(pc.sort_indices(table, sort_keys=[("index", "ascending")]))
    episodes = table.column("episode_index").to_numpy()
    bounds = np.flatnonzero(np.diff(episodes)) + 1
    starts = np.concatenate([[0], bounds]).astype(int)
    stops = np.concatenate([bounds, [len(episodes)]]).astype(int)
    if len(np.unique(episodes)) != len(starts):
        raise DatasetConsistencyError(f"{src}: an episode's rows are not contiguous in global index; cannot split it.", path=src)
    out_fs, fs_dst = fsspec.core.url_to_fs(dst)
    local = fs_is_local(out_fs)
    if local:
        fd, tmp = tempfile.mkstemp(dir=posixpath.dirname(fs_dst) or ".", suffix=".parquet.tmp")
        os.close(fd)
        target = tmp
    else:
        target = fs_dst
    with out_fs.open(target, "wb") as f, pq.ParquetWriter(f, table.schema) as writer:
        for start, stop in zip(starts, stops, strict=True):
            writer.write_table(table.slice(start, stop - start), row_group_size=stop - start)
    if local:
        os.replace(tmp, fs_dst)
    log.info("rewrote %s with %d row groups (one per episode)", dst, len(starts))
    return len(starts)
