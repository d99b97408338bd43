"""The video cache's entries: one per file residency, refcounted, with an explicit state.

Pure bookkeeping (no locks, no I/O): the cache calls these under its lock and acts on what they
return (deletes the file, frees the space). An entry lives in the table while handles reference it;
acquiring its URL again counts one more reference (one download per residency).
"""

from __future__ import annotations

import enum
import os
import posixpath
import threading
import urllib.parse
from dataclasses import dataclass, field

__all__ = ["Entry", "EntryState", "EntryTable", "Release"]


class EntryState(enum.Enum):
    """Where an entry's local copy is; the values are the words messages and ``repr`` show."""

    PENDING = "pending"  # acquired, download not started
    WAITING_SPACE = "waiting for space"  # the download waits for max_bytes to allow it
    DOWNLOADING = "downloading"
    READY = "ready"  # the local copy is complete
    FAILED = "failed"  # the download failed or the cache closed under it (``error`` says which)
    RELEASED = "released"  # no longer referenced (or the cache closed): file deleted or download cancelled

    @property
    def in_progress(self) -> bool:
        return self in _IN_PROGRESS


_IN_PROGRESS = frozenset({EntryState.PENDING, EntryState.WAITING_SPACE, EntryState.DOWNLOADING})
_NEXT: dict[EntryState, frozenset[EntryState]] = {
    EntryState.PENDING: frozenset(
        {EntryState.WAITING_SPACE, EntryState.DOWNLOADING, EntryState.FAILED, EntryState.RELEASED}
    ),
    EntryState.WAITING_SPACE: frozenset({EntryState.DOWNLOADING, EntryState.FAILED, EntryState.RELEASED}),
    # An entry of unknown size reserves as bytes arrive, so it may wait for space again.
    EntryState.DOWNLOADING: frozenset(
        {EntryState.WAITING_SPACE, EntryState.READY, EntryState.FAILED, EntryState.RELEASED}
    ),
    EntryState.READY: frozenset({EntryState.RELEASED}),
    EntryState.FAILED: frozenset(),
    EntryState.RELEASED: frozenset(),
}


class Release(enum.Enum):
    """What dropping a reference asks of the cache."""

    HELD = "still referenced"  # nothing to do
    DELETE = "delete the file"  # the last reference on a complete copy: delete it, free its space
    CANCEL = "cancel the download"  # the last reference on a download in progress: its worker stops
    NOTHING = "nothing"  # the last reference on a failed or already released entry


@dataclass(eq=False)
class Entry:
    """One residency of a remote file: its URL, local path, references, state and outcome."""

    url: str
    name: str
    path: str
    refs: int = 0
    state: EntryState = EntryState.PENDING
    size: int | None = None  # bytes, once known
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)  # set when READY or given up

    def move(self, state: EntryState) -> None:
        """Change state; raises RuntimeError on a transition the cache never makes (a bug)."""
        if state is not self.state and state not in _NEXT[self.state]:
            raise RuntimeError(f"video cache entry {self.url}: cannot go from {self.state.name} to {state.name}")
        self.state = state


class EntryTable:
    """The referenced entries, by URL; local names are unique per residency (``000042-file-007.mp4``)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._entries: dict[str, Entry] = {}
        self._serial = 0

    def acquire(self, url: str) -> tuple[Entry, bool]:
        """One more reference on ``url``'s entry: ``(entry, True)`` if it was there, else a new one."""
        entry = self._entries.get(url)
        if entry is not None:
            entry.refs += 1
            return entry, True
        self._serial += 1
        base = posixpath.basename(urllib.parse.urlsplit(url).path) or "video"
        name = f"{self._serial:06d}-{base}"
        entry = Entry(url=url, name=name, path=os.path.join(self.directory, name), refs=1)
        self._entries[url] = entry
        return entry, False

    def release(self, entry: Entry) -> Release:
        """Drop one reference; the last one takes the entry out of the table and says what to do."""
        if entry.refs <= 0:
            raise RuntimeError(f"video cache entry {entry.url}: released more often than acquired")
        entry.refs -= 1
        if entry.refs > 0:
            return Release.HELD
        self.forget(entry)
        if entry.state is EntryState.READY:
            entry.move(EntryState.RELEASED)
            return Release.DELETE
        if entry.state.in_progress:
            entry.move(EntryState.RELEASED)
            return Release.CANCEL
        return Release.NOTHING

    def forget(self, entry: Entry) -> None:
        """Take ``entry`` out of the table (if it is still there): the next acquire of its URL starts afresh."""
        if self._entries.get(entry.url) is entry:
            del self._entries[entry.url]

    def clear(self) -> list[Entry]:
        """Take every entry out (the cache closes); returns them."""
        entries = list(self._entries.values())
        self._entries.clear()
        return entries

    def get(self, url: str) -> Entry | None:
        return self._entries.get(url)

    @property
    def ready(self) -> int:
        """How many entries have a complete local copy."""
        return sum(1 for e in self._entries.values() if e.state is EntryState.READY)

    def __len__(self) -> int:
        return len(self._entries)
