"""Early checks of the mp4 files the episodes table points to, run by ``open_dataset(check_files=True)``.

Without them a missing or cut mp4 is found by the first batch that needs it, inside a DataLoader
worker, possibly hours into training. Here, in the calling process and before any worker starts:

- **every file exists**. Local datasets: one ``os.scandir`` per video directory. Remote datasets whose
  file system lists directories (``hf://``, ``s3://``, ``memory://`` ...): one listing per directory.
  Plain HTTP(S) cannot list a directory (a request per file would cost a round trip each), so the
  check is skipped there and a missing file is found when the Prefetcher downloads it.
- **local files are whole** (remote files are not opened here, that would download them): the mp4's
  top-level boxes are walked (a few 16-byte reads per file, :func:`mp4_truncation`): a file cut
  inside its ``mdat`` or before its ``moov`` ends short of what its boxes declare. Then the container
  header is opened once with torchcodec (:func:`streamnodes.decoder_cache.open_video`), which finds a
  header it cannot parse and a stream with no usable frame rate, frame count or size. Measured on
  100 mp4s (32x32 AV1) on a shared 2-core machine: box walk 0.02-0.06 ms per file, torchcodec open
  plus metadata 0.3-0.9 ms per file (0.5-1 ms for a 4381-frame 640x480 file, with rare 5 ms outliers).
  LeRobot datasets hold a few hundred mp4s at most (files are ~200 MB each), so this costs well under a
  second. The header open cannot see a file cut inside the frame data when the index (``moov``) comes
  first, as in LeRobot's own files; the box walk does.

What neither finds (a damaged frame inside an intact file) is left to the decode nodes and to
``python -m streamnodes check ROOT``, which decodes the first and last frame of every episode.
"""

from __future__ import annotations

import functools
import logging
import os
import posixpath
import struct
from collections import defaultdict
from collections.abc import Iterable
from typing import TYPE_CHECKING, BinaryIO

from streamnodes.errors import DatasetFormatError, StreamNodesError, check_hint
from streamnodes.format.fs import fs_is_http, fs_is_local
from streamnodes.format.retry import with_retries

if TYPE_CHECKING:
    from streamnodes.format.metadata import DatasetMeta

log = logging.getLogger(__name__)

_MAX_NAMED = 5  # files named in one error; `streamnodes check` lists them all
_BOX_HEADER = struct.Struct(">I4s")
# Boxes an mp4 may start with; a file starting otherwise (an HTML error page saved as .mp4) gets no
# verdict from the box walk, and torchcodec's open reports it.
_FIRST_BOXES = frozenset({"ftyp", "styp", "moov", "mdat", "free", "skip", "wide", "pdin", "uuid", "junk"})


def video_uses(meta: DatasetMeta) -> dict[str, list[tuple[int, str]]]:
    """Each mp4 (relative path) -> the (episode_index, camera) pairs that read it, in episode order."""
    uses: dict[str, list[tuple[int, str]]] = defaultdict(list)
    table = meta.episodes  # read as columns: no EpisodeRef per episode (100k episodes in ~50 ms)
    if not table.cameras:
        return {}
    files = [table.video_file[k].tolist() for k in range(len(table.cameras))]
    for i, episode in enumerate(table.index.tolist()):
        for k, key in enumerate(table.cameras):
            uses[table.video_files[k][files[k][i]]].append((episode, key))
    return dict(uses)


def mp4_truncation(read_at, size: int) -> str | None:  # noqa: ANN001 - (offset, n) -> bytes
    """Why an mp4 of ``size`` bytes is cut short, from its top-level boxes, or ``None`` when it is whole.

    ``read_at(offset, n)`` returns up to ``n`` bytes at ``offset``. An empty file, a box that ends past
    the end of the file, or a file without a ``moov`` (index) or ``mdat`` (frames) box is cut short. A
    file that does not start like an mp4, or a header this walk cannot interpret (a size below 8
    bytes), gets no verdict (``None``): torchcodec's open decides.
    """
    if size == 0:
        return "the file is empty (0 bytes)"
    offset, seen = 0, set()
    while offset + _BOX_HEADER.size <= size:
        header = read_at(offset, 16)
        if len(header) < _BOX_HEADER.size:
            break
        box_size, kind = _BOX_HEADER.unpack_from(header)
        name = kind.decode("latin-1")
        if offset == 0 and name not in _FIRST_BOXES:
            return None
        if box_size == 1:  # 64-bit size follows the type
            if len(header) < 16:
                return f"the '{name}' box header at byte {offset} is cut"
            box_size = struct.unpack_from(">Q", header, 8)[0]
        elif box_size == 0:  # the box extends to the end of the file
            box_size = size - offset
        if box_size < _BOX_HEADER.size:
            return None
        if offset + box_size > size:
            return f"its '{name}' box spans bytes {offset}..{offset + box_size} but the file has {size} bytes"
        seen.add(name)
        offset += box_size
    missing = [name for name in ("moov", "mdat") if name not in seen]
    if missing:
        what = {"moov": "index", "mdat": "frame data"}
        return "it has no " + " and no ".join(f"'{m}' box ({what[m]})" for m in missing) + f" ({size} bytes)"
    return None


def check_video_files(meta: DatasetMeta) -> None:
    """Check that every mp4 of ``meta`` exists and, for local datasets, is whole (see the module doc).

    Raises one :class:`DatasetFormatError` for all the files found missing, else for the damaged files,
    naming the first file, the episodes and cameras that use it, how many more there are, the remedy
    and ``streamnodes check``. Its ``path``, ``episode_index`` and ``camera`` are the first file's.
    """
    uses = video_uses(meta)
    if not uses:
        return
    fs = meta.fs
    local = fs_is_local(fs)
    if not local and fs_is_http(fs):
        log.debug("%s: video files not listed (HTTP cannot list directories)", meta.root)
        return
    present = _present_files(meta, uses, local)
    if present is None:
        return
    missing = [path for path in uses if path not in present]
    if missing:
        raise _error(
            meta, missing, uses, "missing",
            "video file missing. Check the dataset root and that videos/ was downloaded completely (a partial "
            "download leaves mp4 files missing); restore or re-download the missing files.",
        )
    if local:
        _check_local_files(meta, uses, present)


def _present_files(meta: DatasetMeta, uses: dict[str, list], local: bool) -> dict[str, int | None] | None:
    """Relative path -> size in bytes (``None`` when the listing gives none) of every file found in the
    video directories, one listing per directory; ``None`` when the file system cannot list them."""
    present: dict[str, int | None] = {}
    for directory in sorted({posixpath.dirname(path) for path in uses}):
        url = meta.url(directory)
        try:
            if local:
                entries = {e.name: e.stat().st_size for e in os.scandir(url) if e.is_file()}
            else:
                listing = with_retries(functools.partial(meta.fs.ls, url, detail=True), what=url, remote=True, path=url)
                entries = {posixpath.basename(str(e["name"]).rstrip("/")): e.get("size") for e in listing
                           if e.get("type", "file") == "file"}
        except FileNotFoundError:
            entries = {}  # the whole directory is missing: every file in it is reported
        except NotImplementedError:
            log.debug("%s: the file system cannot list %s; video files not checked", meta.root, url)
            return None
        for name, size in entries.items():
            present[posixpath.join(directory, name)] = size
    return present


def _check_local_files(meta: DatasetMeta, uses: dict[str, list], sizes: dict[str, int | None]) -> None:
    """Box walk, then torchcodec's header, of each local mp4; one error for every damaged file."""
    from streamnodes.decoder_cache import open_video

    damaged: dict[str, str] = {}
    for path in uses:
        url = meta.url(path)
        known = sizes[path]
        size = known if known is not None else os.path.getsize(url)
        with open(url, "rb") as f:
            why = mp4_truncation(lambda offset, n, f=f: _read_at(f, offset, n), size)
        if why is not None:
            damaged[path] = f"truncated mp4: {why}. Re-download it (or re-encode it)."
            continue
        try:
            video = open_video(url)
        except StreamNodesError as e:
            damaged[path] = e.detail
        else:
            del video  # the decoder closes when dropped; workers open their own
    if damaged:
        first = next(iter(damaged))
        raise _error(meta, list(damaged), uses, "damaged", damaged[first])


def _read_at(f: BinaryIO, offset: int, n: int) -> bytes:
    f.seek(offset)
    return f.read(n)


def _error(
    meta: DatasetMeta,
    paths: list[str],
    uses: dict[str, list[tuple[int, str]]],
    label: str,
    what: str,
) -> DatasetFormatError:
    """The error for the video files ``paths``: the first one's ``what`` (ending with its remedy), the
    episodes and cameras that read it, the other files' names, and the ``streamnodes check`` hint."""
    first = paths[0]
    url = meta.url(first)
    episodes = sorted({e for e, _ in uses[first]})
    cameras = sorted({c for _, c in uses[first]})
    text = f"{url}: {what} Episodes using this file: {ranges(episodes)} (camera {', '.join(cameras)})."
    if len(paths) > 1:
        more = paths[1:]
        extra = f" and {len(more) - _MAX_NAMED} more" if len(more) > _MAX_NAMED else ""
        text += f" {len(more)} more video file(s) {label}: {', '.join(more[:_MAX_NAMED])}{extra}."
    text += f" {check_hint(meta.root)}"
    return DatasetFormatError(text, path=url, episode_index=episodes[0], camera=cameras[0])


def ranges(values: Iterable[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` -> ``"0-2, 5, 7-8"`` (pure)."""
    out: list[str] = []
    run: list[int] = []
    for v in sorted(set(values)):
        if run and v == run[-1] + 1:
            run.append(v)
            continue
        if run:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [v]
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ", ".join(out)


__all__ = ["check_video_files", "mp4_truncation", "ranges", "video_uses"]
