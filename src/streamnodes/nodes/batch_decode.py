"""BatchDecode: the last node of a graph that returns whole collated batches instead of samples.

It replaces ``VideoDecode`` + the DataLoader's ``default_collate`` (same keys, dtypes, shapes and values;
tested) and removes most of the time they spend moving pixels rather than decoding them:

- **one allocation per batch, in its final layout.** Each camera's ``[B, T, C, H, W]`` (``[B, C, H, W]``
  for single-frame queries) tensor is allocated once, channels-last by default (each frame laid out
  as torchcodec decodes it), and every decoded frame is copied straight into its slot. In a DataLoader
  worker all cameras of a batch live in ONE anonymous shared-memory segment (and the tabular tensors in
  one more), so sending the batch to the main process copies nothing more, and a worker killed at any
  instant leaves no named segment in ``/dev/shm`` (:mod:`streamnodes.collate`).
- **decode threads.** torchcodec releases the GIL while decoding (two threads decode ~1.8x one here).
  Work items are (sample, camera) queries; each thread keeps its own
  :class:`~streamnodes.decoder_cache.DecoderCache` (decoders are not thread-safe), bounded by
  ``max(1, max_decoders // decode_threads)`` decoders and ``max_decoder_bytes // decode_threads``
  bytes, so the node as a whole stays within ``max_decoders`` / ``max_decoder_bytes``.
  ``decode_threads`` 0 or 1 decodes in the calling thread, with no executor.
- **lookahead.** When ``next()`` returns batch k, the samples of batches k+1..k+``decode_ahead`` are
  already pulled and (with decode threads) their decodes submitted, so decoding overlaps the caller's
  work. Without decode threads the pending batches are pulled but decoded only when due.

Exact resume: the state is ``{"source": <the source's state before the oldest pending batch was
pulled>}``, i.e. the source's state at the end of the last *returned* batch, whatever is decoding ahead
(the live source state when nothing is pending). ``reset()`` drops pending work. Sources' ``state_dict()``
must return fresh objects (every streamnodes node does): snapshots are kept without copying.

Per query, the decode keeps ``VideoDecode``'s rules and error messages: frame index ``round(t * fps)``,
each distinct index decoded once (padded window positions repeat a boundary frame by copy), every pts
within ``tolerance_s`` of its timestamp, else a :class:`~streamnodes.errors.VideoDecodeError` naming
file, episode, camera and timestamps, raised in the calling thread when the batch is due.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import get_worker_info
from torch.utils.data._utils.collate import collate, default_collate_fn_map
from torchdata.nodes import BaseNode

from streamnodes.collate import (
    LAYOUTS,
    allocate_cameras,
    camera_layout,
    copy_frame,
    pack_shared,
    plan_decode_calls,
    positions_of,
    write_frame,
)
from streamnodes.decoder_cache import DEFAULT_MAX_BYTES, DEFAULT_MAX_DECODERS, DecoderCache, MiB
from streamnodes.errors import ConfigError, VideoDecodeError, check_hint, short_text
from streamnodes.nodes._state import require_keys
from streamnodes.nodes.video_decode import (
    _IMAGE_DTYPES,
    _mismatch,
    frame_indices,
    open_query,
    to_torch,
    use_query,
)
from streamnodes.types import LocalVideo, Sample, VideoQuery

log = logging.getLogger(__name__)

CHANNELS = 3  # torchcodec decodes to RGB


def _stack(batch: Sequence[torch.Tensor], *, collate_fn_map: Any = None) -> torch.Tensor:
    return torch.stack(list(batch), 0)


# default_collate's rules, except that tensors are stacked in ordinary memory even in a worker
_COLLATE_FN_MAP = {**default_collate_fn_map, torch.Tensor: _stack}


def collate_tabular(data: Sequence[Mapping[str, Any]], *, shared: bool = False) -> dict[str, Any]:
    """``default_collate`` of each sample's ``data`` through :func:`to_torch`: exactly what
    ``default_collate`` makes of VideoDecode items minus the cameras (tensors stacked, strings listed,
    numbers as tensors).

    ``shared`` (in a DataLoader worker): every tensor of the batch is then moved into one anonymous
    shared-memory storage (:func:`~streamnodes.collate.pack_shared`), where ``default_collate`` would
    make one named ``/dev/shm`` segment per key.
    """
    batch = collate([{key: to_torch(value) for key, value in row.items()} for row in data],
                    collate_fn_map=_COLLATE_FN_MAP)
    return _share_tensors(batch) if shared else batch


def _share_tensors(batch: dict[str, Any]) -> dict[str, Any]:
    """``batch`` with its tensors in one shared storage (a collated row of scalars and arrays has them
    at the top level only; anything else is sent as torch sends it)."""
    keys = [key for key, value in batch.items() if isinstance(value, torch.Tensor)]
    batch.update(zip(keys, pack_shared([batch[key] for key in keys]), strict=True))
    return batch


def decode_query_into(
    cache: DecoderCache,
    query: VideoQuery,
    out: torch.Tensor,
    *,
    tolerance_s: float = 1e-4,
    timeout: float | None = None,
    max_gap: int = 1,
) -> tuple[int, int]:
    """Decode ``query``'s frames into ``out`` (``[T, C, H, W]``, or ``[C, H, W]`` if ``query.single``;
    uint8, or float32 as ``u8 / 255``) in any strided layout. Returns (distinct frames decoded, calls).

    :func:`~streamnodes.nodes.video_decode.decode_query`'s rules and messages, with the distinct sorted
    frame indices split into ``get_frames_at`` calls by :func:`~streamnodes.collate.plan_decode_calls`.
    Every pts is checked before any pixel is written. Raises :class:`VideoDecodeError`.
    """
    with use_query(query, timeout) as local:
        return _decode_local_into(cache, query, local, out, tolerance_s, max_gap)


def _decode_local_into(
    cache: DecoderCache, query: VideoQuery, local: LocalVideo, out: torch.Tensor, tolerance_s: float, max_gap: int
) -> tuple[int, int]:
    path, video = open_query(cache, query, local=local)
    timestamps = query.timestamps.tolist() if hasattr(query.timestamps, "tolist") else list(query.timestamps)
    if not timestamps:
        raise _mismatch(video, query, timestamps, None, "no timestamps to decode")
    unique, expand, in_file = frame_indices(video, local, query, timestamps)
    calls = plan_decode_calls(in_file, max_gap)
    frames: list[torch.Tensor] = []
    pts: list[float] = []
    for call in calls:
        try:
            decoded = video.decoder.get_frames_at(call)
        except (RuntimeError, IndexError, ValueError) as e:
            cache.evict(path)  # a decoder that failed mid-stream is not worth keeping
            raise _decode_failed(path, query, unique, timestamps, e) from e
        frames.extend(decoded.data.unbind(0))
        pts.extend(decoded.pts_seconds.tolist())
    found = pts if expand is None else [pts[i] for i in expand]
    for t, p in zip(timestamps, found, strict=True):
        if abs(p - t) > tolerance_s:
            raise _mismatch(video, query, timestamps, found, f"beyond tolerance_s={tolerance_s}")
    slots = out.unsqueeze(0) if query.single else out
    if tuple(frames[0].shape) != tuple(slots.shape[1:]):
        raise VideoDecodeError(
            f"{path} (episode {query.episode_index}, camera {query.key}): frames are "
            f"{list(frames[0].shape)} (C, H, W) but this batch's {query.key} tensor holds {list(slots.shape[1:])} "
            "(the size of the first video of this camera). Every video of one camera must have the size "
            "of its feature in meta/info.json; re-encode this one.",
            path=path,
            episode_index=query.episode_index,
            camera=query.key,
        )
    for frame, positions in zip(frames, positions_of(expand, len(unique)), strict=True):
        written = write_frame(slots[positions[0]], frame)
        for position in positions[1:]:
            copy_frame(slots[position], written)
    return len(unique), len(calls)


def _decode_failed(
    path: str, query: VideoQuery, unique: list[int], timestamps: list[float], error: BaseException
) -> VideoDecodeError:
    """decode_query's message for a failing ``get_frames_at`` (kept word for word)."""
    return VideoDecodeError(
        f"{path} (episode {query.episode_index}, camera {query.key}): decoding frames {unique} for "
        f"timestamps {[round(t, 6) for t in timestamps]} s failed ({short_text(error)}). The file is truncated "
        f"or corrupt; re-download it or re-encode it. {check_hint()}",
        path=path,
        episode_index=query.episode_index,
        camera=query.key,
    )


def _accelerator_available() -> bool:
    if torch.cuda.is_available():
        return True
    accelerator = getattr(torch, "accelerator", None)
    return bool(accelerator is not None and accelerator.is_available())


@dataclass(eq=False)
class _ThreadDecoder:
    """One thread's decoder cache and counters (only that thread touches them)."""

    cache: DecoderCache
    frames_decoded: int = 0
    decode_calls: int = 0
    decode_seconds: float = 0.0


@dataclass(eq=False)
class _Pending:
    """A batch pulled ahead: the source state before it, its samples, and (with decode threads) its
    camera tensors and decode futures; ``error`` is raised when the batch is due."""

    state: dict[str, Any]
    samples: list[Sample]
    cameras: dict[str, torch.Tensor] | None = None
    futures: list[Future] = field(default_factory=list)
    error: BaseException | None = None

    def cancel(self) -> None:
        for future in self.futures:
            future.cancel()


class BatchDecode(BaseNode[dict[str, Any]]):
    """Pull ``batch_size`` samples, decode their frames into batch tensors, return the collated batch.

    Args:
        source: a node yielding :class:`~streamnodes.types.Sample`.
        batch_size: samples per batch; the last batch of an epoch may be smaller (dropped if ``drop_last``).
        decode_threads: decode threads (0 or 1: decode in the calling thread, no executor).
        image_dtype: ``torch.float32`` (LeRobot's ``uint8 / 255``, bit for bit) or ``torch.uint8``.
        layout: ``"channels_last"`` (each frame's memory is HWC, as decoded: the cheapest copy, and what
            convolutions want) or ``"contiguous"`` (row-major ``[B, T, C, H, W]``).
        tolerance_s: largest allowed ``|pts - t|`` (LeRobot: 1e-4).
        max_decoders, max_decoder_bytes: bounds of all decoder caches together (split over threads).
        decode_ahead: batches pulled (and submitted to the decode threads) ahead of the one returned.
        pin_memory: allocate batches in page-locked memory when an accelerator is available (logged and
            ignored otherwise, and inside DataLoader workers, where batches go to shared memory: use the
            DataLoader's ``pin_memory=True`` there).
        download_timeout_s: how long to wait for a video still being prefetched (``None``: no limit).

    Output: ``default_collate`` of the tabular values (as of VideoDecode items), plus per camera one
    tensor ``[B, T, C, H, W]`` (``[B, C, H, W]`` for single-frame queries). Use it with
    ``batch_size=None`` in the DataLoader (the batches are already collated).
    """

    SOURCE_KEY = "source"

    def __init__(
        self,
        source: BaseNode[Sample],
        *,
        batch_size: int,
        drop_last: bool = False,
        decode_threads: int = 1,
        image_dtype: torch.dtype = torch.float32,
        layout: str = "channels_last",
        tolerance_s: float = 1e-4,
        max_decoders: int = DEFAULT_MAX_DECODERS,
        max_decoder_bytes: int = DEFAULT_MAX_BYTES,
        decode_ahead: int = 1,
        pin_memory: bool = False,
        download_timeout_s: float | None = None,
    ) -> None:
        super().__init__()
        _check_arguments(
            batch_size,
            decode_threads,
            image_dtype,
            layout,
            tolerance_s,
            max_decoders,
            max_decoder_bytes,
            decode_ahead,
        )
        self.source = source
        self.batch_size = int(batch_size)
        self.drop_last = bool(drop_last)
        self.decode_threads = int(decode_threads)
        self.image_dtype = image_dtype
        self.layout = layout
        self.tolerance_s = float(tolerance_s)
        self.decode_ahead = int(decode_ahead)
        self.download_timeout_s = download_timeout_s
        self.pin_memory = bool(pin_memory)
        self._pin = self.pin_memory and _accelerator_available()
        if self.pin_memory and not self._pin:
            log.info(
                "BatchDecode: pin_memory=True but no CUDA/accelerator is available; batches use pageable memory."
            )
        threads = max(1, self.decode_threads)
        self.max_decoders_per_thread = max(1, int(max_decoders) // threads)
        self.max_bytes_per_thread = max(1, int(max_decoder_bytes) // threads)
        self._executor: ThreadPoolExecutor | None = None
        self._local = threading.local()
        self._decoders: list[_ThreadDecoder] = []
        self._decoders_lock = threading.Lock()
        self._pending: deque[_Pending] = deque()
        self._exhausted = False
        self._frame_sizes: dict[str, tuple[int, int, int]] = {}  # camera -> (C, H, W), from its first video
        self._batches = 0
        self._samples = 0
        self._frames_requested = 0

    # ---- torchdata.nodes contract ------------------------------------------------------------------
    def reset(self, initial_state: dict[str, Any] | None = None) -> None:
        super().reset(initial_state)
        self._drop_pending()
        self._exhausted = False
        if initial_state is None:
            self.source.reset(None)
            return
        require_keys("BatchDecode", initial_state, (self.SOURCE_KEY,))
        self.source.reset(initial_state[self.SOURCE_KEY])

    def get_state(self) -> dict[str, Any]:
        if self._pending:
            return {self.SOURCE_KEY: self._pending[0].state}
        return {self.SOURCE_KEY: self.source.state_dict()}

    def next(self) -> dict[str, Any]:
        while not self._exhausted and len(self._pending) <= self.decode_ahead:
            pending = self._pull()
            if pending is None:
                break
            self._pending.append(pending)
            if pending.error is not None:
                break  # pull on only after the error was raised in its turn
        if not self._pending:
            raise StopIteration
        return self._finish(self._pending.popleft())

    def shutdown(self) -> None:
        """Drop pending batches, stop the decode threads and close every decoder, then shut the source
        down when it has a ``shutdown()`` (torchdata's BaseNode defines none). The node may be reset and
        used again afterwards (threads and decoders are made again on demand)."""
        self._drop_pending()
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
        with self._decoders_lock:
            for decoder in self._decoders:
                decoder.cache.clear()
        shutdown = getattr(self.source, "shutdown", None)
        if callable(shutdown):
            shutdown()

    # ---- batches -----------------------------------------------------------------------------------
    def _pull(self) -> _Pending | None:
        """Pull the next batch's samples (``None`` at the end of the epoch) and, with decode threads,
        allocate its tensors and submit its decodes. Errors are kept for when the batch is due."""
        state = self.source.state_dict()
        samples: list[Sample] = []
        try:
            while len(samples) < self.batch_size:
                samples.append(next(self.source))
        except StopIteration:
            self._exhausted = True
        except Exception as e:  # raised in this batch's turn, after the batches before it
            return _Pending(state, samples, error=e)
        if not samples or (self.drop_last and len(samples) < self.batch_size):
            return None
        pending = _Pending(state, samples)
        if self.decode_threads > 1:
            try:
                self._submit(pending)
            except Exception as e:
                pending.cancel()
                pending.error = e
        return pending

    def _submit(self, pending: _Pending) -> None:
        pending.cameras = self._allocate(pending.samples)
        executor = self._executor_or_new()
        for slot, sample in enumerate(pending.samples):
            for key, query in sample.videos.items():
                pending.futures.append(executor.submit(self._decode_into, query, pending.cameras[key][slot]))

    def _finish(self, pending: _Pending) -> dict[str, Any]:
        if pending.error is not None:
            raise pending.error
        batch = collate_tabular([sample.data for sample in pending.samples], shared=get_worker_info() is not None)
        if pending.cameras is None:
            cameras = self._allocate(pending.samples)
            for slot, sample in enumerate(pending.samples):
                for key, query in sample.videos.items():
                    self._decode_into(query, cameras[key][slot])
        else:
            cameras = pending.cameras
            _wait(pending.futures)
        batch.update(cameras)
        self._batches += 1
        self._samples += len(pending.samples)
        self._frames_requested += sum(len(q.timestamps) for s in pending.samples for q in s.videos.values())
        return batch

    def _drop_pending(self) -> None:
        """Forget pending batches; decodes already running finish into tensors nobody reads."""
        for pending in self._pending:
            pending.cancel()
        self._pending.clear()

    # ---- allocation and decoding -------------------------------------------------------------------
    def _allocate(self, samples: list[Sample]) -> dict[str, torch.Tensor]:
        """Every camera's batch tensor in one storage (shared memory inside a DataLoader worker)."""
        first = samples[0]
        layouts = {}
        for key, query in first.videos.items():
            if query.single and len(query.timestamps) != 1:
                raise ConfigError(
                    f"BatchDecode: camera {key} of episode {query.episode_index} is a single-frame query with "
                    f"{len(query.timestamps)} timestamps; single queries carry exactly one."
                )
            channels, height, width = self._frame_size(key, query)
            layouts[key] = camera_layout(
                len(samples),
                len(query.timestamps),
                channels,
                height,
                width,
                single=query.single,
                layout=self.layout,
            )
        for sample in samples[1:]:
            _check_same_queries(first, sample)
        shared = get_worker_info() is not None
        return allocate_cameras(layouts, self.image_dtype, shared=shared, pin_memory=self._pin and not shared)

    def _frame_size(self, key: str, query: VideoQuery) -> tuple[int, int, int]:
        """``(C, H, W)`` of camera ``key``, read from the header of its first video (then remembered)."""
        size = self._frame_sizes.get(key)
        if size is None:
            # with decode threads this thread decodes nothing: a throwaway one-decoder cache probes the header
            cache = DecoderCache(max_decoders=1) if self.decode_threads > 1 else self._thread_decoder().cache
            _, video = open_query(cache, query, self.download_timeout_s)
            size = self._frame_sizes[key] = (CHANNELS, video.height, video.width)
        return size

    def _decode_into(self, query: VideoQuery, out: torch.Tensor) -> None:
        decoder = self._thread_decoder()
        start = time.perf_counter()
        decoded, calls = decode_query_into(
            decoder.cache, query, out, tolerance_s=self.tolerance_s, timeout=self.download_timeout_s
        )
        decoder.decode_seconds += time.perf_counter() - start
        decoder.frames_decoded += decoded
        decoder.decode_calls += calls

    def _thread_decoder(self) -> _ThreadDecoder:
        decoder = getattr(self._local, "decoder", None)
        if decoder is None:
            decoder = _ThreadDecoder(DecoderCache(self.max_decoders_per_thread, self.max_bytes_per_thread))
            self._local.decoder = decoder
            with self._decoders_lock:
                self._decoders.append(decoder)
        return decoder

    def _executor_or_new(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.decode_threads, thread_name_prefix="BatchDecode")
        return self._executor

    # ---- reporting ---------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Counters since construction, plain types: batches, samples, frames requested and decoded
        (after de-duplication), ``get_frames_at`` calls, decode seconds summed over threads, and the
        decoder caches' counters summed over threads (``max_*``: the node's bounds)."""
        with self._decoders_lock:
            decoders = list(self._decoders)
        caches = [d.cache.stats() for d in decoders]
        cache: dict[str, Any] = {
            key: sum(c[key] for c in caches)
            for key in ("open_decoders", "estimated_bytes", "hits", "misses", "evictions")
        }
        threads = max(1, self.decode_threads)
        cache["max_decoders"] = self.max_decoders_per_thread * threads
        cache["max_bytes"] = self.max_bytes_per_thread * threads
        lookups = cache["hits"] + cache["misses"]
        cache["hit_rate"] = cache["hits"] / lookups if lookups else 0.0
        return {
            "batches": self._batches,
            "samples": self._samples,
            "frames_requested": self._frames_requested,
            "frames_decoded": sum(d.frames_decoded for d in decoders),
            "decode_calls": sum(d.decode_calls for d in decoders),
            "decode_seconds": sum(d.decode_seconds for d in decoders),
            "decode_threads": self.decode_threads,
            "cache": cache,
        }

    def __repr__(self) -> str:
        dtype = str(self.image_dtype).removeprefix("torch.")
        cache = self.stats()["cache"]
        return (
            f"BatchDecode(source={type(self.source).__name__}, batch_size={self.batch_size}, "
            f"drop_last={self.drop_last}, decode_threads={self.decode_threads}, decode_ahead={self.decode_ahead}, "
            f"image_dtype={dtype}, layout={self.layout}, pending={len(self._pending)}, batches={self._batches}, "
            f"decoders={cache['open_decoders']}/{cache['max_decoders']} "
            f"~{cache['estimated_bytes'] / MiB:.1f} MiB, hit_rate={cache['hit_rate']:.3f})"
        )


def _wait(futures: list[Future]) -> None:
    """Wait for a batch's decodes; on the first error (in submission order) cancel the rest, wait for
    the running ones, and raise it here in the calling thread."""
    try:
        for future in futures:
            future.result()
    except BaseException:
        for future in futures:
            future.cancel()
        wait_futures(futures)
        raise


def _check_same_queries(first: Sample, other: Sample) -> None:
    """Every sample of a batch must ask each camera for the same number of frames (as default_collate)."""
    shape = {k: (len(q.timestamps), q.single) for k, q in first.videos.items()}
    mine = {k: (len(q.timestamps), q.single) for k, q in other.videos.items()}
    if shape != mine:
        raise ConfigError(
            f"BatchDecode: samples of one batch ask for different frames per camera ((frames, single) per key: "
            f"episode {first.episode_index} frame {first.frame_index}: {shape}; episode {other.episode_index} "
            f"frame {other.frame_index}: {mine}). Every sample needs the same cameras and window lengths."
        )


def _check_arguments(
    batch_size: int,
    decode_threads: int,
    image_dtype: torch.dtype,
    layout: str,
    tolerance_s: float,
    max_decoders: int,
    max_decoder_bytes: int,
    decode_ahead: int,
) -> None:
    if int(batch_size) < 1:
        raise ConfigError(f"BatchDecode: batch_size must be >= 1, got {batch_size}.")
    if int(decode_threads) < 0:
        raise ConfigError(
            f"BatchDecode: decode_threads must be >= 0 (0 or 1: decode in the calling thread), got {decode_threads}."
        )
    if int(decode_ahead) < 0:
        raise ConfigError(f"BatchDecode: decode_ahead must be >= 0 batches, got {decode_ahead}.")
    if image_dtype not in _IMAGE_DTYPES:
        raise ConfigError(
            f"BatchDecode: image_dtype must be torch.float32 (LeRobot's [0, 1] floats) or torch.uint8 (raw bytes), got {image_dtype}."
        )
    if layout not in LAYOUTS:
        raise ConfigError(f"BatchDecode: layout must be one of {LAYOUTS}, got {layout!r}.")
    if not tolerance_s >= 0:
        raise ConfigError(f"BatchDecode: tolerance_s must be >= 0 seconds, got {tolerance_s}.")
    if int(max_decoders) < 1 or int(max_decoder_bytes) < 1:
        raise ConfigError(
            f"BatchDecode: max_decoders and max_decoder_bytes must be >= 1, got {max_decoders} and {max_decoder_bytes}."
        )
