"""A ranged reader over a local file that records every read, for the read-count assertions."""

from __future__ import annotations

from pathlib import Path


class RecordingReader:
    """``read_range(offset, length)`` over ``path`` (a real file read per call); ``reads`` lists the calls."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.size = self.path.stat().st_size
        self.reads: list[tuple[int, int]] = []

    def __call__(self, offset: int, length: int) -> bytes:
        self.reads.append((offset, length))
        with open(self.path, "rb") as f:
            f.seek(offset)
            return f.read(length)

    @property
    def bytes_read(self) -> int:
        return sum(length for _, length in self.reads)
