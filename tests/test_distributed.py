from __future__ import annotations

import pytest

from streamnodes.distributed import (
    Consumer,
    current_consumer,
    rank_and_world_size,
    reconcile,
    worker_and_count,
)
from streamnodes.errors import ConfigError


def test_explicit_arguments_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert rank_and_world_size(0, 2) == (0, 2)
    assert rank_and_world_size() == (1, 4)
    assert rank_and_world_size(rank=3) == (3, 4)


def test_defaults_without_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert rank_and_world_size() == (0, 1)
    assert worker_and_count() == (0, 1)
    assert worker_and_count(2, 3) == (2, 3)


def test_consumer_ids_are_rank_major() -> None:
    c = current_consumer(rank=1, world_size=2, worker_id=2, num_workers=3)
    assert (c.id, c.count) == (5, 6)
    with pytest.raises(ConfigError, match="rank 2 is not in"):
        Consumer(rank=2, world_size=2)
    with pytest.raises(ConfigError, match="worker_id 3"):
        Consumer(worker_id=3, num_workers=3)


def test_accelerate_disagreeing_with_the_launcher_is_an_error() -> None:
    assert reconcile((1, 2), (1, 2)) == (1, 2)
    assert reconcile((0, 1), None) == (0, 1)
    assert reconcile(None, (1, 2)) is None
    with pytest.raises(ConfigError, match=r"accelerate reports rank 0 of 1 processes, but the launcher set RANK=1, WORLD_SIZE=2.*cpu=True"):
        reconcile((0, 1), (1, 2))
