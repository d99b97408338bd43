"""Checks of data files against the episodes table, and the repair for files with the wrong row groups.

LeRobot's writer stores one parquet row group per episode, which is what lets a reader fetch one
episode with one ranged read. Bulk rewrites (``df.to_parquet``, ``datasets.push_to_hub``) merge row
groups; :func:`rewrite_row_groups` restores the layout.
"""

from __future__ import annotations

import ctypes
import logging
import os
import posixpath
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Literal

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


def check_data_file(meta: DatasetMeta, relative_path: str, episodes: Sequence[EpisodeRef]) -> None:
    """Check one data file's footer against the episodes it should hold (sorted by row group)."""
    _check_file(
        meta,
        relative_path,
        np.array([ep.episode_index for ep in episodes], dtype=np.int64),
        np.array([ep.length for ep in episodes], dtype=np.int64),
        np.array([ep.dataset_from_index for ep in episodes], dtype=np.int64),
    )


def _check_file(meta: DatasetMeta, relative_path: str, index: np.ndarray, length: np.ndarray, start: np.ndarray) -> None:
    """:func:`check_data_file` on columns: the episodes of the file (index, length, start) by row group.

    The footer is read once; row-group sizes and the ``index`` column's statistics are compared with
    the episodes as arrays, so a file of thousands of episodes costs one pass over its row groups.
    """
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
        n = len(index)

        def groups() -> list[int]:
            return [md.row_group(i).num_rows for i in range(md.num_row_groups)]

        def ep_desc() -> list[tuple[int, int]]:
            return list(zip(index.tolist(), length.tolist(), strict=True))

        expected_rows = int(length.sum())
        if md.num_rows != expected_rows:
            raise DatasetConsistencyError(
                f"{path}: holds {md.num_rows} rows in {md.num_row_groups} row groups {groups()}, but the episodes "
                f"table puts {n} episodes (index, length) {ep_desc()} with {expected_rows} rows in it: "
                "rows are missing or extra. Restore or re-download the data file (or re-write the episodes table "
                f"if episodes were removed on purpose). {check_hint(meta.root)}",
                path=path,
            )
        if md.num_row_groups != n:
            raise DatasetConsistencyError(
                f"{path}: {md.num_row_groups} row group(s) with {groups()} rows, but the episodes table puts "
                f"{n} episodes (index, length) {ep_desc()} in it; streamnodes needs one row group "
                f"per episode (LeRobot's writer guarantees it; bulk rewrites break it). Repair the file with "
                f"streamnodes.format.rewrite_row_groups({path!r}).",
                path=path,
            )
        rows, lows, highs, known = row_group_facts(md, "index")
        bad = np.flatnonzero(rows != length)
        if len(bad):
            i = int(bad[0])
            raise DatasetConsistencyError(
                f"{path}: episode {int(index[i])} is row group {i} with {int(rows[i])} rows, but has length "
                f"{int(length[i])} in the episodes table. The table disagrees with the data: re-write the "
                "episodes table (meta/episodes/) from the data files.",
                path=path, episode_index=int(index[i]),
            )
        if known is None:
            return
        bad = np.flatnonzero(known & ((lows != start) | (highs != start + length - 1)))
        if len(bad):
            i = int(bad[0])
            raise DatasetConsistencyError(
                f"{path}: row group {i} holds global index {lows[i]}..{highs[i]}, but episode "
                f"{int(index[i])} is [{int(start[i])}, {int(start[i] + length[i])}) in the episodes "
                f"table. Re-write the episodes table or repair the file with rewrite_row_groups.",
                path=path, episode_index=int(index[i]),
            )
    finally:
        pf.close(force=True)


# Converted types of INT32/INT64 columns whose raw statistics are their values (signed integers).
_RAW_INTEGERS = {"NONE", "INT_8", "INT_16", "INT_32", "INT_64"}


def row_group_facts(
    metadata: pq.FileMetaData, column: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Every row group's row count, and the min and max (as integers) of the flat column ``column``.

    One pass over the footer's row groups. Returns int64 arrays ``rows``, ``lows``, ``highs`` and the
    boolean ``known`` (the row group has min/max statistics; where it has not, ``lows``/``highs`` are 0),
    or ``known=None`` when the file has no flat column of that name. Signed integer statistics
    are read raw (``min_raw``), which skips the Arrow scalar ``Statistics.min`` builds for each value:
    about half the time per row group, which is what a 100,000-episode dataset has.
    """
    # The leaf is found from the first row group's column chunks, not from ``metadata.schema``: that
    # caches a ParquetSchema pointing back at the FileMetaData, a cycle that keeps the parsed footer
    # (megabytes) alive until the garbage collector runs.
    group = metadata.row_group
    n = metadata.num_row_groups
    first = group(0) if n else None
    leaf = next((j for j in range(metadata.num_columns) if first.column(j).path_in_schema == column), None) if first is not None else None
    if first is None or leaf is None:
        sizes = np.fromiter((group(i).num_rows for i in range(n)), dtype=np.int64, count=n)
        return sizes, np.zeros(n, np.int64), np.zeros(n, np.int64), None
    stats = first.column(leaf).statistics
    raw = stats is not None and stats.physical_type in ("INT32", "INT64") and stats.converted_type in _RAW_INTEGERS
    # One row group at a time: each metadata object pyarrow makes holds its own copy of C++ state, so
    # keeping all of them (a list of Statistics) costs hundreds of MB at 100,000 row groups.
    rows: list[int] = []
    lows: list[int | None] = []
    highs: list[int | None] = []
    for i in range(n):
        g = group(i)
        rows.append(g.num_rows)
        s = g.column(leaf).statistics
        if s is None:
            lows.append(None)
            highs.append(None)
        elif raw:  # min_raw/max_raw: None without min/max
            lows.append(s.min_raw)
            highs.append(s.max_raw)
        else:  # other types: their values as Python numbers (slower)
            known = s.has_min_max
            lows.append(int(s.min) if known else None)
            highs.append(int(s.max) if known else None)
    known = np.fromiter((v is not None for v in lows), dtype=bool, count=n)
    low = np.array([0 if v is None else v for v in lows], dtype=np.int64)
    high = np.array([0 if v is None else v for v in highs], dtype=np.int64)
    return np.array(rows, dtype=np.int64), low, high, known


def check_data_files(meta: DatasetMeta, *, max_threads: int = 8) -> None:
    """Check every data file of ``meta`` (footers only, once per file; remote files in ``max_threads`` threads).

    Episodes are grouped by file with array operations on the episodes table, not one ref at a time.
    """
    table = meta.episodes
    order = np.lexsort((table.row_group, table.data_file))  # by file, then row group
    files = table.data_file[order]
    bounds = np.flatnonzero(np.diff(files)) + 1
    groups = np.split(order, bounds) if len(order) else []
    groups.sort(key=lambda rows: int(rows.min()))  # files in the order their first episode comes
    jobs = [
        (table.data_files[int(table.data_file[rows[0]])], table.index[rows], table.length[rows], table.start[rows])
        for rows in groups
    ]
    # Local files in this thread: pyarrow parses a footer without the GIL, but the rest (the row-group pass,
    # freeing the parsed footer) holds it. At 100,000 episodes 2 threads saved ~0.15 s of wall time and
    # cost ~0.3 s more CPU (0.6-0.76 s wall / 0.95-1.2 s CPU against 0.76-0.83 s both), and a parsed
    # footer of 12,000 row groups is ~70 MB while it is checked. Remote files: threads hide latency.
    threads = max(1, min(max_threads, len(jobs))) if meta.is_remote else 1
    try:
        if threads == 1:
            for job in jobs:
                _check_file(meta, *job)
            return
        with ThreadPoolExecutor(threads) as pool:
            for future in [pool.submit(_check_file, meta, *job) for job in jobs]:
                future.result()
    finally:
        release_freed_memory()


def release_freed_memory() -> None:
    """Hand the heap memory freed by parsed footers back to the operating system (glibc only; else nothing).

    A parsed footer is many small C++ allocations (~70 MB for 12,000 row groups); glibc keeps them
    after they are freed, and DataLoader workers forked later inherit those pages, counted in each
    worker's RSS. ``malloc_trim`` returns them (100,000 episodes in 9 files: +212 MB -> +58 MB after
    ``open_dataset``) in a few milliseconds.
    """
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL("libc.so.6")
            _LIBC.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


_LIBC: ctypes.CDLL | Literal[False] | None = None


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
