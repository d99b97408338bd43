"""LeRobot v3.0 metadata: typed, immutable views of ``meta/``; the episodes table as numpy columns.

The layout constants (path templates, required keys) and the types; no I/O besides the file system
handle. :func:`streamnodes.format.open.open_dataset` builds a :class:`DatasetMeta` from a dataset.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import fsspec
import numpy as np

from streamnodes.format.fs import fs_is_remote, join, url_to_fs

log = logging.getLogger(__name__)

CODEBASE_VERSION = "v3.0"
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"  # info.json "data_path"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"  # info.json "video_path"
REQUIRED_INFO_KEYS = (
    "codebase_version",
    "fps",
    "features",
    "total_episodes",
    "total_frames",
    "data_path",
    "chunks_size",
)
# Columns every LeRobot v3 data file carries besides the features' own.
IDENTITY_COLUMNS = ("index", "episode_index", "frame_index", "timestamp", "task_index")


@dataclass(frozen=True, slots=True)
class Feature:
    """One entry of ``info.json["features"]``: a column of the data files, or a camera (dtype video)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    names: Any = None

    @property
    def is_video(self) -> bool:
        return self.dtype == "video"


@dataclass(frozen=True, slots=True)
class VideoSegment:
    """Where one episode's frames of one camera live: an mp4 and the episode's span inside it (seconds)."""

    key: str
    path: str  # relative to the dataset root
    from_timestamp: float
    to_timestamp: float


@dataclass(frozen=True, slots=True)
class EpisodeRef:
    """Everything needed to find one episode's data, derived from metadata alone.

    ``row_group`` is the episode's row group inside ``data_path`` (episodes of a file in index order).
    ``videos`` holds one :class:`VideoSegment` per camera, in ``DatasetMeta.video_keys`` order.
    ``part``: set by ``ShardSource`` when a consumer reads only part of the episode's frames (a
    :class:`streamnodes.sharding.Piece`); ``None`` is every frame. It does not take part in equality.
    """

    episode_index: int
    length: int
    dataset_from_index: int
    dataset_to_index: int
    data_path: str
    row_group: int
    tasks: tuple[str, ...]
    videos: tuple[VideoSegment, ...] = ()
    part: tuple[int, int, int, int, int] | None = field(default=None, compare=False)

    def video(self, key: str) -> VideoSegment:
        for segment in self.videos:
            if segment.key == key:
                return segment
        raise KeyError(f"episode {self.episode_index} has no camera {key!r}")

    def __repr__(self) -> str:
        return (
            f"EpisodeRef(episode={self.episode_index}, length={self.length}, "
            f"index=[{self.dataset_from_index}, {self.dataset_to_index}), "
            f"data={self.data_path}#rg{self.row_group}, cameras={len(self.videos)})"
        )


def _compact(values: np.ndarray) -> np.ndarray:
    """``values`` (integers) in the narrowest integer dtype that holds them: pickles stay small."""
    if values.size == 0:
        return values
    low, high = int(values.min()), int(values.max())
    for dtype in (np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32):
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return values.astype(dtype)
    return values


class EpisodeTable(Sequence[EpisodeRef]):
    """The episodes table as numpy columns, in episode-index order; an :class:`EpisodeRef` is made on demand.

    A Python object per episode costs about 1 kB; at 100,000 episodes that is 100 MB in the main process
    and again in every DataLoader worker that unpickles the metadata. Columns cost 8 bytes per value and
    pickle in the narrowest integer type (see :meth:`__getstate__`), so a worker receives a small pickle.

    Columns (length ``n``): ``index``, ``length``, ``start`` (``dataset_from_index``; the end is
    ``start + length``), ``data_file`` (position in ``data_files``), ``row_group``; task ids of episode
    ``i`` are ``task_ids[task_offsets[i]:task_offsets[i + 1]]`` (positions in ``tasks``); per camera ``k``
    (``cameras[k]``), ``video_file[k]`` (position in ``video_files[k]``), ``video_from[k]``, ``video_to[k]``.
    """

    _INT_COLUMNS = ("index", "length", "start", "data_file", "row_group", "task_ids", "task_offsets")
    # The episode-index column shadows Sequence.index (a method this table does not offer).
    index: np.ndarray  # type: ignore[assignment]

    def __init__(
        self,
        *,
        index: np.ndarray,
        length: np.ndarray,
        start: np.ndarray,
        data_file: np.ndarray,
        data_files: Sequence[str],
        row_group: np.ndarray,
        tasks: Sequence[str],
        task_ids: np.ndarray,
        task_offsets: np.ndarray,
        cameras: Sequence[str] = (),
        video_file: Sequence[np.ndarray] = (),
        video_files: Sequence[Sequence[str]] = (),
        video_from: Sequence[np.ndarray] = (),
        video_to: Sequence[np.ndarray] = (),
    ) -> None:
        self.index = np.asarray(index, dtype=np.int64)
        self.length = np.asarray(length, dtype=np.int64)
        self.start = np.asarray(start, dtype=np.int64)
        self.data_file = np.asarray(data_file, dtype=np.int64)
        self.data_files = tuple(data_files)
        self.row_group = np.asarray(row_group, dtype=np.int64)
        self.tasks = tuple(tasks)
        self.task_ids = np.asarray(task_ids, dtype=np.int64)
        self.task_offsets = np.asarray(task_offsets, dtype=np.int64)
        self.cameras = tuple(cameras)
        self.video_file = tuple(np.asarray(v, dtype=np.int64) for v in video_file)
        self.video_files = tuple(tuple(v) for v in video_files)
        self.video_from = tuple(np.asarray(v, dtype=np.float64) for v in video_from)
        self.video_to = tuple(np.asarray(v, dtype=np.float64) for v in video_to)
        self._range = bool(len(self.index) == 0 or (self.index[0] == 0 and self.index[-1] == len(self.index) - 1))
        if len(self.index) > 1 and not (np.diff(self.index) > 0).all():
            raise ValueError("EpisodeTable: episode indices must be unique and ascending")

    @classmethod
    def from_refs(cls, refs: Sequence[EpisodeRef], tasks: Sequence[str] = ()) -> EpisodeTable:
        """A table holding ``refs`` (any order; every ref must name the same cameras in the same order)."""
        refs = sorted(refs, key=lambda r: r.episode_index)
        cameras = tuple(s.key for s in refs[0].videos) if refs else ()
        if any(tuple(s.key for s in r.videos) != cameras for r in refs):
            raise ValueError("EpisodeTable.from_refs: every episode needs the same cameras, in the same order")
        for r in refs:
            if r.dataset_to_index != r.dataset_from_index + r.length:
                raise ValueError(f"{r!r}: dataset_to_index must be dataset_from_index + length")
        all_tasks = list(tasks)
        for r in refs:
            all_tasks += [t for t in r.tasks if t not in all_tasks]
        task_pos = {t: i for i, t in enumerate(all_tasks)}
        data_files = sorted({r.data_path for r in refs})
        data_pos = {p: i for i, p in enumerate(data_files)}
        video_files = [sorted({r.videos[k].path for r in refs}) for k in range(len(cameras))]
        return cls(
            index=np.array([r.episode_index for r in refs], dtype=np.int64),
            length=np.array([r.length for r in refs], dtype=np.int64),
            start=np.array([r.dataset_from_index for r in refs], dtype=np.int64),
            data_file=np.array([data_pos[r.data_path] for r in refs], dtype=np.int64),
            data_files=data_files,
            row_group=np.array([r.row_group for r in refs], dtype=np.int64),
            tasks=all_tasks,
            task_ids=np.array([task_pos[t] for r in refs for t in r.tasks], dtype=np.int64),
            task_offsets=np.cumsum([0] + [len(r.tasks) for r in refs], dtype=np.int64),
            cameras=cameras,
            video_file=[np.array([pos[r.videos[k].path] for r in refs], dtype=np.int64)
                        for k, pos in enumerate({p: i for i, p in enumerate(files)} for files in video_files)],
            video_files=video_files,
            video_from=[np.array([r.videos[k].from_timestamp for r in refs]) for k in range(len(cameras))],
            video_to=[np.array([r.videos[k].to_timestamp for r in refs]) for k in range(len(cameras))],
        )

    # ---- Sequence[EpisodeRef] ------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, item: int | slice) -> Any:
        if isinstance(item, slice):
            return tuple(self.ref(i) for i in range(*item.indices(len(self))))
        i = int(item)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"episode position {item} out of range ({len(self)} episodes)")
        return self.ref(i)

    def __iter__(self) -> Iterator[EpisodeRef]:
        return (self.ref(i) for i in range(len(self)))

    def ref(self, position: int) -> EpisodeRef:
        """The :class:`EpisodeRef` of the episode at ``position`` (episode-index order)."""
        start, length = int(self.start[position]), int(self.length[position])
        t0, t1 = int(self.task_offsets[position]), int(self.task_offsets[position + 1])
        return EpisodeRef(
            episode_index=int(self.index[position]),
            length=length,
            dataset_from_index=start,
            dataset_to_index=start + length,
            data_path=self.data_files[self.data_file[position]],
            row_group=int(self.row_group[position]),
            tasks=tuple(self.tasks[t] for t in self.task_ids[t0:t1]),
            videos=tuple(
                VideoSegment(key, self.video_files[k][self.video_file[k][position]],
                             float(self.video_from[k][position]), float(self.video_to[k][position]))
                for k, key in enumerate(self.cameras)
            ),
        )

    def position(self, episode_index: int) -> int | None:
        """Where episode ``episode_index`` is in the table, or ``None``."""
        if self._range:
            return episode_index if 0 <= episode_index < len(self) else None
        pos = int(np.searchsorted(self.index, episode_index))
        return pos if pos < len(self) and self.index[pos] == episode_index else None

    def data_path(self) -> list[str]:
        """The data file of every episode (relative paths), in table order."""
        return [self.data_files[i] for i in self.data_file]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, EpisodeTable):
            return self._key() == other._key()
        if isinstance(other, Sequence) and not isinstance(other, str):
            return len(other) == len(self) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def _key(self) -> tuple:
        """What two equal tables share: every episode's values (ids resolved to strings)."""
        tasks = np.array(self.tasks, dtype=object)[self.task_ids].tolist() if len(self.task_ids) else []
        videos = tuple(
            (key, np.array(self.video_files[k], dtype=object)[self.video_file[k]].tolist() if len(self) else [],
             self.video_from[k].tolist(), self.video_to[k].tolist())
            for k, key in enumerate(self.cameras)
        )
        return (self.index.tolist(), self.length.tolist(), self.start.tolist(), self.data_path(),
                self.row_group.tolist(), tasks, self.task_offsets.tolist(), videos)

    def __repr__(self) -> str:
        return f"EpisodeTable({len(self)} episodes, {len(self.data_files)} data files, cameras={list(self.cameras)})"

    # ---- pickling: narrow integers, derivable columns left out ---------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        n = len(self.index)
        if self._range:
            state["index"] = None
        if n and np.array_equal(self.start[1:], np.cumsum(self.length)[:-1]) and self.start[0] == 0:
            state["start"] = None
        if np.array_equal(self.task_offsets, np.arange(n + 1)):
            state["task_offsets"] = None
        for name in self._INT_COLUMNS:
            if state[name] is not None:
                state[name] = _compact(state[name])
        state["video_file"] = tuple(_compact(v) for v in self.video_file)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        n = len(state["length"])
        if state["index"] is None:
            state["index"] = np.arange(n, dtype=np.int64)
        if state["start"] is None:
            state["start"] = np.concatenate([[0], np.cumsum(state["length"], dtype=np.int64)[:-1]]) if n else np.zeros(0)
        if state["task_offsets"] is None:
            state["task_offsets"] = np.arange(n + 1)
        for name in self._INT_COLUMNS:
            state[name] = np.asarray(state[name], dtype=np.int64)
        state["video_file"] = tuple(np.asarray(v, dtype=np.int64) for v in state["video_file"])
        self.__dict__.update(state)


@dataclass(frozen=True)
class DatasetMeta:
    """A LeRobot v3.0 dataset's metadata. Picklable (workers receive it); opens files through fsspec.

    ``episodes`` is an :class:`EpisodeTable` (a sequence of :class:`EpisodeRef` in episode-index order,
    made on demand from numpy columns); a sequence of refs passed in is turned into one.
    """

    root: str
    info: Mapping[str, Any]
    features: Mapping[str, Feature]
    tasks: tuple[str, ...]
    episodes: EpisodeTable
    stats: Mapping[str, Any] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.episodes, EpisodeTable):
            object.__setattr__(self, "episodes", EpisodeTable.from_refs(tuple(self.episodes), self.tasks))

    # ---- derived views -------------------------------------------------------------------------
    @property
    def fps(self) -> int:
        return int(self.info["fps"])

    @property
    def codebase_version(self) -> str:
        return str(self.info["codebase_version"])

    @property
    def total_episodes(self) -> int:
        return len(self.episodes)

    @property
    def total_frames(self) -> int:
        return int(self.episodes.length.sum())

    @property
    def video_keys(self) -> tuple[str, ...]:
        return tuple(name for name, f in self.features.items() if f.is_video)

    @property
    def data_keys(self) -> tuple[str, ...]:
        """Features stored as data-file columns (everything but cameras)."""
        return tuple(name for name, f in self.features.items() if not f.is_video)

    @cached_property
    def fingerprint(self) -> str:
        """A short digest of what defines the stream: episode lengths, files, fps, features.

        Loader states carry it so a state from another dataset is refused on restore. Computed from the
        episodes table's columns (no per-episode Python), so every worker gets it in milliseconds.
        """
        import hashlib

        table = self.episodes
        h = hashlib.sha256()
        h.update(json.dumps({"fps": self.fps, "features": sorted(self.features)}, sort_keys=True).encode())
        # data files by name, so tables listing the same files in another order agree
        names = sorted(table.data_files)
        where = {name: i for i, name in enumerate(names)}
        rank = np.array([where[p] for p in table.data_files], dtype=np.int64)
        data_file = rank[table.data_file] if len(table) else table.data_file
        for column in (table.index, table.length, table.start, data_file):
            h.update(np.ascontiguousarray(column, dtype=np.int64).tobytes())
        h.update("\n".join(names).encode())
        return h.hexdigest()[:16]

    def episode(self, episode_index: int) -> EpisodeRef:
        """The ref of one episode by its index (``KeyError`` naming the dataset if absent)."""
        position = self.episodes.position(int(episode_index))
        if position is None:
            raise KeyError(f"episode {episode_index} is not in {self.root} ({self.total_episodes} episodes)")
        return self.episodes.ref(position)

    def episode_lengths(self, episodes: Sequence[int] | None = None) -> dict[int, int]:
        """Episode index -> length, for every episode or those of ``episodes`` (``KeyError`` if absent).

        Built from the columns in one step: the hot paths (ShardSource, plan_epoch) call this rather than
        making one :class:`EpisodeRef` per episode.
        """
        table = self.episodes
        if episodes is None:
            return dict(zip(table.index.tolist(), table.length.tolist(), strict=True))
        wanted = np.asarray([int(i) for i in episodes], dtype=np.int64)
        positions = np.clip(np.searchsorted(table.index, wanted), 0, max(len(table) - 1, 0))
        found = (table.index[positions] == wanted) if len(table) else np.zeros(len(wanted), dtype=bool)
        if not found.all():
            self.episode(int(wanted[~found][0]))  # raises the KeyError naming the dataset
        return dict(zip(wanted.tolist(), table.length[positions].tolist(), strict=True))

    # ---- files ---------------------------------------------------------------------------------
    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        """The dataset's fsspec file system, opened once per process.

        Forked DataLoader workers inherit the parent's objects; fsspec's async file systems (http)
        are not fork-safe, so a file system opened in another process is never reused.
        """
        cached = self.__dict__.get("_fs")
        if cached is None or cached[0] != os.getpid():
            cached = (os.getpid(), url_to_fs(self.root)[0])
            self.__dict__["_fs"] = cached
        return cached[1]

    @cached_property
    def _root_path(self) -> str:
        return url_to_fs(self.root)[1]

    @property
    def is_remote(self) -> bool:
        """True when files are not on the local file system (http, hf, s3 ...): the Prefetcher applies."""
        return fs_is_remote(self.fs)

    def url(self, relative_path: str) -> str:
        """The path of a file of the dataset as the dataset's fsspec file system names it."""
        return join(self._root_path, relative_path)

    def open(self, relative_path: str, mode: str = "rb"):  # noqa: ANN201 - fsspec file object
        return self.fs.open(self.url(relative_path), mode)

    def __getstate__(self) -> dict[str, Any]:
        # cached_property values (file system, lookup tables) are rebuilt in the receiving process.
        state = dict(self.__dict__)
        for key in ("_fs", "_root_path", "fingerprint"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return (
            f"DatasetMeta(root={self.root!r}, episodes={self.total_episodes}, frames={self.total_frames}, "
            f"fps={self.fps}, cameras={list(self.video_keys)}, tasks={len(self.tasks)})"
        )
