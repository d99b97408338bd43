"""``map_style``: a random-access reader (global index -> episode -> window -> decode), as LeRobot's
map-style ``LeRobotDataset`` does, under a ``torch.utils.data.DataLoader`` with a shuffling sampler.

Tabular columns are held in numpy (a best case for it: LeRobot's own reader goes through Arrow per
item). Windows are cut by ``streamnodes.windows.cut_windows``, the arithmetic streamnodes'
DeltaWindow uses; frames are decoded by the same ``decode_query`` with a per-process decoder cache.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from bench_common import (
    RunSpec,
    StatsCollate,
    measure_loader,
    process_cache,
    process_cache_counters,
    to_image,
)


class MapStyleFrames:
    """``dataset[i]`` for a global frame index ``i``: find the episode, cut the windows, decode.

    All episodes are read once into numpy. Each camera's frame timestamps are cut as a column of
    their own: the ``timestamp`` column under the camera's key, with the camera's offsets.
    """

    def __init__(self, meta: Any, dts: dict[str, list[float]], spec: RunSpec) -> None:
        from streamnodes.episode_reader import EpisodeReader
        from streamnodes.windows import delta_indices

        self.meta = meta
        self.spec = spec
        self.offsets = delta_indices(dts, meta.fps, features=meta.features)
        reader = EpisodeReader(meta)
        self.episodes = [reader.read(ref) for ref in meta.episodes]  # in index order: rows [from, to)
        reader.shutdown()
        self.columns = [
            {**episode.columns, **{s.key: episode.columns["timestamp"] for s in episode.ref.videos}}
            for episode in self.episodes
        ]
        self.ends = np.array([ref.dataset_to_index for ref in meta.episodes])

    def __len__(self) -> int:
        return int(self.ends[-1])

    def __getitem__(self, index: int) -> dict[str, Any]:
        from streamnodes.nodes.video_decode import decode_query, to_torch
        from streamnodes.types import VideoQuery
        from streamnodes.windows import cut_windows

        e = int(np.searchsorted(self.ends, index, side="right"))
        episode = self.episodes[e]
        ref = episode.ref
        position = index - ref.dataset_from_index
        values, is_pad = cut_windows(self.columns[e], position, ref.length, self.offsets)
        cameras = {s.key: s for s in ref.videos}
        item = {k: to_torch(v) for k, v in values.items() if k not in cameras}
        item.update({f"{k}_is_pad": to_torch(v) for k, v in is_pad.items()})
        if "task_index" in values:
            item["task"] = self.meta.tasks[int(values["task_index"])]
        cache = process_cache(self.spec.max_decoders)
        for key, segment in cameras.items():
            single = key not in self.offsets
            query = VideoQuery(
                key=key,
                file=episode.video_files[key],
                episode_index=ref.episode_index,
                timestamps=np.atleast_1d(segment.from_timestamp + values[key].astype(np.float64)),
                single=single,
            )
            frames, _ = decode_query(cache, query)
            item[key] = to_image(frames, self.spec, single)
        return item


def run_map_style(spec: RunSpec, meta: Any, dts: dict[str, list[float]], ctx: dict[str, Any]) -> dict[str, Any]:
    import torch
    from torch.utils.data import DataLoader, RandomSampler

    def make():  # noqa: ANN202
        dataset = MapStyleFrames(meta, dts, spec)
        sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(spec.seed))
        return DataLoader(
            dataset, batch_size=spec.batch_size, sampler=sampler, num_workers=spec.num_workers,
            collate_fn=StatsCollate(process_cache_counters),
        )

    result, _, it = measure_loader(make, spec, ctx["lengths"], ctx["offsets"], ctx["cameras"])
    del it  # the DataLoader iterator stops its workers when collected
    result.update(state_bytes=None, resume_s=None)
    return result
