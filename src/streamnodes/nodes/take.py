"""Take: at most ``limit`` items of the source per epoch (the per-rank quota that equalises batches)."""

from __future__ import annotations

from typing import Any, TypeVar

from torchdata.nodes import BaseNode

from streamnodes.errors import ConfigError
from streamnodes.nodes._state import require_keys, shutdown_source

T = TypeVar("T")


class Take(BaseNode[T]):
    """Passes the first ``limit`` items of each epoch through and then stops.

    The recipe puts it before VideoDecode with the quota from
    :func:`streamnodes.sharding.equal_rank_quota`, so every rank yields the same number of samples
    (the frames left out are the epoch's last random draws). State: ``{"source", "taken"}``.
    """

    SOURCE_KEY = "source"
    TAKEN_KEY = "taken"

    def __init__(self, source: BaseNode[T], limit: int) -> None:
        super().__init__()
        if limit < 0:
            raise ConfigError(f"Take: limit must be >= 0, got {limit}.")
        self.source = source
        self.limit = int(limit)
        self._taken = 0

    def reset(self, initial_state: dict[str, Any] | None = None) -> None:
        super().reset(initial_state)
        if initial_state is None:
            self.source.reset(None)
            self._taken = 0
            return
        require_keys("Take", initial_state, (self.SOURCE_KEY, self.TAKEN_KEY))
        self.source.reset(initial_state[self.SOURCE_KEY])
        self._taken = int(initial_state[self.TAKEN_KEY])

    def next(self) -> T:
        if self._taken >= self.limit:
            raise StopIteration
        item = next(self.source)
        self._taken += 1
        return item

    def get_state(self) -> dict[str, Any]:
        return {self.SOURCE_KEY: self.source.state_dict(), self.TAKEN_KEY: self._taken}

    def shutdown(self) -> None:
        shutdown_source(self.source)

    def __repr__(self) -> str:
        return f"Take(limit={self.limit}, taken={self._taken})"
