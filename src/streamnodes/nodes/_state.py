"""Small shared helpers for nodes: state checks (so every node words its errors the same way), shutdown."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from streamnodes.errors import StateError


def require_keys(node: str, state: Mapping[str, Any], keys: Iterable[str]) -> None:
    """Raise :class:`StateError` when ``state`` lacks any of ``keys`` (a state of another node?)."""
    if not isinstance(state, Mapping):
        raise StateError(f"{node}: expected a state dict, got {type(state).__name__}.")
    missing = [k for k in keys if k not in state]
    if missing:
        raise StateError(
            f"{node}: the state lacks keys {missing} (it has {sorted(state)}); it was not saved by a {node} "
            "of this version. Restore a state saved by the same pipeline."
        )


def check_config(node: str, saved: Mapping[str, Any], current: Mapping[str, Any]) -> None:
    """Raise :class:`StateError` naming every setting where ``saved`` differs from ``current``."""
    diffs = {k: (saved.get(k), v) for k, v in current.items() if saved.get(k) != v}
    if diffs:
        described = ", ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in diffs.items())
        raise StateError(
            f"{node}: the state was saved with another configuration ({described}). Build the pipeline "
            "with the saved settings to resume, or start fresh without the state."
        )


def next_epoch(state_epoch: int | None, current: int | None, initial: int) -> int:
    """Epoch for a reset: the saved one, else the first reset uses ``initial``, later ones count up."""
    if state_epoch is not None:
        return int(state_epoch)
    return initial if current is None else current + 1


def shutdown_source(node: Any) -> None:
    """Call ``node.shutdown()`` when it has one: torchdata's shutdown chain, where a node releases its
    own resources and then its source's (``torchdata.nodes.BaseNode`` itself defines none)."""
    shutdown = getattr(node, "shutdown", None)
    if callable(shutdown):
        shutdown()
