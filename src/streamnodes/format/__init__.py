"""LeRobot v3.0 on disk: metadata, episode refs, path templates, validation and row-group reads."""

from streamnodes.format.metadata import (
    CODEBASE_VERSION,
    DatasetMeta,
    EpisodeRef,
    Feature,
    VideoSegment,
)
from streamnodes.format.open import open_dataset
from streamnodes.format.reader import ParquetFileCache, column_to_numpy, read_episode_columns
from streamnodes.format.validate import check_data_files, rewrite_row_groups

__all__ = [
    "CODEBASE_VERSION",
    "DatasetMeta",
    "EpisodeRef",
    "Feature",
    "ParquetFileCache",
    "VideoSegment",
    "check_data_files",
    "column_to_numpy",
    "open_dataset",
    "read_episode_columns",
    "rewrite_row_groups",
]
