"""``open_dataset``: read ``meta/`` of a LeRobot v3.0 dataset into a :class:`DatasetMeta` and validate it.

Reads ``meta/info.json``, every ``meta/episodes/chunk-*/file-*.parquet``, ``meta/tasks.parquet`` and
``meta/stats.json`` from a local path or any fsspec URL, checks them against each other, and (by
default) checks every data file's parquet footer: one row group per episode, with the episode's row
count and index range, and that every mp4 the episodes table points to exists (and, for local
datasets, is whole: :mod:`streamnodes.format.video_files`). Nothing here reads frame data.

A root that is a Hugging Face Hub id (``"lerobot/pusht"``) and not a local path is read from the Hub
through ``hf://datasets/...`` (:mod:`streamnodes.format.hub`).

The format package imports in one direction: metadata <- reader <- validate <- open.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from streamnodes.errors import (
    DatasetConsistencyError,
    DatasetFormatError,
    DownloadError,
    StreamNodesError,
    short_text,
)
from streamnodes.format.fs import fs_is_remote, join, url_to_fs
from streamnodes.format.hub import is_hub_url, is_offline, resolve_root, unreachable_error
from streamnodes.format.metadata import (
    CODEBASE_VERSION,
    EPISODES_PATH,
    INFO_PATH,
    REQUIRED_INFO_KEYS,
    STATS_PATH,
    TASKS_PATH,
    DatasetMeta,
    EpisodeTable,
    Feature,
)
from streamnodes.format.retry import with_retries
from streamnodes.format.validate import check_data_files
from streamnodes.format.video_files import check_video_files

log = logging.getLogger(__name__)


def _read_bytes(fs: fsspec.AbstractFileSystem, path: str) -> bytes:
    """A whole (small, metadata) file; remote files in one request, retried on transient failures."""
    if not fs_is_remote(fs):
        with fs.open(path, "rb") as f:
            return f.read()
    return with_retries(lambda: fs.cat_file(path), what=path, remote=True, path=path)


def open_dataset(
    root: str | Any, *, check_files: bool = True, max_threads: int = 8, revision: str | None = None
) -> DatasetMeta:
    """Open a LeRobot v3.0 dataset at ``root`` and validate its metadata.

    ``root`` is a local path, any fsspec URL, or a Hugging Face Hub dataset id (``"lerobot/pusht"``, read
    from ``hf://datasets/lerobot/pusht`` when no local path of that name exists); ``revision`` picks a
    branch, tag or commit of a Hub dataset (``hf://datasets/lerobot/pusht@v3.0``).

    With ``check_files`` every data file's parquet footer is read (in parallel for remote roots) to
    check that its row groups map one to one onto its episodes and that it has every feature column,
    and every mp4 the episodes table points to must exist (local: also be whole; see
    :mod:`streamnodes.format.video_files`). Raises :class:`~streamnodes.errors.DatasetFormatError` (or a
    subclass) naming the file and the fix; a remote root that cannot be reached raises
    :class:`~streamnodes.errors.DownloadError` naming the URL and the remedy.
    """
    root = resolve_root(str(root), revision)
    if is_hub_url(root) and is_offline():  # every Hub request would fail (and be retried); say why now
        raise unreachable_error(root)
    fs, root_path = url_to_fs(root)

    def url(rel: str) -> str:
        return join(root_path, rel)

    with _network_errors(root, remote=fs_is_remote(fs)):
        info = _read_info(fs, url(INFO_PATH))
        features = _parse_features(info, url(INFO_PATH))
        tasks = _read_tasks(fs, url(TASKS_PATH))
        table, episode_files = _read_episodes_table(fs, url, info)
        episodes = _episode_table(table, info, features, tasks, episode_files)
        stats = _read_stats(fs, url(STATS_PATH))
        meta = DatasetMeta(root=root, info=info, features=features, tasks=tasks, episodes=episodes, stats=stats)
        _check_totals(meta, url(INFO_PATH))
        if check_files:
            check_data_files(meta, max_threads=max_threads)
            check_video_files(meta)
    log.debug("opened %r", meta)
    return meta


# Transport failures (no route, refused, DNS, timeouts, offline mode) by type name, wherever the HTTP
# client puts them in the chain (httpx's ConnectError, aiohttp's ClientConnectorError ...).
_NETWORK_NAMES = {"ConnectError", "ConnectTimeout", "ReadTimeout", "NetworkError", "ProxyError",
                  "ClientConnectorError", "OfflineModeIsEnabled", "LocalEntryNotFoundError"}


def is_network_failure(error: BaseException) -> bool:
    """Whether ``error``'s chain shows the server was not reached (rather than a file being bad)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (ConnectionError, TimeoutError, socket.gaierror)) or type(current).__name__ in _NETWORK_NAMES:
            return True
        current = current.__cause__ or current.__context__
    return False


@contextmanager
def _network_errors(root: str, *, remote: bool) -> Iterator[None]:
    """For remote roots, failures of the transport become a :class:`DownloadError` naming the root.

    Our own errors about the dataset pass unchanged, except that a Hub dataset whose server cannot be
    reached gets the Hub's remedies (:func:`~streamnodes.format.hub.unreachable_error`). Anything else
    an fsspec file system raises (an HTTP client's ``ConnectError``, a DNS failure) is wrapped, so the
    caller always learns which URL failed. Local roots are untouched.
    """
    try:
        yield
    except StreamNodesError as error:
        if remote and is_hub_url(root) and isinstance(error, DownloadError) and is_network_failure(error):
            raise unreachable_error(root, error) from error
        raise
    except (TypeError, AttributeError, AssertionError, KeyboardInterrupt):
        raise  # bugs and interrupts are not download failures
    except Exception as error:
        if not remote:
            raise
        if is_hub_url(root) and is_network_failure(error):
            raise unreachable_error(root, error) from error
        raise DownloadError(
            f"{root}: reading the dataset failed ({type(error).__name__}: {short_text(error, limit=200)}). "
            "Check the URL, the network and the server, or pass the local path of a downloaded copy.",
            path=root,
        ) from error


def _read_info(fs: fsspec.AbstractFileSystem, path: str) -> dict[str, Any]:
    try:
        info = json.loads(_read_bytes(fs, path))
    except FileNotFoundError:
        raise DatasetFormatError(
            f"{path}: missing. A LeRobot v3.0 dataset root holds meta/info.json; check the root path or URL.",
            path=path,
        ) from None
    except json.JSONDecodeError as e:
        raise DatasetFormatError(f"{path}: not valid JSON ({e}). Re-download or re-write the dataset.", path=path) from None
    version = info.get("codebase_version")
    if version != CODEBASE_VERSION:
        hint = ""
        if isinstance(version, str) and version.startswith("v2"):
            hint = (
                " Convert it with LeRobot: `python -m lerobot.datasets.v30.convert_dataset_v21_to_v30"
                " --repo-id=<your/repo>` (v2.1 -> v3.0), then point streamnodes at the converted root."
            )
        raise DatasetFormatError(
            f"{path}: codebase_version is {version!r}; streamnodes reads LeRobot {CODEBASE_VERSION} datasets.{hint}",
            path=path,
        )
    missing = [k for k in REQUIRED_INFO_KEYS if k not in info]
    if missing:
        raise DatasetFormatError(
            f"{path}: missing keys {missing}. A LeRobot v3.0 info.json has {list(REQUIRED_INFO_KEYS)}; "
            "re-write the metadata with LeRobot's writer or streamnodes.testing.write_dataset.",
            path=path,
        )
    if any(ft.get("dtype") == "video" for ft in info["features"].values()) and "video_path" not in info:
        raise DatasetFormatError(f"{path}: the dataset has video features but no 'video_path' template. Add it, e.g. LeRobot v3.0's "
            "\"videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4\".", path=path)
    return info


def _parse_features(info: Mapping[str, Any], path: str) -> dict[str, Feature]:
    features = {}
    for name, spec in info["features"].items():
        if not isinstance(spec, Mapping) or "dtype" not in spec or "shape" not in spec:
            raise DatasetFormatError(f"{path}: feature {name!r} needs 'dtype' and 'shape', got {spec!r}. Give every feature in info.json its dtype and shape.", path=path)
        features[name] = Feature(name, str(spec["dtype"]), tuple(int(s) for s in spec["shape"]), spec.get("names"))
    return features


def _read_tasks(fs: fsspec.AbstractFileSystem, path: str) -> tuple[str, ...]:
    try:
        table = pq.ParquetFile(pa.BufferReader(_read_bytes(fs, path))).read()  # not read_table: it imports pandas
    except FileNotFoundError:
        raise DatasetFormatError(f"{path}: missing. LeRobot v3.0 keeps task strings there; re-write the metadata.", path=path) from None
    except (pa.ArrowInvalid, OSError) as e:
        raise DatasetFormatError(f"{path}: not a readable parquet file ({e}). Re-download it.", path=path) from None
    names = table.column_names
    text_col = "task" if "task" in names else "__index_level_0__" if "__index_level_0__" in names else None
    if "task_index" not in names or text_col is None:
        raise DatasetFormatError(f"{path}: expected columns 'task_index' and the task string (index or 'task'), got {names}.", path=path)
    index = table.column("task_index").to_pylist()
    text = table.column(text_col).to_pylist()
    if sorted(index) != list(range(len(index))):
        raise DatasetFormatError(f"{path}: task_index values must be 0..{len(index) - 1}, got {sorted(index)}. Re-write meta/tasks.parquet with one row per task index.", path=path)
    by_index = dict(zip(index, text, strict=True))
    return tuple(str(by_index[i]) for i in range(len(index)))


def _read_stats(fs: fsspec.AbstractFileSystem, path: str) -> dict[str, Any] | None:
    try:
        return json.loads(_read_bytes(fs, path))
    except FileNotFoundError:
        log.warning("%s: missing; normalisation stats will be unavailable (reading frames is unaffected).", path)
        return None
    except json.JSONDecodeError as e:
        raise DatasetFormatError(f"{path}: not valid JSON ({e}). Re-compute it or delete it.", path=path) from None


def _read_episodes_table(fs: fsspec.AbstractFileSystem, url, info: Mapping[str, Any]) -> tuple[pa.Table, list[str]]:
    """Read every episodes-metadata file in chunk/file order until ``total_episodes`` rows are read.

    Files are found by their template rather than by listing, so the same code serves file systems
    that cannot list directories (plain HTTP).
    """
    total = int(info["total_episodes"])
    chunks_size = int(info["chunks_size"])
    tables, files, rows = [], [], 0
    chunk, file_index = 0, 0
    while rows < total:
        rel = EPISODES_PATH.format(chunk_index=chunk, file_index=file_index)
        path = url(rel)
        try:
            table = _read_episodes_file(fs, path)
        except FileNotFoundError:
            raise DatasetFormatError(
                f"{path}: missing; the episodes table read so far has {rows} of total_episodes={total} "
                "(meta/info.json). Restore the file, or fix total_episodes if episodes were removed.",
                path=path,
            ) from None
        except (pa.ArrowInvalid, OSError) as e:
            raise DatasetFormatError(f"{path}: not a readable parquet file ({e}). Re-download it.", path=path) from None
        if table.num_rows == 0:
            raise DatasetFormatError(f"{path}: episodes file with no rows; remove it or re-write the metadata.", path=path)
        tables.append(table)
        files.append(path)
        rows += table.num_rows
        file_index += 1
        if file_index >= chunks_size:
            chunk, file_index = chunk + 1, 0
    try:
        table = pa.concat_tables(tables, promote_options="default")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:  # conflicting column types raise ArrowTypeError
        raise DatasetFormatError(f"episodes files {files} have incompatible schemas: {e}. Re-write the episodes metadata so every file has one schema.") from None
    return table, files


def _read_episodes_file(fs: fsspec.AbstractFileSystem, path: str) -> pa.Table:
    """One episodes-metadata file without its ``stats/*`` columns: per-episode statistics are most of
    the file (kilobytes per episode) and streamnodes never reads them, so they are not decoded. A local
    file is read through its footer, so the statistics' bytes are not even read (38 MB at 100,000
    episodes); a remote one in one request (retried), as a whole."""
    if fs_is_remote(fs):
        pf = pq.ParquetFile(pa.BufferReader(_read_bytes(fs, path)))
        return pf.read(columns=[name for name in pf.schema_arrow.names if not name.startswith("stats/")])
    with fs.open(path, "rb") as f:
        pf = pq.ParquetFile(f)
        try:
            return pf.read(columns=[name for name in pf.schema_arrow.names if not name.startswith("stats/")])
        finally:
            pf.close(force=True)


def _first(mask: np.ndarray) -> int | None:
    """Position of the first true value of ``mask``, or ``None``."""
    hits = np.flatnonzero(mask)
    return int(hits[0]) if len(hits) else None


def _file_ids(chunk: np.ndarray, file: np.ndarray, template: str, **names: str) -> tuple[np.ndarray, list[str]]:
    """Each row's (chunk, file) as a position in the list of distinct file paths (formatted once each)."""
    chunk, file = np.asarray(chunk, dtype=np.int64), np.asarray(file, dtype=np.int64)
    if len(chunk) and (chunk.min() < 0 or file.min() < 0 or file.max() >= 1 << 32 or chunk.max() >= 1 << 31):
        pairs = np.stack([chunk, file], axis=1)  # unusual indices: the (slower) row-wise unique
        unique, ids = np.unique(pairs, axis=0, return_inverse=True)
    else:  # one int64 key per row: a plain sort
        keys, ids = np.unique((chunk << 32) | file, return_inverse=True)
        unique = np.stack([keys >> 32, keys & 0xFFFFFFFF], axis=1)
    paths = [template.format(chunk_index=int(c), file_index=int(f), **names) for c, f in unique]
    return ids.reshape(-1).astype(np.int64), paths


def _episode_table(
    table: pa.Table,
    info: Mapping[str, Any],
    features: Mapping[str, Feature],
    tasks: Sequence[str],
    episode_files: Sequence[str],
) -> EpisodeTable:
    """The episodes table as columns, checked with array operations (no Python loop over episodes).

    When several episodes are wrong, the error names the first in episode-index order, and for one
    episode the checks run in this order: length and index range, tasks, each camera's timestamps.
    """
    where = episode_files[0] if len(episode_files) == 1 else f"{episode_files[0]} (+{len(episode_files) - 1} files)"
    table_path = episode_files[0] if len(episode_files) == 1 else None  # errors' .path: the file, when it is one
    video_keys = [k for k, f in features.items() if f.is_video]
    required = ["episode_index", "length", "data/chunk_index", "data/file_index", "dataset_from_index", "dataset_to_index"]
    for key in video_keys:
        required += [f"videos/{key}/{c}" for c in ("chunk_index", "file_index", "from_timestamp", "to_timestamp")]
    missing = [c for c in required if c not in table.column_names]
    if missing:
        raise DatasetFormatError(f"{where}: episodes table lacks columns {missing}; re-write the metadata with LeRobot v3.0.", path=table_path)

    raw_index = table.column("episode_index").to_numpy()
    in_order = bool(len(raw_index) < 2 or (np.diff(raw_index) > 0).all())  # the usual case: nothing to sort
    order = None if in_order else np.argsort(raw_index, kind="stable")
    cols = {c: table.column(c).to_numpy() if in_order else table.column(c).to_numpy()[order] for c in required}
    indices = cols["episode_index"].astype(np.int64)
    if len(indices) > 1 and not (np.diff(indices) > 0).all():
        dup = sorted({int(i) for i in indices[1:][np.diff(indices) == 0]})
        raise DatasetConsistencyError(f"{where}: episode indices {dup} appear more than once in the episodes table. Re-write the metadata so each episode is listed once.", path=table_path)

    # Tasks of each episode as ids into ``tasks`` (null: not in meta/tasks.parquet), in CSR form.
    if "tasks" in table.column_names:
        lists = table.column("tasks").combine_chunks()
        lists = lists if in_order else lists.take(pa.array(order))
        counts = pc.fill_null(pc.list_value_length(lists), 0).to_numpy(zero_copy_only=False).astype(np.int64)
        values = pc.list_flatten(lists).cast(pa.string())
        ids = pc.index_in(values, value_set=pa.array(list(tasks), type=pa.string()))
        task_ids = ids.to_numpy(zero_copy_only=False)
        unknown_value = np.isnan(task_ids) if task_ids.dtype.kind == "f" else np.zeros(len(task_ids), dtype=bool)
        task_ids = np.where(unknown_value, -1, task_ids).astype(np.int64)
    else:
        counts = np.zeros(len(indices), dtype=np.int64)
        task_ids, unknown_value, values = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool), pa.array([], pa.string())
    task_offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    # The first bad episode of each check; the smallest position wins, ties go to the earlier check.
    length = cols["length"].astype(np.int64)
    start, stop = cols["dataset_from_index"].astype(np.int64), cols["dataset_to_index"].astype(np.int64)
    problems: list[tuple[int, int, Any]] = []
    bad = _first((length <= 0) | (stop - start != length))
    if bad is not None:
        problems.append((bad, 0, None))
    if unknown_value.any():
        owner = np.searchsorted(task_offsets, np.flatnonzero(unknown_value), side="right") - 1
        problems.append((int(owner[0]), 1, None))
    for k, key in enumerate(video_keys):
        t0 = cols[f"videos/{key}/from_timestamp"].astype(np.float64)
        t1 = cols[f"videos/{key}/to_timestamp"].astype(np.float64)
        bad = _first(~((t1 > t0) & (t0 >= 0)))
        if bad is not None:
            problems.append((bad, 2 + k, key))
    if problems:
        i, check, key = min(problems, key=lambda p: (p[0], p[1]))
        ep = int(indices[i])
        if check == 0:
            raise DatasetConsistencyError(
                f"{where}: episode {ep} has length {int(length[i])} but index range [{int(start[i])}, {int(stop[i])}); "
                "the episodes table disagrees with itself. Re-write the metadata.",
                path=table_path,
                episode_index=ep,
            )
        if check == 1:
            mine = values.slice(int(task_offsets[i]), int(counts[i])).to_pylist()
            unknown = [t for t in mine if t not in tasks]
            raise DatasetConsistencyError(f"{where}: episode {ep} lists tasks {unknown} that are not in meta/tasks.parquet. Add them to meta/tasks.parquet or fix the episode's tasks.", path=table_path, episode_index=ep
            )
        t0, t1 = float(cols[f"videos/{key}/from_timestamp"][i]), float(cols[f"videos/{key}/to_timestamp"][i])
        raise DatasetConsistencyError(
            f"{where}: episode {ep} camera {key!r} has from_timestamp={t0}, to_timestamp={t1}; expected 0 <= from < to. Re-write the episodes table.",
            path=table_path,
            episode_index=ep,
            camera=key,
        )

    data_file, data_files = _file_ids(cols["data/chunk_index"], cols["data/file_index"], info["data_path"])
    # Row group of each episode: its rank among the episodes of the same data file, by index range.
    by_file = np.lexsort((start, data_file))
    first_of_file = np.searchsorted(data_file[by_file], data_file[by_file], side="left")
    row_group = np.empty(len(indices), dtype=np.int64)
    row_group[by_file] = np.arange(len(indices)) - first_of_file

    video_file, video_files = [], []
    for key in video_keys:
        ids, paths = _file_ids(cols[f"videos/{key}/chunk_index"], cols[f"videos/{key}/file_index"],
                               info["video_path"], video_key=key)  # present: _read_info checks it
        video_file.append(ids)
        video_files.append(paths)
    return EpisodeTable(
        index=indices,
        length=length,
        start=start,
        data_file=data_file,
        data_files=data_files,
        row_group=row_group,
        tasks=tasks,
        task_ids=task_ids,
        task_offsets=task_offsets,
        cameras=video_keys,
        video_file=video_file,
        video_files=video_files,
        video_from=[cols[f"videos/{key}/from_timestamp"] for key in video_keys],
        video_to=[cols[f"videos/{key}/to_timestamp"] for key in video_keys],
    )


def _check_totals(meta: DatasetMeta, info_path: str) -> None:
    info = meta.info
    if meta.total_episodes != int(info["total_episodes"]):
        raise DatasetConsistencyError(
            f"{info_path}: total_episodes={info['total_episodes']} but the episodes table has "
            f"{meta.total_episodes} rows. Fix info.json or restore the missing episodes files.",
            path=info_path,
        )
    if meta.total_frames != int(info["total_frames"]):
        raise DatasetConsistencyError(
            f"{info_path}: total_frames={info['total_frames']} but the episodes table's lengths add up to "
            f"{meta.total_frames}. Fix info.json or the episodes table.",
            path=info_path,
        )
    table = meta.episodes
    stop = table.start + table.length
    order = np.lexsort((table.index, stop, table.start))  # by (from, to, episode), as sorted tuples
    starts, stops = table.start[order], stop[order]
    expected = np.concatenate([[0], stops[:-1]]) if len(stops) else stops
    bad = _first(starts != expected)
    if bad is not None:
        raise DatasetConsistencyError(
            f"meta/episodes: episode {int(table.index[order[bad]])} starts at global index {int(starts[bad])}, "
            f"expected {int(expected[bad])}; global index ranges must be contiguous from 0. Re-write the episodes table.",
            path="meta/episodes",
            episode_index=int(table.index[order[bad]]),
        )
