"""Remote parquet by row group: an episode's rows are one ranged read, each footer is fetched once per consumer.

Real parquet (pyarrow), a real HTTP server on 127.0.0.1 that records the byte range of every GET
(streamnodes.testing_http), real loaders with real DataLoader workers. Everything is counted in bytes
and requests, never timed.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from streamnodes import DatasetFormatError, EpisodeReader, build_loader
from streamnodes.format import ParquetFileCache, open_dataset, read_episode_columns
from streamnodes.format.reader import TRAILER_BYTES, footer_bytes, footer_tail_size, row_group_span
from streamnodes.format.retry import SizedReader
from streamnodes.sharding import plan_epoch
from streamnodes.testing import write_dataset
from streamnodes.testing_http import serve_directory

SEED = 5
BUDGET = 1.3  # issue 14: one epoch reads at most 1.3x the parquet bytes


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48 episodes, about 12 per data file (one row group each), no cameras: only parquet is fetched."""
    root = write_dataset(
        tmp_path_factory.mktemp("pq_bytes") / "ds",
        episode_lengths=[150 + (i * 37) % 100 for i in range(48)],
        cameras=None,
        data_files_size_in_mb=0.2,
    )
    groups = [pq.ParquetFile(p).metadata.num_row_groups for p in root.glob("data/*/*.parquet")]
    assert len(groups) >= 4 and max(groups) >= 11
    return root


def _data_files(root: Path) -> dict[str, int]:
    """Relative path -> size of every data file."""
    return {p.relative_to(root).as_posix(): p.stat().st_size for p in sorted(root.glob("data/*/*.parquet"))}


def _footer_length(path: Path) -> int:
    tail = path.read_bytes()[-TRAILER_BYTES:]
    return int.from_bytes(tail[:4], "little") + TRAILER_BYTES


def _readers_per_file(meta, plan) -> dict[str, int]:
    """How many consumers read an episode of each data file in the plan's epoch."""
    out: dict[str, int] = {}
    for episodes in plan.episodes:
        for path in {meta.episode(int(i)).data_path for i in episodes}:
            out[path] = out.get(path, 0) + 1
    return out


def _same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b) > 0
    for x, y in zip(a, b, strict=True):
        assert set(x) == set(y)
        for key, value in x.items():
            assert torch.equal(value, y[key]) if isinstance(value, torch.Tensor) else value == y[key], key


# ---- pure arithmetic ---------------------------------------------------------------------------------------


def test_footer_tail_size_reads_only_the_trailer_until_a_footer_is_known() -> None:
    assert footer_tail_size(1_000_000, 0) == TRAILER_BYTES
    assert footer_tail_size(1_000_000, 8000) == 8000 + 1000 + TRAILER_BYTES
    assert footer_tail_size(5000, 8000) == 5000  # never past the start of the file
    assert footer_tail_size(4, 0) == 4


class _LoggingFile(SizedReader):
    """A local file that records every read pyarrow makes (offset, length)."""

    def __init__(self, data: bytes) -> None:
        super().__init__()
        self.data, self.size, self.reads = data, len(data), []

    def read(self, n: int = -1) -> bytes:
        out = self.data[self._pos :] if n < 0 else self.data[self._pos : self._pos + n]
        self.reads.append((self._pos, len(out)))
        self._pos += len(out)
        return out


@pytest.mark.parametrize("columns", [None, ["index"], ["timestamp", "observation.state"], ["action", "index"]])
def test_row_group_span_covers_every_read_pyarrow_makes_for_the_row_group(dataset: Path, columns: list | None) -> None:
    path = sorted(dataset.glob("data/*/*.parquet"))[0]
    metadata = pq.read_metadata(path)
    for row_group in (0, metadata.num_row_groups // 2, metadata.num_row_groups - 1):
        start, end = row_group_span(metadata, row_group, columns)
        logged = _LoggingFile(path.read_bytes())
        pq.ParquetFile(logged, metadata=metadata, pre_buffer=False).read_row_group(row_group, columns=columns)
        assert logged.reads, "pyarrow read nothing"
        assert min(o for o, _ in logged.reads) == start  # tight at the start
        assert all(start <= o and o + n <= end for o, n in logged.reads), (row_group, logged.reads, (start, end))
        if columns == ["index"]:  # a projection spans less than the whole row group
            assert end - start < metadata.row_group(row_group).total_byte_size


# ---- one epoch over HTTP ---------------------------------------------------------------------------------


@pytest.mark.parametrize("num_workers", [0, 2])
def test_one_shuffled_epoch_reads_each_row_group_once_and_each_footer_once_per_consumer(
    dataset: Path, tmp_path: Path, num_workers: int
) -> None:
    kwargs = {"batch_size": 8, "episode_pool_size": 4, "num_workers": num_workers, "seed": SEED}
    local = list(build_loader(dataset, **kwargs))
    with serve_directory(dataset) as server:
        remote = list(build_loader(server.url, cache_dir=str(tmp_path / "cache"), **kwargs))
        spans = {path: server.spans_of(path) for path in _data_files(dataset)}
        sent = {path: server.bytes_of(path) for path in _data_files(dataset)}
    _same(local, remote)  # the rows equal the local read, batch for batch

    sizes = _data_files(dataset)
    ratio = sum(sent.values()) / sum(sizes.values())
    assert ratio <= BUDGET, f"one epoch fetched {ratio:.2f}x the parquet bytes (budget {BUDGET}x)"

    meta = open_dataset(dataset)
    columns = EpisodeReader(meta).columns
    plan = plan_epoch({e.episode_index: e.length for e in meta.episodes}, seed=SEED, epoch=0, shuffle=True,
                      num_consumers=max(1, num_workers))  # epoch 0's deal, as the loader makes it
    readers = _readers_per_file(meta, plan)
    pieces = Counter(p.episode for share in plan.pieces for p in share)  # an episode split between consumers: 2
    largest = max(_footer_length(dataset / path) for path in sizes) - TRAILER_BYTES
    for path, size in sizes.items():
        metadata = pq.read_metadata(dataset / path)
        episodes = [e for e in meta.episodes if e.data_path == path]
        # Each episode of the file: exactly one ranged read of its row group's span per consumer holding a
        # piece of it (the shares split an episode at each boundary between consumers).
        wanted = sorted(
            row_group_span(metadata, e.row_group, columns) for e in episodes for _ in range(pieces[e.episode_index])
        )
        got_rows = sorted(s for s in spans[path] if s in set(wanted))
        assert got_rows == wanted, path
        # The rest is footer reads: one tail read (ending at the file's end) per footer read, sometimes
        # completed by one read of the footer's first bytes. Footers are read once by open_dataset's check
        # and once per consumer that reads the file, never again after the file leaves the LRU.
        rest = [s for s in spans[path] if s not in set(wanted)]
        tails = [s for s in rest if s[1] == size]
        assert len(tails) == 1 + readers[path], (path, rest)
        # Nothing but footer bytes, and the margin a guessed tail adds (an eighth of the largest footer).
        assert all(s[0] >= size - footer_tail_size(size, largest) for s in rest), (path, rest)
        assert len(rest) <= 2 * len(tails)


def test_a_footer_is_fetched_once_even_when_its_file_is_closed_and_reopened(dataset: Path) -> None:
    with serve_directory(dataset) as server:
        remote = open_dataset(server.url, check_files=False)
        local = open_dataset(dataset)
        files = ParquetFileCache(remote, max_open=1)  # every switch of file closes the other one
        by_file: dict[str, list] = {}
        for ref in remote.episodes:
            by_file.setdefault(ref.data_path, []).append(ref)
        paths = sorted(by_file)[:3]
        order = [ref for i in range(3) for ref in (by_file[p][i] for p in paths)]  # alternate files
        for ref in order:
            got = read_episode_columns(remote, ref, ["observation.state", "index"], files)
            want = read_episode_columns(local, local.episode(ref.episode_index), ["observation.state", "index"])
            assert all((got[k] == want[k]).all() for k in want)
        files.close()
        for ref in order[:3]:  # after close() too: the footers are kept
            read_episode_columns(remote, ref, ["index"], files)
        assert files.footer_reads == len(paths)
        for path in paths:
            size = (dataset / path).stat().st_size
            assert sum(stop == size for _, stop in server.spans_of(path)) == 1, server.spans_of(path)


# ---- errors stay what they were ------------------------------------------------------------------------


def _copy(dataset: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(dataset, tmp_path / "copy"))


def test_a_damaged_row_group_over_http_names_the_file_and_episode(dataset: Path, tmp_path: Path) -> None:
    root = _copy(dataset, tmp_path)
    meta = open_dataset(root)
    ref = meta.episodes[5]
    path = root / ref.data_path
    start, _ = row_group_span(pq.read_metadata(path), ref.row_group)
    data = bytearray(path.read_bytes())
    data[start : start + 64] = b"\xff" * 64  # the first page header of the row group: not thrift any more
    path.write_bytes(bytes(data))
    with serve_directory(root) as server:
        remote = open_dataset(server.url)  # the footer is intact: the check passes
        with pytest.raises(DatasetFormatError, match=rf"{path.name}: episode {ref.episode_index} \(row group "
                                                     rf"{ref.row_group}\) cannot be read") as caught:
            read_episode_columns(remote, remote.episode(ref.episode_index), ["observation.state"])
        assert caught.value.episode_index == ref.episode_index
        other = remote.episodes[0] if remote.episodes[0].data_path != ref.data_path else remote.episodes[-1]
        assert len(read_episode_columns(remote, other, ["index"])["index"]) == other.length


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda d: d[: int(len(d) * 0.9)], id="truncated"),  # no trailer at all
        pytest.param(lambda d: d[:-8] + (len(d) * 2).to_bytes(4, "little") + b"PAR1", id="length-past-start"),
        pytest.param(lambda d: d[:-8] + (100).to_bytes(4, "little") + b"PAR1", id="length-too-short"),
    ],
)
def test_a_corrupt_footer_over_http_is_not_a_readable_parquet_file(dataset: Path, tmp_path: Path, damage) -> None:
    root = _copy(dataset, tmp_path)
    path = sorted(root.glob("data/*/*.parquet"))[1]
    path.write_bytes(damage(path.read_bytes()))
    with serve_directory(root) as server:
        with pytest.raises(DatasetFormatError, match=rf"{path.name}: not a readable parquet file \(corrupt or truncated"):
            open_dataset(server.url)
        remote = open_dataset(server.url, check_files=False)
        ref = next(e for e in remote.episodes if e.data_path == path.relative_to(root).as_posix())
        with pytest.raises(DatasetFormatError, match=rf"{path.name}: not a readable parquet file"):
            read_episode_columns(remote, ref, ["index"])


def test_kept_footers_are_indexed_small_and_give_each_row_group(dataset: Path) -> None:
    """A consumer keeps each footer as an index (a worker of a 100k-episode dataset keeps ~10 MB of them,
    not the hundreds of MB parsed footers take); each row group's metadata from it equals the file's."""
    from streamnodes.format.footer_index import index_footer

    for path in sorted(dataset.rglob("data/*/*.parquet")):
        original = pq.ParquetFile(path).metadata
        with open(path, "rb") as f:
            index = index_footer(footer_bytes(f))
        assert index.nbytes() < original.serialized_size
        for i in range(original.num_row_groups):
            one = pq.read_metadata(pa.BufferReader(index.row_group_footer(i)))
            assert one.row_group(0).to_dict() == original.row_group(i).to_dict()
