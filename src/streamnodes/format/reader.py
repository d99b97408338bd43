"""Reading one episode's rows: exactly one row group of one data file, only the columns asked for.

A footer is read once per consumer (exactly its bytes, :func:`footer_bytes`) and kept by
:class:`ParquetFileCache` as an index of its row groups (:mod:`streamnodes.format.footer_index`), so
admitting an episode parses one row group's metadata, never the whole footer again. Remote files cost
what an episode needs: a row group is one ranged read of its column chunks' span
(:func:`row_group_span`), parsed from memory.
"""

from __future__ import annotations

import io
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from streamnodes.errors import DatasetConsistencyError, DatasetFormatError, check_hint
from streamnodes.format.footer_index import FooterError, FooterIndex, index_footer
from streamnodes.format.retry import RetryingRangeFile, SizedReader

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


#: bytes of a parquet file's trailer: the footer's length (4 bytes, little endian) and the magic ``PAR1``
TRAILER_BYTES = 8
_MAGIC = b"PAR1"


def footer_tail_size(file_size: int, largest_footer: int) -> int:
    """Bytes to read from the end of a remote file of ``file_size`` bytes to get its footer in one request.

    Before any footer of the dataset is known (``largest_footer == 0``) only the trailer is read (8 bytes;
    the footer itself takes a second request), so no bytes of row groups are fetched by guesswork, as
    pyarrow's 64 KiB speculative read does (a whole small file). Once a footer is known, the files of
    one dataset have footers of similar length: the largest seen plus an eighth, then one request.
    """
    want = TRAILER_BYTES if largest_footer <= 0 else largest_footer + largest_footer // 8 + TRAILER_BYTES
    return max(0, min(file_size, want))


def footer_bytes(handle: RetryingRangeFile | io.IOBase, largest_footer: int = 0) -> bytes:
    """The footer of the parquet file behind ``handle`` as it is stored (thrift bytes and trailer), in one
    or two reads.

    The first read is the file's last :func:`footer_tail_size` bytes; if the trailer there says the
    footer is longer, a second read fetches the missing bytes just before them; a longer read is cut to
    the footer. A damaged trailer is left to pyarrow, whose error (``ArrowInvalid``/``OSError``) the
    caller words. ``handle`` is a :class:`RetryingRangeFile` (remote: each read one ranged request) or a
    seekable local file.
    """
    read_at: Callable[[int, int], bytes]
    if isinstance(handle, RetryingRangeFile):
        size, read_at = handle.size, handle.read_at
    else:
        size = handle.seek(0, io.SEEK_END)

        def read_local(offset: int, n: int) -> bytes:
            handle.seek(offset)
            return handle.read(n)

        read_at = read_local

    n = footer_tail_size(size, largest_footer)
    tail = read_at(size - n, n)
    if len(tail) >= TRAILER_BYTES and tail[-4:] == _MAGIC:
        need = int.from_bytes(tail[-8:-4], "little") + TRAILER_BYTES
        if len(tail) < need <= size:
            tail = read_at(size - need, need - len(tail)) + tail
        elif need < len(tail):
            tail = tail[-need:]
    return tail


def parse_footer(footer: bytes) -> pq.FileMetaData:
    """A footer's bytes (:func:`footer_bytes`) parsed."""
    return pq.read_metadata(pa.BufferReader(footer))


def row_group_span(metadata: pq.FileMetaData, row_group: int, columns: Sequence[str] | None = None) -> tuple[int, int]:
    """Byte range ``[start, end)`` of row group ``row_group``'s column chunks (of ``columns``, default all).

    A chunk starts at its dictionary page when it has one (before its data pages), else at its first data
    page, and spans ``total_compressed_size`` bytes (pyarrow's own rule). A column is a top-level field:
    its leaf chunks are named ``name`` or ``name.<nested path>`` (``observation.state.list.element``).
    Columns matching no chunk are ignored; if none matches, the whole row group is spanned.
    """
    group = metadata.row_group(row_group)
    chunks = [group.column(i) for i in range(group.num_columns)]
    if columns is not None:
        prefixes = tuple(f"{name}." for name in columns)
        wanted = set(columns)
        picked = [c for c in chunks if c.path_in_schema in wanted or c.path_in_schema.startswith(prefixes)]
        chunks = picked or chunks
    starts, ends = [], []
    for c in chunks:
        start = c.data_page_offset
        dictionary = c.dictionary_page_offset
        if c.has_dictionary_page and dictionary is not None and 0 < dictionary < start:
            start = dictionary
        starts.append(start)
        ends.append(start + c.total_compressed_size)
    return min(starts), max(ends)


class _SpanFile(SizedReader):
    """A read-only view of a remote file whose bytes ``[start, start + len(data))`` are already in memory.

    pyarrow parses one row group from it (given the file's footer, so it reads nothing else): reads inside
    the span are served from ``data``; a read outside it (a writer's chunk padding pyarrow adds) goes to
    the file, one ranged request.
    """

    def __init__(self, handle: RetryingRangeFile, start: int, data: bytes) -> None:
        super().__init__()
        self.handle, self.start, self.data = handle, start, memoryview(data)
        self.size = handle.size
        self._pos = 0

    def read(self, n: int = -1) -> bytes:
        begin = self._pos
        end = self.size if n is None or n < 0 else min(self.size, begin + n)
        if self.start <= begin and end <= self.start + len(self.data):
            out = self.data[begin - self.start : end - self.start].tobytes()
        else:
            out = self.handle.read_at(begin, end - begin)
        self._pos = begin + len(out)
        return out



def _open_handle(meta: DatasetMeta, relative_path: str) -> RetryingRangeFile | io.IOBase:
    path = meta.url(relative_path)
    try:
        return RetryingRangeFile(meta.fs, path) if meta.is_remote else meta.fs.open(path, "rb")
    except FileNotFoundError:
        raise DatasetFormatError(
            f"{path}: data file missing (the episodes table points to it). Restore or re-download it. "
            f"{check_hint(meta.root)}",
            path=path,
        ) from None


def _unreadable(meta: DatasetMeta, relative_path: str, error: Exception) -> DatasetFormatError:
    path = meta.url(relative_path)
    return DatasetFormatError(
        f"{path}: not a readable parquet file (corrupt or truncated footer: {error}). Re-download or re-write it. "
        f"{check_hint(meta.root)}",
        path=path,
    )


def open_parquet(meta: DatasetMeta, relative_path: str) -> pq.ParquetFile:
    """Open a data file of ``meta`` and parse its whole footer, with errors that name the file.

    Remote files are read through :class:`~streamnodes.format.retry.RetryingRangeFile`: every ranged
    request is retried on transient failures, and :class:`DownloadError` names the URL when the
    retries run out. The footer is read by :func:`footer_bytes` (exactly its bytes, in one or two
    requests), not by pyarrow's speculative 64 KiB read.
    """
    handle = _open_handle(meta, relative_path)
    try:
        return pq.ParquetFile(handle, metadata=parse_footer(footer_bytes(handle)))
    except (pa.ArrowInvalid, OSError) as e:
        handle.close()
        raise _unreadable(meta, relative_path, e) from None
    except BaseException:
        handle.close()
        raise


class ParquetFileCache:
    """The data files one consumer reads: each footer read once and indexed, a few files open.

    A footer is read from its file the first time the file is used (:func:`footer_bytes`: exactly its
    bytes, remote in one or two requests) and kept as a :class:`FooterIndex`: each row group's metadata
    as bytes, compressed (~115 KB for a LeRobot-sized footer of 1,149 row groups, 817 KB as stored, which
    pyarrow would parse into ~7 MB). Reading a row group parses a footer that lists only that row group
    (:meth:`FooterIndex.row_group_footer`, ~0.1 ms whatever the number of row groups in the file), never
    the whole footer again, so admitting an episode costs the same in a file of 1,000 row groups as in
    one of 12,000. At most ``max_open`` files stay open (least recently used closed first); a file opened
    again reads no footer. Remote row groups are one ranged request each (:meth:`read`).
    """

    def __init__(self, meta: DatasetMeta, max_open: int = 4) -> None:
        self.meta = meta
        self.max_open = max_open
        self._open: OrderedDict[str, RetryingRangeFile | io.IOBase] = OrderedDict()
        self._indexes: dict[str, FooterIndex] = {}
        self._largest_footer = 0
        self.footer_reads = 0  # footers read from their file (each file: once)

    def __repr__(self) -> str:
        return (
            f"ParquetFileCache({self.meta.root!s}, {len(self._indexes)} footers indexed "
            f"({self.index_bytes() / 2**20:.1f} MiB), open={list(self._open)})"
        )

    @property
    def open_paths(self) -> tuple[str, ...]:
        """The data files open now, least recently used first."""
        return tuple(self._open)

    def index_bytes(self) -> int:
        """Memory held by the footer indexes (approximately)."""
        return sum(index.nbytes() for index in self._indexes.values())

    def _handle(self, relative_path: str) -> RetryingRangeFile | io.IOBase:
        handle = self._open.get(relative_path)
        if handle is not None:
            self._open.move_to_end(relative_path)
            return handle
        while len(self._open) >= self.max_open:
            self._open.popitem(last=False)[1].close()
        handle = _open_handle(self.meta, relative_path)
        self._open[relative_path] = handle
        return handle

    def index(self, relative_path: str) -> FooterIndex:
        """The data file's footer index (its footer read and indexed now if this is its first use)."""
        index = self._indexes.get(relative_path)
        if index is None:
            handle = self._handle(relative_path)
            try:
                index = index_footer(footer_bytes(handle, self._largest_footer))
            except (FooterError, OSError) as e:
                raise _unreadable(self.meta, relative_path, e) from None
            self.footer_reads += 1
            self._largest_footer = max(self._largest_footer, index.footer_size - TRAILER_BYTES)
            self._indexes[relative_path] = index
        return index

    def metadata(self, relative_path: str, row_group: int) -> pq.FileMetaData:
        """The metadata of a data file that lists only row group ``row_group`` (as its row group 0)."""
        return parse_footer(self.index(relative_path).row_group_footer(row_group))

    def read(self, relative_path: str, metadata: pq.FileMetaData, columns: Sequence[str]) -> pa.Table:
        """Row group 0 of ``metadata`` (:meth:`metadata`) from its data file, projected to ``columns``.

        Remote: one ranged read of the row group's byte span (:func:`row_group_span`), parsed from memory.
        Local: pyarrow reads the file.
        """
        handle = self._handle(relative_path)
        if not isinstance(handle, RetryingRangeFile):
            return pq.ParquetFile(handle, metadata=metadata).read_row_group(0, columns=list(columns))
        start, end = row_group_span(metadata, 0, columns)
        span = _SpanFile(handle, start, handle.read_at(start, end - start))
        return pq.ParquetFile(span, metadata=metadata, pre_buffer=False).read_row_group(0, columns=list(columns))

    def close(self) -> None:
        """Close the open files (footers stay indexed: reopening a file reads no footer)."""
        for handle in self._open.values():
            handle.close()
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
        index = files.index(ref.data_path)
        if ref.row_group >= index.num_row_groups:
            raise DatasetConsistencyError(
                f"{path}: episode {ref.episode_index} should be row group {ref.row_group}, but the file has "
                f"{index.num_row_groups} row groups. Repair it with streamnodes.format.rewrite_row_groups "
                "or re-write the episodes table.",
                path=path, episode_index=ref.episode_index,
            )
        metadata = files.metadata(ref.data_path, ref.row_group)
        names = metadata.schema.to_arrow_schema().names
        missing = [c for c in wanted if c not in names]
        if missing:
            raise DatasetFormatError(
                f"{path}: episode {ref.episode_index}: columns {missing} are not in the data file "
                f"(it has {names}). Ask only for features of this dataset.",
                path=path, episode_index=ref.episode_index,
            )
        table = files.read(ref.data_path, metadata, wanted)  # remote: one retried ranged read
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
    global_index = out["index"]
    if global_index[0] != ref.dataset_from_index or global_index[-1] != ref.dataset_to_index - 1:
        raise DatasetConsistencyError(
            f"{path}: episode {ref.episode_index} (row group {ref.row_group}) holds global index "
            f"{global_index[0]}..{global_index[-1]}, but the episodes table says [{ref.dataset_from_index}, {ref.dataset_to_index}). "
            "Re-write the episodes table or repair the data file with rewrite_row_groups.",
            path=path, episode_index=ref.episode_index,
        )
    return out
