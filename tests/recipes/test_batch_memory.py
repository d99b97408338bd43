"""Batch memory through the packaged loader (BatchDecode in the graph): layout, safety, pinning, leaks.

- camera tensors arrive channels-last with LeRobot's shape, equal to the contiguous layout's values;
- a batch the trainer still holds is never overwritten by later batches (each batch has its own
  memory; nothing is recycled), with workers sending it through shared memory;
- ``pin_memory=True`` on a machine without CUDA yields the same batches (pinning is skipped: torch
  has no page-locked memory without an accelerator);
- workers killed mid-epoch leave no shared-memory segments behind (a batch's tensors live in anonymous
  memfds, which have no name to leave; the test looks in /dev/shm to be sure).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from streamnodes import build_loader

CAMERAS = ("observation.images.front", "observation.images.wrist")
DELTAS = {"observation.images.front": [-0.1, 0.0], "action": [0.0, 0.1, 0.2]}


def _loader(root: Path, **kw):
    settings = {"batch_size": 4, "image_dtype": torch.uint8, "delta_timestamps": DELTAS, "episode_pool_size": 2, "seed": 3}
    return build_loader(root, **{**settings, **kw})


def _shm_entries() -> set[str]:
    return set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()


def test_channels_last_batches_equal_contiguous_ones(video_dataset) -> None:
    fast = list(_loader(video_dataset, decode_threads=2))
    plain = list(_loader(video_dataset, decode_threads=0, layout="contiguous"))
    assert len(fast) == len(plain) > 3
    for a, b in zip(fast, plain, strict=True):
        front, wrist = a[CAMERAS[0]], a[CAMERAS[1]]
        assert front.dim() == 5 and front.shape[2] == 3 and wrist.dim() == 4 and wrist.shape[1] == 3
        assert front.stride()[2] == 1 and wrist.stride()[1] == 1  # channels are the innermost dimension
        assert b[CAMERAS[0]].is_contiguous() and b[CAMERAS[1]].is_contiguous()
        assert set(a) == set(b)
        for key in a:
            if isinstance(a[key], torch.Tensor):
                assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
            else:
                assert a[key] == b[key], key


@pytest.mark.parametrize("num_workers", [0, 2])
def test_held_batches_are_never_overwritten(video_dataset, num_workers) -> None:
    reference = [{k: v.clone() for k, v in b.items() if isinstance(v, torch.Tensor)} for b in _loader(video_dataset)]
    held = list(_loader(video_dataset, num_workers=num_workers, decode_threads=2, decode_ahead=2))  # keep all
    # with workers the order interleaves per worker; compare as sets of (index tuple -> tensors)
    by_index = {tuple(b["index"].tolist()): b for b in reference}
    assert len(held) == len(reference) or num_workers > 0
    seen = 0
    for batch in held:
        key = tuple(batch["index"].tolist())
        if key in by_index:
            seen += 1
            for name, value in by_index[key].items():
                assert torch.equal(batch[name], value), (key, name)
    if num_workers == 0:
        assert seen == len(reference)
    else:  # each worker batches its own share: compare samples, not batch boundaries
        frames = {int(i): n for b in reference for n, i in enumerate(b["index"].tolist())}
        assert sum(len(b["index"]) for b in held) == len(frames)
        for batch in held:
            for row, index in enumerate(batch["index"].tolist()):
                ref_batch = next(b for b in reference if index in b["index"].tolist())
                ref_row = ref_batch["index"].tolist().index(index)
                for name in CAMERAS:
                    assert torch.equal(batch[name][row], ref_batch[name][ref_row]), (index, name)


def test_pin_memory_without_cuda_gives_the_same_batches(video_dataset) -> None:
    assert not torch.cuda.is_available()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's "pin_memory but no accelerator" warning
        pinned = list(_loader(video_dataset, pin_memory=True))
    plain = list(_loader(video_dataset))
    assert len(pinned) == len(plain)
    for a, b in zip(pinned, plain, strict=True):
        for name in (*CAMERAS, "action", "index"):
            assert torch.equal(a[name], b[name]), name


KILL_SCRIPT = """
import os, signal, sys

import psutil

from tests.recipes.test_batch_memory import CAMERAS, _loader

it = iter(_loader(sys.argv[1], num_workers=2, batch_size=2, prefetch_factor=4))
first = next(it)
print("shared", first[CAMERAS[0]].is_shared(), flush=True)
workers = psutil.Process().children(recursive=True)
print("workers", len(workers), flush=True)
for worker in workers:
    os.kill(worker.pid, signal.SIGKILL)
try:
    for _ in range(1000):
        next(it)
except RuntimeError as error:
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # reported: torch's handler would raise again per death
    print("raised", error, flush=True)
    os._exit(0)
print("no error", flush=True)
os._exit(3)
"""


def test_killed_workers_leave_no_shared_memory(video_dataset) -> None:
    """A training process whose workers are SIGKILLed mid-epoch (after batches came through shared memory)
    gets a worker error, and once it is gone no torch segment is left in /dev/shm. The kill runs in a
    child process: torch raises from its SIGCHLD handler whenever a worker's death is signalled, at any
    line of the main thread, so in the test process a second raise could land anywhere after the first
    (what made this test flaky); the child silences the handler once the first error has reached it."""
    before = _shm_entries()
    child = subprocess.run(
        [sys.executable, "-c", KILL_SCRIPT, str(video_dataset)], capture_output=True, text=True, timeout=180,
        cwd=Path(__file__).resolve().parents[2],  # the repository root: the child imports this module
    )
    lines = child.stdout.splitlines()
    assert lines[:2] == ["shared True", "workers 2"], (child.stdout, child.stderr)
    assert len(lines) == 3 and re.fullmatch(r"raised DataLoader worker .*(killed by signal|exited unexpectedly).*", lines[2]), (
        child.stdout, child.stderr)
    assert child.returncode == 0, child.stderr
    leaked = {name for name in _shm_entries() - before if name.startswith("torch")}
    assert leaked == set(), leaked


@pytest.mark.parametrize("num_workers", [0, 1])
def test_decode_thread_errors_name_file_episode_and_camera(video_dataset, tmp_path, num_workers) -> None:
    """A video damaged after the dataset was opened fails inside a decode thread (of a worker, too); the
    error reaching the training loop is a VideoDecodeError whose attributes name the file, episode and camera."""
    import shutil

    from streamnodes import VideoDecodeError, open_dataset

    root = tmp_path / "ds"
    shutil.copytree(video_dataset, root)
    meta = open_dataset(root)  # opened (and checked) before the damage
    segment = meta.episodes[2].video(CAMERAS[1])
    damaged = root / segment.path
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 3])
    users = {ep.episode_index for ep in meta.episodes if ep.video(CAMERAS[1]).path == segment.path}
    loader = _loader(meta, num_workers=num_workers, decode_threads=2, shuffle=False)
    with pytest.raises(VideoDecodeError) as caught:
        for _ in loader:
            pass
    error = caught.value
    assert error.path is not None and error.path.endswith(segment.path)
    assert error.camera == CAMERAS[1] and error.episode_index in users
    assert segment.path in str(error)
