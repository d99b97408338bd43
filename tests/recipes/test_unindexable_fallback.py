"""Issue 14: a remote mp4 that cannot be indexed is fetched whole and decoded as it is, same batches.

One camera's files are re-muxed as fragmented mp4 (``ffmpeg -c copy -movflags frag_keyframe+empty_moov``,
same name): torchcodec decodes them with the original timestamps, but their samples are in ``moof``
fragments, not in ``moov``'s sample tables, so ``read_index`` raises ``Mp4IndexError`` and the span cache
falls back to whole files. A real server on 127.0.0.1 counts the bytes and byte ranges of every GET.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from torchcodec.decoders import VideoDecoder

from streamnodes import build_loader
from streamnodes.format import open_dataset
from streamnodes.mp4 import Mp4IndexError, read_index
from streamnodes.testing_http import serve_directory
from streamnodes.video_cache.span_cache import DEFAULT_PROBE_BYTES

FRAGMENTED = "observation.images.wrist"
CAMERAS = {"observation.images.front": (64, 64), FRAGMENTED: (48, 64)}
LENGTHS = [12 + i % 5 for i in range(24)]
KW = {"batch_size": 4, "episode_pool_size": 4, "seed": 1}
FALLBACK = "cannot be read by byte ranges"

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg command to re-mux mp4s")


def _pts(path: Path) -> list[float]:
    decoder = VideoDecoder(str(path))
    return [float(t) for t in decoder.get_frames_in_range(0, len(decoder)).pts_seconds]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from streamnodes.testing import write_dataset

    root = write_dataset(
        tmp_path_factory.mktemp("unindexable") / "ds", episode_lengths=LENGTHS, fps=10, cameras=CAMERAS,
        video_files_size_in_mb=0.02,
    )
    for path in sorted((root / "videos" / FRAGMENTED).rglob("*.mp4")):
        before = _pts(path)
        out = path.with_name("fragmented.mp4")
        subprocess.run(
            ["ffmpeg", "-v", "error", "-y", "-i", str(path), "-c", "copy", "-movflags", "frag_keyframe+empty_moov", str(out)],
            check=True,
        )
        os.replace(out, path)
        assert _pts(path) == before  # decodable, every frame at its original timestamp
    return root


def _mp4s(root: Path, camera: str) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): p.stat().st_size for p in sorted((root / "videos" / camera).rglob("*.mp4"))}


def _remote_epoch(dataset: Path, cache: Path, caplog: pytest.LogCaptureFixture):  # noqa: ANN202
    local = list(build_loader(dataset, num_workers=0, **KW))
    caplog.set_level(logging.WARNING, logger="streamnodes.video_cache")
    with serve_directory(dataset) as server:
        remote = list(build_loader(server.url, num_workers=0, cache_dir=str(cache), **KW))
        spans = {rel: server.spans_of(rel) for rel in _mp4s(dataset, FRAGMENTED) | _mp4s(dataset, "observation.images.front")}
        sent = server.bytes_by_path
        url_of = server.url_of
    return local, remote, spans, sent, url_of


def test_the_fragmented_files_cannot_be_indexed_and_the_others_can(dataset: Path) -> None:
    for camera, indexable in ((FRAGMENTED, False), ("observation.images.front", True)):
        files = _mp4s(dataset, camera)
        assert len(files) >= 2
        for rel in files:
            data = (dataset / rel).read_bytes()
            if indexable:
                read_index(lambda o, n, d=data: d[o : o + n], len(data))
            else:
                with pytest.raises(Mp4IndexError, match="fragmented"):
                    read_index(lambda o, n, d=data: d[o : o + n], len(data))
    meta = open_dataset(dataset)
    assert max(sum(ep.video(FRAGMENTED).path == rel for ep in meta.episodes) for rel in _mp4s(dataset, FRAGMENTED)) >= 10


def test_unindexable_files_are_fetched_whole_logged_once_and_batches_equal_local(
    dataset: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    local, remote, spans, sent, url_of = _remote_epoch(dataset, tmp_path, caplog)
    assert len(local) == len(remote) > 0
    for a, b in zip(local, remote, strict=True):
        assert set(a) == set(b)
        for key, value in a.items():
            assert torch.equal(value, b[key]) if isinstance(value, torch.Tensor) else value == b[key], key
    fragmented = _mp4s(dataset, FRAGMENTED)
    for rel, size in fragmented.items():
        assert (0, size) in spans[rel], spans[rel]  # fetched whole, in one GET
        assert sent[rel] >= size
    for rel in _mp4s(dataset, "observation.images.front"):  # the indexable camera still goes by spans
        assert (0, (dataset / rel).stat().st_size) not in spans[rel], spans[rel]
    logged = [r for r in caplog.records if FALLBACK in r.getMessage()]
    assert sorted(r.getMessage().split(" cannot be read")[0] for r in logged) == sorted(url_of(rel) for rel in fragmented)
    assert {r.levelno for r in logged} == {logging.WARNING}


def test_unindexable_file_is_fetched_whole_once_per_consumer(
    dataset: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _, _, spans, sent, _ = _remote_epoch(dataset, tmp_path, caplog)
    for rel, size in _mp4s(dataset, FRAGMENTED).items():
        # one consumer (num_workers=0) reads every file: the index probe (DEFAULT_PROBE_BYTES, which found no
        # usable index) and then the whole file once; the file's other episodes copy the kept body
        assert size <= sent[rel] <= size + DEFAULT_PROBE_BYTES, (rel, size, spans[rel])
