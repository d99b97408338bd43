from __future__ import annotations

import pytest

from streamnodes.errors import StateError
from streamnodes.format import open_dataset
from streamnodes.nodes.shard_source import ShardSource
from tests.nodes.helpers import assert_resumes_everywhere, run_with_states


@pytest.fixture(scope="module")
def meta(tabular_dataset):
    return open_dataset(tabular_dataset)


def _source(meta, **kw):
    kw = {"rank": 0, "world_size": 1, "worker_id": 0, "num_workers": 1, **kw}
    return ShardSource(meta, **kw)


def _episodes(node) -> list[int]:
    node.reset(None)
    return [ref.episode_index for ref in node]


def _frames(node) -> list[tuple[int, int]]:
    node.reset(None)
    out = []
    for ref in node:
        start, stop = (ref.part[1], ref.part[2]) if ref.part is not None else (0, ref.length)
        assert ref.part is None or (ref.part[3], ref.part[4]) == (0, stop - start)  # fresh parts: frame ranges
        out += [(ref.episode_index, f) for f in range(start, stop)]
    return out


def test_consumers_are_disjoint_cover_every_frame_and_balance_to_one_frame(meta) -> None:
    every = sorted((e.episode_index, f) for e in meta.episodes for f in range(e.length))
    for world, workers in [(1, 1), (1, 3), (2, 2), (3, 2)]:
        seen, sizes = [], []
        for rank in range(world):
            for w in range(workers):
                mine = _frames(_source(meta, seed=4, rank=rank, world_size=world, worker_id=w, num_workers=workers))
                seen += mine
                sizes.append(len(mine))
        assert sorted(seen) == every, (world, workers)
        assert max(sizes) - min(sizes) <= 1, (world, workers, sizes)


def test_same_seed_same_order_other_epoch_other_order(meta) -> None:
    a = _episodes(_source(meta, seed=1))
    assert a == _episodes(_source(meta, seed=1))
    assert a != _episodes(_source(meta, seed=1, epoch=1))
    assert sorted(a) == list(range(7))


def test_reset_without_state_starts_next_epoch(meta) -> None:
    node = _source(meta, seed=1)
    first = _episodes(node)
    second = _episodes(node)
    assert node.epoch == 1
    assert second == _episodes(_source(meta, seed=1, epoch=1)) and second != first


def test_no_shuffle_is_storage_order(meta) -> None:
    assert _episodes(_source(meta, shuffle=False)) == list(range(7))
    parts = [_episodes(_source(meta, shuffle=False, worker_id=w, num_workers=2)) for w in range(2)]
    assert all(p == sorted(p) for p in parts)


def test_episode_subset(meta) -> None:
    assert sorted(_episodes(_source(meta, episodes=[5, 1, 3]))) == [1, 3, 5]


def test_consumer_without_episodes_warns(meta) -> None:
    node = _source(meta, worker_id=7, num_workers=8)
    frames = sum(e.length for e in meta.episodes)
    node = _source(meta, worker_id=0, num_workers=frames + 1)  # shares differ by one frame, the empty one first
    with pytest.warns(UserWarning, match=rf"consumer 0 .* has no frames .* {frames + 1} consumers share {frames} frames"):
        assert _episodes(node) == []


def test_resume_at_every_position_and_across_epochs(meta) -> None:
    assert_resumes_everywhere(lambda: _source(meta, seed=3, worker_id=1, num_workers=2))
    node = _source(meta, seed=3)
    items, states = run_with_states(node)
    node2 = _source(meta, seed=3)
    node2.reset(states[-1])  # restored at the very end of epoch 0 ...
    assert list(node2) == []
    node2.reset(None)  # ... the next reset starts epoch 1
    assert node2.epoch == 1 and [r.episode_index for r in node2] == _episodes(_source(meta, seed=3, epoch=1))


def test_state_is_small_and_checked(meta) -> None:
    node = _source(meta, seed=3)
    node.reset(None)
    next(node)
    state = node.state_dict()
    assert set(state) == {"epoch", "offset", "config"} and state["offset"] == 1
    with pytest.raises(StateError, match=r"seed: saved 3, now 4"):
        _source(meta, seed=4).reset(state)
    with pytest.raises(StateError, match=r"consumer: saved \[0, 1, 0, 1\], now \[0, 1, 0, 2\]"):
        _source(meta, seed=3, num_workers=2).reset(state)
    with pytest.raises(StateError, match="lacks keys"):
        _source(meta).reset({"offset": 1})


def test_state_from_another_dataset_is_refused(meta, tmp_path) -> None:
    from tests.conftest import REF_ROOT

    node = _source(meta)
    state = node.state_dict()
    with pytest.raises(StateError, match="dataset: saved"):
        ShardSource(open_dataset(REF_ROOT), rank=0, world_size=1, worker_id=0, num_workers=1).reset(state)
    assert "ShardSource(consumer=0/1" in repr(node)
