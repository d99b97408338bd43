"""Epochs survive a restore: every node resumes in the saved epoch and counts on from it."""

from __future__ import annotations

import json

import pytest
from torchdata.nodes import BaseNode

from streamnodes.format import open_dataset
from tests.nodes.helpers import chain, key_of


@pytest.fixture(scope="module")
def meta(tabular_dataset):
    return open_dataset(tabular_dataset)


def _nodes(node: BaseNode) -> list[BaseNode]:
    """The node and every node upstream of it."""
    out = [node]
    while hasattr(out[-1], "source") and isinstance(out[-1].source, BaseNode):
        out.append(out[-1].source)
    return out


def _epoch(node: BaseNode) -> list[object]:
    node.reset(None)
    return [key_of(item) for item in node]


@pytest.mark.parametrize("position", [0, 1, 23])
def test_restored_nodes_are_in_the_saved_epoch_and_count_on(meta, position) -> None:
    def build() -> BaseNode:
        return chain(meta, pool_size=2, buffer_size=4, seed=3)

    uninterrupted = build()
    epochs = [_epoch(uninterrupted) for _ in range(3)]
    assert len({tuple(e) for e in epochs}) == 3  # every epoch has its own order

    node = build()
    _epoch(node)  # epoch 0
    node.reset(None)  # epoch 1
    for _ in range(position):
        next(node)
    state = json.loads(json.dumps(node.state_dict()))

    restored = build()  # a fresh graph starts at epoch 0 ...
    restored.reset(state)  # ... and is moved to the saved epoch, in every node that keeps one
    with_epoch = [n for n in _nodes(restored) if hasattr(n, "epoch")]
    assert {type(n).__name__ for n in with_epoch} == {"ShardSource", "EpisodePool", "FrameShuffle"}
    assert {type(n).__name__: n.epoch for n in with_epoch} == {type(n).__name__: 1 for n in with_epoch}
    assert [key_of(item) for item in restored] == epochs[1][position:]
    restored.reset(None)  # the epoch after the restored one is epoch 2, in every node
    assert {type(n).__name__: n.epoch for n in with_epoch} == {type(n).__name__: 2 for n in with_epoch}
    assert [key_of(item) for item in restored] == epochs[2]
