"""LeRobot v3.0 metadata: typed, immutable views of ``meta/`` and one :class:`EpisodeRef` per episode.

The layout constants (path templates, required keys) and the types; no I/O besides the file system
handle. :func:`streamnodes.format.open.open_dataset` builds a :class:`DatasetMeta` from a dataset.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import fsspec

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
    """

    episode_index: int
    length: int
    dataset_from_index: int
    dataset_to_index: int
    data_path: str
    row_group: int
    tasks: tuple[str, ...]
    videos: tuple[VideoSegment, ...] = ()

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


@dataclass(frozen=True)
class DatasetMeta:
    """A LeRobot v3.0 dataset's metadata. Picklable (workers receive it); opens files through fsspec."""

    root: str
    info: Mapping[str, Any]
    features: Mapping[str, Feature]
    tasks: tuple[str, ...]
    episodes: tuple[EpisodeRef, ...]
    stats: Mapping[str, Any] | None = field(default=None, repr=False)

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
        return sum(ep.length for ep in self.episodes)

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

        Loader states carry it so a state from another dataset is refused on restore.
        """
        import hashlib

        h = hashlib.sha256()
        h.update(json.dumps({"fps": self.fps, "features": sorted(self.features)}, sort_keys=True).encode())
        for ep in self.episodes:
            h.update(f"{ep.episode_index}:{ep.length}:{ep.dataset_from_index}:{ep.data_path};".encode())
        return h.hexdigest()[:16]

    def episode(self, episode_index: int) -> EpisodeRef:
        """The ref of one episode by its index (``KeyError`` naming the dataset if absent)."""
        try:
            ref = self._by_index[episode_index]
        except KeyError:
            raise KeyError(f"episode {episode_index} is not in {self.root} ({self.total_episodes} episodes)") from None
        return ref

    @cached_property
    def _by_index(self) -> dict[int, EpisodeRef]:
        return {ep.episode_index: ep for ep in self.episodes}

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
        for key in ("_fs", "_root_path", "_by_index", "fingerprint"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return (
            f"DatasetMeta(root={self.root!r}, episodes={self.total_episodes}, frames={self.total_frames}, "
            f"fps={self.fps}, cameras={list(self.video_keys)}, tasks={len(self.tasks)})"
        )
