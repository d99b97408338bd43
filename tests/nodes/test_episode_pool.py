from __future__ import annotations

import math

import numpy as np
import pytest
from torchdata.nodes import IterableWrapper

from streamnodes.episode_reader import EpisodeReader
from streamnodes.errors import ConfigError, StateError
from streamnodes.format import open_dataset
from streamnodes.nodes.episode_batcher import EpisodeBatcher
from streamnodes.nodes.episode_pool import EpisodePool
from streamnodes.nodes.shard_source import ShardSource
from streamnodes.sharding import frame_order
from tests.nodes.helpers import assert_resumes_everywhere, run_with_states


@pytest.fixture(scope="module")
def meta(tabular_dataset):
    return open_dataset(tabular_dataset)


def _pool(meta, pool_size=3, seed=0, shuffle=True, **kw):
    src = ShardSource(meta, seed=seed, shuffle=shuffle, rank=0, world_size=1, worker_id=0, num_workers=1, **kw)
    reader = EpisodeReader(meta)
    return EpisodePool(EpisodeBatcher(src, reader), reader=reader, pool_size=pool_size, seed=seed + 10, shuffle=shuffle)


def test_every_frame_exactly_once_per_epoch(meta) -> None:
    for pool_size in (1, 2, 3, 7, 20):
        node = _pool(meta, pool_size)
        frames = [f.ref for f in node]
        expected = [(e.episode_index, i) for e in meta.episodes for i in range(e.length)]
        assert sorted(frames) == sorted(expected), pool_size


def test_pool_mixes_episodes(meta) -> None:
    node = _pool(meta, pool_size=7)
    node.reset(None)
    first = [next(node).ref[0] for _ in range(12)]
    assert len(set(first)) >= 4  # a pool of the whole dataset mixes episodes from the start


def _chi2_sf_even_dof(x: float, dof: int) -> float:
    """P(X >= x) for a chi-square variable with an even number of degrees of freedom (closed form)."""
    half = x / 2
    return math.exp(-half) * sum(half**i / math.factorial(i) for i in range(dof // 2))


@pytest.fixture(scope="module")
def short_episodes(tmp_path_factory):
    """Many short episodes: the pool's weights stay small, so every unit of weight matters."""
    from streamnodes.testing import write_dataset

    lengths = [1 + (7 * i) % 5 for i in range(24)]
    return open_dataset(write_dataset(tmp_path_factory.mktemp("short") / "ds", episode_lengths=lengths, cameras=None))


def test_draws_follow_pending_frame_weights(short_episodes) -> None:
    """Each draw from a full pool picks slot j with probability pending_j / sum(pending).

    Pearson's chi-square over the slot positions of ~1500 full-pool draws (several epochs, one fixed
    seed). Under the property the statistic has at most the chi-square(2) mean (heterogeneous draws only
    lower it), so the false-failure rate of the threshold is about 1e-4.
    """
    meta = short_episodes
    pool_size = 3
    node = _pool(meta, pool_size=pool_size, seed=5)
    observed = [0] * pool_size
    expected = [0.0] * pool_size
    draws = 0
    while draws < 1500:
        node.reset(None)  # the next epoch
        slots = node.state_dict()["pool"]
        for frame in node:
            if len(slots) == pool_size:  # a full pool admits nothing before the draw: these are its weights
                weights = [hi - nxt for _e, _start, _stop, nxt, hi in slots]
                total = sum(weights)
                for j, w in enumerate(weights):
                    expected[j] += w / total
                observed[[entry[0] for entry in slots].index(frame.ref[0])] += 1
                draws += 1
            slots = node.state_dict()["pool"]
    stat = sum((o - e) ** 2 / e for o, e in zip(observed, expected, strict=True))
    p_value = _chi2_sf_even_dof(stat, pool_size - 1)
    assert p_value > 1e-4, f"slot draws {observed} vs expected {[round(e) for e in expected]} (p={p_value:.2g})"


def test_frame_orders_change_between_epochs(meta) -> None:
    """Within each episode, the order its frames are drawn in is new every epoch (not only the episode mix)."""
    node = _pool(meta, pool_size=3)
    per_epoch = []
    for _ in range(2):
        node.reset(None)
        order: dict[int, list[int]] = {}
        for frame in node:
            order.setdefault(frame.ref[0], []).append(frame.ref[1])
        per_epoch.append(order)
    long_enough = [e.episode_index for e in meta.episodes if e.length >= 5]  # 5! orders: a repeat is unlikely
    assert long_enough
    for e in long_enough:
        assert per_epoch[0][e] != per_epoch[1][e], f"episode {e} drew its frames in the same order twice"


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
    assert all(len(entry) == 5 and all(isinstance(v, int) for v in entry) for entry in state["pool"])
    assert sum(nxt for _e, _start, _stop, nxt, _hi in state["pool"]) <= 5  # whole pieces: next = frames drawn


def test_bad_states_and_config(meta) -> None:
    node = _pool(meta)
    node.reset(None)
    next(node)
    state = node.state_dict()
    with pytest.raises(StateError, match="pool_size: saved 3, now 4"):
        _pool(meta, pool_size=4).reset(state)
    state["pool"][0][3] = 10_000
    with pytest.raises(StateError, match="drawn up to 10000"):
        _pool(meta).reset(state)
    state["pool"][0] = [0, 5]  # a version-2 entry [episode_index, consumed]
    with pytest.raises(StateError, match="another streamnodes version"):
        _pool(meta).reset(state)
    with pytest.raises(ConfigError, match="pool_size must be >= 1"):
        _pool(meta, pool_size=0)
    with pytest.raises(ConfigError, match="reader must be callable"):
        EpisodePool(IterableWrapper([]), reader=None, pool_size=2)  # type: ignore[arg-type]
