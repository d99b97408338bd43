"""The nodes, one per file. Each is a ``torchdata.nodes.BaseNode`` with refs-and-counters state."""

from streamnodes.nodes.batch_decode import BatchDecode
from streamnodes.nodes.delta_window import DeltaWindow
from streamnodes.nodes.episode_batcher import EpisodeBatcher
from streamnodes.nodes.episode_guard import EpisodeGuard
from streamnodes.nodes.episode_pool import EpisodePool
from streamnodes.nodes.frame_shuffle import FrameShuffle
from streamnodes.nodes.prefetcher import Prefetcher
from streamnodes.nodes.relabel import Relabel
from streamnodes.nodes.shard_source import ShardSource
from streamnodes.nodes.take import Take
from streamnodes.nodes.video_decode import VideoDecode
from streamnodes.nodes.weighted_mix import WeightedMix

__all__ = ["BatchDecode", "DeltaWindow", "EpisodeBatcher", "EpisodeGuard", "EpisodePool", "FrameShuffle", "Prefetcher", "Relabel", "ShardSource", "Take", "VideoDecode", "WeightedMix"]
