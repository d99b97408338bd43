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
4. per camera, the first and the last frame of every episode, exactly as the loader finds them
   (DESIGN §4): in-file time ``t = from_timestamp + timestamp[row]``, frame index ``round(t * fps)``
   which must be below the file's frame count, torchcodec ``get_frames_at``, and
   ``|pts - t| <= tolerance_s``. Each mp4 is opened once for all its episodes.

Every failure becomes a :class:`Problem` (file, episode, message with the remedy) and the run goes on.
"""

from __future__ import annotations

import logging
import posixpath
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import fsspec
import pyarrow as pa

from streamnodes.errors import StreamNodesError, VideoDecodeError
from streamnodes.format import ParquetFileCache, open_dataset, read_episode_columns
from streamnodes.format.validate import check_data_file

if TYPE_CHECKING:
    from streamnodes.decoder_cache import OpenVideo
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
        problem = Problem(file, episode, " ".join(message.split()))  # one line (pyarrow's span several)
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
    root = str(root)
    report = CheckReport(root=root, decoded=decode, tolerance_s=float(tolerance_s))
    root_path = _root_path(root)
    try:
        meta = open_dataset(root, check_files=False)
    except _FILE_ERRORS as e:
        file, message = _split_metadata_error(root_path, str(e))
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
        bad_files = _check_footers(meta, by_data_file, report, root_path, bar)
        timestamps: dict[int, tuple[float, float]] = {}
        if read_episodes:
            bar.set_description("episode rows")
            timestamps = _read_episodes(meta, by_data_file, bad_files, read_rows, report, root_path, bar)
        if decode and by_video_file:
            bar.set_description("videos")
            _check_videos(meta, by_video_file, timestamps, float(tolerance_s), report, root_path, bar)
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
    root_path: str,
    bar: Any,
) -> set[str]:
    """Footer of every data file; returns the files with a problem (their rows are not read)."""
    bad = set()
    for path, episodes in by_data_file.items():
        try:
            check_data_file(meta, path, sorted(episodes, key=lambda e: e.row_group))
        except _FILE_ERRORS as e:
            bad.add(path)
            report.add(path, None, _strip_path(root_path, path, str(e)))
        bar.update(1)
    return bad


def _read_episodes(
    meta: DatasetMeta,
    by_data_file: dict[str, list[EpisodeRef]],
    bad_files: set[str],
    all_columns: bool,
    report: CheckReport,
    root_path: str,
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
                    report.add(
                        path, ep.episode_index, _strip_episode(_strip_path(root_path, path, str(e)), ep)
                    )
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
    root_path: str,
    bar: Any,
) -> None:
    """Decode the first and last frame of every (episode, camera), one open decoder per mp4."""
    from streamnodes.decoder_cache import open_video

    for path, uses in by_video_file.items():
        url = meta.url(path)
        video: OpenVideo | None = None
        ordered = sorted(uses, key=lambda u: u[0].episode_index)
        for done, (ep, key) in enumerate(ordered):
            try:
                if video is None:
                    video = open_video(url)
            except _FILE_ERRORS as e:
                episodes = [u[0].episode_index for u in ordered[done:]]
                message = _strip_path(root_path, path, str(e))
                report.add(path, None, f"{message} Episodes using this file: {_ranges(episodes)}.")
                bar.update(len(ordered) - done)
                break
            try:
                report.frames_decoded += _check_episode_frames(
                    video, ep, key, timestamps, meta.fps, tolerance_s
                )
            except VideoDecodeError as e:
                report.add(path, ep.episode_index, str(e))
                if e.__cause__ is not None:  # decoding failed mid-stream: reopen for the next episode
                    video = None
            bar.update(1)


def _check_episode_frames(
    video: OpenVideo,
    ep: EpisodeRef,
    key: str,
    timestamps: dict[int, tuple[float, float]],
    fps: int,
    tolerance_s: float,
) -> int:
    """Decode the first and last frame of ``ep`` in ``video``; returns the frames decoded.

    In-file times are ``from_timestamp + timestamp`` of the first and last row (DESIGN §4). When the
    episode's rows could not be read, the nominal ``(length - 1) / fps`` stands in for the last
    timestamp (LeRobot writes ``timestamp = frame_index / fps``), so the video is still checked.
    """
    segment = ep.video(key)
    first, last = timestamps.get(ep.episode_index, (0.0, (ep.length - 1) / fps))
    wanted = [segment.from_timestamp + first, segment.from_timestamp + last]
    indices = [round(t * video.average_fps) for t in wanted]
    camera = f"camera {key}"
    if min(indices) < 0 or max(indices) >= video.num_frames:
        raise VideoDecodeError(
            f"{camera}: timestamps {_fmt(wanted)} s are frames {indices}, outside the file's "
            f"{video.num_frames} frames at {video.average_fps:g} fps. The episode's from_timestamp "
            "(meta/episodes) or timestamp column point past the video, or the video lost frames; "
            "re-write the episodes table or re-encode the video."
        )
    unique = sorted(set(indices))
    try:
        batch = video.decoder.get_frames_at(unique)
    except (RuntimeError, IndexError, ValueError) as e:
        raise VideoDecodeError(
            f"{camera}: decoding frames {unique} (timestamps {_fmt(wanted)} s) failed "
            f"({_short(e)}). The file is truncated or corrupt; re-download it or re-encode it."
        ) from e
    pts = dict(zip(unique, batch.pts_seconds.tolist(), strict=True))
    found = [pts[i] for i in indices]
    if any(abs(p - t) > tolerance_s for p, t in zip(found, wanted, strict=True)):
        raise VideoDecodeError(
            f"{camera}: requested timestamps {_fmt(wanted)} s, decoded frames have pts {_fmt(found)} s "
            f"(beyond tolerance_s={tolerance_s:g}; the video has {video.num_frames} frames at "
            f"{video.average_fps:g} fps). The episode's from_timestamp (meta/episodes) or timestamp "
            "column disagree with the video; fix the episodes table or re-encode the video. Raise "
            "--tolerance-s only if the offset is known and harmless."
        )
    return len(unique)


# ---- message helpers ------------------------------------------------------------------------------


def _root_path(root: str) -> str:
    path = fsspec.core.url_to_fs(root)[1]
    return path.rstrip("/") if path != "/" else path


# torchcodec prefixes errors with its C++ function and source location: "SingleStreamDecoder,
# /__w/torchcodec/.../SingleStreamDecoder.cpp:52, Could not open input file: ..."
_CPP_LOCATION = re.compile(r"\b\w+, \S+\.(?:cpp|h):\d+, ")


def _strip_path(root_path: str, relative: str, message: str) -> str:
    """Drop a leading ``<full path>: `` from an error message (the report names the file already)
    and torchcodec's C++ source locations."""
    message = _CPP_LOCATION.sub("", message)
    for prefix in (posixpath.join(root_path, relative) + ": ", relative + ": "):
        if message.startswith(prefix):
            return message[len(prefix) :]
    return message


def _strip_episode(message: str, ep: EpisodeRef) -> str:
    """Drop a leading ``episode N: `` (``episode N (row group K)`` becomes ``row group K``); the
    report names the episode already."""
    message = message.removeprefix(f"episode {ep.episode_index}: ")
    return re.sub(rf"^episode {ep.episode_index} \((row group \d+)\) ", r"\1 ", message)


def _split_metadata_error(root_path: str, message: str) -> tuple[str, str]:
    """(file relative to the root, rest of the message) of an ``open_dataset`` error."""
    head, sep, rest = message.partition(": ")
    if sep and head.startswith(root_path.rstrip("/") + "/"):
        return head[len(root_path.rstrip("/")) + 1 :], rest
    if sep and head.startswith("meta/"):
        return head, rest
    return "meta", message


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _fmt(values: Iterable[float]) -> str:
    return "[" + ", ".join(f"{v:.6g}" for v in values) + "]"


def _short(error: BaseException, limit: int = 200) -> str:
    text = " ".join(str(error).split()).split(" This should never happen.")[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _ranges(values: Iterable[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` -> ``"0-2, 5, 7-8"``."""
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
    return ", ".join(out) if out else "none"


__all__ = ["CheckReport", "Problem", "check_dataset"]
