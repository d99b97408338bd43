"""The packaged node graph for LeRobot frames, as a picklable factory built inside each consumer."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torchdata.nodes import BaseNode

from streamnodes.distributed import Consumer
from streamnodes.format.metadata import DatasetMeta
from streamnodes.nodes import (
    DeltaWindow,
    EpisodeBatcher,
    EpisodeGuard,
    EpisodePool,
    FrameShuffle,
    Prefetcher,
    ShardSource,
    Take,
    VideoDecode,
)
from streamnodes.rng import derive_seed
from streamnodes.sharding import EpochPlan, equal_rank_quota, plan_epoch


@dataclass(frozen=True)
class GraphConfig:
    """Everything that shapes the stream besides the dataset and the consumer. Plain, picklable values."""

    delta_timestamps: Mapping[str, Sequence[float]] | None = None
    tolerance_s: float = 1e-4
    episode_pool_size: int = 64
    frame_shuffle_size: int = 0
    shuffle: bool = True
    seed: int = 0
    episodes: Sequence[int] | None = None
    image_dtype: str = "float32"  # or "uint8"
    cache_dir: str | None = None
    prefetch_max_bytes: int = 2 << 30
    max_decoders: int = 16
    on_error: str = "raise"  # or "skip": damaged episodes are skipped whole (EpisodeGuard)
    extra: Mapping[str, Any] = field(default_factory=dict)

    def fingerprint(self) -> str:
        """Digest of the settings a saved state depends on (order, windows); not of performance knobs."""
        keys = ("delta_timestamps", "tolerance_s", "episode_pool_size", "frame_shuffle_size", "shuffle", "seed", "episodes", "on_error")
        d = asdict(self)
        payload = json.dumps({k: d[k] for k in keys}, sort_keys=True, default=list)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def describe(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: d[k] for k in ("delta_timestamps", "episode_pool_size", "frame_shuffle_size", "shuffle", "seed")}


class LeRobotGraph:
    """Builds ``ShardSource -> EpisodeBatcher [-> Prefetcher] [-> EpisodeGuard] -> EpisodePool -> DeltaWindow
    [-> FrameShuffle] [-> Take] -> VideoDecode`` for one consumer and epoch.

    Picklable (metadata and plain config only), so DataLoader workers build their own graph
    (torchdata's Mapper/ParallelMapper are not picklable; nothing here needs them). The Prefetcher
    is inserted for remote datasets only; Take only with several ranks (equal batches per rank).
    """

    def __init__(self, meta: DatasetMeta, config: GraphConfig) -> None:
        self.meta = meta
        self.config = config

    def lengths(self) -> dict[int, int]:
        eps = self.config.episodes
        if eps is None:
            return {e.episode_index: e.length for e in self.meta.episodes}
        return {int(i): self.meta.episode(int(i)).length for i in eps}

    def plan(self, epoch: int, num_consumers: int) -> EpochPlan:
        return plan_epoch(
            self.lengths(), seed=self.config.seed, epoch=epoch, shuffle=self.config.shuffle, num_consumers=num_consumers
        )

    def quotas(self, epoch: int, world_size: int, num_workers: int) -> tuple[list[int], int]:
        """Per-worker sample quotas every rank keeps in ``epoch``, and the frames trimmed overall."""
        return equal_rank_quota(self.plan(epoch, world_size * num_workers), world_size, num_workers)

    def __call__(self, consumer: Consumer, epoch: int) -> BaseNode:
        c = self.config
        node: BaseNode = ShardSource(
            self.meta, seed=c.seed, shuffle=c.shuffle, epoch=epoch, rank=consumer.rank, world_size=consumer.world_size,
            worker_id=consumer.worker_id, num_workers=consumer.num_workers, episodes=c.episodes,
        )
        node = EpisodeBatcher(node, self.meta)
        if self.meta.is_remote:
            cache_dir = os.path.join(c.cache_dir, f"consumer-{consumer.id}") if c.cache_dir else None
            node = Prefetcher(node, self.meta, cache_dir=cache_dir, max_bytes=c.prefetch_max_bytes)
        if c.on_error == "skip":
            node = EpisodeGuard(node, self.meta, on_error="skip", tolerance_s=c.tolerance_s)
        node = EpisodePool(
            node, pool_size=c.episode_pool_size, seed=derive_seed(c.seed, consumer.id, "pool"), shuffle=c.shuffle, epoch=epoch
        )
        node = DeltaWindow(node, self.meta, delta_timestamps=c.delta_timestamps, tolerance_s=c.tolerance_s)
        if c.frame_shuffle_size > 0:
            node = FrameShuffle(
                node, buffer_size=c.frame_shuffle_size, seed=derive_seed(c.seed, consumer.id, "shuffle"), epoch=epoch
            )
        if consumer.world_size > 1:
            quotas, _ = self.quotas(epoch, consumer.world_size, consumer.num_workers)
            node = Take(node, quotas[consumer.worker_id])
        dtype = torch.uint8 if c.image_dtype == "uint8" else torch.float32
        return VideoDecode(node, image_dtype=dtype, tolerance_s=c.tolerance_s, max_decoders=c.max_decoders)

    def __repr__(self) -> str:
        return f"LeRobotGraph({self.meta!r}, {self.config.describe()})"
