"""The benchmark's dataset: written once with ``streamnodes.testing.write_dataset`` and cached.

The cache key is a digest of the whole configuration, so changing any setting writes a new dataset
next to the old one under ``benchmarks/.cache/`` (gitignored). A dataset is complete only when its
``.complete`` marker exists; an interrupted write is redone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger("benchmarks")

CACHE_DIR = Path(__file__).resolve().parent / ".cache"
_MARKER = ".complete"


@dataclass(frozen=True)
class DatasetSpec:
    """What the benchmark dataset looks like. Cameras are ``key -> (height, width)``."""

    episodes: int = 300
    min_length: int = 100
    max_length: int = 200
    fps: int = 20
    cameras: dict[str, tuple[int, int]] = field(
        default_factory=lambda: {"observation.images.front": (96, 128), "observation.images.wrist": (96, 96)}
    )
    codec: str = "av1"
    video_files_size_in_mb: float = 2.0
    data_files_size_in_mb: float = 1.0
    seed: int = 0

    def episode_lengths(self) -> list[int]:
        rng = np.random.default_rng(self.seed)
        return [int(n) for n in rng.integers(self.min_length, self.max_length + 1, self.episodes)]

    def digest(self) -> str:
        payload = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]

    def image_size(self) -> str:
        """The cameras' sizes as ``WxH`` (width x height), joined by ``/`` when they differ."""
        sizes = dict.fromkeys(f"{w}x{h}" for h, w in self.cameras.values())
        return "/".join(sizes)

    def describe(self) -> dict:
        d = asdict(self)
        d["cameras"] = {k: f"{w}x{h}" for k, (h, w) in self.cameras.items()}  # width x height
        d["frames"] = sum(self.episode_lengths())
        return d


# The benchmark's datasets, by name. ``small``: many short low-resolution episodes (what the loaders'
# per-sample overhead shows on). ``large``: LeRobot's usual 640x480 at 30 fps, few episodes, so it is
# written in a few minutes (encoding 640x480 AV1 runs ~50 frames/s on 2 cores).
DATASETS: dict[str, DatasetSpec] = {
    "small": DatasetSpec(),
    "large": DatasetSpec(
        episodes=24, min_length=120, max_length=240, fps=30,
        cameras={"observation.images.front": (480, 640), "observation.images.wrist": (480, 640)},
        video_files_size_in_mb=20.0,
    ),
}


def ensure_dataset(spec: DatasetSpec, cache_dir: Path = CACHE_DIR) -> Path:
    """The dataset for ``spec`` under ``cache_dir``, written now if it is not there yet."""
    root = Path(cache_dir) / f"dataset-{spec.digest()}"
    if (root / _MARKER).exists():
        return root
    from streamnodes.testing import write_dataset

    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    lengths = spec.episode_lengths()
    log.info("writing the benchmark dataset (%d episodes, %d frames) to %s; this is done once", len(lengths), sum(lengths), root)
    start = time.perf_counter()
    write_dataset(
        root,
        episode_lengths=lengths,
        fps=spec.fps,
        cameras=dict(spec.cameras),
        codec=spec.codec,  # type: ignore[arg-type]
        video_files_size_in_mb=spec.video_files_size_in_mb,
        data_files_size_in_mb=spec.data_files_size_in_mb,
    )
    (root / _MARKER).write_text(json.dumps({**spec.describe(), "seconds": round(time.perf_counter() - start, 1)}))
    log.info("wrote the dataset in %.0f s", time.perf_counter() - start)
    return root
