"""``build_loader``: the packaged recipe, a StatefulDataLoader over LeRobot frames."""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from torch.utils.data import default_collate
from torchdata.stateful_dataloader import StatefulDataLoader

from streamnodes.errors import ConfigError, StateError
from streamnodes.format.metadata import DatasetMeta
from streamnodes.format.open import open_dataset
from streamnodes.recipes.bridge import NodeIterableDataset, WorkerError
from streamnodes.recipes.config import StreamConfig
from streamnodes.recipes.elastic import SavedRank, epoch_remainder
from streamnodes.recipes.graph import LeRobotGraph
from streamnodes.recipes.mixture import MixtureGraph, Source, build_mixture_graph
from streamnodes.recipes.state import EPOCH_KEY, STATE_VERSION, check_header, dataset_states, write_header
from streamnodes.sharding import Remainder

log = logging.getLogger(__name__)

STATE_KEY = "streamnodes"
LOADER_KEY = "loader"
TOPOLOGY_KEY = "topology"
DATASET_KEY = "dataset"
REMAINDER_KEY = "remainder"


class StreamLoader(StatefulDataLoader):
    """A ``StatefulDataLoader`` that keeps the epoch explicit and checks states before restoring.

    Each ``iter(loader)`` starts the next epoch (a new order); ``loader.epoch`` says which. The
    state wraps StatefulDataLoader's per-worker state with the epoch and the topology it was saved
    with. ``load_state_dict(state)`` restores this rank's own state (same world size and
    ``num_workers``); ``load_state_dict([state_rank0, state_rank1, ...])`` takes every rank's state of a
    run with any world size or ``num_workers`` and re-deals the rest of the interrupted epoch over this
    topology (elastic resume, docs/checkpointing.md).
    """

    dataset: NodeIterableDataset

    # ---- accelerate ---------------------------------------------------------------------------------
    # `accelerator.prepare(loader)` (LeRobot's habit) would rebuild the loader around accelerate's own
    # sharding and batch dispatch, which breaks a stream that already reads one disjoint share per rank
    # (string keys cannot be dispatched; every rank would read rank 0's share). accelerate skips objects
    # it has prepared before (`_is_accelerate_prepared`, its guard against double wrapping), so the
    # loader declares itself prepared: `accelerator.prepare` returns it unchanged, and says so once.
    @property
    def _is_accelerate_prepared(self) -> bool:
        if not getattr(self, "_told_accelerate", False):
            self._told_accelerate = True
            log.info(
                "accelerator.prepare(loader): a streamnodes loader already reads this rank's share and is returned "
                "unchanged (batches stay on the CPU; move them to accelerator.device in the training step)."
            )
        return True

    @_is_accelerate_prepared.setter
    def _is_accelerate_prepared(self, value: bool) -> None:  # accelerate marks what it returned
        pass

    def __init__(self, dataset: NodeIterableDataset, *, graph: LeRobotGraph | MixtureGraph | None = None, **kwargs: Any) -> None:
        with warnings.catch_warnings():  # torchdata 0.11 calls torch.set_vital, which torch 2.13 deprecates
            warnings.filterwarnings("ignore", message=r"'set_vital' is deprecated", category=UserWarning)
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
        inner = super().__iter__()
        return _RaisingIterator(inner) if self.num_workers > 0 else inner

    def state_dict(self) -> dict[str, Any]:
        inner = super().state_dict()
        finished = bool(self._iterator is not None and getattr(self._iterator, "_finished", False))
        header = write_header(self.epoch, TOPOLOGY_KEY, self._topology(), self.dataset.config_fingerprint)
        remainder = getattr(self.graph, "remainder", None)  # a mixture has none
        saved_remainder = remainder.to_state() if remainder is not None and remainder.epoch == self.epoch else None
        return {
            STATE_KEY: {
                **header, "epoch_finished": finished, DATASET_KEY: self._dataset_identity(), REMAINDER_KEY: saved_remainder,
            },
            LOADER_KEY: inner,
        }

    def _dataset_identity(self) -> dict[str, Any] | None:
        return None if self.graph is None else self.graph.identity()

    @property
    def dataset_stats(self) -> Mapping[str, Any] | None:
        """Normalisation statistics of what this loader reads: the dataset's ``meta/stats.json``, or for a
        mixture the sources' merged by count (:func:`streamnodes.mixing.merge_stats`, docs/mixtures.md)."""
        if isinstance(self.graph, MixtureGraph):
            return self.graph.stats
        return None if self.graph is None else self.graph.meta.stats

    @property
    def source_stats(self) -> list[Mapping[str, Any] | None]:
        """Each source's ``meta/stats.json`` (a mixture's under its output key names); one entry for one dataset."""
        if isinstance(self.graph, MixtureGraph):
            return list(self.graph.source_stats)
        return [] if self.graph is None else [self.graph.meta.stats]

    def _check_dataset(self, saved: Any) -> None:
        now = self._dataset_identity()
        if not isinstance(saved, Mapping) or now is None or saved.get("fingerprint") == now["fingerprint"]:
            return
        raise StateError(
            f"the loader state was saved reading {saved.get('root')} ({saved.get('episodes')} episodes); this loader "
            f"reads {now['root']} ({now['episodes']} episodes), a different dataset (episodes, lengths, files or "
            "features differ). Restore a state saved with this dataset, or start the data stream fresh."
        )

    def _topology(self) -> list[int]:
        return [self.dataset.rank, self.dataset.world_size, self.num_workers]

    def load_state_dict(self, state_dict: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> None:
        """Restore this rank's own state, or re-deal the rest of an epoch from every rank's state (elastic).

        ``state_dict``: what ``loader.state_dict()`` returned on this rank (same world size and
        ``num_workers``; the stream continues item for item), or the list of every rank's
        ``state_dict()`` saved at the same step, from a run with any world size and ``num_workers``: the
        undelivered rest of that epoch is dealt over this loader's topology (nothing delivered again,
        the rest once, equal batches per rank) and later epochs follow this topology. A one-rank run's
        single state also re-deals when only ``num_workers`` changed.
        """
        states = [state_dict] if isinstance(state_dict, Mapping) else list(state_dict)
        if not states:
            raise StateError("StreamLoader.load_state_dict: an empty list of states. Pass every rank's loader.state_dict().")
        for state in states:
            if not isinstance(state, Mapping) or STATE_KEY not in state or LOADER_KEY not in state:
                raise StateError(
                    "StreamLoader.load_state_dict: not a streamnodes loader state (expected keys "
                    f"{[STATE_KEY, LOADER_KEY]}). Pass what loader.state_dict() returned."
                )
            meta = state[STATE_KEY]
            if meta.get("version") == STATE_VERSION:  # an older version is refused below, saying so
                self._check_dataset(meta.get(DATASET_KEY))
        own = [state for state in states if state[STATE_KEY].get(TOPOLOGY_KEY) == self._topology()]
        saved_world = states[0][STATE_KEY].get(TOPOLOGY_KEY, [None, None])[1]
        if len(states) == 1 and not own and saved_world != 1:
            check_header(  # a single rank's state into another topology: refused, saying what to pass
                states[0][STATE_KEY], TOPOLOGY_KEY, self._topology(), self.dataset.config_fingerprint,
                names=("rank", "world_size", "num_workers"),
                remedy=(
                    "Restore each rank's own state file with the world size and num_workers it was saved with, or pass "
                    "the list of EVERY rank's state, loader.load_state_dict([state_rank0, state_rank1, ...]), to re-deal "
                    "the rest of the epoch over this topology (docs/checkpointing.md)."
                ),
            )
        if len(own) == 1:
            self._load_own(own[0])
        else:
            self._load_elastic(states)

    def _load_own(self, state_dict: Mapping[str, Any]) -> None:
        meta = state_dict[STATE_KEY]
        check_header(
            meta, TOPOLOGY_KEY, self._topology(), self.dataset.config_fingerprint,
            names=("rank", "world_size", "num_workers"),
            remedy="Each rank restores its own state file, with the world size and num_workers it was saved with.",
        )
        if isinstance(self.graph, LeRobotGraph):
            self.graph.remainder = Remainder.from_state(meta.get(REMAINDER_KEY))
        self._resume_epoch = int(meta["epoch"]) + (1 if meta.get("epoch_finished") else 0)
        self.epoch = self._resume_epoch  # what the next iter() yields from
        super().load_state_dict(state_dict[LOADER_KEY])

    def _load_elastic(self, states: Sequence[Mapping[str, Any]]) -> None:
        """Re-deal the undelivered rest of the saved epoch over this loader's topology (docs/checkpointing.md)."""
        if not isinstance(self.graph, LeRobotGraph):
            raise StateError(
                "elastic resume (a state of another world size or num_workers) works for single-dataset loaders; a "
                "mixture's state restores only with the world size and num_workers it was saved with. Resume with "
                "the saved topology."
            )
        headers = [s[STATE_KEY] for s in states]
        for h in headers:  # version and stream configuration, whatever the topology
            check_header(h, TOPOLOGY_KEY, None, self.dataset.config_fingerprint)
        topologies = [list(h[TOPOLOGY_KEY]) for h in headers]
        world, workers = topologies[0][1], topologies[0][2]
        ranks = sorted(t[0] for t in topologies)
        if any(t[1:] != [world, workers] for t in topologies) or ranks != list(range(world)):
            raise StateError(
                f"elastic resume needs the state of every rank of one run, saved at the same step: got states of "
                f"[rank, world_size, num_workers] = {sorted(topologies)}; a run with world_size {world} has ranks "
                f"0..{world - 1}. Pass every rank's loader.state_dict() (one file per rank)."
            )
        epochs = {int(h[EPOCH_KEY]) for h in headers}
        remainders = {repr(h.get(REMAINDER_KEY)) for h in headers}
        if len(epochs) != 1 or len(remainders) != 1:
            raise StateError(
                f"elastic resume: the ranks' states are from different epochs ({sorted(epochs)}) or streams; pass the "
                "states every rank saved at the same step."
            )
        epoch = epochs.pop()
        self.graph.remainder = Remainder.from_state(headers[0].get(REMAINDER_KEY))  # if that epoch was re-dealt
        plan = self.graph.plan(epoch, world * max(1, workers))  # the saved epoch's shares over the OLD consumers
        saved_ranks = [
            SavedRank(
                rank=int(h[TOPOLOGY_KEY][0]), world_size=world, num_workers=workers, epoch=epoch,
                finished=bool(h.get("epoch_finished")), consumers=_consumer_states(s[LOADER_KEY]),
            )
            for h, s in zip(headers, states, strict=True)
        ]
        rest = epoch_remainder(saved_ranks, plan)
        # nothing left (delivered up to its trim): the next epoch follows this topology
        self.graph.remainder = Remainder(epoch, tuple(rest)) if rest else None
        self._resume_epoch = epoch if rest else epoch + 1
        self.epoch = self._resume_epoch  # every consumer starts the (re-dealt) epoch fresh: no per-worker state
        log.info(
            "elastic resume: %d rank(s) x %d worker(s) saved in epoch %d -> %d rank(s) x %d worker(s): %d undelivered "
            "frames in %d pieces re-dealt; the next epoch is %d",
            world, workers, epoch, self.dataset.world_size, self.num_workers, sum(p.frames for p in rest), len(rest),
            self._resume_epoch,
        )

    def stats(self) -> dict[str, Any]:
        """What the stream reports across all workers: this epoch's skipped episodes with reasons.

        Read from the workers' states (the only channel StatefulDataLoader keeps from workers), so it
        is current as of the last batch and survives a resume.
        """
        skipped = [
            (int(e), str(r)) for state in dataset_states(self.state_dict()[LOADER_KEY]) for e, r in state.get("skipped", [])
        ]
        return {"epoch": self.epoch, "skipped_episodes": len(skipped), "skipped": sorted(skipped)}

    def shutdown(self) -> None:
        """Stop the workers and release the main process's graph (decoders, downloads, open files).

        torchdata's shutdown chain: each node releases its own resources, then its source's. A loader
        that is garbage-collected releases the same (workers exit; nodes hold no process-wide state).
        """
        iterator = self._iterator
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
        self.dataset.shutdown()

    def __len__(self) -> int:
        """Batches this rank yields in the current epoch (:meth:`batches_per_epoch`, from metadata)."""
        return self.batches_per_epoch()

    def samples_per_epoch(self, epoch: int | None = None) -> int:
        """Samples this rank yields in ``epoch`` (default: the current one), from metadata alone."""
        return sum(self._worker_samples(epoch))

    def batches_per_epoch(self, epoch: int | None = None) -> int:
        """Batches this rank yields in ``epoch``: workers batch separately, so each may end partial."""
        per_worker = self._worker_samples(epoch)
        batch_size, drop_last = self.stream_batching()
        if batch_size is None:
            return sum(per_worker)
        rounding = math.floor if drop_last else math.ceil
        return sum(rounding(n / batch_size) for n in per_worker)

    def stream_batching(self) -> tuple[int | None, bool]:
        """(batch_size, drop_last) of the stream, whether the graph or the DataLoader batches."""
        if self.graph is not None and self.graph.batch_in_graph:
            return self.graph.config.batch_size, self.graph.config.drop_last
        return self.batch_size, self.drop_last

    def _worker_samples(self, epoch: int | None) -> list[int]:
        if self.graph is None:
            raise ConfigError("samples_per_epoch needs the loader's LeRobotGraph (build it with build_loader).")
        epoch = self.epoch if epoch is None else epoch
        return self.graph.worker_samples(epoch, self.dataset.world_size, max(1, self.num_workers))

    def __repr__(self) -> str:
        return (
            f"StreamLoader(rank={self.dataset.rank}/{self.dataset.world_size}, num_workers={self.num_workers}, "
            f"batch_size={self.batch_size}, epoch={self.epoch}, graph={self.graph!r})"
        )


def _consumer_states(loader_state: Mapping[str, Any]) -> dict[int, Mapping[str, Any]]:
    """Each saved consumer's dataset state by worker id (0 without workers), read from its own header."""
    out: dict[int, Mapping[str, Any]] = {}
    for state in dataset_states(loader_state):
        topology = state.get("consumer")
        if isinstance(topology, list) and len(topology) == 4:
            out[int(topology[2])] = state
    return out


class _RaisingIterator(Iterator[Any]):
    """The DataLoader's iterator, raising a worker's :class:`WorkerError` item as the original error here."""

    def __init__(self, inner: Iterator[Any]) -> None:
        self._inner = inner

    def __iter__(self) -> _RaisingIterator:
        return self

    def __next__(self) -> Any:
        item = next(self._inner)
        if type(item) is WorkerError:
            raise item.error
        return item

    def __len__(self) -> int:
        return len(self._inner)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _error_aware(collate: Callable[[list[Any]], Any]) -> Callable[[list[Any]], Any]:
    """``collate`` that passes a worker's WorkerError through instead of collating it with samples."""

    def collate_or_error(items: list[Any]) -> Any:
        for item in items:
            if type(item) is WorkerError:
                return item
        return collate(items)

    return collate_or_error


def build_loader(
    source: str | DatasetMeta | Any | Sequence[str | DatasetMeta | Source | Any],
    config: StreamConfig | None = None,
    *,
    weights: Sequence[float] | None = None,
    stop: str | None = None,
    num_workers: int = 0,
    rank: int | None = None,
    world_size: int | None = None,
    epoch: int = 0,
    persistent_workers: bool = False,
    multiprocessing_context: str | None = None,
    prefetch_factor: int | None = None,
    snapshot_every_n_steps: int = 1,
    pin_memory: bool = False,
    collate_fn: Callable[[list[dict[str, Any]]], Any] | None = None,
    revision: str | None = None,
    **settings: Any,
) -> StreamLoader:
    """A ``StatefulDataLoader`` of LeRobot frames from the dataset at ``source`` (path, URL or metadata).

    The stream's settings are the fields of :class:`~streamnodes.recipes.config.StreamConfig`
    (``batch_size``, ``delta_timestamps``, ``episode_pool_size``, ``seed``, ``image_dtype`` ...): pass a
    ``config``, keyword arguments, or both (keywords replace the config's fields). They are validated
    here, in the calling process, before any worker starts. The other arguments are the DataLoader's
    and the topology's.

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

    ``source`` may be a Hugging Face Hub dataset id (``"lerobot/pusht"``, read from
    ``hf://datasets/lerobot/pusht``; ``revision`` picks a branch, tag or commit), see ``open_dataset``.

    A list of sources (paths, URLs, metadata or :class:`~streamnodes.recipes.mixture.Source` with
    per-source windows, renames and episodes) is a weighted mixture: ``weights`` are each source's
    share of the samples (default: proportional to its frames), ``stop`` ends the epoch when the first
    source runs out (``"first_exhausted"``, default) or after every frame (``"all_exhausted"``), and each
    sample carries ``dataset_index``. See docs/mixtures.md.
    """
    config = StreamConfig.from_settings(config, **settings)
    if num_workers < 0:
        raise ConfigError(f"num_workers must be >= 0, got {num_workers}.")
    # Batches are collated inside the graph (BatchDecode: frames decoded on threads straight into the batch
    # tensors) unless the caller brings a collate_fn; then samples go to the DataLoader's batching.
    batch_in_graph = config.batch_size is not None and collate_fn is None
    graph: LeRobotGraph | MixtureGraph
    if isinstance(source, (list, tuple)):
        graph = build_mixture_graph(
            source, config, weights=weights, stop=stop, revision=revision, batch_in_graph=batch_in_graph,
            pin_memory=pin_memory and num_workers == 0,
        )
    else:
        if weights is not None or stop is not None:
            raise ConfigError("weights= and stop= are for a mixture: pass a list of sources, build_loader([a, b], weights=[...]).")
        meta = source if isinstance(source, DatasetMeta) else open_dataset(source, check_files=config.on_error == "raise", revision=revision)
        config.check(meta)  # fail here, not in a worker
        graph = LeRobotGraph(meta, config, batch_in_graph=batch_in_graph, pin_memory=pin_memory and num_workers == 0)
    dataset = NodeIterableDataset(graph, rank=rank, world_size=world_size, epoch=epoch, config_fingerprint=graph.fingerprint())
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
        batch_size=None if batch_in_graph else config.batch_size,
        num_workers=num_workers,
        drop_last=False if batch_in_graph else config.drop_last,
        snapshot_every_n_steps=snapshot_every_n_steps,
        pin_memory=pin_memory,
        collate_fn=_error_aware(collate_fn or default_collate) if config.batch_size is not None and not batch_in_graph else collate_fn,
        **kwargs,
    )
