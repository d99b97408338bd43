"""Scale benchmark (issue 17): 100,000-episode tabular datasets open in about a second, workers stay small.

Writes (once, cached under ``benchmarks/.cache``) two LeRobot v3.0 datasets of 100,000 episodes of 10
frames, without cameras, with ``data_files_size_in_mb`` 2 and 20, and a tiny one (the baseline for
worker memory). For each, every measure runs in a fresh Python process:

- ``open``: ``open_dataset`` with its default validation (wall and CPU seconds), the RSS it adds, and
  the pickled size of the metadata (what each DataLoader worker receives);
- ``loader``: with 0 and 2 workers, the time ``build_loader`` takes (it opens the dataset) and then the
  time to the first batch; once each worker has returned a batch, its RSS and USS (psutil);
- ``resume``: a state taken at 90% of epoch 0 (0 workers): its pickled size, and the time a fresh
  loader takes to restore it and yield the next batch.

Usage: ``python benchmarks/scale.py`` (``--episodes N`` for another size; ``--large`` adds a dataset of
1,000,000 episodes in 2 MB files, measured once, with the writer's time; ``--write-only``;
``--repeats N``; ``--resume-mb 2 20``). Open and loader measures run ``--repeats`` times (medians
printed, every run and the machine's load average written to ``benchmarks/results/scale/scale.json``).
Timings on a shared machine are noisy: CPU seconds are recorded next to wall seconds.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

CACHE = Path(__file__).resolve().parent / ".cache"
RESULTS = Path(__file__).resolve().parent / "results" / "scale"
FRAMES = 10
BATCH = 256
TINY = 200  # episodes of the baseline dataset: 2,000 frames, batches for both of 2 workers

log = logging.getLogger("benchmarks.scale")


def dataset(episodes: int, size_mb: float) -> Path:
    """The cached dataset of ``episodes`` episodes of ``FRAMES`` frames (written on first use; how long
    the writer took is kept next to it, ``<root>.written.json``)."""
    from streamnodes.testing import write_dataset

    root = CACHE / f"scale_{episodes}x{FRAMES}_{size_mb:g}mb"
    if not (root / "meta/info.json").is_file():
        start = time.perf_counter()
        cpu = time.process_time()
        write_dataset(root, episode_lengths=[FRAMES] * episodes, cameras=None, data_files_size_in_mb=size_mb, overwrite=True)
        written = {"write_s": round(time.perf_counter() - start, 1), "write_cpu_s": round(time.process_time() - cpu, 1),
                   "bytes": sum(f.stat().st_size for f in root.rglob("*") if f.is_file())}
        _written(root).write_text(json.dumps(written) + "\n")
        print(f"wrote {root.name}: {written}", flush=True)
    return root


def _written(root: Path) -> Path:
    return root.with_name(root.name + ".written.json")


def _rss_mb(process=None) -> float:  # noqa: ANN001 - psutil.Process
    import psutil

    return (process or psutil.Process()).memory_info().rss / 2**20


def measure_open(root: str) -> dict:
    """``open_dataset`` in a fresh process, after the imports: streamnodes', and pandas, which pyarrow
    imports on its first conversion to numpy (~0.2-0.4 s CPU and ~40 MB once per process, whatever the
    dataset; every consumer converts columns anyway), so ``open_s`` is what the dataset costs."""
    before = _rss_mb()
    import pyarrow as pa

    from streamnodes.format import open_dataset

    pa.array([0]).to_numpy()  # pyarrow's lazy pandas import, counted with the imports
    imported = _rss_mb()
    start, cpu = time.perf_counter(), time.process_time()
    meta = open_dataset(root)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {
        "open_s": round(wall, 3), "open_cpu_s": round(cpu, 3),
        "rss_after_open_mb": round(_rss_mb(), 1), "rss_added_by_open_mb": round(_rss_mb() - imported, 1),
        "rss_added_by_import_mb": round(imported - before, 1),
        "pickle_mb": round(len(pickle.dumps(meta)) / 1e6, 3), "episodes": meta.total_episodes,
        "data_files": len(meta.episodes.data_files),
    }


def _worker_processes(it, loader_pid: int) -> list:  # noqa: ANN001 - a DataLoader iterator
    """The DataLoader worker processes of ``it`` (psutil), from the iterator's own list when it has one."""
    import psutil

    workers = getattr(it, "_workers", None)
    if workers:
        return [psutil.Process(w.pid) for w in workers]
    return psutil.Process(loader_pid).children(recursive=False)


def measure_loader(root: str, workers: int) -> dict:
    """Time to build the loader (``open_dataset`` with its checks included) and from then to the first batch;
    then, once every worker has returned a batch (the DataLoader takes them
    in turn), each worker's RSS and USS (memory only that process holds, not the pages it shares with
    the main process it was forked from)."""
    import os

    import pyarrow as pa

    from streamnodes import build_loader

    pa.array([0]).to_numpy()  # pyarrow's lazy pandas import (see measure_open), before the clock starts
    start = time.perf_counter()
    loader = build_loader(root, batch_size=BATCH, num_workers=workers)
    built = time.perf_counter()
    it = iter(loader)
    next(it)
    first = time.perf_counter() - built
    for _ in range(workers - 1):  # batch k comes from worker k
        next(it)
    procs = _worker_processes(it, os.getpid())
    out = {"workers": workers, "build_loader_s": round(built - start, 3), "first_batch_after_build_s": round(first, 3),
           "main_rss_mb": round(_rss_mb(), 1),
           "worker_rss_mb": [round(_rss_mb(p), 1) for p in procs],
           "worker_uss_mb": [round(p.memory_full_info().uss / 2**20, 1) for p in procs]}
    del it, loader
    return out


def measure_resume(root: str, percent: int = 90) -> dict:
    from streamnodes import build_loader

    loader = build_loader(root, batch_size=BATCH, num_workers=0)
    total = len(loader)
    target = total * percent // 100
    start = time.perf_counter()
    it = iter(loader)
    for _ in range(target):
        next(it)
    reach = time.perf_counter() - start
    state = loader.state_dict()
    expected = next(it)
    size = len(pickle.dumps(state))
    start, cpu = time.perf_counter(), time.process_time()
    fresh = build_loader(root, batch_size=BATCH, num_workers=0)
    built = time.perf_counter() - start
    fresh.load_state_dict(state)
    got = next(iter(fresh))
    restore, cpu = time.perf_counter() - start, time.process_time() - cpu
    same = all(bool((got[k] == expected[k]).all()) for k in ("index", "episode_index"))
    return {"batches": total, "state_at": target, "reach_s": round(reach, 1), "state_bytes": size,
            "restore_and_next_batch_s": round(restore, 3), "of_which_build_loader_s": round(built, 3),
            "restore_cpu_s": round(cpu, 3), "next_batch_equal": same}


def _child(kind: str, *args: str) -> dict:
    """Run one measure in a fresh interpreter; its last stdout line is a JSON object."""
    cmd = [sys.executable, __file__, "--child", kind, *args]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _repeat(n: int, kind: str, *args: str) -> dict:
    """``n`` fresh-process runs of one measure: every run's numbers, the median of each, and the load."""
    load_before = os.getloadavg()[0]
    runs = [_child(kind, *args) for _ in range(n)]
    medians = {k: round(_median([r[k] for r in runs]), 3) for k, v in runs[0].items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    medians.update({k: all(r[k] for r in runs) for k, v in runs[0].items() if isinstance(v, bool)})
    for key in ("worker_rss_mb", "worker_uss_mb"):
        if runs[0].get(key):
            medians[key] = round(_median([x for r in runs for x in r[key]]), 1)
    return {"median": medians, "runs": runs, "load_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=100_000)
    parser.add_argument("--write-only", action="store_true")
    parser.add_argument("--repeats", type=int, default=3, help="fresh-process runs of each open and loader measure")
    parser.add_argument("--resume-mb", type=float, nargs="*", default=[2, 20],
                        help="layouts (MB per data file) whose 90%% resume is measured; it walks the epoch with "
                             "0 workers (~2 min per 100,000 episodes of 10 frames)")
    parser.add_argument("--large", type=int, nargs="?", const=1_000_000, default=None,
                        help="also a dataset of this many episodes (default 1,000,000) in 2 MB files: written "
                             "(timed), opened, loaded, resumed at 90%% (one run each; ~25 min)")
    parser.add_argument("--out", type=Path, default=RESULTS / "scale.json")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "open":
            out = measure_open(rest[0])
        elif kind == "loader":
            out = measure_loader(rest[0], int(rest[1]))
        else:
            out = measure_resume(rest[0])
        print(json.dumps(out))
        return
    logging.basicConfig(level=logging.WARNING)
    tiny = dataset(TINY, 2)
    roots = {mb: dataset(args.episodes, mb) for mb in (2, 20)}
    large = dataset(args.large, 2) if args.large else None
    if args.write_only:
        return
    results: dict = {"machine": {"cpus": os.cpu_count(), "load_1_5_15_at_start": [round(x, 2) for x in os.getloadavg()]},
                     "repeats": args.repeats, "batch_size": BATCH, "frames_per_episode": FRAMES, "datasets": {}}
    layouts = [(f"tiny ({TINY} episodes)", tiny, None), *((f"{args.episodes}x{FRAMES}, {mb:g} MB files", root, mb)
                                                        for mb, root in roots.items())]
    if large is not None:
        layouts.append((f"{args.large}x{FRAMES}, 2 MB files", large, 2))
    for name, root, mb in layouts:
        entry = results["datasets"][name] = {"root": root.name}
        if _written(root).is_file():
            entry["written"] = json.loads(_written(root).read_text())
        repeats = 1 if root == large else args.repeats
        entry["open"] = _repeat(repeats, "open", str(root))
        print(f"{name}: open {entry['open']['median']}", flush=True)
        for workers in (0, 2):
            entry[f"loader_{workers}_workers"] = got = _repeat(repeats, "loader", str(root), str(workers))
            print(f"{name}: loader {got['median']}", flush=True)
        if mb is not None and mb in args.resume_mb:
            entry["resume_at_90_percent"] = _repeat(1, "resume", str(root))
            print(f"{name}: resume {entry['resume_at_90_percent']['median']}", flush=True)
    results["machine"]["load_1_5_15_at_end"] = [round(x, 2) for x in os.getloadavg()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
