"""Exception types. Every error streamnodes raises on purpose derives from :class:`StreamNodesError`.

Messages name the file (or URL), the episode where there is one, and what to do about it.
"""

from __future__ import annotations


class StreamNodesError(Exception):
    """Base class of every error streamnodes raises for bad input, bad state or bad configuration."""


class DatasetFormatError(StreamNodesError):
    """A dataset on disk is not a valid LeRobot v3.0 dataset (missing files, wrong version, bad schema)."""


class DatasetConsistencyError(DatasetFormatError):
    """Metadata and data disagree (row counts, index ranges, row groups vs episodes)."""


class ConfigError(StreamNodesError, ValueError):
    """Arguments that cannot work with this dataset (unknown keys, deltas off the frame grid)."""


class StateError(StreamNodesError):
    """A saved state does not fit the node or loader it is restored into."""


class VideoDecodeError(StreamNodesError):
    """A video file cannot be decoded, or decoded frames do not match the requested timestamps."""


class DownloadError(StreamNodesError):
    """A remote file could not be fetched after the allowed retries."""
