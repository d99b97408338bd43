"""Data-loading benchmark: streamnodes against the decode floor and two baselines, same data, same run.

    python benchmarks/dataloading.py --out benchmarks/results          # the full matrix
    python benchmarks/dataloading.py --quick --out /tmp/bench          # a reduced matrix (~1 min)

Two datasets (``bench_data.DATASETS``: ``small`` 128x96/96x96, ``large`` 640x480) are written once with
``streamnodes.testing.write_dataset`` and cached under ``benchmarks/.cache/``. Each (dataset, mode,
loader, num_workers, decode_threads) runs in a fresh subprocess, so memory, decoder caches and imports
never carry over between runs. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_data import CACHE_DIR, DATASETS, DatasetSpec, ensure_dataset  # noqa: E402
from bench_loaders import LOADERS, MODES, RunSpec, run  # noqa: E402
from bench_report import rewrite, sort_runs, write_results  # noqa: E402

log = logging.getLogger("benchmarks")
_RESULT_PREFIX = "BENCH_RESULT "


def machine_info() -> dict[str, Any]:
    import datasets
    import torch
    import torchcodec
    import torchdata

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import psutil

        memory_gb = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        memory_gb = None
    ffmpeg = None
    try:
        from torchcodec._core import get_ffmpeg_library_versions

        ffmpeg = get_ffmpeg_library_versions().get("ffmpeg_version")
    except Exception:  # noqa: BLE001 - informational only
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": memory_gb,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchcodec": torchcodec.__version__,
        "torchdata": torchdata.__version__,
        "datasets": datasets.__version__,
        "ffmpeg": ffmpeg,
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def _kill_children() -> None:
    import psutil

    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()


def wait_quiet(max_wait: float, threshold: float = 0.25, probe: float = 0.5) -> float:
    """Wait (at most ``max_wait`` s) until the machine's other work uses under ``threshold`` cores over a
    ``probe``-second look (this process is idle meanwhile). Returns the cores last seen busy."""
    import psutil

    deadline = time.monotonic() + max_wait
    while True:
        busy = psutil.cpu_percent(interval=probe) / 100 * (os.cpu_count() or 1)
        if busy < threshold or time.monotonic() >= deadline:
            return busy
        time.sleep(5.0)


def measured_run(spec: RunSpec, args: argparse.Namespace) -> dict[str, Any]:
    """One run, after waiting for a quiet machine, retried (``--retries``) while other work used more
    than ``--max-other-load`` cores during its measurement; the least disturbed attempt is kept."""
    attempts = []
    for attempt in range(args.retries + 1):
        before = wait_quiet(args.quiet_wait)
        t = time.perf_counter()
        result = run(spec) if args.in_process else run_in_subprocess(spec, args.timeout)
        result["run_seconds"] = round(time.perf_counter() - t, 1)
        result["busy_before"] = round(before, 2)
        result["attempts"] = attempt + 1
        attempts.append(result)
        load = result.get("other_load")
        if load is None or load <= args.max_other_load or attempt == args.retries:
            break
        log.info("  other work used %.2f cores during that run; running it again", load)
    return min(attempts, key=lambda r: r.get("other_load") or 0.0)


def run_in_subprocess(spec: RunSpec, timeout: float) -> dict[str, Any]:
    """One run in a fresh interpreter; its result is the last ``BENCH_RESULT`` line of its stdout."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_run", json.dumps(spec.to_dict())]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(_RESULT_PREFIX):
            return json.loads(line[len(_RESULT_PREFIX):])
    raise RuntimeError(
        f"run {spec.loader}/{spec.mode}/{spec.num_workers} workers failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
    )


# Measured batches per (dataset, mode): ~3-4 s of the 1-core floor each (quick: a tenth, at least 4).
BATCHES = {("small", "single"): 400, ("small", "window"): 100, ("large", "single"): 40, ("large", "window"): 12}
WARMUP = {"small": 6, "large": 4}  # even, so 2 workers share them


def _settings(args: argparse.Namespace, specs: dict[str, DatasetSpec], template: RunSpec, measure: dict[str, int]) -> dict[str, Any]:
    return {
        "quick": args.quick,
        "datasets": {name: spec.describe() for name, spec in specs.items()},
        "batch_size": template.batch_size,
        "warmup_batches": {name: WARMUP.get(name, template.warmup_batches) for name in specs},
        "measure_batches": measure,
        "streamnodes": {"num_workers": args.workers, "decode_threads": args.threads, "decode_ahead": template.decode_ahead,
                        "layout": "channels_last"},
        "baseline_workers": args.baseline_workers,
        "floor_processes": args.floor_processes,
        "episode_pool_size": template.pool_size,
        "datasets_native_frame_buffer": template.frame_buffer,
        "image_dtype": template.image_dtype,
        "max_decoders": template.max_decoders,
        "streamnodes_max_decoders": "max_decoders x decode_threads (16 per decode thread, as each floor and baseline "
                                    "process)" if template.decoders_per_thread else "max_decoders, split among decode threads",
        "seed": template.seed,
        "torch_threads": template.torch_threads,
        "sharing_strategy": template.sharing_strategy,
        "repeats": args.repeats,
        "hygiene": f"before each run wait up to {args.quiet_wait} s for other work < 0.25 cores; retry a run (up to "
                   f"{args.retries} times) when other work used > {args.max_other_load} cores during its measurement "
                   "(other_load: the machine's busy CPU seconds minus the run's own, per second); keep the least disturbed",
        "aggregate": f"per row the median samples/s over the passes whose run had other_load <= {args.max_other_load} "
                     "cores (else the least disturbed run); x floor = median of the per-pass ratios to the floor run of "
                     "the same pass, over passes where both were quiet",
        "action_steps": template.action_steps,
        "window": f"{template.window_frames} frames spaced {template.window_spacing_s} s (mode window)",
        "decoder": "torchcodec, seek_mode=approximate, num_ffmpeg_threads=1",
        "decode_floor": "decode_query over the streamnodes graph's per-consumer query lists with reused decoders, "
                        "one process per core, run at once, no loader",
        "cores": "a run's CPU budget: max(1, num_workers) * max(1, decode_threads), at most the machine's cores; "
                 "it is compared with the floor of as many processes",
    }


def matrix(args: argparse.Namespace, dataset: str, mode: str) -> list[tuple[str, int, int]]:
    """(loader, num_workers, decode_threads) of one dataset and mode, in run order."""
    rows: list[tuple[str, int, int]] = []
    for loader in args.loaders:
        if loader == "streamnodes":
            rows += [(loader, w, t) for w in args.workers for t in args.threads]
        elif loader == "decode_floor":
            rows += [(loader, 0 if p == 1 else p, 1) for p in args.floor_processes]
        else:
            rows += [(loader, w, 1) for w in args.baseline_workers]
    return rows


def _quiet(runs: list[dict[str, Any]], max_other_load: float) -> list[dict[str, Any]]:
    """The runs during which other work used at most ``max_other_load`` cores, else the least disturbed one."""
    quiet = [r for r in runs if (r.get("other_load") or 0.0) <= max_other_load]
    return quiet or [min(runs, key=lambda r: r.get("other_load") or 0.0)]


def _median_run(runs: list[dict[str, Any]], max_other_load: float = float("inf")) -> dict[str, Any]:
    """Of the quiet runs (:func:`_quiet`), the one with the median samples/s (the lower middle one for an
    even count), with their samples/s in ``samples_per_s_repeats``, their passes in ``quiet_passes``
    and the first pass's resume figures."""
    quiet = _quiet(runs, max_other_load)
    ordered = sorted(quiet, key=lambda r: r["samples_per_s"] or 0.0)
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    chosen["samples_per_s_repeats"] = [r["samples_per_s"] for r in quiet]
    chosen["quiet_passes"] = [r.get("repeat", 0) + 1 for r in quiet]
    for k in ("resume_s", "resume_state_bytes"):
        if chosen.get(k) is None and runs[0].get(k) is not None:
            chosen[k] = runs[0][k]
    return chosen


def run_matrix(args: argparse.Namespace) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    specs = {name: DATASETS[name] for name in args.datasets}
    roots = {name: ensure_dataset(spec, Path(args.cache_dir)) for name, spec in specs.items()}
    machine = machine_info()
    template = RunSpec(
        loader="", mode="", num_workers=0, root="", batch_size=args.batch_size, warmup_batches=args.warmup or 6,
        pool_size=args.pool_size, frame_buffer=args.frame_buffer, image_dtype=args.image_dtype, seed=args.seed,
        resume=not args.no_resume, torch_threads=args.torch_threads, sharing_strategy=args.sharing_strategy,
        decode_ahead=args.decode_ahead, decoders_per_thread=not args.split_decoders,
    )
    measure: dict[str, int] = {}
    for (name, mode), n in BATCHES.items():
        if name in specs and mode in args.modes:
            override = args.single_batches if mode == "single" else args.window_batches
            measure[f"{name}/{mode}"] = override or (max(4, n // 10) if args.quick else n)
    repeats: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    started = time.perf_counter()
    for repeat in range(args.repeats):
        for name in specs:
            for mode in args.modes:
                for loader, workers, threads in matrix(args, name, mode):
                    spec = replace(template, loader=loader, mode=mode, num_workers=workers, decode_threads=threads,
                                   dataset=name, root=str(roots[name]), measure_batches=measure[f"{name}/{mode}"],
                                   warmup_batches=args.warmup or WARMUP.get(name, 6),
                                   resume=template.resume and repeat == 0 and loader == "streamnodes"
                                   and threads == max(args.threads))
                    result = measured_run(spec, args)
                    result["repeat"] = repeat
                    log.info(
                        "[%d/%d] %-5s %-6s %-15s workers=%d threads=%d  %8.1f samples/s  CPU %.2f ms/sample  "
                        "cache %s  other load %s  (%.0f s)",
                        repeat + 1, args.repeats, name, mode, loader, workers, threads,
                        result["samples_per_s"] or float("nan"), result["cpu_ms_per_sample"] or float("nan"),
                        result["cache_hit_rate"], result.get("other_load"), result["run_seconds"],
                    )
                    repeats.setdefault((name, mode, loader, workers, threads), []).append(result)
        # every finished pass on disk: an interrupted matrix keeps what it measured
        partial = Path(args.out) / "results.partial.json"
        partial.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(json.dumps({"machine": machine, "passes": repeat + 1,
                                       "runs": [r for rs in repeats.values() for r in rs]}) + "\n")
    machine["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    machine["benchmark_seconds"] = round(time.perf_counter() - started, 1)
    (Path(args.out) / "results.partial.json").unlink(missing_ok=True)  # complete: results.json replaces it
    runs = [_median_run(rs, args.max_other_load) for rs in repeats.values()]
    add_paired_ratios(runs, repeats, args.max_other_load)
    return machine, sort_runs(runs), _settings(args, specs, template, measure)


def add_paired_ratios(runs: list[dict[str, Any]], repeats: dict[tuple[Any, ...], list[dict[str, Any]]],
                      max_other_load: float = float("inf")) -> None:
    """``ratio_to_floor``: the median over passes of samples/s over the same pass's floor run of the same
    dataset, mode and cores, over the passes where both runs were quiet (:func:`_quiet`)."""
    floors: dict[tuple[Any, ...], dict[int, float]] = {}
    for (name, mode, loader, _, _), rs in repeats.items():
        if loader == "decode_floor":
            for r in _quiet(rs, max_other_load):
                floors.setdefault((name, mode, r["cores"]), {})[r["repeat"]] = r["samples_per_s"]
    for run_, rs in zip(runs, repeats.values(), strict=True):
        floor = floors.get((run_["dataset"], run_["mode"], run_["cores"]), {})
        ratios = sorted(r["samples_per_s"] / floor[r["repeat"]] for r in _quiet(rs, max_other_load)
                        if r["samples_per_s"] and floor.get(r["repeat"]))
        if ratios:
            run_["ratio_to_floor"] = round(float(np.median(ratios)), 3)
            run_["ratio_to_floor_repeats"] = [round(x, 3) for x in ratios]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(HERE / "results"), help="directory for results.json/.csv/.md and throughput.png")
    p.add_argument("--quick", action="store_true", help="reduced matrix (small dataset, fewer configurations and batches)")
    p.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=None, help="default: small large (quick: small)")
    p.add_argument("--loaders", nargs="+", choices=LOADERS, default=list(LOADERS))
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--workers", nargs="+", type=int, default=None, help="streamnodes num_workers (default 0 1 2; quick: 0 2)")
    p.add_argument("--threads", nargs="+", type=int, default=None, help="streamnodes decode_threads (default 1 2; quick: 1 2)")
    p.add_argument("--decode-ahead", type=int, default=1, help="streamnodes decode_ahead")
    p.add_argument("--baseline-workers", nargs="+", type=int, default=None,
                   help="num_workers of map_style and datasets_native (default 0 2: one and two cores)")
    p.add_argument("--floor-processes", nargs="+", type=int, default=None,
                   help="decode_floor processes (default 1 .. cores, at most 2)")
    p.add_argument("--split-decoders", action="store_true",
                   help="streamnodes: pass max_decoders (16) as is, split among decode threads (default: 16 per thread)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--warmup", type=int, default=None, help="batches before measuring (default small 6, large 4)")
    p.add_argument("--single-batches", type=int, default=None, help="measured batches in mode single (default small 400, large 40)")
    p.add_argument("--window-batches", type=int, default=None, help="measured batches in mode window (default small 100, large 12)")
    p.add_argument("--pool-size", type=int, default=64, help="episode pool (streamnodes) = episode shuffle buffer (datasets)")
    p.add_argument("--frame-buffer", type=int, default=1000, help="datasets_native frame shuffle buffer")
    p.add_argument("--image-dtype", choices=("float32", "uint8"), default="uint8",
                   help="decoded image dtype for every loader (uint8: the bytes; float32: LeRobot's /255 floats)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--torch-threads", type=int, default=None,
                   help="torch.set_num_threads in the process that iterates the loader (default: torch's own)")
    p.add_argument("--sharing-strategy", choices=("file_descriptor", "file_system"), default=None,
                   help="torch.multiprocessing sharing strategy for batches from workers (default: torch's own)")
    p.add_argument("--repeats", type=int, default=None, help="passes over the matrix; medians are reported (default 3; quick 1)")
    p.add_argument("--no-resume", action="store_true", help="skip the resume-latency measurements")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per run before it is abandoned")
    p.add_argument("--quiet-wait", type=float, default=30.0,
                   help="before each run, wait up to this many seconds for other work to use < 0.25 cores")
    p.add_argument("--max-other-load", type=float, default=0.15,
                   help="retry a run when other work used more cores than this during its measurement")
    p.add_argument("--retries", type=int, default=None, help="retries of a disturbed run (default 1; quick 0)")
    p.add_argument("--cache-dir", default=str(CACHE_DIR), help="where the generated datasets are cached")
    p.add_argument("--replot", action="store_true", help="only re-render csv/md/png from --out's results.json")
    p.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--_run", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    quick = args.quick
    cores = os.cpu_count() or 1
    args.datasets = args.datasets or (["small"] if quick else list(DATASETS))
    args.workers = args.workers if args.workers is not None else ([0, 2] if quick else [0, 1, 2])
    args.threads = args.threads if args.threads is not None else [1, 2]
    args.baseline_workers = args.baseline_workers if args.baseline_workers is not None else [0, 2]
    args.floor_processes = args.floor_processes or list(range(1, min(2, cores) + 1))
    args.repeats = args.repeats or (1 if quick else 3)
    args.retries = args.retries if args.retries is not None else (0 if quick else 1)
    if quick:
        args.quiet_wait = min(args.quiet_wait, 5.0)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args._run:
        result = run(RunSpec(**json.loads(args._run)))
        print(_RESULT_PREFIX + json.dumps(result), flush=True)
        sys.stderr.flush()
        # Skip teardown: HF datasets sleeps 5 s per threaded parquet iterator it closes (a workaround
        # for apache/arrow#45214), in this process and in DataLoader workers. Kill the workers, exit.
        _kill_children()
        os._exit(0)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.replot:
        paths = rewrite(Path(args.out))
        log.info("re-rendered %s", ", ".join(str(p) for p in paths.values()))
        return 0
    machine, runs, settings = run_matrix(args)
    paths = write_results(Path(args.out), machine, runs, settings)
    print(paths["md"].read_text())
    log.info("wrote %s in %.0f s", ", ".join(str(p) for p in paths.values()), machine["benchmark_seconds"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
