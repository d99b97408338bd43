"""``streamnodes``: ``streamnodes.build_loader`` (the packaged recipe), as a user would call it.

Besides throughput, it measures what only a resumable loader has: the size of a state and how long a
fresh loader takes from ``load_state_dict`` to its first batch at 10/50/90% of an epoch.
"""

from __future__ import annotations

import dataclasses
import io
import time
from typing import Any

from bench_common import RESUME_POINTS, RunSpec, StatsCollate, image_dtype, measure_loader


class StreamnodesCounters:
    """(hits, misses) of the decoder cache of the graph iterating in this process: a DataLoader
    worker's (``get_worker_info().dataset``), or without workers the loader's own ``dataset``, read
    through ``NodeIterableDataset.decode_stats()``."""

    def __init__(self) -> None:
        self.dataset: Any = None  # set once the loader exists (main-process iteration)

    def __call__(self) -> tuple[int, int] | None:
        from torch.utils.data import get_worker_info

        info = get_worker_info()
        dataset = info.dataset if info is not None else self.dataset
        stats = dataset.decode_stats() if dataset is not None else None
        if not stats:
            return None
        return stats["cache"]["hits"], stats["cache"]["misses"]


def build_streamnodes(spec: RunSpec, meta: Any, dts: dict[str, list[float]], collate_fn: Any = None):  # noqa: ANN201
    import streamnodes as sn

    return sn.build_loader(
        meta,
        batch_size=spec.batch_size,
        num_workers=spec.num_workers,
        delta_timestamps=dts,
        episode_pool_size=spec.pool_size,
        seed=spec.seed,
        image_dtype=image_dtype(spec),
        max_decoders=spec.max_decoders,
        collate_fn=collate_fn,
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
    counters = StreamnodesCounters()

    def make():  # noqa: ANN202
        loader = build_streamnodes(spec, meta, dts, collate_fn=StatsCollate(counters))
        counters.dataset = loader.dataset
        return loader

    result, loader, it = measure_loader(make, spec, ctx["lengths"], ctx["offsets"], ctx["cameras"])
    result["state_bytes"] = state_bytes(loader.state_dict())
    result["epoch_batches"] = loader.batches_per_epoch()
    del it
    loader.shutdown()
    del loader
    counters.dataset = None
    result["resume_s"] = None
    if spec.resume:
        states, _ = resume_states(spec, meta, dts)
        result["resume_s"] = {str(p): round(resume_latency(spec, meta, dts, states[p]), 4) for p in RESUME_POINTS}
        result["resume_state_bytes"] = {str(p): state_bytes(states[p]) for p in RESUME_POINTS}
    return result
