"""The loaders ``benchmarks/dataloading.py`` compares, and ``run(spec)``: one measured run of one of them.

Every loader reads the same dataset with the same batch size, the same ``delta_timestamps`` and the
same decoder code and settings; what differs is the data path around the decoder. One module each:

- ``streamnodes`` (:mod:`runner_streamnodes`): ``streamnodes.build_loader``, as a user would call it.
- ``decode_floor`` (:mod:`baseline_decode_floor`): exactly the decodes the streamnodes run issues, in
  a tight loop and nothing else: the physical limit of that access pattern.
- ``map_style`` (:mod:`baseline_map_style`): a random-access reader as LeRobot's map-style
  ``LeRobotDataset``, under a ``DataLoader`` with a shuffling sampler.
- ``datasets_native`` (:mod:`baseline_datasets_native`): the HF ``datasets`` streaming pipeline
  LeRobot moved to.

The measurement and metrics they share are in :mod:`bench_common`. ``run(spec)`` returns a flat,
JSON-ready dict of metrics.
"""

from __future__ import annotations

from typing import Any

from baseline_datasets_native import run_datasets_native
from baseline_decode_floor import consumer_batches, run_decode_floor
from baseline_map_style import run_map_style
from bench_common import LOADERS, MODES, RESUME_POINTS, RunSpec, delta_timestamps, release, shuffle_quality
from runner_streamnodes import run_streamnodes

__all__ = [
    "LOADERS",
    "MODES",
    "RESUME_POINTS",
    "RUNNERS",
    "RunSpec",
    "consumer_batches",
    "delta_timestamps",
    "release",
    "run",
    "shuffle_quality",
]

RUNNERS = {
    "streamnodes": run_streamnodes,
    "decode_floor": run_decode_floor,
    "map_style": run_map_style,
    "datasets_native": run_datasets_native,
}


def run(spec: RunSpec) -> dict[str, Any]:
    """Measure one (loader, mode, num_workers); a flat, JSON-ready dict."""
    import torch

    from streamnodes.format.open import open_dataset
    from streamnodes.windows import delta_indices

    if spec.loader not in RUNNERS:
        raise ValueError(f"unknown loader {spec.loader!r}; expected one of {LOADERS}")
    if spec.torch_threads is not None:
        torch.set_num_threads(spec.torch_threads)
    if spec.sharing_strategy is not None:
        torch.multiprocessing.set_sharing_strategy(spec.sharing_strategy)
    meta = open_dataset(spec.root)
    dts = delta_timestamps(meta.fps, meta.video_keys, spec)
    offsets = delta_indices(dts, meta.fps, features=meta.features)
    camera_offsets = [offsets.get(k) for k in meta.video_keys]
    ctx = {
        "lengths": {ep.episode_index: ep.length for ep in meta.episodes},
        "offsets": camera_offsets[0],  # all cameras share the mode's window
        "cameras": len(meta.video_keys),
        # width x height of the cameras (features' shape is [height, width, channels])
        "image_size": "/".join(dict.fromkeys(f"{meta.features[k].shape[1]}x{meta.features[k].shape[0]}"
                                             for k in meta.video_keys)),
    }
    result = RUNNERS[spec.loader](spec, meta, dts, ctx)
    threads = spec.decode_threads if spec.loader == "streamnodes" else None
    return {"dataset": spec.dataset, "image_size": ctx["image_size"], "loader": spec.loader, "mode": spec.mode,
            "num_workers": spec.num_workers, "decode_threads": threads, "cores": spec.cores(), **result,
            "torch_threads": torch.get_num_threads(), "sharing_strategy": torch.multiprocessing.get_sharing_strategy()}
