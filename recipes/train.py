"""Train a small policy (state + camera frames -> action chunk) on a LeRobot v3 dataset, resumably.

Runs under plain ``python`` (one process) or ``accelerate launch`` / ``torchrun`` (one process per rank)::

    python recipes/train.py --dataset demo_data/ds --output_dir runs/a --steps 200 --save_every 50
    accelerate launch --num_processes 2 --cpu recipes/train.py --dataset ... --output_dir runs/b
    python recipes/train.py --dataset ... --output_dir runs/a --steps 400 --resume_from auto
    python recipes/train.py --dataset ... --dummy            # data loading only: no model

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
import json
import logging
import math
import os
import sys
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

# torchdata 0.11's StatefulDataLoader calls a deprecated torch API on every iter(): not our concern.
warnings.filterwarnings("ignore", message=".*set_vital.*is deprecated")

log = logging.getLogger("train")

STATE_KEY = "observation.state"
ACTION_KEY = "action"
# Arguments that shape the data stream: a resume with other values is refused by the loader (or
# would train on another stream), so they are compared with the checkpoint's and reported.
STREAM_ARGS = (
    "dataset",
    "batch_size",
    "num_workers",
    "episode_pool_size",
    "frame_shuffle_size",
    "seed",
    "chunk",
    "image_dtype",
    "drop_last",
)


# ---------------------------------------------------------------------------------------------------
# Command line.


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--dataset", required=True, help="LeRobot v3 dataset: a local root or an fsspec URL")
    p.add_argument("--output_dir", default="runs/train", help="checkpoints and summary.json go here")
    p.add_argument("--steps", type=int, default=1000, help="total optimizer steps (counting resumed ones)")
    p.add_argument("--batch_size", type=int, default=32, help="samples per batch and rank")
    p.add_argument("--num_workers", type=int, default=2, help="DataLoader worker processes per rank")
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
    p.add_argument("--image_dtype", choices=("uint8", "float32"), default="float32", help="decoded frame dtype")
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
    for name in ("num_workers", "save_every", "keep_last", "log_every", "frame_shuffle_size", "threads"):
        if getattr(args, name) < 0:
            p.error(f"--{name} must be >= 0")
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


def build_loader_fn() -> Any:
    import streamnodes

    if hasattr(streamnodes, "build_loader"):
        return streamnodes.build_loader
    from streamnodes.recipes import build_loader  # until the top-level re-export exists

    return build_loader


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
    return {k: v for k, v in vars(args).items() if isinstance(v, str | int | float | bool | type(None))}


def batch_size_of(batch: Mapping[str, Any]) -> int:
    return int(batch["index"].shape[0])


def resolve_resume(args: argparse.Namespace, world_size: int) -> Path | None:
    from streamnodes.recipes.checkpoint import latest_checkpoint

    if not args.resume_from:
        return None
    if args.resume_from == "auto":
        found = latest_checkpoint(args.output_dir, world_size)
        if found is None:
            log.info("--resume_from auto: no complete checkpoint in %s, starting fresh", args.output_dir)
        return found
    return Path(args.resume_from)


def _same_dataset(a: Any, b: Any) -> bool:
    local = isinstance(a, str) and isinstance(b, str) and "://" not in a + b
    return a == b or (local and os.path.realpath(a) == os.path.realpath(b))


def compare_stream_args(saved: Mapping[str, Any], args: argparse.Namespace) -> None:
    diffs = {
        k: (saved[k], getattr(args, k))
        for k in STREAM_ARGS
        if k in saved
        and not (_same_dataset(saved[k], args.dataset) if k == "dataset" else saved[k] == getattr(args, k))
    }
    if diffs:
        log.warning(
            "resuming with other data settings than the checkpoint was saved with: %s",
            ", ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in diffs.items()),
        )


# ---------------------------------------------------------------------------------------------------
# Training.


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)

    # The Accelerator first: build_loader discovers rank and world size from it.
    from accelerate import Accelerator

    # On a machine without CUDA, accelerate only forms a multi-process group when told to use the CPU
    # (otherwise every process believes it is rank 0 of 1 and they all read the same data).
    launched_world = int(os.environ.get("WORLD_SIZE", "1"))
    use_cpu = args.cpu or (launched_world > 1 and not torch.cuda.is_available())
    accelerator = Accelerator(cpu=use_cpu)
    rank, world_size = accelerator.process_index, accelerator.num_processes
    if "WORLD_SIZE" in os.environ and world_size != launched_world:
        raise SystemExit(
            f"the launcher started {launched_world} processes (WORLD_SIZE) but accelerate sees {world_size}: "
            "every process would read the same data. Launch with `accelerate launch --multi_gpu "
            "--num_processes N` or `torchrun --nproc_per_node N` (and --cpu on a machine without GPUs)."
        )
    is_main = accelerator.is_main_process
    setup_logging(rank, args.debug)
    threads = args.threads or (training_threads(args.num_workers) if accelerator.device.type == "cpu" else 0)
    if threads:
        # torch's default (one thread per core) fights the decoding workers for the cores: measured 5x
        # slower training steps on 2 cores with 2 workers and a busy machine.
        torch.set_num_threads(threads)

    import streamnodes
    from streamnodes.recipes.checkpoint import (
        load_checkpoint,
        prune_checkpoints,
        save_checkpoint,
        withdraw_after,
    )

    meta = streamnodes.open_dataset(args.dataset)
    cameras = list(meta.video_keys)
    if ACTION_KEY not in meta.features:
        raise SystemExit(f"{args.dataset} has no {ACTION_KEY!r} feature: nothing to train on")
    action_dim = int(math.prod(meta.features[ACTION_KEY].shape))
    state_dim = int(math.prod(meta.features[STATE_KEY].shape)) if STATE_KEY in meta.features else 0
    log.info("dataset %r", meta)

    # The loader: this rank's part of the stream. NOT passed to accelerator.prepare (see module doc).
    loader = build_loader_fn()(
        meta,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        delta_timestamps={ACTION_KEY: [k / meta.fps for k in range(args.chunk)]},
        episode_pool_size=args.episode_pool_size,
        frame_shuffle_size=args.frame_shuffle_size,
        shuffle=True,
        seed=args.seed,
        image_dtype=torch.uint8 if args.image_dtype == "uint8" else torch.float32,
        drop_last=args.drop_last,
    )

    batches_per_epoch = loader.batches_per_epoch() if hasattr(loader, "batches_per_epoch") else "?"
    log.info(
        "rank %d/%d: %d worker(s), %d torch thread(s), batch size %d, about %s batches per epoch, cameras %s%s",
        rank, world_size, args.num_workers, torch.get_num_threads(), args.batch_size, batches_per_epoch, cameras,
        " [dummy: data loading only]" if args.dummy else "",
    )  # fmt: skip

    model: Policy | None = None
    optimizer: torch.optim.Optimizer | None = None
    if not args.dummy:
        torch.manual_seed(args.seed)  # the same initial weights on every rank
        model = Policy(cameras, state_dim, action_dim, args.chunk, stats=meta.stats)
        optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)

    step, samples_before = 0, 0
    resume = resolve_resume(args, world_size)
    if resume is not None:
        checkpoint = load_checkpoint(resume, rank, world_size=world_size)
        step = checkpoint["step"]
        extra = checkpoint["extra"]
        samples_before = int(extra.get("samples", 0))
        compare_stream_args(extra.get("args", {}), args)
        loader.load_state_dict(checkpoint["loader"])
        if model is not None and optimizer is not None:
            if checkpoint["model"] is None:
                raise SystemExit(f"{resume} holds no model (a --dummy checkpoint?): cannot resume training from it")
            model.load_state_dict(checkpoint["model"])  # the optimizer's state after prepare (device)
        if "torch_rng" in extra:
            torch.set_rng_state(extra["torch_rng"])
        log.info("resumed from %s at step %d (loader epoch %s)", resume, step, extra.get("epoch"))
    # checkpoints saved after the resume point belong to a rolled-back future: withdraw this rank's
    # markers from them, and let no rank save before every rank has done so
    for stale in withdraw_after(args.output_dir, step, rank):
        log.info("rank %d withdrew its marker from %s (after the resume point)", rank, stale)
    accelerator.wait_for_everyone()

    policy = model
    if model is not None:
        model, optimizer = accelerator.prepare(model, optimizer)  # the loader stays out (see module doc)
        if resume is not None:
            optimizer.load_state_dict(checkpoint["optimizer"])  # AcceleratedOptimizer moves it to the device

    from tqdm.auto import tqdm

    bar = tqdm(
        total=args.steps,
        initial=step,
        unit="step",
        desc="dummy" if args.dummy else "train",
        disable=not is_main,
        mininterval=1.0,
        dynamic_ncols=True,
    )
    index_log = IndexLog(args.log_indices, rank)
    output_dir = Path(args.output_dir)
    start_step, samples, loss_value = step, 0, float("nan")
    last_saved = step if resume is not None else -1
    first_batch_s: float | None = None
    t0 = time.perf_counter()

    def save(at_step: int) -> None:
        nonlocal last_saved
        unwrapped = accelerator.unwrap_model(model) if model is not None else None
        path = save_checkpoint(
            output_dir,
            at_step,
            model_state=unwrapped.state_dict() if unwrapped is not None and is_main else None,
            optimizer_state=optimizer.state_dict() if optimizer is not None and is_main else None,
            loader_state=loader.state_dict(),
            rank=rank,
            world_size=world_size,
            extra={
                "samples": samples_before + samples,
                "epoch": int(loader.epoch),
                "args": json_safe_args(args),
                "torch_rng": torch.get_rng_state(),
            },
        )
        last_saved = at_step
        log.debug("rank %d saved %s", rank, path)
        if is_main:
            bar.write(f"checkpoint {path}")
            for old in prune_checkpoints(output_dir, args.keep_last):
                log.info("removed old checkpoint %s", old)

    batches = endless(loader)
    try:
        while step < args.steps:
            batch = next(batches)
            if first_batch_s is None:
                first_batch_s = time.perf_counter() - t0
            if model is not None and optimizer is not None:
                inputs = to_device(batch, accelerator.device)  # the loader is not prepared: move it here
                # through the (possibly DDP-wrapped) model's forward, so gradients are all-reduced
                loss = masked_mse(policy, model(inputs), inputs)
                accelerator.backward(loss)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                loss_value = float(loss.detach())
            step += 1
            samples += batch_size_of(batch)
            index_log.write(step, batch["index"])
            if args.save_every and step % args.save_every == 0:
                save(step)
            elapsed = time.perf_counter() - t0
            rate = samples * world_size / elapsed  # all ranks, assuming equal batches (exact total at the end)
            bar.update(1)
            bar.set_postfix({"frames/s": f"{rate:.0f}", "epoch": int(loader.epoch)} | (
                {} if args.dummy else {"loss": f"{loss_value:.4f}"}
            ), refresh=False)
            if args.log_every and step % args.log_every == 0 and is_main:
                bar.write(f"step {step} epoch {loader.epoch} loss {loss_value:.5f} frames/s {rate:.0f}")
        if args.save_every and step != last_saved:
            save(step)  # the final state, so a later --resume_from auto continues from here
    finally:
        bar.close()
        index_log.close()
    wall = time.perf_counter() - t0

    # Exact totals over ranks (one collective at the end; ranks' last batches may differ in size).
    total_samples = samples
    if world_size > 1:
        total_samples = int(accelerator.reduce(torch.tensor([samples], device=accelerator.device), reduction="sum").item())
    rate = total_samples / wall if wall > 0 else float("nan")
    summary = {
        "steps": step,
        "steps_this_run": step - start_step,
        "resumed_from": str(resume) if resume is not None else None,
        "samples_this_run": total_samples,
        "samples_total": total_samples + samples_before * world_size,
        "world_size": world_size,
        "num_workers": args.num_workers,
        "batch_size": args.batch_size,
        "epoch": int(loader.epoch),
        "wall_s": round(wall, 3),
        "first_batch_s": round(first_batch_s, 3) if first_batch_s is not None else None,
        "frames_per_s": round(rate, 1),
        "frames_per_s_after_first_batch": (
            round((total_samples - args.batch_size * world_size) / (wall - first_batch_s), 1)
            if first_batch_s is not None and wall > first_batch_s and step - start_step > 1
            else None
        ),
        "final_loss": None if args.dummy else loss_value,
        "dummy": args.dummy,
    }
    if is_main:
        from streamnodes.recipes.checkpoint import atomic_write_text

        atomic_write_text(json.dumps(summary, indent=2) + "\n", output_dir / "summary.json")
        print(
            f"{'dummy' if args.dummy else 'train'} done: steps {start_step}->{step}, "
            f"{total_samples} samples on {world_size} rank(s) x {args.num_workers} worker(s), "
            f"{wall:.1f} s wall, {rate:.0f} frames/s"
            + (f" ({summary['frames_per_s_after_first_batch']:.0f} after the first batch at {first_batch_s:.1f} s)"
               if summary["frames_per_s_after_first_batch"] else "")
            + ("" if args.dummy else f", final loss {loss_value:.4f}"),
            flush=True,
        )
    accelerator.end_training()
    return summary


if __name__ == "__main__":
    from streamnodes.errors import StateError

    try:
        main()
    except StateError as error:  # a checkpoint that does not fit: say why, without a traceback
        sys.exit(f"error: {error}")
