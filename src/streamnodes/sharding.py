"""Which frames each consumer (rank x worker) reads in an epoch: pure functions of metadata and configuration.

Every consumer computes the same global episode order for an epoch from ``(seed, epoch)``, lays the
episodes' frames end to end and takes its own contiguous share of that sequence, balanced to one frame
(:func:`plan_epoch`). An episode on a share boundary is split: each consumer gets a :class:`Piece`, a
disjoint part of that episode's frames. No communication is needed.

An elastic resume (docs/checkpointing.md) deals the undelivered remainder of an epoch, itself a list of
pieces, over a new set of consumers with the same arithmetic (:func:`split_pieces`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, overload

import numpy as np

from streamnodes.rng import make_rng


class Piece(NamedTuple):
    """A part of one episode's frames: positions ``lo:hi`` of the draw order of frames ``[start, stop)``.

    The draw order is :func:`frame_order` of the frames ``[start, stop)`` (a permutation fixed by seed,
    epoch, episode and ``start``; storage order without shuffle), so a piece is a few integers whatever
    its frames: a fresh piece is ``lo=0, hi=stop-start``; a pooled episode partly drawn is the same piece
    with ``lo`` advanced; one frame left in a shuffle buffer is ``(episode, f, f + 1, 0, 1)``.
    """

    episode: int
    start: int
    stop: int
    lo: int
    hi: int

    @property
    def frames(self) -> int:
        return self.hi - self.lo

    @classmethod
    def whole(cls, episode: int, length: int) -> Piece:
        return cls(int(episode), 0, int(length), 0, int(length))


def frame_order(length: int, *, seed: int, epoch: int, episode_index: int, shuffle: bool, start: int = 0) -> np.ndarray:
    """The order the frames ``[start, start + length)`` of an episode are drawn in.

    A permutation fixed by ``(seed, epoch, episode_index, start)`` (``start`` enters the key only when
    it is not 0, so a whole episode's order is the one of earlier releases). Drawing "the next frame of
    this order" is the same as drawing uniformly among the pending frames, and it makes the pending set
    a counter instead of a list. Every consumer computes the same order for the same piece, which is
    what lets an elastic resume hand a partly drawn piece to another consumer.
    """
    if not shuffle:
        return np.arange(start, start + length)
    key = (episode_index,) if start == 0 else (episode_index, start)
    return make_rng(seed, epoch, "frame-order", *key).permutation(length) + start


def epoch_order(episode_indices: Sequence[int], *, seed: int, epoch: int, shuffle: bool) -> list[int]:
    """The global episode order of an epoch: a permutation from (seed, epoch), or storage order."""
    ordered = sorted(int(i) for i in episode_indices)
    if not shuffle:
        return ordered
    perm = make_rng(seed, epoch, "episode-order").permutation(len(ordered))
    return [ordered[i] for i in perm]


def share_bounds(total: int, num_consumers: int) -> list[int]:
    """Boundaries of ``num_consumers`` contiguous shares of ``total`` items: share c is ``[b[c], b[c+1])``.

    Shares differ by at most one item (the larger ones last).
    """
    if num_consumers < 1:
        raise ValueError(f"num_consumers must be >= 1, got {num_consumers}")
    return [c * total // num_consumers for c in range(num_consumers + 1)]


def split_pieces(pieces: Iterable[Piece], num_consumers: int) -> list[list[Piece]]:
    """Lay ``pieces``' frames end to end and cut them into contiguous shares balanced to one frame.

    A fresh piece (nothing drawn: ``lo=0``, ``hi=stop-start``) crossing a boundary is cut into frame
    ranges, ``(e, s, s+k, 0, k)`` and ``(e, s+k, t, 0, t-s-k)``, whose draw orders any consumer computes
    alone. A partly drawn piece (an elastic remainder) is cut at a draw position of its order:
    ``(e, s, t, lo, lo+k)`` and ``(e, s, t, lo+k, hi)``. Shares keep the input order; with one consumer
    the pieces come back unchanged.
    """
    pieces = [p for p in pieces if p.frames > 0]
    bounds = share_bounds(sum(p.frames for p in pieces), num_consumers)
    parts: list[list[Piece]] = [[] for _ in range(num_consumers)]
    c, laid = 0, 0  # laid: frames placed so far
    for piece in pieces:
        fresh = piece.lo == 0 and piece.hi == piece.stop - piece.start
        done = 0  # frames of this piece placed
        while done < piece.frames:
            while laid >= bounds[c + 1]:
                c += 1
            take = min(piece.frames - done, bounds[c + 1] - laid)
            if take == piece.frames:
                part = piece
            elif fresh:
                start = piece.start + done
                part = Piece(piece.episode, start, start + take, 0, take)
            else:
                part = piece._replace(lo=piece.lo + done, hi=piece.lo + done + take)
            parts[c].append(part)
            done += take
            laid += take
    return parts


@dataclass(frozen=True)
class Remainder:
    """The undelivered rest of ``epoch`` after an elastic resume: in that epoch these pieces are dealt
    over the consumers (:func:`split_pieces`) instead of the epoch's own plan."""

    epoch: int
    pieces: tuple[Piece, ...]

    def deal(self, num_consumers: int) -> list[list[Piece]]:
        return split_pieces(self.pieces, num_consumers)

    def to_state(self) -> list[Any]:
        """Plain types for a state: ``[epoch, [[episode, start, stop, lo, hi], ...]]``."""
        return [self.epoch, [list(p) for p in self.pieces]]

    @classmethod
    def from_state(cls, saved: Sequence[Any] | None) -> Remainder | None:
        if not saved:
            return None
        return cls(int(saved[0]), tuple(Piece(*(int(v) for v in p)) for p in saved[1]))


@dataclass(frozen=True)
class EpochPlan:
    """The pieces and frame totals of every consumer in one epoch (consumer c = rank * num_workers + worker)."""

    pieces: tuple[tuple[Piece, ...], ...]
    frames: tuple[int, ...]

    @classmethod
    def of(cls, parts: Sequence[Sequence[Piece]]) -> EpochPlan:
        return cls(tuple(tuple(p) for p in parts), tuple(sum(x.frames for x in p) for p in parts))

    @property
    def episodes(self) -> tuple[tuple[int, ...], ...]:
        """The episodes each consumer reads (an episode split between consumers appears in each)."""
        return tuple(tuple(p.episode for p in part) for part in self.pieces)

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
    """Deal one epoch's frames to ``num_consumers`` consumers, balanced to one frame.

    The episodes in the epoch's order (:func:`epoch_order`) are laid end to end and cut into contiguous
    shares: every frame exactly once, each consumer's share a run of whole episodes with at most a part
    of one at each end (the same cut as :func:`split_pieces`). ``shuffle=False`` keeps storage order
    within and across shares.
    """
    episodes = np.asarray(sorted(lengths_by_episode), dtype=np.int64)
    lengths = np.asarray([lengths_by_episode[int(e)] for e in episodes], dtype=np.int64)
    layout = EpochLayout(episodes, lengths, seed=seed, epoch=epoch, shuffle=shuffle)
    return EpochPlan.of([list(layout.share(c, num_consumers)) for c in range(num_consumers)])


class Share(Sequence[Piece]):
    """One consumer's pieces of a fresh epoch, made on demand from numpy columns (:meth:`EpochLayout.share`).

    At 100k episodes a worker keeps a few arrays, not a Python object per episode.
    """

    def __init__(self, episodes: np.ndarray, starts: np.ndarray, lengths: np.ndarray, lo: int, hi: int) -> None:
        self._episodes, self._starts, self._lengths = episodes, starts, lengths  # the share's episodes, laid out
        self._lo, self._hi = lo, hi  # the share's frames in the epoch's layout

    def __len__(self) -> int:
        return len(self._episodes)

    @overload
    def __getitem__(self, k: int) -> Piece: ...
    @overload
    def __getitem__(self, k: slice) -> list[Piece]: ...
    def __getitem__(self, k: int | slice) -> Piece | list[Piece]:
        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(len(self)))]
        if k < 0:
            k += len(self)
        if not 0 <= k < len(self):
            raise IndexError(k)
        at, length = int(self._starts[k]), int(self._lengths[k])
        start, stop = max(0, self._lo - at), min(length, self._hi - at)
        return Piece(int(self._episodes[k]), start, stop, 0, stop - start)

    @property
    def frames(self) -> int:
        return self._hi - self._lo


class EpochLayout:
    """An epoch's episodes in its order, laid end to end: where each episode's frames start and end.

    ``episodes`` (sorted ascending) and ``lengths`` are the epoch's episodes as columns; the order is
    :func:`epoch_order`'s (a permutation from ``(seed, epoch)``, or storage order).
    """

    def __init__(self, episodes: np.ndarray, lengths: np.ndarray, *, seed: int, epoch: int, shuffle: bool) -> None:
        n = len(episodes)
        self.order = make_rng(seed, epoch, "episode-order").permutation(n) if shuffle else np.arange(n)
        self.episodes = np.asarray(episodes)[self.order]
        self.laid = np.asarray(lengths, dtype=np.int64)[self.order]
        self.ends = np.cumsum(self.laid)

    @property
    def frames(self) -> int:
        return int(self.ends[-1]) if len(self.ends) else 0

    def share(self, consumer: int, num_consumers: int) -> Share:
        """Consumer ``consumer``'s contiguous share of the frames (:func:`share_bounds`), as pieces."""
        bounds = share_bounds(self.frames, num_consumers)
        lo, hi = bounds[consumer], bounds[consumer + 1]
        starts = self.ends - self.laid
        first = int(np.searchsorted(self.ends, lo, side="right"))
        last = int(np.searchsorted(starts, hi, side="left")) if hi > lo else first
        return Share(self.episodes[first:last], starts[first:last], self.laid[first:last], lo, hi)


def epoch_share(
    episodes: np.ndarray, lengths: np.ndarray, *, seed: int, epoch: int, shuffle: bool, num_consumers: int, consumer: int
) -> Share:
    """Consumer ``consumer``'s pieces of :func:`plan_epoch`'s deal, without making the other consumers'."""
    return EpochLayout(episodes, lengths, seed=seed, epoch=epoch, shuffle=shuffle).share(consumer, num_consumers)


def equal_rank_quota(plan: EpochPlan, world_size: int, num_workers: int) -> tuple[list[int], int]:
    """Per-worker frame quotas that make every rank yield the same samples and the same batches.

    Worker ``w`` of every rank yields ``min over ranks r of frames(r, w)``: every rank then has
    identical per-worker counts, so with the same batch size each rank yields the same number of
    batches (workers batch separately) and data-parallel training cannot hang waiting for a rank that
    ran out. Shares are balanced to one frame, so at most one frame per consumer is left out (the last
    draw of its epoch). Returns ``(quota per worker, total trimmed frames over all ranks)``. With one
    rank nothing is trimmed.
    """
    frames = np.asarray(plan.frames, dtype=np.int64).reshape(world_size, num_workers)
    quota = frames.min(axis=0)
    trimmed = int(frames.sum() - quota.sum() * world_size)
    return [int(q) for q in quota], trimmed
