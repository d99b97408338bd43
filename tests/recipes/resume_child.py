"""Run in a fresh process by test_loader_resume.py: restore each saved loader state and print what follows.

argv: dataset root, JSON of build_loader kwargs, then state files; or ``--plan PLAN.json`` where the
plan is a list of ``{"root", "kwargs", "states": [state files]}`` (many loader configurations, one
process start). Prints one JSON line per state, in order: the batches (lists of `index`) from the
restored position to the end of epoch 1.
"""

from __future__ import annotations

import json
import sys

import torch

from streamnodes import build_loader


def rest_of_run(loader, last_epoch: int = 1) -> list[list[int]]:
    out: list[list[int]] = []
    while True:
        for batch in loader:
            idx = batch["index"]
            out.append(idx.tolist() if idx.ndim else [int(idx)])
        if loader.epoch >= last_epoch:
            return out


def main() -> None:
    if sys.argv[1] == "--plan":
        with open(sys.argv[2]) as f:
            plan = json.load(f)
    else:
        plan = [{"root": sys.argv[1], "kwargs": json.loads(sys.argv[2]), "states": sys.argv[3:]}]
    for entry in plan:
        for path in entry["states"]:
            loader = build_loader(entry["root"], **entry["kwargs"])
            loader.load_state_dict(torch.load(path, weights_only=True))
            print(json.dumps(rest_of_run(loader)), flush=True)


if __name__ == "__main__":
    main()
