"""Smoke test of benchmarks/dataloading.py on a tiny dataset: every loader runs, results have the
documented structure and consistent values. Never asserts on wall-clock speed."""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import bench_loaders  # noqa: E402
from bench_data import DatasetSpec, ensure_dataset  # noqa: E402
from bench_loaders import LOADERS, RunSpec, consumer_batches, run, shuffle_quality  # noqa: E402
from bench_report import goals, write_results  # noqa: E402
from dataloading import _median_run, add_paired_ratios, machine_info, matrix, parse_args  # noqa: E402

RUN_KEYS = {
    "loader", "mode", "num_workers", "samples_per_s", "frames_per_s", "first_batch_s", "p50_ms", "p95_ms",
    "p99_ms", "peak_rss_mb", "cache_hit_rate", "state_bytes", "resume_s", "distinct_episodes_per_batch",
    "dataset", "image_size", "decode_threads", "cores", "decode_busy", "other_load",
}


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = DatasetSpec(
        episodes=6, min_length=40, max_length=60, fps=20,
        cameras={"observation.images.front": (64, 80), "observation.images.wrist": (64, 64)},
        video_files_size_in_mb=0.02, data_files_size_in_mb=0.01,
    )
    root = ensure_dataset(spec, tmp_path_factory.mktemp("bench_cache"))
    assert ensure_dataset(spec, root.parent) == root  # cached: the second call writes nothing
    assert len(list((root / "videos" / "observation.images.front").rglob("*.mp4"))) > 1
    return root


@pytest.mark.timeout(120)
def test_every_loader_runs_and_reports(tiny_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)  # HF's 5 s sleep on closing
    runs = []
    try:
        for loader in LOADERS:
            spec = RunSpec(loader=loader, mode="window", num_workers=0, root=str(tiny_root), batch_size=8,
                           warmup_batches=2, measure_batches=4, pool_size=3, frame_buffer=16, dataset="tiny")
            runs.append(run(spec))
        # batches decoded on 2 threads (BatchDecode inside the graph): compared at 2 cores
        threaded = run(RunSpec(loader="streamnodes", mode="window", num_workers=0, decode_threads=2, root=str(tiny_root),
                               batch_size=8, warmup_batches=2, measure_batches=4, pool_size=3, dataset="tiny", resume=False))
    finally:
        bench_loaders.release()
    by_loader = {r["loader"]: r for r in runs}
    for r in runs:
        assert set(r) >= RUN_KEYS, r["loader"]
        assert r["mode"] == "window" and r["num_workers"] == 0 and r["cores"] == 1
        assert r["dataset"] == "tiny" and r["image_size"] == "80x64/64x64"  # width x height per camera
        assert r["decode_threads"] == (1 if r["loader"] == "streamnodes" else None)
        assert r["samples_measured"] == 4 * 8  # every loader measures the same number of samples
        # frames per sample from the rates equals the counted frames per sample: one clock for both
        assert r["frames_per_s"] / r["samples_per_s"] == pytest.approx(r["frames_decoded"] / r["samples_measured"], rel=1e-2)
        # window mode: 2 cameras x 1..8 distinct frames per sample
        assert 2 * 32 <= r["frames_decoded"] <= 2 * 8 * 32
    sn, floor = by_loader["streamnodes"], by_loader["decode_floor"]
    assert sn["frames_decoded"] == floor["frames_decoded"]  # the floor issues exactly streamnodes' decodes
    assert threaded["frames_decoded"] == sn["frames_decoded"]  # the same stream, decoded on two threads
    assert threaded["cores"] == 2 and threaded["decode_threads"] == 2 and threaded["resume_s"] is None
    assert sn["decode_busy"] is not None and threaded["decode_busy"] is not None and floor["decode_busy"] is None
    assert 0.0 <= threaded["cache_hit_rate"] <= 1.0  # counters from BatchDecode.stats(), no collate_fn
    assert set(sn["resume_s"]) == {"10", "50", "90"} and all(isinstance(v, float) for v in sn["resume_s"].values())
    for name in ("decode_floor", "map_style", "datasets_native"):
        assert by_loader[name]["resume_s"] is None and by_loader[name]["state_bytes"] is None
    for name in ("streamnodes", "map_style", "datasets_native"):
        r = by_loader[name]
        assert 0.0 <= r["cache_hit_rate"] <= 1.0
        assert 1 <= r["distinct_episodes_per_batch"] <= 8
        assert 1 <= r["distinct_episodes_per_batch_uniform"] <= 8

    machine = machine_info()
    paths = write_results(tmp_path / "out", machine, runs, {"batch_size": 8, "dataset": {"episodes": 6}})
    data = json.loads(paths["json"].read_text())
    assert set(data) >= {"machine", "runs"} and data["machine"]["cores"] == os.cpu_count()
    assert [r["loader"] for r in data["runs"]] == list(LOADERS)
    floor_rate = next(r["samples_per_s"] for r in data["runs"] if r["loader"] == "decode_floor")
    floor_cpu = next(r["cpu_ms_per_sample"] for r in data["runs"] if r["loader"] == "decode_floor")
    for r in data["runs"]:  # the same comparison in CPU time per sample
        assert r["cpu_ratio_to_floor"] == pytest.approx(floor_cpu / r["cpu_ms_per_sample"], rel=1e-2, abs=1e-3)
    for r in data["runs"]:  # throughput relative to the floor of the same mode and worker count
        assert r["ratio_to_floor"] == pytest.approx(r["samples_per_s"] / floor_rate, rel=1e-2, abs=1e-3), r["loader"]  # rounded to 3 places
    with paths["csv"].open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(LOADERS) and rows[0]["resume_s_50"] != "" and rows[2]["resume_s_50"] == ""
    md = paths["md"].read_text()
    assert "| tiny 80x64/64x64 | window | streamnodes | 0 | 1 | 1 |" in md
    assert "## Goals" in md and data["goals"][0]["best"] == "w0 t1"
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_floor_splits_batches_like_the_dataloader() -> None:
    spec = RunSpec(loader="decode_floor", mode="single", num_workers=2, root="", warmup_batches=6, measure_batches=9)
    assert consumer_batches(spec) == [(3, 5), (3, 4)]  # batch i comes from worker i % 2
    assert consumer_batches(RunSpec(loader="decode_floor", mode="single", num_workers=0, root="",
                                    warmup_batches=6, measure_batches=9)) == [(6, 9)]


def test_shuffle_quality_reference_values() -> None:
    lengths = {e: 10 for e in range(20)}
    ordered = [[e] * 5 for e in range(20) for _ in range(2)]  # storage order: one episode per batch
    q = shuffle_quality(ordered, lengths)
    assert q["distinct_episodes_per_batch"] == 1.0
    assert q["episode_distance"] < 0.2  # consecutive samples almost always from the same episode
    assert q["distinct_episodes_per_batch_uniform"] > 3 and q["episode_distance_uniform"] > 4


def test_quick_defaults() -> None:
    quick, full = parse_args(["--quick"]), parse_args([])
    assert quick.datasets == ["small"] and full.datasets == ["small", "large"]
    assert quick.workers == [0, 2] and full.workers == [0, 1, 2]
    assert quick.threads == full.threads == [1, 2] and full.baseline_workers == [0, 2]
    assert quick.repeats == 1 and full.repeats == 3


def test_matrix_rows() -> None:
    args = parse_args(["--workers", "0", "2", "--threads", "1", "2", "--floor-processes", "1", "2"])
    rows = matrix(args, "small", "single")
    assert rows == [
        ("streamnodes", 0, 1), ("streamnodes", 0, 2), ("streamnodes", 2, 1), ("streamnodes", 2, 2),
        ("decode_floor", 0, 1), ("decode_floor", 2, 1),
        ("map_style", 0, 1), ("map_style", 2, 1), ("datasets_native", 0, 1), ("datasets_native", 2, 1),
    ]


def test_cpu_budget() -> None:
    from bench_common import cpu_budget

    assert [cpu_budget(w, t, 2) for w, t in ((0, 0), (0, 1), (1, 1), (0, 2), (2, 1), (1, 2), (2, 2))] == [1, 1, 1, 2, 2, 2, 2]
    assert cpu_budget(2, 2, 8) == 4


def _run(loader: str, workers: int, threads: int | None, cores: int, rate: float, repeat: int = 0) -> dict:
    return {"dataset": "d", "image_size": "4x4", "mode": "single", "loader": loader, "num_workers": workers,
            "decode_threads": threads, "cores": cores, "samples_per_s": rate, "repeat": repeat}


def test_median_and_paired_ratios() -> None:
    sn = [_run("streamnodes", 0, 1, 1, rate, i) for i, rate in enumerate((90.0, 50.0, 80.0))]
    fl = [_run("decode_floor", 0, None, 1, rate, i) for i, rate in enumerate((100.0, 50.0, 200.0))]
    sn[0]["resume_s"] = {"10": 0.1}
    runs = [_median_run(sn), _median_run(fl)]
    assert runs[0]["samples_per_s"] == 80.0 and runs[0]["samples_per_s_repeats"] == [90.0, 50.0, 80.0]
    assert runs[0]["resume_s"] == {"10": 0.1}  # measured on the first repeat only
    add_paired_ratios(runs, {("d", "single", "streamnodes", 0, 1): sn, ("d", "single", "decode_floor", 0, 1): fl})
    assert runs[0]["ratio_to_floor_repeats"] == [0.4, 0.9, 1.0]  # 80/200, 90/100, 50/50: paired per repeat
    assert runs[0]["ratio_to_floor"] == 0.9 and runs[1]["ratio_to_floor"] == 1.0


def test_goals_per_cpu_budget() -> None:
    runs = [
        {**_run("streamnodes", 0, 1, 1, 90.0), "ratio_to_floor": 0.9},
        {**_run("streamnodes", 1, 1, 1, 80.0), "ratio_to_floor": 0.8},
        {**_run("streamnodes", 0, 2, 2, 150.0), "ratio_to_floor": 0.75},
        {**_run("streamnodes", 2, 1, 2, 170.0), "ratio_to_floor": 0.85},
        _run("map_style", 0, None, 1, 60.0), _run("map_style", 2, None, 2, 100.0),
        _run("datasets_native", 0, None, 1, 50.0), _run("datasets_native", 2, None, 2, 120.0),
    ]
    one, two = goals(runs)
    assert (one["cores"], one["best"], one["ratio_to_floor"], one["floor_met"]) == (1, "w0 t1", 0.9, True)
    assert (one["vs_map_style"], one["vs_map_style_met"], one["vs_datasets_native"]) == (1.5, True, 1.8)
    assert (two["cores"], two["best"], two["ratio_to_floor"], two["floor_met"]) == (2, "w2 t1", 0.85, False)
    assert (two["vs_map_style"], two["vs_datasets_native"], two["vs_datasets_native_met"]) == (1.7, 1.42, False)


def test_remote_benchmark_smoke(tmp_path: Path) -> None:
    """benchmarks/remote.py --quick: every mode reads the same epoch; byte counts (deterministic) are consistent."""
    import remote

    out = tmp_path / "out"
    data = remote.main(["--quick", "--latency-ms", "0", "--out", str(out), "--cache-dir", str(tmp_path / "cache")])
    assert json.loads((out / "results.json").read_text())["runs"] == data["runs"]
    assert "| after (spans) |" in (out / "results.md").read_text()
    rows = {r["mode"]: r for r in data["runs"]}
    assert [r["mode"] for r in data["runs"]] == list(remote.MODES) and {r["num_workers"] for r in data["runs"]} == {0}
    assert len({r["samples"] for r in data["runs"]}) == 1 and rows["local"]["samples"] > 0
    assert rows["local"]["requests"] == 0 and rows["local"]["mp4_fetched"] == 0
    needed = remote.dataset_bytes(data_root := next((tmp_path / "cache").glob("dataset-*")))
    assert rows["after"]["mp4_needed"] == needed["mp4"] == sum(p.stat().st_size for p in data_root.rglob("*.mp4"))
    assert rows["before"]["mp4_fetched"] >= needed["mp4"]  # whole files: every file at least once
    assert 0 < rows["after"]["mp4_fetched"] <= rows["before"]["mp4_fetched"]
    assert rows["after"]["mp4_ratio"] <= 1.2 and rows["after"]["mp4_gets"] > rows["before"]["mp4_gets"]
    assert rows["after"]["parquet_fetched"] == rows["before"]["parquet_fetched"] > 0  # one parquet path in both


def test_disturbed_runs_are_left_out() -> None:
    sn = [{**_run("streamnodes", 0, 1, 1, rate, i), "other_load": load}
          for i, (rate, load) in enumerate(((10.0, 1.2), (90.0, 0.0), (80.0, 0.1)))]
    fl = [{**_run("decode_floor", 0, None, 1, rate, i), "other_load": load}
          for i, (rate, load) in enumerate(((50.0, 0.0), (100.0, 0.0), (200.0, 0.9)))]
    runs = [_median_run(sn, 0.15), _median_run(fl, 0.15)]
    assert runs[0]["samples_per_s_repeats"] == [90.0, 80.0] and runs[0]["quiet_passes"] == [2, 3]
    add_paired_ratios(runs, {("d", "single", "streamnodes", 0, 1): sn, ("d", "single", "decode_floor", 0, 1): fl}, 0.15)
    assert runs[0]["ratio_to_floor_repeats"] == [0.9]  # pass 1: streamnodes disturbed; pass 3: the floor
    loud = [{**_run("map_style", 0, None, 1, 5.0, 0), "other_load": 1.0}, {**_run("map_style", 0, None, 1, 7.0, 1), "other_load": 0.5}]
    assert _median_run(loud, 0.15)["samples_per_s"] == 7.0  # none quiet: the least disturbed run
