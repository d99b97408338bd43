"""WeightedMix and Relabel on real tabular chains: exact counts, exact resume at every position, early ends,
renames, and their errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from torchdata.nodes import IterableWrapper

from streamnodes import open_dataset
from streamnodes.errors import ConfigError, StateError
from streamnodes.nodes import Relabel, WeightedMix
from tests.nodes.helpers import chain


@pytest.fixture(scope="module")
def meta(tabular_dataset):
    return open_dataset(tabular_dataset)


def _mix(meta, counts, seed=3):
    sources = [Relabel(chain(meta, seed=s, delta_timestamps={"action": [0.0, 0.1]}), dataset_index=i)
               for i, s in enumerate((0, 10))]
    return WeightedMix(sources, counts, seed=seed)


def _drain(node, state=None):
    node.reset(state)
    states = [json.loads(json.dumps(node.state_dict()))]
    items = []
    for sample in node:
        items.append((int(sample.data["dataset_index"]), sample.episode_index, sample.frame_index))
        states.append(json.loads(json.dumps(node.state_dict())))
    return items, states


def test_each_source_gives_exactly_its_count_and_resumes_at_every_position(meta) -> None:
    counts = [20, 9]  # the dataset has 50 frames: neither source runs out
    items, states = _drain(_mix(meta, counts))
    assert [sum(1 for i in items if i[0] == s) for s in (0, 1)] == counts
    assert len(set(items)) == len(items)
    assert states[5]["remaining"] == [counts[0] - sum(1 for i in items[:5] if i[0] == 0), counts[1] - sum(1 for i in items[:5] if i[0] == 1)]
    for k in range(len(items) + 1):
        rest, _ = _drain(_mix(meta, counts), states[k])
        assert rest == items[k:], f"resume after {k} items diverged"


def test_the_interleaving_depends_on_the_seed_and_the_epoch(meta) -> None:
    first, _ = _drain(_mix(meta, [10, 10], seed=1))
    other, _ = _drain(_mix(meta, [10, 10], seed=2))
    assert [i[0] for i in first] != [i[0] for i in other]
    node = _mix(meta, [10, 10], seed=1)
    node.reset()
    epoch0 = [int(s.data["dataset_index"]) for s in node]
    node.reset()  # the next epoch: sources and draw move on
    epoch1 = [int(s.data["dataset_index"]) for s in node]
    assert epoch0 == [i[0] for i in first] and epoch1 != epoch0 and sorted(epoch1) == sorted(epoch0)


def test_a_source_that_ends_early_is_dropped_for_the_epoch(caplog) -> None:
    node = WeightedMix([IterableWrapper(range(3)), IterableWrapper(range(100, 110))], [6, 4], seed=0)
    node.reset()
    out = list(node)
    assert sorted(out) == [0, 1, 2, 100, 101, 102, 103]
    assert "source 0 ended 3 items before its count of 6" in caplog.text


def test_bad_counts_and_foreign_states_are_refused(meta) -> None:
    with pytest.raises(ConfigError, match="one count per source"):
        WeightedMix([IterableWrapper([])], [1, 2])
    with pytest.raises(ConfigError, match="integers >= 0"):
        WeightedMix([IterableWrapper([])], [-1])
    _, states = _drain(_mix(meta, [4, 4]))
    with pytest.raises(StateError, match=r"counts: saved \[4, 4\], now \[5, 4\]"):
        _mix(meta, [5, 4]).reset(states[2])
    with pytest.raises(StateError, match="remaining counts"):
        _mix(meta, [4, 4]).reset({**states[2], "remaining": [9, 0]})
    with pytest.raises(StateError, match="lacks keys"):
        _mix(meta, [4, 4]).reset({"sources": []})


def test_relabel_renames_drops_and_tags(meta) -> None:
    node = Relabel(chain(meta, delta_timestamps={"action": [0.0, 0.1]}), dataset_index=2,
                   rename={"action": "act", "observation.state": None})
    node.reset()
    sample = next(node)
    assert "act" in sample.data and "act_is_pad" in sample.data
    assert not {"action", "action_is_pad", "observation.state"} & set(sample.data)
    assert sample.data["dataset_index"] == 2 and sample.data["dataset_index"].dtype == np.int64
    with pytest.raises(StateError, match="lacks keys"):
        node.reset({"nope": 1})
