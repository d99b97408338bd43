"""Train a small policy (state + camera frames -> action chunk) on a LeRobot v3 dataset, resumably.

Runs under plain ``python`` (one process) or ``accelerate launch`` / ``torchrun`` (one process per rank)::

    python recipes/train.py --dataset demo_data/ds --output_dir runs/a --steps 200 --save_every 50
    accelerate launch --num_processes 2 --cpu recipes/train.py --dataset ... --output_dir runs/b
    python recipes/train.py --dataset ... --output_dir runs/a --steps 400 --resume_from auto
    python recipes/train.py --dataset ... --dummy            # data loading only: no model
    python recipes/train.py --dataset a --dataset b --weights 0.7 0.3 --output_dir runs/mix   # a weighted mixture

The data loader is ``streamnodes.build_loader``. It finds this process's rank itself and reads only
this rank's part of every epoch, so it is built *after* the ``Accelerator`` and is **never** passed to
``accelerator.prepare``: prepare would wrap it in accelerate's ``IterableDatasetShard``, keep 1/N of
this rank's already-split stream, and lose the loader state (a resume would replay). Only the model
and the optimizer are prepared. Every rank yields the same number of batches per epoch, so DDP never
waits on a rank that ran out of data.

Checkpoints (``--save_every N``) go to ``output_dir/step-XXXXXXXX/``: model and optimizer (rank 0) and
one loader state file per rank, each written atomically, plus a completion marker per rank
(``streamnodes.recipes.checkpoint``). ``--resume_from auto`` picks the newest complete one.

``--log_indices PATH`` appends one line per step and rank, ``<step> <rank> <index> <index> ...``
(the dataset ``index`` of every sample of the batch), written with one unbuffered ``write`` per line,
so a SIGKILL loses at most the step in flight. After a resume, steps after the checkpoint are logged
again: the last line of a (step, rank) wins.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import shlex
import signal
import sys
import threading
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

# torchdata 0.11's StatefulDataLoader calls a deprecated torch API on every iter(): not our concern.
warnings.filterwarnings("ignore", message=".*set_vital.*is deprecated")

log = logging.getLogger("train")

STATE_KEY = "observation.state"
ACTION_KEY = "action"


# ---------------------------------------------------------------------------------------------------
# Command line.


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--dataset", required=True, action="append",
                   help="LeRobot v3 dataset: a local root or an fsspec URL; repeat it for a weighted mixture "
                        "(the datasets must share feature names and sizes; docs/mixtures.md)")
    p.add_argument("--weights", type=float, nargs="+", default=None,
                   help="with several --dataset: each one's share of the samples (default: proportional to frames)")
    p.add_argument("--output_dir", default="runs/train", help="checkpoints and summary.json go here")
    p.add_argument("--steps", type=int, default=1000, help="total optimizer steps (counting resumed ones)")
    p.add_argument("--batch_size", type=int, default=32, help="samples per batch and rank")
    p.add_argument("--num_workers", type=int, default=0,
                   help="DataLoader worker processes per rank (default 0: frames are decoded on --decode_threads threads "
                        "in the training process, the fastest configuration measured on 2 cores; docs/benchmarks.md)")
    p.add_argument("--episode_pool_size", type=int, default=64, help="whole episodes kept in the shuffle pool")
    p.add_argument("--frame_shuffle_size", type=int, default=0, help="extra frame shuffle buffer (0: off)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data order and the model init")
    p.add_argument("--save_every", type=int, default=500, help="checkpoint every N steps (0: never)")
    p.add_argument("--keep_last", type=int, default=0, help="keep only the N newest checkpoints (0: all)")
    p.add_argument(
        "--resume_from",
        default=None,
        help="a checkpoint directory (output_dir/step-XXXXXXXX), or 'auto' for the newest complete "
        "checkpoint in output_dir (starts fresh when there is none)",
    )
    p.add_argument("--dummy", action="store_true", help="measure data loading only: no model, no backward")
    p.add_argument("--log_indices", default=None, help="append '<step> <rank> <index>...' per step to this file")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate")
    p.add_argument("--chunk", type=int, default=10, help="action chunk length (frames predicted per sample)")
    p.add_argument(
        "--image_dtype",
        choices=("uint8", "float32"),
        default="uint8",
        help="dtype of the decoded frames in the batch (uint8: 4x fewer bytes from the workers; the model "
        "converts to float on the device)",
    )
    p.add_argument(
        "--decode_threads",
        type=int,
        default=None,
        help="threads decoding each batch's frames in every DataLoader worker (default: StreamConfig's)",
    )
    p.add_argument("--drop_last", action="store_true", help="drop each worker's last partial batch")
    p.add_argument(
        "--log_every", type=int, default=0, help="also print a plain line every N steps, for logs without a terminal"
    )
    p.add_argument("--cpu", action="store_true", help="train on the CPU even when a GPU is available")
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads of each training process (0: on the CPU, the cores left after the DataLoader "
        "workers of every local rank, at least 1; elsewhere torch's default)",
    )
    p.add_argument("--debug", action="store_true", help="log at DEBUG level, on every rank")
    args = p.parse_args(argv)
    for name in ("steps", "batch_size", "chunk"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1")
    for name in ("num_workers", "save_every", "keep_last", "log_every", "frame_shuffle_size", "threads", "decode_threads"):
        if (getattr(args, name) or 0) < 0:
            p.error(f"--{name} must be >= 0")
    if args.weights is not None and len(args.weights) != len(args.dataset):
        p.error(f"--weights has {len(args.weights)} values for {len(args.dataset)} --dataset; give one per dataset")
    if len(args.dataset) == 1:
        args.dataset = args.dataset[0]  # one dataset: a plain root, as checkpoints of single-dataset runs record it
    return args


def setup_logging(rank: int, debug: bool) -> None:
    level = logging.DEBUG if debug else (logging.INFO if rank == 0 else logging.WARNING)
    logging.basicConfig(
        level=level,
        format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    if not debug:  # our own messages at INFO; libraries only from WARNING
        logging.getLogger().setLevel(logging.WARNING)
        log.setLevel(level)
        logging.getLogger("streamnodes").setLevel(logging.WARNING if rank else logging.INFO)


# ---------------------------------------------------------------------------------------------------
# The policy.


def _stat(stats: Mapping[str, Any] | None, key: str, name: str, dim: int, default: float) -> torch.Tensor:
    try:
        value = torch.as_tensor(stats[key][name], dtype=torch.float32).reshape(-1)  # type: ignore[index]
    except (KeyError, TypeError, ValueError):
        return torch.full((dim,), default)
    return value if value.numel() == dim else torch.full((dim,), default)


class ConvEncoder(nn.Module):
    """Two strided convolutions and a global average pool: one camera frame -> a feature vector."""

    def __init__(self, out_dim: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 16, kernel_size=5, stride=2, padding=2),
            nn.ReLU(),
            nn.Conv2d(16, out_dim, kernel_size=3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        # uint8 frames (--image_dtype uint8) travel from the workers and to the device at a quarter of
        # float32's bytes; they become float here, on the device.
        if image.dtype == torch.uint8:
            image = image.float() / 255.0
        return self.net(image - 0.5)


class Policy(nn.Module):
    """Per camera a :class:`ConvEncoder`, an MLP on the state; their features -> an action chunk.

    State and action are normalised with the dataset's mean/std (``meta/stats.json``); the prediction
    is de-normalised, and the loss is taken in normalised units.
    """

    def __init__(
        self,
        cameras: Sequence[str],
        state_dim: int,
        action_dim: int,
        chunk: int,
        stats: Mapping[str, Any] | None = None,
        hidden: int = 128,
        image_features: int = 32,
    ) -> None:
        super().__init__()
        self.cameras = list(cameras)
        self.state_dim, self.action_dim, self.chunk = state_dim, action_dim, chunk
        # ModuleDict keys may not contain dots ("observation.images.top" -> "observation_images_top")
        self.encoders = nn.ModuleDict({c.replace(".", "_"): ConvEncoder(image_features) for c in self.cameras})
        self.state_mlp = nn.Sequential(nn.Linear(state_dim, 64), nn.ReLU()) if state_dim else None
        width = image_features * len(self.cameras) + (64 if state_dim else 0)
        if width == 0:
            raise ValueError("the dataset has neither cameras nor observation.state: nothing to condition on")
        self.head = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, chunk * action_dim))
        for key, dim in ((STATE_KEY, state_dim), (ACTION_KEY, action_dim)):
            if dim:
                prefix = key.replace(".", "_")
                std = _stat(stats, key, "std", dim, 1.0).clamp(min=1e-6)
                self.register_buffer(f"{prefix}_mean", _stat(stats, key, "mean", dim, 0.0))
                self.register_buffer(f"{prefix}_std", std)

    def normalize_action(self, action: torch.Tensor) -> torch.Tensor:
        return (action - self.action_mean) / self.action_std

    def forward(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Normalised action chunk ``[B, chunk, action_dim]``."""
        features = [self.encoders[c.replace(".", "_")](batch[c]) for c in self.cameras]
        if self.state_mlp is not None:
            state = (batch[STATE_KEY] - self.observation_state_mean) / self.observation_state_std
            features.append(self.state_mlp(state))
        out = self.head(torch.cat(features, dim=-1))
        return out.view(-1, self.chunk, self.action_dim)

    def loss(self, batch: Mapping[str, Any]) -> torch.Tensor:
        return masked_mse(self, self(batch), batch)


def masked_mse(policy: Policy, prediction: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
    """MSE between predicted and true (normalised) action chunks, ignoring padded positions past the
    episode end (``action_is_pad``). ``prediction`` may come from the DDP wrapper of ``policy``."""
    target = policy.normalize_action(batch[ACTION_KEY])
    mask = (~batch[f"{ACTION_KEY}_is_pad"]).unsqueeze(-1).to(prediction.dtype)
    squared = (prediction - target).pow(2) * mask
    return squared.sum() / (mask.sum() * policy.action_dim).clamp(min=1.0)


# ---------------------------------------------------------------------------------------------------
# Helpers.


def endless(loader: Any) -> Iterator[Any]:
    """Batches across epochs: re-iterating the loader starts its next epoch."""
    empty = 0
    while True:
        got = False
        for batch in loader:
            got = True
            yield batch
        empty = 0 if got else empty + 1
        if empty >= 2:  # one empty pass is legal (a state saved at the very end of an epoch)
            raise RuntimeError(
                f"the loader yields no batches for this rank (epoch {getattr(loader, 'epoch', '?')}): the "
                "dataset is too small for this world size, num_workers and batch size"
            )


class IndexLog:
    """``<step> <rank> <index>...`` lines appended with one unbuffered write each (O_APPEND)."""

    def __init__(self, path: str | None, rank: int) -> None:
        self.rank = rank
        self.fd: int | None = None
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def write(self, step: int, indices: torch.Tensor) -> None:
        if self.fd is not None:
            line = f"{step} {self.rank} " + " ".join(str(int(i)) for i in indices.reshape(-1).tolist()) + "\n"
            os.write(self.fd, line.encode())

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """The batch's tensors on ``device`` (a no-op on the CPU); strings such as ``task`` as they are."""
    if device.type == "cpu":
        return dict(batch)
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def training_threads(num_workers: int) -> int:
    """Cores per training process left after its DataLoader workers (one core each), at least 1."""
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // local_ranks - num_workers)


def json_safe_args(args: argparse.Namespace) -> dict[str, Any]:
    scalar = str | int | float | bool | type(None)
    return {
        k: v for k, v in vars(args).items()
        if isinstance(v, scalar) or (isinstance(v, list) and all(isinstance(x, scalar) for x in v))
    }


def batch_size_of(batch: Mapping[str, Any]) -> int:
    return int(batch["index"].shape[0])


# ---------------------------------------------------------------------------------------------------
# Set-up: processes, data, model.


@dataclass
class Session:
    """This process's place in the run: the Accelerator and what it says about ranks."""

    accelerator: Any
    rank: int
    world_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def start_session(args: argparse.Namespace) -> Session:
    """The Accelerator first (build_loader discovers rank and world size from it), then logging and threads.

    ``streamnodes.distributed.rank_and_world_size`` checks accelerate's view against the launcher's
    ``RANK``/``WORLD_SIZE``: if they disagree, every process would read the same data.
    """
    from accelerate import Accelerator

    from streamnodes.distributed import rank_and_world_size

    # On a machine without CUDA, accelerate only forms a multi-process group when told to use the CPU
    # (otherwise every process believes it is rank 0 of 1 and they all read the same data).
    launched_world = int(os.environ.get("WORLD_SIZE", "1"))
    use_cpu = args.cpu or (launched_world > 1 and not torch.cuda.is_available())
    accelerator = Accelerator(cpu=use_cpu)
    rank, world_size = rank_and_world_size()
    setup_logging(rank, args.debug)
    threads = args.threads or (training_threads(args.num_workers) if accelerator.device.type == "cpu" else 0)
    if threads:
        # torch's default (one thread per core) fights the decoding workers for the cores: measured 5x
        # slower training steps on 2 cores with 2 workers and a busy machine.
        torch.set_num_threads(threads)
    return Session(accelerator, rank, world_size)


def open_stream(args: argparse.Namespace, session: Session) -> tuple[Any, Any]:
    """The (first) dataset's metadata and this rank's loader (NOT passed to accelerator.prepare: see module doc).

    Several ``--dataset`` make a weighted mixture: each source gets the action chunk at its own fps.
    """
    import streamnodes

    roots = args.dataset if isinstance(args.dataset, list) else [args.dataset]
    metas = [streamnodes.open_dataset(root) for root in roots]
    for root, meta in zip(roots, metas, strict=True):
        if ACTION_KEY not in meta.features:
            raise SystemExit(f"{root} has no {ACTION_KEY!r} feature: nothing to train on")
        log.info("dataset %r", meta)
    meta = metas[0]
    optional: dict[str, Any] = {} if args.decode_threads is None else {"decode_threads": args.decode_threads}
    if len(metas) == 1:
        source: Any = meta
        optional["delta_timestamps"] = {ACTION_KEY: [k / meta.fps for k in range(args.chunk)]}
    else:
        source = [streamnodes.Source(m, delta_timestamps={ACTION_KEY: [k / m.fps for k in range(args.chunk)]}) for m in metas]
        optional["weights"] = args.weights
    loader = streamnodes.build_loader(
        source,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        episode_pool_size=args.episode_pool_size,
        frame_shuffle_size=args.frame_shuffle_size,
        shuffle=True,
        seed=args.seed,
        image_dtype=torch.uint8 if args.image_dtype == "uint8" else torch.float32,
        drop_last=args.drop_last,
        **optional,
    )
    log.info(
        "rank %d/%d: %d worker(s), %d torch thread(s), batch size %d, about %s batches per epoch, cameras %s%s",
        session.rank, session.world_size, args.num_workers, torch.get_num_threads(), args.batch_size,
        loader.batches_per_epoch(), list(meta.video_keys), " [dummy: data loading only]" if args.dummy else "",
    )  # fmt: skip
    return meta, loader


def build_policy(
    args: argparse.Namespace, meta: Any, stats: Mapping[str, Any] | None = None
) -> tuple[Policy | None, torch.optim.Optimizer | None]:
    """The policy and its optimizer, the same initial weights on every rank; ``(None, None)`` for --dummy.

    ``stats`` normalise state and action (the loader's ``dataset_stats``: a mixture's merged statistics);
    default: ``meta.stats``."""
    if args.dummy:
        return None, None
    features = meta.features
    action_dim = int(math.prod(features[ACTION_KEY].shape))
    state_dim = int(math.prod(features[STATE_KEY].shape)) if STATE_KEY in features else 0
    torch.manual_seed(args.seed)
    model = Policy(list(meta.video_keys), state_dim, action_dim, args.chunk, stats=meta.stats if stats is None else stats)
    return model, torch.optim.AdamW(model.parameters(), lr=args.lr)


# ---------------------------------------------------------------------------------------------------
# Checkpoints.


@dataclass
class Resumed:
    """Where a run starts: step 0, or a checkpoint's step, samples and optimizer state."""

    step: int = 0
    samples: int = 0  # samples this rank consumed before the checkpoint
    path: Path | None = None
    optimizer_state: Mapping[str, Any] | None = None


# Flags that decide which sample comes when (with the world size): a checkpoint's loader state only fits
# them unchanged (the loader refuses it otherwise). --chunk sets the action window (delta_timestamps).
ORDER_FLAGS = ("dataset", "weights", "seed", "episode_pool_size", "frame_shuffle_size", "chunk")
# Flags that may differ between a run and its resume without saying so: where things go, how long, how loud.
BOOKKEEPING_FLAGS = ("output_dir", "resume_from", "steps", "save_every", "keep_last", "log_indices", "log_every",
                     "debug", "threads", "cpu")  # fmt: skip


def changed_flags(saved: Mapping[str, Any], now: argparse.Namespace, names: Sequence[str]) -> list[str]:
    """``--name saved -> now`` for each of ``names`` whose value differs from the saved run's."""
    current = vars(now)
    return [
        f"--{name} {saved[name]} -> {current[name]}"
        for name in names
        if name in saved and name in current and saved[name] != current[name]
    ]


class Checkpointer:
    """Saves and restores this rank's checkpoints under ``--output_dir`` (``streamnodes.recipes.checkpoint``).

    The loader checks a restored state itself (dataset, topology, stream configuration, version) and
    raises a ``StateError`` that says what differs; here that message gets the script's remedy (which
    flags differ from the checkpoint's run, or another --output_dir).
    """

    def __init__(self, args: argparse.Namespace, session: Session) -> None:
        self.args = args
        self.session = session
        self.output_dir = Path(args.output_dir)
        self.last_saved = -1

    def due(self, step: int) -> bool:
        return bool(self.args.save_every) and step % self.args.save_every == 0

    def resume_path(self) -> Path | None:
        """The checkpoint ``--resume_from`` names: a directory, the newest complete one (auto), or none."""
        from streamnodes.recipes.checkpoint import latest_checkpoint

        if not self.args.resume_from:
            return None
        if self.args.resume_from == "auto":
            found = latest_checkpoint(self.output_dir, self.session.world_size)
            if found is None:
                log.info("--resume_from auto: no complete checkpoint in %s, starting fresh", self.output_dir)
            return found
        return Path(self.args.resume_from)

    def restore(self, loader: Any, model: Policy | None) -> Resumed:
        """Restore the loader, the model and the torch RNG from the checkpoint to resume from, if any.

        The loader first: its state names the dataset, topology and stream settings it was saved with,
        so a checkpoint of another run is refused with that message before any model state is touched.
        """
        from streamnodes.errors import StateError, short_text
        from streamnodes.recipes.checkpoint import load_checkpoint

        path = self.resume_path()
        if path is None:
            return Resumed()
        checkpoint = load_checkpoint(path, self.session.rank, world_size=self.session.world_size)
        extra = checkpoint["extra"]
        saved_args = extra.get("args", {})
        try:
            loader.load_state_dict(checkpoint["loader"])
        except StateError as error:
            raise StateError(f"cannot resume from {path}: {short_text(error, None)} {self.remedy(saved_args)}") from None
        if model is not None:
            if checkpoint["model"] is None:
                raise StateError(
                    f"cannot resume from {path}: it holds no model (written by a --dummy run). Resume it with "
                    "--dummy, or train in another --output_dir."
                )
            try:
                model.load_state_dict(checkpoint["model"])  # the optimizer's state after prepare (device)
            except RuntimeError as error:
                raise StateError(
                    f"cannot resume from {path}: its model does not fit this policy ({short_text(error)}). "
                    f"{self.remedy(saved_args)}"
                ) from None
        changed = changed_flags(saved_args, self.args, [k for k in saved_args if k not in BOOKKEEPING_FLAGS])
        if changed:  # the loader refused the order settings above; --num_workers and the world size re-deal
            log.warning(
                "resuming with settings that differ from the checkpoint's run: %s. The sample stream continues "
                "where it stopped (%s shape its order; another --num_workers or world size re-deals the rest of "
                "the epoch over the new workers and ranks: nothing repeated, nothing lost).",
                ", ".join(changed), ", ".join(f"--{k}" for k in ORDER_FLAGS),
            )  # fmt: skip
        if "torch_rng" in extra:
            torch.set_rng_state(extra["torch_rng"])
        log.info("resumed from %s at step %d (loader epoch %s)", path, checkpoint["step"], extra.get("epoch"))
        self.last_saved = checkpoint["step"]
        return Resumed(checkpoint["step"], int(extra.get("samples", 0)), path, checkpoint["optimizer"])

    def remedy(self, saved_args: Mapping[str, Any]) -> str:
        """What to do about a checkpoint that does not fit this command line."""
        now = vars(self.args)
        differ = [f"--{k} {saved_args[k]}" for k in ORDER_FLAGS if k in saved_args and saved_args[k] != now.get(k)]
        back = f" ({' '.join(differ)})" if differ else ""
        return (
            f"To continue that run, use the settings it was written with{back}; to start a new run with these "
            f"settings, use another --output_dir than {self.output_dir}."
        )

    def withdraw_after(self, step: int) -> None:
        """Checkpoints saved after the resume point belong to a rolled-back future: withdraw this rank's
        markers from them, and let no rank save before every rank has done so."""
        from streamnodes.recipes.checkpoint import withdraw_after

        for stale in withdraw_after(self.output_dir, step, self.session.rank):
            log.info("rank %d withdrew its marker from %s (after the resume point)", self.session.rank, stale)
        self.session.accelerator.wait_for_everyone()

    def save(self, step: int, loader: Any, model: Any, optimizer: Any, samples: int, announce: Any) -> None:
        """This rank's part of checkpoint ``step``; rank 0 adds model and optimizer and prunes old ones."""
        from streamnodes.recipes.checkpoint import prune_checkpoints, save_checkpoint

        session = self.session
        unwrapped = session.accelerator.unwrap_model(model) if model is not None else None
        path = save_checkpoint(
            self.output_dir,
            step,
            model_state=unwrapped.state_dict() if unwrapped is not None and session.is_main else None,
            optimizer_state=optimizer.state_dict() if optimizer is not None and session.is_main else None,
            loader_state=loader.state_dict(),
            rank=session.rank,
            world_size=session.world_size,
            extra={
                "samples": samples,
                "epoch": int(loader.epoch),
                "args": json_safe_args(self.args),
                "torch_rng": torch.get_rng_state(),
            },
        )
        self.last_saved = step
        log.debug("rank %d saved %s", session.rank, path)
        if session.is_main:
            announce(f"checkpoint {path}")
            for old in prune_checkpoints(self.output_dir, self.args.keep_last):
                log.info("removed old checkpoint %s", old)


# ---------------------------------------------------------------------------------------------------
# The loop.


@dataclass
class Progress:
    """What this rank did in this run."""

    step: int
    samples: int = 0
    loss: float = float("nan")
    first_batch_s: float | None = None
    wall_s: float = 0.0


def train(
    args: argparse.Namespace,
    session: Session,
    loader: Any,
    model: Any,
    optimizer: Any,
    policy: Policy | None,
    checkpointer: Checkpointer,
    resumed: Resumed,
    progress: Progress,
) -> Progress:
    """Step until ``--steps``: a batch, a training step (unless --dummy), the index log, checkpoints.

    ``progress`` (starting at the resumed step) is updated in place, so an interrupt can say where it stopped.
    """
    from tqdm.auto import tqdm

    bar = tqdm(
        total=args.steps,
        initial=resumed.step,
        unit="step",
        desc="dummy" if args.dummy else "train",
        disable=not session.is_main,
        mininterval=1.0,
        dynamic_ncols=True,
    )
    index_log = IndexLog(args.log_indices, session.rank)

    def save() -> None:
        samples = resumed.samples + progress.samples
        checkpointer.save(progress.step, loader, model, optimizer, samples, bar.write)

    batches = endless(loader)
    t0 = time.perf_counter()
    try:
        while progress.step < args.steps:
            CTRL_C.check()
            batch = next(batches)
            if progress.first_batch_s is None:
                progress.first_batch_s = time.perf_counter() - t0
            if policy is not None:
                progress.loss = training_step(session.accelerator, model, optimizer, policy, batch)
            progress.step += 1
            progress.samples += batch_size_of(batch)
            index_log.write(progress.step, batch["index"])
            if checkpointer.due(progress.step):
                save()
            rate = progress.samples * session.world_size / (time.perf_counter() - t0)  # assumes equal batches
            bar.update(1)
            bar.set_postfix({"frames/s": f"{rate:.0f}", "epoch": int(loader.epoch)} | (
                {} if args.dummy else {"loss": f"{progress.loss:.4f}"}
            ), refresh=False)
            if args.log_every and progress.step % args.log_every == 0 and session.is_main:
                bar.write(f"step {progress.step} epoch {loader.epoch} loss {progress.loss:.5f} frames/s {rate:.0f}")
        if args.save_every and progress.step != checkpointer.last_saved:
            save()  # the final state, so a later --resume_from auto continues from here
    finally:
        bar.close()
        index_log.close()
    progress.wall_s = time.perf_counter() - t0
    return progress


def training_step(accelerator: Any, model: Any, optimizer: Any, policy: Policy, batch: Mapping[str, Any]) -> float:
    """One optimizer step on ``batch``; returns the loss."""
    inputs = to_device(batch, accelerator.device)  # the loader is not prepared: move the batch here
    # through the (possibly DDP-wrapped) model's forward, so gradients are all-reduced
    loss = masked_mse(policy, model(inputs), inputs)
    accelerator.backward(loss)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


# ---------------------------------------------------------------------------------------------------
# The end: totals over ranks, summary.json, one line.


def summarize(
    args: argparse.Namespace, session: Session, loader: Any, resumed: Resumed, progress: Progress
) -> dict[str, Any]:
    """The run's summary; sample counts are exact totals over ranks (one collective)."""
    accelerator, world_size = session.accelerator, session.world_size
    total_samples = progress.samples
    if world_size > 1:  # ranks' last batches may differ in size
        counted = accelerator.reduce(torch.tensor([progress.samples], device=accelerator.device), reduction="sum")
        total_samples = int(counted.item())
    wall, first = progress.wall_s, progress.first_batch_s
    steps_this_run = progress.step - resumed.step
    return {
        "steps": progress.step,
        "steps_this_run": steps_this_run,
        "resumed_from": str(resumed.path) if resumed.path is not None else None,
        "samples_this_run": total_samples,
        "samples_total": total_samples + resumed.samples * world_size,
        "world_size": world_size,
        "num_workers": args.num_workers,
        "batch_size": args.batch_size,
        "epoch": int(loader.epoch),
        "wall_s": round(wall, 3),
        "first_batch_s": round(first, 3) if first is not None else None,
        "frames_per_s": round(total_samples / wall if wall > 0 else float("nan"), 1),
        "frames_per_s_after_first_batch": (
            round((total_samples - args.batch_size * world_size) / (wall - first), 1)
            if first is not None and wall > first and steps_this_run > 1
            else None
        ),
        "final_loss": None if args.dummy else progress.loss,
        "dummy": args.dummy,
    }


def report(
    args: argparse.Namespace, session: Session, progress: Progress, summary: Mapping[str, Any]
) -> None:
    """Rank 0 writes ``output_dir/summary.json`` and prints the one-line summary."""
    from streamnodes.recipes.checkpoint import atomic_write_text

    if not session.is_main:
        return
    atomic_write_text(json.dumps(summary, indent=2) + "\n", Path(args.output_dir) / "summary.json")
    wall, samples = progress.wall_s, summary["samples_this_run"]
    rate = samples / wall if wall > 0 else float("nan")
    steady = summary["frames_per_s_after_first_batch"]
    print(
        f"{'dummy' if args.dummy else 'train'} done: steps {summary['steps'] - summary['steps_this_run']}->"
        f"{summary['steps']}, "
        f"{samples} samples on {session.world_size} rank(s) x {args.num_workers} worker(s), "
        f"{wall:.1f} s wall, {rate:.0f} frames/s"
        + (f" ({steady:.0f} after the first batch at {summary['first_batch_s']:.1f} s)" if steady else "")
        + ("" if args.dummy else f", final loss {summary['final_loss']:.4f}"),
        flush=True,
    )


# ---------------------------------------------------------------------------------------------------
# Ends without training: nothing to do, Ctrl-C.


def nothing_to_do(args: argparse.Namespace, session: Session, resumed: Resumed) -> dict[str, Any]:
    """The checkpoint is at or past ``--steps``: say so in one line (rank 0); no bar, no summary.json."""
    if session.is_main:
        ended = "the run finished at" if resumed.step == args.steps else "the checkpoint is past --steps, at"
        print(
            f"nothing to do: {ended} step {resumed.step} ({resumed.path}; --steps {args.steps}). To train on, pass "
            f"a larger --steps with --resume_from auto; to start a new run, use another --output_dir.",
            flush=True,
        )
    return {"steps": resumed.step, "steps_this_run": 0, "resumed_from": str(resumed.path), "nothing_to_do": True}


class CtrlC:
    """Python's Ctrl-C (SIGINT raises KeyboardInterrupt), plus a note that it happened, checked every step.

    CPython swallows an exception raised inside an at-fork callback or a finalizer. A Ctrl-C that lands
    while a DataLoader worker is being forked was printed as "Exception ignored in: <function
    _releaseLock ...>" with a traceback, and training went on. The note makes the next step stop the run
    anyway, and while installed the swallowed KeyboardInterrupt is logged at debug level instead of
    printed (other unraisable exceptions still go to the previous ``sys.unraisablehook``).
    """

    def __init__(self) -> None:
        self.pressed = False

    def __call__(self, signum: int, frame: Any) -> None:
        self.pressed = True
        raise KeyboardInterrupt

    def check(self) -> None:
        """Raise KeyboardInterrupt if a Ctrl-C came and its exception was swallowed."""
        if self.pressed:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def installed(self) -> Iterator[CtrlC]:
        """Handle SIGINT while the block runs, where Python's own handler is in place (not when SIGINT is
        ignored, as for a background job, or when called off the main thread)."""
        self.pressed = False  # a run in the same process starts without the last one's Ctrl-C
        previous = signal.getsignal(signal.SIGINT)
        mine = previous is signal.default_int_handler and threading.current_thread() is threading.main_thread()
        if not mine:
            yield self
            return
        previous_hook = sys.unraisablehook

        def hook(unraisable: Any) -> None:
            if self.pressed and isinstance(unraisable.exc_value, KeyboardInterrupt):
                log.debug("Ctrl-C raised where Python drops exceptions (%s); stopping at the next step", unraisable.object)
                return
            previous_hook(unraisable)

        signal.signal(signal.SIGINT, self)
        sys.unraisablehook = hook
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)
            sys.unraisablehook = previous_hook


CTRL_C = CtrlC()


@dataclass
class Live:
    """What a Ctrl-C needs to know, filled in as the run gets going."""

    session: Session | None = None
    loader: Any = None
    resumed: Resumed | None = None
    progress: Progress | None = None


def resume_command(argv: Sequence[str], resume_from: str, world_size: int) -> str:
    """The command line of this run with ``--resume_from resume_from`` (any earlier one replaced)."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        flag = arg.split("=", 1)[0]
        if skip:
            skip = False
        elif len(flag) > 3 and "--resume_from".startswith(flag):  # argparse accepts unique prefixes
            skip = "=" not in arg
        else:
            kept.append(arg)
    script = sys.argv[0] if Path(sys.argv[0]).name == Path(__file__).name else str(Path(__file__))
    command = shlex.join([script, *kept, "--resume_from", resume_from])
    return f"python {command}" if world_size == 1 else f"the same launcher (e.g. accelerate launch ...) with {command}"


def interrupted_message(args: argparse.Namespace, argv: Sequence[str], live: Live) -> str:
    """One line: where the run stopped, its last complete checkpoint (or none) and how to resume."""
    from streamnodes.errors import StreamNodesError
    from streamnodes.recipes.checkpoint import checkpoint_step, latest_checkpoint

    world_size = live.session.world_size if live.session is not None else int(os.environ.get("WORLD_SIZE", "1"))
    if live.progress is not None:
        where = f"at step {live.progress.step} (epoch {int(live.loader.epoch)})"
    else:
        where = "before the first step"
    try:
        latest = latest_checkpoint(args.output_dir, world_size)
    except StreamNodesError:  # another world size's checkpoints: this run never resumed from them
        latest = None
    if latest is not None:
        last = f"last complete checkpoint: {latest} (step {checkpoint_step(latest)})"
        resume = f"resume with: {resume_command(argv, 'auto', world_size)}"
    elif live.resumed is not None and live.resumed.path is not None:  # --resume_from a directory elsewhere
        last = f"no complete checkpoint in {args.output_dir}; this run resumed from {live.resumed.path}"
        resume = f"resume with: {resume_command(argv, str(live.resumed.path), world_size)}"
    else:
        saving = f"--save_every {args.save_every}" if args.save_every else "--save_every 0: none are saved"
        last = f"no complete checkpoint in {args.output_dir} yet ({saving})"
        resume = f"start again with: {resume_command(argv, 'auto', world_size)}"
    return f"interrupted {where}; {last}; {resume}"


# ---------------------------------------------------------------------------------------------------
# main: parse -> set up -> checkpointer -> loop -> summary.


def run(args: argparse.Namespace, live: Live) -> dict[str, Any]:
    """Set up, restore, train, summarize; ``live`` says how far it got."""
    session = live.session = start_session(args)
    meta, loader = open_stream(args, session)
    live.loader = loader
    policy, optimizer = build_policy(args, meta, loader.dataset_stats)

    checkpointer = Checkpointer(args, session)
    resumed = live.resumed = checkpointer.restore(loader, policy)  # the loader's checks first
    if resumed.step >= args.steps:
        loader.shutdown()
        session.accelerator.end_training()
        return nothing_to_do(args, session, resumed)
    checkpointer.withdraw_after(resumed.step)

    model = policy
    if policy is not None:
        model, optimizer = session.accelerator.prepare(policy, optimizer)  # the loader stays out (module doc)
        if resumed.optimizer_state is not None:
            optimizer.load_state_dict(resumed.optimizer_state)  # AcceleratedOptimizer moves it to the device

    progress = live.progress = Progress(step=resumed.step)
    train(args, session, loader, model, optimizer, policy, checkpointer, resumed, progress)
    summary = summarize(args, session, loader, resumed, progress)
    report(args, session, progress, summary)
    loader.shutdown()
    session.accelerator.end_training()
    return summary


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run; on Ctrl-C (SIGINT) stop the loader, print one line saying where and how to resume, exit 130.

    A Ctrl-C in a terminal reaches the DataLoader workers too: torch's worker loop ends quietly on
    KeyboardInterrupt, and the main process shuts them down (``loader.shutdown()``). One that CPython
    swallowed (:class:`CtrlC`) stops the run at the next step.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    live = Live()
    try:
        with CTRL_C.installed():
            return run(args, live)
    except KeyboardInterrupt:
        with contextlib.suppress(ValueError):  # only the main thread may set handlers
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C does not interrupt the clean-up
        if live.loader is not None:
            live.loader.shutdown()
        if live.session is None or live.session.is_main:
            print(interrupted_message(args, argv, live), file=sys.stderr, flush=True)
        raise SystemExit(130) from None


if __name__ == "__main__":
    from streamnodes.errors import StreamNodesError

    try:
        main()
    except StreamNodesError as error:  # a checkpoint or launch that does not fit: say why, without a traceback
        sys.exit(f"error: {error}")
