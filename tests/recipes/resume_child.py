"""Run in a fresh process by test_loader_resume.py: restore each saved loader state and print what follows.

argv: dataset root, JSON of build_loader kwargs, then state files. Prints one JSON line per state:
the batches (lists of `index`) from the restored position to the end of epoch 1.
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
    root, kwargs = sys.argv[1], json.loads(sys.argv[2])
    for path in sys.argv[3:]:
        loader = build_loader(root, **kwargs)
        loader.load_state_dict(torch.load(path, weights_only=True))
        print(json.dumps(rest_of_run(loader)), flush=True)


if __name__ == "__main__":
    main()
