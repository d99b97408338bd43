"""EpisodeBatcher: EpisodeRef -> Episode, reading one parquet row group with only the needed columns."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torchdata.nodes import BaseNode

from streamnodes.errors import ConfigError, StreamNodesError
from streamnodes.format.metadata import DatasetMeta, EpisodeRef
from streamnodes.format.reader import ParquetFileCache, read_episode_columns
from streamnodes.types import Episode


class EpisodeBatcher(BaseNode[Episode]):
    """Reads each episode's rows (one row group of one data file, local or any fsspec URL).

    ``columns`` defaults to every data feature (what LeRobot's reader returns). Each camera's
    video location is the file's path or URL; the Prefetcher swaps in local copies for remote data.
    ``load_episode(i)`` re-reads one episode by index: pools use it to restore their state.

    State: ``{"source": ...}`` (one episode out per ref in; nothing of its own).
    """

    SOURCE_KEY = "source"

    def __init__(
        self,
        source: BaseNode[EpisodeRef],
        meta: DatasetMeta,
        *,
        columns: Sequence[str] | None = None,
        max_open_files: int = 4,
    ) -> None:
        super().__init__()
        self.source = source
        self.meta = meta
        if columns is None:
            columns = meta.data_keys
        unknown = [c for c in columns if c not in meta.data_keys]
        if unknown:
            raise ConfigError(f"EpisodeBatcher: columns {unknown} are not data features of {meta.root} ({list(meta.data_keys)}).")
        # timestamp and task_index are needed downstream (video queries, task strings).
        self.columns = tuple(dict.fromkeys([*columns, *(c for c in ("timestamp", "task_index") if c in meta.data_keys)]))
        self._files = ParquetFileCache(meta, max_open=max_open_files)
        self.episodes_read = 0

    def reset(self, initial_state: dict[str, Any] | None = None) -> None:
        super().reset(initial_state)
        self.source.reset(initial_state[self.SOURCE_KEY] if initial_state is not None else None)

    def next(self) -> Episode:
        return self.read(next(self.source))

    def read(self, ref: EpisodeRef) -> Episode:
        """The episode ``ref`` points to, read now."""
        try:
            columns = read_episode_columns(self.meta, ref, self.columns, self._files)
        except StreamNodesError as error:
            error.episode_index = ref.episode_index  # type: ignore[attr-defined]  # for EpisodeGuard
            raise
        self.episodes_read += 1
        videos = {seg.key: self.meta.url(seg.path) for seg in ref.videos}
        return Episode(ref=ref, columns=columns, video_files=videos)

    def load_episode(self, episode_index: int) -> Episode:
        """Re-read one episode by index, outside the stream (state restore)."""
        return self.read(self.meta.episode(episode_index))

    def get_state(self) -> dict[str, Any]:
        return {self.SOURCE_KEY: self.source.state_dict()}

    def close(self) -> None:
        self._files.close()

    def __repr__(self) -> str:
        return f"EpisodeBatcher(columns={list(self.columns)}, episodes_read={self.episodes_read})"
