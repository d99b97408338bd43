"""StreamConfig: every setting of the packaged stream, validated once, in one frozen dataclass.

Adding a setting is one field here plus its use in :class:`~streamnodes.recipes.graph.LeRobotGraph`:
``build_loader`` takes the fields as keyword arguments (derived from this class, not listed again),
and whether a field shapes the order of the stream, and so belongs in the fingerprint a saved state
is checked against, is declared on the field (``order=True``), not in a separate list.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from streamnodes.errors import ConfigError
from streamnodes.format.metadata import DatasetMeta
from streamnodes.windows import delta_indices

_IMAGE_DTYPES = {"float32": torch.float32, "uint8": torch.uint8}


def _setting(default: Any, *, order: bool = False, doc: str) -> Any:
    """A field of StreamConfig: ``order=True`` when a saved state depends on it (fingerprinted)."""
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata={"order": order, "doc": doc})
    return field(default=default, metadata={"order": order, "doc": doc})


@dataclass(frozen=True)
class StreamConfig:
    """What shapes the stream besides the dataset and the consumer. Picklable plain values.

    Fields marked *order* change which sample comes when (a saved state is refused if they differ);
    the others are performance and output knobs that may change between runs.
    """

    delta_timestamps: Mapping[str, Sequence[float]] | None = _setting(
        None, order=True, doc="LeRobot's windows: feature -> offsets in seconds (multiples of 1/fps)"
    )
    tolerance_s: float = _setting(1e-4, order=True, doc="largest |pts - t| and off-grid delta allowed (LeRobot: 1e-4)")
    episode_pool_size: int = _setting(64, order=True, doc="whole episodes resident per consumer")
    frame_shuffle_size: int = _setting(0, order=True, doc="samples in the resumable shuffle buffer (0: none)")
    shuffle: bool = _setting(True, order=True, doc="False keeps storage order")
    seed: int = _setting(0, order=True, doc="the stream is a pure function of (seed, epoch, consumer)")
    episodes: Sequence[int] | None = _setting(None, order=True, doc="episode subset (None: all)")
    on_error: str = _setting("raise", order=True, doc="'raise' or 'skip' damaged episodes whole")
    batch_size: int | None = _setting(32, doc="samples per batch per worker (None: unbatched samples)")
    drop_last: bool = _setting(False, doc="drop each worker's partial last batch")
    image_dtype: Any = _setting(torch.float32, doc="torch.float32 (LeRobot's [0, 1]) or torch.uint8")
    cache_dir: str | None = _setting(None, doc="remote datasets: where local video copies go (None: temp dir)")
    prefetch_max_bytes: int = _setting(2 << 30, doc="remote datasets: video bytes on disk per consumer")
    max_decoders: int = _setting(32, doc="open video decoders kept per consumer, split among its decode threads")
    decode_threads: int = _setting(2, doc="threads decoding each batch's frames in every consumer (0: the calling thread)")
    decode_ahead: int = _setting(1, doc="batches pulled and decoding ahead of the one returned")
    layout: str = _setting("channels_last", doc="camera tensors' memory: 'channels_last' (no transpose) or 'contiguous'")

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        dtype = self.image_dtype
        if isinstance(dtype, str):
            dtype = _IMAGE_DTYPES.get(dtype.removeprefix("torch."), dtype)
        if dtype not in _IMAGE_DTYPES.values():
            raise ConfigError(f"image_dtype must be torch.float32 or torch.uint8 (or 'float32' / 'uint8'), got {self.image_dtype!r}.")
        set_(self, "image_dtype", dtype)
        if self.layout not in ("channels_last", "contiguous"):
            raise ConfigError(f"layout must be 'channels_last' or 'contiguous', got {self.layout!r}.")
        if self.on_error not in ("raise", "skip"):
            raise ConfigError(f"on_error must be 'raise' or 'skip', got {self.on_error!r}.")
        for name, low in (
            ("episode_pool_size", 1), ("frame_shuffle_size", 0), ("max_decoders", 1), ("prefetch_max_bytes", 1),
            ("decode_threads", 0), ("decode_ahead", 0),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}.")
        if self.batch_size is not None and (isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1):
            raise ConfigError(f"batch_size must be an integer >= 1 or None (unbatched samples), got {self.batch_size!r}.")
        if not self.tolerance_s >= 0:
            raise ConfigError(f"tolerance_s must be >= 0 seconds, got {self.tolerance_s!r}.")
        if self.delta_timestamps is not None:
            set_(self, "delta_timestamps", {str(k): [float(x) for x in v] for k, v in self.delta_timestamps.items()} or None)
        if self.episodes is not None:
            set_(self, "episodes", sorted({int(e) for e in self.episodes}))
        if self.cache_dir is not None:
            set_(self, "cache_dir", str(self.cache_dir))
        set_(self, "seed", int(self.seed))
        set_(self, "shuffle", bool(self.shuffle))

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_settings(cls, base: StreamConfig | None = None, **settings: Any) -> StreamConfig:
        """``base`` (default: the defaults) with ``settings`` replaced; unknown names are a ConfigError."""
        unknown = sorted(set(settings) - set(cls.field_names()))
        if unknown:
            raise ConfigError(f"unknown setting(s) {unknown}; the stream settings are {list(cls.field_names())}.")
        return dataclasses.replace(base, **settings) if base is not None else cls(**settings)

    def check(self, meta: DatasetMeta) -> None:
        """Checks that need the dataset (run once, in the main process, before any worker starts)."""
        delta_indices(self.delta_timestamps, meta.fps, tolerance_s=self.tolerance_s, features=meta.features)
        if self.episodes is not None:
            table = meta.episodes
            unknown = [e for e in self.episodes if table.position(e) is None]
            if unknown:
                known = table.index
                raise ConfigError(
                    f"episodes {unknown[:10]}{'...' if len(unknown) > 10 else ''} are not in {meta.root} (it has "
                    f"{len(known)} episodes, indices {known.min()}..{known.max()}). Pick indices from meta.episodes."
                )
            if not self.episodes:
                raise ConfigError("episodes=[] selects nothing; pass None for every episode or a non-empty list.")

    def order_settings(self) -> dict[str, Any]:
        """The fields a saved state depends on (declared ``order=True``), as plain values."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata.get("order")}

    def fingerprint(self) -> str:
        """Digest of :meth:`order_settings`: equal for configs whose streams are the same sample for sample."""
        payload = json.dumps(self.order_settings(), sort_keys=True, default=list)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def describe(self) -> dict[str, Any]:
        """The settings a person wants to see in a repr or a log line."""
        keys = ("delta_timestamps", "episode_pool_size", "frame_shuffle_size", "shuffle", "seed", "batch_size")
        return {k: getattr(self, k) for k in keys}
