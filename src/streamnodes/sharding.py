"""Which episodes each consumer (rank x worker) reads in an epoch, and how many frames each yields.

Pure functions of metadata and configuration: every consumer computes the same global order for an
epoch from (seed, epoch) and takes its own disjoint part, so no communication is needed.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from streamnodes.rng import make_rng


def epoch_order(episode_indices: Sequence[int], *, seed: int, epoch: int, shuffle: bool) -> list[int]:
    """The global episode order of an epoch: a permutation from (seed, epoch), or storage order."""
    ordered = sorted(int(i) for i in episode_indices)
    if not shuffle:
        return ordered
    perm = make_rng(seed, epoch, "episode-order").permutation(len(ordered))
    return [ordered[i] for i in perm]


def assign_episodes(order: Sequence[int], lengths: Sequence[int], num_consumers: int) -> list[list[int]]:
    """Split ``order`` into ``num_consumers`` disjoint lists balanced by frames.

    Greedy in order: each episode goes to the consumer with the fewest frames so far (ties to the
    lowest id). Every consumer keeps the global order; totals differ by at most one episode length.
    ``lengths[k]`` is the length of episode ``order[k]``.
    """
    if num_consumers < 1:
        raise ValueError(f"num_consumers must be >= 1, got {num_consumers}")
    parts: list[list[int]] = [[] for _ in range(num_consumers)]
    heap = [(0, c) for c in range(num_consumers)]
    for episode, length in zip(order, lengths, strict=True):
        frames, c = heapq.heappop(heap)
        parts[c].append(int(episode))
        heapq.heappush(heap, (frames + int(length), c))
    return parts


@dataclass(frozen=True)
class EpochPlan:
    """The episodes and frame totals of every consumer in one epoch."""

    episodes: tuple[tuple[int, ...], ...]  # per consumer c = rank * num_workers + worker
    frames: tuple[int, ...]  # per consumer

    def rank_frames(self, world_size: int, num_workers: int) -> list[int]:
        """Frames each rank would yield (sum over its workers)."""
        return [sum(self.frames[r * num_workers : (r + 1) * num_workers]) for r in range(world_size)]


def plan_epoch(
    lengths_by_episode: dict[int, int],
    *,
    seed: int,
    epoch: int,
    shuffle: bool,
    num_consumers: int,
) -> EpochPlan:
    """Assign the episodes of one epoch to ``num_consumers`` consumers (see :func:`assign_episodes`)."""
    order = epoch_order(list(lengths_by_episode), seed=seed, epoch=epoch, shuffle=shuffle)
    parts = assign_episodes(order, [lengths_by_episode[e] for e in order], num_consumers)
    return EpochPlan(
        episodes=tuple(tuple(p) for p in parts),
        frames=tuple(sum(lengths_by_episode[e] for e in p) for p in parts),
    )


def equal_rank_quota(plan: EpochPlan, world_size: int, num_workers: int) -> tuple[list[int], int]:
    """Per-worker frame quotas that make every rank yield the same samples and the same batches.

    Policy ("trim to the minimum"): worker ``w`` of every rank yields
    ``min over ranks r of frames(r, w)``. Every rank then has identical per-worker counts, so with
    the same batch size each rank yields the same number of batches (workers batch separately),
    and data-parallel training cannot hang waiting for a rank that ran out. The frames left out
    are the last draws of the epoch (random frames, different every epoch). Returns
    ``(quota per worker, total trimmed frames over all ranks)``. With one rank nothing is trimmed.
    """
    frames = np.asarray(plan.frames, dtype=np.int64).reshape(world_size, num_workers)
    quota = frames.min(axis=0)
    trimmed = int(frames.sum() - quota.sum() * world_size)
    return [int(q) for q in quota], trimmed
