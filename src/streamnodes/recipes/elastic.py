"""Elastic resume: the undelivered rest of an epoch, read from every rank's saved state, as pieces.

A loader state holds, per consumer (rank x worker), refs and counters only: the ShardSource's offset
into its share, the pool's pieces with their next draw position, the shuffle buffer's frame refs and
Take's count. What a consumer has NOT delivered is therefore a list of pieces
(:class:`~streamnodes.sharding.Piece`): the buffered frames, the pooled pieces from their next draw
position, and the share's pieces after the offset. Laid end to end over all old consumers, that list is
dealt over the new consumers like a fresh epoch (:func:`streamnodes.sharding.split_pieces`), so nothing
delivered is delivered again and everything else once. Reading it costs O(pool + undelivered pieces);
nothing is replayed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from streamnodes.errors import StateError
from streamnodes.nodes import EpisodePool, FrameShuffle, ShardSource, Take
from streamnodes.sharding import EpochPlan, Piece, equal_rank_quota

__all__ = ["SavedRank", "consumer_remainder", "epoch_remainder"]


def consumer_remainder(graph_state: Mapping[str, Any] | None, share: Sequence[Piece], quota: int | None) -> list[Piece]:
    """What one consumer had not delivered when its ``graph_state`` was saved, as pieces.

    ``share``: the consumer's pieces of the epoch; ``quota``: its Take limit (several ranks), or None.
    ``graph_state`` None (the consumer had not started) leaves the whole share. A consumer that had
    delivered its quota leaves nothing: the rest was its epoch's trim.
    """
    if graph_state is None:
        return list(share)
    buffered: list[Piece] = []
    pooled: list[Piece] = []
    offset: int | None = None
    taken: int | None = None
    node: Any = graph_state
    while isinstance(node, Mapping):
        if Take.TAKEN_KEY in node:
            taken = int(node[Take.TAKEN_KEY])
        if FrameShuffle.BUFFER_KEY in node and FrameShuffle.RNG_KEY in node:
            buffered += [Piece(int(e), int(f), int(f) + 1, 0, 1) for e, f in node[FrameShuffle.BUFFER_KEY]]
        if EpisodePool.POOL_KEY in node:
            pooled += [Piece(*(int(v) for v in entry)) for entry in node[EpisodePool.POOL_KEY]]
        if ShardSource.OFFSET_KEY in node and ShardSource.CONFIG_KEY in node and "source" not in node:
            offset = int(node[ShardSource.OFFSET_KEY])
        node = node.get("source")
    if offset is None:
        raise StateError("elastic resume: a consumer's saved graph has no ShardSource state; it was not built by build_loader.")
    if quota is not None and taken is not None and taken >= quota:
        return []
    return buffered + [p for p in pooled if p.frames > 0] + list(share[offset:])


@dataclass(frozen=True)
class SavedRank:
    """One rank's saved loader state, as the re-deal reads it."""

    rank: int
    world_size: int
    num_workers: int
    epoch: int
    finished: bool
    consumers: dict[int, Mapping[str, Any]]  # worker id -> that consumer's dataset state


def epoch_remainder(ranks: Sequence[SavedRank], plan: EpochPlan) -> list[Piece]:
    """Every old consumer's undelivered pieces, in consumer order (rank-major), for ``plan``'s epoch.

    ``plan``: the epoch's plan over the OLD consumers (``world_size * max(1, num_workers)``).
    """
    world = ranks[0].world_size
    workers = max(1, ranks[0].num_workers)
    quotas = equal_rank_quota(plan, world, workers)[0] if world > 1 else [None] * workers
    out: list[Piece] = []
    for saved in sorted(ranks, key=lambda s: s.rank):
        if saved.finished:
            continue
        for w in range(workers):
            state = saved.consumers.get(w)
            graph = None
            if state is not None and int(state.get("epoch", -1)) == saved.epoch:
                graph = state.get("graph")
            elif state is not None and int(state.get("epoch", -1)) > saved.epoch:
                raise StateError(
                    f"elastic resume: rank {saved.rank} worker {w}'s state is in epoch {state.get('epoch')}, after the "
                    f"loader's epoch {saved.epoch}; the state is inconsistent."
                )
            out += consumer_remainder(graph, plan.pieces[saved.rank * workers + w], quotas[w])
    return out
