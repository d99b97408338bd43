"""FooterIndex: one row group's metadata from a footer walked once (issue 17). Real parquet files written
by pyarrow with many writer options; every indexed row group is compared with pyarrow's own parse of the
whole footer, and read back from the file through the one-row-group footer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from streamnodes.format import footer_index as fi
from streamnodes.format.footer_index import BLOCK, MAX_TEMPLATES, FooterError, index_footer
from streamnodes.format.reader import footer_bytes


def _write(path: Path, tables: list[pa.Table], **options) -> Path:  # noqa: ANN003
    with pq.ParquetWriter(path, tables[0].schema, **options) as writer:
        for table in tables:
            writer.write_table(table)
    return path


def _footer(path: Path) -> bytes:
    with open(path, "rb") as f:
        return footer_bytes(f)


def _frames(n_groups: int, rows: int = 3) -> list[pa.Table]:
    """Row groups shaped like a LeRobot data file: a list column, floats, int64 counters."""
    out = []
    for g in range(n_groups):
        start = g * rows
        out.append(pa.table({
            "observation.state": pa.array([[float(start + r), -1.0] for r in range(rows)], pa.list_(pa.float32())),
            "timestamp": pa.array([r / 10 for r in range(rows)], pa.float32()),
            "episode_index": pa.array([g] * rows, pa.int64()),
            "index": pa.array(range(start, start + rows), pa.int64()),
        }))
    return out


def _assert_indexes(path: Path) -> fi.FooterIndex:
    """Every row group of ``path`` through its one-row-group footer equals pyarrow's parse and read."""
    whole = pq.ParquetFile(path)
    md = whole.metadata
    index = index_footer(_footer(path))
    assert index.num_row_groups == md.num_row_groups
    np.testing.assert_array_equal(index.rows, [md.row_group(i).num_rows for i in range(md.num_row_groups)])
    for i in range(md.num_row_groups):
        one = pq.read_metadata(pa.BufferReader(index.row_group_footer(i)))
        assert one.num_row_groups == 1 and one.num_rows == md.row_group(i).num_rows
        assert one.row_group(0).to_dict() == md.row_group(i).to_dict(), i
        assert one.schema.equals(md.schema) and one.metadata == md.metadata and one.created_by == md.created_by
        got = pq.ParquetFile(path, metadata=one).read_row_group(0)
        assert got.equals(whole.read_row_group(i)), i
    return index


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({}, id="defaults"),
        pytest.param({"compression": "zstd", "use_dictionary": False}, id="zstd-plain"),
        pytest.param({"compression": "none", "write_statistics": False}, id="no-statistics"),
        pytest.param({"data_page_version": "2.0", "write_page_index": True}, id="v2-pages-page-index"),
        pytest.param({"store_schema": False, "write_batch_size": 2, "data_page_size": 16}, id="no-arrow-schema"),
    ],
)
def test_every_row_group_of_a_regular_file_is_one_template(tmp_path: Path, options: dict) -> None:
    """40 row groups (a list longer than 15: its size is a varint; two blocks), each read back equal."""
    index = _assert_indexes(_write(tmp_path / "f.parquet", _frames(40), **options))
    assert index.templates == 1 and len(index.blocks) == -(-40 // BLOCK)


def test_nested_and_dictionary_columns(tmp_path: Path) -> None:
    tables = [
        pa.table({
            "pose": pa.array([{"x": float(g), "y": [1, 2, g]}] * 2),
            "tags": pa.array([{"a": g}, {}], pa.map_(pa.string(), pa.int32())),
            "fixed": pa.array([[g, g]] * 2, pa.list_(pa.int16(), 2)),
            "flag": pa.array([g % 2 == 0, None]),
            "task": pa.array(["pick", "place"]).dictionary_encode(),
            "when": pa.array([g, g + 1], pa.timestamp("ms")),
        })
        for g in range(5)
    ]
    _assert_indexes(_write(tmp_path / "nested.parquet", tables))


def test_row_groups_of_different_shapes_add_templates(tmp_path: Path) -> None:
    """String statistics of another length, or a column all null in one row group (no min/max), change a
    row group's bytes beyond its integers: each new shape is walked once and then matched."""
    words = ["a", "bbbb", "a", "cc", "bbbb", None, "a"]
    tables = [pa.table({"word": pa.array([w, w], pa.string()), "n": pa.array([i, i], pa.int64())})
              for i, w in enumerate(words)]
    index = _assert_indexes(_write(tmp_path / "shapes.parquet", tables))
    assert index.templates == 4  # lengths 1, 4, 2 and the all-null group


def test_more_shapes_than_templates_are_walked_field_by_field(tmp_path: Path) -> None:
    tables = [pa.table({"word": pa.array(["x" * (i + 1)] * 2)}) for i in range(MAX_TEMPLATES + 5)]
    index = _assert_indexes(_write(tmp_path / "many.parquet", tables))
    assert index.templates == MAX_TEMPLATES


def test_a_file_without_row_groups(tmp_path: Path) -> None:
    path = tmp_path / "empty.parquet"
    with pq.ParquetWriter(path, pa.schema([("index", pa.int64())])):
        pass
    index = index_footer(_footer(path))
    assert index.num_row_groups == 0 and index.blocks == ()
    with pytest.raises(IndexError, match="row group 0 of 0"):
        index.row_group_footer(0)


def test_the_one_row_group_footer_does_not_grow_with_the_file(tmp_path: Path) -> None:
    """What admitting an episode parses is the same whatever the number of row groups in its file."""
    small = index_footer(_footer(_write(tmp_path / "small.parquet", _frames(3))))
    large = index_footer(_footer(_write(tmp_path / "large.parquet", _frames(600))))
    assert large.footer_size > 100 * small.footer_size / 3
    sizes = {len(large.row_group_footer(i)) for i in (0, 1, 2, 299, 599)}
    assert max(sizes) - len(small.row_group_footer(0)) <= 4 * 4  # only the widths of 4 columns' offsets differ
    assert large.nbytes() < large.footer_size / 3  # kept compressed


def test_without_zstd_the_blocks_use_zlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fi, "_ZSTD", None)
    index = _assert_indexes(_write(tmp_path / "f.parquet", _frames(BLOCK + 3)))
    assert all(block[:1] == b"\x78" for block in index.blocks)  # zlib's header


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        pytest.param(lambda f: f[:-4] + b"PARE", "no PAR1 magic", id="encrypted-magic"),
        pytest.param(lambda f: f[:3], "no PAR1 magic", id="too-short"),
        pytest.param(lambda f: f[:-8] + (len(f)).to_bytes(4, "little") + b"PAR1", "does not match", id="length"),
        pytest.param(lambda f: f[:20] + f[-8:], "does not match", id="cut"),
        pytest.param(lambda f: f[:-9] + b"\x15\x00" + (len(f) - 7).to_bytes(4, "little") + b"PAR1", "truncated",
                     id="field-after-stop"),
        pytest.param(lambda f: b"\x1d" + f[1:], "unknown thrift type 13", id="bad-type"),
        pytest.param(lambda f: b"\x15" + b"\xff" * 11 + f[12:], "varint longer than 10 bytes", id="bad-varint"),
    ],
)
def test_damaged_footers_raise_footer_error(tmp_path: Path, damage, message: str) -> None:  # noqa: ANN001
    footer = _footer(_write(tmp_path / "f.parquet", _frames(4)))
    with pytest.raises(FooterError, match=message):
        index_footer(damage(footer))


def test_a_footer_with_bytes_after_its_end_is_refused(tmp_path: Path) -> None:
    footer = _footer(_write(tmp_path / "f.parquet", _frames(2)))
    body = footer[:-8] + b"\x00"
    with pytest.raises(FooterError, match="1 bytes after the footer's end"):
        index_footer(body + len(body).to_bytes(4, "little") + b"PAR1")


@pytest.mark.parametrize("n", [0, 1, -1, 63, -64, 64, 2**31, -(2**63), 2**63 - 1])
def test_zigzag_varints_round_trip(n: int) -> None:
    encoded = fi.zigzag(n)
    value, end = fi.read_varint(encoded + b"\x7f", 0)
    assert fi.unzigzag(value) == n and end == len(encoded)


def test_long_form_field_headers_are_read() -> None:
    """A field header with delta 0 carries its id as a zigzag varint: what row_group_footer writes."""
    struct = fi.field_header(fi.I64, 3) + fi.zigzag(-5) + fi.field_header(fi.TRUE, 300) + b"\x00"
    end, fields = fi.skip_struct(struct, 0)
    assert end == len(struct)
    assert [(fid, ttype) for fid, ttype, _, _ in fields] == [(3, fi.I64), (300, fi.TRUE)]
