"""The format layer reads LeRobot's own dataset exactly as LeRobot does, locally and through fsspec."""

from __future__ import annotations

import pickle

import fsspec
import numpy as np
import pyarrow.parquet as pq
import pytest

from streamnodes.format import DatasetMeta, open_dataset, read_episode_columns
from streamnodes.format.metadata import EPISODES_PATH
from tests.conftest import REF_ROOT


@pytest.fixture(scope="module")
def meta() -> DatasetMeta:
    return open_dataset(REF_ROOT)


def test_episodes_table_matches_lerobot(meta: DatasetMeta, reference: dict) -> None:
    eps = meta.episodes
    assert [e.episode_index for e in eps] == reference["meta__episode_index"].tolist()
    assert [e.length for e in eps] == reference["meta__length"].tolist()
    assert [e.dataset_from_index for e in eps] == reference["meta__dataset_from_index"].tolist()
    assert [e.dataset_to_index for e in eps] == reference["meta__dataset_to_index"].tolist()
    key = "observation.images.cam"
    assert [e.video(key).from_timestamp for e in eps] == reference[f"meta__videos/{key}/from_timestamp"].tolist()
    assert [e.video(key).to_timestamp for e in eps] == reference[f"meta__videos/{key}/to_timestamp"].tolist()
    # each episode is its own row group of the one data file, in index order
    assert [e.row_group for e in eps] == list(range(6))
    assert {e.data_path for e in eps} == {"data/chunk-000/file-000.parquet"}
    paths = {e.video(key).path for e in eps}
    assert paths == set(reference[f"{key}__video_path"].tolist())


def test_episodes_table_file_indices_match_lerobot(meta: DatasetMeta, reference: dict) -> None:
    """Every chunk/file index of LeRobot's episodes table names the file streamnodes reads for it."""
    key = "observation.images.cam"
    data_t, video_t = meta.info["data_path"], meta.info["video_path"]
    for i, ep in enumerate(meta.episodes):
        data = data_t.format(chunk_index=int(reference["meta__data/chunk_index"][i]),
                             file_index=int(reference["meta__data/file_index"][i]))
        video = video_t.format(video_key=key, chunk_index=int(reference[f"meta__videos/{key}/chunk_index"][i]),
                               file_index=int(reference[f"meta__videos/{key}/file_index"][i]))
        assert (ep.data_path, ep.video(key).path) == (data, video), ep.episode_index
        assert (REF_ROOT / data).is_file() and (REF_ROOT / video).is_file()
    # the episodes-metadata file of each episode, by LeRobot's meta/episodes chunk/file indices, lists it
    by_file: dict[str, set[int]] = {}
    for i, ep in enumerate(meta.episodes):
        rel = EPISODES_PATH.format(chunk_index=int(reference["meta__meta/episodes/chunk_index"][i]),
                                   file_index=int(reference["meta__meta/episodes/file_index"][i]))
        by_file.setdefault(rel, set()).add(ep.episode_index)
    for rel, episodes in by_file.items():
        assert set(pq.read_table(REF_ROOT / rel, columns=["episode_index"]).column(0).to_pylist()) == episodes


def test_metadata_views(meta: DatasetMeta, reference: dict) -> None:
    assert meta.fps == 10 and meta.total_frames == 237 and meta.total_episodes == 6
    assert meta.video_keys == ("observation.images.cam",)
    assert meta.features["observation.state"].shape == (6,)
    assert meta.features["observation.images.cam"].is_video
    assert "observation.images.cam" not in meta.data_keys
    # task strings by task_index, as LeRobot returns them per frame
    tasks = {int(t): s for t, s in zip(reference["task_index"], reference["task"], strict=True)}
    assert all(meta.tasks[t] == s for t, s in tasks.items())
    assert meta.episodes[0].tasks == ("pick the red cube",)
    assert meta.stats is not None and "observation.state" in meta.stats
    assert "episodes=6" in repr(meta) and "EpisodeRef(episode=0" in repr(meta.episodes[0])


def test_read_episode_rows_equal_lerobot_rows(meta: DatasetMeta, reference: dict) -> None:
    for ref in meta.episodes:
        cols = read_episode_columns(meta, ref, ["observation.state", "action", "timestamp", "frame_index"])
        rows = (reference["episode_index"] == ref.episode_index)
        order = np.argsort(reference["index"][rows])
        assert set(cols) == {"observation.state", "action", "timestamp", "frame_index", "index"}
        np.testing.assert_array_equal(cols["observation.state"], reference["nodelta__observation.state"][rows][order])
        np.testing.assert_array_equal(cols["action"], reference["nodelta__action"][rows][order])
        np.testing.assert_array_equal(cols["timestamp"], reference["timestamp"][rows][order])
        assert cols["observation.state"].dtype == np.float32 and cols["index"].dtype == np.int64


def test_pickle_round_trip_rebuilds_filesystem(meta: DatasetMeta) -> None:
    clone = pickle.loads(pickle.dumps(meta))
    assert clone.fingerprint == meta.fingerprint
    assert clone.episodes == meta.episodes
    assert not clone.is_remote
    assert read_episode_columns(clone, clone.episodes[2], ["action"])["action"].shape == (60, 6)


def test_any_fsspec_url(meta: DatasetMeta) -> None:
    # the same dataset copied into fsspec's in-memory file system, opened by URL
    mem = fsspec.filesystem("memory")
    for path in REF_ROOT.rglob("*"):
        if path.is_file():
            mem.pipe(f"/ref_ds/{path.relative_to(REF_ROOT)}", path.read_bytes())
    remote = open_dataset("memory://ref_ds")
    assert remote.is_remote
    assert remote.episodes == meta.episodes
    a = read_episode_columns(remote, remote.episodes[3], ["observation.state"])
    b = read_episode_columns(meta, meta.episodes[3], ["observation.state"])
    np.testing.assert_array_equal(a["observation.state"], b["observation.state"])
    assert remote.url("meta/info.json").endswith("ref_ds/meta/info.json")


def test_file_url_is_local() -> None:
    m = open_dataset(f"file://{REF_ROOT}")
    assert not m.is_remote and m.total_frames == 237


def test_fingerprint_differs_between_datasets(meta: DatasetMeta, tabular_dataset) -> None:
    assert open_dataset(tabular_dataset).fingerprint != meta.fingerprint


def test_generated_dataset_rolls_over_files_and_chunks(tabular_dataset) -> None:
    m = open_dataset(tabular_dataset)
    files = sorted({e.data_path for e in m.episodes})
    assert len(files) >= 3 and any("chunk-001" in f for f in files)
    for path in files:
        eps = sorted((e for e in m.episodes if e.data_path == path), key=lambda e: e.row_group)
        assert [e.row_group for e in eps] == list(range(len(eps)))
        assert all(a.dataset_to_index == b.dataset_from_index for a, b in zip(eps, eps[1:], strict=False))
    for ref in m.episodes:
        cols = read_episode_columns(m, ref, ["episode_index", "frame_index"])
        assert (cols["episode_index"] == ref.episode_index).all()
        np.testing.assert_array_equal(cols["frame_index"], np.arange(ref.length))


def test_video_fixture_has_the_layout_tests_rely_on(video_dataset) -> None:
    """Several mp4s per camera, several episodes per mp4, video boundaries unlike data boundaries."""
    m = open_dataset(video_dataset)
    for key in m.video_keys:
        files = [e.video(key).path for e in m.episodes]
        assert len(set(files)) >= 2 and len(set(files)) < len(files)
    data_groups = [tuple(e.episode_index for e in m.episodes if e.data_path == p) for p in sorted({e.data_path for e in m.episodes})]
    assert any(len(g) > 1 for g in data_groups)
    video_groups = [tuple(e.episode_index for e in m.episodes if e.video(m.video_keys[0]).path == p)
                    for p in sorted({e.video(m.video_keys[0]).path for e in m.episodes})]
    assert data_groups != video_groups
