"""Hand-built mp4 containers with chosen sample tables, for the index and span arithmetic tests.

The samples hold no video (sample ``i`` is ``size`` copies of byte ``i % 251``), so these files test the
container arithmetic only: decoding is tested on real files (test_synth.py). Boxes are framed here with
``struct`` directly, independently of :mod:`streamnodes.mp4.boxes`.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

CHUNK_GAP = 7  # bytes of padding between chunks in mdat, so chunks are not adjacent


def box(box_type: bytes, payload: bytes) -> bytes:
    return struct.pack(">I4s", 8 + len(payload), box_type) + payload


def full(box_type: bytes, version: int, payload: bytes, flags: int = 0) -> bytes:
    return box(box_type, struct.pack(">I", (version << 24) | flags) + payload)


def table(box_type: bytes, rows: Sequence[tuple[int, ...]], layout: str, version: int = 0) -> bytes:
    return full(
        box_type, version, struct.pack(">I", len(rows)) + b"".join(struct.pack(layout, *r) for r in rows)
    )


def sample_data(i: int, size: int) -> bytes:
    return bytes([i % 251]) * size


def fake_mp4(
    durations: Sequence[int],
    *,
    sizes: Sequence[int] | None = None,
    cts: Sequence[int] | None = None,
    sync: Sequence[int] | None = None,
    chunks: Sequence[int] | None = None,
    edits: Sequence[tuple[int, int]] | None = None,
    timescale: int = 1000,
    movie_timescale: int = 1000,
    co64: bool = False,
    stz2: bool = False,
    moov_first: bool = True,
    handler: bytes = b"vide",
    drop: Sequence[bytes] = (),
    mvex: bool = False,
) -> bytes:
    """An mp4 with one track whose tables are built from the arguments.

    Args:
        durations: stts, one decode duration per sample.
        sizes: sample sizes (default ``10 + i``).
        cts: ctts composition offsets per sample (``None``: no ctts box).
        sync: 0-based sync samples for stss (``None``: no stss box).
        chunks: samples per chunk (default: one chunk); chunks are ``CHUNK_GAP`` bytes apart in mdat.
        edits: elst entries ``(segment_duration, media_time)`` (``None``: no edts box).
        co64 / stz2: write co64 instead of stco, stz2 (8-bit sizes) instead of stsz.
        moov_first: moov before mdat (else after).
        handler: the track's hdlr handler type.
        drop: stbl box types to leave out (to make an unindexable file).
        mvex: add an mvex box to moov (a fragmented file's marker).
    """
    n = len(durations)
    sizes = list(sizes) if sizes is not None else [10 + i for i in range(n)]
    chunks = list(chunks) if chunks is not None else [n]
    assert sum(chunks) == n

    # mdat payload: chunks separated by CHUNK_GAP bytes of padding.
    payload = b""
    chunk_starts = []  # relative to the mdat payload
    sample = 0
    for count in chunks:
        chunk_starts.append(len(payload))
        for _ in range(count):
            payload += sample_data(sample, sizes[sample])
            sample += 1
        payload += b"\xee" * CHUNK_GAP

    def moov_bytes(payload_offset: int) -> bytes:
        stbl = [full(b"stsd", 0, struct.pack(">I", 0))]
        runs: list[list[int]] = []
        for d in durations:
            if runs and runs[-1][1] == d:
                runs[-1][0] += 1
            else:
                runs.append([1, d])
        stbl.append(table(b"stts", [tuple(r) for r in runs], ">II"))
        if cts is not None:
            version = 1 if min(cts) < 0 else 0
            stbl.append(table(b"ctts", [(1, c) for c in cts], ">Ii" if version else ">II", version))
        if sync is not None:
            stbl.append(table(b"stss", [(s + 1,) for s in sync], ">I"))
        if stz2:
            stbl.append(full(b"stz2", 0, struct.pack(">I", 8) + struct.pack(">I", n) + bytes(sizes)))
        else:
            stbl.append(
                full(b"stsz", 0, struct.pack(">II", 0, n) + b"".join(struct.pack(">I", s) for s in sizes))
            )
        stbl.append(table(b"stsc", [(i + 1, c, 1) for i, c in enumerate(chunks)], ">III"))
        offsets = [(payload_offset + s,) for s in chunk_starts]
        stbl.append(table(b"co64", offsets, ">Q") if co64 else table(b"stco", offsets, ">I"))
        stbl_boxes = [b for b in stbl if b[4:8] not in drop]
        mdhd = full(b"mdhd", 0, struct.pack(">IIII", 0, 0, timescale, sum(durations)) + b"\0" * 4)
        hdlr = full(b"hdlr", 0, struct.pack(">I4s", 0, handler) + b"\0" * 12 + b"fake\0")
        minf = box(b"minf", box(b"stbl", b"".join(stbl_boxes)))
        trak = [full(b"tkhd", 0, struct.pack(">IIIII", 0, 0, 1, 0, 0) + b"\0" * 60, flags=3)]
        if edits is not None:
            trak.append(box(b"edts", table(b"elst", [(d, t, 1, 0) for d, t in edits], ">Iihh")))
        trak.append(box(b"mdia", mdhd + hdlr + minf))
        mvhd = full(b"mvhd", 0, struct.pack(">IIII", 0, 0, movie_timescale, 0) + b"\0" * 80)
        extra = box(b"mvex", b"") if mvex else b""
        return box(b"moov", mvhd + box(b"trak", b"".join(trak)) + extra)

    ftyp = box(b"ftyp", b"isom\0\0\2\0isomiso2mp41")
    mdat_header = 8
    if moov_first:
        size = len(moov_bytes(0))
        return ftyp + moov_bytes(len(ftyp) + size + mdat_header) + box(b"mdat", payload)
    return ftyp + box(b"mdat", payload) + moov_bytes(len(ftyp) + mdat_header)
