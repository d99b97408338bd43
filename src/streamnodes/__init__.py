"""streamnodes: exactly resumable streaming of LeRobot v3 datasets into PyTorch, from torchdata nodes."""

from streamnodes.episode_reader import EpisodeReader
from streamnodes.errors import (
    ConfigError,
    DatasetConsistencyError,
    DatasetFormatError,
    DownloadError,
    StateError,
    StreamNodesError,
    VideoDecodeError,
)
from streamnodes.format import DatasetMeta, EpisodeRef, open_dataset, rewrite_row_groups
from streamnodes.nodes import (
    BatchDecode,
    DeltaWindow,
    EpisodeBatcher,
    EpisodePool,
    FrameShuffle,
    Prefetcher,
    ShardSource,
    Take,
    VideoDecode,
)
from streamnodes.recipes.config import StreamConfig
from streamnodes.recipes.loader import StreamLoader, build_loader
from streamnodes.recipes.mixture import Source

__version__ = "0.1.0"

__all__ = [
    "BatchDecode",
    "DeltaWindow",
    "EpisodeBatcher",
    "EpisodePool",
    "EpisodeReader",
    "FrameShuffle",
    "Prefetcher",
    "ShardSource",
    "Source",
    "Take",
    "VideoDecode",
    "ConfigError",
    "DatasetConsistencyError",
    "DatasetFormatError",
    "DatasetMeta",
    "DownloadError",
    "EpisodeRef",
    "StateError",
    "StreamConfig",
    "StreamLoader",
    "StreamNodesError",
    "VideoDecodeError",
    "__version__",
    "build_loader",
    "open_dataset",
    "rewrite_row_groups",
]
