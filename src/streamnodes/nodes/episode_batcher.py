"""EpisodeBatcher: EpisodeRef -> Episode, reading one parquet row group with only the needed columns."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torchdata.nodes import BaseNode

from streamnodes.episode_reader import EpisodeReader
from streamnodes.errors import StreamNodesError
from streamnodes.format.metadata import DatasetMeta, EpisodeRef
from streamnodes.nodes._state import shutdown_source
from streamnodes.types import Episode


class EpisodeBatcher(BaseNode[Episode]):
    """Reads each episode's rows (one row group of one data file, local or any fsspec URL).

    ``reader`` is the consumer's :class:`~streamnodes.episode_reader.EpisodeReader` (give the same
    one to the pool, which re-reads its episodes through it on restore); a ``DatasetMeta`` makes a
    private reader of every data feature (``columns``, ``max_open_files`` as EpisodeReader's).
    Each camera's video location is the file's path or URL; the Prefetcher swaps in local copies
    for remote data.

    State: ``{"source": ...}`` (one episode out per ref in; nothing of its own).
    """

    SOURCE_KEY = "source"

    def __init__(
        self,
        source: BaseNode[EpisodeRef],
        reader: EpisodeReader | DatasetMeta,
        *,
        columns: Sequence[str] | None = None,
        max_open_files: int = 4,
    ) -> None:
        super().__init__()
        self.source = source
        self.reader = (
            reader if isinstance(reader, EpisodeReader) else EpisodeReader(reader, columns, max_open_files=max_open_files)
        )
        self.meta = self.reader.meta
        self.columns = self.reader.columns

    def reset(self, initial_state: dict[str, Any] | None = None) -> None:
        super().reset(initial_state)
        self.source.reset(initial_state[self.SOURCE_KEY] if initial_state is not None else None)

    def next(self) -> Episode:
        return self.read(next(self.source))

    def read(self, ref: EpisodeRef) -> Episode:
        """The episode ``ref`` points to, read now."""
        try:
            return self.reader.read(ref)
        except StreamNodesError as error:
            error.with_context(episode_index=ref.episode_index)  # EpisodeGuard skips by it
            raise

    @property
    def episodes_read(self) -> int:
        return self.reader.episodes_read

    def get_state(self) -> dict[str, Any]:
        return {self.SOURCE_KEY: self.source.state_dict()}

    def shutdown(self) -> None:
        """Close the reader's open files, then shut the source down (torchdata's shutdown chain)."""
        self.reader.shutdown()
        shutdown_source(self.source)

    def __repr__(self) -> str:
        return f"EpisodeBatcher(columns={list(self.columns)}, episodes_read={self.episodes_read})"

