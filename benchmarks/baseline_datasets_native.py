"""``datasets_native``: the HF ``datasets`` streaming pipeline LeRobot moved to.

``split_dataset_by_node -> batch(by_column="episode_index") -> shuffle(buffer=pool) -> map(explode to
frames with windows) -> shuffle(buffer)``, decoding at the end with the same ``decode_query`` and a
per-process decoder cache. Windows come from ``streamnodes.windows.window``, for every frame of an
episode at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from bench_common import (
    RunSpec,
    StatsCollate,
    keep_alive,
    measure_loader,
    process_cache,
    process_cache_counters,
    to_image,
)

from streamnodes.windows import window


def _explode(batch: dict[str, list[Any]], *, video: dict[int, dict[str, tuple[str, float]]], offsets: dict[str, np.ndarray], tasks: tuple[str, ...]) -> dict[str, Any]:
    """One episode (a by-column batch, as lists) -> its frames, with windows and per-camera queries."""
    out: dict[str, list[Any]] = {}
    columns = {k: np.asarray(v[0]) for k, v in batch.items()}  # batch_size=1: one episode per call
    n_rows = len(columns["frame_index"])
    episode = int(columns["episode_index"][0])
    positions = np.arange(n_rows)
    for key, column in columns.items():
        off = offsets.get(key)
        if off is None:
            out[key] = list(column)
        else:
            rows, is_pad = window(positions[:, None], n_rows, off[None, :])  # every frame's window at once
            out[key] = list(column[rows])
            out[f"{key}_is_pad"] = list(is_pad)
    out["task"] = [tasks[int(t)] for t in columns["task_index"]]
    ts = columns["timestamp"].astype(np.float64)
    for key, (path, from_ts) in video[episode].items():
        off = offsets.get(key)
        if off is None:
            out[f"{key}.timestamps"] = list(from_ts + ts[:, None])
        else:
            rows, is_pad = window(positions[:, None], n_rows, off[None, :])
            out[f"{key}_is_pad"] = list(is_pad)
            out[f"{key}.timestamps"] = list(from_ts + ts[rows])
        out[f"{key}.path"] = [path] * n_rows
    return out


class HFDecoded:
    """Iterates the HF pipeline and decodes each row's cameras at the end (decode-on-exit)."""

    def __init__(self, hf_dataset: Any, cameras: dict[str, bool], spec: RunSpec) -> None:
        self.ds = hf_dataset
        self.cameras = cameras  # key -> single
        self.spec = spec

    def __iter__(self) -> Iterator[dict[str, Any]]:
        from streamnodes.nodes.video_decode import decode_query, to_torch
        from streamnodes.types import VideoQuery

        cache = process_cache(self.spec.max_decoders)
        skip = {f"{k}.{s}" for k in self.cameras for s in ("path", "timestamps")}
        for row in self.ds:
            item = {k: to_torch(v if not isinstance(v, list) else np.asarray(v)) for k, v in row.items() if k not in skip}
            for key, single in self.cameras.items():
                query = VideoQuery(key=key, file=row[f"{key}.path"], episode_index=int(row["episode_index"]),
                                   timestamps=np.asarray(row[f"{key}.timestamps"], dtype=np.float64), single=single)
                frames, _ = decode_query(cache, query)
                item[key] = to_image(frames, self.spec, single)
            yield item


def build_datasets_native(spec: RunSpec, meta: Any, dts: dict[str, list[float]]):  # noqa: ANN202
    from functools import partial

    import torch
    from datasets import load_dataset
    from datasets.distributed import split_dataset_by_node

    from streamnodes.windows import delta_indices

    files = sorted({meta.url(ep.data_path) for ep in meta.episodes})
    ds = load_dataset("parquet", data_files=files, split="train", streaming=True)
    ds = split_dataset_by_node(ds, rank=0, world_size=1)
    ds = ds.batch(by_column="episode_index")
    ds = ds.shuffle(seed=spec.seed, buffer_size=spec.pool_size)
    offsets = delta_indices(dts, meta.fps, features=meta.features)
    video = {ep.episode_index: {s.key: (meta.url(s.path), s.from_timestamp) for s in ep.videos} for ep in meta.episodes}
    ds = ds.map(partial(_explode, video=video, offsets=offsets, tasks=meta.tasks), batched=True, batch_size=1)
    ds = ds.shuffle(seed=spec.seed + 1, buffer_size=spec.frame_buffer)

    class _Iterable(torch.utils.data.IterableDataset):
        def __init__(self, inner: HFDecoded) -> None:
            self.inner = inner

        def __iter__(self):  # noqa: ANN204
            return iter(self.inner)

    cameras = {k: k not in offsets for k in meta.video_keys}
    return _Iterable(HFDecoded(ds, cameras, spec))


def run_datasets_native(spec: RunSpec, meta: Any, dts: dict[str, list[float]], ctx: dict[str, Any]) -> dict[str, Any]:
    from torch.utils.data import DataLoader

    def make():  # noqa: ANN202
        return DataLoader(
            build_datasets_native(spec, meta, dts), batch_size=spec.batch_size, num_workers=spec.num_workers,
            collate_fn=StatsCollate(process_cache_counters),
        )

    result, _, it = measure_loader(make, spec, ctx["lengths"], ctx["offsets"], ctx["cameras"])
    keep_alive(it)  # closing it now would sleep 5 s per parquet iterator (release())
    result.update(state_bytes=None, resume_s=None)
    return result
