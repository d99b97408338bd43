"""VideoDecode: the last node before collation. Turns each :class:`~streamnodes.types.Sample` into the
``dict`` LeRobot's ``LeRobotDataset.__getitem__`` returns, decoding its video frames on the way out.

Decode-on-exit: pixels exist only here, for the samples leaving the graph, so memory upstream stays
tabular-sized whatever the pool and shuffle buffer sizes (docs/video.md, "Decode-on-exit").

Per camera query (docs/video.md, "The decode path"; LeRobot's ``decode_video_frames_torchcodec``):

1. ``path = resolve_video(query.file, download_timeout_s)`` (waits for a prefetch in progress);
2. the open decoder of ``path`` from a per-node :class:`~streamnodes.decoder_cache.DecoderCache`;
3. frame index ``round(t * average_fps)`` per timestamp; repeated indices (padded window positions
   repeat the boundary frame) are decoded once, in ascending order, by one ``get_frames_at`` call;
4. every decoded frame's ``pts`` must be within ``tolerance_s`` of its timestamp, else
   :class:`~streamnodes.errors.VideoDecodeError` naming file, episode and both timestamps;
5. float32 ``frames.float() / 255`` (bit-identical to LeRobot), or uint8 as decoded (4x smaller).

The node's state is its source's state nested under ``"source"``: it buffers nothing, and its
decoder cache is a per-instance resource, not state.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torchdata.nodes import BaseNode

from streamnodes.decoder_cache import DEFAULT_MAX_BYTES, DEFAULT_MAX_DECODERS, DecoderCache, OpenVideo
from streamnodes.errors import ConfigError, StreamNodesError, VideoDecodeError, check_hint, short_text
from streamnodes.nodes._state import require_keys, shutdown_source
from streamnodes.types import LocalVideo, Sample, VideoQuery, resolve_video, use_video

_IMAGE_DTYPES = (torch.float32, torch.uint8)


def to_torch(value: Any) -> Any:
    """One ``Sample.data`` value as LeRobot returns it: numeric/bool numpy arrays and numpy or Python
    scalars become tensors of the same dtype (0-d for scalars; Python float -> float32, int -> int64);
    strings, tensors and anything else pass through unchanged.

    Arrays are wrapped without a copy only when they own their (writable) memory; views, e.g. a row of
    an episode column, are copied so that in-place ops on the output cannot corrupt resident episodes.
    """
    kind = type(value)
    if kind is np.ndarray:
        if value.dtype.kind not in "biufc":
            return value
        if not (value.flags.owndata and value.flags.writeable):
            value = value.copy()
        if not value.dtype.isnative:  # e.g. big-endian from a foreign writer; torch wants native order
            value = value.astype(value.dtype.newbyteorder("="))
        return torch.from_numpy(value)
    if kind is str or kind is torch.Tensor:
        return value
    if isinstance(value, np.generic):
        if value.dtype.kind in "biufc":
            return torch.from_numpy(np.array(value))
        return str(value) if value.dtype.kind in "US" else value
    if kind is bool or kind is int or kind is float:
        return torch.tensor(value)
    return value


def _decode_indices(timestamps: list[float], fps: float) -> tuple[list[int], list[int] | None]:
    """Frame indices ``round(t * fps)`` (Python's round, as LeRobot), sorted and unique, and for each
    timestamp its position among them (``None`` when that is the identity: nothing to expand)."""
    indices = [round(t * fps) for t in timestamps]
    unique = sorted(set(indices))
    if unique == indices:
        return unique, None
    position = {index: i for i, index in enumerate(unique)}
    return unique, [position[index] for index in indices]


def open_query(
    cache: DecoderCache, query: VideoQuery, timeout: float | None = None, local: LocalVideo | None = None
) -> tuple[str, OpenVideo]:
    """The local path and open decoder for ``query`` (``local``: the file :func:`use_query` yielded; else
    wait for a download in progress); download and open errors get the query's episode and camera
    added as attributes."""
    try:
        path = local.path if local is not None else resolve_video(query.file, timeout)
        return path, cache.get(path, episode_index=query.episode_index)
    except StreamNodesError as error:
        error.with_context(episode_index=query.episode_index, camera=query.key)
        raise


@contextlib.contextmanager
def use_query(query: VideoQuery, timeout: float | None = None) -> Iterator[LocalVideo]:
    """``query``'s local file and frame map, kept on disk for the ``with`` block (a span cache may evict
    unpinned files); download errors get the query's episode and camera added as attributes."""
    try:
        with use_video(query.file, timeout) as local:
            yield local
    except StreamNodesError as error:
        error.with_context(episode_index=query.episode_index, camera=query.key)
        raise


def frame_indices(
    video: OpenVideo, local: LocalVideo, query: VideoQuery, timestamps: list[float]
) -> tuple[list[int], list[int] | None, list[int]]:
    """(sorted unique frame indices of the original video, their expansion (see :func:`_decode_indices`),
    the same frames' indices in the local file). A whole file maps as it is; a fetched span maps through
    its :class:`~streamnodes.types.FrameMap` (indices from the original file's fps and frame count).
    Raises :class:`VideoDecodeError` for frames outside the video (or the span)."""
    frames = local.frames
    fps = video.average_fps if frames is None else frames.fps
    total = video.num_frames if frames is None else frames.num_frames
    unique, expand = _decode_indices(timestamps, fps)
    if unique[0] < 0 or unique[-1] >= total:
        raise _mismatch(video, query, timestamps, None, f"frame indices {unique[0]}..{unique[-1]} outside 0..{total - 1}")
    if frames is None:
        return unique, expand, unique
    mapped = frames.local(unique)
    if mapped is None:
        raise _mismatch(
            video, query, timestamps, None,
            f"frame indices {unique[0]}..{unique[-1]} are not all in the fetched span (original frames "
            f"{int(frames.kept[0])}..{int(frames.kept[-1])})",
        )
    return unique, expand, mapped


def decode_query(
    cache: DecoderCache, query: VideoQuery, *, tolerance_s: float = 1e-4, timeout: float | None = None
) -> tuple[torch.Tensor, int]:
    """Decode ``query``'s frames as uint8 ``[T, C, H, W]`` with one ``get_frames_at`` call.

    Frame indices are ``round(t * average_fps)``, de-duplicated and sorted (padded positions repeat
    a boundary timestamp) and expanded back to the requested order; every decoded pts must lie within
    ``tolerance_s`` of its timestamp. Returns the frames and how many distinct frames were decoded.
    Raises :class:`VideoDecodeError` naming file, episode, camera and timestamps (also as attributes;
    download and open errors get the episode and camera added).
    """
    with use_query(query, timeout) as local:
        return _decode_local(cache, query, local, tolerance_s)


def _decode_local(
    cache: DecoderCache, query: VideoQuery, local: LocalVideo, tolerance_s: float
) -> tuple[torch.Tensor, int]:
    path, video = open_query(cache, query, local=local)
    timestamps = query.timestamps.tolist() if isinstance(query.timestamps, np.ndarray) else list(query.timestamps)
    if not timestamps:
        raise _mismatch(video, query, timestamps, None, "no timestamps to decode")
    unique, expand, in_file = frame_indices(video, local, query, timestamps)
    try:
        batch = video.decoder.get_frames_at(in_file)
    except (RuntimeError, IndexError, ValueError) as e:
        cache.evict(path)  # a decoder that failed mid-stream is not worth keeping
        raise VideoDecodeError(
            f"{path} (episode {query.episode_index}, camera {query.key}): decoding frames {unique} for "
            f"timestamps {[round(t, 6) for t in timestamps]} s failed ({short_text(e)}). The file is truncated "
            f"or corrupt; re-download it or re-encode it. {check_hint()}",
            path=path,
            episode_index=query.episode_index,
            camera=query.key,
        ) from e
    pts = batch.pts_seconds.tolist()
    found = pts if expand is None else [pts[i] for i in expand]
    for t, p in zip(timestamps, found, strict=True):
        if abs(p - t) > tolerance_s:
            raise _mismatch(video, query, timestamps, found, f"beyond tolerance_s={tolerance_s}")
    return (batch.data if expand is None else _expand(batch.data, expand)), len(unique)


def _expand(frames: torch.Tensor, positions: list[int]) -> torch.Tensor:
    """``frames.index_select(0, positions)``: the same values, faster.

    torchcodec returns NCHW as a view of NHWC memory. ``index_select`` on that view transposes every
    pixel, and inside torch's intra-op thread pool (it stalls when the cores are busy). Gathering whole
    frames in memory order with numpy is one memcpy per frame in the calling thread: ~10 us instead of
    ~100 us for 8 frames of 128x96 (measured). The result keeps torchcodec's layout.
    """
    if frames.dim() == 4 and frames.device.type == "cpu":
        nhwc = frames.permute(0, 2, 3, 1)
        if nhwc.is_contiguous():
            return torch.from_numpy(nhwc.numpy().take(positions, axis=0)).permute(0, 3, 1, 2)
    return frames.index_select(0, torch.tensor(positions))


def _mismatch(
    video: OpenVideo, query: VideoQuery, requested: list[float], found: list[float] | None, why: str
) -> VideoDecodeError:
    found_text = f", found pts {[round(p, 6) for p in found]}" if found is not None else ""
    return VideoDecodeError(
        f"{video.path} (episode {query.episode_index}, camera {query.key}): requested timestamps "
        f"{[round(t, 6) for t in requested]} s{found_text} ({why}; the video has {video.num_frames} frames "
        f"at {video.average_fps:g} fps). The episode's from_timestamp/timestamp column disagree with the "
        "video; check meta/episodes and the fps, or re-encode the video. Raise tolerance_s only if the "
        "offset is known and harmless.",
        path=video.path,
        episode_index=query.episode_index,
        camera=query.key,
    )


class VideoDecode(BaseNode[dict[str, Any]]):
    """Decode each sample's pending video queries and return LeRobot's item ``dict``.

    Args:
        source: a node yielding :class:`~streamnodes.types.Sample`.
        image_dtype: ``torch.float32`` (LeRobot's ``uint8 / 255`` in [0, 1], CHW) or ``torch.uint8``
            (the decoded bytes; 4x less memory and host-to-device transfer, divide on the GPU).
        tolerance_s: largest allowed ``|pts - t|`` between a requested and a decoded frame (LeRobot: 1e-4).
        max_decoders, max_decoder_bytes: bounds of the per-node decoder cache (docs/video.md sizes them).
        download_timeout_s: how long to wait for a video still being prefetched (``None``: no limit).

    Output per sample: every ``sample.data`` entry through :func:`to_torch`, plus per camera
    ``[T, C, H, W]`` frames (``[C, H, W]`` when the query is ``single``).
    """

    SOURCE_KEY = "source"

    def __init__(
        self,
        source: BaseNode[Sample],
        *,
        image_dtype: torch.dtype = torch.float32,
        tolerance_s: float = 1e-4,
        max_decoders: int = DEFAULT_MAX_DECODERS,
        max_decoder_bytes: int = DEFAULT_MAX_BYTES,
        download_timeout_s: float | None = None,
    ) -> None:
        super().__init__()
        if image_dtype not in _IMAGE_DTYPES:
            raise ConfigError(
                f"image_dtype must be torch.float32 (LeRobot's [0, 1] floats) or torch.uint8 (raw bytes), got {image_dtype}."
            )
        if not tolerance_s >= 0:
            raise ConfigError(f"tolerance_s must be >= 0 seconds, got {tolerance_s}.")
        self.source = source
        self.image_dtype = image_dtype
        self.tolerance_s = float(tolerance_s)
        self.download_timeout_s = download_timeout_s
        self.cache = DecoderCache(max_decoders=max_decoders, max_bytes=max_decoder_bytes)
        self._as_float = image_dtype == torch.float32
        self._samples = 0
        self._frames_requested = 0
        self._frames_decoded = 0
        self._decode_calls = 0
        self._decode_seconds = 0.0

    # ---- torchdata.nodes contract ------------------------------------------------------------------
    def reset(self, initial_state: dict[str, Any] | None = None) -> None:
        super().reset(initial_state)
        if initial_state is None:
            self.source.reset(None)
            return
        require_keys("VideoDecode", initial_state, (self.SOURCE_KEY,))
        self.source.reset(initial_state[self.SOURCE_KEY])

    def get_state(self) -> dict[str, Any]:
        return {self.SOURCE_KEY: self.source.state_dict()}

    def next(self) -> dict[str, Any]:
        sample = next(self.source)
        item = {key: to_torch(value) for key, value in sample.data.items()}
        for key, query in sample.videos.items():
            item[key] = self._decode(query)
        self._samples += 1
        return item

    # ---- decoding ----------------------------------------------------------------------------------
    def _decode(self, query: VideoQuery) -> torch.Tensor:
        """``[T, C, H, W]`` (or ``[C, H, W]`` if ``query.single``) frames at ``query.timestamps``."""
        start = time.perf_counter()
        frames, decoded = decode_query(self.cache, query, tolerance_s=self.tolerance_s, timeout=self.download_timeout_s)
        self._decode_seconds += time.perf_counter() - start
        self._decode_calls += 1
        self._frames_decoded += decoded
        self._frames_requested += len(query.timestamps)
        if query.single:
            frames = frames[0]
        if self._as_float:
            return frames.float().div_(255)  # == LeRobot's uint8 / 255.0, bit for bit
        return frames

    def shutdown(self) -> None:
        """Close the open decoders, then shut the source down (torchdata's shutdown chain)."""
        self.cache.clear()
        shutdown_source(self.source)

    # ---- reporting ---------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Counters since construction, plain types (for benchmarks): samples, frames requested and
        actually decoded (after de-duplication), ``get_frames_at`` calls and seconds, and the cache's."""
        return {
            "samples": self._samples,
            "frames_requested": self._frames_requested,
            "frames_decoded": self._frames_decoded,
            "decode_calls": self._decode_calls,
            "decode_seconds": self._decode_seconds,
            "cache": self.cache.stats(),
        }

    def __repr__(self) -> str:
        dtype = str(self.image_dtype).removeprefix("torch.")
        return (
            f"VideoDecode(source={type(self.source).__name__}, image_dtype={dtype}, "
            f"tolerance_s={self.tolerance_s:g}, samples={self._samples}, cache={self.cache!r})"
        )
