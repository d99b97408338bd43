"""`write_dataset`: a complete LeRobot v3.0 dataset, validated arguments first, ``meta/info.json`` last."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from streamnodes.errors import ConfigError
from streamnodes.format.metadata import CODEBASE_VERSION, DATA_PATH, INFO_PATH, STATS_PATH, VIDEO_PATH
from streamnodes.testing.identity import MAX_CAMERAS, MAX_EPISODE_LENGTH, MAX_EPISODES, MIN_IMAGE_SIDE
from streamnodes.testing.layout import TMP_PREFIX, _Camera, _Episode
from streamnodes.testing.meta import _features, _global_stats, _write_episodes_table, _write_tasks
from streamnodes.testing.stats import _to_json
from streamnodes.testing.tabular import ACTION_KEY, IDENTITY_KEYS, STATE_KEY, _write_data
from streamnodes.testing.video import Codec, _write_videos

logger = logging.getLogger(__package__)  # "streamnodes.testing", as before the module was split

DEFAULT_TASKS: tuple[str, ...] = ("pick the red cube", "place the cube in the bin", "push the block left")
DEFAULT_CAMERAS: Mapping[str, tuple[int, int]] = {"observation.images.cam": (64, 64)}
_DATASET_ENTRIES = frozenset({"meta", "data", "videos"})


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

    data_assignment, data_stats = _write_data(
        root, episodes, fps, state_dim, action_dim, data_files_size_in_mb, chunks_size
    )

    video_columns: dict[str, list[Any]] = {}
    image_stats: dict[str, list[dict[str, np.ndarray]]] = {}
    if cameras:
        video_columns, image_stats = _write_videos(
            root, episodes, cameras, fps, codec, video_files_size_in_mb, chunks_size
        )

    features = _features(cameras, fps, state_dim, action_dim, codec)
    feature_order = list(features)
    # Statistics of every episode as columns: ep_stats[key][name] is [episodes, ...].
    ep_stats: dict[str, dict[str, np.ndarray]] = dict(data_stats)
    for camera in cameras:
        per_episode = image_stats[camera.key]
        ep_stats[camera.key] = {name: np.stack([s[name] for s in per_episode]) for name in per_episode[0]}
    ep_stats = {k: ep_stats[k] for k in feature_order}

    index = np.arange(len(episodes), dtype=np.int64)
    lengths = np.fromiter((e.length for e in episodes), dtype=np.int64, count=len(episodes))
    starts = np.fromiter((e.from_index for e in episodes), dtype=np.int64, count=len(episodes))
    assignment = np.array(data_assignment, dtype=np.int64).reshape(-1, 2)
    columns["episode_index"] = index
    columns["tasks"] = np.fromiter((e.task_index for e in episodes), dtype=np.int64, count=len(episodes))
    columns["length"] = lengths
    columns["data/chunk_index"] = assignment[:, 0]
    columns["data/file_index"] = assignment[:, 1]
    columns["dataset_from_index"] = starts
    columns["dataset_to_index"] = starts + lengths
    columns.update(video_columns)
    _write_episodes_table(root, columns, ep_stats, features, tasks)
    _write_tasks(root, tasks)

    global_stats = _global_stats(episodes, cameras, image_stats, feature_order, fps, state_dim, action_dim)
    (root / STATS_PATH).write_text(json.dumps(_to_json(global_stats), indent=4))

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
    (root / INFO_PATH).write_text(json.dumps(info, indent=4))
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
    if cameras and len(lengths) > MAX_EPISODES:  # the identity code drawn into frames has 14 episode bits
        raise ConfigError(
            f"{len(lengths)} episodes requested with cameras; test datasets with video hold at most "
            f"{MAX_EPISODES} (datasets without cameras have no limit)"
        )
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
        ours = all(p.name in _DATASET_ENTRIES or p.name.startswith(TMP_PREFIX) for p in root.iterdir())
        if not ((root / INFO_PATH).is_file() or ours):
            raise ConfigError(
                f"refusing to overwrite {root}: it is not empty and holds no meta/info.json, so it does not "
                "look like a dataset; delete it yourself if you mean it"
            )
        logger.info("overwriting existing dataset at %s", root)
        shutil.rmtree(root)
    (root / "meta").mkdir(parents=True, exist_ok=True)
