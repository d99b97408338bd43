from __future__ import annotations

from collections import Counter

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from streamnodes.sharding import (
    EpochPlan,
    Piece,
    epoch_order,
    epoch_share,
    equal_rank_quota,
    frame_order,
    plan_epoch,
    share_bounds,
    split_pieces,
)


def _frames(pieces, *, seed: int = 0, epoch: int = 0, shuffle: bool = True) -> list[tuple[int, int]]:
    """The (episode, frame) pairs a list of pieces stands for."""
    out = []
    for p in pieces:
        order = frame_order(p.stop - p.start, seed=seed, epoch=epoch, episode_index=p.episode, shuffle=shuffle, start=p.start)
        out += [(p.episode, int(f)) for f in order[p.lo : p.hi]]
    return out


def test_epoch_order_is_a_permutation_per_seed_and_epoch() -> None:
    eps = list(range(50))
    a = epoch_order(eps, seed=0, epoch=0, shuffle=True)
    assert sorted(a) == eps and a != eps
    assert a == epoch_order(eps, seed=0, epoch=0, shuffle=True)
    assert a != epoch_order(eps, seed=0, epoch=1, shuffle=True)
    assert a != epoch_order(eps, seed=1, epoch=0, shuffle=True)
    assert epoch_order([3, 1, 2], seed=0, epoch=5, shuffle=False) == [1, 2, 3]


def test_share_bounds_differ_by_at_most_one() -> None:
    assert share_bounds(237, 4) == [0, 59, 118, 177, 237]
    assert share_bounds(2, 3) == [0, 0, 1, 2]


def test_split_cuts_pieces_at_share_boundaries() -> None:
    pieces = [Piece.whole(4, 10), Piece.whole(1, 3), Piece.whole(7, 8)]  # 21 frames
    parts = split_pieces(pieces, 3)
    # fresh pieces are cut into frame ranges
    assert parts == [[Piece(4, 0, 7, 0, 7)], [Piece(4, 7, 10, 0, 3), Piece(1, 0, 3, 0, 3), Piece(7, 0, 1, 0, 1)],
                     [Piece(7, 1, 8, 0, 7)]]  # fmt: skip
    assert split_pieces(pieces, 1) == [pieces]
    assert split_pieces([Piece.whole(0, 2)], 3) == [[], [Piece(0, 0, 1, 0, 1)], [Piece(0, 1, 2, 0, 1)]]
    # a partly drawn piece is cut at draw positions of its own order
    assert split_pieces([Piece(3, 2, 12, 4, 10)], 2) == [[Piece(3, 2, 12, 4, 7)], [Piece(3, 2, 12, 7, 10)]]


def test_frame_order_of_a_part_is_a_permutation_of_its_frames() -> None:
    whole = frame_order(12, seed=3, epoch=0, episode_index=5, shuffle=True)
    assert sorted(whole.tolist()) == list(range(12))
    part = frame_order(5, seed=3, epoch=0, episode_index=5, shuffle=True, start=7)
    assert sorted(part.tolist()) == list(range(7, 12))
    assert frame_order(5, seed=3, epoch=0, episode_index=5, shuffle=False, start=7).tolist() == [7, 8, 9, 10, 11]


@settings(max_examples=80, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 50), min_size=1, max_size=40),
    consumers=st.integers(1, 9),
    seed=st.integers(0, 2**32),
    epoch=st.integers(0, 5),
    shuffle=st.booleans(),
)
def test_plan_covers_every_frame_once_and_balances_to_one_frame(lengths, consumers, seed, epoch, shuffle) -> None:
    by_ep = dict(enumerate(lengths))
    plan = plan_epoch(by_ep, seed=seed, epoch=epoch, shuffle=shuffle, num_consumers=consumers)
    frames = [f for part in plan.pieces for f in _frames(part, seed=seed, epoch=epoch, shuffle=shuffle)]
    assert Counter(frames) == Counter((e, f) for e, n in by_ep.items() for f in range(n))
    assert list(plan.frames) == [sum(p.frames for p in part) for part in plan.pieces]
    assert max(plan.frames) - min(plan.frames) <= 1
    if not shuffle:  # storage order within and across shares
        flat = [f for part in plan.pieces for f in _frames(part, shuffle=False)]
        assert flat == sorted(flat)
    # each consumer splits at most the episodes at its two ends
    for part in plan.pieces:
        assert sum(p.frames < by_ep[p.episode] for p in part) <= 2


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 30), min_size=1, max_size=12),
    cuts=st.lists(st.integers(0, 10**6), max_size=6),
    consumers=st.integers(1, 7),
)
def test_resplitting_a_remainder_keeps_its_frames(lengths, cuts, consumers) -> None:
    """Pieces partly drawn (lo advanced) dealt again: the same frames, nothing more, balanced to one."""
    pieces = []
    for e, n in enumerate(lengths):
        lo = cuts[e % len(cuts)] % n if cuts else 0
        pieces.append(Piece(e, 0, n, lo, n))
    parts = split_pieces(pieces, consumers)
    assert Counter(f for part in parts for f in _frames(part)) == Counter(_frames(pieces))
    sizes = [sum(p.frames for p in part) for part in parts]
    assert max(sizes) - min(sizes) <= 1


def test_equal_rank_quota_trims_at_most_one_frame_per_consumer() -> None:
    # the case: 6 uneven episodes, 237 frames, 2 workers per rank
    by_ep = dict(enumerate([12, 25, 38, 41, 55, 66]))
    assert sum(by_ep.values()) == 237
    for world in (2, 3):
        plan = plan_epoch(by_ep, seed=0, epoch=0, shuffle=True, num_consumers=2 * world)
        quota, trimmed = equal_rank_quota(plan, world_size=world, num_workers=2)
        frames = np.asarray(plan.frames).reshape(world, 2)
        assert quota == frames.min(axis=0).tolist()
        assert trimmed == 237 - world * sum(quota) <= 2 * world
        assert world * sum(quota) / 237 >= 0.98
    single = plan_epoch(by_ep, seed=0, epoch=0, shuffle=True, num_consumers=3)
    assert equal_rank_quota(single, world_size=1, num_workers=3) == (list(single.frames), 0)
    assert EpochPlan.of([[Piece.whole(0, 5)], []]).rank_frames(2, 1) == [5, 0]


@settings(max_examples=80, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 40), min_size=1, max_size=30),
    consumers=st.integers(1, 9),
    seed=st.integers(0, 2**32),
    epoch=st.integers(0, 5),
    shuffle=st.booleans(),
    skip=st.integers(0, 3),
)
def test_one_consumers_share_from_columns_equals_the_plan(lengths, consumers, seed, epoch, shuffle, skip) -> None:
    """The numpy deal equals its definition: the epoch's order laid end to end, cut by split_pieces."""
    episodes = np.arange(len(lengths)) * (skip + 1)  # sparse episode indices, sorted
    by_ep = dict(zip(episodes.tolist(), lengths, strict=True))
    order = epoch_order(list(by_ep), seed=seed, epoch=epoch, shuffle=shuffle)
    reference = split_pieces([Piece.whole(e, by_ep[e]) for e in order], consumers)
    plan = plan_epoch(by_ep, seed=seed, epoch=epoch, shuffle=shuffle, num_consumers=consumers)
    assert [list(p) for p in plan.pieces] == reference
    for c in range(consumers):
        share = epoch_share(episodes, np.asarray(lengths), seed=seed, epoch=epoch, shuffle=shuffle,
                            num_consumers=consumers, consumer=c)
        assert list(share) == reference[c] and share.frames == plan.frames[c]
        assert share[1:] == reference[c][1:]
