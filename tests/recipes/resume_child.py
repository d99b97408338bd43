"""Run in a fresh process by test_loader_resume.py: restore each saved loader state and print what follows.

argv: dataset root, JSON of build_loader kwargs, then state files; or ``--plan PLAN.json`` where the
plan is a list of ``{"root", "kwargs", "states": [state files]}`` (many loader configurations, one
process start). Prints one JSON line per state, in order: the batches (lists of `index`) from the
restored position to the end of epoch 1. A root that is a list is a mixture (items: paths, or dicts of
``Source`` fields); its batches are lists of ``[dataset_index, index]`` pairs.
"""

from __future__ import annotations

import json
import sys

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


def main() -> None:
    if sys.argv[1] == "--plan":
        with open(sys.argv[2]) as f:
            plan = json.load(f)
    else:
        plan = [{"root": sys.argv[1], "kwargs": json.loads(sys.argv[2]), "states": sys.argv[3:]}]
    for entry in plan:
        for path in entry["states"]:
            loader = build_loader(sources(entry["root"]), **entry["kwargs"])
            loader.load_state_dict(torch.load(path, weights_only=True))
            print(json.dumps(rest_of_run(loader)), flush=True)


if __name__ == "__main__":
    main()
