"""An LRU of open torchcodec ``VideoDecoder``s, bounded by count and by estimated memory.

Opening a decoder costs more than decoding a frame at small resolutions (measured here: 96x96 AV1
random access ~3.3k frames/s with a reused decoder, ~340 when opened per frame), so decoders are
kept open per file. Each open decoder holds memory (demuxer index, codec reference frames, colour
conversion buffers), so the cache is bounded both by how many decoders it keeps and by an estimate
of their bytes; the least recently used decoder goes first.

The byte estimate (:func:`estimate_decoder_bytes`) was calibrated on this machine (torchcodec 0.13,
FFmpeg 5.1, ``num_ffmpeg_threads=1``) by the RSS growth of opening 16-20 decoders of one file and
decoding a few frames from each (docs/video.md has the table)::

    AV1 (libdav1d):      ~0.5 MiB fixed + ~5 B/pixel      (64x48: 0.51 MiB, 640x480: 1.96, 1280x720: 4.85)
    H.264 (g=30):        ~1.5 MiB fixed + ~11 B/pixel     (64x48: 1.57 MiB, 640x480: 4.78, 1280x720: 11.4)
    demuxer index:       ~26 B per frame in the file       (30 000-frame mp4: +0.75 MiB)

The estimate rounds these up: yuv420p frames (1.5 B/pixel) times the frames a decoder holds (4 for
AV1, 8 for every other codec), plus a fixed overhead (0.5 MiB AV1, 1.75 MiB other) and 32 B per frame.

Not thread-safe: one cache per node instance, used by one thread (torchcodec decoders are not
thread-safe either).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from torchcodec.decoders import VideoDecoder

from streamnodes.errors import VideoDecodeError, check_hint, short_text
from streamnodes.format.fs import is_url

MiB = 1 << 20
DEFAULT_MAX_DECODERS = 16
DEFAULT_MAX_BYTES = 256 * MiB

# Calibration of estimate_decoder_bytes (see the module docstring and docs/video.md).
_YUV420_BYTES_PER_PIXEL = 1.5
_FRAMES_HELD = {"av1": 4}  # libdav1d single-threaded: measured ~3.3 frames' worth per pixel
_FRAMES_HELD_DEFAULT = 8  # H.264 g=30: measured ~7.5 frames' worth; HEVC/VP9 assumed alike
_FIXED_BYTES = {"av1": MiB // 2}
_FIXED_BYTES_DEFAULT = 7 * MiB // 4
_INDEX_BYTES_PER_FRAME = 32


def estimate_decoder_bytes(
    width: int, height: int, num_frames: int | None = None, codec: str | None = None
) -> int:
    """Estimated resident bytes of one open, used decoder of a ``width`` x ``height`` video.

    ``fixed(codec) + width * height * 1.5 * frames_held(codec) + 32 * num_frames``; the constants are
    rounded-up measurements (module docstring). Used to bound :class:`DecoderCache` by memory.
    """
    codec = (codec or "").lower()
    frames_held = _FRAMES_HELD.get(codec, _FRAMES_HELD_DEFAULT)
    fixed = _FIXED_BYTES.get(codec, _FIXED_BYTES_DEFAULT)
    pixels = max(int(width), 1) * max(int(height), 1)
    index = _INDEX_BYTES_PER_FRAME * max(int(num_frames or 0), 0)
    return int(fixed + pixels * _YUV420_BYTES_PER_PIXEL * frames_held + index)


@dataclass(slots=True)
class OpenVideo:
    """An open decoder and the metadata the decode path reads for every sample (read once at open)."""

    path: str
    decoder: VideoDecoder
    average_fps: float
    num_frames: int
    width: int
    height: int
    codec: str
    nbytes: int

    def __repr__(self) -> str:
        return (
            f"OpenVideo({self.path!r}, {self.width}x{self.height} {self.codec}, {self.num_frames} frames "
            f"@ {self.average_fps:g} fps, ~{self.nbytes / MiB:.1f} MiB)"
        )


def _where(path: str, episode_index: int | None) -> str:
    return f"{path} (episode {episode_index})" if episode_index is not None else path


def open_video(path: str, *, episode_index: int | None = None) -> OpenVideo:
    """Open ``path`` with torchcodec (approximate seeking, one FFmpeg thread) and read its metadata.

    ``seek_mode="approximate"`` trusts the container header instead of scanning every packet (LeRobot
    does the same); one FFmpeg thread is faster for random access (measured here). Raises
    :class:`VideoDecodeError` naming the file (and episode) for missing, truncated or corrupt files.
    """
    where = _where(path, episode_index)
    if not is_url(path) and not os.path.exists(path):  # URLs go to FFmpeg as they are
        raise VideoDecodeError(
            f"{where}: video file not found. Check the dataset root and that videos/ was downloaded "
            f"completely (a partial download leaves mp4 files missing). {check_hint()}",
            path=path, episode_index=episode_index,
        )
    try:
        decoder = VideoDecoder(path, seek_mode="approximate", num_ffmpeg_threads=1)
        meta = decoder.metadata
        fps = meta.average_fps
        num_frames = meta.num_frames
        width, height = meta.width, meta.height
    except (RuntimeError, ValueError, OSError) as e:
        raise VideoDecodeError(
            f"{where}: cannot open the video ({short_text(e)}). The file is truncated or corrupt; "
            f"re-download it (or delete it so the next download replaces it). {check_hint()}",
            path=path, episode_index=episode_index,
        ) from e
    if not fps or not num_frames or not width or not height:
        raise VideoDecodeError(
            f"{where}: the video header has no usable frame rate/frame count/size "
            f"(average_fps={fps}, num_frames={num_frames}, {width}x{height}). The file is truncated or "
            f"corrupt; re-download it or re-encode it with LeRobot's encoder. {check_hint()}",
            path=path, episode_index=episode_index,
        )
    codec = str(meta.codec or "")
    nbytes = estimate_decoder_bytes(width, height, num_frames, codec)
    return OpenVideo(path, decoder, float(fps), int(num_frames), int(width), int(height), codec, nbytes)


class DecoderCache:
    """Least-recently-used open decoders keyed by path, bounded by count and by estimated bytes.

    ``get(path)`` returns an :class:`OpenVideo` (decoder plus metadata), opening the file on a miss
    and evicting least recently used decoders until at most ``max_decoders`` remain and their
    estimated bytes fit ``max_bytes`` (a single decoder larger than ``max_bytes`` is still kept, alone).
    ``hits``, ``misses`` and ``evictions`` count what happened, for benchmarks and tuning.
    """

    def __init__(self, max_decoders: int = DEFAULT_MAX_DECODERS, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if int(max_decoders) < 1:
            raise ValueError(f"max_decoders must be >= 1, got {max_decoders}")
        if int(max_bytes) < 1:
            raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
        self.max_decoders = int(max_decoders)
        self.max_bytes = int(max_bytes)
        self._open: OrderedDict[str, OpenVideo] = OrderedDict()
        self._bytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def get(self, path: str, *, episode_index: int | None = None) -> OpenVideo:
        """The open decoder of ``path``; ``episode_index`` only names the episode in errors."""
        video = self._open.get(path)
        if video is not None:
            self.hits += 1
            self._open.move_to_end(path)
            return video
        self.misses += 1
        video = open_video(path, episode_index=episode_index)
        self._open[path] = video
        self._bytes += video.nbytes
        self._shrink()
        return video

    def _shrink(self) -> None:
        while len(self._open) > self.max_decoders or (self._bytes > self.max_bytes and len(self._open) > 1):
            _, old = self._open.popitem(last=False)
            self._bytes -= old.nbytes
            self.evictions += 1

    def evict(self, path: str) -> bool:
        """Drop the decoder of ``path`` (e.g. after a decode error left it in doubt). True if it was open."""
        video = self._open.pop(path, None)
        if video is None:
            return False
        self._bytes -= video.nbytes
        self.evictions += 1
        return True

    def clear(self) -> None:
        """Close every decoder (counters are kept; they describe the cache's whole life)."""
        self._open.clear()
        self._bytes = 0

    @property
    def estimated_bytes(self) -> int:
        """Sum of :func:`estimate_decoder_bytes` over the open decoders."""
        return self._bytes

    @property
    def hit_rate(self) -> float:
        """hits / (hits + misses); 0.0 before the first lookup."""
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else 0.0

    def stats(self) -> dict[str, Any]:
        """Counters and occupancy as plain types (JSON-ready, for benchmark reports)."""
        return {
            "open_decoders": len(self._open),
            "estimated_bytes": self._bytes,
            "max_decoders": self.max_decoders,
            "max_bytes": self.max_bytes,
            "hits": self.hits,
            "misses": self.misses,
            "evictions": self.evictions,
            "hit_rate": self.hit_rate,
        }

    def __len__(self) -> int:
        return len(self._open)

    def __contains__(self, path: object) -> bool:
        return path in self._open

    def __repr__(self) -> str:
        return (
            f"DecoderCache(open={len(self._open)}/{self.max_decoders}, "
            f"~{self._bytes / MiB:.1f}/{self.max_bytes / MiB:.0f} MiB, hits={self.hits}, "
            f"misses={self.misses}, evictions={self.evictions}, hit_rate={self.hit_rate:.3f})"
        )
