"""Footer work at scale (issue 17): what open_dataset's check reads from a footer, what a consumer keeps
of each footer, what it parses to admit an episode, and how many files it keeps open. Counts and
values, never times."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from streamnodes.errors import DatasetConsistencyError
from streamnodes.format import open_dataset, read_episode_columns, reader
from streamnodes.format.reader import ParquetFileCache, footer_bytes, parse_footer
from streamnodes.format.validate import row_group_facts
from streamnodes.testing import write_dataset


def _write(path: Path, tables: list[pa.Table], **kwargs) -> pq.FileMetaData:  # noqa: ANN003
    with pq.ParquetWriter(path, tables[0].schema, **kwargs) as writer:
        for table in tables:
            writer.write_table(table)
    return pq.read_metadata(path)


def _groups(index_type: pa.DataType | None = None, with_struct: bool = True) -> list[pa.Table]:
    """Three row groups of 2, 3 and 1 rows; the global index runs 10..15. A struct of two leaves comes
    before ``index``, so the index is leaf 3 of the file but field 1 of the Arrow schema."""
    out, start = [], 10
    for n in (2, 3, 1):
        columns = {"pose": pa.array([{"x": float(i), "y": -float(i)} for i in range(n)])} if with_struct else {}
        columns["index"] = pa.array(range(start, start + n), type=index_type or pa.int64())
        out.append(pa.table(columns))
        start += n
    return out


@pytest.mark.parametrize("index_type", [pa.int64(), pa.int32(), pa.uint64()], ids=["int64", "int32", "uint64"])
def test_row_group_facts_reads_the_index_leaf_by_path(tmp_path: Path, index_type: pa.DataType) -> None:
    """Rows and index min/max of each row group; int64/int32 statistics are read raw, uint64 (a logical
    type over INT64) through its values; the leaf is found by its path, not by the Arrow field position."""
    md = _write(tmp_path / "f.parquet", _groups(index_type))
    assert md.num_columns == 3 and md.row_group(0).column(2).path_in_schema == "index"
    rows, lows, highs, known = row_group_facts(md, "index")
    np.testing.assert_array_equal(rows, [2, 3, 1])
    np.testing.assert_array_equal(lows, [10, 12, 15])
    np.testing.assert_array_equal(highs, [11, 14, 15])
    assert known.all() and lows.dtype == np.int64


def test_row_group_facts_without_statistics_or_without_the_column(tmp_path: Path) -> None:
    md = _write(tmp_path / "nostats.parquet", _groups(), write_statistics=False)
    rows, _, _, known = row_group_facts(md, "index")
    np.testing.assert_array_equal(rows, [2, 3, 1])
    assert known is not None and not known.any()  # nothing to compare: the check skips those row groups
    rows, _, _, known = row_group_facts(md, "no_such_column")
    np.testing.assert_array_equal(rows, [2, 3, 1])
    assert known is None
    with pq.ParquetWriter(tmp_path / "empty.parquet", pa.schema([("index", pa.int64())])):
        pass  # no row group at all
    rows, lows, highs, known = row_group_facts(pq.read_metadata(tmp_path / "empty.parquet"), "index")
    assert len(rows) == len(lows) == len(highs) == 0 and known is None


def test_the_footer_check_finds_a_wrong_index_range_behind_a_struct_column(tmp_path: Path) -> None:
    """The check compares the ``index`` leaf's statistics even when nested columns come before it (the
    Arrow field position of ``index`` is not its leaf position in the file)."""
    root = write_dataset(tmp_path / "ds", episode_lengths=[2, 3, 1], cameras=None)
    meta = open_dataset(root)
    path = root / meta.episodes.data_files[0]
    table = pq.read_table(path)
    pose = pa.array([{"x": 0.0, "y": 1.0}] * table.num_rows)
    table = table.add_column(0, "pose", pose)
    lengths = [2, 3, 1]
    starts = np.cumsum([0, *lengths[:-1]])
    groups = [table.slice(int(s), n) for s, n in zip(starts, lengths, strict=True)]
    shifted = groups[1].set_column(groups[1].schema.get_field_index("index"), "index",
                                   pa.array(np.arange(3) + 100, pa.int64()))
    _write(path, [groups[0], shifted, groups[2]])
    with pytest.raises(DatasetConsistencyError, match=r"row group 1 holds global index 100..102, but episode 1 is \[2, 5\)"):
        open_dataset(root)


def test_footer_bytes_are_exactly_the_files_footer_whatever_the_first_read(tmp_path: Path) -> None:
    path = tmp_path / "f.parquet"
    md = _write(path, _groups())
    data = path.read_bytes()
    length = int.from_bytes(data[-8:-4], "little") + 8
    for guess in (0, 1, length - 9, length, 10 * length):  # trailer only, too short, exact, too long
        with open(path, "rb") as f:
            raw = footer_bytes(f, guess)
        assert raw == data[-length:], guess
        assert parse_footer(raw).equals(md)


def test_open_files_are_bounded_and_each_footer_is_read_once(tmp_path: Path) -> None:
    """At most ``max_open`` files open, the one being read last; every footer is read from its file once,
    whatever was closed in between."""
    root = write_dataset(tmp_path / "ds", episode_lengths=[2] * 400, cameras=None, data_files_size_in_mb=0.01)
    meta = open_dataset(root)
    files = meta.episodes.data_files
    assert len(files) >= 6
    first_of = {path: meta.episodes.ref(int(np.flatnonzero(meta.episodes.data_file == k)[0])) for k, path in enumerate(files)}
    for max_open in (1, 3, 4):
        cache = ParquetFileCache(meta, max_open=max_open)
        seen = 0
        for _ in range(2):
            for path in files:
                read_episode_columns(meta, first_of[path], ["index"], cache)
                assert cache.open_paths[-1] == path
                seen = max(seen, len(cache.open_paths))
        assert seen == max_open
        assert cache.footer_reads == len(files)  # closed files keep their footers
        assert f"{len(files)} footers indexed" in repr(cache)
        cache.close()
        assert cache.open_paths == ()


def test_admitting_an_episode_parses_one_row_group_whatever_the_file_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every footer a consumer parses lists one row group, of the same size in a file of 10 row groups as
    in one of 1,000: the cost of admitting an episode does not grow with its file (issue 17)."""
    parsed: list[tuple[int, int]] = []

    def counting_parse(footer: bytes) -> pq.FileMetaData:
        md = parse_footer(footer)
        parsed.append((md.num_row_groups, len(footer)))
        return md

    monkeypatch.setattr(reader, "parse_footer", counting_parse)
    sizes = {}
    for episodes in (10, 1000):
        root = write_dataset(tmp_path / f"ds{episodes}", episode_lengths=[2] * episodes, cameras=None)
        meta = open_dataset(root)
        assert pq.read_metadata(root / meta.episodes.data_files[0]).num_row_groups == episodes
        cache = ParquetFileCache(meta)
        parsed.clear()
        for e in (0, episodes // 2, episodes - 1):
            got = read_episode_columns(meta, meta.episode(e), ["index", "observation.state"], cache)
            np.testing.assert_array_equal(got["index"], [2 * e, 2 * e + 1])
        assert [n for n, _ in parsed] == [1, 1, 1] and cache.footer_reads == 1
        sizes[episodes] = max(size for _, size in parsed)
    assert sizes[1000] <= sizes[10] + 32  # varints of larger offsets; the full footer is ~100x larger


class _CountingFile(io.BytesIO):
    reads = 0

    def read(self, n: int = -1) -> bytes:  # noqa: D102
        type(self).reads += 1
        return super().read(n)


def test_footer_bytes_reads_once_when_the_guess_covers_the_footer(tmp_path: Path) -> None:
    path = tmp_path / "f.parquet"
    _write(path, _groups())
    data = path.read_bytes()
    length = int.from_bytes(data[-8:-4], "little") + 8
    _CountingFile.reads = 0
    assert footer_bytes(_CountingFile(data), 0) == data[-length:]
    assert _CountingFile.reads == 2  # the trailer, then the footer
    _CountingFile.reads = 0
    assert footer_bytes(_CountingFile(data), length) == data[-length:]
    assert _CountingFile.reads == 1
