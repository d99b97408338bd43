"""What goes where: the episodes and cameras being written, and LeRobot's size-based file roll-over.

The roll-over arithmetic is pure (tested without I/O): given each episode's size, which
``(chunk_index, file_index)`` it lands in, as LeRobot's writer decides.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

BYTES_PER_MB = 1024 * 1024  # LeRobot measures file sizes in MiB
TMP_PREFIX = ".write_dataset-"  # temporary directory under root while encoding


@dataclass(frozen=True)
class _Camera:
    key: str
    index: int
    height: int
    width: int


@dataclass
class _Episode:
    index: int
    length: int
    task_index: int
    from_index: int  # global index of the first frame


def _next_file(chunk_index: int, file_index: int, chunks_size: int) -> tuple[int, int]:
    """The (chunk, file) after this one: ``file_index`` wraps to 0 after ``chunks_size`` files."""
    file_index += 1
    if file_index >= chunks_size:
        return chunk_index + 1, 0
    return chunk_index, file_index


def _assign_files(
    sizes_in_bytes: Sequence[int], limit_mb: float, chunks_size: int, shared_bytes: int = 0
) -> list[tuple[int, int]]:
    """(chunk_index, file_index) of each episode, rolling over like LeRobot's writer.

    ``sizes_in_bytes[i]`` is the size of episode ``i`` written alone; a file of several episodes is the
    sum of theirs minus ``shared_bytes`` per episode after the first (headers and footers written once
    per file). An episode goes into the current file unless that file already holds an episode and
    would grow past ``limit_mb`` MiB; then the next file starts, and after ``chunks_size`` files the
    next chunk.
    """
    key = (0, 0)
    current = 0
    out = []
    for size in sizes_in_bytes:
        if current and (current + size - shared_bytes) / BYTES_PER_MB > limit_mb:
            key = _next_file(*key, chunks_size)
            current = 0
        current += size - shared_bytes if current else size
        out.append(key)
    return out


def _groups(assignment: Sequence[tuple[int, int]]) -> list[tuple[tuple[int, int], list[int]]]:
    """Consecutive episodes sharing a (chunk, file), in order: ``[((chunk, file), [episodes...]), ...]``."""
    out: list[tuple[tuple[int, int], list[int]]] = []
    for episode, key in enumerate(assignment):
        if out and out[-1][0] == key:
            out[-1][1].append(episode)
        else:
            out.append((key, [episode]))
    return out
