"""``streamnodes``: ``streamnodes.build_loader`` (the packaged recipe), as a user would call it.

Besides throughput, it measures what only a resumable loader has: the size of a state and how long a
fresh loader takes from ``load_state_dict`` to its first batch at 10/50/90% of an epoch.
"""

from __future__ import annotations

import dataclasses
import io
import time
from typing import Any

from bench_common import RESUME_POINTS, STATS_KEY, RunSpec, image_dtype, measure_loader

from streamnodes.recipes.bridge import NodeIterableDataset


class _StatsIterator:
    """``iter(dataset)`` of :class:`StatsDataset`: each batch plus ``STATS_KEY: (worker, cache hits,
    cache misses, decode seconds, frames decoded)``, this process's cumulative ``BatchDecode.stats()``.
    A tuple of ints, pickled with the batch: no extra shared-memory tensor per batch."""

    def __init__(self, dataset: NodeIterableDataset, inner: Any) -> None:
        self.dataset = dataset
        self.inner = inner
        from torch.utils.data import get_worker_info

        info = get_worker_info()
        self.worker = info.id if info is not None else 0

    def __iter__(self) -> _StatsIterator:
        return self

    def __next__(self) -> Any:
        batch = next(self.inner)
        stats = self.dataset.decode_stats()
        if stats:
            cache = stats["cache"]
            batch[STATS_KEY] = (self.worker, cache["hits"], cache["misses"], stats.get("decode_seconds", 0.0),
                                stats.get("frames_decoded", 0))
        return batch


class StatsDataset(NodeIterableDataset):
    """The loader's own dataset, iterated with :class:`_StatsIterator`: the decode counters live in
    each DataLoader worker and the batch is the only way back. The loader is built exactly as a user
    builds it (no ``collate_fn``: batches are made by BatchDecode inside the graph); only the
    dataset's class is switched (:func:`with_stats`), its state and graph are untouched."""

    def __iter__(self) -> Any:
        return _StatsIterator(self, super().__iter__())


def with_stats(loader: Any) -> Any:
    loader.dataset.__class__ = StatsDataset
    return loader


def build_streamnodes(spec: RunSpec, meta: Any, dts: dict[str, list[float]]):  # noqa: ANN201
    import streamnodes as sn

    return sn.build_loader(
        meta,
        batch_size=spec.batch_size,
        num_workers=spec.num_workers,
        delta_timestamps=dts,
        episode_pool_size=spec.pool_size,
        seed=spec.seed,
        image_dtype=image_dtype(spec),
        max_decoders=spec.max_decoders * (max(1, spec.decode_threads) if spec.decoders_per_thread else 1),
        decode_threads=spec.decode_threads,
        decode_ahead=spec.decode_ahead,
        layout="channels_last",
    )


def state_bytes(state: Any) -> int:
    import torch

    buffer = io.BytesIO()
    torch.save(state, buffer)
    return len(buffer.getvalue())


def tabular_view(meta: Any) -> Any:
    """The same dataset without its video files: every episode's ``videos`` emptied, features kept.

    A loader over it walks exactly the same stream (the order and every node's state depend on
    episode lengths, seeds and settings, never on pixels) and decodes nothing, so states deep into an
    epoch are reached in seconds. They are then restored into the real loader, which checks them.
    """
    episodes = tuple(dataclasses.replace(ref, videos=()) for ref in meta.episodes)
    return dataclasses.replace(meta, episodes=episodes)


def resume_states(spec: RunSpec, meta: Any, dts: dict[str, list[float]]) -> tuple[dict[int, Any], int]:
    """Loader states at 10/50/90% of epoch 0, taken from a loader over :func:`tabular_view`.
    Returns the states by percent and the epoch's batches."""
    loader = build_streamnodes(spec, tabular_view(meta), dts)
    n = loader.batches_per_epoch()
    targets = {max(1, round(p / 100 * n)): p for p in RESUME_POINTS}
    states: dict[int, Any] = {}
    it = iter(loader)
    for k in range(1, max(targets) + 1):
        next(it)
        if k in targets:
            states[targets[k]] = loader.state_dict()
    del it
    loader.shutdown()
    return states, n


def resume_latency(spec: RunSpec, meta: Any, dts: dict[str, list[float]], state: Any) -> float:
    """Seconds from ``load_state_dict`` on a fresh loader to its first batch."""
    loader = build_streamnodes(spec, meta, dts)
    start = time.perf_counter()
    loader.load_state_dict(state)
    it = iter(loader)
    next(it)
    elapsed = time.perf_counter() - start
    del it
    loader.shutdown()
    return elapsed


def run_streamnodes(spec: RunSpec, meta: Any, dts: dict[str, list[float]], ctx: dict[str, Any]) -> dict[str, Any]:
    def make():  # noqa: ANN202
        return with_stats(build_streamnodes(spec, meta, dts))

    result, loader, it = measure_loader(make, spec, ctx["lengths"], ctx["offsets"], ctx["cameras"])
    result["state_bytes"] = state_bytes(loader.state_dict())
    result["epoch_batches"] = loader.batches_per_epoch()
    del it
    loader.shutdown()
    del loader
    result["resume_s"] = None
    if spec.resume:
        states, _ = resume_states(spec, meta, dts)
        result["resume_s"] = {str(p): round(resume_latency(spec, meta, dts, states[p]), 4) for p in RESUME_POINTS}
        result["resume_state_bytes"] = {str(p): state_bytes(states[p]) for p in RESUME_POINTS}
    return result
