"""Run under `accelerate launch --num_processes 2 --cpu` by test_distributed.py.

argv: dataset root, output dir, mode ("run", "resume" or "prepare"), stop_after (batches before saving).
"run": iterate epoch 0 fully and epoch 1 fully, saving this rank's loader state after `stop_after`
batches of epoch 1 to out/state-rank{r}.pt; "resume": restore that file and finish epoch 1;
"prepare": LeRobot's habit, ``loader = accelerator.prepare(loader)``, then epoch 0 (and ``len``).
Each rank writes out/{mode}-rank{r}.json with its batches' `index` lists per epoch.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from accelerate import Accelerator

from streamnodes import build_loader


def main() -> None:
    root, out, mode, stop_after = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    accelerator = Accelerator(cpu=True)  # first, so the loader finds its rank
    rank = accelerator.process_index
    loader = build_loader(root, batch_size=4, num_workers=2, episode_pool_size=3, seed=5,
                          delta_timestamps={"action": [0.0, 0.1, 0.2]})
    assert loader.dataset.rank == rank and loader.dataset.world_size == accelerator.num_processes
    record: dict = {"rank": rank, "world_size": accelerator.num_processes, "epochs": {},
                    "expected_batches": [loader.batches_per_epoch(e) for e in (0, 1)]}
    if mode == "run":
        for epoch in range(2):
            batches = []
            for batch in loader:
                batches.append(batch["index"].tolist())
                if epoch == 1 and len(batches) == stop_after:
                    torch.save(loader.state_dict(), out / f"state-rank{rank}.pt")
            record["epochs"][str(loader.epoch)] = batches
    elif mode == "prepare":
        prepared = accelerator.prepare(loader)
        record["prepared_is_loader"] = prepared is loader
        record["len"] = len(prepared)
        record["epochs"]["0"] = [batch["index"].tolist() for batch in prepared]
    else:
        loader.load_state_dict(torch.load(out / f"state-rank{rank}.pt", weights_only=True))
        record["epochs"]["1"] = [batch["index"].tolist() for batch in loader]
        record["epoch_after_resume"] = loader.epoch
    (out / f"{mode}-rank{rank}.json").write_text(json.dumps(record))
    accelerator.wait_for_everyone()


if __name__ == "__main__":
    main()
