"""Writing the benchmark's results: results.json, results.csv, results.md and throughput.png."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

CSV_COLUMNS = (
    "loader", "mode", "num_workers", "samples_per_s", "ratio_to_floor", "frames_per_s", "first_batch_s",
    "p50_ms", "p95_ms", "p99_ms", "cpu_ms_per_sample", "cpu_main_s", "cpu_workers_s", "peak_rss_mb", "cache_hit_rate", "state_bytes", "resume_s_10", "resume_s_50",
    "resume_s_90", "distinct_episodes_per_batch", "distinct_episodes_per_batch_uniform", "episode_distance",
    "episode_distance_uniform", "samples_measured", "frames_decoded", "seconds_measured",
)


def add_floor_ratios(runs: list[dict[str, Any]]) -> None:
    """``ratio_to_floor``: samples/s over decode_floor's for the same mode and worker count."""
    floor = {(r["mode"], r["num_workers"]): r.get("samples_per_s") for r in runs if r["loader"] == "decode_floor"}
    for r in runs:
        f = floor.get((r["mode"], r["num_workers"]))
        s = r.get("samples_per_s")
        r["ratio_to_floor"] = round(s / f, 3) if f and s else None


def _flat(run: dict[str, Any]) -> dict[str, Any]:
    row = dict(run)
    resume = run.get("resume_s") or {}
    for p in ("10", "50", "90"):
        row[f"resume_s_{p}"] = resume.get(p)
    return row


def _fmt(value: Any, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def markdown_table(runs: list[dict[str, Any]]) -> str:
    head = (
        "| loader | mode | workers | samples/s | × floor | frames/s | CPU ms/sample | first batch s | "
        "p50 / p95 / p99 ms | peak RSS MB | cache hits | state B | resume s (10/50/90%) | "
        "episodes/batch (uniform) | episode distance (uniform) |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---|---|---|\n"
    )
    lines = []
    for r in runs:
        resume = r.get("resume_s")
        resume_text = " / ".join(_fmt(resume[p], 2) for p in ("10", "50", "90")) if resume else "–"
        lines.append(
            f"| {r['loader']} | {r['mode']} | {r['num_workers']} | {_fmt(r.get('samples_per_s'))} | "
            f"{_fmt(r.get('ratio_to_floor'), 2)} | {_fmt(r.get('frames_per_s'))} | {_fmt(r.get('cpu_ms_per_sample'), 2)} | "
            f"{_fmt(r.get('first_batch_s'), 2)} | "
            f"{_fmt(r.get('p50_ms'), 1)} / {_fmt(r.get('p95_ms'), 1)} / {_fmt(r.get('p99_ms'), 1)} | "
            f"{_fmt(r.get('peak_rss_mb'))} | {_fmt(r.get('cache_hit_rate'), 3)} | {_fmt(r.get('state_bytes'))} | "
            f"{resume_text} | {_fmt(r.get('distinct_episodes_per_batch'), 1)} ({_fmt(r.get('distinct_episodes_per_batch_uniform'), 1)}) | "
            f"{_fmt(r.get('episode_distance'), 1)} ({_fmt(r.get('episode_distance_uniform'), 1)}) |"
        )
    return head + "\n".join(lines) + "\n"


def plot(runs: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from bench_loaders import LOADERS, MODES

    loaders = [name for name in LOADERS if any(r["loader"] == name for r in runs)]
    modes = [m for m in MODES if any(r["mode"] == m for r in runs)]
    colors = {"streamnodes": "#1f77b4", "decode_floor": "#7f7f7f", "map_style": "#ff7f0e", "datasets_native": "#2ca02c"}
    fig, axes = plt.subplots(1, len(modes), figsize=(6.2 * len(modes), 4.9), sharey=True, squeeze=False)
    top = max([r.get("ratio_to_floor") or 0 for r in runs] + [1.0]) * 1.22
    for ax, mode in zip(axes[0], modes, strict=True):
        workers = sorted({r["num_workers"] for r in runs if r["mode"] == mode})
        width = 0.8 / max(1, len(loaders))
        for i, name in enumerate(loaders):
            for j, w in enumerate(workers):
                match = [r for r in runs if r["loader"] == name and r["mode"] == mode and r["num_workers"] == w]
                if not match or match[0].get("ratio_to_floor") is None:
                    continue
                r = match[0]
                x = j + (i - (len(loaders) - 1) / 2) * width
                ax.bar(x, r["ratio_to_floor"], width * 0.92, color=colors.get(name, "C5"), label=name if j == 0 else None)
                ax.text(x, r["ratio_to_floor"] + top * 0.01, f"{r['ratio_to_floor']:.2f}\n{r['samples_per_s']:.0f}/s",
                        ha="center", va="bottom", fontsize=7)
        ax.axhline(1.0, color="black", lw=0.8)
        ax.axhline(0.9, color="black", lw=0.8, ls="--")
        ax.set_xticks(range(len(workers)), [f"{w} worker{'' if w == 1 else 's'}" for w in workers])
        ax.set_ylim(0, top)
        ax.set_title(f"mode: {mode}")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("throughput / decode_floor (samples/s ratio)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncols=len(labels), fontsize=9, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=130)
    plt.close(fig)


def rewrite(out: Path) -> dict[str, Path]:
    """Re-render results.csv/.md/.png from an existing results.json (after changing the report code)."""
    data = json.loads((out / "results.json").read_text())
    return write_results(out, data["machine"], data["runs"], data.get("settings", {}))


def write_results(out: Path, machine: dict[str, Any], runs: list[dict[str, Any]], settings: dict[str, Any]) -> dict[str, Path]:
    """Write results.json, results.csv, results.md and throughput.png under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    add_floor_ratios(runs)
    paths = {
        "json": out / "results.json",
        "csv": out / "results.csv",
        "md": out / "results.md",
        "png": out / "throughput.png",
    }
    paths["json"].write_text(json.dumps({"machine": machine, "settings": settings, "runs": runs}, indent=1) + "\n")
    with paths["csv"].open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for r in runs:
            writer.writerow(_flat(r))
    md = [
        f"Machine: {machine.get('cpu')} ({machine.get('cores')} cores), load average {machine.get('loadavg_start')} "
        f"at start, {machine.get('loadavg_end')} at end; {machine.get('date')}.",
        f"Settings: {json.dumps(settings)}",
        "",
        markdown_table(runs),
    ]
    paths["md"].write_text("\n".join(md))
    title = (
        f"streamnodes benchmark: {settings.get('dataset', {}).get('episodes')} episodes, "
        f"batch {settings.get('batch_size')}, {machine.get('cores')} cores"
        + (" (quick)" if settings.get("quick") else "")
    )
    plot(runs, paths["png"], title)
    return paths
