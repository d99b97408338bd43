"""Run in a fresh process (:func:`assert_plan_resumes`): restore each saved loader state, print what follows.

argv: ``--plan PLAN.json``, a list of ``{"root", "kwargs", "states": [state files]}`` (many loader
configurations, one process start). Prints one JSON line per state, in order: the batches (lists of `index`) from the
restored position to the end of epoch 1. A root that is a list is a mixture (items: paths, or dicts of
``Source`` fields); its batches are lists of ``[dataset_index, index]`` pairs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from streamnodes import Source, build_loader


def batch_ids(batch) -> list:
    """The batch's ``index`` values; for a mixture, ``[dataset_index, index]`` pairs."""
    idx = batch["index"]
    ids = idx.tolist() if idx.ndim else [int(idx)]
    if "dataset_index" not in batch:
        return ids
    ds = batch["dataset_index"]
    return [list(p) for p in zip(ds.tolist() if ds.ndim else [int(ds)], ids, strict=True)]


def rest_of_run(loader, last_epoch: int = 1) -> list[list]:
    out: list[list] = []
    while True:
        for batch in loader:
            out.append(batch_ids(batch))
        if loader.epoch >= last_epoch:
            return out


def sources(root):
    """``root`` from a plan: a path, or a mixture's list of paths and ``Source`` field dicts."""
    if isinstance(root, list):
        return [Source(**r) if isinstance(r, dict) else r for r in root]
    return root


def assert_plan_resumes(plan: list[dict], expected: list[tuple[str, list]], plan_file: Path, timeout: int) -> None:
    """Run this module on ``plan`` (written to ``plan_file``) in ONE fresh process; what each restored
    state yields must equal its ``(label, batches)`` in ``expected``, in order."""
    plan_file.write_text(json.dumps(plan))
    out = subprocess.run([sys.executable, "-m", "tests.recipes.resume_child", "--plan", str(plan_file)],
                         capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2], timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert len(lines) == len(expected)
    for (label, want), line in zip(expected, lines, strict=True):
        assert json.loads(line) == want, f"resume at {label} diverged"


def main() -> None:
    with open(sys.argv[sys.argv.index("--plan") + 1]) as f:
        plan = json.load(f)
    for entry in plan:
        for path in entry["states"]:
            loader = build_loader(sources(entry["root"]), **entry["kwargs"])
            loader.load_state_dict(torch.load(path, weights_only=True))
            print(json.dumps(rest_of_run(loader)), flush=True)


if __name__ == "__main__":
    main()
