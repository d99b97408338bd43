"""ISO-BMFF (mp4) boxes: headers, children, full-box fields, and building boxes back.

An mp4 file is a sequence of boxes: a 32-bit big-endian size (1: a 64-bit size follows the type; 0: the
box runs to the end of the file), a four-character type, for ``uuid`` boxes a 16-byte user type, then
the payload. Container boxes (``moov``, ``trak``, ...) hold child boxes back to back. Only what the
sample-table index and the synthesized mp4 need is here; everything works on ``bytes`` in memory, the
ranged reads happen in :mod:`streamnodes.mp4.index`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

from streamnodes.errors import VideoDecodeError

# Largest possible box header: 8 bytes + 64-bit size + 16-byte uuid user type.
MAX_HEADER_SIZE = 32


class Mp4IndexError(VideoDecodeError):
    """An mp4 file cannot be indexed for byte-range reads (fragmented, missing or damaged sample tables).

    The caller falls back to downloading (or decoding) the whole file; the message says why the file
    cannot be indexed.
    """


@dataclass(frozen=True)
class BoxHeader:
    """One box's header: ``type`` (4 bytes), ``offset`` of its first byte, total ``size``, ``header_size``.

    ``offset`` is relative to whatever buffer or file the header was read from.
    """

    type: bytes
    offset: int
    size: int
    header_size: int

    @property
    def end(self) -> int:
        """Offset just past the box."""
        return self.offset + self.size

    @property
    def payload_offset(self) -> int:
        """Offset of the first payload byte (after size, type, large size and uuid user type)."""
        return self.offset + self.header_size

    @property
    def name(self) -> str:
        """The type as text, for messages."""
        return self.type.decode("latin-1")


def parse_header(
    data: bytes | memoryview, pos: int, *, base: int = 0, end_of_file: int | None = None
) -> BoxHeader | None:
    """The header of the box starting at ``data[pos]``, or ``None`` when ``data`` ends inside the header.

    ``base`` is the file offset of ``data[0]`` (so ``BoxHeader.offset = base + pos``); ``end_of_file``
    resolves size-0 boxes ("to the end of the file"); without it such a box raises.

    Raises:
        Mp4IndexError: a size smaller than the header, or a size-0 box without ``end_of_file``.
    """
    if len(data) - pos < 8:
        return None
    size, box_type = struct.unpack_from(">I4s", data, pos)
    header_size = 8
    if size == 1:
        if len(data) - pos < 16:
            return None
        (size,) = struct.unpack_from(">Q", data, pos + 8)
        header_size = 16
    elif size == 0:
        if end_of_file is None:
            raise Mp4IndexError(
                f"box {box_type!r} at offset {base + pos} has size 0 (runs to end of file) where that is not allowed"
            )
        size = end_of_file - (base + pos)
    if box_type == b"uuid":
        if len(data) - pos < header_size + 16:
            return None
        header_size += 16
    if size < header_size:
        raise Mp4IndexError(
            f"box {box_type!r} at offset {base + pos} has size {size}, smaller than its header"
        )
    return BoxHeader(box_type, base + pos, size, header_size)


def children(data: bytes | memoryview, start: int, end: int) -> Iterator[BoxHeader]:
    """The boxes back to back in ``data[start:end]`` (offsets relative to ``data``).

    Raises:
        Mp4IndexError: a box is cut off by ``end`` (a damaged or truncated container).
    """
    pos = start
    view = memoryview(data)[:end]  # no copy; headers cannot read past the container
    while pos < end:
        header = parse_header(view, pos)
        if header is None or header.end > end:
            raise Mp4IndexError(f"box at offset {pos} runs past its container (ends at {end})")
        yield header
        pos = header.end


def child_map(data: bytes | memoryview, parent: BoxHeader) -> dict[bytes, BoxHeader]:
    """``parent``'s children by type (the first one of each type)."""
    found: dict[bytes, BoxHeader] = {}
    for header in children(data, parent.payload_offset, parent.end):
        found.setdefault(header.type, header)
    return found


def full_box(data: bytes | memoryview, header: BoxHeader) -> tuple[int, int, int]:
    """A full box's ``(version, flags, offset of the fields after them)``."""
    if header.size - header.header_size < 4:
        raise Mp4IndexError(f"{header.name} box at offset {header.offset} is too short for a full box")
    word = struct.unpack_from(">I", data, header.payload_offset)[0]
    return word >> 24, word & 0xFFFFFF, header.payload_offset + 4


def make_box(box_type: bytes, payload: bytes) -> bytes:
    """A box of ``box_type`` around ``payload`` (64-bit size only when the 32-bit one cannot hold it)."""
    size = 8 + len(payload)
    if size < 2**32:
        return struct.pack(">I4s", size, box_type) + payload
    return struct.pack(">I4sQ", 1, box_type, size + 8) + payload


def make_full_box(box_type: bytes, version: int, flags: int, payload: bytes) -> bytes:
    """A full box: ``version`` and ``flags`` before ``payload``."""
    return make_box(box_type, struct.pack(">I", (version << 24) | flags) + payload)
