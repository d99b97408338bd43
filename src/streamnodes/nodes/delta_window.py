"""DeltaWindow: Frame -> Sample, the windows LeRobot's map-style reader returns (docs/nodes.md)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import numpy as np
from torchdata.nodes import BaseNode

from streamnodes.episode_reader import EpisodeReader
from streamnodes.errors import ConfigError
from streamnodes.format.metadata import DatasetMeta
from streamnodes.nodes._state import shutdown_source
from streamnodes.types import Episode, Frame, Sample, VideoQuery
from streamnodes.windows import cut_windows, delta_indices


class DeltaWindow(BaseNode[Sample]):
    """Cuts each frame's ``delta_timestamps`` windows out of its resident episode.

    For a key with deltas: ``sample[key]`` stacks the clamped rows ``[T, *shape]`` and
    ``sample[key + "_is_pad"]`` flags positions outside the episode; keys without deltas get the
    row itself. Identity columns come as 0-d values and ``task`` as the string from
    ``meta/tasks.parquet``. Cameras are not decoded: each gets a :class:`VideoQuery` with in-file
    timestamps ``from_timestamp + timestamp[q]`` (the column, as LeRobot does; not ``q / fps``).

    ``rebuilder(reader)`` gives FrameShuffle its restore: samples rebuilt from
    ``(episode_index, frame_index)`` refs, reading each distinct episode once.

    State: ``{"source": ...}``; the node is a pure function of its input.
    """

    SOURCE_KEY = "source"

    def __init__(
        self,
        source: BaseNode[Frame],
        meta: DatasetMeta,
        *,
        delta_timestamps: Mapping[str, Sequence[float]] | None = None,
        tolerance_s: float = 1e-4,
    ) -> None:
        super().__init__()
        self.source = source
        self.meta = meta
        self.tolerance_s = tolerance_s
        self.offsets = delta_indices(delta_timestamps, meta.fps, tolerance_s=tolerance_s, features=meta.features)
        self._has_video = bool(meta.video_keys)
        if meta.video_keys and "timestamp" not in meta.data_keys:
            raise ConfigError(f"{meta.root}: the dataset has cameras but no 'timestamp' column to locate frames.")

    def reset(self, initial_state: dict[str, Any] | None = None) -> None:
        super().reset(initial_state)
        self.source.reset(initial_state[self.SOURCE_KEY] if initial_state is not None else None)

    def next(self) -> Sample:
        frame = next(self.source)
        return self.sample(frame.episode, frame.position)

    def sample(self, episode: Episode, position: int) -> Sample:
        """The sample for frame ``position`` of a resident episode (windows by :func:`windows.cut_windows`)."""
        columns = episode.columns
        segments = episode.ref.videos if self._has_video else ()
        if segments:  # each camera's frame timestamps are the timestamp column, windowed like the camera
            timestamps = columns["timestamp"]
            columns = {**columns, **{segment.key: timestamps for segment in segments}}
        values, is_pad = cut_windows(columns, position, episode.ref.length, self.offsets)
        data: dict[str, Any] = {}
        for key in episode.columns:
            data[key] = values[key]
            if key in is_pad:
                data[f"{key}_is_pad"] = is_pad[key]
        if "task_index" in episode.columns:
            data["task"] = self.meta.tasks[int(episode.columns["task_index"][position])]
        videos = {}
        for segment in segments:
            key = segment.key
            single = key not in is_pad
            if single:  # float64 arithmetic either way: the same value as the array form below
                query_ts = np.array([segment.from_timestamp + float(values[key])])
            else:
                data[f"{key}_is_pad"] = is_pad[key]
                query_ts = segment.from_timestamp + values[key].astype(np.float64)
            videos[key] = VideoQuery(
                key=key,
                file=episode.video_files[key],
                episode_index=episode.ref.episode_index,
                timestamps=query_ts,
                single=single,
            )
        return Sample(episode.ref.episode_index, position, data, videos)

    def rebuilder(self, reader: EpisodeReader) -> Callable[[Sequence[tuple[int, int]]], list[Sample]]:
        """``rebuild(refs) -> samples`` for a shuffle buffer's restore: each distinct episode is read once
        through ``reader`` (the consumer's EpisodeReader) and the windows are cut again with :meth:`sample`."""
        return partial(reader.samples, cut=self.sample)

    def shutdown(self) -> None:
        shutdown_source(self.source)

    def get_state(self) -> dict[str, Any]:
        return {self.SOURCE_KEY: self.source.state_dict()}

    def __repr__(self) -> str:
        return f"DeltaWindow(fps={self.meta.fps}, delta_indices={ {k: v.tolist() for k, v in self.offsets.items()} })"
