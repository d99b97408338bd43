"""The stream a saved checkpoint resumes into, pinned with literal values (grain's cross-version test).

The values were produced by the code before the structure rework (commit 2365c2b) and again after it.
Version 3 (frame-balanced shares) changed two of them on purpose: the shares of an epoch (contiguous runs
of the epoch's order, cut to one frame, instead of whole episodes dealt greedily) and the packaged graph's
frame orders (keyed by the stream's seed, the same for every consumer, instead of each consumer's pool
seed). If a value changes, a checkpoint saved by an earlier version would resume into another stream:
change these values only together with ``STATE_VERSION`` (recipes/state.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from streamnodes.distributed import Consumer
from streamnodes.format import open_dataset
from streamnodes.recipes import LeRobotGraph, StreamConfig
from streamnodes.recipes.state import STATE_VERSION
from streamnodes.sharding import Piece, epoch_order, frame_order, plan_epoch
from streamnodes.testing import write_dataset
from tests.nodes.helpers import chain


@pytest.fixture(scope="module")
def meta(tmp_path_factory: pytest.TempPathFactory):
    root: Path = tmp_path_factory.mktemp("pinned") / "ds"
    return open_dataset(write_dataset(root, episode_lengths=[5, 8, 11, 14, 17, 20], cameras=None))


def test_state_version_is_the_pinned_one() -> None:
    assert STATE_VERSION == 3


def test_episode_orders_and_shards() -> None:
    assert epoch_order(list(range(10)), seed=0, epoch=0, shuffle=True) == [6, 5, 1, 7, 8, 3, 9, 0, 2, 4]
    lengths = {i: 5 + 3 * i for i in range(8)}
    plan0 = plan_epoch(lengths, seed=7, epoch=0, shuffle=True, num_consumers=2)
    plan1 = plan_epoch(lengths, seed=7, epoch=1, shuffle=True, num_consumers=2)
    assert plan0.episodes == ((4, 1, 6, 3), (0, 7, 2, 5)) and tuple(plan0.frames) == (62, 62)
    assert plan1.episodes == ((4, 5, 1, 0, 6), (6, 7, 2, 3)) and tuple(plan1.frames) == (62, 62)
    assert plan1.pieces[0][-1] == Piece(6, 0, 12, 0, 12) and plan1.pieces[1][0] == Piece(6, 12, 23, 0, 11)


def test_frame_orders() -> None:
    assert frame_order(12, seed=3, epoch=0, episode_index=5, shuffle=True).tolist() == [6, 5, 11, 9, 4, 0, 1, 2, 10, 8, 3, 7]
    assert frame_order(12, seed=3, epoch=1, episode_index=5, shuffle=True).tolist() == [0, 11, 3, 8, 9, 10, 7, 1, 2, 5, 4, 6]


def test_first_pool_draws(meta) -> None:
    node = chain(meta, pool_size=3, seed=0)
    node.reset(None)
    assert [next(node).ref for _ in range(16)] == [
        (3, 0), (1, 5), (5, 10), (3, 9), (5, 15), (5, 6), (5, 18), (5, 12),
        (5, 2), (5, 17), (1, 7), (1, 2), (1, 4), (3, 6), (3, 8), (3, 4),
    ]


def test_first_draws_through_a_shuffle_buffer(meta) -> None:
    node = chain(meta, pool_size=2, seed=0, buffer_size=4)
    node.reset(None)
    assert [next(node).ref for _ in range(12)] == [
        (5, 6), (5, 10), (5, 18), (1, 2), (1, 5), (1, 4), (5, 2), (1, 1), (1, 0), (5, 12), (5, 17), (5, 15),
    ]


def test_packaged_graph_stream(meta) -> None:
    graph = LeRobotGraph(meta, StreamConfig(episode_pool_size=4, seed=5, batch_size=None))
    out = graph(Consumer(0, 1, 0, 1), 0).output
    out.reset(None)
    items = [next(out) for _ in range(12)]
    assert [(int(x["episode_index"]), int(x["frame_index"])) for x in items] == [
        (5, 3), (5, 4), (2, 3), (1, 1), (5, 8), (5, 19), (5, 16), (4, 5), (4, 0), (4, 13), (1, 4), (4, 4),
    ]
