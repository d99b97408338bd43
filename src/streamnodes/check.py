"""``streamnodes check``: validate a LeRobot v3.0 dataset end to end and report every problem found.

:func:`check_dataset` runs the format layer's checks without stopping at the first failure:

1. metadata (:func:`~streamnodes.format.open_dataset` without the file checks): ``meta/info.json``,
   the episodes table, ``meta/tasks.parquet``, totals and index ranges. When this fails there is no
   episode list to check the rest against, so the report holds that one problem;
2. every data file's parquet footer, one file at a time
   (:func:`~streamnodes.format.validate.check_data_file`): readable, every feature column present,
   one row group per episode with the episode's row count and global index range;
3. each episode's row group, read once (:func:`~streamnodes.format.read_episode_columns`): the
   ``timestamp`` column when decoding (needed for step 4; ``index`` is read and checked alongside),
   every column with ``read_rows=True``. Checks row count and index range against the episodes table
   and finds damaged data pages;
4. per camera, the first and the last frame of every episode, decoded by the loader's own
   :func:`~streamnodes.nodes.video_decode.decode_query` (docs/video.md, "The decode path"): in-file time
   ``t = from_timestamp + timestamp[row]``, frame index ``round(t * fps)`` which must be below the
   file's frame count, torchcodec ``get_frames_at``, and ``|pts - t| <= tolerance_s``. Each mp4 is
   opened once for all its episodes (again after a decode failure).

Every failure becomes a :class:`Problem` (file, episode, message with the remedy) and the run goes on.
File, episode and camera come from the errors' attributes (:class:`~streamnodes.errors.StreamNodesError`).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from streamnodes.errors import StreamNodesError, VideoDecodeError, short_text
from streamnodes.format import ParquetFileCache, open_dataset, read_episode_columns
from streamnodes.format.fs import relative_to, url_to_fs
from streamnodes.format.hub import resolve_root
from streamnodes.format.validate import check_data_file
from streamnodes.format.video_files import ranges
from streamnodes.types import VideoQuery

if TYPE_CHECKING:
    from streamnodes.format import DatasetMeta, EpisodeRef

log = logging.getLogger(__name__)

DEFAULT_TOLERANCE_S = 1e-4
# Errors a damaged file can raise from pyarrow, fsspec or torchcodec besides our own types.
_FILE_ERRORS = (StreamNodesError, OSError, pa.ArrowException, RuntimeError, ValueError, IndexError)
_MAX_PROBLEMS_SHOWN_PER_FILE = 5


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with the dataset: the file (relative to the root), the episode, what and the remedy."""

    file: str
    episode: int | None
    message: str

    def __str__(self) -> str:
        where = self.file if self.episode is None else f"{self.file} (episode {self.episode})"
        return f"{where}: {self.message}"


@dataclass
class CheckReport:
    """What :func:`check_dataset` found. ``ok`` when ``problems`` is empty; ``format()`` is the text report."""

    root: str
    problems: list[Problem] = field(default_factory=list)
    episodes: int = 0
    frames: int = 0
    data_files: int = 0
    video_files: int = 0
    cameras: tuple[str, ...] = ()
    fps: int | None = None
    episodes_read: int = 0  # episodes whose row group was read and matched the episodes table
    rows_read: int = 0  # data rows in those row groups
    columns_read: tuple[str, ...] = ()  # the columns read from each episode's row group
    read_all_columns: bool = False  # read_rows=True: every column was read
    episodes_not_read: int = 0  # episodes skipped because their data file's footer has a problem
    frames_decoded: int = 0
    decoded: bool = True  # False with decode=False: videos not checked
    metadata_ok: bool = False
    tolerance_s: float = DEFAULT_TOLERANCE_S

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, file: str, episode: int | None, message: str) -> None:
        problem = Problem(file, episode, short_text(message, limit=None))  # one line (pyarrow's span several)
        log.debug("problem: %s", problem)
        self.problems.append(problem)

    def format(self) -> str:
        """A readable report: what was checked, then the problems grouped by file, then the verdict."""
        lines = [f"streamnodes check {self.root}"]
        if self.metadata_ok:
            cams = ", ".join(self.cameras) if self.cameras else "none"
            lines.append(
                f"  dataset: LeRobot v3.0, {self.episodes} episodes, {self.frames} frames, "
                f"fps {self.fps}, cameras: {cams}"
            )
            lines.append(f"  data files: {self.data_files} checked (footers)")
            if self.columns_read and (self.episodes_read or not self.episodes_not_read):
                columns = "all columns" if self.read_all_columns else ", ".join(self.columns_read)
                lines.append(
                    f"  episode rows: {self.episodes_read} episodes, {self.rows_read} rows read ({columns})"
                )
            if self.episodes_not_read:
                nominal = (
                    " (videos checked at the nominal timestamps frame_index / fps)" if self.decoded else ""
                )
                lines.append(
                    f"  episode rows: {_plural(self.episodes_not_read, 'episode')} not read, their data file "
                    f"has a problem{nominal}"
                )
            if not self.cameras:
                lines.append("  video files: none (the dataset has no cameras)")
            elif self.decoded:
                lines.append(
                    f"  video files: {self.video_files} checked, {self.frames_decoded} frames decoded "
                    f"(first and last of each episode and camera, tolerance {self.tolerance_s:g} s)"
                )
            else:
                lines.append(f"  video files: {self.video_files} not checked (--no-decode)")
        if self.ok:
            lines.append("OK: no problems found.")
            return "\n".join(lines)
        by_file: dict[str, list[Problem]] = defaultdict(list)
        for problem in self.problems:
            by_file[problem.file].append(problem)
        problems_text = _plural(len(self.problems), "problem")
        lines.append("")
        lines.append(f"{problems_text} in {_plural(len(by_file), 'file')}:")
        for file, problems in by_file.items():
            lines.append(f"- {file}")
            for problem in problems[:_MAX_PROBLEMS_SHOWN_PER_FILE]:
                where = "" if problem.episode is None else f"episode {problem.episode}: "
                lines.append(f"    {where}{problem.message}")
            hidden = len(problems) - _MAX_PROBLEMS_SHOWN_PER_FILE
            if hidden > 0:
                episodes = [
                    p.episode for p in problems[_MAX_PROBLEMS_SHOWN_PER_FILE:] if p.episode is not None
                ]
                lines.append(f"  ... and {hidden} more in this file (episodes {_ranges(episodes)})")
        lines.append(f"FAILED: {problems_text}.")
        return "\n".join(lines)


def check_dataset(
    root: str | Any,
    *,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    decode: bool = True,
    read_rows: bool = False,
    progress: bool = True,
) -> CheckReport:
    """Check the dataset at ``root`` (local path or fsspec URL) and return every problem found.

    Args:
        tolerance_s: largest allowed ``|pts - t|`` between a requested and a decoded frame (LeRobot: 1e-4).
        decode: decode the first and last frame of each episode of each camera (needs the ``timestamp``
            column of each episode's row group, which is read for that).
        read_rows: read every column of every episode's row group (finds damaged data pages), not
            just the ``timestamp`` column needed to decode.
        progress: show a tqdm bar on stderr (only when stderr is a terminal).

    Never raises for problems in the dataset; they are in ``report.problems``.
    """
    if not tolerance_s >= 0:
        raise ValueError(f"tolerance_s must be >= 0 seconds, got {tolerance_s}")
    root = resolve_root(str(root))  # a Hub id ("lerobot/pusht") is read from the Hub, as open_dataset does
    report = CheckReport(root=root, decoded=decode, tolerance_s=float(tolerance_s))
    root_path = url_to_fs(root)[1]
    try:
        meta = open_dataset(root, check_files=False)
    except _FILE_ERRORS as e:
        file, message = _metadata_problem(root_path, e)
        report.add(file, None, message)
        return report
    report.metadata_ok = True
    report.episodes = meta.total_episodes
    report.frames = meta.total_frames
    report.cameras = meta.video_keys
    report.fps = meta.fps

    by_data_file: dict[str, list[EpisodeRef]] = defaultdict(list)
    for ep in meta.episodes:
        by_data_file[ep.data_path].append(ep)
    by_video_file: dict[str, list[tuple[EpisodeRef, str]]] = defaultdict(list)
    for ep in meta.episodes:
        for segment in ep.videos:
            by_video_file[segment.path].append((ep, segment.key))
    report.data_files = len(by_data_file)
    report.video_files = len(by_video_file)
    read_episodes = read_rows or (decode and bool(meta.video_keys))
    total = len(by_data_file) + (meta.total_episodes if read_episodes else 0)
    total += sum(len(v) for v in by_video_file.values()) if decode else 0

    from tqdm.auto import tqdm

    bar = tqdm(total=total, unit="check", desc="data files", disable=None if progress else True, leave=False)
    try:
        bad_files = _check_footers(meta, by_data_file, report, bar)
        timestamps: dict[int, tuple[float, float]] = {}
        if read_episodes:
            bar.set_description("episode rows")
            timestamps = _read_episodes(meta, by_data_file, bad_files, read_rows, report, bar)
        if decode and by_video_file:
            bar.set_description("videos")
            _check_videos(meta, by_video_file, timestamps, float(tolerance_s), report, bar)
    finally:
        bar.close()
    log.info(
        "checked %s: %d problems, %d data files, %d video files, %d frames decoded",
        root,
        len(report.problems),
        report.data_files,
        report.video_files,
        report.frames_decoded,
    )
    return report


# ---- steps ------------------------------------------------------------------------------------------


def _check_footers(
    meta: DatasetMeta,
    by_data_file: dict[str, list[EpisodeRef]],
    report: CheckReport,
    bar: Any,
) -> set[str]:
    """Footer of every data file; returns the files with a problem (their rows are not read)."""
    bad = set()
    for path, episodes in by_data_file.items():
        try:
            check_data_file(meta, path, sorted(episodes, key=lambda e: e.row_group))
        except _FILE_ERRORS as e:
            bad.add(path)
            report.add(path, None, _detail(e))
        bar.update(1)
    return bad


def _read_episodes(
    meta: DatasetMeta,
    by_data_file: dict[str, list[EpisodeRef]],
    bad_files: set[str],
    all_columns: bool,
    report: CheckReport,
    bar: Any,
) -> dict[int, tuple[float, float]]:
    """Read each episode's row group once; return the first and last ``timestamp`` of each episode read.

    Episodes of data files whose footer failed are skipped (already reported; reading them would
    repeat the same problem or read the wrong rows).
    """
    has_timestamp = "timestamp" in meta.data_keys
    columns = list(meta.data_keys) if all_columns else ["timestamp"] if has_timestamp else []
    report.columns_read = tuple(dict.fromkeys([*columns, "index"]))
    report.read_all_columns = all_columns
    out: dict[int, tuple[float, float]] = {}
    files = ParquetFileCache(meta, max_open=1)
    try:
        for path, episodes in by_data_file.items():
            if path in bad_files:
                report.episodes_not_read += len(episodes)
                bar.update(len(episodes))
                continue
            for ep in sorted(episodes, key=lambda e: e.row_group):
                try:
                    rows = read_episode_columns(meta, ep, columns, files)
                except _FILE_ERRORS as e:
                    report.add(path, ep.episode_index, _detail(e))
                else:
                    report.episodes_read += 1
                    report.rows_read += ep.length
                    if has_timestamp:
                        ts = rows["timestamp"]
                        out[ep.episode_index] = (float(ts[0]), float(ts[-1]))
                bar.update(1)
    finally:
        files.close()
    return out


def _check_videos(
    meta: DatasetMeta,
    by_video_file: dict[str, list[tuple[EpisodeRef, str]]],
    timestamps: dict[int, tuple[float, float]],
    tolerance_s: float,
    report: CheckReport,
    bar: Any,
) -> None:
    """Decode the first and last frame of every (episode, camera) with the loader's ``decode_query``.

    One open decoder at a time: each mp4 is opened once for all its episodes (``decode_query`` drops a
    decoder that failed mid-stream, so the next episode opens the file again). A file that cannot be
    opened is one problem naming the episodes that use it.
    """
    from streamnodes.decoder_cache import DecoderCache
    from streamnodes.nodes.video_decode import decode_query

    cache = DecoderCache(max_decoders=1)
    try:
        for path, uses in by_video_file.items():
            url = meta.url(path)
            ordered = sorted(uses, key=lambda u: u[0].episode_index)
            for done, (ep, key) in enumerate(ordered):
                try:
                    cache.get(url)
                except _FILE_ERRORS as e:
                    episodes = [u[0].episode_index for u in ordered[done:]]
                    report.add(path, None, f"{_detail(e)} Episodes using this file: {_ranges(episodes)}.")
                    bar.update(len(ordered) - done)
                    break
                query = _first_and_last_frame(ep, key, url, timestamps, meta.fps)
                try:
                    report.frames_decoded += decode_query(cache, query, tolerance_s=tolerance_s)[1]
                except VideoDecodeError as e:
                    camera = "" if e.camera is None else f"camera {e.camera}: "
                    report.add(path, ep.episode_index, camera + e.detail)
                bar.update(1)
    finally:
        cache.clear()


def _first_and_last_frame(
    ep: EpisodeRef, key: str, url: str, timestamps: dict[int, tuple[float, float]], fps: int
) -> VideoQuery:
    """The query for ``ep``'s first and last frame of camera ``key`` (pure; no I/O).

    In-file times are ``from_timestamp + timestamp`` of the first and last row, as the loader reads them. When the
    episode's rows could not be read, the nominal ``(length - 1) / fps`` stands in for the last
    timestamp (LeRobot writes ``timestamp = frame_index / fps``), so the video is still checked.
    """
    segment = ep.video(key)
    first, last = timestamps.get(ep.episode_index, (0.0, (ep.length - 1) / fps))
    wanted = np.array([segment.from_timestamp + first, segment.from_timestamp + last], dtype=np.float64)
    return VideoQuery(key, url, ep.episode_index, wanted)


# ---- message helpers ------------------------------------------------------------------------------


def _detail(error: BaseException) -> str:
    """The error's text without the file and episode the report names already (read from its attributes)."""
    return error.detail if isinstance(error, StreamNodesError) else str(error)


def _metadata_problem(root_path: str, error: BaseException) -> tuple[str, str]:
    """(file relative to the root, message) of an ``open_dataset`` error: its ``path`` attribute when it
    names one, else ``"meta"`` and the whole message."""
    if isinstance(error, StreamNodesError) and error.path is not None:
        return relative_to(root_path, error.path) or error.path, error.detail
    return "meta", str(error)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _ranges(values: Iterable[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` -> ``"0-2, 5, 7-8"`` (``"none"`` for no values)."""
    return ranges(values) or "none"


__all__ = ["CheckReport", "Problem", "check_dataset"]
