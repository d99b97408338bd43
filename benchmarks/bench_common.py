"""What every loader of ``benchmarks/dataloading.py`` shares: the run's spec, the measurement of an
iterator of batches, resource monitors, and the stream-quality metrics.

Every loader reads the same dataset with the same batch size, the same ``delta_timestamps`` and the
same decoder code and settings (``streamnodes.decoder_cache``: ``seek_mode="approximate"``, one FFmpeg
thread, decoders reused per file; ``streamnodes.nodes.video_decode.decode_query``: one
``get_frames_at`` per camera and sample with the unique frame indices). What differs is the data path
around the decoder; each loader lives in its own module (``runner_streamnodes``, ``baseline_*``).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

LOADERS = ("streamnodes", "decode_floor", "map_style", "datasets_native")
MODES = ("single", "window")
RESUME_POINTS = (10, 50, 90)
QUALITY_KEYS = (
    "distinct_episodes_per_batch", "distinct_episodes_per_batch_uniform", "episode_distance", "episode_distance_uniform",
)  # fmt: skip


@dataclass
class RunSpec:
    """One measured run. Plain values: it travels to a subprocess as JSON."""

    loader: str
    mode: str
    num_workers: int
    root: str
    dataset: str = "small"  # the name of the dataset (bench_data.DATASETS) ``root`` holds
    decode_threads: int = 1  # streamnodes: BatchDecode threads per consumer (0/1: the calling thread)
    decode_ahead: int = 1  # streamnodes: batches decoding ahead of the one returned
    batch_size: int = 32
    warmup_batches: int = 6
    measure_batches: int = 100
    pool_size: int = 64
    frame_buffer: int = 1000
    seed: int = 0
    image_dtype: str = "uint8"  # or "float32" (LeRobot's /255 floats: 4x the bytes through collate and IPC)
    max_decoders: int = 16  # per decoding thread (see decoders_per_thread)
    # streamnodes: True passes max_decoders * decode_threads to build_loader, so each decode thread keeps
    # as many decoders as each floor process and baseline process; False passes max_decoders as is
    # (build_loader splits it among the threads: max_decoders // decode_threads each)
    decoders_per_thread: bool = True
    resume: bool = True
    action_steps: int = 16
    window_frames: int = 8
    window_spacing_s: float = 1.0
    torch_threads: int | None = None  # None: torch's default (one per core); DataLoader workers always use 1
    sharing_strategy: str | None = None  # torch.multiprocessing sharing strategy; None: torch's default

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def cores(self, available: int | None = None) -> int:
        """The CPU budget this run compares at (see :func:`cpu_budget`)."""
        threads = self.decode_threads if self.loader == "streamnodes" else 1
        return cpu_budget(self.num_workers, threads, available)


def cpu_budget(num_workers: int, decode_threads: int = 1, available: int | None = None) -> int:
    """Cores a configuration decodes on: ``max(1, workers) * max(1, threads)``, at most the machine's.

    Runs are compared with the decode floor of as many processes (``decode_floor`` with N workers is
    N decoding processes). A DataLoader's main process, which only receives batches, is not counted.
    """
    available = available or os.cpu_count() or 1
    return max(1, min(available, max(1, num_workers) * max(1, decode_threads)))


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


def image_dtype(spec: RunSpec):  # noqa: ANN202 - torch.dtype
    import torch

    return torch.uint8 if spec.image_dtype == "uint8" else torch.float32


def to_image(frames, spec: RunSpec, single: bool):  # noqa: ANN001, ANN202 - tensors
    """The same output conversion VideoDecode applies (``[C,H,W]`` when single, float32 ``/255``)."""
    if single:
        frames = frames[0]
    if spec.image_dtype == "uint8":
        return frames
    return frames.float().div_(255)


class RssMonitor:
    """Peak resident memory of this process plus all its descendants, sampled every ``interval`` s
    (reading /proc for every process costs the measured process some CPU: not too often).

    Sums RSS, so pages shared copy-on-write between a parent and its forked workers count once per
    process (an upper bound on what the tree really uses).
    """

    def __init__(self, interval: float = 0.25) -> None:
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


def system_busy() -> float:
    """CPU seconds all processes of the machine have used (every core, since boot)."""
    import psutil

    t = psutil.cpu_times()
    return sum(getattr(t, k, 0.0) for k in ("user", "nice", "system", "irq", "softirq", "steal"))


def other_load(busy: float, own: float, elapsed: float) -> float | None:
    """Cores used by everything else on the machine during a measurement of ``elapsed`` seconds, from
    the machine's busy CPU seconds and the run's own. Runs disturbed by other work are retried."""
    if not elapsed or elapsed != elapsed or elapsed <= 0:
        return None
    return round(max(0.0, busy - own) / elapsed, 3)


def cpu_fields(start: tuple[float, float], end: tuple[float, float], samples: int) -> dict[str, float | None]:
    main, workers = end[0] - start[0], end[1] - start[1]
    per = (main + workers) / samples * 1e3 if samples else None
    return {"cpu_main_s": round(main, 3), "cpu_workers_s": round(workers, 3),
            "cpu_ms_per_sample": round(per, 4) if per is not None else None}


def percentiles_ms(latencies: list[float]) -> dict[str, float | None]:
    if not latencies:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None}
    a = np.asarray(latencies) * 1000.0
    return {f"p{q}_ms": round(float(np.percentile(a, q)), 3) for q in (50, 95, 99)}


def decoded_frames(lengths: dict[int, int], episodes: list[int], frames: list[int], offsets: np.ndarray | None, cameras: int) -> int:
    """Distinct frames decoded for these samples: per camera 1 without a window, else the number of
    distinct clamped window positions (padded positions repeat a boundary frame, decoded once)."""
    from streamnodes.windows import window

    if offsets is None:
        return cameras * len(episodes)
    total = 0
    for e, f in zip(episodes, frames, strict=True):
        rows, _ = window(f, lengths[e], offsets)
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
    keys = QUALITY_KEYS
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


def process_cache(max_decoders: int):  # noqa: ANN202 - DecoderCache
    """This process's decoder cache. Never one inherited through fork: a forked worker sharing its
    parent's open decoders (and file offsets) reads garbage."""
    global _PROCESS_CACHE
    if _PROCESS_CACHE is None or _PROCESS_CACHE[0] != os.getpid():
        from streamnodes.decoder_cache import DecoderCache

        _PROCESS_CACHE = (os.getpid(), DecoderCache(max_decoders=max_decoders))
    return _PROCESS_CACHE[1]


def process_cache_counters() -> tuple[int, int] | None:
    """(hits, misses) of this process's :func:`process_cache`, if it has one."""
    if _PROCESS_CACHE is None or _PROCESS_CACHE[0] != os.getpid():
        return None
    cache = _PROCESS_CACHE[1]
    return cache.hits, cache.misses


class StatsCollate:
    """``default_collate`` plus this process's decoder-cache counters under ``STATS_KEY``.

    ``counters()`` returns ``(hits, misses)`` of the decoder cache of the process collating (a
    DataLoader worker, or the main process without workers), or None.
    """

    def __init__(self, counters: Callable[[], tuple[int, int] | None]) -> None:
        self.counters = counters

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        import torch
        from torch.utils.data import default_collate, get_worker_info

        batch = default_collate(samples)
        info = get_worker_info()
        worker = info.id if info is not None else 0
        hits, misses = self.counters() or (0, 0)
        batch[STATS_KEY] = torch.tensor([worker, hits, misses], dtype=torch.int64)
        return batch


_KEEPALIVE: list[Any] = []  # iterators whose teardown is slow (see release())


def keep_alive(iterator: Any) -> None:
    """Keep ``iterator`` (and its workers) alive until :func:`release`."""
    _KEEPALIVE.append(iterator)


def release() -> None:
    """Drop what the runs kept alive (a DataLoader iterator stops its workers when collected). HF
    ``datasets`` sleeps ``datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN`` (5 s) per threaded parquet
    iterator it closes, so the benchmark's subprocesses skip this and exit."""
    _KEEPALIVE.clear()


# ---------------------------------------------------------------------------------------------------
# Measuring an iterator of batches (streamnodes, map_style, datasets_native)


def measure_loader(make: Callable[[], Any], spec: RunSpec, lengths: dict[int, int], offsets: np.ndarray | None, cameras: int) -> tuple[dict[str, Any], Any, Any]:
    """Build with ``make()``, take warm-up + measured batches, return metrics, the loader and iterator."""
    total = spec.warmup_batches + spec.measure_batches
    episodes: list[list[int]] = []
    frames: list[list[int]] = []
    cache_counters: dict[int, tuple[Any, ...]] = {}  # worker -> (hits, misses[, decode s, frames decoded])
    at_warmup: dict[int, tuple[Any, ...]] = {}  # the same at the worker's last warm-up batch
    times: list[float] = []
    with RssMonitor() as rss:
        t0 = time.perf_counter()
        loader = make()
        it = iter(loader)
        cpu_start = tree_cpu() if spec.warmup_batches == 0 else None
        busy_start = system_busy()
        for i in range(total):
            try:
                batch = next(it)
            except StopIteration:
                break
            times.append(time.perf_counter())
            if i + 1 == spec.warmup_batches:
                cpu_start = tree_cpu()
                busy_start = system_busy()
            episodes.append(batch["episode_index"].tolist())
            frames.append(batch["frame_index"].tolist())
            stats = batch.get(STATS_KEY)
            if stats is not None:
                w, *values = stats.tolist() if hasattr(stats, "tolist") else list(stats)
                cache_counters[w] = tuple(values)
                if i < spec.warmup_batches:
                    at_warmup[w] = tuple(values)
        cpu_end = tree_cpu()
        busy_end = system_busy()
    measured = slice(spec.warmup_batches, len(times))
    n_samples = sum(len(b) for b in episodes[measured])
    n_frames = sum(
        decoded_frames(lengths, e, f, offsets, cameras) for e, f in zip(episodes[measured], frames[measured], strict=True)
    )
    start = times[spec.warmup_batches - 1] if spec.warmup_batches > 0 and len(times) >= spec.warmup_batches else t0
    elapsed = (times[-1] - start) if len(times) > spec.warmup_batches else float("nan")
    latencies = list(np.diff([start, *times[measured]])) if len(times) > spec.warmup_batches else []
    hits = sum(c[0] for c in cache_counters.values())
    misses = sum(c[1] for c in cache_counters.values())
    decode_s = None  # decode seconds (summed over decode threads and workers) during the measured batches
    if cache_counters and all(len(c) >= 3 for c in cache_counters.values()):
        decode_s = sum(c[2] - at_warmup.get(w, (0, 0, 0.0))[2] for w, c in cache_counters.items())
    result = {
        "batches_measured": len(times) - spec.warmup_batches,
        "samples_measured": n_samples,
        "frames_decoded": n_frames,
        "seconds_measured": round(elapsed, 4),
        "samples_per_s": round(n_samples / elapsed, 2) if elapsed > 0 else None,
        "frames_per_s": round(n_frames / elapsed, 2) if elapsed > 0 else None,
        "first_batch_s": round(times[0] - t0, 4) if times else None,
        **percentiles_ms(latencies),
        "peak_rss_mb": round(rss.peak / 2**20, 1),
        "cache_hit_rate": round(hits / (hits + misses), 4) if hits + misses else None,
        # share of the measured time the decoders were busy, per core of the run's budget: how close
        # the run keeps its decode threads fed (streamnodes only; from BatchDecode.stats())
        "decode_busy": round(decode_s / elapsed / spec.cores(), 3) if decode_s is not None and elapsed > 0 else None,
        **shuffle_quality(episodes, lengths, seed=spec.seed),
        **cpu_fields(cpu_start or cpu_end, cpu_end, n_samples),
    }
    own = sum(cpu_end) - sum(cpu_start or cpu_end)
    result["other_load"] = other_load(busy_end - busy_start, own, elapsed)
    return result, loader, it
