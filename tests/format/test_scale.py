"""Scale (issue 17): the episodes table stays columnar, pickles small, and the writer has no episode
cap without cameras. Facts about sizes and values only, never wall-clock times."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from streamnodes.errors import ConfigError
from streamnodes.format import DatasetMeta, open_dataset, read_episode_columns
from streamnodes.format.metadata import EpisodeRef, EpisodeTable, Feature, VideoSegment
from streamnodes.testing import MAX_EPISODES, write_dataset
from streamnodes.testing.layout import _Episode
from streamnodes.testing.stats import _tabular_stats
from streamnodes.testing.tabular import EXACT_SIZES_UP_TO, _episode_columns, _episode_stats
from tests.conftest import REF_ROOT

BIG = 100_000


def _refs_the_old_way(root: Path, meta: DatasetMeta) -> list[EpisodeRef]:
    """One EpisodeRef per row of the episodes parquet, in a plain Python loop (the pre-columnar code):
    row group = rank of the episode among its data file's episodes by global index."""
    table = pq.read_table(sorted((root / "meta/episodes").rglob("*.parquet"))).to_pylist()
    table.sort(key=lambda row: row["episode_index"])
    data_t, video_t = meta.info["data_path"], meta.info.get("video_path")
    paths = [data_t.format(chunk_index=r["data/chunk_index"], file_index=r["data/file_index"]) for r in table]
    refs = []
    for row, path in zip(table, paths, strict=True):
        rank = sorted(r["dataset_from_index"] for r, p in zip(table, paths, strict=True) if p == path).index(row["dataset_from_index"])
        videos = tuple(
            VideoSegment(key, video_t.format(video_key=key, chunk_index=row[f"videos/{key}/chunk_index"],
                                             file_index=row[f"videos/{key}/file_index"]),
                         row[f"videos/{key}/from_timestamp"], row[f"videos/{key}/to_timestamp"])
            for key in meta.video_keys
        )
        refs.append(EpisodeRef(row["episode_index"], row["length"], row["dataset_from_index"], row["dataset_to_index"],
                               path, rank, tuple(row["tasks"]), videos))
    return refs


@pytest.mark.parametrize("which", ["ref", "tabular", "video"])
def test_episode_refs_equal_the_per_episode_values(which: str, tabular_dataset: Path, video_dataset: Path) -> None:
    root = {"ref": REF_ROOT, "tabular": tabular_dataset, "video": video_dataset}[which]
    meta = open_dataset(root)
    expected = _refs_the_old_way(root, meta)
    assert isinstance(meta.episodes, EpisodeTable) and len(meta.episodes) == len(expected)
    assert list(meta.episodes) == expected
    assert [meta.episode(r.episode_index) for r in expected] == expected
    assert meta.episodes[-1] == expected[-1] and meta.episodes[1:3] == tuple(expected[1:3])
    assert meta.episode_lengths() == {r.episode_index: r.length for r in expected}
    assert meta.episode_lengths([expected[-1].episode_index]) == {expected[-1].episode_index: expected[-1].length}
    assert meta.total_frames == sum(r.length for r in expected)
    clone = pickle.loads(pickle.dumps(meta))
    assert list(clone.episodes) == expected and clone.fingerprint == meta.fingerprint
    with pytest.raises(KeyError, match=r"episode 999999 is not in"):
        meta.episode(999_999)
    with pytest.raises(KeyError, match=r"episode 999999 is not in"):
        meta.episode_lengths([expected[0].episode_index, 999_999])


def test_refs_passed_in_become_a_table_with_the_same_fingerprint(video_dataset: Path) -> None:
    """``dataclasses.replace(meta, episodes=refs)`` (benchmarks' tabular view) keeps working, and the
    fingerprint (episodes, lengths, files; not cameras) is unchanged, so states move between the two."""
    meta = open_dataset(video_dataset)
    refs = tuple(dataclasses.replace(ref, videos=()) for ref in meta.episodes)
    view = dataclasses.replace(meta, episodes=refs[::-1])
    assert isinstance(view.episodes, EpisodeTable) and list(view.episodes) == list(refs)
    assert view.fingerprint == meta.fingerprint
    assert view.episodes != meta.episodes  # cameras differ


def _synthetic_meta(n: int, episodes_per_file: int = 1000) -> DatasetMeta:
    """A DatasetMeta of ``n`` ten-frame tabular episodes built from columns (no files: sizes only)."""
    length = np.full(n, 10, dtype=np.int64)
    file_of = np.arange(n) // episodes_per_file
    table = EpisodeTable(
        index=np.arange(n), length=length, start=np.arange(n) * 10, data_file=file_of,
        data_files=[f"data/chunk-000/file-{f:03d}.parquet" for f in range(int(file_of[-1]) + 1)],
        row_group=np.arange(n) % episodes_per_file, tasks=("a", "b"), task_ids=np.arange(n) % 2,
        task_offsets=np.arange(n + 1),
    )
    info = {"fps": 10, "codebase_version": "v3.0", "total_episodes": n, "total_frames": 10 * n}
    features = {"action": Feature("action", "float32", (6,))}
    return DatasetMeta(root="/nowhere", info=info, features=features, tasks=("a", "b"), episodes=table)


def test_pickle_of_100k_episodes_is_small() -> None:
    """Per episode the pickle holds its length, data file, row group and task in the narrowest integer
    type (1 + 1 + 2 + 1 bytes here); indices, starts and task offsets that follow from the lengths are
    left out. 100,000 episodes: about 0.5 MB (the tuple of EpisodeRefs pickled to 8.5 MB)."""
    meta = _synthetic_meta(BIG)
    data = pickle.dumps(meta)
    assert len(data) < 1_000_000
    clone = pickle.loads(data)
    assert clone.episodes == meta.episodes and clone.fingerprint == meta.fingerprint
    for i in (0, 1, 4_321, BIG - 1):
        assert clone.episode(i) == meta.episode(i) == EpisodeRef(
            i, 10, 10 * i, 10 * i + 10, f"data/chunk-000/file-{i // 1000:03d}.parquet", i % 1000, ("ab"[i % 2],))
    assert clone.episodes.index.dtype == np.int64 and clone.total_frames == 10 * BIG


def test_pickle_keeps_columns_that_do_not_follow_from_lengths() -> None:
    """A table whose indices have gaps and whose episodes have several tasks round-trips exactly."""
    refs = [EpisodeRef(i * 3, 2 + i % 3, 0, 0, "d.parquet", i, ("x", "y")[: 1 + i % 2]) for i in range(50)]
    start = 0
    for k, ref in enumerate(refs):  # global ranges in reverse episode order: start is not cumsum
        refs[k] = dataclasses.replace(ref, dataset_from_index=1000 - start - ref.length, dataset_to_index=1000 - start)
        start += ref.length
    table = EpisodeTable.from_refs(refs, ("x", "y"))
    clone = pickle.loads(pickle.dumps(table))
    assert clone == table and list(clone) == refs
    assert table.position(3) == 1 and table.position(4) is None and table.position(-3) is None


def test_writer_stats_of_many_episodes_equal_per_episode_stats() -> None:
    """The writer's statistics, computed over many episodes of one length at once, equal
    ``_tabular_stats`` of each episode alone (exactly)."""
    lengths = [3, 7, 3, 1, 7, 12, 3]
    episodes, start = [], 0
    for i, n in enumerate(lengths):
        episodes.append(_Episode(index=i, length=n, task_index=i % 2, from_index=start))
        start += n
    stacked = _episode_stats(*(np.array([getattr(e, f) for e in episodes]) for f in ("index", "length", "from_index", "task_index")),
                             fps=10, state_dim=4, action_dim=2)
    for e in episodes:
        alone = _tabular_stats(_episode_columns(e, 10, 4, 2), 10)
        assert set(alone) == set(stacked)
        for key, named in alone.items():
            assert list(named) == list(stacked[key])
            for name, value in named.items():
                np.testing.assert_array_equal(stacked[key][name][e.index], value, err_msg=f"{key}/{name} ep {e.index}")


def test_writer_has_no_episode_cap_without_cameras(tmp_path: Path) -> None:
    n = 20_000
    assert n > MAX_EPISODES and n > EXACT_SIZES_UP_TO
    lengths = [2] * (n - 3) + [1, 3, 2]
    root = write_dataset(tmp_path / "big", episode_lengths=lengths, cameras=None, data_files_size_in_mb=0.5)
    meta = open_dataset(root)  # default validation: every data file's row groups against the table
    assert meta.total_episodes == n and meta.total_frames == sum(lengths)
    files = meta.episodes.data_files
    assert len(files) >= 2
    for path in files:
        assert pq.ParquetFile(root / path).metadata.num_row_groups == int((meta.episodes.data_file == files.index(path)).sum())
    for i in (0, MAX_EPISODES, n - 3, n - 2, n - 1):
        ref = meta.episode(i)
        cols = read_episode_columns(meta, ref, ["episode_index", "frame_index", "index"])
        assert (cols["episode_index"] == i).all() and ref.length == lengths[i]
        np.testing.assert_array_equal(cols["frame_index"], np.arange(lengths[i]))
        np.testing.assert_array_equal(cols["index"], np.arange(ref.dataset_from_index, ref.dataset_to_index))
    assert len(pickle.dumps(meta)) < 200_000  # 20,000 episodes: a few bytes each


def test_writer_still_caps_episodes_with_cameras(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=rf"{MAX_EPISODES + 1} episodes requested with cameras; .* at most {MAX_EPISODES}"):
        write_dataset(tmp_path / "v", episode_lengths=[1] * (MAX_EPISODES + 1))
    assert not (tmp_path / "v").exists()  # arguments are checked before anything is written
