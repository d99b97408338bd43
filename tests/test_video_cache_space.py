"""SpaceBudget: the video cache's byte accounting, pure (no threads, no files)."""

from __future__ import annotations

import pytest

from streamnodes.errors import ConfigError
from streamnodes.video_cache.space import SpaceBudget, human


def test_take_and_release_keep_used_and_peak_within_max_bytes() -> None:
    budget = SpaceBudget(100)
    assert budget.fits(100) and not budget.fits(101)
    budget.take("a", 60)
    budget.take("b", 30)
    assert (budget.used, budget.peak, budget.holders) == (90, 90, 2)
    assert budget.held("a") == 60 and budget.held("b") == 30 and budget.held("c") == 0
    assert budget.fits(10) and not budget.fits(11)
    with pytest.raises(ValueError, match="11 bytes do not fit: 90 of max_bytes=100"):
        budget.take("c", 11)
    assert budget.used == 90  # a refused take changes nothing
    assert budget.release("a") == 60
    assert (budget.used, budget.peak, budget.holders) == (30, 90, 1)
    assert budget.release("a") == 0  # nothing left to free
    budget.take("b", 70)  # a holder grows (bytes of unknown size arriving)
    assert budget.held("b") == 100 and budget.peak == 100
    assert budget.release("b") == 100 and budget.used == 0 and budget.holders == 0


def test_a_holder_larger_than_max_bytes_fails_at_once_naming_it() -> None:
    budget = SpaceBudget(100)
    assert budget.fits_alone("x", 100) and not budget.fits_alone("x", 101)
    budget.require_fits_alone("x", 100, "http://h/videos/a.mp4")  # exactly max_bytes is fine
    with pytest.raises(ConfigError, match=r"^http://h/videos/a\.mp4: 101 B does not fit in the video cache \(max_bytes=100 B\)\. Raise"):
        budget.require_fits_alone("x", 101, "http://h/videos/a.mp4")
    # What the holder already has counts (a file of unknown size growing past the bound) ...
    budget.take("x", 80)
    with pytest.raises(ConfigError, match=r"121 B does not fit"):
        budget.require_fits_alone("x", 41, "u")
    # ... what others hold does not: they may go away, so waiting can succeed.
    budget.take("y", 20)
    assert not budget.fits(1) and budget.fits_alone("z", 100)
    budget.require_fits_alone("z", 100, "u")


def test_space_is_granted_in_arrival_order() -> None:
    budget = SpaceBudget(100)
    budget.take("held", 70)
    budget.join("big")  # needs 50: must wait
    budget.join("small")  # needs 10: fits, but stays behind "big"
    budget.join("small")  # joining twice keeps its place
    assert budget.waiting == 2
    assert not budget.may_take("big", 50)
    assert not budget.may_take("small", 10)
    budget.release("held")
    assert budget.may_take("big", 50) and not budget.may_take("small", 10)
    budget.take("big", 50)
    budget.leave("big")
    assert budget.may_take("small", 10) and not budget.may_take("small", 51)
    budget.leave("small")
    budget.leave("small")  # leaving twice is harmless
    assert budget.waiting == 0
    assert budget.may_take("anyone", 50)  # no line: whoever fits may take


def test_a_waiter_giving_up_lets_the_next_one_move_up() -> None:
    budget = SpaceBudget(10)
    budget.take("held", 10)
    for holder in ("a", "b", "c"):
        budget.join(holder)
    budget.leave("b")  # b gave up (cancelled) from the middle of the line
    budget.release("held")
    assert budget.may_take("a", 5) and not budget.may_take("c", 5)
    budget.leave("a")  # a gave up without taking
    assert budget.may_take("c", 10)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="max_bytes must be > 0"):
        SpaceBudget(0)
    with pytest.raises(ValueError, match="cannot take -1 bytes"):
        SpaceBudget(10).take("a", -1)


def test_human_byte_counts() -> None:
    assert [human(n) for n in (0, 100, 1023, 1024, 4308, 5 * 1024**2, 3 * 1024**3)] == [
        "0 B", "100 B", "1023 B", "1.0 KiB", "4.2 KiB", "5.0 MiB", "3.00 GiB",
    ]
