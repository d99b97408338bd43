"""The mp4 files: each (camera, episode) encoded alone with torchcodec, then joined per file with ffmpeg."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from streamnodes.errors import ConfigError, StreamNodesError, VideoDecodeError
from streamnodes.format.metadata import VIDEO_PATH
from streamnodes.testing.identity import _identity_images
from streamnodes.testing.layout import TMP_PREFIX, _assign_files, _Camera, _Episode, _groups
from streamnodes.testing.stats import _image_stats, _stats_sample

logger = logging.getLogger(__package__)  # "streamnodes.testing", as before the module was split


Codec = Literal["av1", "h264"]
# Encoders tried in order per codec. libsvtav1 is LeRobot's AV1 encoder but refuses frames under 64 px
# high or wide; libaom-av1 takes any size and, with cpu-used=8, is fast enough for small test frames.
_SVT_MIN_SIDE = 64
_ENCODER_OPTIONS: dict[str, dict[str, str]] = {
    "libsvtav1": {"g": "2"},
    "libaom-av1": {"g": "2", "cpu-used": "8"},
    "libx264": {"g": "2"},
}
_PIXEL_FORMAT = "yuv420p"
_PROGRESS_MIN_FRAMES = 2000  # show a progress bar only for encodes at least this long (and on a TTY)


def _encoders(codec: str, camera: _Camera) -> list[str]:
    if codec == "h264":
        return ["libx264"]
    if min(camera.height, camera.width) >= _SVT_MIN_SIDE:
        return ["libsvtav1", "libaom-av1"]
    return ["libaom-av1"]


class _EpisodeEncoder:
    """Encodes one camera's episodes to separate mp4 files, settling on the first encoder that works."""

    def __init__(self, camera: _Camera, codec: str, fps: int) -> None:
        self.camera = camera
        self.fps = fps
        self.candidates = _encoders(codec, camera)
        self.chosen: str | None = None

    def encode(self, frames: np.ndarray, path: Path) -> None:
        import torch
        from torchcodec.encoders import VideoEncoder

        encoder = VideoEncoder(torch.from_numpy(frames), frame_rate=self.fps)
        errors = []
        for name in [self.chosen] if self.chosen else self.candidates:
            try:
                encoder.to_file(
                    path, codec=name, pixel_format=_PIXEL_FORMAT, extra_options=_ENCODER_OPTIONS[name]
                )
            except RuntimeError as error:
                errors.append(f"{name}: {error}")
                logger.debug(
                    "encoder %s failed for %s, trying the next one: %s", name, self.camera.key, error
                )
                continue
            self.chosen = name
            return
        raise ConfigError(
            f"could not encode camera {self.camera.key!r} ({self.camera.height}x{self.camera.width}) with "
            f"{self.candidates}; does this FFmpeg build include them? " + "; ".join(errors)
        )


def _write_videos(
    root: Path,
    episodes: Sequence[_Episode],
    cameras: Sequence[_Camera],
    fps: int,
    codec: str,
    limit_mb: float,
    chunks_size: int,
) -> tuple[dict[str, list[Any]], dict[str, list[dict[str, np.ndarray]]]]:
    """Encode every (camera, episode) to its own mp4, group them into files by size, join each group.

    Returns the ``videos/<key>/...`` episodes-table columns and each camera's per-episode image stats.
    """
    # SVT-AV1 logs a banner to stderr for every encoder it opens; keep errors and warnings only.
    os.environ.setdefault("SVT_LOG", "2")
    columns: dict[str, list[Any]] = {}
    image_stats: dict[str, list[dict[str, np.ndarray]]] = {}
    total = len(cameras) * sum(e.length for e in episodes)
    show = total >= _PROGRESS_MIN_FRAMES and sys.stderr.isatty()
    with tempfile.TemporaryDirectory(prefix=TMP_PREFIX, dir=root) as tmp:
        tmp_dir = Path(tmp)
        progress = _progress(total, show)
        for camera in cameras:
            encoder = _EpisodeEncoder(camera, codec, fps)

            # One encode at a time: torchcodec encoders running in parallel threads crashed the
            # process (segfault in VideoEncoder.to_file) under load here, once in a few hundred calls.
            parts: list[Path] = []
            image_stats[camera.key] = []
            for episode in episodes:
                frames = _identity_images(
                    episode.index, np.arange(episode.length), camera.height, camera.width, camera.index
                )
                parts.append(tmp_dir / f"{camera.index:02d}-{episode.index:05d}.mp4")
                encoder.encode(frames, parts[-1])
                progress.update(episode.length)
                image_stats[camera.key].append(_image_stats(frames[_stats_sample(episode.length)]))

            assignment = _assign_files([p.stat().st_size for p in parts], limit_mb, chunks_size)
            frames_before = [0] * len(episodes)  # frames of the same mp4 before each episode
            for (chunk_index, file_index), members in _groups(assignment):
                path = root / VIDEO_PATH.format(
                    video_key=camera.key, chunk_index=chunk_index, file_index=file_index
                )
                path.parent.mkdir(parents=True, exist_ok=True)
                _join_mp4([(parts[i], episodes[i].length) for i in members], path, fps, tmp_dir)
                before = 0
                for i in members:
                    frames_before[i] = before
                    before += episodes[i].length
                _check_video(path, before, fps)
            prefix = f"videos/{camera.key}/"
            columns[prefix + "chunk_index"] = [c for c, _ in assignment]
            columns[prefix + "file_index"] = [f for _, f in assignment]
            columns[prefix + "from_timestamp"] = [n / fps for n in frames_before]
            columns[prefix + "to_timestamp"] = [
                (n + e.length) / fps for n, e in zip(frames_before, episodes, strict=True)
            ]
        progress.close()
    return columns, image_stats


class _NoProgress:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, show: bool) -> Any:
    if not show:
        return _NoProgress()
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="frame", desc="write_dataset: encoding", leave=False)


def _join_mp4(parts: Sequence[tuple[Path, int]], dest: Path, fps: int, tmp_dir: Path) -> None:
    """Concatenate mp4 files of identical encoding, given as ``(path, num_frames)``, without re-encoding.

    Uses the ``ffmpeg`` command's concat demuxer with ``-c copy`` (LeRobot remuxes episode files the same
    way with PyAV). Two details keep frame ``k`` of the joined file at exactly ``k / fps``:

    - each part's duration is given in the listing as ``num_frames / fps``: otherwise the demuxer takes
      it from the mp4 header, which counts whole milliseconds, and the error accumulates over the parts
      (at 30 fps, 7-frame episodes drift by 0.02 frame per part);
    - the ``setts`` bitstream filter snaps every pts and dts to the frame grid, removing the remaining
      sub-microsecond rounding.
    """
    if len(parts) == 1:
        shutil.move(parts[0][0], dest)
        return
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise ConfigError(
            "write_dataset needs the `ffmpeg` command on PATH to join episodes into one mp4 file: install "
            "FFmpeg (e.g. `apt-get install ffmpeg` or `conda install ffmpeg`), or pass a "
            "video_files_size_in_mb small enough that every video file holds a single episode"
        )
    handle, listing = tempfile.mkstemp(suffix=".txt", dir=tmp_dir)
    with os.fdopen(handle, "w") as out:
        for path, num_frames in parts:
            quoted = str(path.resolve()).replace("'", "'\\''")
            out.write(f"file '{quoted}'\nduration {num_frames / fps:.6f}\n")

    def snap(ts: str) -> str:  # nearest multiple of 1/fps, in the stream's time base
        return f"round({ts}*TB*{fps})/(TB*{fps})"

    setts = f"setts=pts={snap('PTS')}:dts={snap('DTS')}"
    command = [ffmpeg, "-hide_banner", "-loglevel", "error", "-y", "-f", "concat", "-safe", "0"]
    command += ["-i", listing, "-c", "copy", "-bsf:v", setts, str(dest)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise StreamNodesError(
            f"ffmpeg could not join {len(parts)} episode videos into {dest}: {result.stderr.strip()}"
        )


def _check_video(path: Path, num_frames: int, fps: int) -> None:
    """Cheap check of a written mp4's header: frame count and average fps as the metadata promise."""
    from torchcodec.decoders import VideoDecoder

    metadata = VideoDecoder(path, seek_mode="approximate").metadata
    if (
        metadata.num_frames != num_frames
        or metadata.average_fps is None
        or abs(metadata.average_fps - fps) > 1e-6
    ):
        raise VideoDecodeError(
            f"{path} was written with {num_frames} frames at {fps} fps but reads back as "
            f"{metadata.num_frames} frames at {metadata.average_fps} fps"
        )
