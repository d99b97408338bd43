"""Remote benchmark (issue 14): bytes and requests a shuffled epoch fetches over HTTP, whole files vs spans.

    python benchmarks/remote.py --out benchmarks/results/remote
    python benchmarks/remote.py --quick --out /tmp/remote        # a tiny dataset, 0 workers (~20 s)

A dataset with >= 10 episodes per mp4 (``streamnodes.testing.write_dataset``, cached under
``benchmarks/.cache/`` by ``bench_data.ensure_dataset``) is served by ``streamnodes.testing_http`` on
127.0.0.1 with a bandwidth shared by all responses (``--bandwidth-mb``, MB/s) and a latency added to
every request (``--latency-ms``). One shuffled epoch with ``episode_pool_size=4`` and ``cache_dir`` set is
read, for each worker count, three ways:

- ``local``: ``build_loader(root)``, the same configuration read from disk (the throughput reference);
- ``before``: remote with the whole-file video cache (the Prefetcher's ``byte_ranges=False``);
- ``after``: remote with episode byte spans (the default).

``byte_ranges`` is not a ``build_loader`` setting, so ``before`` swaps the Prefetcher that
``LeRobotGraph`` builds for one with ``byte_ranges=False`` (``whole_file_videos``; DataLoader workers are
forked and inherit it). Parquet is read by row group in both (that path has no switch), so its figures
show the same path twice.

Reported per run: bytes fetched / bytes needed (``needed`` = the dataset's bytes: every mp4, every data
parquet file; ``meta/`` is counted apart), GET and HEAD requests, samples/s and first-batch latency
(seconds from ``iter(loader)`` to the first batch, workers' start included) and the remote/local ratio
of samples/s. Bytes and requests are deterministic for a seed; times are not.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_data import CACHE_DIR, DatasetSpec, ensure_dataset  # noqa: E402

log = logging.getLogger("benchmarks")

# >= 10 episodes per mp4 (about 13: 0.4 MB files of ~30 KB episodes per camera), written in ~20 s.
DATASET = DatasetSpec(
    episodes=60, min_length=40, max_length=80, fps=20,
    cameras={"observation.images.front": (96, 128), "observation.images.wrist": (96, 96)},
    video_files_size_in_mb=0.4, data_files_size_in_mb=0.1,
)
QUICK = DatasetSpec(
    episodes=12, min_length=20, max_length=30, fps=10,
    cameras={"observation.images.front": (48, 64), "observation.images.wrist": (48, 48)},
    video_files_size_in_mb=0.02, data_files_size_in_mb=0.01,
)
SETTINGS = {"batch_size": 16, "episode_pool_size": 4, "seed": 0, "shuffle": True}
MODES = ("local", "before", "after")


@contextlib.contextmanager
def whole_file_videos() -> Iterator[None]:
    """While the block runs, the packaged graph fetches whole video files (``Prefetcher(byte_ranges=False)``)."""
    from streamnodes.nodes import Prefetcher
    from streamnodes.recipes import graph

    original = graph.Prefetcher
    graph.Prefetcher = functools.partial(Prefetcher, byte_ranges=False)  # type: ignore[misc]
    try:
        yield
    finally:
        graph.Prefetcher = original  # type: ignore[misc]


def dataset_bytes(root: Path) -> dict[str, int]:
    """Bytes of the dataset per kind: ``mp4`` (videos/), ``parquet`` (data/), ``meta`` (meta/)."""
    out = {"mp4": 0, "parquet": 0, "meta": 0}
    for path in root.rglob("*"):
        if path.is_file() and not path.name.startswith("."):
            out[kind_of(path.relative_to(root).as_posix())] += path.stat().st_size
    return out


def kind_of(rel: str) -> str:
    """``mp4``, ``parquet`` or ``meta`` for a path relative to the dataset root."""
    if rel.endswith(".mp4"):
        return "mp4"
    if rel.startswith("data/"):
        return "parquet"
    return "meta"


def server_counts(server: Any) -> dict[str, int]:
    """Bytes sent and requests received per kind since the last ``reset_counts``."""
    out: dict[str, int] = {}
    for rel, n in server.bytes_by_path.items():
        key = f"{kind_of(rel)}_bytes"
        out[key] = out.get(key, 0) + n
    for (method, rel), n in server.requests.items():
        key = f"{kind_of(rel)}_{method.lower()}s"
        out[key] = out.get(key, 0) + n
    return out


def read_epoch(source: str | Path, num_workers: int, cache_dir: str | None) -> dict[str, Any]:
    """One epoch through ``build_loader``: samples, batches, samples/s and first-batch latency."""
    from streamnodes import build_loader

    kwargs = dict(SETTINGS, num_workers=num_workers)
    if cache_dir is not None:
        kwargs["cache_dir"] = cache_dir
    start = time.perf_counter()
    loader = build_loader(str(source), **kwargs)
    samples = batches = 0
    first = None
    it = iter(loader)
    for batch in it:
        if first is None:
            first = time.perf_counter() - start
        samples += len(batch["index"])
        batches += 1
    seconds = time.perf_counter() - start
    del it, loader
    return {
        "samples": samples, "batches": batches, "seconds": round(seconds, 3),
        "samples_per_s": round(samples / seconds, 1), "first_batch_s": round(first or 0.0, 3),
    }


def run_all(
    root: Path, *, workers: tuple[int, ...], bandwidth_mb: float, latency_ms: float, scratch: Path
) -> list[dict[str, Any]]:
    """Every (num_workers, mode) over one server; a list of flat rows."""
    from streamnodes.testing_http import Faults, serve_directory

    needed = dataset_bytes(root)
    rows = []
    faults = Faults(delay_s=latency_ms / 1000.0, delay_rate=1.0) if latency_ms > 0 else Faults()
    with serve_directory(root, faults=faults, bandwidth=bandwidth_mb * 1e6 if bandwidth_mb > 0 else None) as server:
        read_epoch(root, 0, None)  # warm-up: imports, codec setup (not reported)
        for num_workers in workers:
            local_rate = None
            for mode in MODES:
                cache = tempfile.mkdtemp(prefix=f"{mode}-", dir=scratch)
                server.reset_counts()
                log.info("num_workers=%d %s ...", num_workers, mode)
                if mode == "local":
                    result = read_epoch(root, num_workers, None)
                    local_rate = result["samples_per_s"]
                else:
                    with whole_file_videos() if mode == "before" else contextlib.nullcontext():
                        result = read_epoch(server.url, num_workers, cache)
                shutil.rmtree(cache, ignore_errors=True)
                counts = server_counts(server) if mode != "local" else {}
                row: dict[str, Any] = {"num_workers": num_workers, "mode": mode, **result}
                for kind in ("mp4", "parquet", "meta"):
                    fetched = counts.get(f"{kind}_bytes", 0)
                    row[f"{kind}_fetched"] = fetched
                    row[f"{kind}_needed"] = needed[kind]
                    row[f"{kind}_ratio"] = round(fetched / needed[kind], 3) if needed[kind] else None
                    row[f"{kind}_gets"] = counts.get(f"{kind}_gets", 0)
                    row[f"{kind}_heads"] = counts.get(f"{kind}_heads", 0)
                row["requests"] = sum(v for k, v in counts.items() if k.endswith(("_gets", "_heads")))
                row["vs_local"] = round(result["samples_per_s"] / local_rate, 3) if local_rate else None
                rows.append(row)
                log.info("%s", {k: row[k] for k in ("num_workers", "mode", "samples_per_s", "mp4_ratio", "requests")})
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """The results as a markdown table."""
    head = (
        "| workers | mode | mp4 fetched / needed | parquet fetched / needed | meta bytes | GET (mp4/parquet/meta) | "
        "HEAD | samples/s | vs local | first batch (s) |"
    )
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for r in rows:
        if r["mode"] == "local":
            lines.append(
                f"| {r['num_workers']} | local (disk) | - | - | - | - | - | {r['samples_per_s']:.0f} | 1.00x | "
                f"{r['first_batch_s']:.2f} |"
            )
            continue
        heads = r["mp4_heads"] + r["parquet_heads"] + r["meta_heads"]
        lines.append(
            f"| {r['num_workers']} | {'before (whole files)' if r['mode'] == 'before' else 'after (spans)'} | "
            f"{r['mp4_fetched']:,} / {r['mp4_needed']:,} = {r['mp4_ratio']:.3f}x | "
            f"{r['parquet_fetched']:,} / {r['parquet_needed']:,} = {r['parquet_ratio']:.3f}x | {r['meta_fetched']:,} | "
            f"{r['mp4_gets']} / {r['parquet_gets']} / {r['meta_gets']} | {heads} | {r['samples_per_s']:.0f} | "
            f"{r['vs_local']:.2f}x | {r['first_batch_s']:.2f} |"
        )
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    return {
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def write(out: Path, data: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(data, indent=2) + "\n")
    spec, lim = data["dataset"], data["limits"]
    md = [
        "# Remote benchmark (issue 14)",
        "",
        f"Dataset: {spec['episodes']} episodes, {spec['frames']} frames, cameras {spec['cameras']}, {spec['codec']}, "
        f"{data['mp4_files']} mp4s (episodes per mp4: {data['episodes_per_mp4']}), {data['parquet_files']} data "
        "parquet files.",
        f"Server: streamnodes.testing_http on 127.0.0.1, {lim['bandwidth_mb']} MB/s shared by all responses, "
        f"{lim['latency_ms']} ms added to every request.",
        f"One shuffled epoch, {data['settings']}, cache_dir set. Machine: {data['machine']['cores']} cores, "
        f"load average at start {data['machine']['loadavg_start']} (shared with other work: throughput is "
        "indicative; bytes and requests are deterministic).",
        "",
        table(data["runs"]),
        "",
    ]
    (out / "results.md").write_text("\n".join(md))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=HERE / "results" / "remote")
    p.add_argument("--bandwidth-mb", type=float, default=50.0, help="MB/s shared by all responses (0: unlimited)")
    p.add_argument("--latency-ms", type=float, default=20.0, help="added to every request")
    p.add_argument("--workers", type=int, nargs="+", default=None, help="num_workers values (default 0 2)")
    p.add_argument("--quick", action="store_true", help="a tiny dataset and 0 workers")
    p.add_argument("--cache-dir", type=Path, default=CACHE_DIR, help="where the dataset is written once")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    spec = QUICK if args.quick else DATASET
    workers = tuple(args.workers or ((0,) if args.quick else (0, 2)))
    root = ensure_dataset(spec, args.cache_dir)
    from streamnodes.format import open_dataset

    meta = open_dataset(root)
    per_file: dict[str, int] = {}
    for ep in meta.episodes:
        for v in ep.videos:
            per_file[v.path] = per_file.get(v.path, 0) + 1
    info = machine()
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="remote-bench-", dir=args.cache_dir))
    try:
        rows = run_all(root, workers=workers, bandwidth_mb=args.bandwidth_mb, latency_ms=args.latency_ms, scratch=scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    info["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    data = {
        "machine": info,
        "dataset": spec.describe(),
        "mp4_files": len(per_file),
        "episodes_per_mp4": sorted(per_file.values(), reverse=True),
        "parquet_files": len(list((root / "data").rglob("*.parquet"))),
        "limits": {"bandwidth_mb": args.bandwidth_mb, "latency_ms": args.latency_ms},
        "settings": SETTINGS,
        "runs": rows,
    }
    write(args.out, data)
    print(table(rows))
    return data


if __name__ == "__main__":
    main()
