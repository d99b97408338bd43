"""Prefetcher and VideoCache against a real HTTP server on 127.0.0.1 serving a real dataset (no mocks)."""

from __future__ import annotations

import contextlib
import gc
import os
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from torchdata.nodes import BaseNode

from streamnodes.episode_reader import EpisodeReader
from streamnodes.errors import ConfigError, DownloadError, StateError
from streamnodes.format import open_dataset
from streamnodes.nodes.delta_window import DeltaWindow
from streamnodes.nodes.episode_batcher import EpisodeBatcher
from streamnodes.nodes.episode_pool import EpisodePool
from streamnodes.nodes.frame_shuffle import FrameShuffle
from streamnodes.nodes.prefetcher import Prefetcher
from streamnodes.nodes.shard_source import ShardSource
from streamnodes.testing_http import Faults, serve_directory
from streamnodes.types import Episode, VideoFile, resolve_video
from streamnodes.video_cache import CachedVideo, VideoCache
from tests.nodes.helpers import assert_resumes_everywhere

CAMERAS = {"observation.images.front": (64, 64), "observation.images.wrist": (64, 64)}
EPISODE_LENGTHS = [12, 7, 15, 9, 11, 8, 13, 10, 6, 14, 9, 12, 7, 10, 8, 11]
N = len(EPISODE_LENGTHS)
FAST = {"backoff_s": 0.001, "space_timeout_s": 60.0}  # generous: a busy CI box must not look like starvation


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 episodes, 2 cameras, 2-3 episodes per mp4, 12 mp4 files (~45 KB of video)."""
    from streamnodes.testing import write_dataset

    root = tmp_path_factory.mktemp("prefetch") / "ds"
    return write_dataset(
        root,
        episode_lengths=EPISODE_LENGTHS,
        fps=10,
        cameras=CAMERAS,
        data_files_size_in_mb=0.006,
        video_files_size_in_mb=0.006,
    )


@pytest.fixture
def server(dataset: Path):
    with serve_directory(dataset) as srv:
        yield srv


def _video_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.glob("videos/**/*.mp4"))}


def _rel(url: str, base: str) -> str:
    assert url.startswith(base + "/"), url
    return url[len(base) + 1 :]


def _prefetcher(meta, **kw) -> Prefetcher:
    source = ShardSource(
        meta, seed=0, shuffle=kw.pop("shuffle", False), rank=0, world_size=1, worker_id=0, num_workers=1
    )
    return Prefetcher(EpisodeBatcher(source, meta), meta, **{**FAST, **kw})


class _DiskSampler:
    """Samples the bytes under a directory (complete and partial files) from a background thread."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0
            for root, _, names in os.walk(self.directory):  # skips a folder deleted while listing
                for name in names:
                    with contextlib.suppress(FileNotFoundError):  # renamed or deleted while listing
                        total += os.stat(os.path.join(root, name)).st_size
            self.peak = max(self.peak, total)
            self.samples += 1
            time.sleep(0.0005)

    def __enter__(self) -> _DiskSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class _ListSource(BaseNode[Episode]):
    """Emits prebuilt episodes (to check that a local Prefetcher hands back the very same objects)."""

    def __init__(self, episodes: list[Episode]) -> None:
        super().__init__()
        self.episodes = episodes
        self.offset = 0

    def reset(self, initial_state=None) -> None:
        super().reset(initial_state)
        self.offset = initial_state["offset"] if initial_state else 0

    def next(self) -> Episode:
        if self.offset >= len(self.episodes):
            raise StopIteration
        self.offset += 1
        return self.episodes[self.offset - 1]

    def get_state(self) -> dict:
        return {"offset": self.offset}


# ---- pass-through ----------------------------------------------------------------------------------


def test_local_dataset_is_a_pass_through(dataset: Path, tmp_path: Path) -> None:
    meta = open_dataset(dataset)
    assert not meta.is_remote
    episodes = [Episode(ref, {}, {s.key: meta.url(s.path) for s in ref.videos}) for ref in meta.episodes]
    cache_dir = tmp_path / "cache"
    node = Prefetcher(_ListSource(episodes), meta, cache_dir=cache_dir)
    out = list(node)
    assert all(a is b for a, b in zip(out, episodes, strict=True))
    assert node.wrap(episodes[3]) is episodes[3]
    assert node.cache is None and not cache_dir.exists()
    assert node.stats() == {"remote": False, "episodes_wrapped": 0}
    node.close()  # nothing to clean up


# ---- downloads -------------------------------------------------------------------------------------


def test_remote_copies_are_identical_and_each_file_downloaded_once(
    dataset: Path, server, tmp_path: Path
) -> None:
    originals = _video_files(dataset)
    meta = open_dataset(server.url)
    assert meta.is_remote
    node = _prefetcher(meta, cache_dir=tmp_path, byte_ranges=False)  # whole files (spans: tests/test_span_cache.py)
    episodes = list(node)  # keep every episode: every file resident at once
    assert [e.episode_index for e in episodes] == list(range(N))
    urls = set()
    for ep in episodes:
        for camera, handle in ep.video_files.items():
            assert isinstance(handle, CachedVideo) and isinstance(handle, VideoFile)
            local = resolve_video(handle, timeout=30)
            rel = _rel(handle.url, server.url)
            assert rel == ep.ref.video(camera).path
            assert Path(local).read_bytes() == originals[rel]
            urls.add(rel)
    assert urls == set(originals) and len(originals) > N / 2
    for rel in originals:
        assert server.count(rel) == 1, rel  # one GET per file, although 2-3 episodes share each
        assert server.count(rel, "HEAD") == 1, rel
    stats = node.stats()
    assert stats["downloads"] == len(originals) and stats["files"] == len(originals)
    assert stats["acquires"] == 2 * N and stats["hits"] == 2 * N - len(originals)
    assert stats["bytes_downloaded"] == sum(map(len, originals.values())) == stats["current_bytes"]
    assert stats["retries"] == 0 and stats["failures"] == 0
    # wrap (what a restore's reader applies) gives a new reference on a resident file, no new download.
    again = node.wrap(node.source.reader(4))
    assert all(isinstance(h, CachedVideo) for h in again.video_files.values())
    assert node.stats()["downloads"] == len(originals)
    cache_dir = node.cache.directory
    del episodes, again, ep, handle
    assert node.stats()["files"] == 0 and os.listdir(cache_dir) == []
    node.close()
    assert not os.path.exists(cache_dir) and list(tmp_path.iterdir()) == []


def test_files_live_exactly_as_long_as_their_last_handle(dataset: Path, server, tmp_path: Path) -> None:
    meta = open_dataset(server.url)
    node = _prefetcher(meta, cache_dir=tmp_path, byte_ranges=False)
    episodes = {ep.episode_index: ep for ep in node}
    users: dict[str, set[int]] = defaultdict(set)  # local path -> episodes holding it
    for i, ep in episodes.items():
        for handle in ep.video_files.values():
            users[handle.local_path(timeout=30)].add(i)
    del ep, handle  # the loop variables hold the last episode too
    assert any(len(eps) > 1 for eps in users.values())  # shared files are part of the test
    for i in [4, 0, 9, 2, 15, 7, 1, 12, 3, 8, 14, 6, 11, 5, 13, 10]:
        del episodes[i]
        for path, eps in users.items():
            eps.discard(i)
            assert os.path.exists(path) == bool(eps), (path, i)
    assert node.stats()["current_bytes"] == 0 and node.stats()["files"] == 0
    # Once a file left, acquiring it again is a new residency: a second download.
    rel = meta.episodes[0].videos[0].path
    handle = node.cache.acquire(meta.url(rel))
    handle.local_path(timeout=30)
    assert server.count(rel) == 2
    handle.release()
    handle.release()  # idempotent
    with pytest.raises(DownloadError, match="released"):
        handle.local_path()
    assert node.stats()["files"] == 0
    node.close()


def test_deleted_files_free_their_bytes_even_while_open(dataset: Path, server, tmp_path: Path) -> None:
    """A decoder cache may keep a file open after its last handle went: the bytes must go anyway."""
    meta = open_dataset(server.url)
    with VideoCache(meta.fs, tmp_path) as cache:
        handle = cache.acquire(meta.url(meta.episodes[0].videos[0].path))
        with open(handle.local_path(timeout=10), "rb") as held_open:
            assert os.fstat(held_open.fileno()).st_size > 0
            handle.release()
            assert os.fstat(held_open.fileno()).st_size == 0 and cache.files == 0


def test_graph_keeps_disk_below_max_bytes_and_ends_empty(dataset: Path, server, tmp_path: Path) -> None:
    """The whole tabular graph with a shuffle buffer; disk sampled in the background stays <= max_bytes."""
    originals = _video_files(dataset)
    total = sum(map(len, originals.values()))
    largest = max(map(len, originals.values()))
    max_bytes = 5 * largest  # 4 suffice for this seed (2 episodes, 2 cameras); the whole video is ~10
    assert max_bytes < total / 2
    meta = open_dataset(server.url)
    source = ShardSource(meta, seed=3, rank=0, world_size=1, worker_id=0, num_workers=1)
    reader = EpisodeReader(meta)
    prefetcher = Prefetcher(
        EpisodeBatcher(source, reader), meta, cache_dir=tmp_path, max_bytes=max_bytes, byte_ranges=False, **FAST
    )
    reader = reader.with_videos(prefetcher.wrap)
    # Samples buffered by FrameShuffle outlive their episode's stay in the pool: their handles keep files.
    window = DeltaWindow(EpisodePool(prefetcher, reader=reader, pool_size=1, seed=4), meta)
    node = FrameShuffle(window, rebuild=window.rebuilder(reader), buffer_size=3, seed=5)
    frames: Counter = Counter()
    checked = set()
    with _DiskSampler(tmp_path) as disk:
        for sample in node:
            frames[sample.episode_index] += 1
            for key, query in sample.videos.items():
                local = resolve_video(query.file, timeout=30)
                assert os.path.exists(local)
                if (local, key) not in checked:  # bytes of every residency's copy
                    checked.add((local, key))
                    assert Path(local).read_bytes() == originals[_rel(query.file.url, server.url)]
            del sample, query
    stats = prefetcher.stats()
    assert frames == {ep.episode_index: ep.length for ep in meta.episodes}
    assert disk.samples > 20 and 0 < disk.peak <= max_bytes
    assert stats["peak_bytes"] <= max_bytes and stats["failures"] == 0
    assert stats["downloads"] >= len(originals)  # files shared by far-apart episodes come back
    assert stats["bytes_downloaded"] >= total
    del node
    gc.collect()
    assert prefetcher.stats()["files"] == 0 and prefetcher.stats()["current_bytes"] == 0
    assert os.listdir(prefetcher.cache.directory) == []
    prefetcher.close()
    assert list(tmp_path.iterdir()) == []


def test_flaky_server_still_yields_identical_bytes(dataset: Path, tmp_path: Path) -> None:
    originals = _video_files(dataset)
    faults = Faults(error_rate=0.3, drop_rate=0.2, suffixes=(".mp4",), seed=7, max_consecutive=3)
    with serve_directory(dataset, faults=faults) as srv:
        meta = open_dataset(srv.url)
        # 1 KiB reads: each file takes several range requests, each of which may fail or be cut.
        node = _prefetcher(meta, cache_dir=tmp_path, chunk_bytes=1024, retries=5, byte_ranges=False)
        episodes = list(node)
        for ep in episodes:
            for handle in ep.video_files.values():
                assert (
                    Path(handle.local_path(timeout=30)).read_bytes() == originals[_rel(handle.url, srv.url)]
                )
        injected = srv.faults_injected
        stats = node.stats()
    assert injected["error"] >= 5 and injected["drop"] >= 3
    assert stats["retries"] >= injected["error"] and stats["downloads"] == len(originals)
    assert stats["failures"] == 0
    node.close()


def test_permanently_failing_file_raises_download_error_naming_it(dataset: Path, tmp_path: Path) -> None:
    meta_local = open_dataset(dataset)
    bad = meta_local.episodes[0].videos[0].path
    with serve_directory(dataset, faults=Faults(fail_paths=[bad])) as srv:
        meta = open_dataset(srv.url)
        node = _prefetcher(meta, cache_dir=tmp_path, retries=3)
        ep = next(node)
        with pytest.raises(DownloadError, match=rf"{srv.url}/{bad}: .*failed 4 times in a row \(retries=3\)"):
            ep.video_files["observation.images.front"].local_path(timeout=30)
        assert srv.count(bad, "HEAD") == 4  # bounded: 1 try + 3 retries
        # The other camera's file is fine, and so is the stream.
        other = ep.video_files["observation.images.wrist"].local_path(timeout=30)
        assert os.path.exists(other)
        assert node.stats()["failures"] == 1
        node.close()


def test_file_larger_than_max_bytes_fails_at_once(dataset: Path, server, tmp_path: Path) -> None:
    meta = open_dataset(server.url)
    rel = meta.episodes[0].videos[0].path
    with VideoCache(meta.fs, tmp_path, max_bytes=100) as cache:
        handle = cache.acquire(meta.url(rel))
        with pytest.raises(ConfigError, match=r"does not fit in the video cache \(max_bytes=100 B\)"):
            handle.local_path(timeout=10)
    assert server.count(rel) == 0  # nothing was fetched


def test_pool_larger_than_cache_raises_config_error(dataset: Path, server, tmp_path: Path) -> None:
    meta = open_dataset(server.url)
    a, b = (meta.url(ep.videos[0].path) for ep in (meta.episodes[0], meta.episodes[-1]))
    size = max(meta.fs.size(a), meta.fs.size(b))
    with VideoCache(meta.fs, tmp_path, max_bytes=size + 10, space_timeout_s=0.3) as cache:
        held = cache.acquire(a)
        held.local_path(timeout=10)
        blocked = cache.acquire(b)
        with pytest.raises(
            ConfigError, match=r"still in use .* Raise the Prefetcher's max_bytes .* lower the pool size"
        ):
            blocked.local_path(timeout=10)
        held.release()  # space frees up: the waiting download proceeds
        assert os.path.exists(blocked.local_path(timeout=10))
        assert cache.peak_bytes <= size + 10


def test_handles_in_reference_cycles_are_collected_when_space_runs_out(
    dataset: Path, server, tmp_path: Path
) -> None:
    meta = open_dataset(server.url)
    a, b = (meta.url(ep.videos[0].path) for ep in (meta.episodes[0], meta.episodes[-1]))
    size = max(meta.fs.size(a), meta.fs.size(b))
    with VideoCache(meta.fs, tmp_path, max_bytes=size + 10) as cache:
        gc.disable()
        try:
            cycle: list = [cache.acquire(a)]
            cycle.append(cycle)  # garbage only the cyclic collector frees
            cycle[0].local_path(timeout=10)
            del cycle
            assert cache.files == 1
            assert os.path.exists(cache.acquire(b).local_path(timeout=10))
        finally:
            gc.enable()
        assert cache.stats()["gc_collections"] >= 1


def test_close_deletes_everything_and_stops_threads(dataset: Path, server, tmp_path: Path) -> None:
    meta = open_dataset(server.url)
    node = _prefetcher(meta, cache_dir=tmp_path, byte_ranges=False)
    episodes = list(node)
    for ep in episodes:
        for h in ep.video_files.values():
            h.local_path(timeout=30)
    cache = node.cache
    assert f"files={cache.files}" in repr(cache) and cache.files > N / 2
    prefix = f"VideoCache-{os.path.basename(cache.directory)}"
    assert any(t.name.startswith(prefix) and t.is_alive() for t in threading.enumerate())
    node.close()
    assert cache.closed and not os.path.exists(cache.directory)
    assert not any(t.name.startswith(prefix) and t.is_alive() for t in threading.enumerate())
    with pytest.raises(DownloadError, match="closed"):
        episodes[0].video_files["observation.images.front"].local_path()
    del episodes  # releasing handles of a closed cache is harmless
    gc.collect()


# ---- state -----------------------------------------------------------------------------------------


def test_state_nests_the_source_and_resumes_everywhere(dataset: Path, server, tmp_path: Path) -> None:
    meta = open_dataset(server.url)
    nodes: list[Prefetcher] = []

    def build() -> Prefetcher:
        nodes.append(_prefetcher(meta, cache_dir=tmp_path, shuffle=True))
        return nodes[-1]

    order = assert_resumes_everywhere(build, step=3)
    assert sorted(order) == list(range(N))
    node = nodes[0]
    state = node.state_dict()
    assert set(state) == {Prefetcher.SOURCE_KEY} and state["source"] == node.source.state_dict()
    with pytest.raises(StateError, match="Prefetcher"):
        build().reset({"offset": 3})
    for n in nodes:
        n.close()
    assert list(tmp_path.iterdir()) == []


# ---- decoding --------------------------------------------------------------------------------------


def test_decoding_the_local_copy_gives_the_original_frames(dataset: Path, server, tmp_path: Path) -> None:
    import torch
    from torchcodec.decoders import VideoDecoder

    meta = open_dataset(server.url)
    node = _prefetcher(meta, cache_dir=tmp_path)
    ep = next(node)
    seg = ep.ref.video("observation.images.wrist")
    times = [seg.from_timestamp + t for t in (0.0, 0.3, 0.5)]
    local = VideoDecoder(resolve_video(ep.video_files[seg.key], timeout=30)).get_frames_played_at(times)
    original = VideoDecoder(str(dataset / seg.path)).get_frames_played_at(times)
    assert torch.equal(local.data, original.data)
    node.close()


def test_remote_graph_decodes_exactly_what_the_local_graph_decodes(
    dataset: Path, server, tmp_path: Path
) -> None:
    import torch

    from streamnodes.nodes.video_decode import VideoDecode

    max_bytes = 8 * max(map(len, _video_files(dataset).values()))  # < the whole video; enough for these seeds

    def graph(meta, prefetch: bool):
        reader = EpisodeReader(meta)
        node: BaseNode = EpisodeBatcher(
            ShardSource(meta, seed=1, rank=0, world_size=1, worker_id=0, num_workers=1), reader
        )
        prefetcher = (
            Prefetcher(node, meta, cache_dir=tmp_path, max_bytes=max_bytes, **FAST) if prefetch else None
        )
        if prefetcher is not None:
            reader = reader.with_videos(prefetcher.wrap)
        node = EpisodePool(prefetcher or node, reader=reader, pool_size=2, seed=2)
        window = DeltaWindow(node, meta, delta_timestamps={"observation.images.front": [-0.1, 0.0]})
        node = FrameShuffle(window, rebuild=window.rebuilder(reader), buffer_size=3, seed=3)
        return VideoDecode(node, image_dtype=torch.uint8), prefetcher

    local, _ = graph(open_dataset(dataset), prefetch=False)
    remote, prefetcher = graph(open_dataset(server.url), prefetch=True)
    n = 0
    for a, b in zip(local, remote, strict=True):
        assert (int(a["episode_index"]), int(a["frame_index"])) == (
            int(b["episode_index"]),
            int(b["frame_index"]),
        )
        for key in CAMERAS:
            assert torch.equal(a[key], b[key]), (key, int(a["index"]))
        n += 1
    assert n == sum(EPISODE_LENGTHS)
    assert prefetcher.stats()["peak_bytes"] <= max_bytes
    del remote
    gc.collect()
    assert prefetcher.stats()["files"] == 0
    prefetcher.close()
