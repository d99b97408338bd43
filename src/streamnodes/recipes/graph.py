"""The packaged node graph for LeRobot frames, as a picklable factory built inside each consumer."""

from __future__ import annotations

import os
from dataclasses import dataclass

from torchdata.nodes import BaseNode

from streamnodes.distributed import Consumer
from streamnodes.episode_reader import EpisodeReader
from streamnodes.format.metadata import DatasetMeta
from streamnodes.nodes import (
    BatchDecode,
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
from streamnodes.recipes.config import StreamConfig
from streamnodes.rng import derive_seed
from streamnodes.sharding import EpochPlan, Remainder, equal_rank_quota, plan_epoch
from streamnodes.windows import delta_indices

GraphConfig = StreamConfig  # the name of the first releases


@dataclass
class BuiltGraph:
    """One consumer's graph: the node to iterate, and the parts the bridge reads besides its state."""

    output: BaseNode
    reader: EpisodeReader
    guard: EpisodeGuard | None = None

    def skipped(self) -> list[list[object]]:
        """This epoch's skipped episodes ``[[episode_index, reason], ...]`` (empty without a guard)."""
        return [[e, r] for e, r in self.guard.skipped] if self.guard is not None else []

    def shutdown(self) -> None:
        """Release decoders, downloads and open files along the chain (torchdata's shutdown order)."""
        shutdown = getattr(self.output, "shutdown", None)
        if callable(shutdown):
            shutdown()
        self.reader.shutdown()


class LeRobotGraph:
    """Builds ``ShardSource -> EpisodeBatcher [-> Prefetcher] [-> EpisodeGuard] -> EpisodePool -> DeltaWindow
    [-> FrameShuffle] [-> Take] -> BatchDecode`` (``VideoDecode`` for unbatched samples or a custom
    collate) for one consumer and epoch.

    Picklable (metadata and plain config only), so DataLoader workers build their own graph
    (torchdata's Mapper/ParallelMapper are not picklable; nothing here needs them). One
    :class:`~streamnodes.episode_reader.EpisodeReader` per consumer is read through by the batcher
    and given to the nodes that rebuild data on restore (pool, shuffle buffer). The Prefetcher is
    inserted for remote datasets only; Take only with several ranks (equal batches per rank).
    """

    def __init__(self, meta: DatasetMeta, config: StreamConfig, *, batch_in_graph: bool = False, pin_memory: bool = False) -> None:
        self.meta = meta
        self.config = config
        self.batch_in_graph = bool(batch_in_graph and config.batch_size is not None)
        self.pin_memory = bool(pin_memory)
        #: the undelivered rest of an epoch, dealt in that epoch instead of its plan (elastic resume)
        self.remainder: Remainder | None = None

    def lengths(self) -> dict[int, int]:
        eps = self.config.episodes
        return self.meta.episode_lengths(None if eps is None else [int(i) for i in eps])

    def plan(self, epoch: int, num_consumers: int) -> EpochPlan:
        """Every consumer's pieces in ``epoch`` (in an elastic resume's epoch: its remainder, dealt anew)."""
        if self.remainder is not None and self.remainder.epoch == epoch:
            return EpochPlan.of(self.remainder.deal(num_consumers))
        return plan_epoch(
            self.lengths(), seed=self.config.seed, epoch=epoch, shuffle=self.config.shuffle, num_consumers=num_consumers
        )

    def video_reach(self) -> tuple[int, int]:
        """Frames before and after a sample's frame that its cameras decode (the video keys' window offsets):
        what an episode split between consumers fetches beyond its own frames."""
        offsets = delta_indices(self.config.delta_timestamps, self.meta.fps, tolerance_s=self.config.tolerance_s,
                                features=self.meta.features)
        video = [int(o) for key in self.meta.video_keys if key in offsets for o in offsets[key]]
        return (max(0, -min(video)), max(0, max(video))) if video else (0, 0)

    def quotas(self, epoch: int, world_size: int, num_workers: int) -> tuple[list[int], int]:
        """Per-worker sample quotas every rank keeps in ``epoch``, and the frames trimmed overall."""
        return equal_rank_quota(self.plan(epoch, world_size * num_workers), world_size, num_workers)

    def worker_samples(self, epoch: int, world_size: int, num_workers: int) -> list[int]:
        """Samples worker ``w`` of every rank yields in ``epoch`` (the whole consumer with one rank, the
        equal-rank quota with several), from metadata alone."""
        if world_size == 1:
            return list(self.plan(epoch, num_workers).frames)
        return self.quotas(epoch, world_size, num_workers)[0]

    def identity(self) -> dict[str, object]:
        """What a loader state records to refuse a state of another dataset (fingerprint, root, episodes)."""
        return {"fingerprint": self.meta.fingerprint, "root": str(self.meta.root), "episodes": self.meta.total_episodes}

    def fingerprint(self) -> str:
        """The stream fingerprint a saved state is checked against (the config's order settings)."""
        return self.config.fingerprint()

    def samples(self, consumer: Consumer, epoch: int) -> BuiltGraph:
        """The chain up to the decode node: ``ShardSource ... DeltaWindow [-> FrameShuffle]``, emitting
        :class:`~streamnodes.types.Sample` (no Take: the caller bounds the count). The mixture recipe
        builds one per source."""
        c = self.config
        reader = EpisodeReader(self.meta)
        node: BaseNode = ShardSource(
            self.meta, seed=c.seed, shuffle=c.shuffle, epoch=epoch, rank=consumer.rank, world_size=consumer.world_size,
            worker_id=consumer.worker_id, num_workers=consumer.num_workers, episodes=c.episodes,
            remainder=self.remainder,
        )
        node = EpisodeBatcher(node, reader)
        if self.meta.is_remote:
            cache_dir = os.path.join(c.cache_dir, f"consumer-{consumer.id}") if c.cache_dir else None
            node = prefetcher = Prefetcher(
                node, self.meta, cache_dir=cache_dir, max_bytes=c.prefetch_max_bytes, reach=self.video_reach(),
            )
            reader = reader.with_videos(prefetcher.wrap)  # restored episodes fetch their videos again
        guard = None
        if c.on_error == "skip":
            node = guard = EpisodeGuard(node, self.meta, on_error="skip", tolerance_s=c.tolerance_s)
        node = EpisodePool(
            node, reader=reader, pool_size=c.episode_pool_size, seed=derive_seed(c.seed, consumer.id, "pool"),
            shuffle=c.shuffle, epoch=epoch, order_seed=c.seed,
        )
        node = window = DeltaWindow(node, self.meta, delta_timestamps=c.delta_timestamps, tolerance_s=c.tolerance_s)
        if c.frame_shuffle_size > 0:
            node = FrameShuffle(
                node, rebuild=window.rebuilder(reader), buffer_size=c.frame_shuffle_size,
                seed=derive_seed(c.seed, consumer.id, "shuffle"), epoch=epoch,
            )
        return BuiltGraph(node, reader, guard)

    def __call__(self, consumer: Consumer, epoch: int) -> BuiltGraph:
        built = self.samples(consumer, epoch)
        node = built.output
        if consumer.world_size > 1:
            quotas, _ = self.quotas(epoch, consumer.world_size, consumer.num_workers)
            node = Take(node, quotas[consumer.worker_id])
        built.output = decode_node(node, self.config, batch_in_graph=self.batch_in_graph, pin_memory=self.pin_memory)
        return built

    def __repr__(self) -> str:
        return f"LeRobotGraph({self.meta!r}, {self.config.describe()})"


def decode_node(node: BaseNode, config: StreamConfig, *, batch_in_graph: bool, pin_memory: bool) -> BaseNode:
    """The last node: ``BatchDecode`` (collated batches) when the graph batches, else ``VideoDecode``."""
    c = config
    if batch_in_graph:
        assert c.batch_size is not None
        return BatchDecode(
            node, batch_size=c.batch_size, drop_last=c.drop_last, decode_threads=c.decode_threads,
            image_dtype=c.image_dtype, layout=c.layout, tolerance_s=c.tolerance_s, max_decoders=c.max_decoders,
            decode_ahead=c.decode_ahead, pin_memory=pin_memory,
        )
    return VideoDecode(node, image_dtype=c.image_dtype, tolerance_s=c.tolerance_s, max_decoders=c.max_decoders)
