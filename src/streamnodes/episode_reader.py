"""EpisodeReader: ``episode_index`` (or ref) -> :class:`~streamnodes.types.Episode`, built once per consumer.

Every node that rebuilds data from a state (the pool re-reads its resident episodes; the shuffle
buffer re-cuts its samples) is *given* a reader by whoever builds the graph, instead of asking the
nodes upstream to forward a hook. The reader owns what reading needs: an LRU of open parquet files
and every footer parsed so far (each footer read once per reader, kept when its file is closed; a
remote episode's rows are one ranged read of its row group) and, for remote datasets, a step that swaps
video URLs for handles on local copies (the Prefetcher's :meth:`~streamnodes.nodes.Prefetcher.wrap`),
so a restored episode fetches its videos again.

    reader = EpisodeReader(meta)
    node = EpisodeBatcher(source, reader)            # the stream reads through it
    node = EpisodePool(node, reader=reader)          # a restore reads through it too
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from streamnodes.errors import ConfigError
from streamnodes.format.metadata import DatasetMeta, EpisodeRef
from streamnodes.format.reader import ParquetFileCache, read_episode_columns
from streamnodes.types import Episode, Sample

#: columns downstream nodes need besides the requested ones (video queries, task strings)
IMPLIED_COLUMNS = ("timestamp", "task_index")

VideoStep = Callable[[Episode], Episode]


class EpisodeReader:
    """Reads one episode's rows (one parquet row group, projected to ``columns``) and video locations.

    Args:
        meta: the dataset.
        columns: data features to read (default: all, what LeRobot returns); ``timestamp`` and
            ``task_index`` are added when the dataset has them.
        max_open_files: parquet files kept open (their footers are kept for every file, open or not).
        videos: a step applied to every episode read (remote datasets: swap URLs for local copies).
    """

    def __init__(
        self,
        meta: DatasetMeta,
        columns: Sequence[str] | None = None,
        *,
        max_open_files: int = 4,
        videos: VideoStep | None = None,
        _files: ParquetFileCache | None = None,
    ) -> None:
        if columns is None:
            columns = meta.data_keys
        unknown = [c for c in columns if c not in meta.data_keys]
        if unknown:
            raise ConfigError(
                f"EpisodeReader: columns {unknown} are not data features of {meta.root} ({list(meta.data_keys)})."
            )
        self.meta = meta
        self.columns = tuple(dict.fromkeys([*columns, *(c for c in IMPLIED_COLUMNS if c in meta.data_keys)]))
        self.max_open_files = int(max_open_files)
        self.videos = videos
        self._files = _files if _files is not None else ParquetFileCache(meta, max_open=max_open_files)
        self.episodes_read = 0

    def with_videos(self, videos: VideoStep) -> EpisodeReader:
        """A reader sharing this one's open files whose episodes also go through ``videos``."""
        return EpisodeReader(
            self.meta, self.columns, max_open_files=self.max_open_files, videos=videos, _files=self._files
        )

    def read(self, ref: EpisodeRef) -> Episode:
        """The episode ``ref`` points to, read now (errors name the file and episode)."""
        columns = read_episode_columns(self.meta, ref, self.columns, self._files)
        self.episodes_read += 1
        episode = Episode(ref=ref, columns=columns, video_files={s.key: self.meta.url(s.path) for s in ref.videos})
        return self.videos(episode) if self.videos is not None else episode

    def __call__(self, episode_index: int) -> Episode:
        """The episode with this index (restores read pooled episodes by index)."""
        return self.read(self.meta.episode(int(episode_index)))

    def samples(self, refs: Sequence[tuple[int, int]], cut: Callable[[Episode, int], Sample]) -> list[Sample]:
        """Rebuild samples from ``(episode_index, frame_index)`` refs with ``cut``, reading each episode once."""
        episodes: dict[int, Episode] = {}
        out = []
        for episode_index, position in refs:
            episode = episodes.get(episode_index)
            if episode is None:
                episode = episodes[episode_index] = self(int(episode_index))
            out.append(cut(episode, int(position)))
        return out

    def shutdown(self) -> None:
        """Close the open parquet files (the reader stays usable: files reopen on the next read, with the
        footers already parsed)."""
        self._files.close()

    def __repr__(self) -> str:
        remote = ", videos=" + getattr(self.videos, "__qualname__", type(self.videos).__name__) if self.videos else ""
        return f"EpisodeReader({self.meta.root!r}, columns={list(self.columns)}, episodes_read={self.episodes_read}{remote})"
