"""A lock that threads which must never block on it can still hand work to.

Handle finalizers run in whatever thread collects the handle, including inside a locked section of
that same thread (a garbage collection triggered there), so they must not wait for the lock. They
:meth:`~DeferringLock.defer` their work instead; it is applied by the first thread that can take the
lock at once, and always by the holder before it lets go.
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

__all__ = ["DeferringLock"]

T = TypeVar("T")


class DeferringLock(Generic[T]):
    """A plain (non-reentrant) lock with a queue of deferred items, each passed to ``apply`` under it.

    ``cond`` is a condition on the same lock, for waits inside :meth:`held` sections.
    """

    def __init__(self, apply: Callable[[T], None]) -> None:
        self._lock = threading.Lock()
        self.cond = threading.Condition(self._lock)
        self._apply = apply
        self._queue: deque[T] = deque()

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Hold the lock; on the way out, apply what was deferred meanwhile."""
        with self._lock:
            try:
                yield
            finally:
                self._apply_queued()
        self._drain()

    @contextlib.contextmanager
    def let_go(self) -> Iterator[None]:
        """Inside a :meth:`held` section: release the lock for a while, then take it back (and apply)."""
        self._lock.release()
        try:
            yield
        finally:
            self._lock.acquire()
            self._apply_queued()

    def defer(self, item: T) -> None:
        """Queue ``item``; apply it now if the lock is free, else its holder will (never blocks)."""
        self._queue.append(item)
        self._drain()

    def _apply_queued(self) -> None:
        while True:
            try:
                item = self._queue.popleft()
            except IndexError:
                return
            self._apply(item)

    def _drain(self) -> None:
        while self._queue:
            if not self._lock.acquire(blocking=False):
                return  # the holder applies the queue before letting go
            try:
                self._apply_queued()
            finally:
                self._lock.release()
