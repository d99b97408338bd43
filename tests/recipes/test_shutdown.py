"""Resources close through torchdata's shutdown chain: loader.shutdown(), or garbage collection.

Mid-epoch (episodes pooled, files downloaded, decoders open) a remote loader's local video copies
are deleted and its decoders closed by ``loader.shutdown()``; a loader that is simply dropped
releases the same (no ``__del__`` in any node: the video cache's own weakref finalizer and plain
reference counting do it).
"""

from __future__ import annotations

import gc
import os
import time
from pathlib import Path

from streamnodes import build_loader
from streamnodes.testing_http import serve_directory

SETTINGS = {"batch_size": 2, "episode_pool_size": 2, "seed": 1, "decode_threads": 2}


def _files(directory: Path) -> list[Path]:
    """Files under ``directory``; a folder deleted while it is listed (a release on another thread) is
    skipped, as ``os.walk`` does, where ``Path.rglob`` would raise."""
    return [Path(root, name) for root, _, names in os.walk(directory) for name in names]


def test_shutdown_releases_downloads_and_decoders(video_dataset, tmp_path) -> None:
    cache = tmp_path / "cache"
    with serve_directory(video_dataset) as server:
        loader = build_loader(server.url, cache_dir=str(cache), **SETTINGS)
        it = iter(loader)
        next(it)
        graph = loader.dataset._graph  # the live graph of this (main-process) consumer
        assert graph is not None and _files(cache)  # videos are resident mid-epoch
        decode = graph.output
        assert decode.stats()["cache"]["open_decoders"] > 0
        loader.shutdown()
        assert decode.stats()["cache"]["open_decoders"] == 0
        assert _files(cache) == []
        assert loader.dataset._graph is None


def test_dropping_a_loader_releases_its_downloads(video_dataset, tmp_path) -> None:
    cache = tmp_path / "cache"
    with serve_directory(video_dataset) as server:
        loader = build_loader(server.url, cache_dir=str(cache), **SETTINGS)
        it = iter(loader)
        next(it)
        assert _files(cache)
        del it, loader
        # A batch still decoding ahead on a decode thread holds its episodes until it finishes; the
        # release follows within moments, with no call from the user.
        deadline = time.monotonic() + 10
        while True:
            gc.collect()
            if not _files(cache) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert _files(cache) == []
