"""Every bad-dataset path raises a StreamNodesError that names the file and says what to do."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from streamnodes import DatasetConsistencyError, DatasetFormatError, StreamNodesError, open_dataset
from streamnodes.format import read_episode_columns, rewrite_row_groups

DATA = "data/chunk-000/file-000.parquet"
EPISODES = "meta/episodes/chunk-000/file-000.parquet"


def _edit_info(root: Path, **changes) -> None:
    info = json.loads((root / "meta/info.json").read_text())
    for key, value in changes.items():
        if value is None:
            info.pop(key, None)
        else:
            info[key] = value
    (root / "meta/info.json").write_text(json.dumps(info))


def _edit_episodes(root: Path, column: str, values) -> None:
    table = pq.read_table(root / EPISODES)
    i = table.column_names.index(column)
    table = table.set_column(i, column, pa.array(values, type=table.schema.field(column).type))
    pq.write_table(table, root / EPISODES)


def test_missing_root_names_info_json(tmp_path: Path) -> None:
    with pytest.raises(DatasetFormatError, match=r"meta/info.json: missing.*root path"):
        open_dataset(tmp_path / "nowhere")


def test_wrong_codebase_version_says_how_to_convert(ref_copy: Path) -> None:
    _edit_info(ref_copy, codebase_version="v2.1")
    with pytest.raises(DatasetFormatError, match=r"info.json: codebase_version is 'v2.1'.*convert_dataset_v21_to_v30"):
        open_dataset(ref_copy)


def test_info_missing_keys(ref_copy: Path) -> None:
    _edit_info(ref_copy, fps=None, data_path=None)
    with pytest.raises(DatasetFormatError, match=r"info.json: missing keys \['fps', 'data_path'\]"):
        open_dataset(ref_copy)


def test_info_not_json(ref_copy: Path) -> None:
    (ref_copy / "meta/info.json").write_text("{not json")
    with pytest.raises(DatasetFormatError, match="not valid JSON"):
        open_dataset(ref_copy)


def test_missing_tasks_file(ref_copy: Path) -> None:
    (ref_copy / "meta/tasks.parquet").unlink()
    with pytest.raises(DatasetFormatError, match=r"tasks.parquet: missing"):
        open_dataset(ref_copy)


def test_missing_episodes_file(ref_copy: Path) -> None:
    (ref_copy / EPISODES).unlink()
    with pytest.raises(DatasetFormatError, match=r"episodes/chunk-000/file-000.parquet: missing; .* 0 of total_episodes=6"):
        open_dataset(ref_copy)


def test_total_episodes_larger_than_table(ref_copy: Path) -> None:
    _edit_info(ref_copy, total_episodes=7)
    with pytest.raises(DatasetFormatError, match=r"file-001.parquet: missing; .* 6 of total_episodes=7"):
        open_dataset(ref_copy)


def test_total_frames_disagrees(ref_copy: Path) -> None:
    _edit_info(ref_copy, total_frames=240)
    with pytest.raises(DatasetConsistencyError, match=r"total_frames=240 .* add up to 237"):
        open_dataset(ref_copy)


def test_missing_stats_is_only_a_warning(ref_copy: Path, caplog: pytest.LogCaptureFixture) -> None:
    (ref_copy / "meta/stats.json").unlink()
    meta = open_dataset(ref_copy)
    assert meta.stats is None
    assert "stats.json: missing" in caplog.text


def test_feature_missing_from_data_file(ref_copy: Path) -> None:
    info = json.loads((ref_copy / "meta/info.json").read_text())
    info["features"]["observation.effort"] = {"dtype": "float32", "shape": [6], "names": None}
    (ref_copy / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(DatasetFormatError, match=r"file-000.parquet: columns \['observation.effort'\] are in meta/info.json"):
        open_dataset(ref_copy)


def test_length_disagrees_with_index_range(ref_copy: Path) -> None:
    _edit_episodes(ref_copy, "length", [20, 36, 60, 27, 44, 51])
    with pytest.raises(DatasetConsistencyError, match=r"episode 1 has length 36 but index range \[20, 55\)"):
        open_dataset(ref_copy)


def test_index_ranges_not_contiguous(ref_copy: Path) -> None:
    _edit_episodes(ref_copy, "dataset_from_index", [0, 21, 55, 115, 142, 186])
    _edit_episodes(ref_copy, "dataset_to_index", [20, 56, 115, 142, 186, 237])
    with pytest.raises(DatasetConsistencyError, match=r"episode 1 starts at global index 21, expected 20"):
        open_dataset(ref_copy)


def test_episode_lengths_disagree_with_row_groups(ref_copy: Path) -> None:
    # shift one frame from episode 0 to episode 1 in the table: totals still add up, row groups do not
    _edit_episodes(ref_copy, "length", [19, 36, 60, 27, 44, 51])
    _edit_episodes(ref_copy, "dataset_to_index", [19, 55, 115, 142, 186, 237])
    _edit_episodes(ref_copy, "dataset_from_index", [0, 19, 55, 115, 142, 186])
    with pytest.raises(DatasetConsistencyError, match=r"file-000.parquet: episode 0 is row group 0 with 20 rows, but has length 19 .* re-write the episodes table"):
        open_dataset(ref_copy)


def test_row_group_global_index_disagrees_with_episodes_table(ref_copy: Path) -> None:
    # row counts all match, but episode 1's rows carry global indices 21..55 instead of 20..54
    table = pq.read_table(ref_copy / DATA)
    index = table.column("index").to_numpy().copy()
    index[20:55] += 1
    table = table.set_column(table.column_names.index("index"), "index", pa.array(index, pa.int64()))
    with pq.ParquetWriter(ref_copy / DATA, table.schema) as writer:
        for start, stop in [(0, 20), (20, 55), (55, 115), (115, 142), (142, 186), (186, 237)]:
            writer.write_table(table.slice(start, stop - start), row_group_size=stop - start)
    with pytest.raises(
        DatasetConsistencyError,
        match=r"data/chunk-000/file-000.parquet: row group 1 holds global index 21..55, but episode 1 is \[20, 55\) "
        r"in the episodes table. Re-write the episodes table or repair the file with rewrite_row_groups",
    ):
        open_dataset(ref_copy)


def test_merged_row_groups_are_refused_then_repaired(ref_copy: Path) -> None:
    table = pq.read_table(ref_copy / DATA)
    pq.write_table(table, ref_copy / DATA)  # a bulk rewrite: one row group for all episodes
    assert pq.ParquetFile(ref_copy / DATA).metadata.num_row_groups == 1
    with pytest.raises(DatasetConsistencyError, match=r"1 row group\(s\) with \[237\] rows.*one row group per episode.*rewrite_row_groups"):
        open_dataset(ref_copy)
    assert rewrite_row_groups(ref_copy / DATA) == 6
    meta = open_dataset(ref_copy)
    rows = read_episode_columns(meta, meta.episodes[4], ["index"])["index"]
    assert rows.tolist() == list(range(142, 186))
    assert pq.read_table(ref_copy / DATA).schema.metadata == table.schema.metadata


def test_rewrite_to_another_path_sorts_rows(tmp_path: Path, ref_copy: Path) -> None:
    table = pq.read_table(ref_copy / DATA)
    shuffled = table.take(pa.array(list(range(236, -1, -1))))
    pq.write_table(shuffled, tmp_path / "bulk.parquet", row_group_size=100)
    assert rewrite_row_groups(tmp_path / "bulk.parquet", tmp_path / "fixed.parquet") == 6
    fixed = pq.ParquetFile(tmp_path / "fixed.parquet")
    assert [fixed.metadata.row_group(i).num_rows for i in range(6)] == [20, 35, 60, 27, 44, 51]
    assert fixed.read().column("index").to_pylist() == list(range(237))


def test_corrupt_parquet_footer(ref_copy: Path) -> None:
    data = (ref_copy / DATA).read_bytes()
    (ref_copy / DATA).write_bytes(data[:-20])
    with pytest.raises(DatasetFormatError, match=r"file-000.parquet: not a readable parquet file \(corrupt or truncated footer"):
        open_dataset(ref_copy)


def test_missing_data_file(ref_copy: Path) -> None:
    (ref_copy / DATA).unlink()
    with pytest.raises(DatasetFormatError, match=r"file-000.parquet: data file missing"):
        open_dataset(ref_copy)


def test_reader_checks_row_group_it_reads(ref_copy: Path) -> None:
    meta = open_dataset(ref_copy)  # valid when opened ...
    table = pq.read_table(ref_copy / DATA)
    with pq.ParquetWriter(ref_copy / DATA, table.schema) as w:  # ... then the file changes under it
        w.write_table(table.slice(0, 55), row_group_size=55)
        w.write_table(table.slice(55), row_group_size=200)
    with pytest.raises(DatasetConsistencyError, match=r"episode 1 has 55 rows in row group 1|episode 3 should be row group 3"):
        read_episode_columns(meta, meta.episodes[3], ["action"])
    with pytest.raises(DatasetConsistencyError, match=r"episode 1 has 182 rows in row group 1, but length 35"):
        read_episode_columns(meta, meta.episodes[1], ["action"])


def test_reader_unknown_column(ref_copy: Path) -> None:
    meta = open_dataset(ref_copy)
    with pytest.raises(DatasetFormatError, match=r"episode 0: columns \['nope'\] are not in the data file"):
        read_episode_columns(meta, meta.episodes[0], ["nope"])


def test_all_errors_share_the_base_class() -> None:
    assert issubclass(DatasetConsistencyError, DatasetFormatError)
    assert issubclass(DatasetFormatError, StreamNodesError)


# ---- metadata error paths: each names the file (or argument) and what to do ------------------------

CAM = "observation.images.cam"
EPISODES_RE = r"meta/episodes/chunk-000/file-000\.parquet"


def test_duplicate_episode_indices(ref_copy: Path) -> None:
    _edit_episodes(ref_copy, "episode_index", [0, 1, 2, 3, 3, 5])
    with pytest.raises(DatasetConsistencyError, match=rf"{EPISODES_RE}: episode indices \[3\] appear more than once"
                       r".* Re-write the metadata so each episode is listed once"):
        open_dataset(ref_copy)


def test_episode_lists_an_unknown_task(ref_copy: Path) -> None:
    tasks = pq.read_table(ref_copy / EPISODES).column("tasks").to_pylist()
    tasks[2] = ["juggle"]
    _edit_episodes(ref_copy, "tasks", tasks)
    with pytest.raises(DatasetConsistencyError, match=rf"{EPISODES_RE}: episode 2 lists tasks \['juggle'\] that are not "
                       r"in meta/tasks.parquet. Add them to meta/tasks.parquet or fix the episode's tasks"):
        open_dataset(ref_copy)


@pytest.mark.parametrize(("column", "value", "shown"), [
    ("to_timestamp", 1.5, "from_timestamp=2.0, to_timestamp=1.5"),  # ends before it starts
    ("from_timestamp", -0.5, "from_timestamp=-0.5, to_timestamp=5.5"),  # negative
])
def test_bad_video_timestamps(ref_copy: Path, column: str, value: float, shown: str) -> None:
    name = f"videos/{CAM}/{column}"
    values = pq.read_table(ref_copy / EPISODES).column(name).to_pylist()
    values[1] = value
    _edit_episodes(ref_copy, name, values)
    with pytest.raises(DatasetConsistencyError, match=rf"{EPISODES_RE}: episode 1 camera '{CAM}' has {shown}; "
                       r"expected 0 <= from < to. Re-write the episodes table"):
        open_dataset(ref_copy)


def test_missing_video_path_template(ref_copy: Path) -> None:
    _edit_info(ref_copy, video_path=None)
    with pytest.raises(DatasetFormatError, match=r"meta/info.json: the dataset has video features but no 'video_path' "
                       r"template. Add it"):
        open_dataset(ref_copy)


@pytest.mark.parametrize("drop", ["dtype", "shape"])
def test_feature_without_dtype_or_shape(ref_copy: Path, drop: str) -> None:
    info = json.loads((ref_copy / "meta/info.json").read_text())
    del info["features"]["action"][drop]
    (ref_copy / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(DatasetFormatError, match=r"meta/info.json: feature 'action' needs 'dtype' and 'shape'.*"
                       r"Give every feature in info.json its dtype and shape"):
        open_dataset(ref_copy)


def test_task_index_out_of_range(ref_copy: Path) -> None:
    path = ref_copy / "meta/tasks.parquet"
    table = pq.read_table(path)
    table = table.set_column(table.column_names.index("task_index"), "task_index", pa.array([0, 1, 5], pa.int64()))
    pq.write_table(table, path)
    with pytest.raises(DatasetFormatError, match=r"meta/tasks.parquet: task_index values must be 0..2, got \[0, 1, 5\]. "
                       r"Re-write meta/tasks.parquet"):
        open_dataset(ref_copy)


def test_empty_episodes_file(ref_copy: Path) -> None:
    table = pq.read_table(ref_copy / EPISODES)
    pq.write_table(table.slice(0, 0), ref_copy / EPISODES)
    with pytest.raises(DatasetFormatError, match=rf"{EPISODES_RE}: episodes file with no rows; remove it or re-write the metadata"):
        open_dataset(ref_copy)


def test_episodes_files_with_incompatible_schemas(ref_copy: Path) -> None:
    # split the table over two files, the second with 'length' written as text
    table = pq.read_table(ref_copy / EPISODES)
    second = table.slice(3)
    second = second.set_column(second.column_names.index("length"), "length", pa.array([str(v) for v in second.column("length").to_pylist()]))
    pq.write_table(table.slice(0, 3), ref_copy / EPISODES)
    pq.write_table(second, ref_copy / "meta/episodes/chunk-000/file-001.parquet")
    with pytest.raises(DatasetFormatError, match=r"chunk-000/file-000.parquet', '.*chunk-000/file-001.parquet'\] have "
                       r"incompatible schemas.*length.*Re-write the episodes metadata so every file has one schema"):
        open_dataset(ref_copy)


def test_episodes_table_missing_columns(ref_copy: Path) -> None:
    table = pq.read_table(ref_copy / EPISODES)
    pq.write_table(table.drop_columns(["data/file_index", f"videos/{CAM}/to_timestamp"]), ref_copy / EPISODES)
    with pytest.raises(DatasetFormatError, match=rf"{EPISODES_RE}: episodes table lacks columns \['data/file_index', "
                       rf"'videos/{CAM}/to_timestamp'\]; re-write the metadata"):
        open_dataset(ref_copy)


def test_stats_not_json(ref_copy: Path) -> None:
    (ref_copy / "meta/stats.json").write_text('{"observation.state": ')
    with pytest.raises(DatasetFormatError, match=r"meta/stats.json: not valid JSON .* Re-compute it or delete it"):
        open_dataset(ref_copy)
