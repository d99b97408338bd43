from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from streamnodes.sharding import assign_episodes, epoch_order, equal_rank_quota, plan_epoch


def test_epoch_order_is_a_permutation_per_seed_and_epoch() -> None:
    eps = list(range(50))
    a = epoch_order(eps, seed=0, epoch=0, shuffle=True)
    assert sorted(a) == eps and a != eps
    assert a == epoch_order(eps, seed=0, epoch=0, shuffle=True)
    assert a != epoch_order(eps, seed=0, epoch=1, shuffle=True)
    assert a != epoch_order(eps, seed=1, epoch=0, shuffle=True)
    assert epoch_order([3, 1, 2], seed=0, epoch=5, shuffle=False) == [1, 2, 3]


def test_assign_balances_frames_greedily() -> None:
    parts = assign_episodes([0, 1, 2, 3, 4], [10, 1, 1, 1, 8], 2)
    assert parts == [[0], [1, 2, 3, 4]]
    assert assign_episodes([0, 1], [5, 5], 3) == [[0], [1], []]


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 50), min_size=1, max_size=40),
    consumers=st.integers(1, 9),
    seed=st.integers(0, 2**32),
    epoch=st.integers(0, 5),
)
def test_plan_covers_every_episode_once_and_balances(lengths, consumers, seed, epoch) -> None:
    by_ep = dict(enumerate(lengths))
    plan = plan_epoch(by_ep, seed=seed, epoch=epoch, shuffle=True, num_consumers=consumers)
    flat = [e for part in plan.episodes for e in part]
    assert sorted(flat) == list(by_ep)
    assert list(plan.frames) == [sum(by_ep[e] for e in p) for p in plan.episodes]
    assert max(plan.frames) - min(plan.frames) <= max(lengths)


def test_equal_rank_quota_trims_to_minimum_per_worker() -> None:
    by_ep = {i: n for i, n in enumerate([10, 20, 30, 40, 50, 60, 70])}
    plan = plan_epoch(by_ep, seed=0, epoch=0, shuffle=True, num_consumers=4)  # 2 ranks x 2 workers
    quota, trimmed = equal_rank_quota(plan, world_size=2, num_workers=2)
    frames = list(plan.frames)
    assert quota == [min(frames[0], frames[2]), min(frames[1], frames[3])]
    assert trimmed == sum(frames) - 2 * sum(quota)
    assert plan.rank_frames(2, 2) == [frames[0] + frames[1], frames[2] + frames[3]]
    single = plan_epoch(by_ep, seed=0, epoch=0, shuffle=True, num_consumers=3)
    assert equal_rank_quota(single, world_size=1, num_workers=3) == (list(single.frames), 0)
