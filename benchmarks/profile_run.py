"""Profile one benchmark run in this process with cProfile (the standard library's profiler).

    python benchmarks/profile_run.py --dataset small --mode single --loader streamnodes --threads 1
    python benchmarks/profile_run.py --dataset large --mode window --loader decode_floor --top 15

Prints the functions with the most own time (``tottime``) and the cumulative time of a few known
stages (decode, batch tensors, tabular collation, the sample pipeline). With ``--threads 2`` the
decode threads (named ``BatchDecode*``) are profiled too (``threading.setprofile``), their time added to the same table, so
shares are of CPU-ish time summed over threads, not of wall time. Use ``--workers 0``: a profiler in
the main process does not see DataLoader workers. See docs/benchmarks.md, "Profile".
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import resource
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_data import CACHE_DIR, DATASETS, ensure_dataset  # noqa: E402
from bench_loaders import LOADERS, MODES, RunSpec, release, run  # noqa: E402

# (label, file name ending, function name) whose cumulative time is reported
STAGES = (
    ("decode: VideoDecoder.get_frames_at", "_video_decoder.py", "get_frames_at"),
    ("decode: opening decoders (DecoderCache.get)", "decoder_cache.py", "get"),
    ("BatchDecode._finish (wait for and assemble a batch)", "batch_decode.py", "_finish"),
    ("BatchDecode._pull (the next batch's samples)", "batch_decode.py", "_pull"),
    ("BatchDecode._allocate (batch tensors)", "batch_decode.py", "_allocate"),
    ("BatchDecode: decode_query_into (decode + checks + copy)", "batch_decode.py", "decode_query_into"),
    ("BatchDecode: collate_tabular", "batch_decode.py", "collate_tabular"),
    ("write_frame (copy into the batch)", "collate.py", "write_frame"),
    ("DeltaWindow.next", "delta_window.py", "next"),
    ("EpisodePool.next", "episode_pool.py", "next"),
    ("default_collate (torch)", "collate.py", "default_collate"),
    ("decode_query (floor, baselines)", "video_decode.py", "decode_query"),
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=list(DATASETS), default="small")
    p.add_argument("--mode", choices=MODES, default="single")
    p.add_argument("--loader", choices=LOADERS, default="streamnodes")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batches", type=int, default=100)
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args(argv)
    root = ensure_dataset(DATASETS[args.dataset], CACHE_DIR)
    spec = RunSpec(loader=args.loader, mode=args.mode, num_workers=args.workers, decode_threads=args.threads,
                   root=str(root), dataset=args.dataset, warmup_batches=4, measure_batches=args.batches, resume=False)
    profiler = cProfile.Profile()
    thread_profiles: list[cProfile.Profile] = []

    def in_thread(frame, event, arg):  # noqa: ANN001, ANN202 - a setprofile hook: profile the new thread
        if not threading.current_thread().name.startswith("BatchDecode"):  # not the benchmark's RSS monitor
            sys.setprofile(None)
            return
        prof = cProfile.Profile()
        thread_profiles.append(prof)
        sys.setprofile(None)
        prof.enable()

    threading.setprofile(in_thread)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    profiler.enable()
    start = time.perf_counter()
    try:
        result = run(spec)
    finally:
        wall = time.perf_counter() - start
        profiler.disable()
        threading.setprofile(None)
        release()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    for prof in thread_profiles:
        stats.add(prof)
    print(f"{args.loader} {args.dataset} {args.mode} workers={args.workers} threads={args.threads}: "
          f"{result['samples_per_s']} samples/s, CPU {result['cpu_ms_per_sample']} ms/sample (under the profiler)")
    end = resource.getrusage(resource.RUSAGE_SELF)
    print(f"this process (whole run, incl. set-up and warm-up): user {end.ru_utime - usage.ru_utime:.2f} s, "
          f"system {end.ru_stime - usage.ru_stime:.2f} s, minor page faults {end.ru_minflt - usage.ru_minflt:,} "
          f"({(end.ru_minflt - usage.ru_minflt) * 4 / 1024:,.0f} MiB of 4 KiB pages first touched)")
    print(f"\ncumulative seconds by stage, summed over threads (the run took {wall:.2f} s wall under the profiler):")
    for label, suffix, name in STAGES:
        cum = sum(v[3] for (file, _, fn), v in stats.stats.items() if file.endswith(suffix) and fn == name)
        if cum:
            print(f"  {label:55s} {cum:8.2f} s")
    stats.sort_stats("tottime").print_stats(args.top)
    print(out.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
