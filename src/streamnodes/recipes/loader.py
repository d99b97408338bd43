"""``build_loader``: the packaged recipe, a StatefulDataLoader over LeRobot frames."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torchdata.stateful_dataloader import StatefulDataLoader

from streamnodes.errors import ConfigError, StateError
from streamnodes.format.metadata import DatasetMeta, open_dataset
from streamnodes.recipes.bridge import STATE_VERSION, NodeIterableDataset
from streamnodes.recipes.graph import GraphConfig, LeRobotGraph
from streamnodes.windows import delta_indices

log = logging.getLogger(__name__)

STATE_KEY = "streamnodes"
LOADER_KEY = "loader"


class StreamLoader(StatefulDataLoader):
    """A ``StatefulDataLoader`` that keeps the epoch explicit and checks states before restoring.

    Each ``iter(loader)`` starts the next epoch (a new order); ``loader.epoch`` says which. The
    state wraps StatefulDataLoader's per-worker state with the epoch and the topology it was saved
    with, so a state from another world size or worker count fails with a clear message instead
    of an assertion deep inside the DataLoader.
    """

    dataset: NodeIterableDataset

    def __init__(self, dataset: NodeIterableDataset, *, graph: LeRobotGraph | None = None, **kwargs: Any) -> None:
        super().__init__(dataset, **kwargs)
        self.graph = graph
        self.epoch = dataset.epoch
        self._started = False
        self._resume_epoch: int | None = None

    def __iter__(self):  # noqa: ANN204 - DataLoader's iterator type
        if self._resume_epoch is not None:
            self.epoch, self._resume_epoch = self._resume_epoch, None
        elif self._started:
            self.epoch += 1
        self._started = True
        self.dataset.set_epoch(self.epoch)
        return super().__iter__()

    def state_dict(self) -> dict[str, Any]:
        inner = super().state_dict()
        finished = bool(self._iterator is not None and getattr(self._iterator, "_finished", False))
        return {
            STATE_KEY: {
                "version": STATE_VERSION,
                "epoch": self.epoch,
                "epoch_finished": finished,
                "rank": self.dataset.rank,
                "world_size": self.dataset.world_size,
                "num_workers": self.num_workers,
                "config": self.dataset.config_fingerprint,
            },
            LOADER_KEY: inner,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not isinstance(state_dict, Mapping) or STATE_KEY not in state_dict or LOADER_KEY not in state_dict:
            raise StateError(
                "StreamLoader.load_state_dict: not a streamnodes loader state (expected keys "
                f"{[STATE_KEY, LOADER_KEY]}). Pass what loader.state_dict() returned."
            )
        meta = state_dict[STATE_KEY]
        now = {"rank": self.dataset.rank, "world_size": self.dataset.world_size, "num_workers": self.num_workers}
        if meta.get("version") != STATE_VERSION:
            raise StateError(
                f"the loader state has version {meta.get('version')!r}; this streamnodes writes version {STATE_VERSION}. "
                "Start the data stream fresh."
            )
        diffs = {k: (meta.get(k), v) for k, v in now.items() if meta.get(k) != v}
        if diffs:
            described = ", ".join(f"{k} saved {a}, now {b}" for k, (a, b) in diffs.items())
            raise StateError(
                f"the loader state does not fit this loader ({described}). Each rank restores its own state file, "
                "with the world size and num_workers it was saved with."
            )
        if meta.get("config") != self.dataset.config_fingerprint:
            raise StateError(
                "the loader state was saved with another stream configuration (seed, episode_pool_size, "
                "frame_shuffle_size, delta_timestamps, shuffle or episode subset differ). Build the loader with the "
                "saved settings to resume."
            )
        self._resume_epoch = int(meta["epoch"]) + (1 if meta.get("epoch_finished") else 0)
        self.epoch = self._resume_epoch  # what the next iter() yields from
        super().load_state_dict(state_dict[LOADER_KEY])

    def stats(self) -> dict[str, Any]:
        """What the stream reports across all workers: this epoch's skipped episodes with reasons.

        Read from the workers' states (the only channel StatefulDataLoader keeps from workers), so it
        is current as of the last batch and survives a resume.
        """
        skipped: list[tuple[int, str]] = []
        _collect(self.state_dict()[LOADER_KEY], "skipped", skipped)
        return {"epoch": self.epoch, "skipped_episodes": len(skipped), "skipped": sorted(skipped)}

    def samples_per_epoch(self, epoch: int | None = None) -> int:
        """Samples this rank yields in ``epoch`` (default: the current one), from metadata alone."""
        return sum(self._worker_samples(epoch))

    def batches_per_epoch(self, epoch: int | None = None) -> int:
        """Batches this rank yields in ``epoch``: workers batch separately, so each may end partial."""
        per_worker = self._worker_samples(epoch)
        if self.batch_size is None:
            return sum(per_worker)
        rounding = math.floor if self.drop_last else math.ceil
        return sum(rounding(n / self.batch_size) for n in per_worker)

    def _worker_samples(self, epoch: int | None) -> list[int]:
        if self.graph is None:
            raise ConfigError("samples_per_epoch needs the loader's LeRobotGraph (build it with build_loader).")
        epoch = self.epoch if epoch is None else epoch
        workers = max(1, self.num_workers)
        world = self.dataset.world_size
        if world == 1:
            return list(self.graph.plan(epoch, workers).frames)
        quotas, _ = self.graph.quotas(epoch, world, workers)
        return quotas

    def __repr__(self) -> str:
        return (
            f"StreamLoader(rank={self.dataset.rank}/{self.dataset.world_size}, num_workers={self.num_workers}, "
            f"batch_size={self.batch_size}, epoch={self.epoch}, graph={self.graph!r})"
        )


def _collect(state: Any, key: str, out: list[tuple[int, str]]) -> None:
    """Gather every ``key`` list (EpisodeGuard's ``skipped``) nested anywhere in a state."""
    if isinstance(state, Mapping):
        for k, v in state.items():
            if k == key and isinstance(v, list):
                out.extend((int(e), str(r)) for e, r in v)
            else:
                _collect(v, key, out)
    elif isinstance(state, list):
        for v in state:
            _collect(v, key, out)


def build_loader(
    source: str | DatasetMeta | Any,
    *,
    batch_size: int | None = 32,
    num_workers: int = 0,
    delta_timestamps: Mapping[str, Sequence[float]] | None = None,
    tolerance_s: float = 1e-4,
    episode_pool_size: int = 64,
    frame_shuffle_size: int = 0,
    shuffle: bool = True,
    seed: int = 0,
    rank: int | None = None,
    world_size: int | None = None,
    cache_dir: str | None = None,
    image_dtype: torch.dtype = torch.float32,
    drop_last: bool = False,
    episodes: Sequence[int] | None = None,
    epoch: int = 0,
    persistent_workers: bool = False,
    multiprocessing_context: str | None = None,
    prefetch_factor: int | None = None,
    snapshot_every_n_steps: int = 1,
    max_decoders: int = 16,
    prefetch_max_bytes: int = 2 << 30,
    pin_memory: bool = False,
    on_error: str = "raise",
    collate_fn: Callable[[list[dict[str, Any]]], Any] | None = None,
) -> StreamLoader:
    """A ``StatefulDataLoader`` of LeRobot frames from the dataset at ``source`` (path, URL or metadata).

    Samples are dicts keyed as LeRobot's ``LeRobotDataset.__getitem__``: tensors, ``task`` a string,
    cameras ``[T, C, H, W]`` with deltas and ``[C, H, W]`` without, batched by the default collate
    (``batch_size=None``: unbatched samples). Each rank reads a disjoint part of every epoch and all
    ranks yield the same number of batches. ``loader.state_dict()`` / ``load_state_dict()`` resume
    exactly (save one file per rank). Keep the loader out of ``accelerator.prepare``.

    ``on_error="raise"`` (default) stops at the first damaged file with an error naming it;
    ``"skip"`` skips damaged episodes whole (never half-emitted), logs each with its reason and
    counts them in ``loader.stats()``. With ``"skip"`` data files are checked per episode as they are
    read instead of all at once when the dataset is opened.

    ``collate_fn`` replaces the DataLoader's ``default_collate`` (it runs in the workers; collation is
    a measurable share of the per-sample cost, see docs/benchmarks.md).
    """
    if on_error not in ("raise", "skip"):
        raise ConfigError(f"on_error must be 'raise' or 'skip', got {on_error!r}.")
    meta = source if isinstance(source, DatasetMeta) else open_dataset(source, check_files=on_error == "raise")
    if image_dtype not in (torch.float32, torch.uint8):
        raise ConfigError(f"image_dtype must be torch.float32 or torch.uint8, got {image_dtype}.")
    if episode_pool_size < 1:
        raise ConfigError(f"episode_pool_size must be >= 1, got {episode_pool_size}.")
    if frame_shuffle_size < 0:
        raise ConfigError(f"frame_shuffle_size must be >= 0, got {frame_shuffle_size}.")
    delta_indices(delta_timestamps, meta.fps, tolerance_s=tolerance_s, features=meta.features)  # fail here, not in a worker
    config = GraphConfig(
        delta_timestamps={k: [float(x) for x in v] for k, v in delta_timestamps.items()} if delta_timestamps else None,
        tolerance_s=tolerance_s,
        episode_pool_size=episode_pool_size,
        frame_shuffle_size=frame_shuffle_size,
        shuffle=shuffle,
        seed=seed,
        episodes=sorted(int(e) for e in episodes) if episodes is not None else None,
        image_dtype="uint8" if image_dtype == torch.uint8 else "float32",
        cache_dir=str(cache_dir) if cache_dir is not None else None,
        prefetch_max_bytes=prefetch_max_bytes,
        max_decoders=max_decoders,
        on_error=on_error,
    )
    graph = LeRobotGraph(meta, config)
    dataset = NodeIterableDataset(graph, rank=rank, world_size=world_size, epoch=epoch, config_fingerprint=config.fingerprint())
    if dataset.world_size > 1:
        quotas, trimmed = graph.quotas(epoch, dataset.world_size, max(1, num_workers))
        if trimmed:
            log.info(
                "equal batches per rank: epoch %d keeps %s samples per worker on every rank; %d frames trimmed overall",
                epoch, quotas, trimmed,
            )
    kwargs: dict[str, Any] = {}
    if num_workers > 0:
        kwargs.update(persistent_workers=persistent_workers, multiprocessing_context=multiprocessing_context)
        if prefetch_factor is not None:
            kwargs["prefetch_factor"] = prefetch_factor
    return StreamLoader(
        dataset,
        graph=graph,
        batch_size=batch_size,
        num_workers=num_workers,
        drop_last=drop_last,
        snapshot_every_n_steps=snapshot_every_n_steps,
        pin_memory=pin_memory,
        collate_fn=collate_fn,
        **kwargs,
    )
