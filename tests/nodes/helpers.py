"""Test helpers for nodes: build the tabular chain, and check exact resume at every position."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from torchdata.nodes import BaseNode

from streamnodes.episode_reader import EpisodeReader
from streamnodes.format import DatasetMeta
from streamnodes.nodes.delta_window import DeltaWindow
from streamnodes.nodes.episode_batcher import EpisodeBatcher
from streamnodes.nodes.episode_pool import EpisodePool
from streamnodes.nodes.frame_shuffle import FrameShuffle
from streamnodes.nodes.shard_source import ShardSource


def chain(
    meta: DatasetMeta,
    *,
    consumer: int = 0,
    consumers: int = 1,
    pool_size: int = 3,
    buffer_size: int = 0,
    seed: int = 0,
    shuffle: bool = True,
    delta_timestamps: dict | None = None,
) -> BaseNode:
    source = ShardSource(meta, seed=seed, shuffle=shuffle, rank=0, world_size=1, worker_id=consumer, num_workers=consumers)
    reader = EpisodeReader(meta)
    node: BaseNode = EpisodeBatcher(source, reader)
    node = EpisodePool(node, reader=reader, pool_size=pool_size, seed=seed + 1 + consumer, shuffle=shuffle)
    node = window = DeltaWindow(node, meta, delta_timestamps=delta_timestamps)
    if buffer_size:
        node = FrameShuffle(node, rebuild=window.rebuilder(reader), buffer_size=buffer_size, seed=seed + 2 + consumer)
    return node


def key_of(item: Any) -> Any:
    """A comparable identity of an item (refs for samples/frames, the item itself otherwise)."""
    ref = getattr(item, "ref", None)
    if ref is not None and not callable(ref):
        return ref if isinstance(ref, tuple) else getattr(ref, "episode_index", ref)
    return getattr(item, "episode_index", item)


def run_with_states(node: BaseNode, state: dict | None = None) -> tuple[list[Any], list[dict]]:
    """Drain ``node`` (after reset with ``state``); states[k] is the state after k items (JSON round-tripped)."""
    node.reset(state)
    states = [json.loads(json.dumps(node.state_dict()))]
    items = []
    for item in node:
        items.append(key_of(item))
        states.append(json.loads(json.dumps(node.state_dict())))
    return items, states


def assert_resumes_everywhere(build: Callable[[], BaseNode], step: int = 1) -> list[Any]:
    """For every k (stride ``step``, always incl. 0 and the end): a fresh graph restored from the
    state after k items yields exactly items k+1.. of the uninterrupted run. Returns that run."""
    items, states = run_with_states(build())
    positions = sorted(set(range(0, len(items) + 1, step)) | {0, len(items)})
    for k in positions:
        fresh = build()
        rest, _ = run_with_states(fresh, states[k])
        assert rest == items[k:], f"resume after {k} items diverged"
    return items
