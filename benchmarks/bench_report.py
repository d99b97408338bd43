"""Writing the benchmark's results: results.json, results.csv, results.md and throughput.png."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

CSV_COLUMNS = (
    "dataset", "image_size", "mode", "loader", "num_workers", "decode_threads", "cores", "samples_per_s", "ratio_to_floor",
    "cpu_ratio_to_floor",
    "frames_per_s", "first_batch_s", "p50_ms", "p95_ms", "p99_ms", "cpu_ms_per_sample", "cpu_main_s", "cpu_workers_s",
    "decode_busy", "peak_rss_mb", "cache_hit_rate", "state_bytes", "resume_s_10", "resume_s_50", "resume_s_90",
    "distinct_episodes_per_batch", "distinct_episodes_per_batch_uniform", "episode_distance", "episode_distance_uniform",
    "samples_measured", "frames_decoded", "seconds_measured", "samples_per_s_repeats", "other_load", "attempts",
)
GOAL_FLOOR = 0.9  # streamnodes' best at a CPU budget / the floor of as many processes
GOAL_BASELINES = 1.5  # streamnodes' best at a CPU budget / a baseline's best at the same budget
BASELINES = ("map_style", "datasets_native")


def _dataset(r: dict[str, Any]) -> str:
    return r.get("dataset", "small")


def _cores(r: dict[str, Any]) -> int:
    return r.get("cores") or max(1, r["num_workers"])


def config_label(r: dict[str, Any]) -> str:
    """``w<workers> t<threads>`` for streamnodes, ``w<workers>`` for the baselines, ``<N> proc`` for the floor."""
    if r["loader"] == "decode_floor":
        return f"{_cores(r)} proc"
    threads = r.get("decode_threads")
    return f"w{r['num_workers']}" + (f" t{threads}" if threads is not None else "")


def sort_runs(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from bench_loaders import LOADERS, MODES

    datasets = list(dict.fromkeys(_dataset(r) for r in runs))
    return sorted(runs, key=lambda r: (datasets.index(_dataset(r)), MODES.index(r["mode"]), _cores(r), LOADERS.index(r["loader"]),
                                       r["num_workers"], r.get("decode_threads") or 0))


def add_floor_ratios(runs: list[dict[str, Any]]) -> None:
    """``ratio_to_floor`` where the matrix has not set it (paired per repeat): samples/s over the
    decode_floor's of the same dataset, mode and CPU budget."""
    floors = {(_dataset(r), r["mode"], _cores(r)): r for r in runs if r["loader"] == "decode_floor"}
    for r in runs:
        floor = floors.get((_dataset(r), r["mode"], _cores(r))) or {}
        f, s = floor.get("samples_per_s"), r.get("samples_per_s")
        if r.get("ratio_to_floor") is None:
            r["ratio_to_floor"] = round(s / f, 3) if f and s else None
        # the same comparison in CPU time per sample (the floor's over the run's): what the ratio would be
        # if both ran alone on their cores, busy all the time; far less sensitive to other work on the
        # machine than throughput, but blind to idle time (a run that waits does not pay CPU for it)
        fc, c = floor.get("cpu_ms_per_sample"), r.get("cpu_ms_per_sample")
        r["cpu_ratio_to_floor"] = round(fc / c, 3) if fc and c else None


def goals(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per dataset, mode and CPU budget: streamnodes' best configuration against the floor (goal
    >= 0.9x) and against each baseline's best at the same budget (goal >= 1.5x)."""
    out = []
    keys = list(dict.fromkeys((_dataset(r), r.get("image_size"), r["mode"], _cores(r)) for r in runs))
    for dataset, size, mode, cores in keys:
        same = [r for r in runs if (_dataset(r), r["mode"], _cores(r)) == (dataset, mode, cores) and r.get("samples_per_s")]
        sn = [r for r in same if r["loader"] == "streamnodes"]
        if not sn:
            continue
        best = max(sn, key=lambda r: r.get("ratio_to_floor") or r["samples_per_s"])
        row: dict[str, Any] = {"dataset": dataset, "image_size": size, "mode": mode, "cores": cores,
                               "best": config_label(best), "samples_per_s": best["samples_per_s"],
                               "ratio_to_floor": best.get("ratio_to_floor"), "cpu_ratio_to_floor": best.get("cpu_ratio_to_floor")}
        row["floor_met"] = row["ratio_to_floor"] is not None and row["ratio_to_floor"] >= GOAL_FLOOR
        for name in BASELINES:
            base = [r for r in same if r["loader"] == name]
            if base:
                b = max(base, key=lambda r: r["samples_per_s"])
                row[f"vs_{name}"] = round(best["samples_per_s"] / b["samples_per_s"], 2)
                row[f"vs_{name}_met"] = row[f"vs_{name}"] >= GOAL_BASELINES
        out.append(row)
    return out


def _flat(run: dict[str, Any]) -> dict[str, Any]:
    row = dict(run)
    resume = run.get("resume_s") or {}
    for p in ("10", "50", "90"):
        row[f"resume_s_{p}"] = resume.get(p)
    if isinstance(row.get("samples_per_s_repeats"), list):
        row["samples_per_s_repeats"] = " ".join(str(x) for x in row["samples_per_s_repeats"])
    return row


def _fmt(value: Any, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def markdown_table(runs: list[dict[str, Any]]) -> str:
    head = (
        "| dataset | mode | loader | workers | threads | cores | samples/s | × floor | × floor (CPU) | other load | frames/s | CPU ms/sample | "
        "decode busy | first batch s | p50 / p95 / p99 ms | peak RSS MB | cache hits | state B | resume s (10/50/90%) | "
        "episodes/batch (uniform) | episode distance (uniform) |\n"
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---|---|---|\n"
    )
    lines = []
    for r in runs:
        resume = r.get("resume_s")
        resume_text = " / ".join(_fmt(resume[p], 2) for p in ("10", "50", "90")) if resume else "–"
        lines.append(
            f"| {_dataset(r)} {r.get('image_size') or ''} | {r['mode']} | {r['loader']} | {r['num_workers']} | "
            f"{_fmt(r.get('decode_threads'))} | {_cores(r)} | {_fmt(r.get('samples_per_s'))} | "
            f"{_fmt(r.get('ratio_to_floor'), 2)} | {_fmt(r.get('cpu_ratio_to_floor'), 2)} | {_fmt(r.get('other_load'), 2)} | "
            f"{_fmt(r.get('frames_per_s'))} | {_fmt(r.get('cpu_ms_per_sample'), 2)} | "
            f"{_fmt(r.get('decode_busy'), 2)} | {_fmt(r.get('first_batch_s'), 2)} | "
            f"{_fmt(r.get('p50_ms'), 1)} / {_fmt(r.get('p95_ms'), 1)} / {_fmt(r.get('p99_ms'), 1)} | "
            f"{_fmt(r.get('peak_rss_mb'))} | {_fmt(r.get('cache_hit_rate'), 3)} | {_fmt(r.get('state_bytes'))} | "
            f"{resume_text} | {_fmt(r.get('distinct_episodes_per_batch'), 1)} ({_fmt(r.get('distinct_episodes_per_batch_uniform'), 1)}) | "
            f"{_fmt(r.get('episode_distance'), 1)} ({_fmt(r.get('episode_distance_uniform'), 1)}) |"
        )
    return head + "\n".join(lines) + "\n"


def floor_table(runs: list[dict[str, Any]]) -> str:
    """× floor of every configuration, throughput (and CPU per sample in brackets), one row per dataset
    and mode, with the floors' samples/s."""
    columns = list(dict.fromkeys((r["loader"], config_label(r), _cores(r)) for r in sorted(runs, key=_cores)
                                 if r["loader"] != "decode_floor"))
    floors = sorted({_cores(r) for r in runs if r["loader"] == "decode_floor"})
    head = ("| dataset | mode | " + " | ".join(f"floor {c} proc (samples/s)" for c in floors) + " | "
            + " | ".join(f"{name} {label} ({c}c)" for name, label, c in columns) + " |\n")
    head += "|---|---|" + "---:|" * (len(floors) + len(columns)) + "\n"
    lines = []
    for dataset, size, mode in dict.fromkeys((_dataset(r), r.get("image_size"), r["mode"]) for r in runs):
        same = [r for r in runs if (_dataset(r), r["mode"]) == (dataset, mode)]
        cells = []
        for c in floors:
            f = [r for r in same if r["loader"] == "decode_floor" and _cores(r) == c]
            cells.append(_fmt(f[0].get("samples_per_s")) if f else "–")
        for name, label, _ in columns:
            m = [r for r in same if r["loader"] == name and config_label(r) == label]
            cells.append(f"{_fmt(m[0].get('ratio_to_floor'), 2)} ({_fmt(m[0].get('cpu_ratio_to_floor'), 2)})" if m else "–")
        lines.append(f"| {dataset} {size or ''} | {mode} | " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"


def goals_table(runs: list[dict[str, Any]]) -> str:
    rows = goals(runs)
    head = (f"| dataset | mode | cores | best streamnodes | samples/s | × floor (goal ≥ {GOAL_FLOOR}) | met | × floor (CPU) | "
            f"× map_style (goal ≥ {GOAL_BASELINES}) | met | × datasets_native (goal ≥ {GOAL_BASELINES}) | met |\n"
            "|---|---|---:|---|---:|---:|---|---:|---:|---|---:|---|\n")
    lines = [
        f"| {g['dataset']} {g.get('image_size') or ''} | {g['mode']} | {g['cores']} | {g['best']} | {_fmt(g['samples_per_s'])} | "
        f"{_fmt(g['ratio_to_floor'], 2)} | {_fmt(g['floor_met'])} | {_fmt(g.get('cpu_ratio_to_floor'), 2)} | {_fmt(g.get('vs_map_style'), 2)} | "
        f"{_fmt(g.get('vs_map_style_met'))} | {_fmt(g.get('vs_datasets_native'), 2)} | {_fmt(g.get('vs_datasets_native_met'))} |"
        for g in rows
    ]
    return head + "\n".join(lines) + "\n"


COLORS = {"streamnodes": "#1f77b4", "decode_floor": "#7f7f7f", "map_style": "#ff7f0e", "datasets_native": "#2ca02c"}


def plot(runs: list[dict[str, Any]], path: Path, title: str) -> None:
    """One panel per dataset (row) and mode (column): × floor of every configuration, grouped by CPU
    budget (1 core | 2 cores), with the goal line at 0.9."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from bench_loaders import MODES

    datasets = list(dict.fromkeys((_dataset(r), r.get("image_size")) for r in runs))
    modes = [m for m in MODES if any(r["mode"] == m for r in runs)]
    fig, axes = plt.subplots(len(datasets), len(modes), figsize=(7.0 * len(modes), 4.3 * len(datasets)),
                             sharey=True, squeeze=False)
    top = min(2.0, max([r.get("ratio_to_floor") or 0 for r in runs] + [1.0]) * 1.25)  # outliers clipped, labelled
    for row, (dataset, size) in enumerate(datasets):
        for ax, mode in zip(axes[row], modes, strict=True):
            shown = [r for r in sort_runs(runs) if (_dataset(r), r["mode"]) == (dataset, mode)
                     and r["loader"] != "decode_floor" and r.get("ratio_to_floor") is not None]
            for x, r in enumerate(shown):
                height = min(r["ratio_to_floor"], top * 0.85)
                ax.bar(x, height, 0.8, color=COLORS.get(r["loader"], "C5"), label=r["loader"])
                ax.text(x, height + top * 0.01, f"{r['ratio_to_floor']:.2f}\n{r['samples_per_s']:.0f}/s",
                        ha="center", va="bottom", fontsize=6.5)
            for x in range(1, len(shown)):
                if _cores(shown[x]) != _cores(shown[x - 1]):
                    ax.axvline(x - 0.5, color="black", lw=0.6, ls=":")
            ax.axhline(1.0, color="black", lw=0.8)
            ax.axhline(GOAL_FLOOR, color="black", lw=0.8, ls="--")
            ax.set_xticks(range(len(shown)), [f"{config_label(r)}\n{_cores(r)}c" for r in shown], fontsize=7)
            ax.set_ylim(0, top)
            ax.set_title(f"{dataset} ({size}), mode {mode}", fontsize=9)
            ax.grid(axis="y", alpha=0.3)
        axes[row][0].set_ylabel("samples/s ÷ floor of as many cores")
    handles, labels = [], []
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="lower center", ncols=max(1, len(labels)), fontsize=9, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=120)
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
    paths["json"].write_text(json.dumps({"machine": machine, "settings": settings, "goals": goals(runs), "runs": runs}, indent=1) + "\n")
    with paths["csv"].open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for r in runs:
            writer.writerow(_flat(r))
    md = [
        f"Machine: {machine.get('cpu')} ({machine.get('cores')} cores), load average {machine.get('loadavg_start')} "
        f"at start, {machine.get('loadavg_end')} at end; {machine.get('date')}; {machine.get('benchmark_seconds')} s.",
        f"Settings: {json.dumps(settings)}",
        "",
        "## Goals (streamnodes' best configuration per CPU budget)",
        "",
        goals_table(runs),
        "## × floor of every configuration (w = num_workers, t = decode_threads, c = cores compared at)",
        "",
        floor_table(runs),
        "## Every run",
        "",
        markdown_table(runs),
    ]
    paths["md"].write_text("\n".join(md))
    datasets = settings.get("datasets") or {"": settings.get("dataset", {})}
    title = (
        "streamnodes benchmark: " + ", ".join(f"{name} {d.get('episodes')} episodes" for name, d in datasets.items())
        + f"; batch {settings.get('batch_size')}, {machine.get('cores')} cores" + (" (quick)" if settings.get("quick") else "")
    )
    plot(runs, paths["png"], title)
    return paths
