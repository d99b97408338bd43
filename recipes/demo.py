"""`make demo`: train, checkpoint, stop, resume in a fresh process, and show the stream continues exactly.

Steps (everything under the repository root):

1. Writes a demo LeRobot v3 dataset into ``demo_data/`` unless it is already there (cached under a
   hash of its configuration): two cameras (96x96 and 64x64, AV1 like LeRobot), a few hundred
   episodes. The first write takes about a minute; later runs reuse it.
2. Trains ``recipes/train.py`` for ``--half_steps`` steps with checkpoints, and stops.
3. Resumes from the last checkpoint in a fresh process and trains to ``2 * half_steps``.
4. Runs the same training uninterrupted, as the reference.
5. Compares the dataset ``index`` of every sample each run consumed after the checkpoint (logged by
   ``--log_indices``) and the final model weights, and prints a verdict and frames/s.
6. Measures data loading alone (``--dummy``).

Output goes to ``demo_runs/`` (replaced on every run).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "recipes" / "train.py"

# The demo dataset. Change anything here and the demo writes a new one (the directory name is a hash).
DATASET_CONFIG = {
    "version": 1,
    "episodes": 250,
    "min_length": 30,
    "max_length": 60,
    "fps": 30,
    "cameras": {"observation.images.top": [96, 96], "observation.images.wrist": [64, 64]},
    "codec": "av1",
    "state_dim": 6,
    "action_dim": 6,
    "seed": 0,
}


def banner(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def dataset_root(data_dir: Path) -> Path:
    digest = hashlib.sha256(json.dumps(DATASET_CONFIG, sort_keys=True).encode()).hexdigest()[:10]
    return data_dir / f"demo-{digest}"


def write_demo_dataset(root: Path) -> None:
    """Write the demo dataset into ``root`` (an empty or missing directory), in this process."""
    import numpy as np

    from streamnodes.testing import write_dataset

    c = DATASET_CONFIG
    lengths = np.random.default_rng(c["seed"]).integers(c["min_length"], c["max_length"] + 1, size=c["episodes"])
    write_dataset(
        root,
        episode_lengths=[int(n) for n in lengths],
        fps=c["fps"],
        cameras={key: tuple(size) for key, size in c["cameras"].items()},
        state_dim=c["state_dim"],
        action_dim=c["action_dim"],
        codec=c["codec"],
    )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def ensure_dataset(data_dir: Path, attempts: int = 3) -> Path:
    """The demo dataset, written once: into a temporary directory first, then renamed into place.

    The writing runs in a child process and is retried when the child dies of a signal: the AV1
    encoder (libsvtav1, driven from several threads) was seen to segfault now and then.
    """
    root = dataset_root(data_dir)
    shown = root.relative_to(REPO) if root.is_relative_to(REPO) else root
    if (root / "meta" / "info.json").is_file():
        print(f"using the cached demo dataset {shown}")
        return root
    c = DATASET_CONFIG
    cameras = ", ".join(f"{k} {h}x{w}" for k, (h, w) in c["cameras"].items())
    print(
        f"writing the demo dataset {shown}: {c['episodes']} episodes of {c['min_length']}-{c['max_length']} "
        f"frames at {c['fps']} fps, cameras {cameras}, {c['codec']} (about a minute, once)",
        flush=True,
    )
    data_dir.mkdir(parents=True, exist_ok=True)
    for stale in data_dir.glob(f".writing-{root.name}-*"):  # left by a killed demo
        pid = stale.name.rsplit("-", 1)[-1]
        if not (pid.isdigit() and _pid_alive(int(pid))):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = data_dir / f".writing-{root.name}-{os.getpid()}"
    start = time.perf_counter()
    for attempt in range(1, attempts + 1):
        shutil.rmtree(tmp, ignore_errors=True)
        result = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--write_dataset_to", str(tmp)])
        if result.returncode == 0:
            break
        if result.returncode > 0 or attempt == attempts:
            shutil.rmtree(tmp, ignore_errors=True)
            raise SystemExit(f"writing the demo dataset failed (exit code {result.returncode})")
        print(f"the dataset writer died of signal {-result.returncode}; retrying ({attempt}/{attempts})", flush=True)
    tmp.rename(root)
    (root / "demo_config.json").write_text(json.dumps(DATASET_CONFIG, indent=2) + "\n")
    print(f"wrote {shown} in {time.perf_counter() - start:.0f} s", flush=True)
    return root


def launcher(world_size: int) -> list[str]:
    if world_size == 1:
        return [sys.executable]
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    return [accelerate, "launch", "--multi_gpu", "--num_processes", str(world_size), "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no"]  # fmt: skip


def train(args: argparse.Namespace, root: Path, out: Path, steps: int, *extra: str) -> dict:
    """Run train.py in a fresh process (output shown live) and return its summary.json."""
    command = [*launcher(args.world_size), str(TRAIN), "--dataset", str(root), "--output_dir", str(out)]
    command += ["--steps", str(steps), "--batch_size", str(args.batch_size), "--num_workers", str(args.num_workers)]
    command += ["--seed", str(args.seed), "--log_every", "0", *extra]
    shown = " ".join(os.path.relpath(c, REPO) if c.startswith(str(REPO)) else c for c in command)
    print(f"$ {shown.replace(sys.executable, 'python')}", flush=True)
    subprocess.run(command, cwd=REPO, check=True)
    return json.loads((out / "summary.json").read_text())


def read_index_log(path: Path) -> dict[tuple[int, int], list[int]]:
    """``{(step, rank): indices}``; when a step was logged twice (a resume), the last line wins."""
    out: dict[tuple[int, int], list[int]] = {}
    for line in path.read_text().splitlines():
        fields = [int(x) for x in line.split()]
        out[(fields[0], fields[1])] = fields[2:]
    return out


def max_weight_difference(a: Path, b: Path) -> float:
    import torch

    left = torch.load(a, weights_only=True)
    right = torch.load(b, weights_only=True)
    if left.keys() != right.keys():
        return float("inf")
    return max((left[k].float() - right[k].float()).abs().max().item() for k in left)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--half_steps", type=int, default=200, help="steps before the stop (and again after it)")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--num_workers", type=int, default=2)
    p.add_argument("--world_size", type=int, default=1, help="processes per run (>1: accelerate launch)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dummy_steps", type=int, default=300, help="steps of the data-loading-only run (0: skip)")
    p.add_argument("--data_dir", type=Path, default=REPO / "demo_data")
    p.add_argument("--runs_dir", type=Path, default=REPO / "demo_runs")
    p.add_argument("--write_dataset_to", type=Path, help=argparse.SUPPRESS)  # internal: the writer child
    args = p.parse_args(argv)
    if args.write_dataset_to is not None:
        write_demo_dataset(args.write_dataset_to)
        return 0
    half, total = args.half_steps, 2 * args.half_steps
    started = time.perf_counter()

    banner("1. demo dataset")
    root = ensure_dataset(args.data_dir)
    shutil.rmtree(args.runs_dir, ignore_errors=True)
    args.runs_dir.mkdir(parents=True)
    interrupted, reference = args.runs_dir / "interrupted", args.runs_dir / "uninterrupted"
    demo_started = time.perf_counter()

    banner(f"2. train steps 0 -> {half} with checkpoints, then stop")
    first = train(args, root, interrupted, half, "--save_every", str(half // 2),
                  "--log_indices", str(interrupted / "indices-before-stop.log"))  # fmt: skip
    checkpoint = interrupted / f"step-{half:08d}"

    banner(f"3. resume from {checkpoint.relative_to(args.runs_dir.parent)} in a fresh process: steps {half} -> {total}")
    resumed = train(args, root, interrupted, total, "--save_every", str(half), "--resume_from", str(checkpoint),
                    "--log_indices", str(interrupted / "indices-after-resume.log"))  # fmt: skip

    banner(f"4. reference: the same training without a stop, steps 0 -> {total}")
    uninterrupted = train(args, root, reference, total, "--save_every", str(half),
                          "--log_indices", str(reference / "indices.log"))  # fmt: skip

    dummy = None
    if args.dummy_steps:
        banner(f"5. data loading only (--dummy), {args.dummy_steps} steps")
        dummy = train(args, root, args.runs_dir / "dummy", args.dummy_steps, "--dummy", "--save_every", "0")

    banner("verdict")
    after = read_index_log(interrupted / "indices-after-resume.log")
    expected = {key: value for key, value in read_index_log(reference / "indices.log").items() if key[0] > half}
    same = after == expected
    batches = len(expected)
    samples = sum(len(v) for v in expected.values())
    weights = max_weight_difference(interrupted / f"step-{total:08d}" / "model.pt", reference / f"step-{total:08d}" / "model.pt")
    if same:
        epochs = (
            f", through the end of epoch {first['epoch']} into epoch {resumed['epoch']}"
            if resumed["epoch"] > first["epoch"]
            else ""
        )
        print(
            f"OK: resumed stream identical to the uninterrupted run for {batches} batches ({samples} samples, "
            f"steps {half + 1}-{total}{epochs}; {args.world_size} rank(s) x {args.num_workers} worker(s))"
            if args.world_size == 1
            else f"OK: resumed stream identical to the uninterrupted run for {batches} batches ({total - half} "
            f"steps x {args.world_size} ranks, {samples} samples, steps {half + 1}-{total}{epochs}; "
            f"{args.num_workers} worker(s) per rank)"
        )
    else:
        differing = sorted(k for k in expected.keys() | after.keys() if after.get(k) != expected.get(k))
        print(f"MISMATCH: the resumed stream differs from the uninterrupted run at (step, rank) {differing[:5]} ...")
    print(
        f"{'OK' if weights == 0 else 'NOTE'}: final model weights of the resumed and the uninterrupted run "
        f"differ by at most {weights:.3g}" + (" (bit-identical)" if weights == 0 else "")
    )
    print("\nthroughput (frames/s = dataset frames, each with both cameras decoded, per second, all ranks):")
    rows = [(f"train 0->{half} (stopped)", first), (f"train {half}->{total} (resumed)", resumed),
            (f"train 0->{total} (reference)", uninterrupted)]  # fmt: skip
    if dummy is not None:
        rows.append((f"data loading only 0->{args.dummy_steps}", dummy))
    for name, summary in rows:
        steady = summary.get("frames_per_s_after_first_batch")
        print(
            f"  {name:<28} {summary['frames_per_s']:>7.0f} frames/s"
            + (f"  ({steady:.0f} after the first batch at {summary['first_batch_s']:.1f} s)" if steady else "")
        )
    print(
        f"\ndemo took {time.perf_counter() - demo_started:.0f} s after the dataset "
        f"({time.perf_counter() - started:.0f} s in all); runs in {args.runs_dir}"
    )
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
