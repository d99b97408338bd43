from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from torchdata.nodes import IterableWrapper

from streamnodes.errors import ConfigError, StateError
from streamnodes.format import open_dataset
from streamnodes.nodes.episode_batcher import EpisodeBatcher
from streamnodes.nodes.episode_pool import EpisodePool, frame_order
from streamnodes.nodes.shard_source import ShardSource
from tests.nodes.helpers import assert_resumes_everywhere, run_with_states


@pytest.fixture(scope="module")
def meta(tabular_dataset):
    return open_dataset(tabular_dataset)


def _pool(meta, pool_size=3, seed=0, shuffle=True, **kw):
    src = ShardSource(meta, seed=seed, shuffle=shuffle, rank=0, world_size=1, worker_id=0, num_workers=1, **kw)
    return EpisodePool(EpisodeBatcher(src, meta), pool_size=pool_size, seed=seed + 10, shuffle=shuffle)


def test_every_frame_exactly_once_per_epoch(meta) -> None:
    for pool_size in (1, 2, 3, 7, 20):
        node = _pool(meta, pool_size)
        frames = [f.ref for f in node]
        expected = [(e.episode_index, i) for e in meta.episodes for i in range(e.length)]
        assert sorted(frames) == sorted(expected), pool_size


def test_pool_mixes_episodes_and_draws_proportionally(meta) -> None:
    node = _pool(meta, pool_size=7)
    node.reset(None)
    first = [next(node).ref[0] for _ in range(12)]
    assert len(set(first)) >= 4  # a pool of the whole dataset mixes episodes from the start
    # the first draw picks an episode with probability proportional to its length
    counts = Counter()
    for seed in range(600):
        n = _pool(meta, pool_size=7, seed=seed)
        counts[next(n).ref[0]] += 1
    for ep in meta.episodes:
        assert abs(counts[ep.episode_index] / 600 - ep.length / meta.total_frames) < 0.07


def test_no_shuffle_is_storage_order(meta) -> None:
    frames = [f.ref for f in _pool(meta, pool_size=4, shuffle=False)]
    assert frames == [(e.episode_index, i) for e in meta.episodes for i in range(e.length)]


def test_frame_order_is_a_fixed_permutation() -> None:
    a = frame_order(10, seed=1, epoch=0, episode_index=3, shuffle=True)
    assert sorted(a.tolist()) == list(range(10))
    assert np.array_equal(a, frame_order(10, seed=1, epoch=0, episode_index=3, shuffle=True))
    assert not np.array_equal(a, frame_order(10, seed=1, epoch=1, episode_index=3, shuffle=True))


def test_epochs_differ_and_reset_counts_up(meta) -> None:
    node = _pool(meta)
    a, _ = run_with_states(node)
    b, _ = run_with_states(node)
    assert node.epoch == 1 and a != b and sorted(a) == sorted(b)


@pytest.mark.parametrize("pool_size", [1, 3, 8])
def test_resume_at_every_position(meta, pool_size) -> None:
    assert_resumes_everywhere(lambda: _pool(meta, pool_size=pool_size, seed=pool_size))


def test_restore_cost_is_the_pool_not_the_position(meta) -> None:
    """Restoring reads exactly the pooled episodes, wherever in the epoch the state was taken."""
    items, states = run_with_states(_pool(meta, pool_size=3))
    for k in (1, len(items) // 2, len(items) - 1):
        node = _pool(meta, pool_size=3)
        batcher = node.source
        node.reset(states[k])
        assert batcher.episodes_read == len(states[k]["pool"]) <= 3


def test_state_lists_refs_and_counters(meta) -> None:
    node = _pool(meta)
    node.reset(None)
    for _ in range(5):
        next(node)
    state = node.state_dict()
    assert set(state) == {"source", "epoch", "pool", "rng", "config"}
    assert all(isinstance(e, int) and isinstance(c, int) for e, c in state["pool"])
    assert sum(c for _, c in state["pool"]) <= 5


def test_bad_states_and_config(meta) -> None:
    node = _pool(meta)
    node.reset(None)
    next(node)
    state = node.state_dict()
    with pytest.raises(StateError, match="pool_size: saved 3, now 4"):
        _pool(meta, pool_size=4).reset(state)
    state["pool"][0][1] = 10_000
    with pytest.raises(StateError, match="frames consumed"):
        _pool(meta).reset(state)
    with pytest.raises(ConfigError, match="pool_size must be >= 1"):
        _pool(meta, pool_size=0)
    with pytest.raises(ConfigError, match="has no load_episode"):
        EpisodePool(IterableWrapper([]), pool_size=2)
