"""The state header: version, epoch, topology and stream fingerprint, written and checked in one place.

Two states carry it: each consumer's dataset state (the bridge, topology ``[rank, world_size,
worker, num_workers]``) and the loader's own (``[rank, world_size, num_workers]``). A state is
refused with a :class:`~streamnodes.errors.StateError` that says what differs and what to do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from streamnodes.errors import StateError

#: 2: the dataset state holds ``skipped`` (EpisodeGuard's episodes) as its own field.
#: 3: frame-balanced shares (pieces of episodes); pool entries are [episode, start, stop, next, hi].
STATE_VERSION = 3

VERSION_KEY = "version"
EPOCH_KEY = "epoch"
CONFIG_KEY = "config"


def write_header(epoch: int, topology_key: str, topology: Sequence[int], fingerprint: str) -> dict[str, Any]:
    """The header fields of a state (plain types)."""
    return {VERSION_KEY: STATE_VERSION, EPOCH_KEY: int(epoch), topology_key: list(topology), CONFIG_KEY: fingerprint}


def check_header(
    saved: Mapping[str, Any],
    topology_key: str,
    topology: Sequence[int] | None,
    fingerprint: str,
    *,
    names: Sequence[str] = (),
    remedy: str = "",
) -> None:
    """Raise :class:`StateError` when ``saved``'s version, topology or stream fingerprint differ from now's.

    ``names`` are the topology fields (e.g. ``("rank", "world_size", "worker", "num_workers")``), named
    one by one where they differ; ``remedy`` says how to restore correctly. ``topology=None`` checks the
    version and fingerprint only (an elastic resume takes states of any topology).
    """
    version = saved.get(VERSION_KEY)
    if version != STATE_VERSION:
        raise StateError(
            f"the loader state has version {version!r}; this streamnodes writes version {STATE_VERSION}. "
            "States do not carry over between these versions: start the data stream fresh."
        )
    now = list(topology) if topology is not None else None
    before = saved.get(topology_key)
    if now is not None and before != now:
        diffs = ""
        if isinstance(before, list) and len(before) == len(now):
            diffs = " (" + ", ".join(f"{n} saved {a}, now {b}" for n, a, b in zip(names, before, now, strict=True) if a != b) + ")"
        raise StateError(
            f"the loader state was saved by {topology_key} [{', '.join(names)}] = {before}; it is being restored "
            f"into {now}{diffs}. {remedy}"
        )
    if saved.get(CONFIG_KEY) != fingerprint:
        raise StateError(
            "the loader state was saved with another stream configuration (seed, episode_pool_size, "
            "frame_shuffle_size, delta_timestamps, shuffle, tolerance_s, on_error or episode subset differ; in a "
            "mixture also weights, stop or a source's settings). Build the loader with the saved settings to resume."
        )


def dataset_states(loader_state: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """Every consumer's dataset state inside a ``StatefulDataLoader.state_dict()`` (0 or more workers)."""
    out = []
    single = loader_state.get("dataset_state")
    if isinstance(single, Mapping):
        out.append(single)
    workers = loader_state.get("_snapshot", {}).get("_worker_snapshots", {})
    for name in sorted(workers):
        state = workers[name].get("dataset_state")
        if isinstance(state, Mapping):
            out.append(state)
    return out
