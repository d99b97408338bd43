"""``decode_floor``: exactly the decodes the streamnodes run issues, and nothing else.

The same video queries (files and timestamps, per DataLoader worker and batch, found by running the
same streamnodes graph up to, not including, its decoding node) go through the same
``decode_query`` with a reused ``DecoderCache`` in a tight loop: no tabular data, no collation, no
processes to cross. The physical limit of that access pattern. With N workers it is the same
per-worker query lists run by N processes at once.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from typing import Any

from bench_common import QUALITY_KEYS, RssMonitor, RunSpec, other_load, percentiles_ms, system_busy


def consumer_batches(spec: RunSpec) -> list[tuple[int, int]]:
    """Per consumer (DataLoader worker), how many of the run's warm-up and measured batches it makes:
    StatefulDataLoader takes batch ``i`` from worker ``i % num_workers``."""
    n = max(1, spec.num_workers)
    out = []
    for w in range(n):
        warm = sum(1 for i in range(spec.warmup_batches) if i % n == w)
        measured = sum(1 for i in range(spec.warmup_batches, spec.warmup_batches + spec.measure_batches) if i % n == w)
        out.append((warm, measured))
    return out


def query_lists(spec: RunSpec, meta: Any, dts: dict[str, list[float]]) -> list[list[list[Any]]]:
    """The video queries the streamnodes run decodes, per consumer and batch (every sample's camera
    queries in order), from the samples its graph yields before the decoding node."""
    from streamnodes.distributed import Consumer
    from streamnodes.recipes.config import StreamConfig
    from streamnodes.recipes.graph import LeRobotGraph

    config = StreamConfig(delta_timestamps=dts, episode_pool_size=spec.pool_size, seed=spec.seed, max_decoders=spec.max_decoders)
    graph = LeRobotGraph(meta, config)
    n = max(1, spec.num_workers)
    out = []
    for w, (warm, measured) in enumerate(consumer_batches(spec)):
        built = graph(Consumer(0, 1, w, n), 0)
        samples = built.output.source  # everything but the decoding node
        samples.reset(None)
        batches = []
        for _ in range(warm + measured):
            batch = []
            for _ in range(spec.batch_size):
                try:
                    sample = next(samples)
                except StopIteration:
                    break
                batch.extend(sample.videos.values())
            if batch:
                batches.append(batch)
        built.shutdown()
        out.append(batches)
    return out


def _floor_worker(batches: list[list[Any]], warm: int, barrier: Any, max_decoders: int, t0: float, results: Any) -> None:
    """Decode ``batches`` with one reused decoder cache; time the batches after the first ``warm``."""
    from streamnodes.decoder_cache import DecoderCache
    from streamnodes.nodes.video_decode import decode_query

    cache = DecoderCache(max_decoders=max_decoders)
    first = None
    for batch in batches[:warm]:
        for query in batch:
            decode_query(cache, query)
        if first is None:
            first = time.perf_counter() - t0
    if barrier is not None:
        barrier.wait()
    start = time.perf_counter()
    cpu_start = time.process_time()
    busy_start = system_busy()
    last = start
    latencies = []
    frames = 0
    for batch in batches[warm:]:
        for query in batch:
            frames += decode_query(cache, query)[1]
        now = time.perf_counter()
        latencies.append(now - last)
        last = now
    cpu = time.process_time() - cpu_start
    busy = system_busy() - busy_start
    cache.clear()
    results.put({"start": start, "end": last, "latencies": latencies, "frames": frames, "first": first,
                 "cpu": cpu, "busy": busy})


class _ListQueue(list):
    def put(self, item: Any) -> None:
        self.append(item)


def run_decode_floor(spec: RunSpec, meta: Any, dts: dict[str, list[float]], ctx: dict[str, Any]) -> dict[str, Any]:
    lists = query_lists(spec, meta, dts)
    plan = consumer_batches(spec)
    cameras = ctx["cameras"]
    measured_samples = sum(len(b) // cameras for batches, (warm, _) in zip(lists, plan, strict=True) for b in batches[warm:])
    with RssMonitor() as rss:
        t0 = time.perf_counter()
        if spec.num_workers == 0:
            queue: Any = _ListQueue()
            _floor_worker(lists[0], plan[0][0], None, spec.max_decoders, t0, queue)
            reports = list(queue)
        else:
            context = mp.get_context("fork")
            barrier = context.Barrier(len(lists))
            queue = context.Queue()
            procs = [
                context.Process(target=_floor_worker, args=(batches, warm, barrier, spec.max_decoders, t0, queue))
                for batches, (warm, _) in zip(lists, plan, strict=True)
            ]
            for p in procs:
                p.start()
            reports = [queue.get() for _ in procs]
            for p in procs:
                p.join()
    start = min(r["start"] for r in reports)
    end = max(r["end"] for r in reports)
    elapsed = end - start
    frames = sum(r["frames"] for r in reports)
    firsts = [r["first"] for r in reports if r["first"] is not None]
    return {
        "batches_measured": sum(len(b) - warm for b, (warm, _) in zip(lists, plan, strict=True)),
        "samples_measured": measured_samples,
        "frames_decoded": frames,
        "seconds_measured": round(elapsed, 4),
        "samples_per_s": round(measured_samples / elapsed, 2) if elapsed > 0 else None,
        "frames_per_s": round(frames / elapsed, 2) if elapsed > 0 else None,
        "first_batch_s": round(min(firsts), 4) if firsts else None,
        **percentiles_ms([x for r in reports for x in r["latencies"]]),
        "peak_rss_mb": round(rss.peak / 2**20, 1),
        "cache_hit_rate": None,
        "decode_busy": None,
        "state_bytes": None,
        "resume_s": None,
        "cpu_main_s": 0.0 if spec.num_workers else round(reports[0]["cpu"], 3),
        "cpu_workers_s": round(sum(r["cpu"] for r in reports), 3) if spec.num_workers else 0.0,
        "cpu_ms_per_sample": round(sum(r["cpu"] for r in reports) / measured_samples * 1e3, 4) if measured_samples else None,
        **dict.fromkeys(QUALITY_KEYS),
        # the floor processes run over the same window: the machine's busy seconds (mean over them) minus theirs
        "other_load": other_load(sum(r["busy"] for r in reports) / len(reports), sum(r["cpu"] for r in reports), elapsed),
    }
