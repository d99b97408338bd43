"""Issue 14 part 5: a remote epoch fetches about the mp4 bytes once (byte ranges per episode), same batches.

A real server on 127.0.0.1 counts the body bytes it sends per file; byte counts are deterministic.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest
import torch

from streamnodes import build_loader
from streamnodes.errors import ConfigError
from streamnodes.format import open_dataset
from streamnodes.mp4 import read_index
from streamnodes.testing_http import serve_directory
from streamnodes.video_cache.span_plan import plan_span

CAMERAS = {"observation.images.front": (96, 128), "observation.images.wrist": (64, 64)}
LENGTHS = [20 + (i * 7) % 11 for i in range(36)]
KW = {"batch_size": 4, "episode_pool_size": 4, "seed": 1}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from streamnodes.testing import write_dataset

    root = tmp_path_factory.mktemp("bytes") / "ds"
    return write_dataset(root, episode_lengths=LENGTHS, fps=10, cameras=CAMERAS, video_files_size_in_mb=0.07)


def _mp4s(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): p.stat().st_size for p in sorted(root.rglob("*.mp4"))}


def _episode_span_bytes(root: Path) -> list[int]:
    """Per episode, the bytes its spans (every camera) take on disk at most (the cache's reservation)."""
    meta = open_dataset(root)
    indexes = {}
    for rel in _mp4s(root):
        data = (root / rel).read_bytes()
        indexes[rel] = read_index(lambda o, n, d=data: d[o : o + n], len(data))
    return [
        sum(plan_span(indexes[s.path], s.from_timestamp, ep.length).max_size for s in ep.videos) for ep in meta.episodes
    ]


def _assert_equal(local: list, remote: list) -> None:
    assert len(local) == len(remote) > 0
    for a, b in zip(local, remote, strict=True):
        assert set(a) == set(b)
        for key, value in a.items():
            assert torch.equal(value, b[key]) if isinstance(value, torch.Tensor) else value == b[key], key


def test_dataset_has_many_episodes_per_mp4(dataset: Path) -> None:
    meta = open_dataset(dataset)
    for key in CAMERAS:
        per_file = Counter(ep.video(key).path for ep in meta.episodes)
        assert min(per_file.values()) >= 10, per_file
    assert len(_mp4s(dataset)) >= 3


@pytest.mark.parametrize("num_workers", [0, 2])
def test_shuffled_epoch_fetches_at_most_1_2x_the_mp4_bytes(dataset: Path, tmp_path: Path, num_workers: int) -> None:
    mp4s = _mp4s(dataset)
    local = list(build_loader(dataset, num_workers=num_workers, **KW))
    with serve_directory(dataset) as server:
        remote = list(build_loader(server.url, num_workers=num_workers, cache_dir=str(tmp_path), **KW))
        sent = {rel: server.bytes_of(rel) for rel in mp4s}
    _assert_equal(local, remote)
    ratio = sum(sent.values()) / sum(mp4s.values())
    print(f"num_workers={num_workers}: {sum(sent.values())} of {sum(mp4s.values())} mp4 bytes fetched ({ratio:.3f}x)")
    assert all(sent[rel] > 0 for rel in mp4s)  # every video came over HTTP
    assert ratio <= 1.2, sent
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # every span was freed


def test_bound_of_one_and_a_half_episodes_with_a_pool_of_4_makes_progress(dataset: Path, tmp_path: Path) -> None:
    bound = int(1.5 * max(_episode_span_bytes(dataset)))
    local = list(build_loader(dataset, num_workers=0, **KW))
    with serve_directory(dataset) as server:
        remote = list(build_loader(server.url, num_workers=0, cache_dir=str(tmp_path), prefetch_max_bytes=bound, **KW))
        sent = sum(server.bytes_of(rel) for rel in _mp4s(dataset))
    _assert_equal(local, remote)  # no ConfigError, no stall: spans are fetched again when evicted
    print(f"bound {bound} B (1.5 episodes), pool 4: {sent} bytes fetched for {sum(_mp4s(dataset).values())} mp4 bytes")


def test_bound_smaller_than_one_episode_raises_at_once_naming_both_sizes(dataset: Path, tmp_path: Path) -> None:
    bound = min(_episode_span_bytes(dataset)) // 3
    with serve_directory(dataset) as server:
        loader = build_loader(server.url, num_workers=0, cache_dir=str(tmp_path), prefetch_max_bytes=bound, **KW)
        with pytest.raises(ConfigError, match=r"video spans need .* bytes.* max_bytes=.*bytes\)") as info:
            next(iter(loader))
        sent = sum(server.bytes_of(rel) for rel in _mp4s(dataset))
    need, limit = (int(n) for n in re.search(r"\((\d+) bytes: .*\((\d+) bytes\)", str(info.value)).groups())
    assert limit == bound and need > bound
    assert sent < sum(_mp4s(dataset).values()) / 2  # only indexes were read: no span was fetched


def test_an_episode_split_between_consumers_fetches_its_part_widened_by_the_window(dataset: Path, tmp_path: Path) -> None:
    """With 2 workers the epoch's shares split episodes; a split episode's spans cover its frames plus the
    window's reach only (fewer bytes than the whole episode), and every value still equals the local read."""
    import dataclasses

    from torchdata.nodes import IterableWrapper

    from streamnodes.episode_reader import EpisodeReader
    from streamnodes.nodes import Prefetcher
    from streamnodes.sharding import Piece
    from streamnodes.types import resolve_video

    camera = "observation.images.front"
    kw = {**KW, "delta_timestamps": {camera: [-0.2, 0.0, 0.3]}}  # 2 frames back, 3 ahead at 10 fps
    local = list(build_loader(dataset, num_workers=2, **kw))
    with serve_directory(dataset) as server:
        loader = build_loader(server.url, num_workers=2, cache_dir=str(tmp_path / "c"), **kw)
        assert loader.graph.video_reach() == (2, 3)
        assert any(p.frames < LENGTHS[p.episode] for share in loader.graph.plan(0, 2).pieces for p in share)  # split
        remote = list(loader)
        meta = open_dataset(server.url)
        ref = meta.episode(7)
        prefetcher = Prefetcher(IterableWrapper([]), meta, reach=(2, 3))
        part = dataclasses.replace(ref, part=Piece(ref.episode_index, 10, 14, 0, 4))
        assert prefetcher.frames_to_fetch(part) == (8, 9)  # frames 10..13, 2 before and 3 after
        assert prefetcher.frames_to_fetch(dataclasses.replace(ref, part=Piece(ref.episode_index, 0, 3, 0, 3))) == (0, 6)
        assert prefetcher.frames_to_fetch(ref) == (0, ref.length)  # a whole episode: every frame
        assert Prefetcher(IterableWrapper([]), meta).frames_to_fetch(part) == (0, ref.length)  # no reach known
        path = ref.video(camera).path
        fetched = []
        for name, which in (("part", part), ("whole", ref)):  # each through a fresh cache: same index reads
            p = Prefetcher(IterableWrapper([]), meta, cache_dir=tmp_path / name, reach=(2, 3))
            before = server.bytes_of(path)
            episode = p.wrap(EpisodeReader(meta).read(which))
            resolve_video(episode.video_files[camera], timeout=60)
            fetched.append(server.bytes_of(path) - before)
            p.shutdown()
    _assert_equal(local, remote)
    print(f"episode {ref.episode_index} ({ref.length} frames), camera {camera}: frames 8..16 fetched {fetched[0]} bytes, "
          f"the whole episode {fetched[1]}")
    assert 0 < fetched[0] < fetched[1], fetched
