"""Real LeRobot v3.0 datasets with real mp4 video, written in a few seconds, for tests.

:func:`write_dataset` writes the same on-disk layout as LeRobot's own writer (``meta/info.json``,
``meta/stats.json``, ``meta/tasks.parquet``, ``meta/episodes/...``, ``data/chunk-XXX/file-XXX.parquet``
with one row group per episode, ``videos/<key>/chunk-XXX/file-XXX.mp4`` with episodes back to back),
including LeRobot's size-based file and chunk roll-over, so a test can get several episodes per file,
several files per chunk, several chunks, and video file boundaries that differ from data file
boundaries from a dataset of a few hundred frames.

Every value encodes where it came from, so a test can tell that it got the right row and the right
frame even after lossy video coding:

- ``observation.state[d] = 1000 * episode_index + frame_index + 0.01 * d`` (float32), see
  :func:`expected_state`; ``action = -state`` over ``action_dim`` dimensions, see :func:`expected_action`.
- every video frame carries its (episode, frame, camera) as a grid of 8x8 light and dark cells that
  survives AV1 and H.264 coding at any supported size: :func:`frame_identity` and
  :func:`camera_identity` read it back, :func:`identity_image` draws it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from streamnodes.errors import ConfigError, StreamNodesError, VideoDecodeError

__all__ = [
    "DEFAULT_CAMERAS",
    "DEFAULT_TASKS",
    "MAX_CAMERAS",
    "MAX_EPISODES",
    "MAX_EPISODE_LENGTH",
    "MIN_IMAGE_SIDE",
    "camera_identity",
    "expected_action",
    "expected_state",
    "frame_identity",
    "identity_image",
    "write_dataset",
]

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------------
# LeRobot v3.0 layout constants (as written by LeRobot 0.4's writer).

CODEBASE_VERSION = "v3.0"
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
STATE_KEY = "observation.state"
ACTION_KEY = "action"
IDENTITY_KEYS = ("timestamp", "frame_index", "episode_index", "index", "task_index")
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
BYTES_PER_MB = 1024 * 1024  # LeRobot measures file sizes in MiB

DEFAULT_TASKS: tuple[str, ...] = ("pick the red cube", "place the cube in the bin", "push the block left")
DEFAULT_CAMERAS: Mapping[str, tuple[int, int]] = {"observation.images.cam": (64, 64)}

Codec = Literal["av1", "h264"]
# Encoders tried in order per codec. libsvtav1 is LeRobot's AV1 encoder but refuses frames under 64 px
# high or wide; libaom-av1 takes any size and, with cpu-used=8, is fast enough for small test frames.
_SVT_MIN_SIDE = 64
_ENCODER_OPTIONS: dict[str, dict[str, str]] = {
    "libsvtav1": {"g": "2"},
    "libaom-av1": {"g": "2", "cpu-used": "8"},
    "libx264": {"g": "2"},
}
_PIXEL_FORMAT = "yuv420p"
_TMP_PREFIX = ".write_dataset-"  # temporary directory under root while encoding
_DATASET_ENTRIES = frozenset({"meta", "data", "videos"})
_IMAGE_STATS_FRAMES = 16  # frames per episode sampled for image statistics
_PROGRESS_MIN_FRAMES = 2000  # show a progress bar only for encodes at least this long (and on a TTY)

# ---------------------------------------------------------------------------------------------------
# The identity code drawn into every video frame.
#
# A 32-bit word (frame_index in bits 0-13, episode_index in bits 14-27, camera_index in bits 28-31) is
# drawn as an 8x8 grid of cells spanning the whole image. Bit k sits in row k // 4 and is written
# differentially: column 2 * (k % 4) holds the bit, the next column its complement. Reading compares
# the mean of the two cells' centres, so it needs no threshold, survives brightness and contrast shifts,
# resizing and codec blur, and can tell a readable frame from something else (a weak pair means the
# image is not one of ours or is too damaged).

_GRID = 8
_FRAME_BITS = 14
_EPISODE_BITS = 14
_CAMERA_BITS = 4
_WORD_BITS = _FRAME_BITS + _EPISODE_BITS + _CAMERA_BITS  # = _GRID * _GRID // 2
MAX_EPISODES = 1 << _EPISODE_BITS
MAX_EPISODE_LENGTH = 1 << _FRAME_BITS
MAX_CAMERAS = 1 << _CAMERA_BITS
MIN_IMAGE_SIDE = 16  # 2 px cells still read back exactly after AV1 / H.264 (measured)
_ON_RGB = (255, 224, 160)  # a warm light tone and a dark brown, so the three channels differ
_OFF_RGB = (64, 32, 0)
_MIN_CONTRAST = 0.2  # weakest accepted difference between a bit cell and its complement, in [0, 1]


def _identity_words(episode_index: int, frame_indices: np.ndarray, camera_index: int) -> np.ndarray:
    return (
        (np.int64(camera_index) << (_FRAME_BITS + _EPISODE_BITS))
        | (np.int64(episode_index) << _FRAME_BITS)
        | frame_indices.astype(np.int64)
    )


def _cell_of_pixel(size: int) -> np.ndarray:
    """Grid row (or column) of every pixel row (or column) of an image side of ``size`` pixels."""
    return (np.arange(size) * _GRID) // size


def _identity_images(
    episode_index: int, frame_indices: np.ndarray, height: int, width: int, camera_index: int
) -> np.ndarray:
    """Identity frames of one episode and camera as uint8 ``[N, 3, H, W]`` (torchcodec's layout)."""
    words = _identity_words(episode_index, frame_indices, camera_index)
    bits = (words[:, None] >> np.arange(_WORD_BITS)) & 1  # [N, 32]
    n = len(frame_indices)
    cells = np.empty((n, _GRID, _GRID), dtype=np.intp)
    cells[:, :, 0::2] = bits.reshape(n, _GRID, _GRID // 2)
    cells[:, :, 1::2] = 1 - cells[:, :, 0::2]
    palette = np.array([_OFF_RGB, _ON_RGB], dtype=np.uint8).T  # [3, 2]
    small = palette[:, cells].transpose(1, 0, 2, 3)  # [N, 3, 8, 8]
    # Each cell is a block of whole pixels: repeat rows and columns by the pixels of each cell.
    rows = np.bincount(_cell_of_pixel(height), minlength=_GRID)
    cols = np.bincount(_cell_of_pixel(width), minlength=_GRID)
    return np.repeat(np.repeat(small, rows, axis=2), cols, axis=3)


def identity_image(
    episode_index: int, frame_index: int, height: int, width: int, camera_index: int = 0
) -> np.ndarray:
    """The frame :func:`write_dataset` draws for ``(episode_index, frame_index)``, uint8 ``[3, H, W]``.

    ``camera_index`` is the camera's position in the ``cameras`` mapping. Useful to build inputs for a
    node under test without going through a video file.
    """
    _check_identity_range(episode_index, frame_index, camera_index)
    return _identity_images(episode_index, np.array([frame_index]), height, width, camera_index)[0]


def _check_identity_range(episode_index: int, frame_index: int, camera_index: int) -> None:
    for name, value, limit in (
        ("episode_index", episode_index, MAX_EPISODES),
        ("frame_index", frame_index, MAX_EPISODE_LENGTH),
        ("camera_index", camera_index, MAX_CAMERAS),
    ):
        if not 0 <= value < limit:
            raise ConfigError(f"{name}={value} cannot be drawn into a test frame: it must be in [0, {limit})")


def _as_gray_hw(image: Any) -> np.ndarray:
    """One image (CHW or HWC, uint8 or float in [0, 1], numpy or torch) as float64 gray ``[H, W]``."""
    if hasattr(image, "detach"):  # a torch tensor, without importing torch here
        image = image.detach().cpu().numpy()
    array = np.asarray(image)
    if array.ndim == 3:
        if array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
            array = array.mean(axis=0, dtype=np.float64)
        elif array.shape[-1] in (1, 3):
            array = array.mean(axis=-1, dtype=np.float64)
        else:
            raise ValueError(
                f"cannot read an identity code from an image of shape {tuple(array.shape)}: "
                "expected [3, H, W] or [H, W, 3]"
            )
    elif array.ndim != 2:
        raise ValueError(
            f"cannot read an identity code from an array of shape {tuple(array.shape)}: pass one image "
            "([3, H, W], [H, W, 3] or [H, W]); for a batch or a window, call once per frame"
        )
    gray = array.astype(np.float64, copy=False)
    if np.issubdtype(np.asarray(image).dtype, np.integer):
        gray = gray / 255.0
    if min(gray.shape) < _GRID:
        raise ValueError(f"image of {gray.shape[0]}x{gray.shape[1]} px is too small to hold an identity code")
    return gray


def _read_identity_word(image: Any) -> int:
    gray = _as_gray_hw(image)
    height, width = gray.shape

    def centres(size: int) -> list[slice]:
        edges = [-(-i * size // _GRID) for i in range(_GRID + 1)]  # first pixel of each cell
        out = []
        for lo, hi in zip(edges[:-1], edges[1:], strict=True):
            quarter = (hi - lo) // 4
            out.append(slice(lo + quarter, hi - quarter))
        return out

    rows, cols = centres(height), centres(width)
    levels = np.array([[gray[r, c].mean() for c in cols] for r in rows])  # [8, 8]
    contrast = (levels[:, 0::2] - levels[:, 1::2]).reshape(-1)  # bit k at index k
    weakest = float(np.abs(contrast).min())
    if weakest < _MIN_CONTRAST:
        raise ValueError(
            f"no readable identity code in this {height}x{width} image (weakest bit contrast {weakest:.3f} "
            f"< {_MIN_CONTRAST}): it is not a frame written by streamnodes.testing.write_dataset, or it was "
            "cropped or degraded beyond recognition"
        )
    return int(sum(1 << k for k in range(_WORD_BITS) if contrast[k] > 0))


def frame_identity(image: Any) -> tuple[int, int]:
    """Read ``(episode_index, frame_index)`` back from a frame written by :func:`write_dataset`.

    Accepts one image as a numpy array or torch tensor, ``[3, H, W]`` or ``[H, W, 3]`` (or gray
    ``[H, W]``), uint8 in [0, 255] or float in [0, 1], at the written size or resized. Exact after AV1 or
    H.264 coding. Raises ``ValueError`` when the image carries no readable code (another frame source,
    a blank, a crop). A mirrored image swaps each bit with its complement and reads as another identity,
    so a test comparing identities still catches it.
    """
    word = _read_identity_word(image)
    frame_index = word & (MAX_EPISODE_LENGTH - 1)
    episode_index = (word >> _FRAME_BITS) & (MAX_EPISODES - 1)
    return episode_index, frame_index


def camera_identity(image: Any) -> int:
    """Read the camera index (position in ``write_dataset``'s ``cameras`` mapping) from a frame.

    Lets a test tell two cameras of the same size apart. Same inputs and errors as :func:`frame_identity`.
    """
    return _read_identity_word(image) >> (_FRAME_BITS + _EPISODE_BITS)


# ---------------------------------------------------------------------------------------------------
# Tabular content.


def expected_state(
    episode_index: int, frame_index: int | Sequence[int] | np.ndarray, dim: int = 6
) -> np.ndarray:
    """``observation.state`` as written: ``1000 * episode + frame + 0.01 * d`` for ``d < dim``, float32.

    ``frame_index`` may be an array of N indices; the result is then ``[N, dim]``. Values are computed
    in float64 and rounded to float32 once, exactly as written (so equality checks are exact; large
    episode indices lose the ``0.01 * d`` part to float32 rounding).
    """
    frames = np.asarray(frame_index, dtype=np.float64)
    values = (1000.0 * episode_index + frames)[..., None] + 0.01 * np.arange(dim, dtype=np.float64)
    return values.astype(np.float32)


def expected_action(
    episode_index: int, frame_index: int | Sequence[int] | np.ndarray, dim: int = 6
) -> np.ndarray:
    """``action`` as written: ``-expected_state(episode_index, frame_index, dim)``."""
    return -expected_state(episode_index, frame_index, dim)


# ---------------------------------------------------------------------------------------------------
# Layout arithmetic (pure).


def _next_file(chunk_index: int, file_index: int, chunks_size: int) -> tuple[int, int]:
    """The (chunk, file) after this one: ``file_index`` wraps to 0 after ``chunks_size`` files."""
    file_index += 1
    if file_index >= chunks_size:
        return chunk_index + 1, 0
    return chunk_index, file_index


def _assign_files(
    sizes_in_bytes: Sequence[int], limit_mb: float, chunks_size: int, shared_bytes: int = 0
) -> list[tuple[int, int]]:
    """(chunk_index, file_index) of each episode, rolling over like LeRobot's writer.

    ``sizes_in_bytes[i]`` is the size of episode ``i`` written alone; a file of several episodes is the
    sum of theirs minus ``shared_bytes`` per episode after the first (headers and footers written once
    per file). An episode goes into the current file unless that file already holds an episode and
    would grow past ``limit_mb`` MiB; then the next file starts, and after ``chunks_size`` files the
    next chunk.
    """
    key = (0, 0)
    current = 0
    out = []
    for size in sizes_in_bytes:
        if current and (current + size - shared_bytes) / BYTES_PER_MB > limit_mb:
            key = _next_file(*key, chunks_size)
            current = 0
        current += size - shared_bytes if current else size
        out.append(key)
    return out


def _groups(assignment: Sequence[tuple[int, int]]) -> list[tuple[tuple[int, int], list[int]]]:
    """Consecutive episodes sharing a (chunk, file), in order: ``[((chunk, file), [episodes...]), ...]``."""
    out: list[tuple[tuple[int, int], list[int]]] = []
    for episode, key in enumerate(assignment):
        if out and out[-1][0] == key:
            out[-1][1].append(episode)
        else:
            out.append((key, [episode]))
    return out


# ---------------------------------------------------------------------------------------------------
# Statistics, shaped like LeRobot's compute_episode_stats / aggregate_stats output.


def _stats(values: np.ndarray, *, keep_int: bool) -> dict[str, np.ndarray]:
    """Per-column statistics of ``values [N, D]``; min/max keep the integer type when ``keep_int``."""
    as_float = values.astype(np.float64)
    stats: dict[str, np.ndarray] = {
        "min": values.min(axis=0) if keep_int else as_float.min(axis=0),
        "max": values.max(axis=0) if keep_int else as_float.max(axis=0),
        "mean": as_float.mean(axis=0),
        "std": as_float.std(axis=0),
        "count": np.array([len(values)], dtype=np.int64),
    }
    for q, v in zip(QUANTILES, np.quantile(as_float, QUANTILES, axis=0), strict=True):
        stats[f"q{round(q * 100):02d}"] = v
    return stats


def _image_stats(frames: np.ndarray) -> dict[str, np.ndarray]:
    """Per-channel statistics of uint8 frames ``[N, 3, H, W]`` in [0, 1], shaped ``[3, 1, 1]``.

    Like LeRobot, large frames are subsampled (every k-th pixel so the longer side is about 150).
    """
    step = max(1, max(frames.shape[2:]) // 150)
    frames = frames[:, :, ::step, ::step]
    pixels = frames.transpose(1, 0, 2, 3).reshape(3, -1).T / 255.0  # [N*H*W, 3]
    stats = _stats(pixels, keep_int=False)
    stats["count"] = np.array([len(frames)], dtype=np.int64)
    return {k: (v if k == "count" else v.reshape(3, 1, 1)) for k, v in stats.items()}


def _to_json(stats: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, dict[str, Any]]:
    return {key: {name: value.tolist() for name, value in feature.items()} for key, feature in stats.items()}


# ---------------------------------------------------------------------------------------------------
# Writer.


@dataclass(frozen=True)
class _Camera:
    key: str
    index: int
    height: int
    width: int


@dataclass
class _Episode:
    index: int
    length: int
    task_index: int
    from_index: int  # global index of the first frame


def write_dataset(
    root: str | os.PathLike[str],
    *,
    episode_lengths: Sequence[int] = (20, 35, 60),
    fps: int = 10,
    cameras: Mapping[str, tuple[int, int]] | None = DEFAULT_CAMERAS,
    state_dim: int = 6,
    action_dim: int = 6,
    tasks: Sequence[str] = DEFAULT_TASKS,
    episode_tasks: Sequence[int] | None = None,
    codec: Codec = "av1",
    data_files_size_in_mb: float = 100,
    video_files_size_in_mb: float = 200,
    chunks_size: int = 1000,
    robot_type: str = "streamnodes_test",
    overwrite: bool = False,
) -> Path:
    """Write a valid LeRobot v3.0 dataset with real mp4 video under ``root`` and return ``root``.

    Args:
        root: dataset directory. It may exist if empty (e.g. pytest's ``tmp_path``).
        episode_lengths: frames per episode (each >= 1); episode ``i`` gets ``episode_lengths[i]`` frames.
        fps: frames per second; ``timestamp = frame_index / fps``.
        cameras: video key -> ``(height, width)`` in pixels (even, >= ``MIN_IMAGE_SIDE``); each camera
            may have its own size. ``None`` or ``{}`` writes no video.
        state_dim: length of ``observation.state`` (0 leaves the feature out).
        action_dim: length of ``action`` (0 leaves the feature out).
        tasks: task strings, stored in ``meta/tasks.parquet`` in this order (``task_index`` = position).
        episode_tasks: task index of each episode; by default round-robin ``i % len(tasks)``.
        codec: ``"av1"`` (LeRobot's default: libsvtav1, or libaom-av1 for frames under 64 px) or
            ``"h264"`` (libx264). Always yuv420p with a keyframe every 2 frames (``g=2``), as LeRobot.
        data_files_size_in_mb: a new data parquet file starts when the current one would grow past this
            (in MiB; floats like ``0.005`` make tiny datasets roll over).
        video_files_size_in_mb: the same for each camera's mp4 files, independently of the data files.
        chunks_size: files per chunk directory; ``file_index`` wraps to 0 and ``chunk_index`` increments
            after this many files.
        robot_type: stored in ``meta/info.json``.
        overwrite: replace an existing dataset at ``root``. Only a directory holding ``meta/info.json``,
            or nothing but what an interrupted ``write_dataset`` leaves, is ever deleted.

    Content encodes identity: ``observation.state[d] = 1000 * episode + frame + 0.01 * d``,
    ``action = -state``, and every frame carries (episode, frame, camera) readable with
    :func:`frame_identity` / :func:`camera_identity`.

    Raises:
        ConfigError: an argument cannot work (the message says which and why), or ``root`` is not empty
            and ``overwrite`` is false.
    """
    root = Path(root)
    camera_list = _check_arguments(
        episode_lengths=episode_lengths,
        fps=fps,
        cameras=cameras,
        state_dim=state_dim,
        action_dim=action_dim,
        tasks=tasks,
        episode_tasks=episode_tasks,
        codec=codec,
        data_files_size_in_mb=data_files_size_in_mb,
        video_files_size_in_mb=video_files_size_in_mb,
        chunks_size=chunks_size,
    )
    _prepare_root(root, overwrite=overwrite)
    try:
        _write_contents(
            root,
            episode_lengths=episode_lengths,
            fps=fps,
            cameras=camera_list,
            state_dim=state_dim,
            action_dim=action_dim,
            tasks=tasks,
            episode_tasks=episode_tasks,
            codec=codec,
            data_files_size_in_mb=data_files_size_in_mb,
            video_files_size_in_mb=video_files_size_in_mb,
            chunks_size=chunks_size,
            robot_type=robot_type,
        )
    except BaseException:
        # root was empty before: leave it empty again rather than half a dataset without meta/info.json
        for child in root.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()
        raise
    return root


def _write_contents(
    root: Path,
    *,
    episode_lengths: Sequence[int],
    fps: int,
    cameras: Sequence[_Camera],
    state_dim: int,
    action_dim: int,
    tasks: Sequence[str],
    episode_tasks: Sequence[int] | None,
    codec: str,
    data_files_size_in_mb: float,
    video_files_size_in_mb: float,
    chunks_size: int,
    robot_type: str,
) -> None:
    """Everything :func:`write_dataset` writes, once the arguments are valid and ``root`` is empty.

    ``meta/info.json`` is written last, so a dataset with it is complete.
    """
    episodes: list[_Episode] = []
    start = 0
    for i, length in enumerate(episode_lengths):
        task_index = episode_tasks[i] if episode_tasks is not None else i % len(tasks)
        episodes.append(_Episode(index=i, length=int(length), task_index=int(task_index), from_index=start))
        start += int(length)
    total_frames = start

    columns: dict[str, Any] = {}  # episodes-table columns, filled in feature order below
    ep_stats: list[dict[str, dict[str, np.ndarray]]] = [{} for _ in episodes]

    data_assignment, data_stats = _write_data(
        root, episodes, fps, state_dim, action_dim, data_files_size_in_mb, chunks_size
    )
    for episode, stats in zip(episodes, data_stats, strict=True):
        ep_stats[episode.index].update(stats)

    video_columns: dict[str, list[Any]] = {}
    image_stats: dict[str, list[dict[str, np.ndarray]]] = {}
    if cameras:
        video_columns, image_stats = _write_videos(
            root, episodes, cameras, fps, codec, video_files_size_in_mb, chunks_size
        )

    features = _features(cameras, fps, state_dim, action_dim, codec)
    feature_order = list(features)
    for episode in episodes:
        for camera in cameras:
            ep_stats[episode.index][camera.key] = image_stats[camera.key][episode.index]
        ep_stats[episode.index] = {k: ep_stats[episode.index][k] for k in feature_order}

    columns["episode_index"] = [e.index for e in episodes]
    columns["tasks"] = [[tasks[e.task_index]] for e in episodes]
    columns["length"] = [e.length for e in episodes]
    columns["data/chunk_index"] = [c for c, _ in data_assignment]
    columns["data/file_index"] = [f for _, f in data_assignment]
    columns["dataset_from_index"] = [e.from_index for e in episodes]
    columns["dataset_to_index"] = [e.from_index + e.length for e in episodes]
    columns.update(video_columns)
    _write_episodes_table(root, columns, ep_stats, features)
    _write_tasks(root, tasks)

    global_stats = _global_stats(episodes, cameras, image_stats, feature_order, fps, state_dim, action_dim)
    (root / "meta" / "stats.json").write_text(json.dumps(_to_json(global_stats), indent=4))

    info = {
        "codebase_version": CODEBASE_VERSION,
        "robot_type": robot_type,
        "total_episodes": len(episodes),
        "total_frames": total_frames,
        "total_tasks": len(tasks),
        "chunks_size": chunks_size,
        "data_files_size_in_mb": data_files_size_in_mb,
        "video_files_size_in_mb": video_files_size_in_mb,
        "fps": fps,
        "splits": {"train": f"0:{len(episodes)}"},
        "data_path": DATA_PATH,
        "video_path": VIDEO_PATH if cameras else None,
        "features": features,
    }
    (root / "meta" / "info.json").write_text(json.dumps(info, indent=4))
    logger.info(
        "wrote LeRobot v3.0 test dataset %s: %d episodes, %d frames, %d data files, %d cameras (%s)",
        root,
        len(episodes),
        total_frames,
        len(set(data_assignment)),
        len(cameras),
        codec,
    )


def _check_arguments(
    *,
    episode_lengths: Sequence[int],
    fps: int,
    cameras: Mapping[str, tuple[int, int]] | None,
    state_dim: int,
    action_dim: int,
    tasks: Sequence[str],
    episode_tasks: Sequence[int] | None,
    codec: str,
    data_files_size_in_mb: float,
    video_files_size_in_mb: float,
    chunks_size: int,
) -> list[_Camera]:
    """Validate every argument before anything touches the disk; return the cameras in order."""

    def is_int(value: Any) -> bool:
        return isinstance(value, int | np.integer) and not isinstance(value, bool)

    lengths = list(episode_lengths)
    if not lengths:
        raise ConfigError("episode_lengths is empty: a dataset needs at least one episode")
    if len(lengths) > MAX_EPISODES:
        raise ConfigError(f"{len(lengths)} episodes requested; test datasets hold at most {MAX_EPISODES}")
    for i, length in enumerate(lengths):
        if not is_int(length) or not 1 <= length <= MAX_EPISODE_LENGTH:
            raise ConfigError(
                f"episode_lengths[{i}] = {length!r}: every episode needs an integer length in "
                f"[1, {MAX_EPISODE_LENGTH}]"
            )
    if not is_int(fps) or fps < 1:
        raise ConfigError(f"fps = {fps!r}: must be a positive integer")
    for name, dim in (("state_dim", state_dim), ("action_dim", action_dim)):
        if not is_int(dim) or dim < 0:
            raise ConfigError(f"{name} = {dim!r}: must be an integer >= 0 (0 leaves the feature out)")
    if isinstance(tasks, str) or not tasks:
        raise ConfigError(f"tasks = {tasks!r}: pass a non-empty sequence of task strings")
    if any(not isinstance(t, str) or not t for t in tasks) or len(set(tasks)) != len(tasks):
        raise ConfigError(f"tasks = {list(tasks)!r}: tasks must be distinct non-empty strings")
    if episode_tasks is not None:
        if len(episode_tasks) != len(lengths):
            raise ConfigError(
                f"episode_tasks has {len(episode_tasks)} entries for {len(lengths)} episodes: give one task "
                "index per episode, or None for round-robin"
            )
        for i, t in enumerate(episode_tasks):
            if not is_int(t) or not 0 <= t < len(tasks):
                raise ConfigError(f"episode_tasks[{i}] = {t!r}: not a task index in [0, {len(tasks)})")
    if codec not in ("av1", "h264"):
        raise ConfigError(f"codec = {codec!r}: choose 'av1' (LeRobot's default) or 'h264'")
    for name, size in (
        ("data_files_size_in_mb", data_files_size_in_mb),
        ("video_files_size_in_mb", video_files_size_in_mb),
    ):
        if (
            isinstance(size, bool)
            or not isinstance(size, int | float)
            or not math.isfinite(size)
            or size <= 0
        ):
            raise ConfigError(f"{name} = {size!r}: must be a positive number of MiB")
    if not is_int(chunks_size) or chunks_size < 1:
        raise ConfigError(f"chunks_size = {chunks_size!r}: must be a positive integer")

    camera_list: list[_Camera] = []
    if cameras:
        if len(cameras) > MAX_CAMERAS:
            raise ConfigError(f"{len(cameras)} cameras requested; test datasets hold at most {MAX_CAMERAS}")
        reserved = {STATE_KEY, ACTION_KEY, *IDENTITY_KEYS}
        for index, (key, hw) in enumerate(cameras.items()):
            if not isinstance(key, str) or not key or "/" in key or key in reserved:
                raise ConfigError(
                    f"camera key {key!r}: must be a non-empty string without '/' that is not one of "
                    f"{sorted(reserved)}"
                )
            try:
                height, width = hw
            except (TypeError, ValueError):
                raise ConfigError(f"cameras[{key!r}] = {hw!r}: give (height, width) in pixels") from None
            for side_name, side in (("height", height), ("width", width)):
                if not is_int(side) or side < MIN_IMAGE_SIDE or side % 2:
                    raise ConfigError(
                        f"cameras[{key!r}] {side_name} = {side!r}: must be an even integer >= {MIN_IMAGE_SIDE} "
                        "(yuv420p needs even sides; smaller frames cannot carry the identity code)"
                    )
            camera_list.append(_Camera(key=key, index=index, height=int(height), width=int(width)))
    return camera_list


def _prepare_root(root: Path, *, overwrite: bool) -> None:
    if root.exists() and not root.is_dir():
        raise ConfigError(f"dataset root {root} exists and is not a directory")
    if root.is_dir() and any(root.iterdir()):
        if not overwrite:
            raise ConfigError(
                f"dataset root {root} already exists and is not empty: pass overwrite=True to replace it, "
                "or choose a new directory"
            )
        # A dataset, or what a killed write_dataset left behind; never anything else.
        ours = all(p.name in _DATASET_ENTRIES or p.name.startswith(_TMP_PREFIX) for p in root.iterdir())
        if not ((root / "meta" / "info.json").is_file() or ours):
            raise ConfigError(
                f"refusing to overwrite {root}: it is not empty and holds no meta/info.json, so it does not "
                "look like a dataset; delete it yourself if you mean it"
            )
        logger.info("overwriting existing dataset at %s", root)
        shutil.rmtree(root)
    (root / "meta").mkdir(parents=True, exist_ok=True)


def _features(
    cameras: Sequence[_Camera], fps: int, state_dim: int, action_dim: int, codec: str
) -> dict[str, Any]:
    """``info.json`` features, in LeRobot's order: state, action, cameras, identity columns."""
    features: dict[str, Any] = {}
    for key, dim in ((STATE_KEY, state_dim), (ACTION_KEY, action_dim)):
        if dim:
            features[key] = {"dtype": "float32", "shape": [dim], "names": [f"joint_{d}" for d in range(dim)]}
    for camera in cameras:
        features[camera.key] = {
            "dtype": "video",
            "shape": [camera.height, camera.width, 3],
            "names": ["height", "width", "channels"],
            "info": {
                "video.height": camera.height,
                "video.width": camera.width,
                "video.codec": codec,
                "video.pix_fmt": _PIXEL_FORMAT,
                "video.is_depth_map": False,
                "video.fps": fps,
                "video.channels": 3,
                "has_audio": False,
            },
        }
    features["timestamp"] = {"dtype": "float32", "shape": [1], "names": None}
    for key in IDENTITY_KEYS[1:]:
        features[key] = {"dtype": "int64", "shape": [1], "names": None}
    return features


def _episode_columns(episode: _Episode, fps: int, state_dim: int, action_dim: int) -> dict[str, np.ndarray]:
    """The data-file columns of one episode as numpy arrays (vectors as ``[N, D]``)."""
    frames = np.arange(episode.length, dtype=np.int64)
    columns: dict[str, np.ndarray] = {}
    if state_dim:
        columns[STATE_KEY] = expected_state(episode.index, frames, state_dim)
    if action_dim:
        columns[ACTION_KEY] = expected_action(episode.index, frames, action_dim)
    columns["timestamp"] = (frames / fps).astype(np.float32)
    columns["frame_index"] = frames
    columns["episode_index"] = np.full(episode.length, episode.index, dtype=np.int64)
    columns["index"] = episode.from_index + frames
    columns["task_index"] = np.full(episode.length, episode.task_index, dtype=np.int64)
    return columns


def _data_schema(state_dim: int, action_dim: int, fingerprint: str) -> pa.Schema:
    """The data-file schema, with the ``huggingface`` metadata LeRobot (via ``datasets``) writes."""
    fields: list[pa.Field] = []
    hf_features: dict[str, Any] = {}
    for key, dim in ((STATE_KEY, state_dim), (ACTION_KEY, action_dim)):
        if dim:
            fields.append(pa.field(key, pa.list_(pa.float32(), dim)))
            hf_features[key] = {
                "feature": {"dtype": "float32", "_type": "Value"},
                "length": dim,
                "_type": "List",
            }
    fields.append(pa.field("timestamp", pa.float32()))
    hf_features["timestamp"] = {"dtype": "float32", "_type": "Value"}
    for key in IDENTITY_KEYS[1:]:
        fields.append(pa.field(key, pa.int64()))
        hf_features[key] = {"dtype": "int64", "_type": "Value"}
    metadata = {"huggingface": json.dumps({"info": {"features": hf_features}, "fingerprint": fingerprint})}
    return pa.schema(fields, metadata=metadata)


def _to_arrow(columns: Mapping[str, np.ndarray], schema: pa.Schema) -> pa.Table:
    arrays = []
    for field in schema:
        values = columns[field.name]
        if pa.types.is_fixed_size_list(field.type):
            arrays.append(
                pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), field.type.list_size)
            )
        else:
            arrays.append(pa.array(values, type=field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def _write_data(
    root: Path,
    episodes: Sequence[_Episode],
    fps: int,
    state_dim: int,
    action_dim: int,
    limit_mb: float,
    chunks_size: int,
) -> tuple[list[tuple[int, int]], list[dict[str, dict[str, np.ndarray]]]]:
    """Write the data parquet files (one row group per episode); return each episode's (chunk, file) and
    the statistics of its tabular features."""
    fingerprint = hashlib.sha256(
        json.dumps([[e.length, e.task_index] for e in episodes] + [fps, state_dim, action_dim]).encode()
    ).hexdigest()[:16]
    schema = _data_schema(state_dim, action_dim, fingerprint)
    tables: list[pa.Table] = []
    stats: list[dict[str, dict[str, np.ndarray]]] = []
    for episode in episodes:
        columns = _episode_columns(episode, fps, state_dim, action_dim)
        tables.append(_to_arrow(columns, schema))
        stats.append(_tabular_stats(columns, fps))

    # Sizes as written: each episode alone, and what two row groups in one file share (magic bytes,
    # schema and metadata in the footer), so the file sizes the roll-over sees are the real ones.
    sizes = [_parquet_size(schema, [table]) for table in tables]
    shared = 2 * sizes[0] - _parquet_size(schema, [tables[0], tables[0]])
    assignment = _assign_files(sizes, limit_mb, chunks_size, shared_bytes=shared)
    for (chunk_index, file_index), members in _groups(assignment):
        path = root / DATA_PATH.format(chunk_index=chunk_index, file_index=file_index)
        path.parent.mkdir(parents=True, exist_ok=True)
        with pq.ParquetWriter(path, schema) as writer:
            for i in members:
                writer.write_table(tables[i], row_group_size=tables[i].num_rows)  # one row group each
    return assignment, stats


def _parquet_size(schema: pa.Schema, tables: Sequence[pa.Table]) -> int:
    """Bytes of a parquet file holding ``tables``, one row group each, written like the data files."""
    sink = pa.BufferOutputStream()
    with pq.ParquetWriter(sink, schema) as writer:
        for table in tables:
            writer.write_table(table, row_group_size=table.num_rows)
    return len(sink.getvalue())


def _tabular_stats(columns: Mapping[str, np.ndarray], fps: int) -> dict[str, dict[str, np.ndarray]]:
    stats: dict[str, dict[str, np.ndarray]] = {}
    for key, values in columns.items():
        if key == "timestamp":  # from the exact times, as LeRobot does, not the float32-rounded column
            values = columns["frame_index"] / fps
        stats[key] = _stats(values.reshape(len(values), -1), keep_int=values.dtype == np.int64)
    return stats


def _encoders(codec: str, camera: _Camera) -> list[str]:
    if codec == "h264":
        return ["libx264"]
    if min(camera.height, camera.width) >= _SVT_MIN_SIDE:
        return ["libsvtav1", "libaom-av1"]
    return ["libaom-av1"]


class _EpisodeEncoder:
    """Encodes one camera's episodes to separate mp4 files, settling on the first encoder that works."""

    def __init__(self, camera: _Camera, codec: str, fps: int) -> None:
        self.camera = camera
        self.fps = fps
        self.candidates = _encoders(codec, camera)
        self.chosen: str | None = None

    def encode(self, frames: np.ndarray, path: Path) -> None:
        import torch
        from torchcodec.encoders import VideoEncoder

        encoder = VideoEncoder(torch.from_numpy(frames), frame_rate=self.fps)
        errors = []
        for name in [self.chosen] if self.chosen else self.candidates:
            try:
                encoder.to_file(
                    path, codec=name, pixel_format=_PIXEL_FORMAT, extra_options=_ENCODER_OPTIONS[name]
                )
            except RuntimeError as error:
                errors.append(f"{name}: {error}")
                logger.debug(
                    "encoder %s failed for %s, trying the next one: %s", name, self.camera.key, error
                )
                continue
            self.chosen = name
            return
        raise ConfigError(
            f"could not encode camera {self.camera.key!r} ({self.camera.height}x{self.camera.width}) with "
            f"{self.candidates}; does this FFmpeg build include them? " + "; ".join(errors)
        )


def _write_videos(
    root: Path,
    episodes: Sequence[_Episode],
    cameras: Sequence[_Camera],
    fps: int,
    codec: str,
    limit_mb: float,
    chunks_size: int,
) -> tuple[dict[str, list[Any]], dict[str, list[dict[str, np.ndarray]]]]:
    """Encode every (camera, episode) to its own mp4, group them into files by size, join each group.

    Returns the ``videos/<key>/...`` episodes-table columns and each camera's per-episode image stats.
    """
    # SVT-AV1 logs a banner to stderr for every encoder it opens; keep errors and warnings only.
    os.environ.setdefault("SVT_LOG", "2")
    columns: dict[str, list[Any]] = {}
    image_stats: dict[str, list[dict[str, np.ndarray]]] = {}
    total = len(cameras) * sum(e.length for e in episodes)
    show = total >= _PROGRESS_MIN_FRAMES and sys.stderr.isatty()
    with tempfile.TemporaryDirectory(prefix=_TMP_PREFIX, dir=root) as tmp:
        tmp_dir = Path(tmp)
        progress = _progress(total, show)
        for camera in cameras:
            encoder = _EpisodeEncoder(camera, codec, fps)

            # One encode at a time: torchcodec encoders running in parallel threads crashed the
            # process (segfault in VideoEncoder.to_file) under load here, once in a few hundred calls.
            parts: list[Path] = []
            image_stats[camera.key] = []
            for episode in episodes:
                frames = _identity_images(
                    episode.index, np.arange(episode.length), camera.height, camera.width, camera.index
                )
                parts.append(tmp_dir / f"{camera.index:02d}-{episode.index:05d}.mp4")
                encoder.encode(frames, parts[-1])
                progress.update(episode.length)
                image_stats[camera.key].append(_image_stats(frames[_stats_sample(episode.length)]))

            assignment = _assign_files([p.stat().st_size for p in parts], limit_mb, chunks_size)
            frames_before = [0] * len(episodes)  # frames of the same mp4 before each episode
            for (chunk_index, file_index), members in _groups(assignment):
                path = root / VIDEO_PATH.format(
                    video_key=camera.key, chunk_index=chunk_index, file_index=file_index
                )
                path.parent.mkdir(parents=True, exist_ok=True)
                _join_mp4([(parts[i], episodes[i].length) for i in members], path, fps, tmp_dir)
                before = 0
                for i in members:
                    frames_before[i] = before
                    before += episodes[i].length
                _check_video(path, before, fps)
            prefix = f"videos/{camera.key}/"
            columns[prefix + "chunk_index"] = [c for c, _ in assignment]
            columns[prefix + "file_index"] = [f for _, f in assignment]
            columns[prefix + "from_timestamp"] = [n / fps for n in frames_before]
            columns[prefix + "to_timestamp"] = [
                (n + e.length) / fps for n, e in zip(frames_before, episodes, strict=True)
            ]
        progress.close()
    return columns, image_stats


class _NoProgress:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, show: bool) -> Any:
    if not show:
        return _NoProgress()
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="frame", desc="write_dataset: encoding", leave=False)


def _join_mp4(parts: Sequence[tuple[Path, int]], dest: Path, fps: int, tmp_dir: Path) -> None:
    """Concatenate mp4 files of identical encoding, given as ``(path, num_frames)``, without re-encoding.

    Uses the ``ffmpeg`` command's concat demuxer with ``-c copy`` (LeRobot remuxes episode files the same
    way with PyAV). Two details keep frame ``k`` of the joined file at exactly ``k / fps``:

    - each part's duration is given in the listing as ``num_frames / fps``: otherwise the demuxer takes
      it from the mp4 header, which counts whole milliseconds, and the error accumulates over the parts
      (at 30 fps, 7-frame episodes drift by 0.02 frame per part);
    - the ``setts`` bitstream filter snaps every pts and dts to the frame grid, removing the remaining
      sub-microsecond rounding.
    """
    if len(parts) == 1:
        shutil.move(parts[0][0], dest)
        return
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise ConfigError(
            "write_dataset needs the `ffmpeg` command on PATH to join episodes into one mp4 file: install "
            "FFmpeg (e.g. `apt-get install ffmpeg` or `conda install ffmpeg`), or pass a "
            "video_files_size_in_mb small enough that every video file holds a single episode"
        )
    handle, listing = tempfile.mkstemp(suffix=".txt", dir=tmp_dir)
    with os.fdopen(handle, "w") as out:
        for path, num_frames in parts:
            quoted = str(path.resolve()).replace("'", "'\\''")
            out.write(f"file '{quoted}'\nduration {num_frames / fps:.6f}\n")

    def snap(ts: str) -> str:  # nearest multiple of 1/fps, in the stream's time base
        return f"round({ts}*TB*{fps})/(TB*{fps})"

    setts = f"setts=pts={snap('PTS')}:dts={snap('DTS')}"
    command = [ffmpeg, "-hide_banner", "-loglevel", "error", "-y", "-f", "concat", "-safe", "0"]
    command += ["-i", listing, "-c", "copy", "-bsf:v", setts, str(dest)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise StreamNodesError(
            f"ffmpeg could not join {len(parts)} episode videos into {dest}: {result.stderr.strip()}"
        )


def _check_video(path: Path, num_frames: int, fps: int) -> None:
    """Cheap check of a written mp4's header: frame count and average fps as the metadata promise."""
    from torchcodec.decoders import VideoDecoder

    metadata = VideoDecoder(path, seek_mode="approximate").metadata
    if (
        metadata.num_frames != num_frames
        or metadata.average_fps is None
        or abs(metadata.average_fps - fps) > 1e-6
    ):
        raise VideoDecodeError(
            f"{path} was written with {num_frames} frames at {fps} fps but reads back as "
            f"{metadata.num_frames} frames at {metadata.average_fps} fps"
        )


def _write_episodes_table(
    root: Path,
    columns: dict[str, Any],
    ep_stats: Sequence[Mapping[str, Mapping[str, np.ndarray]]],
    features: Mapping[str, Any],
) -> None:
    """``meta/episodes/chunk-000/file-000.parquet``: one row per episode, LeRobot's columns and types."""
    fields = [
        pa.field("episode_index", pa.int64()),
        pa.field("tasks", pa.list_(pa.string())),
        pa.field("length", pa.int64()),
        pa.field("data/chunk_index", pa.int64()),
        pa.field("data/file_index", pa.int64()),
        pa.field("dataset_from_index", pa.int64()),
        pa.field("dataset_to_index", pa.int64()),
    ]
    for name in columns:
        if name.startswith("videos/"):
            kind = pa.float64() if name.endswith("_timestamp") else pa.int64()
            fields.append(pa.field(name, kind))
    for key, feature in features.items():
        is_int = feature["dtype"] == "int64"
        is_image = feature["dtype"] in ("video", "image")
        value_type: pa.DataType = (
            pa.list_(pa.list_(pa.list_(pa.float64()))) if is_image else pa.list_(pa.float64())
        )
        for name in ep_stats[0][key]:
            if name == "count" or name in ("min", "max") and is_int:
                kind = pa.list_(pa.int64())
            else:
                kind = value_type
            column = f"stats/{key}/{name}"
            fields.append(pa.field(column, kind))
            columns[column] = [stats[key][name].tolist() for stats in ep_stats]
    fields += [
        pa.field("meta/episodes/chunk_index", pa.int64()),
        pa.field("meta/episodes/file_index", pa.int64()),
    ]
    columns["meta/episodes/chunk_index"] = [0] * len(ep_stats)
    columns["meta/episodes/file_index"] = [0] * len(ep_stats)
    schema = pa.schema(fields)
    table = pa.Table.from_pydict({f.name: columns[f.name] for f in schema}, schema=schema)
    path = root / EPISODES_PATH.format(chunk_index=0, file_index=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def _write_tasks(root: Path, tasks: Sequence[str]) -> None:
    """``meta/tasks.parquet``: a pandas frame indexed by task string with a ``task_index`` column."""
    import pandas as pd

    frame = pd.DataFrame({"task_index": np.arange(len(tasks), dtype=np.int64)}, index=pd.Index(list(tasks)))
    frame.to_parquet(root / "meta" / "tasks.parquet")


def _global_stats(
    episodes: Sequence[_Episode],
    cameras: Sequence[_Camera],
    image_stats: Mapping[str, Sequence[Mapping[str, np.ndarray]]],
    feature_order: Sequence[str],
    fps: int,
    state_dim: int,
    action_dim: int,
) -> dict[str, dict[str, np.ndarray]]:
    """``meta/stats.json``: exact statistics over all frames for tabular features; for images, over the
    frames sampled for the per-episode statistics (counts add up)."""
    per_episode = [_episode_columns(e, fps, state_dim, action_dim) for e in episodes]
    columns = {key: np.concatenate([c[key] for c in per_episode]) for key in per_episode[0]}
    stats = _tabular_stats(columns, fps)
    for camera in cameras:
        sampled = [
            _identity_images(e.index, _stats_sample(e.length), camera.height, camera.width, camera.index)
            for e in episodes
        ]
        stats[camera.key] = _image_stats(np.concatenate(sampled))
        stats[camera.key]["count"] = np.array(
            [sum(int(s["count"][0]) for s in image_stats[camera.key])], dtype=np.int64
        )
    return {key: stats[key] for key in feature_order}


def _stats_sample(length: int) -> np.ndarray:
    """Frame indices of an episode used for its image statistics: up to 16, evenly spread."""
    return np.unique(np.linspace(0, length - 1, _IMAGE_STATS_FRAMES).round().astype(np.int64))
