from __future__ import annotations

import pytest
from torchdata.nodes import IterableWrapper

from streamnodes.errors import ConfigError, StateError
from streamnodes.format import open_dataset
from streamnodes.nodes.frame_shuffle import FrameShuffle
from tests.nodes.helpers import assert_resumes_everywhere, chain, run_with_states


@pytest.fixture(scope="module")
def meta(tabular_dataset):
    return open_dataset(tabular_dataset)


def test_exactly_once_and_actually_shuffles(meta) -> None:
    plain, _ = run_with_states(chain(meta, pool_size=1, shuffle=False))
    shuffled, _ = run_with_states(chain(meta, pool_size=1, shuffle=False, buffer_size=16))
    assert sorted(shuffled) == sorted(plain) and shuffled != plain
    assert len(shuffled) == meta.total_frames


@pytest.mark.parametrize("buffer_size", [1, 5, 64])
def test_resume_at_every_position(meta, buffer_size) -> None:
    assert_resumes_everywhere(lambda: chain(meta, pool_size=2, buffer_size=buffer_size, seed=buffer_size))


def test_restore_reads_buffered_episodes_once_each(meta) -> None:
    items, states = run_with_states(chain(meta, pool_size=2, buffer_size=10))
    state = states[len(items) // 2]
    node = chain(meta, pool_size=2, buffer_size=10)
    batcher = node.source.source.source
    node.reset(state)
    buffered_eps = {e for e, _ in state["buffer"]}
    pooled_eps = [entry[0] for entry in state["source"]["source"]["pool"]]
    assert batcher.episodes_read == len(pooled_eps) + len(buffered_eps)
    assert len(state["buffer"]) == 9  # one emitted, refilled on the next draw


def test_state_errors(meta) -> None:
    node = chain(meta, buffer_size=4)
    node.reset(None)
    next(node)
    state = node.state_dict()
    assert set(state) == {"source", "epoch", "buffer", "rng", "config"}
    with pytest.raises(StateError, match="buffer_size: saved 4, now 5"):
        chain(meta, buffer_size=5).reset(state)
    with pytest.raises(ConfigError, match="buffer_size must be >= 1"):
        FrameShuffle(chain(meta), rebuild=lambda refs: [], buffer_size=0)
    with pytest.raises(ConfigError, match="rebuild must be callable"):
        FrameShuffle(IterableWrapper([]), rebuild=None, buffer_size=3)  # type: ignore[arg-type]
