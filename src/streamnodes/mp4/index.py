"""The sample index of an mp4's first video track, read with a few ranged reads.

:func:`read_index` walks the top-level box headers (``ftyp``, ``mdat``, ``moov``, ... whether ``moov``
is at the front or the end), reads ``moov`` whole, and turns the first video track's sample tables
(``stts``, ``ctts``, ``stsc``, ``stsz``/``stz2``, ``stco``/``co64``, ``stss``, and the ``elst`` edit
list) into per-sample numpy arrays: where each sample's bytes are, its decode and presentation time,
whether it is a keyframe. Frames are numbered in presentation order (ascending pts), as torchcodec
numbers them; for a constant-rate LeRobot video that is ``round(pts_seconds * fps)``.

Files the index cannot describe exactly raise :class:`~streamnodes.mp4.boxes.Mp4IndexError` so the
caller can fall back to the whole file: fragmented mp4 (``moof``/``mvex``), no ``moov`` or no video
track, missing or inconsistent tables, edit lists other than one plain edit (optionally after an empty
one), samples that the edit list would hide, and tables pointing past the end of the file.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from streamnodes.mp4.boxes import (
    MAX_HEADER_SIZE,
    BoxHeader,
    Mp4IndexError,
    child_map,
    children,
    full_box,
    parse_header,
)

logger = logging.getLogger(__name__)

ReadRange = Callable[[int, int], bytes]
"""``read_range(offset, length) -> bytes``: exactly ``length`` bytes of the file from ``offset``."""

DEFAULT_PROBE_SIZE = 64 * 1024  # first read: ftyp, a front moov of short videos, the mdat header


@dataclass(frozen=True, eq=False)
class Mp4Index:
    """One video track's samples, in decode order, plus the raw boxes needed to synthesize a file.

    Per-sample arrays (length ``num_samples``, decode order, int64 unless noted):
        offsets, sizes: where the sample's bytes are in the file.
        durations: decode duration (``stts``), in ``timescale`` units.
        dts: decode time, ``cumsum(durations)`` starting at 0.
        cts: composition offset (``ctts``; zeros without one).
        pts: presentation time as FFmpeg reports it: ``dts + cts - media_time + empty_duration``.
        keyframes (bool): sync samples (``stss``; all samples without one).
        random_access (bool): keyframes where decoding can start: no later sample (decode order) is
            presented before them. An open-GOP I-frame has leading B-frames after it that are
            presented before it and reference the previous GOP; FFmpeg's H.264 decoder starting there
            drops frames (not only the leading ones), so such keyframes are not starting points.
        descriptions (int64): 1-based ``stsd`` entry of each sample (from ``stsc``).

    Frame arrays (length ``num_frames``, presentation order):
        presentation: the sample index of frame ``i``.

    Other fields: ``size`` (file bytes), ``ftyp`` (the raw box or ``None``), ``moov`` (the raw box),
    ``moov_offset``, ``track_number`` (position of the video ``trak`` among ``moov``'s ``trak`` boxes),
    ``timescale`` (media, ``mdhd``), ``movie_timescale`` (``mvhd``), ``media_time`` and
    ``empty_duration`` (the edit list, both in ``timescale`` units), ``has_ctts``, ``has_stss``.
    """

    size: int
    ftyp: bytes | None
    moov: bytes
    moov_offset: int
    track_number: int
    timescale: int
    movie_timescale: int
    media_time: int
    empty_duration: int
    has_ctts: bool
    has_stss: bool
    offsets: np.ndarray
    sizes: np.ndarray
    durations: np.ndarray
    dts: np.ndarray
    cts: np.ndarray
    pts: np.ndarray
    keyframes: np.ndarray
    random_access: np.ndarray
    descriptions: np.ndarray
    presentation: np.ndarray

    @property
    def num_samples(self) -> int:
        return int(self.sizes.shape[0])

    @property
    def num_frames(self) -> int:
        """Frames torchcodec sees: one per sample."""
        return self.num_samples

    @property
    def frame_pts_seconds(self) -> np.ndarray:
        """Presentation time of frame ``i`` (presentation order) in seconds, float64."""
        return self.pts[self.presentation] / self.timescale

    @property
    def frame_of_sample(self) -> np.ndarray:
        """Frame (presentation) index of each sample (decode order): the inverse of ``presentation``."""
        inverse = np.empty_like(self.presentation)
        inverse[self.presentation] = np.arange(self.num_samples)
        return inverse


def read_index(
    read_range: ReadRange, size: int, *, probe_size: int = DEFAULT_PROBE_SIZE, name: str | None = None
) -> Mp4Index:
    """Index the first video track of the mp4 of ``size`` bytes that ``read_range`` reads.

    Reads: one ``probe_size`` read at offset 0, one header-sized probe after each top-level box that
    reaches past what was read (typically the one ``mdat``), and one read of the rest of ``moov`` if the
    probe did not hold it all. So a file with ``moov`` at the front costs 1-2 reads, one with ``moov``
    after ``mdat`` 2-3 reads, whatever its length. The index is a pure value: cache it per file.

    Args:
        read_range: ``read_range(offset, length)`` returns exactly ``length`` bytes from ``offset``.
        size: the file's size in bytes.
        probe_size: bytes read at each probe (at least 32).
        name: the file's path or URL, for error messages and the error's ``path``.

    Raises:
        Mp4IndexError: the file cannot be indexed (the message says why); fall back to the whole file.
    """
    try:
        ftyp, moov, moov_offset = _read_top_level(read_range, size, max(probe_size, MAX_HEADER_SIZE))
        index = _parse_moov(ftyp, moov, moov_offset, size)
    except Mp4IndexError as error:
        if name is not None:
            error.args = (f"{name}: {error.args[0]}",)
            error.with_context(path=name)
        raise
    logger.debug(
        "indexed %s: %d samples, moov %d bytes at %d", name, index.num_samples, len(moov), moov_offset
    )
    return index


def _read_top_level(read_range: ReadRange, size: int, probe_size: int) -> tuple[bytes | None, bytes, int]:
    """Walk the top-level boxes until ``moov``; return ``(ftyp bytes or None, moov bytes, moov offset)``."""
    buffer, buffer_start = b"", 0
    ftyp: bytes | None = None
    pos = 0
    while pos < size:
        header = None
        if buffer_start <= pos < buffer_start + len(buffer):
            header = parse_header(buffer, pos - buffer_start, base=buffer_start, end_of_file=size)
        if header is None:  # the header is not (all) in the buffer: probe from here
            buffer, buffer_start = _read(read_range, pos, min(probe_size, size - pos)), pos
            header = parse_header(buffer, 0, base=pos, end_of_file=size)
        if header is None:
            raise Mp4IndexError(f"the file ends inside a box header at offset {pos} (truncated file?)")
        if header.end > size:
            raise Mp4IndexError(
                f"box {header.name!r} at offset {pos} ends at {header.end}, past the end of the file ({size} bytes): truncated file"
            )
        if header.type in (b"moof", b"mfra", b"sidx", b"styp"):
            raise Mp4IndexError(
                f"fragmented mp4 (top-level {header.name!r} box): its samples are not in moov's sample tables"
            )
        if header.type in (b"ftyp", b"moov"):
            data = _box_bytes(read_range, header, buffer, buffer_start)
            if header.type == b"moov":
                return ftyp, data, header.offset
            ftyp = data
        pos = header.end
    raise Mp4IndexError("no moov box: not an mp4 file, or a truncated one")


def _box_bytes(read_range: ReadRange, header: BoxHeader, buffer: bytes, buffer_start: int) -> bytes:
    start = header.offset - buffer_start
    have = buffer[start : start + header.size]
    if len(have) == header.size:
        return have
    return have + _read(read_range, header.offset + len(have), header.size - len(have))


def _read(read_range: ReadRange, offset: int, length: int) -> bytes:
    data = read_range(offset, length)
    if len(data) != length:
        raise Mp4IndexError(
            f"read of {length} bytes at offset {offset} returned {len(data)} bytes (truncated file?)"
        )
    return bytes(data)


def _parse_moov(ftyp: bytes | None, moov: bytes, moov_offset: int, size: int) -> Mp4Index:
    root = parse_header(moov, 0)
    assert root is not None
    boxes = child_map(moov, root)
    if b"mvex" in boxes:
        raise Mp4IndexError("fragmented mp4 (moov holds an mvex box): its samples are in moof fragments")
    if b"mvhd" not in boxes:
        raise Mp4IndexError("moov has no mvhd box")
    movie_timescale = _timescale(moov, boxes[b"mvhd"])
    traks = [h for h in children(moov, root.payload_offset, root.end) if h.type == b"trak"]
    for number, trak in enumerate(traks):
        parts = child_map(moov, trak)
        mdia = parts.get(b"mdia")
        if mdia is None:
            continue
        media = child_map(moov, mdia)
        hdlr = media.get(b"hdlr")
        if hdlr is None or moov[hdlr.payload_offset + 8 : hdlr.payload_offset + 12] != b"vide":
            continue
        return _parse_track(ftyp, moov, moov_offset, size, number, parts, media, movie_timescale)
    raise Mp4IndexError("no video track in moov")


def _timescale(data: bytes, header: BoxHeader) -> int:
    """Timescale of an ``mvhd`` or ``mdhd`` box."""
    version, _, pos = full_box(data, header)
    (timescale,) = struct.unpack_from(">I", data, pos + (16 if version == 1 else 8))
    if timescale == 0:
        raise Mp4IndexError(f"{header.name} has timescale 0")
    return int(timescale)


def _require(boxes: dict[bytes, BoxHeader], box_type: bytes, where: str) -> BoxHeader:
    if box_type not in boxes:
        raise Mp4IndexError(f"the video track has no {box_type.decode()} box in {where}")
    return boxes[box_type]


def _entries(data: bytes, header: BoxHeader, fields: str, skip: int = 0) -> tuple[int, int, np.ndarray]:
    """A table box's entries as an ``[count, len(fields)]`` array; also ``(version, flags)``.

    ``fields`` is a numpy-free struct spec per entry (``I`` u32, ``i`` i32, ``Q`` u64, ``q`` i64); ``skip``
    bytes follow version/flags before the entry count.
    """
    version, flags, pos = full_box(data, header)
    pos += skip
    if pos + 4 > header.end:
        raise Mp4IndexError(f"{header.name} box at offset {header.offset} is too short")
    (count,) = struct.unpack_from(">I", data, pos)
    dtype = np.dtype(
        [(f"f{i}", ">" + {"I": "u4", "i": "i4", "Q": "u8", "q": "i8"}[c]) for i, c in enumerate(fields)]
    )
    if pos + 4 + count * dtype.itemsize > header.end:
        raise Mp4IndexError(
            f"{header.name} box at offset {header.offset} holds fewer than its {count} entries"
        )
    table = np.frombuffer(data, dtype=dtype, count=count, offset=pos + 4)
    columns = (
        np.stack([table[f"f{i}"].astype(np.int64) for i in range(len(fields))], axis=1)
        if count
        else np.zeros((0, len(fields)), np.int64)
    )
    return version, flags, columns


def _sample_sizes(moov: bytes, stbl: dict[bytes, BoxHeader]) -> np.ndarray:
    if b"stsz" in stbl:
        header = stbl[b"stsz"]
        _, _, pos = full_box(moov, header)
        constant, count = struct.unpack_from(">II", moov, pos)
        if constant:
            return np.full(count, constant, dtype=np.int64)
        if pos + 8 + 4 * count > header.end:
            raise Mp4IndexError("stsz holds fewer sizes than its sample count")
        return np.frombuffer(moov, dtype=">u4", count=count, offset=pos + 8).astype(np.int64)
    if b"stz2" in stbl:
        header = stbl[b"stz2"]
        _, _, pos = full_box(moov, header)
        field_size = moov[pos + 3]
        (count,) = struct.unpack_from(">I", moov, pos + 4)
        if field_size not in (4, 8, 16):
            raise Mp4IndexError(f"stz2 field size {field_size} is not 4, 8 or 16")
        nbytes = (count * field_size + 7) // 8
        if pos + 8 + nbytes > header.end:
            raise Mp4IndexError("stz2 holds fewer sizes than its sample count")
        if field_size == 16:
            return np.frombuffer(moov, dtype=">u2", count=count, offset=pos + 8).astype(np.int64)
        raw = np.frombuffer(moov, dtype=np.uint8, count=nbytes, offset=pos + 8).astype(np.int64)
        if field_size == 8:
            return raw
        return np.stack([raw >> 4, raw & 15], axis=1).reshape(-1)[:count]
    raise Mp4IndexError("the video track has no stsz or stz2 box (sample sizes)")


def _parse_track(
    ftyp: bytes | None,
    moov: bytes,
    moov_offset: int,
    size: int,
    number: int,
    trak: dict[bytes, BoxHeader],
    mdia: dict[bytes, BoxHeader],
    movie_timescale: int,
) -> Mp4Index:
    timescale = _timescale(moov, _require(mdia, b"mdhd", "mdia"))
    minf = child_map(moov, _require(mdia, b"minf", "mdia"))
    stbl = child_map(moov, _require(minf, b"stbl", "minf"))
    _require(stbl, b"stsd", "stbl")
    sizes = _sample_sizes(moov, stbl)
    n = sizes.shape[0]
    if n == 0:
        raise Mp4IndexError("the video track has no samples")

    _, _, stts = _entries(moov, _require(stbl, b"stts", "stbl"), "II")
    durations = np.repeat(stts[:, 1], stts[:, 0])
    if durations.shape[0] != n:
        raise Mp4IndexError(f"stts describes {durations.shape[0]} samples, stsz {n}")
    dts = np.concatenate([[0], np.cumsum(durations)[:-1]]).astype(np.int64)

    has_ctts = b"ctts" in stbl
    cts = np.zeros(n, dtype=np.int64)
    if has_ctts:
        # FFmpeg reads ctts offsets as signed whatever the box version; so do we.
        _, _, ctts = _entries(moov, stbl[b"ctts"], "Ii")
        cts = np.repeat(ctts[:, 1], ctts[:, 0])
        if cts.shape[0] != n:
            raise Mp4IndexError(f"ctts describes {cts.shape[0]} samples, stsz {n}")

    if b"stco" in stbl:
        _, _, chunk_table = _entries(moov, stbl[b"stco"], "I")
    elif b"co64" in stbl:
        _, _, chunk_table = _entries(moov, stbl[b"co64"], "Q")
    else:
        raise Mp4IndexError("the video track has no stco or co64 box (chunk offsets)")
    chunk_offsets = chunk_table[:, 0]
    _, _, stsc = _entries(moov, _require(stbl, b"stsc", "stbl"), "III")
    offsets, descriptions = _sample_offsets(stsc, chunk_offsets, sizes)
    if int((offsets + sizes).max()) > size or int(offsets.min()) < 0:
        raise Mp4IndexError(
            f"the sample tables point past the end of the file ({size} bytes): truncated file"
        )

    has_stss = b"stss" in stbl
    keyframes = np.ones(n, dtype=bool)
    if has_stss:
        _, _, stss = _entries(moov, stbl[b"stss"], "I")
        keyframes[:] = False
        numbers = stss[:, 0]
        if numbers.size and (numbers.min() < 1 or numbers.max() > n):
            raise Mp4IndexError(f"stss names samples outside 1..{n}")
        keyframes[numbers - 1] = True
    if not keyframes[0]:
        raise Mp4IndexError("the first sample is not a keyframe")

    media_time, empty_duration, edit_duration = _edit_list(moov, trak, timescale, movie_timescale)
    composition = dts + cts
    if int(composition.min()) < media_time or (
        edit_duration and int(composition.max()) >= media_time + edit_duration
    ):
        raise Mp4IndexError(
            f"the edit list shows media times [{media_time}, {media_time + edit_duration}) only, and some "
            f"samples are presented outside it (times {int(composition.min())}..{int(composition.max())}): "
            "FFmpeg would hide those frames"
        )
    pts = composition - media_time + empty_duration
    later_min = np.minimum.accumulate(pts[::-1])[::-1]  # smallest pts at or after each sample
    random_access = keyframes & (pts == later_min)
    presentation = np.argsort(pts, kind="stable")
    if np.any(np.diff(pts[presentation]) == 0):
        raise Mp4IndexError("two samples have the same presentation time: frame order is ambiguous")
    return Mp4Index(
        size=size, ftyp=ftyp, moov=moov, moov_offset=moov_offset, track_number=number,
        timescale=timescale, movie_timescale=movie_timescale, media_time=media_time,
        empty_duration=empty_duration, has_ctts=has_ctts, has_stss=has_stss, offsets=offsets,
        sizes=sizes, durations=durations.astype(np.int64), dts=dts, cts=cts, pts=pts,
        keyframes=keyframes, random_access=random_access, descriptions=descriptions, presentation=presentation,
    )  # fmt: skip


def _sample_offsets(
    stsc: np.ndarray, chunk_offsets: np.ndarray, sizes: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Each sample's file offset and ``stsd`` entry from ``stsc`` runs, chunk offsets and sample sizes."""
    n_chunks = chunk_offsets.shape[0]
    if stsc.shape[0] == 0 or n_chunks == 0:
        raise Mp4IndexError("stsc or the chunk offset table is empty")
    first = stsc[:, 0]
    if first[0] != 1 or np.any(np.diff(first) <= 0) or first[-1] > n_chunks:
        raise Mp4IndexError("stsc's first-chunk numbers are not increasing from 1 within the chunk count")
    run_lengths = np.diff(np.concatenate([first, [n_chunks + 1]]))
    per_chunk = np.repeat(stsc[:, 1], run_lengths)
    description = np.repeat(stsc[:, 2], run_lengths)
    if int(per_chunk.sum()) != sizes.shape[0]:
        raise Mp4IndexError(
            f"stsc places {int(per_chunk.sum())} samples in chunks, stsz has {sizes.shape[0]}"
        )
    chunk_of_sample = np.repeat(np.arange(n_chunks), per_chunk)
    before = np.concatenate([[0], np.cumsum(sizes)])  # bytes of all samples before sample i
    first_sample = np.concatenate([[0], np.cumsum(per_chunk)[:-1]])[chunk_of_sample]
    offsets = chunk_offsets[chunk_of_sample] + before[:-1] - before[first_sample]
    return offsets.astype(np.int64), description[chunk_of_sample].astype(np.int64)


def _edit_list(
    moov: bytes, trak: dict[bytes, BoxHeader], timescale: int, movie_timescale: int
) -> tuple[int, int, int]:
    """``(media_time, empty_duration, edit_duration)`` in media units from ``edts/elst``; zeros without one.

    ``edit_duration`` 0 means "no end" (no edit, or an edit of duration 0).

    Supported: at most one empty edit (``media_time == -1``) followed by one normal edit at rate 1.
    """
    if b"edts" not in trak:
        return 0, 0, 0
    elst = child_map(moov, trak[b"edts"]).get(b"elst")
    if elst is None:
        return 0, 0, 0
    version, _, pos = full_box(moov, elst)
    (count,) = struct.unpack_from(">I", moov, pos)
    layout = ">Qqhh" if version == 1 else ">Iihh"
    step = struct.calcsize(layout)
    if pos + 4 + count * step > elst.end:
        raise Mp4IndexError("elst holds fewer edits than its count")
    edits = [struct.unpack_from(layout, moov, pos + 4 + i * step) for i in range(count)]
    empty = 0
    if edits and edits[0][1] == -1:
        empty = round(edits[0][0] * timescale / movie_timescale)
        edits = edits[1:]
    if not edits:
        return 0, empty, 0
    if len(edits) > 1 or edits[0][2] != 1 or edits[0][3] != 0 or edits[0][1] < 0:
        raise Mp4IndexError(f"edit list {edits!r} is not a single plain edit: frames may be cut or repeated")
    duration = -(-int(edits[0][0]) * timescale // movie_timescale)  # media units, rounded up
    return int(edits[0][1]), int(empty), duration
