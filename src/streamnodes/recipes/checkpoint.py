"""Training checkpoints with one loader state file per rank, written atomically.

Layout of one checkpoint (``save_checkpoint(dir, step, ...)``)::

    dir/step-00000500/
        model.pt            rank 0: the model's state_dict (absent when there is no model, e.g. --dummy)
        optimizer.pt        rank 0: the optimizer's state_dict
        loader-rank0.pt     every rank its own: {"format", "step", "rank", "world_size", "loader", "extra"}
        loader-rank1.pt
        complete-rank0      written last by each rank (JSON: step, rank, world_size)
        complete-rank1

Every file goes through :func:`atomic_save`: a temporary file in the same directory, ``fsync``, then
``os.replace``. A process killed mid-save leaves the previous version of the file (or none), never half
a file. A checkpoint counts as complete once every rank has written its ``complete-rank{r}`` marker, and
a rank writes its marker only after its own files: :func:`latest_checkpoint` returns the newest
complete checkpoint, so a kill during a save falls back to the one before.

Loader states are per rank because each rank reads its own part of the stream (docs/checkpointing.md). A
checkpoint resumed with another world size gives every rank all the ranks' loader states, which the loader
re-deals over the new topology (elastic resume).
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from streamnodes.errors import StateError

__all__ = [
    "CHECKPOINT_FORMAT",
    "atomic_save",
    "atomic_write_text",
    "checkpoint_step",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "prune_checkpoints",
    "save_checkpoint",
    "step_dir",
]

CHECKPOINT_FORMAT = 1
MODEL_FILE = "model.pt"
OPTIMIZER_FILE = "optimizer.pt"
LOADER_FILE = "loader-rank{rank}.pt"
MARKER_FILE = "complete-rank{rank}"
_STEP_DIR = re.compile(r"^step-(\d{8,})$")
_MARKER = re.compile(r"^complete-rank(\d+)$")


# ---------------------------------------------------------------------------------------------------
# Atomic writes.


def _fsync_dir(directory: Path) -> None:
    """Persist a rename inside ``directory`` (best effort: not every platform can open a directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0o022)  # the only way to read it is to set it; put it straight back
    os.umask(mask)
    return mask


def _atomic_write(path: str | os.PathLike[str], write: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the mode a plain open() would
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save(obj)`` to ``path`` atomically: the file is either the old one or the complete new one.

    Writes a temporary file next to ``path`` (same file system, so the rename is atomic), fsyncs it,
    ``os.replace``-s it over ``path`` and fsyncs the directory. On an exception the temporary file is
    removed; on a kill it stays behind as ``.<name>.*.tmp`` and is ignored by everything here.
    """
    return _atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(text: str, path: str | os.PathLike[str]) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically, like :func:`atomic_save`."""
    data = text.encode("utf-8")
    return _atomic_write(path, lambda f: f.write(data))


# ---------------------------------------------------------------------------------------------------
# Saving.


def step_dir(directory: str | os.PathLike[str], step: int) -> Path:
    """``directory/step-XXXXXXXX``: where the checkpoint of ``step`` lives."""
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    return Path(directory) / f"step-{step:08d}"


def checkpoint_step(path: str | os.PathLike[str]) -> int:
    """The step of a checkpoint directory named ``step-XXXXXXXX`` (``ValueError`` for another name)."""
    match = _STEP_DIR.match(Path(path).name)
    if match is None:
        raise ValueError(f"{path} is not a checkpoint directory (expected a name like step-00000500)")
    return int(match.group(1))


def save_checkpoint(
    directory: str | os.PathLike[str],
    step: int,
    *,
    model_state: Mapping[str, Any] | None,
    optimizer_state: Mapping[str, Any] | None,
    loader_state: Mapping[str, Any],
    rank: int,
    world_size: int,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write this rank's part of the checkpoint of ``step`` under ``directory`` and return its path.

    Every rank calls this with its own ``loader_state`` (and ``extra``, saved in the rank's loader file);
    rank 0 also writes ``model_state`` and ``optimizer_state`` (other ranks' are ignored, pass ``None``).
    Each rank writes its ``complete-rank{r}`` marker last. Saving the same step again (e.g. after a
    resume from an older checkpoint) first withdraws this rank's marker, so a kill in between never
    leaves a complete-looking mixture.

    Everything must be loadable with ``torch.load(weights_only=True)``: plain Python types, tensors,
    no numpy scalars.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
    path = step_dir(directory, step)
    path.mkdir(parents=True, exist_ok=True)
    marker = path / MARKER_FILE.format(rank=rank)
    with contextlib.suppress(FileNotFoundError):
        marker.unlink()
    if rank == 0:
        if model_state is not None:
            atomic_save(dict(model_state), path / MODEL_FILE)
        if optimizer_state is not None:
            atomic_save(dict(optimizer_state), path / OPTIMIZER_FILE)
    atomic_save(
        {
            "format": CHECKPOINT_FORMAT,
            "step": int(step),
            "rank": int(rank),
            "world_size": int(world_size),
            "loader": dict(loader_state),
            "extra": dict(extra or {}),
        },
        path / LOADER_FILE.format(rank=rank),
    )
    atomic_write_text(json.dumps({"step": int(step), "rank": int(rank), "world_size": int(world_size)}), marker)
    return path


# ---------------------------------------------------------------------------------------------------
# Finding and loading.


def _markers(path: Path) -> dict[int, dict[str, Any]]:
    """The readable ``complete-rank{r}`` markers of a checkpoint directory, by rank."""
    out: dict[int, dict[str, Any]] = {}
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for entry in path.iterdir():
            match = _MARKER.match(entry.name)
            if match is None:
                continue
            try:
                out[int(match.group(1))] = json.loads(entry.read_text())
            except (OSError, ValueError):
                continue  # unreadable: treat as absent
    return out


def _written_world_size(path: Path) -> int | None:
    """The world size a checkpoint was written with when it is complete, else ``None``.

    Complete: markers of ranks ``0..W-1`` exist and all say world size ``W``.
    """
    markers = _markers(path)
    sizes = {int(m.get("world_size", -1)) for m in markers.values()}
    if len(sizes) != 1:
        return None
    (world_size,) = sizes
    if world_size < 1 or set(range(world_size)) - set(markers):
        return None
    return world_size


def list_checkpoints(directory: str | os.PathLike[str]) -> list[Path]:
    """Every ``step-XXXXXXXX`` directory under ``directory``, complete or not, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if p.is_dir() and _STEP_DIR.match(p.name)]
    return sorted(found, key=checkpoint_step)


def latest_checkpoint(directory: str | os.PathLike[str], world_size: int | None = None) -> Path | None:
    """The newest complete checkpoint under ``directory``, or ``None`` when there is none.

    Complete means every rank of the run that wrote it finished its files (all its markers exist);
    half-written checkpoints of a killed run are skipped. The world size it was written with may differ
    from this run's (``world_size``, kept for callers that pass it): :func:`load_checkpoint` then
    gives every rank all the ranks' loader states, and the loader re-deals the rest of the epoch
    (elastic resume, docs/checkpointing.md).
    """
    del world_size
    for path in reversed(list_checkpoints(directory)):
        if _written_world_size(path) is not None:
            return path
    return None


def load_checkpoint(
    path: str | os.PathLike[str], rank: int, *, world_size: int | None = None
) -> dict[str, Any]:
    """Load what ``rank`` needs from the checkpoint directory ``path``.

    Returns ``{"step", "world_size", "model", "optimizer", "loader", "extra"}``; ``model`` and
    ``optimizer`` are ``None`` when the checkpoint has none (a ``--dummy`` run). Every file is read with
    ``torch.load(weights_only=True)`` on the CPU.

    ``loader`` is this rank's own loader state when the checkpoint was written with this run's
    ``world_size`` (or ``world_size`` is not given); otherwise it is the list of EVERY rank's loader
    state, which ``StreamLoader.load_state_dict`` re-deals over the new topology (elastic resume), and
    ``extra`` is this rank's if it existed, else rank 0's.

    Raises :class:`StateError` when ``path`` is not a complete checkpoint, when this rank's loader
    file is missing although the world size is the same, or when a file belongs to another run.
    """
    path = Path(path)
    if not path.is_dir():
        raise StateError(f"checkpoint {path} does not exist (expected a directory like step-00000500)")
    written = _written_world_size(path)
    if written is None:
        present = sorted(_markers(path))
        raise StateError(
            f"checkpoint {path} is incomplete: completion markers exist for ranks {present} only (a run was "
            "probably killed while saving it). Resume from an older checkpoint, e.g. with --resume_from auto."
        )
    elastic = world_size is not None and written != world_size
    if elastic:
        per_rank_files = [_load_rank(path, r, written) for r in range(written)]
        own = per_rank_files[rank] if rank < written else per_rank_files[0]
        loader: Any = [f["loader"] for f in per_rank_files]
    else:
        own = _load_rank(path, rank, written)
        loader = own["loader"]

    def optional(name: str) -> Any:
        file = path / name
        return _load(file) if file.is_file() else None

    return {
        "step": int(own["step"]),
        "world_size": written,
        "model": optional(MODEL_FILE),
        "optimizer": optional(OPTIMIZER_FILE),
        "loader": loader,
        "extra": own.get("extra", {}),
    }


def _load_rank(path: Path, rank: int, written: int) -> dict[str, Any]:
    """Rank ``rank``'s loader file of a complete checkpoint written by ``written`` ranks, checked."""
    loader_path = path / LOADER_FILE.format(rank=rank)
    if not loader_path.is_file():
        files = sorted(p.name for p in path.glob("loader-rank*.pt"))
        raise StateError(
            f"checkpoint {path} has no loader state for rank {rank} (it holds {files}, written by {written} "
            f"rank(s)). Pass world_size= to load every rank's state for an elastic resume."
        )
    per_rank = _load(loader_path)
    if per_rank.get("format") != CHECKPOINT_FORMAT:
        raise StateError(
            f"{loader_path} has checkpoint format {per_rank.get('format')!r}; this version of streamnodes "
            f"reads format {CHECKPOINT_FORMAT}. Resume with the streamnodes version that wrote it, or start fresh."
        )
    if int(per_rank["rank"]) != rank or int(per_rank["world_size"]) != written:
        raise StateError(
            f"{loader_path} says rank {per_rank['rank']} of {per_rank['world_size']}, expected rank {rank} "
            f"of {written}: the checkpoint directory was assembled from different runs. Resume from a checkpoint written by one run."
        )
    return per_rank


def _load(file: Path) -> Any:
    """``torch.load(weights_only=True)`` on the CPU; a file it refuses is a :class:`StateError` naming it."""
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
        text = " ".join(str(e).split())[:300]
        raise StateError(
            f"{file}: cannot be loaded with torch.load(weights_only=True) ({text}). Checkpoints hold plain Python "
            "types and tensors only (no numpy scalars); save it again from a state of this streamnodes."
        ) from None


def prune_checkpoints(directory: str | os.PathLike[str], keep_last: int) -> list[Path]:
    """Delete complete checkpoints older than the ``keep_last`` newest complete ones; return them.

    Incomplete directories are left alone (another rank may still be writing one). ``keep_last < 1``
    keeps everything.
    """
    if keep_last < 1:
        return []
    complete = [p for p in list_checkpoints(directory) if _written_world_size(p) is not None]
    doomed = complete[:-keep_last]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed


def withdraw_after(directory: str | os.PathLike[str], step: int, rank: int) -> list[Path]:
    """Remove this rank's completion marker from every checkpoint saved after ``step``; return them.

    A run that resumes from ``step`` (0: from scratch) rolls back everything after it, including the
    checkpoints it had saved: they belong to a future that did not happen. Without this, a killed
    run's marker can meet another rank's marker written after the restart in the same ``step-N``
    directory, and a later resume would stitch one checkpoint from two incarnations. Call it on every
    rank before training, followed by a barrier, so no rank saves before every stale marker is gone.
    """
    withdrawn = []
    for path in list_checkpoints(directory):
        if checkpoint_step(path) > step:
            marker = path / MARKER_FILE.format(rank=rank)
            if marker.exists():
                marker.unlink()
                withdrawn.append(path)
    if withdrawn:
        _fsync_dir(Path(directory))
    return withdrawn
