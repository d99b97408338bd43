"""The loaders ``benchmarks/dataloading.py`` compares, and how one run of one of them is measured.

Every loader reads the same dataset with the same batch size, the same ``delta_timestamps`` and the
same decoder code and settings (``streamnodes.decoder_cache``: ``seek_mode="approximate"``, one FFmpeg
thread, decoders reused per file; ``streamnodes.nodes.video_decode.decode_query``: one
``get_frames_at`` per camera and sample with the unique frame indices). What differs is the data
path around the decoder:

- ``streamnodes``: ``streamnodes.build_loader`` (the packaged recipe), as a user would call it.
- ``decode_floor``: exactly the torchcodec decodes the streamnodes run issues (the same files and
  frame indices, per worker), in a tight loop with reused decoders and nothing else: no tabular
  data, no collation, no processes to cross. The physical limit of that access pattern. With N
  workers it is the same per-worker decode lists run by N processes at once.
- ``map_style``: a random-access reader (global index -> episode -> window -> decode), as LeRobot's
  map-style ``LeRobotDataset`` does, under a ``torch.utils.data.DataLoader`` with a shuffling
  sampler. Tabular columns are held in numpy (a best case for it: LeRobot's own reader goes through
  Arrow per item).
- ``datasets_native``: the HF ``datasets`` streaming pipeline LeRobot moved to:
  ``split_dataset_by_node -> batch(by_column="episode_index") -> shuffle(buffer=pool) ->
  map(explode to frames with windows) -> shuffle(buffer)``, decoding at the end.

``run(spec)`` measures one (loader, mode, num_workers) and returns a flat dict of metrics.
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing as mp
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

LOADERS = ("streamnodes", "decode_floor", "map_style", "datasets_native")
MODES = ("single", "window")
RESUME_POINTS = (10, 50, 90)


@dataclass
class RunSpec:
    """One measured run. Plain values: it travels to a subprocess as JSON."""

    loader: str
    mode: str
    num_workers: int
    root: str
    batch_size: int = 32
    warmup_batches: int = 6
    measure_batches: int = 100
    pool_size: int = 64
    frame_buffer: int = 1000
    seed: int = 0
    image_dtype: str = "uint8"  # or "float32" (LeRobot's /255 floats: 4x the bytes through collate and IPC)
    max_decoders: int = 16
    resume: bool = True
    action_steps: int = 16
    window_frames: int = 8
    window_spacing_s: float = 1.0
    torch_threads: int | None = None  # None: torch's default (one per core); DataLoader workers always use 1
    sharing_strategy: str | None = None  # torch.multiprocessing sharing strategy; None: torch's default

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------------
# Shared pieces


def delta_timestamps(fps: int, video_keys: tuple[str, ...], spec: RunSpec) -> dict[str, list[float]]:
    """``single``: a 16-step action chunk (cameras: the current frame). ``window``: the same chunk and
    every camera at 8 timestamps spaced 1 s ending at the current frame."""
    dts: dict[str, list[float]] = {"action": [i / fps for i in range(spec.action_steps)]}
    if spec.mode == "window":
        n = spec.window_frames
        for key in video_keys:
            dts[key] = [-(n - 1 - k) * spec.window_spacing_s for k in range(n)]
    elif spec.mode != "single":
        raise ValueError(f"unknown mode {spec.mode!r}; expected one of {MODES}")
    return dts


def _image_dtype(spec: RunSpec):  # noqa: ANN202 - torch.dtype
    import torch

    return torch.uint8 if spec.image_dtype == "uint8" else torch.float32


def _to_image(frames, spec: RunSpec, single: bool):  # noqa: ANN001, ANN202 - tensors
    """The same output conversion VideoDecode applies (``[C,H,W]`` when single, float32 ``/255``)."""
    if single:
        frames = frames[0]
    if spec.image_dtype == "uint8":
        return frames
    return frames.float().div_(255)


class RssMonitor:
    """Peak resident memory of this process plus all its descendants, sampled every ``interval`` s.

    Sums RSS, so pages shared copy-on-write between a parent and its forked workers count once per
    process (an upper bound on what the tree really uses).
    """

    def __init__(self, interval: float = 0.05) -> None:
        import psutil

        self.interval = interval
        self.process = psutil.Process(os.getpid())
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def sample(self) -> int:
        import psutil

        total = 0
        for p in [self.process, *self.process.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                total += p.memory_info().rss
        self.peak = max(self.peak, total)
        return total

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> RssMonitor:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def tree_cpu() -> tuple[float, float]:
    """CPU seconds (user + system) used so far by this process and by its live descendants."""
    import psutil

    me = psutil.Process(os.getpid())
    t = me.cpu_times()
    children = 0.0
    for p in me.children(recursive=True):
        try:
            c = p.cpu_times()
            children += c.user + c.system
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return t.user + t.system, children


def _cpu_fields(start: tuple[float, float], end: tuple[float, float], samples: int) -> dict[str, float | None]:
    main, workers = end[0] - start[0], end[1] - start[1]
    per = (main + workers) / samples * 1e3 if samples else None
    return {"cpu_main_s": round(main, 3), "cpu_workers_s": round(workers, 3),
            "cpu_ms_per_sample": round(per, 4) if per is not None else None}


def _percentiles_ms(latencies: list[float]) -> dict[str, float | None]:
    if not latencies:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None}
    a = np.asarray(latencies) * 1000.0
    return {f"p{q}_ms": round(float(np.percentile(a, q)), 3) for q in (50, 95, 99)}


def decoded_frames(lengths: dict[int, int], episodes: list[int], frames: list[int], offsets: np.ndarray | None, cameras: int) -> int:
    """Distinct frames decoded for these samples: per camera 1 without a window, else the number of
    distinct clamped window positions (padded positions repeat a boundary frame, decoded once)."""
    if offsets is None:
        return cameras * len(episodes)
    total = 0
    for e, f in zip(episodes, frames, strict=True):
        rows = np.clip(f + offsets, 0, lengths[e] - 1)
        total += len(np.unique(rows))
    return cameras * total


def shuffle_quality(episodes_per_batch: list[list[int]], lengths: dict[int, int], seed: int = 0, draws: int = 5) -> dict[str, float | None]:
    """How well the stream mixes episodes, next to a uniform random permutation of all frames cut into
    batches of the same sizes:

    - ``distinct_episodes_per_batch``: mean number of different episodes in a batch;
    - ``episode_distance``: mean ``|rank(e_i+1) - rank(e_i)|`` over consecutive samples, where an
      episode's rank is the order in which the stream first visits it (0 for the first episode seen).
      A stream that works through a few episodes at a time scores low; a uniform permutation scores
      about a third of the episodes seen.
    """
    keys = ("distinct_episodes_per_batch", "distinct_episodes_per_batch_uniform", "episode_distance", "episode_distance_uniform")
    if not episodes_per_batch or sum(len(b) for b in episodes_per_batch) < 2:
        return dict.fromkeys(keys)

    def metrics(batches: list[list[int]]) -> tuple[float, float]:
        distinct = float(np.mean([len(set(b)) for b in batches]))
        ranks: dict[int, int] = {}
        flat = [ranks.setdefault(e, len(ranks)) for b in batches for e in b]
        return distinct, float(np.mean(np.abs(np.diff(flat))))

    order = sorted(lengths)
    all_frames = np.repeat(np.arange(len(order)), [lengths[e] for e in order])
    sizes = [len(b) for b in episodes_per_batch]
    cuts = np.cumsum(sizes)[:-1]
    rng = np.random.default_rng(seed)
    ref = [metrics([p.tolist() for p in np.split(rng.permutation(all_frames)[: sum(sizes)], cuts)]) for _ in range(draws)]
    distinct, distance = metrics(episodes_per_batch)
    values = (distinct, float(np.mean([r[0] for r in ref])), distance, float(np.mean([r[1] for r in ref])))
    return {k: round(v, 3) for k, v in zip(keys, values, strict=True)}


# ---- decoder-cache statistics out of DataLoader workers --------------------------------------------
# The cache lives in each worker; the only channel back is the batch. A collate wrapper appends the
# worker's cumulative (worker id, hits, misses) to every batch: one tiny tensor, a few microseconds.

STATS_KEY = "_bench_cache_stats"
_PROCESS_CACHE: Any = None  # map_style / datasets_native: one DecoderCache per process
_MAIN_DATASET: Any = None  # streamnodes with num_workers=0: the loader's dataset in this process


def _process_cache(max_decoders: int):  # noqa: ANN202
    """This process's decoder cache. Never one inherited through fork: a forked worker sharing its
    parent's open decoders (and file offsets) reads garbage."""
    global _PROCESS_CACHE
    if _PROCESS_CACHE is None or _PROCESS_CACHE[0] != os.getpid():
        from streamnodes.decoder_cache import DecoderCache

        _PROCESS_CACHE = (os.getpid(), DecoderCache(max_decoders=max_decoders))
    return _PROCESS_CACHE[1]


def _streamnodes_cache():  # noqa: ANN202
    from torch.utils.data import get_worker_info

    info = get_worker_info()
    dataset = info.dataset if info is not None else _MAIN_DATASET
    graph = getattr(dataset, "_graph", None)
    return getattr(graph, "cache", None)


def _global_cache():  # noqa: ANN202
    return _PROCESS_CACHE[1] if _PROCESS_CACHE is not None and _PROCESS_CACHE[0] == os.getpid() else None


class StatsCollate:
    """``default_collate`` plus this process's decoder-cache counters under ``STATS_KEY``."""

    def __init__(self, cache_of: Callable[[], Any]) -> None:
        self.cache_of = cache_of

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        import torch
        from torch.utils.data import default_collate, get_worker_info

        batch = default_collate(samples)
        cache = self.cache_of()
        info = get_worker_info()
        worker = info.id if info is not None else 0
        hits, misses = (cache.hits, cache.misses) if cache is not None else (0, 0)
        batch[STATS_KEY] = torch.tensor([worker, hits, misses], dtype=torch.int64)
        return batch


_KEEPALIVE: list[Any] = []  # iterators whose teardown is slow (see release())


def release() -> None:
    """Close what the runs kept alive. HF ``datasets`` sleeps ``datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN``
    (5 s) per threaded parquet iterator it closes, so the benchmark's subprocesses skip this and exit."""
    while _KEEPALIVE:
        _close_iterator(_KEEPALIVE.pop())


def _close_iterator(it: Any) -> None:
    shutdown = getattr(it, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()


# ---------------------------------------------------------------------------------------------------
# Measuring an iterator of batches (streamnodes, map_style, datasets_native)


def _measure_loader(make: Callable[[], Any], spec: RunSpec, lengths: dict[int, int], offsets: np.ndarray | None, cameras: int) -> tuple[dict[str, Any], Any, Any]:
    """Build with ``make()``, take warm-up + measured batches, return metrics, the loader and iterator."""
    total = spec.warmup_batches + spec.measure_batches
    episodes: list[list[int]] = []
    frames: list[list[int]] = []
    cache_counters: dict[int, tuple[int, int]] = {}
    times: list[float] = []
    with RssMonitor() as rss:
        t0 = time.perf_counter()
        loader = make()
        it = iter(loader)
        cpu_start = tree_cpu() if spec.warmup_batches == 0 else None
        for i in range(total):
            try:
                batch = next(it)
            except StopIteration:
                break
            times.append(time.perf_counter())
            if i + 1 == spec.warmup_batches:
                cpu_start = tree_cpu()
            episodes.append(batch["episode_index"].tolist())
            frames.append(batch["frame_index"].tolist())
            stats = batch.get(STATS_KEY)
            if stats is not None:
                w, h, m = stats.tolist()
                cache_counters[w] = (h, m)
        cpu_end = tree_cpu()
    measured = slice(spec.warmup_batches, len(times))
    n_samples = sum(len(b) for b in episodes[measured])
    n_frames = sum(
        decoded_frames(lengths, e, f, offsets, cameras) for e, f in zip(episodes[measured], frames[measured], strict=True)
    )
    start = times[spec.warmup_batches - 1] if spec.warmup_batches > 0 and len(times) >= spec.warmup_batches else t0
    elapsed = (times[-1] - start) if len(times) > spec.warmup_batches else float("nan")
    latencies = list(np.diff([start, *times[measured]])) if len(times) > spec.warmup_batches else []
    hits = sum(h for h, _ in cache_counters.values())
    misses = sum(m for _, m in cache_counters.values())
    result = {
        "batches_measured": len(times) - spec.warmup_batches,
        "samples_measured": n_samples,
        "frames_decoded": n_frames,
        "seconds_measured": round(elapsed, 4),
        "samples_per_s": round(n_samples / elapsed, 2) if elapsed > 0 else None,
        "frames_per_s": round(n_frames / elapsed, 2) if elapsed > 0 else None,
        "first_batch_s": round(times[0] - t0, 4) if times else None,
        **_percentiles_ms(latencies),
        "peak_rss_mb": round(rss.peak / 2**20, 1),
        "cache_hit_rate": round(hits / (hits + misses), 4) if hits + misses else None,
        **shuffle_quality(episodes, lengths, seed=spec.seed),
        **_cpu_fields(cpu_start or cpu_end, cpu_end, n_samples),
    }
    return result, loader, it


# ---------------------------------------------------------------------------------------------------
# streamnodes


def _build_streamnodes(spec: RunSpec, meta: Any, dts: dict[str, list[float]]):  # noqa: ANN202
    import streamnodes as sn

    return sn.build_loader(
        meta,
        batch_size=spec.batch_size,
        num_workers=spec.num_workers,
        delta_timestamps=dts,
        episode_pool_size=spec.pool_size,
        seed=spec.seed,
        image_dtype=_image_dtype(spec),
        max_decoders=spec.max_decoders,
    )


def _state_bytes(state: Any) -> int:
    import torch

    buffer = io.BytesIO()
    torch.save(state, buffer)
    return len(buffer.getvalue())


def _fake_decode_query(cache: Any, query: Any, *, tolerance_s: float = 1e-4, timeout: float | None = None):  # noqa: ANN202, ARG001
    import torch

    return torch.zeros((len(query.timestamps), 3, 1, 1), dtype=torch.uint8), 1


def _resume_states(spec: RunSpec, meta: Any, dts: dict[str, list[float]]) -> tuple[dict[int, Any], int]:
    """Real loader states at 10/50/90% of epoch 0, reached quickly: the loader runs with pixel decoding
    replaced by a stub (VideoDecode's state is its source's, so states are exactly those of a real
    run; forked workers inherit the stub). Returns the states by percent and the epoch's batches."""
    import streamnodes.nodes.video_decode as vd

    real = vd.decode_query
    vd.decode_query = _fake_decode_query
    try:
        loader = _build_streamnodes(spec, meta, dts)
        n = loader.batches_per_epoch()
        targets = {max(1, round(p / 100 * n)): p for p in RESUME_POINTS}
        states: dict[int, Any] = {}
        it = iter(loader)
        for k in range(1, max(targets) + 1):
            next(it)
            if k in targets:
                states[targets[k]] = loader.state_dict()
        _close_iterator(it)
        del it, loader
    finally:
        vd.decode_query = real
    return states, n


def _resume_latency(spec: RunSpec, meta: Any, dts: dict[str, list[float]], state: Any) -> float:
    loader = _build_streamnodes(spec, meta, dts)
    start = time.perf_counter()
    loader.load_state_dict(state)
    it = iter(loader)
    next(it)
    elapsed = time.perf_counter() - start
    _close_iterator(it)
    return elapsed


def run_streamnodes(spec: RunSpec, meta: Any, dts: dict[str, list[float]], ctx: dict[str, Any]) -> dict[str, Any]:
    global _MAIN_DATASET

    def make():  # noqa: ANN202
        global _MAIN_DATASET
        loader = _build_streamnodes(spec, meta, dts)
        loader.collate_fn = StatsCollate(_streamnodes_cache)
        _MAIN_DATASET = loader.dataset
        return loader

    result, loader, it = _measure_loader(make, spec, ctx["lengths"], ctx["offsets"], ctx["cameras"])
    result["state_bytes"] = _state_bytes(loader.state_dict())
    result["epoch_batches"] = loader.batches_per_epoch()
    _close_iterator(it)
    del it, loader
    _MAIN_DATASET = None
    result["resume_s"] = None
    if spec.resume:
        states, _ = _resume_states(spec, meta, dts)
        result["resume_s"] = {str(p): round(_resume_latency(spec, meta, dts, states[p]), 4) for p in RESUME_POINTS}
        result["resume_state_bytes"] = {str(p): _state_bytes(states[p]) for p in RESUME_POINTS}
    return result


# ---------------------------------------------------------------------------------------------------
# decode_floor


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


def decode_lists(spec: RunSpec, meta: Any, dts: dict[str, list[float]]) -> list[list[list[tuple[str, list[int], int, int]]]]:
    """The torchcodec calls the streamnodes run makes, per consumer and batch: for every sample and
    camera ``(path, unique sorted frame indices, episode, frame)``, computed by running the same
    streamnodes graph up to (not including) decoding, and ``decode_query``'s index arithmetic."""
    from streamnodes.decoder_cache import open_video
    from streamnodes.distributed import Consumer
    from streamnodes.nodes.video_decode import _decode_indices
    from streamnodes.recipes.graph import GraphConfig, LeRobotGraph
    from streamnodes.types import resolve_video

    config = GraphConfig(delta_timestamps=dts, episode_pool_size=spec.pool_size, seed=spec.seed, max_decoders=spec.max_decoders)
    graph = LeRobotGraph(meta, config)
    fps_of: dict[str, float] = {}
    n = max(1, spec.num_workers)
    out = []
    for w, (warm, measured) in enumerate(consumer_batches(spec)):
        node = graph(Consumer(0, 1, w, n), 0)
        samples = node.source  # everything but VideoDecode
        samples.reset(None)
        batches = []
        for _ in range(warm + measured):
            batch = []
            for _ in range(spec.batch_size):
                try:
                    sample = next(samples)
                except StopIteration:
                    break
                for query in sample.videos.values():
                    path = resolve_video(query.file)
                    if path not in fps_of:
                        fps_of[path] = open_video(path).average_fps
                    unique, _ = _decode_indices(query.timestamps.tolist(), fps_of[path])
                    batch.append((path, unique, sample.episode_index, sample.frame_index))
            if batch:
                batches.append(batch)
        out.append(batches)
    return out


def _floor_worker(batches: list[list[tuple[str, list[int], int, int]]], warm: int, barrier: Any, spec_dict: dict[str, Any], t0: float, results: Any) -> None:
    """Decode ``batches`` with reused decoders; time the batches after the first ``warm``."""
    from streamnodes.decoder_cache import open_video

    decoders: dict[str, Any] = {}
    first = None
    for batch in batches[:warm]:
        for path, indices, _, _ in batch:
            video = decoders.get(path) or decoders.setdefault(path, open_video(path))
            video.decoder.get_frames_at(indices)
        if first is None:
            first = time.perf_counter() - t0
    if barrier is not None:
        barrier.wait()
    start = time.perf_counter()
    cpu_start = time.process_time()
    last = start
    latencies = []
    frames = 0
    for batch in batches[warm:]:
        for path, indices, _, _ in batch:
            video = decoders.get(path) or decoders.setdefault(path, open_video(path))
            video.decoder.get_frames_at(indices)
            frames += len(indices)
        now = time.perf_counter()
        latencies.append(now - last)
        last = now
    results.put({"start": start, "end": last, "latencies": latencies, "frames": frames, "first": first,
                 "cpu": time.process_time() - cpu_start})


class _ListQueue(list):
    def put(self, item: Any) -> None:
        self.append(item)


def run_decode_floor(spec: RunSpec, meta: Any, dts: dict[str, list[float]], ctx: dict[str, Any]) -> dict[str, Any]:
    lists = decode_lists(spec, meta, dts)
    plan = consumer_batches(spec)
    cameras = ctx["cameras"]
    measured_samples = sum(len(b) // cameras for batches, (warm, _) in zip(lists, plan, strict=True) for b in batches[warm:])
    with RssMonitor() as rss:
        t0 = time.perf_counter()
        if spec.num_workers == 0:
            queue: Any = _ListQueue()
            _floor_worker(lists[0], plan[0][0], None, spec.to_dict(), t0, queue)
            reports = list(queue)
        else:
            context = mp.get_context("fork")
            barrier = context.Barrier(len(lists))
            queue = context.Queue()
            procs = [
                context.Process(target=_floor_worker, args=(batches, warm, barrier, spec.to_dict(), t0, queue))
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
        **_percentiles_ms([x for r in reports for x in r["latencies"]]),
        "peak_rss_mb": round(rss.peak / 2**20, 1),
        "cache_hit_rate": None,
        "state_bytes": None,
        "resume_s": None,
        "cpu_main_s": 0.0 if spec.num_workers else round(reports[0]["cpu"], 3),
        "cpu_workers_s": round(sum(r["cpu"] for r in reports), 3) if spec.num_workers else 0.0,
        "cpu_ms_per_sample": round(sum(r["cpu"] for r in reports) / measured_samples * 1e3, 4) if measured_samples else None,
        **{k: None for k in ("distinct_episodes_per_batch", "distinct_episodes_per_batch_uniform", "episode_distance", "episode_distance_uniform")},
    }


# ---------------------------------------------------------------------------------------------------
# map_style


class MapStyleFrames:
    """``dataset[i]`` for a global frame index ``i``, as LeRobot's map-style reader: find the episode,
    cut the windows (the same arithmetic, via DeltaWindow.sample), decode with a per-process decoder
    cache. All tabular columns are read once into numpy (LeRobot memory-maps them with Arrow)."""

    def __init__(self, meta: Any, dts: dict[str, list[float]], spec: RunSpec) -> None:
        from streamnodes.format.reader import ParquetFileCache, read_episode_columns
        from streamnodes.nodes.delta_window import DeltaWindow
        from streamnodes.types import Episode

        self.meta = meta
        self.spec = spec
        files = ParquetFileCache(meta, max_open=4)
        self.episodes = []
        for ref in meta.episodes:  # in index order: rows of the k-th episode are [from, to)
            cols = read_episode_columns(meta, ref, meta.data_keys, files)
            self.episodes.append(Episode(ref=ref, columns=cols, video_files={s.key: meta.url(s.path) for s in ref.videos}))
        files.close()
        self.ends = np.array([ref.dataset_to_index for ref in meta.episodes])
        self.window = DeltaWindow.__new__(DeltaWindow)  # only its sample() arithmetic; no source
        DeltaWindow.__init__(self.window, _NoSource(), meta, delta_timestamps=dts)

    def __len__(self) -> int:
        return int(self.ends[-1])

    def __getitem__(self, index: int) -> dict[str, Any]:
        from streamnodes.nodes.video_decode import decode_query, to_torch

        e = int(np.searchsorted(self.ends, index, side="right"))
        episode = self.episodes[e]
        sample = self.window.sample(episode, index - episode.ref.dataset_from_index)
        item = {k: to_torch(v) for k, v in sample.data.items()}
        cache = _process_cache(self.spec.max_decoders)
        for key, query in sample.videos.items():
            frames, _ = decode_query(cache, query)
            item[key] = _to_image(frames, self.spec, query.single)
        return item


class _NoSource:
    """Stands in for DeltaWindow's source when only its ``sample`` arithmetic is used."""

    def reset(self, *_: Any) -> None:  # pragma: no cover - never iterated
        raise RuntimeError("not a stream")


def run_map_style(spec: RunSpec, meta: Any, dts: dict[str, list[float]], ctx: dict[str, Any]) -> dict[str, Any]:
    import torch
    from torch.utils.data import DataLoader, RandomSampler

    def make():  # noqa: ANN202
        dataset = MapStyleFrames(meta, dts, spec)
        sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(spec.seed))
        return DataLoader(
            dataset, batch_size=spec.batch_size, sampler=sampler, num_workers=spec.num_workers,
            collate_fn=StatsCollate(_global_cache),
        )

    result, _, it = _measure_loader(make, spec, ctx["lengths"], ctx["offsets"], ctx["cameras"])
    _close_iterator(it)
    result.update(state_bytes=None, resume_s=None)
    return result


# ---------------------------------------------------------------------------------------------------
# datasets_native


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
            target = positions[:, None] + off[None, :]
            rows = np.clip(target, 0, n_rows - 1)
            out[key] = list(column[rows])
            out[f"{key}_is_pad"] = list((target < 0) | (target >= n_rows))
    out["task"] = [tasks[int(t)] for t in columns["task_index"]]
    ts = columns["timestamp"].astype(np.float64)
    for key, (path, from_ts) in video[episode].items():
        off = offsets.get(key)
        if off is None:
            out[f"{key}.timestamps"] = list(from_ts + ts[:, None])
        else:
            target = positions[:, None] + off[None, :]
            rows = np.clip(target, 0, n_rows - 1)
            out[f"{key}_is_pad"] = list((target < 0) | (target >= n_rows))
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

        cache = _process_cache(self.spec.max_decoders)
        skip = {f"{k}.{s}" for k in self.cameras for s in ("path", "timestamps")}
        for row in self.ds:
            item = {k: to_torch(v if not isinstance(v, list) else np.asarray(v)) for k, v in row.items() if k not in skip}
            for key, single in self.cameras.items():
                query = VideoQuery(key=key, file=row[f"{key}.path"], episode_index=int(row["episode_index"]),
                                   timestamps=np.asarray(row[f"{key}.timestamps"], dtype=np.float64), single=single)
                frames, _ = decode_query(cache, query)
                item[key] = _to_image(frames, self.spec, single)
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
            collate_fn=StatsCollate(_global_cache),
        )

    result, _, it = _measure_loader(make, spec, ctx["lengths"], ctx["offsets"], ctx["cameras"])
    _KEEPALIVE.append(it)  # closing it now would sleep 5 s per parquet iterator (release())
    result.update(state_bytes=None, resume_s=None)
    return result


# ---------------------------------------------------------------------------------------------------


RUNNERS = {
    "streamnodes": run_streamnodes,
    "decode_floor": run_decode_floor,
    "map_style": run_map_style,
    "datasets_native": run_datasets_native,
}


def run(spec: RunSpec) -> dict[str, Any]:
    """Measure one (loader, mode, num_workers); a flat, JSON-ready dict."""
    import torch

    from streamnodes.format.metadata import open_dataset
    from streamnodes.windows import delta_indices

    if spec.loader not in RUNNERS:
        raise ValueError(f"unknown loader {spec.loader!r}; expected one of {LOADERS}")
    if spec.torch_threads is not None:
        torch.set_num_threads(spec.torch_threads)
    if spec.sharing_strategy is not None:
        torch.multiprocessing.set_sharing_strategy(spec.sharing_strategy)
    meta = open_dataset(spec.root)
    dts = delta_timestamps(meta.fps, meta.video_keys, spec)
    offsets = delta_indices(dts, meta.fps, features=meta.features)
    camera_offsets = [offsets.get(k) for k in meta.video_keys]
    ctx = {
        "lengths": {ep.episode_index: ep.length for ep in meta.episodes},
        "offsets": camera_offsets[0],  # all cameras share the mode's window
        "cameras": len(meta.video_keys),
    }
    result = RUNNERS[spec.loader](spec, meta, dts, ctx)
    return {"loader": spec.loader, "mode": spec.mode, "num_workers": spec.num_workers, **result,
            "torch_threads": torch.get_num_threads(), "sharing_strategy": torch.multiprocessing.get_sharing_strategy()}
