"""Space accounting for the video cache: a byte budget shared by holders, granted in arrival order.

Pure bookkeeping, no locks, no I/O and no notion of files: a *holder* is any hashable token (the
cache uses its entries; a cache of byte ranges could use spans). The caller serialises the calls
(the cache holds its lock) and does the waiting; :class:`SpaceBudget` only says who may take what.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable

from streamnodes.errors import ConfigError

__all__ = ["SpaceBudget", "human"]


def human(nbytes: float) -> str:
    """``nbytes`` for messages: ``100 B``, ``4.2 KiB``, ``7.5 MiB``, ``2.00 GiB``."""
    for unit in ("B", "KiB", "MiB"):
        if abs(nbytes) < 1024:
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return f"{nbytes:.2f} GiB"


class SpaceBudget:
    """At most ``max_bytes`` reserved at once, over all holders; waiting holders are served in order.

    A holder that needs space joins the line (:meth:`join`), takes its bytes once it is first in line
    and they fit (:meth:`may_take`, :meth:`take`), and leaves the line (:meth:`leave`) whether it got
    them or gave up. :meth:`release` returns everything a holder has taken. ``peak`` is the most ever
    reserved at once.
    """

    def __init__(self, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be > 0, got {max_bytes}")
        self.max_bytes = max_bytes
        self.used = 0
        self.peak = 0
        self._held: dict[Hashable, int] = {}
        self._line: deque[Hashable] = deque()

    def held(self, holder: Hashable) -> int:
        """Bytes ``holder`` has taken and not released."""
        return self._held.get(holder, 0)

    @property
    def holders(self) -> int:
        """How many holders hold bytes."""
        return len(self._held)

    def fits(self, nbytes: int) -> bool:
        """Whether ``nbytes`` more fit now."""
        return self.used + nbytes <= self.max_bytes

    def fits_alone(self, holder: Hashable, nbytes: int) -> bool:
        """Whether ``holder`` could ever hold ``nbytes`` more (with every other holder gone)."""
        return self.held(holder) + nbytes <= self.max_bytes

    def require_fits_alone(self, holder: Hashable, nbytes: int, name: str) -> None:
        """Raise ConfigError (naming ``name``) if ``holder`` can never get ``nbytes`` more: waiting is futile."""
        if not self.fits_alone(holder, nbytes):
            raise ConfigError(
                f"{name}: {human(self.held(holder) + nbytes)} does not fit in the video cache "
                f"(max_bytes={human(self.max_bytes)}). Raise the Prefetcher's max_bytes above the "
                "largest video file of the dataset (several files, as many as the pool holds at once, are best).",
                path=name,
            )

    def join(self, holder: Hashable) -> None:
        """Queue ``holder`` for space (behind those already waiting); no-op if it is in line."""
        if holder not in self._line:
            self._line.append(holder)

    def leave(self, holder: Hashable) -> None:
        """Take ``holder`` out of the line (no-op if it is not in it): the next one moves up."""
        if holder in self._line:
            self._line.remove(holder)

    @property
    def waiting(self) -> int:
        """How many holders are in line."""
        return len(self._line)

    def may_take(self, holder: Hashable, nbytes: int) -> bool:
        """Whether ``holder`` may take ``nbytes`` now: it is first in line (or no one is) and they fit."""
        first = self._line[0] if self._line else holder
        return first == holder and self.fits(nbytes)

    def take(self, holder: Hashable, nbytes: int) -> None:
        """Reserve ``nbytes`` for ``holder``; raises ValueError if they do not fit (check :meth:`fits`)."""
        if nbytes < 0:
            raise ValueError(f"cannot take {nbytes} bytes")
        if not self.fits(nbytes):
            raise ValueError(
                f"{nbytes} bytes do not fit: {self.used} of max_bytes={self.max_bytes} are reserved"
            )
        self._held[holder] = self.held(holder) + nbytes
        self.used += nbytes
        self.peak = max(self.peak, self.used)

    def release(self, holder: Hashable) -> int:
        """Return every byte ``holder`` holds (0 if none); returns how many."""
        freed = self._held.pop(holder, 0)
        self.used -= freed
        return freed
