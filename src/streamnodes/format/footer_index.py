"""One row group's metadata from a parquet footer, without parsing the whole footer each time.

A parquet footer is one thrift struct (``FileMetaData``, compact protocol) whose ``row_groups`` list
holds every row group's metadata: a file of 1,149 one-episode row groups has an 817 KB footer, one of
11,508 an 8.2 MB footer, and pyarrow can only parse all of it (~8 ms and ~65 ms, ~7 MB and ~70 MB of
memory). Admitting one episode needs one row group.

:func:`index_footer` walks the footer's bytes once and records where each row group's struct starts
(:class:`FooterIndex`); :meth:`FooterIndex.row_group_footer` then writes a footer of the same file that
lists only that row group, copying the other fields (schema, key-value metadata with Arrow's schema,
``created_by``, column orders) and the row group's bytes verbatim. pyarrow parses it in microseconds,
and its column chunks keep their absolute offsets, so it reads the row group from the original file.

The walk is pure Python, made fast by the regularity of a data file: row groups written by one writer
for one schema are byte-for-byte alike except for variable-length integers. The first row group is
walked field by field (:func:`skip_value`), which also records it as a regular expression (a
*template*: literal bytes, varints, fixed-length values); the following ones are matched by that
expression in one C call each. A row group the template does not match (another set of optional fields,
a statistic of another length) is walked field by field and adds a template; so any valid footer is
indexed, the regular ones at C speed (about 2 µs per row group).

The row groups' bytes are kept compressed in blocks of :data:`BLOCK` row groups, so the index costs a
tenth of the footer's size in memory; :meth:`FooterIndex.row_group_footer` decompresses one block.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

# Thrift compact protocol type ids (thrift's TCompactProtocol).
STOP, TRUE, FALSE, BYTE, I16, I32, I64, DOUBLE, BINARY, LIST, SET, MAP, STRUCT = range(13)
#: ``FileMetaData`` field ids (parquet.thrift) this module rewrites.
NUM_ROWS, ROW_GROUPS = 3, 4
#: ``RowGroup.num_rows``.
ROW_GROUP_NUM_ROWS = 3
#: Row groups per compressed block of an index.
BLOCK = 32
#: Templates kept per footer; a footer whose row groups take more shapes walks the rest field by field.
MAX_TEMPLATES = 8

_VARINT = rb"[\x80-\xff]*[\x00-\x7f]"
_MAGIC = b"PAR1"
_ZSTD = pa.Codec("zstd", compression_level=1) if pa.Codec.is_available("zstd") else None


#: What the walk reads: a footer's bytes, or a view of them (slices of a view copy nothing).
Bytes = bytes | memoryview


class FooterError(ValueError):
    """The footer's bytes are not a thrift ``FileMetaData`` this module can index (the caller names the file)."""


def read_varint(buf: Bytes, pos: int) -> tuple[int, int]:
    """The unsigned varint at ``pos`` and the position after it."""
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise FooterError(f"truncated varint at byte {pos}")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7
        if shift > 70:
            raise FooterError(f"varint longer than 10 bytes at byte {pos}")


def zigzag(n: int) -> bytes:
    """``n`` as a thrift compact zigzag varint."""
    u = (n << 1) ^ (n >> 63)
    out = bytearray()
    while u >= 0x80:
        out.append((u & 0x7F) | 0x80)
        u >>= 7
    out.append(u)
    return bytes(out)


def unzigzag(u: int) -> int:
    return (u >> 1) ^ -(u & 1)


def _literal(pieces: list[bytes] | None, data: bytes | memoryview) -> None:
    if pieces is not None and data:
        pieces.append(re.escape(bytes(data)))


def skip_value(buf: Bytes, pos: int, ttype: int, pieces: list[bytes] | None = None) -> int:
    """The position after the thrift compact value of type ``ttype`` at ``pos``.

    With ``pieces``, appends a regular expression for the bytes skipped: literal bytes, except varints
    (any value), fixed-size values (any bytes) and binary contents (any bytes of the same length).
    """
    if ttype in (I16, I32, I64):
        end = read_varint(buf, pos)[1]
        if pieces is not None:
            pieces.append(_VARINT)
        return end
    if ttype in (BYTE, TRUE, FALSE):  # a byte, or a bool inside a list (one byte)
        if pieces is not None:
            pieces.append(b".")
        return pos + 1
    if ttype == DOUBLE:
        if pieces is not None:
            pieces.append(b".{8}")
        return pos + 8
    if ttype == BINARY:
        size, start = read_varint(buf, pos)
        _literal(pieces, buf[pos:start])
        if pieces is not None and size:
            pieces.append(b".{%d}" % size)
        return start + size
    if ttype in (LIST, SET):
        if pos >= len(buf):
            raise FooterError(f"truncated list at byte {pos}")
        header = buf[pos]
        size, elem, start = header >> 4, header & 0x0F, pos + 1
        if size == 15:
            size, start = read_varint(buf, start)
        _literal(pieces, buf[pos:start])
        for _ in range(size):
            start = skip_value(buf, start, elem, pieces)
        return start
    if ttype == MAP:
        size, start = read_varint(buf, pos)
        if size:
            kinds = buf[start]
            start += 1
        _literal(pieces, buf[pos:start])
        for _ in range(size):
            start = skip_value(buf, start, kinds >> 4, pieces)
            start = skip_value(buf, start, kinds & 0x0F, pieces)
        return start
    if ttype == STRUCT:
        return skip_struct(buf, pos, pieces)[0]
    raise FooterError(f"unknown thrift type {ttype} at byte {pos}")


def read_field_header(buf: Bytes, pos: int, last: int) -> tuple[int, int, int]:
    """``(field id, type, position of its value)`` of the field header at ``pos`` (type ``STOP``: the
    struct's end); ``last`` is the previous field's id in this struct."""
    if pos >= len(buf):
        raise FooterError(f"truncated struct at byte {pos}")
    header = buf[pos]
    if header == STOP:
        return 0, STOP, pos + 1
    delta, ttype = header >> 4, header & 0x0F
    if delta:
        return last + delta, ttype, pos + 1
    fid, start = read_varint(buf, pos + 1)
    return unzigzag(fid), ttype, start


def skip_struct(
    buf: Bytes, pos: int, pieces: list[bytes] | None = None, capture: int | None = None
) -> tuple[int, list[tuple[int, int, int, int]]]:
    """The position after the struct at ``pos``, and its fields as ``(id, type, value start, value end)``.

    With ``pieces`` and ``capture``, the value of field ``capture`` is the expression's group ``value``.
    """
    fields: list[tuple[int, int, int, int]] = []
    last = 0
    while True:
        fid, ttype, start = read_field_header(buf, pos, last)
        if ttype == STOP:
            _literal(pieces, buf[pos:start])
            return start, fields
        if pieces is not None:
            if ttype in (TRUE, FALSE) and start == pos + 1:  # a bool's value is its header's type
                pieces.append(b"[%s%s]" % (re.escape(bytes([buf[pos] & 0xF0 | TRUE])), re.escape(bytes([buf[pos] & 0xF0 | FALSE]))))
            else:
                _literal(pieces, buf[pos:start])
        if pieces is not None and fid == capture:
            pieces.append(b"(?P<value>")
        end = start if ttype in (TRUE, FALSE) else skip_value(buf, start, ttype, pieces)
        if pieces is not None and fid == capture:
            pieces.append(b")")
        fields.append((fid, ttype, start, end))
        last, pos = fid, end


def field_header(ttype: int, fid: int) -> bytes:
    """A field header in the long form (type, then the id as a zigzag varint), valid after any field."""
    return bytes([ttype]) + zigzag(fid)


def _compress(data: Bytes) -> bytes:
    return _ZSTD.compress(data, asbytes=True) if _ZSTD is not None else zlib.compress(data, 1)


def _decompress(data: bytes, size: int) -> bytes:
    return _ZSTD.decompress(data, size, asbytes=True) if _ZSTD is not None else zlib.decompress(data)


@dataclass(frozen=True, eq=False, repr=False)
class FooterIndex:
    """A data file's footer as what one row group needs: the other fields' bytes and each row group's.

    ``fields``: ``FileMetaData``'s fields other than ``num_rows`` and ``row_groups``, as ``(id, type,
    value bytes)``; ``offsets``: row group ``i``'s struct is bytes ``offsets[i]:offsets[i + 1]`` of the
    row groups' concatenation, kept as ``blocks`` of :data:`BLOCK` row groups, compressed.
    """

    fields: tuple[tuple[int, int, bytes], ...]
    offsets: np.ndarray
    rows: np.ndarray
    blocks: tuple[bytes, ...]
    footer_size: int = 0
    templates: int = 0  # shapes of row group seen (1 for a regular file)

    def __repr__(self) -> str:
        return (
            f"FooterIndex({self.num_row_groups:,} row groups, footer {self.footer_size:,} bytes, "
            f"kept in {self.nbytes():,} bytes, {self.templates} template(s))"
        )

    @property
    def num_row_groups(self) -> int:
        return len(self.offsets) - 1

    def nbytes(self) -> int:
        """Memory held (approximately): the offsets, the compressed blocks and the other fields."""
        return int(self.offsets.nbytes + self.rows.nbytes) + sum(map(len, self.blocks)) + sum(len(v) for _, _, v in self.fields)

    def row_group_bytes(self, i: int) -> bytes:
        """Row group ``i``'s ``RowGroup`` struct as stored in the footer."""
        if not 0 <= i < self.num_row_groups:
            raise IndexError(f"row group {i} of {self.num_row_groups}")
        b = i // BLOCK
        first, last = b * BLOCK, min((b + 1) * BLOCK, self.num_row_groups)
        block = _decompress(self.blocks[b], int(self.offsets[last] - self.offsets[first]))
        base = int(self.offsets[first])
        return block[int(self.offsets[i]) - base : int(self.offsets[i + 1]) - base]

    def row_group_footer(self, i: int) -> bytes:
        """A complete footer (thrift, length, ``PAR1``) of the same file listing only row group ``i``
        (as row group 0): parsed by pyarrow, it reads that row group from the original file."""
        group = self.row_group_bytes(i)  # checks i
        fields = b"".join(field_header(ttype, fid) + value for fid, ttype, value in self.fields)
        out = (
            fields  # long-form headers: valid in any order, so the rewritten fields simply follow
            + field_header(I64, NUM_ROWS) + zigzag(int(self.rows[i]))
            + field_header(LIST, ROW_GROUPS) + bytes([1 << 4 | STRUCT]) + group
            + b"\x00"
        )
        return out + len(out).to_bytes(4, "little") + _MAGIC


def _split_row_groups(buf: Bytes, pos: int) -> tuple[list[int], list[int], int]:
    """For the ``row_groups`` list at ``pos``: each row group's start (and the list's end as the last),
    each one's ``num_rows``, and how many templates it took."""
    header = buf[pos]
    size, elem, pos = header >> 4, header & 0x0F, pos + 1
    if size == 15:
        size, pos = read_varint(buf, pos)
    if size and elem != STRUCT:
        raise FooterError(f"row_groups is a list of type {elem}, not of structs")
    starts, rows = [pos], []  # type: list[int], list[int]
    templates: list[re.Pattern[bytes]] = []
    for _ in range(size):
        for k, template in enumerate(templates):
            m = template.match(buf, pos)
            if m is not None:
                pos, value = m.end(), m.start("value")
                if k:  # the template that matched last is tried first
                    templates.insert(0, templates.pop(k))
                break
        else:
            pieces: list[bytes] | None = [] if len(templates) < MAX_TEMPLATES else None
            start = pos
            pos, fields = skip_struct(buf, pos, pieces, capture=ROW_GROUP_NUM_ROWS)
            found = [f for f in fields if f[0] == ROW_GROUP_NUM_ROWS and f[1] == I64]
            if not found:
                raise FooterError(f"row group {len(rows)} (byte {start}) has no num_rows")
            value = found[0][2]
            if pieces is not None:
                templates.insert(0, re.compile(b"".join(pieces), re.DOTALL))
        rows.append(unzigzag(read_varint(buf, value)[0]))
        starts.append(pos)
    return starts, rows, len(templates)


def index_footer(footer: bytes) -> FooterIndex:
    """Index a footer as stored (thrift ``FileMetaData``, its length, ``PAR1``; :func:`footer_bytes`).

    Raises :class:`FooterError` if the bytes are not such a footer (an encrypted footer's magic is
    ``PARE``: not supported here).
    """
    if len(footer) < 8 or footer[-4:] != _MAGIC:
        raise FooterError("no PAR1 magic at the end of the file")
    size = int.from_bytes(footer[-8:-4], "little")
    if size + 8 != len(footer):
        raise FooterError(f"footer length {size} does not match the {len(footer) - 8} bytes read")
    buf = memoryview(footer)[:-8]  # slices of it copy nothing
    fields: list[tuple[int, int, bytes]] = []
    offsets: list[int] | None = None
    templates = 0
    pos, last = 0, 0
    while True:
        fid, ttype, start = read_field_header(buf, pos, last)
        if ttype == STOP:
            pos = start
            break
        if fid == ROW_GROUPS and ttype == LIST:
            starts, row_counts, templates = _split_row_groups(buf, start)
            first, end = starts[0], starts[-1]
            offsets = [s - first for s in starts]
            groups = buf[first:end]
        else:
            end = start if ttype in (TRUE, FALSE) else skip_value(buf, start, ttype)
            if fid != NUM_ROWS:
                fields.append((fid, ttype, bytes(buf[start:end])))
        last, pos = fid, end
    if pos != len(buf):
        raise FooterError(f"{len(buf) - pos} bytes after the footer's end")
    if offsets is None:
        raise FooterError("no row_groups field")
    array = np.asarray(offsets, dtype=np.int64)
    blocks = tuple(
        _compress(groups[array[b]: array[min(b + BLOCK, len(array) - 1)]]) for b in range(0, len(array) - 1, BLOCK)
    )
    rows = np.asarray(row_counts, dtype=np.int64)
    return FooterIndex(tuple(fields), array, rows, blocks, footer_size=len(footer), templates=templates)
