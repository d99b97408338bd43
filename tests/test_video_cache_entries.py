"""EntryTable and EntryState: the video cache's references and entry lifecycle, pure (no threads, no I/O)."""

from __future__ import annotations

import pytest

from streamnodes.video_cache.entries import Entry, EntryState, EntryTable, Release

URL = "http://h/videos/chunk-000/file-007.mp4"


def test_acquiring_a_url_again_counts_a_reference_on_the_same_entry() -> None:
    table = EntryTable("/cache")
    a, hit_a = table.acquire(URL)
    b, hit_b = table.acquire(URL)
    other, _ = table.acquire("http://h/videos/chunk-000/file-008.mp4")
    assert (hit_a, hit_b) == (False, True) and a is b and a.refs == 2
    assert a.state is EntryState.PENDING and not a.done.is_set()
    assert a.name == "000001-file-007.mp4" and a.path == "/cache/000001-file-007.mp4"
    assert other.name == "000002-file-008.mp4" and len(table) == 2
    assert table.acquire("http://h/")[0].name == "000003-video"  # a URL without a file name


def test_the_last_release_of_a_ready_entry_deletes_and_a_new_residency_gets_a_new_name() -> None:
    table = EntryTable("/cache")
    entry, _ = table.acquire(URL)
    table.acquire(URL)
    for state in (EntryState.DOWNLOADING, EntryState.READY):
        entry.move(state)
    assert table.ready == 1
    assert table.release(entry) is Release.HELD and entry.state is EntryState.READY and table.get(URL) is entry
    assert table.release(entry) is Release.DELETE
    assert entry.state is EntryState.RELEASED and entry.refs == 0 and table.get(URL) is None and len(table) == 0
    again, hit = table.acquire(URL)
    assert not hit and again is not entry and again.name == "000002-file-007.mp4"


@pytest.mark.parametrize("state", [EntryState.PENDING, EntryState.WAITING_SPACE, EntryState.DOWNLOADING])
def test_the_last_release_of_a_download_in_progress_cancels_it(state: EntryState) -> None:
    table = EntryTable("/cache")
    entry, _ = table.acquire(URL)
    if state is not EntryState.PENDING:
        entry.move(state)
    assert entry.state.in_progress
    assert table.release(entry) is Release.CANCEL
    assert entry.state is EntryState.RELEASED and table.get(URL) is None
    with pytest.raises(RuntimeError, match="cannot go from RELEASED to READY"):
        entry.move(EntryState.READY)  # a cancelled download never completes


def test_a_failed_entry_is_forgotten_while_its_handles_still_hold_it() -> None:
    table = EntryTable("/cache")
    failed, _ = table.acquire(URL)
    table.acquire(URL)
    failed.move(EntryState.FAILED)
    table.forget(failed)  # the next acquire tries afresh ...
    fresh, hit = table.acquire(URL)
    assert not hit and fresh is not failed and table.get(URL) is fresh
    # ... while the old handles release the failed entry without touching the new one.
    assert table.release(failed) is Release.HELD
    assert table.release(failed) is Release.NOTHING
    assert failed.state is EntryState.FAILED and table.get(URL) is fresh and fresh.refs == 1
    table.forget(failed)  # forgetting an entry no longer in the table is harmless
    assert table.get(URL) is fresh


def test_releasing_more_often_than_acquiring_is_an_error() -> None:
    table = EntryTable("/cache")
    entry, _ = table.acquire(URL)
    assert table.release(entry) is Release.CANCEL
    with pytest.raises(RuntimeError, match=rf"{URL}: released more often than acquired"):
        table.release(entry)
    assert entry.refs == 0


def test_clear_takes_every_entry_out_and_released_entries_stay_released() -> None:
    table = EntryTable("/cache")
    ready, _ = table.acquire(URL)
    ready.move(EntryState.DOWNLOADING)
    ready.move(EntryState.READY)
    pending, _ = table.acquire("http://h/b.mp4")
    assert set(table.clear()) == {ready, pending} and len(table) == 0 and table.ready == 0
    ready.move(EntryState.RELEASED)  # the closing cache deleted its file
    # A handle released after the close: nothing left to do, nothing in the table.
    assert table.release(ready) is Release.NOTHING and ready.state is EntryState.RELEASED


def test_state_transitions() -> None:
    entry = Entry(url=URL, name="n", path="p")
    entry.move(EntryState.PENDING)  # staying put is always allowed
    entry.move(EntryState.WAITING_SPACE)
    entry.move(EntryState.DOWNLOADING)
    entry.move(EntryState.WAITING_SPACE)  # size unknown: reserves again as bytes arrive
    entry.move(EntryState.DOWNLOADING)
    with pytest.raises(RuntimeError, match="cannot go from DOWNLOADING to PENDING"):
        entry.move(EntryState.PENDING)
    entry.move(EntryState.FAILED)
    for state in EntryState:
        if state is not EntryState.FAILED:
            with pytest.raises(RuntimeError, match=f"cannot go from FAILED to {state.name}"):
                entry.move(state)
    ready = Entry(url=URL, name="n", path="p", state=EntryState.READY)
    with pytest.raises(RuntimeError, match="cannot go from READY to FAILED"):
        ready.move(EntryState.FAILED)
    assert [s.value for s in EntryState] == [
        "pending", "waiting for space", "downloading", "ready", "failed", "released",
    ]
    assert {s for s in EntryState if s.in_progress} == {
        EntryState.PENDING, EntryState.WAITING_SPACE, EntryState.DOWNLOADING,
    }
