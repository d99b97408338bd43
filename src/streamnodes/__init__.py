"""streamnodes: exactly resumable streaming of LeRobot v3 datasets into PyTorch, from torchdata nodes."""

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

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "DatasetConsistencyError",
    "DatasetFormatError",
    "DatasetMeta",
    "DownloadError",
    "EpisodeRef",
    "StateError",
    "StreamNodesError",
    "VideoDecodeError",
    "__version__",
    "open_dataset",
    "rewrite_row_groups",
]
