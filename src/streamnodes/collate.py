"""Batch layout for :class:`~streamnodes.nodes.batch_decode.BatchDecode`: pure arithmetic
(tensor shapes and strides, offsets in one memory segment, the ``get_frames_at`` call plan) and the few
functions that allocate a batch's camera tensors and write a decoded frame into its slot. No imports
from the rest of streamnodes (the nodes package imports this module).

Why not ``default_collate`` for frames: torchcodec returns ``[N, C, H, W]`` as a view of ``[N, H, W, C]``
memory, so ``torch.stack`` transposes every pixel (4.3 ms per 16 frames of 640x480 here, vs 1.4 ms to
copy them into a channels-last batch). Allocating the batch once, in its final layout, and copying each
frame straight into its slot is one pass over the pixels; in a DataLoader worker the batch is allocated
in shared memory, so sending it to the main process copies nothing more.

Frame copies use numpy (``np.copyto``, ``np.divide``): single-threaded and GIL-free, so several decode
threads copy in parallel without going through torch's intra-op thread pool (which stalls when the
cores are busy). ``np.divide(u8, float32(255))`` in float32 equals LeRobot's ``frames.float() / 255``
bit for bit (checked over all 256 byte values in the tests).
"""

from __future__ import annotations

import ctypes
import functools
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

LAYOUTS = ("channels_last", "contiguous")
SEGMENT_ALIGN = 64  # bytes; every camera tensor of a batch starts on a cache line of the shared segment
_F32_255 = np.float32(255)


def plan_decode_calls(indices: Sequence[int], max_gap: int = 1) -> list[list[int]]:
    """Split sorted unique frame ``indices`` into ``get_frames_at`` calls: a new call starts where the
    next index is more than ``max_gap`` past the previous one (``max_gap=1``: runs of consecutive frames).

    Measured in approximate seek mode: one call with 16 sorted random indices of one file costs
    1.12 ms/frame, one call per frame 0.80 ms; within a run of consecutive frames one call decodes
    forward without seeking. ``max_gap`` is the knob for tuning (``max_gap=0``: one call per frame).
    """
    calls: list[list[int]] = []
    for index in indices:
        if calls and index - calls[-1][-1] <= max_gap:
            calls[-1].append(index)
        else:
            calls.append([index])
    return calls


def positions_of(expand: Sequence[int] | None, count: int) -> list[list[int]]:
    """For each of ``count`` decoded (unique) frames, the window positions that show it.

    ``expand`` is :func:`~streamnodes.nodes.video_decode._decode_indices`' second result: per requested
    position, its frame among the unique ones (``None``: position ``i`` is frame ``i``).
    """
    if expand is None:
        return [[i] for i in range(count)]
    out: list[list[int]] = [[] for _ in range(count)]
    for position, frame in enumerate(expand):
        out[frame].append(position)
    return out


def camera_layout(
    batch: int, frames: int, channels: int, height: int, width: int, *, single: bool, layout: str
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Shape and strides (in elements) of one camera's batch tensor.

    Shape ``[B, T, C, H, W]`` (``[B, C, H, W]`` when ``single``). ``"channels_last"``: memory is
    ``[B, T, H, W, C]``, i.e. each frame is laid out as torchcodec decodes it (copying a frame in is a
    memcpy, and ``x.flatten(0, 1)`` is ``torch.channels_last``); ``"contiguous"``: ordinary row-major.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    lead = (batch,) if single else (batch, frames)
    shape = (*lead, channels, height, width)
    if layout == "contiguous":
        return shape, _row_major(shape)
    memory = _row_major((*lead, height, width, channels))
    return shape, (*memory[: len(lead)], memory[-1], memory[-3], memory[-2])


def _row_major(shape: Sequence[int]) -> tuple[int, ...]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(int(size), 1)
    return tuple(reversed(strides))


def segment_offsets(sizes: Sequence[int], align: int = SEGMENT_ALIGN) -> tuple[list[int], int]:
    """Byte offsets of consecutive blocks of ``sizes`` bytes, each aligned to ``align``, and the total."""
    offsets, end = [], 0
    for size in sizes:
        start = -(-end // align) * align
        offsets.append(start)
        end = start + int(size)
    return offsets, end


def new_shared_storage(nbytes: int) -> torch.UntypedStorage:
    """A storage in anonymous shared memory that a DataLoader worker can send without copying.

    Under torch's default ``file_descriptor`` strategy the memory is a ``memfd``: it has no name, so a
    worker killed at any instant (SIGKILL, OOM) leaves nothing in ``/dev/shm`` and it is not bounded by
    the size of ``/dev/shm``. (``UntypedStorage._new_shared`` creates a named ``/dev/shm/torch_*``
    segment and unlinks it right after; a worker killed between the two leaks it.) The storage is sent
    as its file descriptor, exactly as torch sends its own. Other strategies (or no ``memfd_create``)
    use torch's allocation.
    """
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is None or torch.multiprocessing.get_sharing_strategy() != "file_descriptor":
        return torch.UntypedStorage._new_shared(nbytes)
    fd = memfd_create("streamnodes-batch", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, nbytes)
        # maps a duplicate of fd; a private classmethod torch has, missing from its stubs
        return torch.UntypedStorage._new_shared_fd_cpu(fd, nbytes)  # type: ignore[attr-defined]
    finally:
        os.close(fd)


def pack_shared(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Contiguous copies of ``tensors``, all carved out of ONE storage from :func:`new_shared_storage`
    (each starting on a ``SEGMENT_ALIGN`` boundary).

    What a DataLoader worker sends instead of ``default_collate``'s stacked tabular tensors, each of which
    is its own named ``/dev/shm/torch_*`` segment: one allocation per batch instead of one per key, and
    nothing a worker killed at any instant could leave behind. The copy costs little: these are the
    small per-frame values (state, action, indices, pads), not the frames.
    """
    if not tensors:
        return []
    sizes = [t.numel() * t.element_size() for t in tensors]
    offsets, total = segment_offsets(sizes)
    storage = new_shared_storage(max(total, 1))
    out = []
    for tensor, offset in zip(tensors, offsets, strict=True):
        view = torch.empty(0, dtype=tensor.dtype).set_(
            storage, offset // tensor.element_size(), tensor.shape, _row_major(tensor.shape)
        )
        view.copy_(tensor)
        out.append(view)
    return out


def allocate_cameras(
    layouts: Mapping[str, tuple[tuple[int, ...], tuple[int, ...]]],
    dtype: torch.dtype,
    *,
    shared: bool = False,
    pin_memory: bool = False,
) -> dict[str, torch.Tensor]:
    """One uninitialised tensor per camera (``layouts``: key -> (shape, strides)), all carved out of ONE
    storage: shared memory when ``shared`` (what a DataLoader worker sends without copying; the same
    call ``default_collate`` uses), else page-locked when ``pin_memory``, else ordinary memory.

    ``torch.empty(...).share_memory_()`` would allocate and then copy; :func:`new_shared_storage`
    allocates in shared memory directly.
    """
    itemsize = torch.empty(0, dtype=dtype).element_size()
    keys = list(layouts)
    sizes = [math.prod(layouts[k][0]) * itemsize for k in keys]
    offsets, total = segment_offsets(sizes)
    if not keys:
        return {}
    if shared:
        storage = new_shared_storage(total)
    elif pin_memory:
        storage = torch.empty(total, dtype=torch.uint8, pin_memory=True).untyped_storage()
    else:
        storage = torch.UntypedStorage(total)
        advise_huge_pages(storage.data_ptr(), total)
    out = {}
    for key, offset in zip(keys, offsets, strict=True):
        shape, stride = layouts[key]
        out[key] = torch.empty(0, dtype=dtype).set_(storage, offset // itemsize, shape, stride)
    return out


_HUGE_PAGE = 2 << 20
_MADV_HUGEPAGE = 14  # linux/mman.h


@functools.cache
def _madvise() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        madvise = libc.madvise
    except (OSError, AttributeError):
        return None
    madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    madvise.restype = ctypes.c_int
    return madvise


def advise_huge_pages(address: int, size: int) -> bool:
    """Ask Linux to back ``[address, address + size)`` (a fresh batch allocation) with transparent huge
    pages, where the machine allows it (``/sys/kernel/mm/transparent_hugepage/enabled`` = madvise or always).

    Writing a fresh 59 MB batch (32 samples x 2 cameras of 640x480) faults in ~14,000 4 KiB pages: measured
    here 35.7 ms per batch against 7.8 ms with huge pages (a warm copy of the same bytes: 4.8 ms). Only the
    2 MiB-aligned part of the range can use huge pages. Returns whether the advice was taken; a refusal (an
    old kernel, THP off) changes nothing but speed.
    """
    madvise = _madvise()
    start = (address + _HUGE_PAGE - 1) & ~(_HUGE_PAGE - 1)
    end = (address + size) & ~(_HUGE_PAGE - 1)
    if madvise is None or end <= start:
        return False
    return madvise(start, end - start, _MADV_HUGEPAGE) == 0


def write_frame(dest: torch.Tensor, frame: torch.Tensor) -> np.ndarray:
    """Write one decoded uint8 ``[C, H, W]`` frame into ``dest`` (a ``[C, H, W]`` slot of a batch tensor,
    uint8 or float32) and return the slot as an ``[H, W, C]`` numpy view (for :func:`copy_frame`).

    float32 slots get ``frame / 255`` computed in float32: bit-identical to LeRobot's ``frames.float() / 255``.
    """
    out = dest.permute(1, 2, 0).numpy()
    src = frame.permute(1, 2, 0).numpy()  # torchcodec's own memory order: a contiguous read
    if out.dtype == np.uint8:
        np.copyto(out, src)
    else:
        np.divide(src, _F32_255, out=out, dtype=np.float32)
    return out


def copy_frame(dest: torch.Tensor, written: np.ndarray) -> None:
    """Repeat an already written slot (``written``, from :func:`write_frame`) into ``dest`` (a padded
    window position showing the same frame)."""
    np.copyto(dest.permute(1, 2, 0).numpy(), written)
