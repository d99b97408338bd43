"""Weighted mixtures of LeRobot datasets: ``build_loader([a, b, ...], weights=[...])`` (docs/mixtures.md).

One consumer's graph::

    source 0: ShardSource ... DeltaWindow [-> FrameShuffle] -> Relabel(0) --+
    source 1: ShardSource ... DeltaWindow [-> FrameShuffle] -> Relabel(1) --+-> WeightedMix -> BatchDecode / VideoDecode
    ...                                                                     |

Each source's chain is the one its own :class:`~streamnodes.recipes.graph.LeRobotGraph` builds for a
single dataset (``LeRobotGraph.samples``: its own episode pool, windows at its own fps, its own
Prefetcher when remote), with a seed derived from the mixture's seed and the source's position.
:class:`~streamnodes.nodes.weighted_mix.WeightedMix` takes exactly ``counts[i]`` samples from source
``i`` per consumer and epoch (:func:`streamnodes.mixing.mix_counts` of the per-worker samples each
source's graph reports), so every rank yields the same number of samples and batches.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from streamnodes.distributed import Consumer
from streamnodes.errors import ConfigError
from streamnodes.format.metadata import DatasetMeta
from streamnodes.format.open import open_dataset
from streamnodes.mixing import FIRST_EXHAUSTED, STOP_CRITERIA, exact_weights, merge_stats, mix_counts
from streamnodes.nodes.relabel import DATASET_INDEX_KEY, PAD_SUFFIX, Relabel
from streamnodes.nodes.weighted_mix import WeightedMix
from streamnodes.recipes.config import StreamConfig
from streamnodes.recipes.graph import BuiltGraph, LeRobotGraph, decode_node
from streamnodes.rng import derive_seed
from streamnodes.types import Sample
from streamnodes.windows import delta_indices

log = logging.getLogger(__name__)

#: ``Sample.data`` keys DeltaWindow adds besides the features (``task``: the task string).
TASK_KEY = "task"


@dataclass(frozen=True)
class Source:
    """One dataset of a mixture and its own settings.

    Attributes:
        root: a local path, an fsspec URL, a Hub id, or an opened :class:`DatasetMeta`.
        delta_timestamps: this source's windows, in seconds, keyed by ITS feature names (each a
            multiple of ``1 / fps`` of this dataset). ``None``: the loader's ``delta_timestamps``, keyed
            by output names (after ``rename``), applied to this source.
        rename: this source's feature name -> its name in the samples, or ``None`` to drop the feature
            (a dropped camera is never decoded). ``_is_pad`` flags follow their feature.
        episodes: this source's episode subset (``None``: all).
        revision: Hub branch, tag or commit (for a Hub id).
    """

    root: str | DatasetMeta | Any
    delta_timestamps: Mapping[str, Sequence[float]] | None = None
    rename: Mapping[str, str | None] | None = None
    episodes: Sequence[int] | None = None
    revision: str | None = None

    def settings(self) -> dict[str, Any]:
        """This source's order-shaping settings as plain values (part of the mixture's fingerprint)."""
        deltas = None if self.delta_timestamps is None else {str(k): [float(x) for x in v] for k, v in self.delta_timestamps.items()}
        return {
            "delta_timestamps": deltas,
            "rename": None if self.rename is None else {str(k): v for k, v in self.rename.items()},
            "episodes": None if self.episodes is None else sorted({int(e) for e in self.episodes}),
        }


@dataclass
class BuiltMixture:
    """One consumer's mixture graph: the output node and every source's :class:`BuiltGraph` (readers, guards)."""

    output: Any
    parts: list[BuiltGraph]

    def skipped(self) -> list[list[object]]:
        """This epoch's skipped episodes of every source, ``[[episode_index, "source i: reason"], ...]``."""
        return [[e, f"source {i}: {r}"] for i, part in enumerate(self.parts) for e, r in part.skipped()]

    def shutdown(self) -> None:
        """Shut the chain down (decoder, then every source's nodes), then close every source's reader."""
        shutdown = getattr(self.output, "shutdown", None)
        if callable(shutdown):
            shutdown()
        for part in self.parts:
            part.reader.shutdown()


class MixtureGraph:
    """The picklable factory of a mixture's per-consumer graphs (see the module docstring).

    ``graphs[i]`` is source ``i``'s single-dataset :class:`LeRobotGraph` (its config: the loader's with
    this source's windows, episodes and derived seed); ``renames[i]`` its key map. ``weights`` are
    exact fractions summing to 1; ``stop`` one of :data:`streamnodes.mixing.STOP_CRITERIA`.
    """

    def __init__(
        self,
        graphs: Sequence[LeRobotGraph],
        renames: Sequence[Mapping[str, str | None]],
        settings: Sequence[Mapping[str, Any]],
        *,
        weights: Sequence[Fraction],
        stop: str,
        config: StreamConfig,
        batch_in_graph: bool,
        pin_memory: bool,
    ) -> None:
        self.graphs = list(graphs)
        self.renames = [dict(r) for r in renames]
        self.settings = [dict(s) for s in settings]
        self.weights = list(weights)
        self.stop = stop
        self.config = config
        self.batch_in_graph = bool(batch_in_graph and config.batch_size is not None)
        self.pin_memory = bool(pin_memory)

    @property
    def metas(self) -> list[DatasetMeta]:
        return [g.meta for g in self.graphs]

    # ---- counts -------------------------------------------------------------------------------------
    def worker_counts(self, epoch: int, world_size: int, num_workers: int) -> list[list[int]]:
        """``[worker][source]``: samples each source gives worker ``w`` of every rank in ``epoch``."""
        per_source = [g.worker_samples(epoch, world_size, num_workers) for g in self.graphs]
        return [mix_counts([frames[w] for frames in per_source], self.weights, self.stop) for w in range(num_workers)]

    def worker_samples(self, epoch: int, world_size: int, num_workers: int) -> list[int]:
        """Samples worker ``w`` of every rank yields in ``epoch`` (what ``len(loader)`` is made of)."""
        return [sum(c) for c in self.worker_counts(epoch, world_size, num_workers)]

    def quotas(self, epoch: int, world_size: int, num_workers: int) -> tuple[list[int], int]:
        """Per-worker samples every rank yields, and the frames of all sources left out this epoch."""
        quotas = self.worker_samples(epoch, world_size, num_workers)
        frames = sum(sum(g.lengths().values()) for g in self.graphs)
        return quotas, frames - sum(quotas) * world_size

    # ---- identity -----------------------------------------------------------------------------------
    def identity(self) -> dict[str, object]:
        """The datasets a loader state was saved with (their fingerprints, roots, episode counts)."""
        prints = [m.fingerprint for m in self.metas]
        return {
            "fingerprint": hashlib.sha256(json.dumps(prints).encode()).hexdigest()[:16],
            "root": " + ".join(str(m.root) for m in self.metas),
            "episodes": sum(m.total_episodes for m in self.metas),
        }

    def fingerprint(self) -> str:
        """Digest of everything that decides the order: the loader's order settings, weights, stop, and each
        source's dataset and settings."""
        payload = {
            "config": self.config.order_settings(),
            "weights": [str(w) for w in self.weights],
            "stop": self.stop,
            "sources": [{"dataset": m.fingerprint, **s} for m, s in zip(self.metas, self.settings, strict=True)],
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=list).encode()).hexdigest()[:16]

    # ---- statistics ---------------------------------------------------------------------------------
    @property
    def source_stats(self) -> list[dict[str, Any] | None]:
        """Each source's ``meta/stats.json`` under the output names (renamed; dropped features left out)."""
        out: list[dict[str, Any] | None] = []
        for meta, rename in zip(self.metas, self.renames, strict=True):
            if meta.stats is None:
                out.append(None)
                continue
            out.append({name: v for k, v in meta.stats.items() if (name := rename.get(k, k)) is not None})
        return out

    @property
    def stats(self) -> dict[str, Any]:
        """The mixture's statistics, merged by :func:`streamnodes.mixing.merge_stats` (count-weighted)."""
        return merge_stats(self.source_stats)

    # ---- the graph ----------------------------------------------------------------------------------
    def __call__(self, consumer: Consumer, epoch: int) -> BuiltMixture:
        counts = self.worker_counts(epoch, consumer.world_size, consumer.num_workers)[consumer.worker_id]
        parts = [g.samples(consumer, epoch) for g in self.graphs]
        chains = [Relabel(p.output, dataset_index=i, rename=r) for i, (p, r) in enumerate(zip(parts, self.renames, strict=True))]
        node: WeightedMix[Sample] = WeightedMix(chains, counts, seed=derive_seed(self.config.seed, consumer.id, "mix"), epoch=epoch)
        return BuiltMixture(decode_node(node, self.config, batch_in_graph=self.batch_in_graph, pin_memory=self.pin_memory), parts)

    def __repr__(self) -> str:
        weights = [float(w) for w in self.weights]
        return f"MixtureGraph({self.metas!r}, weights={weights}, stop={self.stop!r}, {self.config.describe()})"


def build_mixture_graph(
    sources: Sequence[Any],
    config: StreamConfig,
    *,
    weights: Sequence[float] | None,
    stop: str | None,
    revision: str | None,
    batch_in_graph: bool,
    pin_memory: bool,
) -> MixtureGraph:
    """Open and check every source in this process, then the mixture's factory (what ``build_loader`` runs).

    Raises :class:`ConfigError` naming the source for bad weights, renames, windows or episodes, and,
    when the graph batches, for sources whose samples have different keys, shapes or dtypes.
    """
    if not sources:
        raise ConfigError("build_loader: the list of sources is empty; give one or more datasets.")
    stop = FIRST_EXHAUSTED if stop is None else stop
    if stop not in STOP_CRITERIA:
        raise ConfigError(f"stop must be one of {list(STOP_CRITERIA)}, got {stop!r}.")
    if config.episodes is not None:
        raise ConfigError("episodes= selects episodes of one dataset; in a mixture give each Source(episodes=...).")
    specs = [s if isinstance(s, Source) else Source(s) for s in sources]
    graphs, renames, settings = [], [], []
    for i, spec in enumerate(specs):
        try:
            meta = spec.root if isinstance(spec.root, DatasetMeta) else open_dataset(
                spec.root, check_files=config.on_error == "raise", revision=spec.revision or revision
            )
            rename = _check_rename(meta, spec.rename or {})
            source_config = dataclasses.replace(
                config,
                delta_timestamps=spec.delta_timestamps if spec.delta_timestamps is not None else _source_deltas(config.delta_timestamps, meta, rename),
                episodes=spec.episodes,
                seed=derive_seed(config.seed, "source", i),
                cache_dir=os.path.join(config.cache_dir, f"source-{i}") if config.cache_dir else None,
            )
            source_config.check(meta)
        except ConfigError as error:  # errors about files name them already; a setting needs its source named
            raise ConfigError(f"source {i} ({_root_name(spec.root)}): {error}") from None
        graphs.append(LeRobotGraph(meta, source_config, batch_in_graph=False))
        renames.append(rename)
        settings.append(spec.settings())
    if weights is None:  # proportional to each source's frames: every frame once, as a concatenation would
        weights = [sum(g.lengths().values()) for g in graphs]
    exact = exact_weights(weights, len(graphs))
    graph = MixtureGraph(
        graphs, renames, settings, weights=exact, stop=stop, config=config, batch_in_graph=batch_in_graph, pin_memory=pin_memory
    )
    if graph.batch_in_graph:
        check_batchable(graph)
    return graph


def _root_name(root: Any) -> str:
    return str(root.root) if isinstance(root, DatasetMeta) else str(root)


def _check_rename(meta: DatasetMeta, rename: Mapping[str, str | None]) -> dict[str, str | None]:
    """``rename`` checked against the dataset: known features, no two features under one name."""
    unknown = [k for k in rename if k not in meta.features]
    if unknown:
        raise ConfigError(f"rename has keys {unknown} that are not features of the dataset (features: {sorted(meta.features)}).")
    out = {str(k): (None if v is None else str(v)) for k, v in rename.items()}
    names = [name for k in meta.features if (name := out.get(k, k)) is not None]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"rename {out} gives names {twice} to more than one feature. Give every kept feature its own name.")
    reserved = sorted({n for n in names if n in (DATASET_INDEX_KEY, TASK_KEY) or n.endswith(PAD_SUFFIX)})
    if reserved:
        raise ConfigError(
            f"rename {out} uses names {reserved} reserved for the loader ('{DATASET_INDEX_KEY}', '{TASK_KEY}', "
            f"'*{PAD_SUFFIX}'). Pick other names."
        )
    return out


def _source_deltas(deltas: Mapping[str, Sequence[float]] | None, meta: DatasetMeta, rename: Mapping[str, str | None]) -> dict | None:
    """The loader's ``delta_timestamps`` (output names) in this source's own feature names."""
    if not deltas:
        return None
    own = {name: k for k in meta.features if (name := rename.get(k, k)) is not None}
    missing = [k for k in deltas if k not in own]
    if missing:
        raise ConfigError(
            f"delta_timestamps has keys {missing} that this source does not have (after rename; it has {sorted(own)}). "
            "Rename its features to those names, or give it its own Source(delta_timestamps=...)."
        )
    return {own[k]: list(v) for k, v in deltas.items()}


def sample_schema(meta: DatasetMeta, config: StreamConfig, rename: Mapping[str, str | None]) -> dict[str, tuple[tuple[int, ...], str]]:
    """Per output key, the shape and dtype of one sample's value as this source yields it (from metadata).

    Features of shape ``[1]`` are scalars; a windowed feature is ``[T, *shape]`` with a ``[T]`` bool
    ``_is_pad``; a camera ``[C, H, W]`` (``[T, C, H, W]`` windowed) in the loader's image dtype.
    """
    offsets = delta_indices(config.delta_timestamps, meta.fps, tolerance_s=config.tolerance_s, features=meta.features)
    image_dtype = str(config.image_dtype).removeprefix("torch.")
    schema: dict[str, tuple[tuple[int, ...], str]] = {}
    for key, feature in meta.features.items():
        name = rename.get(key, key)
        if name is None:
            continue
        if feature.is_video:
            shape, dtype = _camera_shape(feature.shape, feature.names), image_dtype
        else:
            shape, dtype = (() if tuple(feature.shape) == (1,) else tuple(feature.shape)), feature.dtype
        window = len(offsets[key]) if key in offsets else None
        schema[name] = (shape, dtype) if window is None else ((window, *shape), dtype)
        if window is not None:
            schema[name + PAD_SUFFIX] = ((window,), "bool")
    if "task_index" in meta.features and rename.get("task_index", "task_index") is not None:
        schema[TASK_KEY] = ((), "str")
    schema[DATASET_INDEX_KEY] = ((), "int64")
    return schema


def _camera_shape(shape: Sequence[int], names: Any) -> tuple[int, ...]:
    """``(3, H, W)`` of a camera feature (``info.json`` gives ``[H, W, C]`` with names, as LeRobot writes)."""
    if isinstance(names, (list, tuple)) and {"height", "width"} <= set(names):
        return (3, int(shape[list(names).index("height")]), int(shape[list(names).index("width")]))
    return (3, int(shape[0]), int(shape[1]))


def check_batchable(graph: MixtureGraph) -> None:
    """Raise :class:`ConfigError` unless every source's samples have the same keys, shapes and dtypes.

    Batches mix sources, so each key is stacked across them; a difference found here, from metadata,
    names the key, the sources and their shapes (instead of a collate error in a worker later).
    """
    schemas = [sample_schema(g.meta, g.config, r) for g, r in zip(graph.graphs, graph.renames, strict=True)]
    roots = [_root_name(g.meta.root) for g in graph.graphs]
    remedy = (
        "Align the sources with Source(rename={...}) (None drops a feature) and per-source delta_timestamps of the "
        "same length, or pass batch_size=None for unbatched samples (which may differ)."
    )
    keys = list(dict.fromkeys(k for s in schemas for k in s))
    for key in keys:
        having = [i for i, s in enumerate(schemas) if key in s]
        if len(having) != len(schemas):
            lacking = [i for i in range(len(schemas)) if i not in having]
            raise ConfigError(
                f"cannot batch the sources together: key {key!r} is in source(s) {_named(having, roots)} but not in "
                f"{_named(lacking, roots)}. {remedy}"
            )
        kinds = {schemas[i][key] for i in having}
        if len(kinds) > 1:
            shown = "; ".join(f"source {i} ({roots[i]}): {list(schemas[i][key][0])} {schemas[i][key][1]}" for i in having)
            raise ConfigError(f"cannot batch the sources together: key {key!r} differs in shape or dtype ({shown}). {remedy}")


def _named(indices: Sequence[int], roots: Sequence[str]) -> str:
    return ", ".join(f"{i} ({roots[i]})" for i in indices)
