"""A small, self-contained mp4 holding one span's samples, for torchcodec's public ``VideoDecoder``.

The file is ``ftyp`` (the original's) + ``moov`` + ``mdat``. ``moov`` is the original one with only
the indexed video track, whose sample tables are rebuilt for the kept samples (``stts``, ``ctts``,
``stss``, ``stsz``, ``stsc``, ``stco``/``co64``; ``stsd`` and its codec configuration are copied), and
whose edit list keeps the ORIGINAL timeline: an empty edit as long as the first kept frame's
presentation time, then the kept media. So every kept frame has the same pts in the synthesized file
as in the original, and ``VideoDecoder(synthesize(...)).get_frames_played_at(t)`` answers the same
original timestamps ``t``. Frame numbers differ (the synthesized file starts at its first kept frame):
map them with :meth:`Span.synthesized_frame <streamnodes.mp4.spans.Span.synthesized_frame>`. The movie
timescale is set to the media timescale so that the empty edit is exact.

The synthesized ``stss`` lists only the random-access keyframes (``Mp4Index.random_access``): an
open-GOP I-frame stays a plain sample, so a decoder seeking in the small file never starts there (FFmpeg's
H.264 decoder drops frames when it does, and the small file has no later samples to recover with).

Sample-indexed boxes that would no longer match (``sdtp``, ``sbgp``/``sgpd``, ``subs``, ``cslg``,
``stps``) are dropped, and so are other tracks and ``tref``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence

import numpy as np

from streamnodes.mp4.boxes import BoxHeader, children, make_box, make_full_box, parse_header
from streamnodes.mp4.index import Mp4Index
from streamnodes.mp4.spans import Span, sample_bytes

_U32 = 2**32
_KEPT_STBL = (b"stsd",)  # copied as they are; every other stbl child is rebuilt or dropped


def synthesize(index: Mp4Index, span: Span, range_bytes: Sequence[bytes]) -> bytes:
    """A valid mp4 of ``span``'s samples, decodable alone, with the original pts of every kept frame.

    Args:
        index: the file's index (:func:`~streamnodes.mp4.index.read_index`).
        span: the samples to keep (:func:`~streamnodes.mp4.spans.episode_span`).
        range_bytes: the bytes of ``span.ranges``, in order (:func:`~streamnodes.mp4.spans.fetch_span`).

    Raises:
        VideoDecodeError: ``range_bytes`` does not match ``span.ranges``.
    """
    samples = sample_bytes(index, span, range_bytes)
    payload = b"".join(samples)
    ftyp = index.ftyp or b""
    mdat_header = 8 if 8 + len(payload) < _U32 else 16
    wide = len(ftyp) + len(index.moov) + 4096 + len(payload) >= _U32  # co64 when offsets may not fit 32 bits
    moov = _moov(index, span, base=0, wide=wide)  # the size does not depend on the offsets' values
    moov = _moov(index, span, base=len(ftyp) + len(moov) + mdat_header, wide=wide)
    return ftyp + moov + make_box(b"mdat", payload)


class _Timeline:
    """The kept samples' tables and the edit list that keeps their original presentation times."""

    def __init__(self, index: Mp4Index, span: Span) -> None:
        kept = span.samples
        self.sizes = index.sizes[kept]
        self.cts = index.cts[kept]
        self.has_ctts = index.has_ctts
        self.random_access = index.random_access[kept]
        self.descriptions = index.descriptions[kept]
        dts = index.dts[kept] - index.dts[kept[0]]
        self.durations = index.durations[kept]
        pts = index.pts[kept]
        self.media_time = int((dts + self.cts).min())  # the earliest kept composition time
        self.empty = int(pts.min())  # the first kept frame's original presentation time
        # The edit runs to the end of the last presented frame (at least 1 unit past its start).
        self.edit = int((pts + np.maximum(self.durations, 1)).max()) - self.empty
        self.media_duration = int(self.durations.sum())


def _moov(index: Mp4Index, span: Span, *, base: int, wide: bool) -> bytes:
    moov = index.moov
    timeline = _Timeline(index, span)
    total = timeline.empty + timeline.edit  # movie duration, in the media timescale
    root = parse_header(moov, 0)
    assert root is not None
    parts = []
    number = 0
    for box in children(moov, root.payload_offset, root.end):
        if box.type == b"trak":
            if number == index.track_number:
                parts.append(_trak(index, box, timeline, total, base, wide))
            number += 1
        elif box.type == b"mvhd":
            parts.append(_header_box(moov, box, timescale=index.timescale, duration=total))
        else:
            parts.append(moov[box.offset : box.end])
    return make_box(b"moov", b"".join(parts))


def _trak(index: Mp4Index, trak: BoxHeader, timeline: _Timeline, total: int, base: int, wide: bool) -> bytes:
    """The video ``trak`` with new durations, edit list and sample tables; ``tref`` dropped."""
    moov = index.moov

    def tkhd(box: BoxHeader) -> bytes:  # the new edts goes right after tkhd, the old one is dropped
        return _header_box(moov, box, duration=total) + _edts(timeline)

    def mdhd(box: BoxHeader) -> bytes:
        return _header_box(moov, box, duration=timeline.media_duration)

    def stbl(box: BoxHeader) -> bytes:
        return _stbl(moov, box, timeline, base, wide)

    def minf(box: BoxHeader) -> bytes:
        return _container(moov, box, {b"stbl": stbl})

    def mdia(box: BoxHeader) -> bytes:
        return _container(moov, box, {b"mdhd": mdhd, b"minf": minf})

    def drop(box: BoxHeader) -> bytes:
        return b""

    return _container(moov, trak, {b"tkhd": tkhd, b"edts": drop, b"tref": drop, b"mdia": mdia})


def _container(data: bytes, box: BoxHeader, replace: dict[bytes, Callable[[BoxHeader], bytes]]) -> bytes:
    """``box`` rebuilt with the children in ``replace`` (type -> function of the child header) replaced."""
    parts = []
    for child in children(data, box.payload_offset, box.end):
        parts.append(replace[child.type](child) if child.type in replace else data[child.offset : child.end])
    return make_box(box.type, b"".join(parts))


def _header_box(data: bytes, box: BoxHeader, *, duration: int, timescale: int | None = None) -> bytes:
    """``mvhd``, ``tkhd`` or ``mdhd`` with a new duration (and, for ``mvhd``, a new timescale).

    Layouts after version/flags: ``mvhd``/``mdhd`` creation, modification, timescale, duration;
    ``tkhd`` creation, modification, track_ID, reserved u32, duration. Times are 64-bit in version 1;
    the box is written as version 1 when a value needs it.
    """
    version = data[box.payload_offset]
    flags = data[box.payload_offset + 1 : box.payload_offset + 4]
    pos = box.payload_offset + 4
    track = box.type == b"tkhd"
    time = "Q" if version == 1 else "I"
    layout = f">{time}{time}I{'I' if track else ''}{time}"
    created, modified, middle, *reserved, _ = struct.unpack_from(layout, data, pos)
    rest = data[pos + struct.calcsize(layout) : box.end]
    if timescale is not None:
        middle = timescale
    wide = version == 1 or max(created, modified, duration) >= _U32
    time = "Q" if wide else "I"
    head = struct.pack(
        f">{time}{time}I{'I' if track else ''}{time}", created, modified, middle, *reserved, duration
    )
    return make_box(box.type, bytes([1 if wide else 0]) + bytes(flags) + head + bytes(rest))


def _edts(timeline: _Timeline) -> bytes:
    edits = []
    if timeline.empty:
        edits.append((timeline.empty, -1))
    edits.append((timeline.edit, timeline.media_time))
    wide = any(d >= _U32 or not -(2**31) <= t < 2**31 for d, t in edits)
    layout = ">Qqhh" if wide else ">Iihh"
    entries = b"".join(struct.pack(layout, duration, time, 1, 0) for duration, time in edits)
    elst = make_full_box(b"elst", 1 if wide else 0, 0, struct.pack(">I", len(edits)) + entries)
    return make_box(b"edts", elst)


def _runs(values: np.ndarray) -> list[tuple[int, int]]:
    """Run-length encoding: ``[(count, value), ...]``."""
    if len(values) == 0:
        return []
    breaks = np.flatnonzero(np.diff(values)) + 1
    starts = np.concatenate([[0], breaks])
    counts = np.diff(np.concatenate([starts, [len(values)]]))
    return [(int(c), int(values[s])) for c, s in zip(counts, starts, strict=True)]


def _table(box_type: bytes, rows: Sequence[tuple[int, ...]], layout: str, version: int = 0) -> bytes:
    body = b"".join(struct.pack(layout, *row) for row in rows)
    return make_full_box(box_type, version, 0, struct.pack(">I", len(rows)) + body)


def _stbl(moov: bytes, stbl: BoxHeader, timeline: _Timeline, base: int, wide: bool) -> bytes:
    kept = [
        moov[b.offset : b.end] for b in children(moov, stbl.payload_offset, stbl.end) if b.type in _KEPT_STBL
    ]
    tables = [_table(b"stts", _runs(timeline.durations), ">II")]
    if timeline.has_ctts:
        version = 1 if timeline.cts.min() < 0 else 0
        tables.append(_table(b"ctts", _runs(timeline.cts), ">Ii" if version else ">II", version))
    if not timeline.random_access.all():  # no stss: every sample is a sync sample
        tables.append(_table(b"stss", [(int(i) + 1,) for i in np.flatnonzero(timeline.random_access)], ">I"))
    sizes = timeline.sizes
    tables.append(
        make_full_box(b"stsz", 0, 0, struct.pack(">II", 0, len(sizes)) + sizes.astype(">u4").tobytes())
    )
    # One chunk per run of samples sharing an stsd entry; all chunks back to back in mdat.
    runs = _runs(timeline.descriptions)
    tables.append(
        _table(b"stsc", [(number + 1, count, sdi) for number, (count, sdi) in enumerate(runs)], ">III")
    )
    starts = np.concatenate([[0], np.cumsum([count for count, _ in runs])[:-1]]).astype(np.int64)
    before = np.concatenate([[0], np.cumsum(sizes)])  # bytes of the kept samples before sample i
    chunk_offsets = [(base + int(before[start]),) for start in starts]
    tables.append(_table(b"co64", chunk_offsets, ">Q") if wide else _table(b"stco", chunk_offsets, ">I"))
    return make_box(b"stbl", b"".join(kept + tables))
