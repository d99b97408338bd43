"""streamnodes.testing.write_dataset: LeRobot v3.0 parity, roll-over, video timing, identity, errors.

Everything here writes and reads real files (parquet, mp4 through FFmpeg); nothing is mocked.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchcodec.decoders import VideoDecoder
from torchcodec.encoders import VideoEncoder

from streamnodes.errors import ConfigError
from streamnodes.testing import (
    MAX_EPISODE_LENGTH,
    MAX_EPISODES,
    _assign_files,
    _next_file,
    camera_identity,
    expected_action,
    expected_state,
    frame_identity,
    identity_image,
    write_dataset,
)

REF_ROOT = Path(__file__).parent / "data" / "lerobot_v3_ref" / "dataset"
EPISODES_FILE = "meta/episodes/chunk-000/file-000.parquet"
MB = 1024 * 1024


def episodes_table(root: Path) -> pd.DataFrame:
    return pq.read_table(root / EPISODES_FILE).to_pandas()


def info(root: Path) -> dict:
    return json.loads((root / "meta" / "info.json").read_text())


def data_path(root: Path, chunk: int, file: int) -> Path:
    return root / info(root)["data_path"].format(chunk_index=chunk, file_index=file)


def video_path(root: Path, key: str, chunk: int, file: int) -> Path:
    return root / info(root)["video_path"].format(video_key=key, chunk_index=chunk, file_index=file)


def runs(keys: list[tuple[int, int]]) -> list[tuple[tuple[int, int], list[int]]]:
    """Consecutive episodes sharing a (chunk, file)."""
    out: list[tuple[tuple[int, int], list[int]]] = []
    for episode, key in enumerate(keys):
        if out and out[-1][0] == key:
            out[-1][1].append(episode)
        else:
            out.append((key, [episode]))
    return out


@pytest.fixture(scope="module")
def default_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Defaults: the feature set of the LeRobot reference (one camera observation.images.cam, dims 6)."""
    return write_dataset(tmp_path_factory.mktemp("default"))


ROLLED_LENGTHS = [20, 35, 60, 27, 44, 51, 8, 15]
ROLLED_CAMERAS = {"observation.images.cam": (64, 64), "observation.images.wrist": (48, 96)}


@pytest.fixture(scope="module")
def rolled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny size knobs: several episodes per file, several files per chunk, several chunks."""
    return write_dataset(
        tmp_path_factory.mktemp("rolled") / "ds",
        episode_lengths=ROLLED_LENGTHS,
        cameras=ROLLED_CAMERAS,
        data_files_size_in_mb=0.015,
        video_files_size_in_mb=0.008,
        chunks_size=2,
    )


# --- parity with LeRobot's own writer ----------------------------------------------------------------


def test_info_json_matches_lerobot(default_dataset: Path) -> None:
    ref, ours = info(REF_ROOT), info(default_dataset)
    assert list(ours) == list(ref)
    assert list(ours["features"]) == list(ref["features"])
    for key, feature in ref["features"].items():
        assert ours["features"][key].keys() == feature.keys(), key
        assert ours["features"][key]["dtype"] == feature["dtype"]
        assert ours["features"][key]["names"] == feature["names"]
    assert (
        ours["features"]["observation.images.cam"]["info"].keys()
        == ref["features"]["observation.images.cam"]["info"].keys()
    )
    assert ours["features"]["observation.images.cam"]["shape"] == [64, 64, 3]
    for key in ("codebase_version", "chunks_size", "data_files_size_in_mb", "video_files_size_in_mb", "fps"):
        assert ours[key] == ref[key], key
    for key in ("data_path", "video_path"):
        assert ours[key] == ref[key]
    assert (ours["total_episodes"], ours["total_frames"], ours["total_tasks"]) == (3, 115, 3)
    assert ours["splits"] == {"train": "0:3"}


@pytest.mark.parametrize(
    "relative",
    ["data/chunk-000/file-000.parquet", EPISODES_FILE, "meta/tasks.parquet"],
    ids=["data", "episodes", "tasks"],
)
def test_parquet_schemas_match_lerobot(default_dataset: Path, relative: str) -> None:
    ref, ours = pq.read_schema(REF_ROOT / relative), pq.read_schema(default_dataset / relative)
    assert ours.names == ref.names
    assert ours.equals(ref, check_metadata=False), f"\nours:\n{ours}\nLeRobot:\n{ref}"
    assert set(ours.metadata or {}) == set(ref.metadata or {})


def test_data_file_huggingface_metadata_matches_lerobot(default_dataset: Path) -> None:
    def features(root: Path) -> dict:
        metadata = pq.read_schema(root / "data/chunk-000/file-000.parquet").metadata
        return json.loads(metadata[b"huggingface"])["info"]["features"]

    assert features(default_dataset) == features(REF_ROOT)


def test_one_row_group_per_episode(default_dataset: Path, rolled: Path) -> None:
    for root, lengths in ((default_dataset, [20, 35, 60]), (rolled, ROLLED_LENGTHS)):
        groups = []
        for path in sorted((root / "data").rglob("*.parquet")):
            metadata = pq.ParquetFile(path).metadata
            groups += [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]
        assert groups == lengths


def test_stats_json_and_episode_stats_shaped_like_lerobot(default_dataset: Path) -> None:
    ref = json.loads((REF_ROOT / "meta" / "stats.json").read_text())
    ours = json.loads((default_dataset / "meta" / "stats.json").read_text())
    assert set(ours) == set(ref)
    for key, stats in ref.items():
        assert list(ours[key]) == list(stats), key
        for name, value in stats.items():
            assert np.shape(ours[key][name]) == np.shape(value), (key, name)
    assert ours["index"]["min"] == [0] and ours["index"]["max"] == [114] and ours["index"]["count"] == [115]
    state = ours["observation.state"]
    np.testing.assert_array_equal(state["min"], expected_state(0, 0).astype(np.float64))
    np.testing.assert_array_equal(state["max"], expected_state(2, 59).astype(np.float64))
    image = np.array(ours["observation.images.cam"]["mean"])
    assert image.shape == (3, 1, 1) and np.all((image > 0) & (image < 1))

    rows = pq.read_table(default_dataset / EPISODES_FILE).to_pylist()
    for i, (row, length) in enumerate(zip(rows, [20, 35, 60], strict=True)):
        assert row["stats/observation.state/count"] == [length]
        np.testing.assert_array_equal(row["stats/observation.state/min"], expected_state(i, 0))
        np.testing.assert_array_equal(row["stats/action/min"], expected_action(i, length - 1))
        assert row["stats/frame_index/max"] == [length - 1]
        assert row["stats/index/min"] == [sum([20, 35, 60][:i])]
        for name in ("min", "max", "mean", "q50"):
            value = np.array(row[f"stats/observation.images.cam/{name}"])
            assert value.shape == (3, 1, 1) and np.all((value >= 0) & (value <= 1)), name
        assert row["stats/observation.images.cam/count"] == [16]  # frames sampled per episode


def test_tasks(tmp_path: Path) -> None:
    tasks = ["stack", "unstack", "wave"]
    root = write_dataset(
        tmp_path, episode_lengths=[3, 4, 5, 6], cameras=None, tasks=tasks, episode_tasks=[2, 2, 0, 1]
    )
    frame = pd.read_parquet(root / "meta" / "tasks.parquet")
    assert list(frame.index) == tasks and list(frame["task_index"]) == [0, 1, 2]
    assert [list(t) for t in episodes_table(root)["tasks"]] == [["wave"], ["wave"], ["stack"], ["unstack"]]
    data = pq.read_table(root / "data/chunk-000/file-000.parquet").to_pandas()
    assert list(data["task_index"]) == [2] * 3 + [2] * 4 + [0] * 5 + [1] * 6
    default = write_dataset(tmp_path / "default", episode_lengths=[1] * 4, cameras=None)
    defaults = ["pick the red cube", "place the cube in the bin", "push the block left"]  # documented defaults
    assert [list(t) for t in episodes_table(default)["tasks"]] == [[defaults[i % 3]] for i in range(4)]


# --- roll-over ---------------------------------------------------------------------------------------


def test_rollover_layout(rolled: Path) -> None:
    table = episodes_table(rolled)
    meta = info(rolled)
    assert meta["chunks_size"] == 2 and meta["data_files_size_in_mb"] == 0.015
    assert list(table["episode_index"]) == list(range(len(ROLLED_LENGTHS)))
    assert list(table["length"]) == ROLLED_LENGTHS
    ends = np.cumsum(ROLLED_LENGTHS)
    assert list(table["dataset_from_index"]) == [0, *ends[:-1]]
    assert list(table["dataset_to_index"]) == list(ends)

    data_keys = list(zip(table["data/chunk_index"], table["data/file_index"], strict=True))
    data_runs = runs(data_keys)
    assert len(data_runs) >= 3 and len({c for c, _ in data_keys}) >= 2, data_keys
    assert any(len(members) >= 2 for _, members in data_runs), "no data file holds several episodes"
    assert all(f < 2 for _, f in data_keys)
    expected_keys = [(0, 0)]
    for _ in data_runs[1:]:
        expected_keys.append(_next_file(*expected_keys[-1], 2))
    assert [key for key, _ in data_runs] == expected_keys  # files numbered without gaps

    for (chunk, file), members in data_runs:
        path = data_path(rolled, chunk, file)
        data = pq.read_table(path)
        assert pq.ParquetFile(path).metadata.num_row_groups == len(members)
        assert data["episode_index"].to_pylist() == [e for e in members for _ in range(ROLLED_LENGTHS[e])]
        assert data["index"].to_pylist() == list(
            range(table["dataset_from_index"][members[0]], table["dataset_to_index"][members[-1]])
        )
        if len(members) > 1:
            assert path.stat().st_size <= 0.015 * MB
    assert sorted((rolled / "data").rglob("*.parquet")) == sorted(
        data_path(rolled, c, f) for (c, f), _ in data_runs
    )

    for key, (height, _) in ROLLED_CAMERAS.items():
        prefix = f"videos/{key}/"
        video_keys = list(zip(table[prefix + "chunk_index"], table[prefix + "file_index"], strict=True))
        video_runs = runs(video_keys)
        assert len(video_runs) >= 2 and any(len(m) >= 2 for _, m in video_runs), video_keys
        assert {m[0] for _, m in video_runs} != {m[0] for _, m in data_runs}, (
            "video files should roll over independently of data files"
        )
        on_disk = sorted((rolled / "videos" / key).rglob("*.mp4"))
        assert on_disk == sorted(video_path(rolled, key, c, f) for (c, f), _ in video_runs)
        for (chunk, file), members in video_runs:
            frames_before = np.cumsum([0] + [ROLLED_LENGTHS[e] for e in members])
            np.testing.assert_allclose(
                table[prefix + "from_timestamp"][members], frames_before[:-1] / 10, atol=1e-9
            )
            np.testing.assert_allclose(
                table[prefix + "to_timestamp"][members], frames_before[1:] / 10, atol=1e-9
            )
            path = video_path(rolled, key, chunk, file)
            assert VideoDecoder(path, seek_mode="approximate").metadata.num_frames == frames_before[-1]
            assert VideoDecoder(path, seek_mode="approximate").metadata.height == height
            if len(members) > 1:
                assert path.stat().st_size <= 0.008 * MB


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 5000), min_size=1, max_size=40),
    limit_bytes=st.integers(1, 20000),
    chunks_size=st.integers(1, 4),
    shared=st.integers(0, 500),
)
def test_assign_files_rolls_over_like_lerobot(
    sizes: list[int], limit_bytes: int, chunks_size: int, shared: int
) -> None:
    sizes = [s + shared for s in sizes]  # an episode alone is always bigger than what files share
    keys = _assign_files(sizes, limit_bytes / MB, chunks_size, shared_bytes=shared)
    file_runs = runs(keys)
    assert keys[0] == (0, 0)
    for (key, _), (next_key, _) in zip(file_runs, file_runs[1:], strict=False):
        assert next_key == _next_file(*key, chunks_size)
    for i, (_, members) in enumerate(file_runs):
        size = sum(sizes[e] for e in members) - shared * (len(members) - 1)
        assert len(members) == 1 or size <= limit_bytes
        if i + 1 < len(file_runs):  # closed only because the next episode did not fit
            assert size + sizes[file_runs[i + 1][1][0]] - shared > limit_bytes


# --- video timing ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("codec", "fps"), [("av1", 10), ("h264", 10), ("av1", 30), ("h264", 30)])
def test_video_frames_sit_on_the_frame_grid(tmp_path: Path, codec: str, fps: int) -> None:
    cameras = {"observation.images.front": (64, 96), "observation.images.side": (48, 64)}  # svt / aom for av1
    lengths = [7, 12, 1, 9, 16]
    root = write_dataset(
        tmp_path, episode_lengths=lengths, fps=fps, cameras=cameras, codec=codec, video_files_size_in_mb=0.004
    )
    table = episodes_table(root)
    for key, (height, width) in cameras.items():
        assert info(root)["features"][key]["info"]["video.codec"] == codec
        files = runs(
            list(zip(table[f"videos/{key}/chunk_index"], table[f"videos/{key}/file_index"], strict=True))
        )
        assert len(files) >= 2
        for (chunk, file), members in files:
            num_frames = sum(lengths[e] for e in members)
            decoder = VideoDecoder(video_path(root, key, chunk, file), seek_mode="approximate")
            assert decoder.metadata.num_frames == num_frames
            assert decoder.metadata.average_fps == pytest.approx(fps, abs=1e-9)
            assert (decoder.metadata.height, decoder.metadata.width) == (height, width)
            assert decoder.metadata.codec == ("av1" if codec == "av1" else "h264")
            batch = decoder.get_frames_at(list(range(num_frames)))
            np.testing.assert_allclose(
                batch.pts_seconds.numpy(), np.arange(num_frames) / fps, rtol=0, atol=1e-4
            )


def test_many_episodes_in_one_video_file_do_not_drift(tmp_path: Path) -> None:
    # mp4 headers count whole milliseconds: 7 frames at 30 fps last 233.33 ms, stored as 234. Joining 40
    # such episodes naively drifts by most of a frame; the writer must keep every frame on the grid.
    lengths = [7] * 40
    root = write_dataset(tmp_path, episode_lengths=lengths, fps=30, cameras={"cam": (32, 32)}, codec="h264")
    decoder = VideoDecoder(video_path(root, "cam", 0, 0), seek_mode="approximate")
    assert decoder.metadata.num_frames == 280 and decoder.metadata.average_fps == pytest.approx(30)
    batch = decoder.get_frames_at(list(range(280)))
    np.testing.assert_allclose(batch.pts_seconds.numpy(), np.arange(280) / 30, rtol=0, atol=1e-4)
    assert [frame_identity(image) for image in batch.data] == [(e, f) for e in range(40) for f in range(7)]
    np.testing.assert_allclose(episodes_table(root)["videos/cam/from_timestamp"], np.arange(40) * 7 / 30)


# --- identity ----------------------------------------------------------------------------------------


def test_every_decoded_frame_and_row_carries_its_identity(rolled: Path) -> None:
    table = episodes_table(rolled)
    camera_keys = list(ROLLED_CAMERAS)
    decoders: dict[Path, VideoDecoder] = {}
    for ep in range(len(ROLLED_LENGTHS)):
        chunk, file = table["data/chunk_index"][ep], table["data/file_index"][ep]
        rows = pq.read_table(data_path(rolled, chunk, file)).to_pandas()
        rows = rows[rows["episode_index"] == ep]
        length = ROLLED_LENGTHS[ep]
        frames = np.arange(length)
        assert list(rows["frame_index"]) == list(frames)
        np.testing.assert_array_equal(rows["timestamp"].to_numpy(), (frames / 10).astype(np.float32))
        assert rows["timestamp"].dtype == np.float32
        np.testing.assert_array_equal(
            np.stack(rows["observation.state"].to_numpy()), expected_state(ep, frames)
        )
        np.testing.assert_array_equal(np.stack(rows["action"].to_numpy()), expected_action(ep, frames))
        assert list(rows["index"]) == list(
            range(table["dataset_from_index"][ep], table["dataset_to_index"][ep])
        )
        for camera_index, key in enumerate(camera_keys):
            prefix = f"videos/{key}/"
            path = video_path(
                rolled, key, table[prefix + "chunk_index"][ep], table[prefix + "file_index"][ep]
            )
            decoder = decoders.setdefault(path, VideoDecoder(path, seek_mode="approximate"))
            # LeRobot's rule: in-file time = from_timestamp + timestamp column, frame = round(time * fps).
            times = table[prefix + "from_timestamp"][ep] + rows["timestamp"].to_numpy().astype(np.float64)
            indices = np.round(times * decoder.metadata.average_fps).astype(int).tolist()
            batch = decoder.get_frames_at(indices)
            np.testing.assert_allclose(batch.pts_seconds.numpy(), times, rtol=0, atol=1e-4)
            for frame_index, image in zip(frames, batch.data, strict=True):
                assert frame_identity(image) == (ep, frame_index)
                assert camera_identity(image) == camera_index


CODE_SIZES = [(16, 16), (64, 64), (96, 96), (96, 128), (50, 34)]


@pytest.mark.parametrize(
    ("encoder", "height", "width"),
    [
        (e, h, w)
        for e in ("libaom-av1", "libsvtav1", "libx264")
        for h, w in CODE_SIZES
        if e != "libsvtav1" or min(h, w) >= 64
    ],
)
def test_identity_code_survives_lossy_coding(tmp_path: Path, encoder: str, height: int, width: int) -> None:
    rng = np.random.default_rng(height * 1000 + width)
    ids = [(0, 0), (4095, 4095), (MAX_EPISODES - 1, MAX_EPISODE_LENGTH - 1), (1, 2), (2, 1), (4096, 0)]
    ids += [tuple(int(x) for x in pair) for pair in rng.integers(0, MAX_EPISODES, size=(14, 2))]
    cameras = [i % 16 for i in range(len(ids))]
    frames = np.stack(
        [identity_image(e, f, height, width, c) for (e, f), c in zip(ids, cameras, strict=True)]
    )
    assert frames.shape == (len(ids), 3, height, width) and frames.dtype == np.uint8
    options = {"g": "2", "cpu-used": "8"} if encoder == "libaom-av1" else {"g": "2"}
    path = tmp_path / "code.mp4"
    VideoEncoder(torch.from_numpy(frames), frame_rate=10).to_file(
        path, codec=encoder, pixel_format="yuv420p", extra_options=options
    )
    decoded = VideoDecoder(path).get_frames_in_range(0, len(ids)).data
    for image, identity, camera in zip(decoded, ids, cameras, strict=True):
        assert frame_identity(image) == identity
        assert camera_identity(image) == camera


def test_frame_identity_accepts_layouts_dtypes_and_resizing() -> None:
    chw = identity_image(1234, 567, 96, 128, camera_index=3)
    hwc = chw.transpose(1, 2, 0)
    as_float = torch.from_numpy(chw).float() / 255
    resized = torch.nn.functional.interpolate(as_float[None], size=(150, 100), mode="bilinear")[0]
    for image in (
        chw,
        hwc,
        hwc.astype(np.float32) / 255,
        as_float,
        resized,
        torch.from_numpy(hwc),
        chw.mean(axis=0),
    ):
        assert frame_identity(image) == (1234, 567)
    assert camera_identity(chw) == 3


def test_frame_identity_rejects_images_without_a_code() -> None:
    with pytest.raises(ValueError, match="no readable identity code"):
        frame_identity(np.full((3, 64, 64), 128, dtype=np.uint8))
    flipped = identity_image(5, 6, 64, 64)[:, :, ::-1]  # swaps every bit with its complement cell
    assert frame_identity(flipped) != (5, 6)
    with pytest.raises(ValueError, match="call once per frame"):
        frame_identity(np.zeros((2, 3, 64, 64), dtype=np.uint8))
    with pytest.raises(ConfigError, match="episode_index"):
        identity_image(MAX_EPISODES, 0, 64, 64)


def test_expected_values() -> None:
    np.testing.assert_array_equal(expected_state(3, 7, 4), np.float32([3007, 3007.01, 3007.02, 3007.03]))
    np.testing.assert_array_equal(
        expected_action(3, [0, 1], 2), -np.float32([[3000, 3000.01], [3001, 3001.01]])
    )


# --- feature choices ---------------------------------------------------------------------------------


def test_no_cameras_and_no_state(tmp_path: Path) -> None:
    root = write_dataset(tmp_path, episode_lengths=[4, 2], cameras=None, state_dim=0, action_dim=3)
    meta = info(root)
    assert meta["video_path"] is None
    assert list(meta["features"]) == [
        "action",
        "timestamp",
        "frame_index",
        "episode_index",
        "index",
        "task_index",
    ]
    assert not (root / "videos").exists()
    assert not any(c.startswith("videos/") for c in episodes_table(root).columns)
    data = pq.read_table(root / "data/chunk-000/file-000.parquet")
    assert data.column_names == ["action", "timestamp", "frame_index", "episode_index", "index", "task_index"]
    np.testing.assert_array_equal(
        np.stack(data["action"].to_numpy(zero_copy_only=False)[4:]), expected_action(1, [0, 1], 3)
    )
    assert sorted(p.name for p in root.iterdir()) == ["data", "meta"]  # no temporary files left behind


# --- errors ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"episode_lengths": []}, "episode_lengths is empty"),
        ({"episode_lengths": [3, 0]}, r"episode_lengths\[1\] = 0"),
        ({"episode_lengths": [2.5]}, "integer length"),
        ({"episode_lengths": [MAX_EPISODE_LENGTH + 1]}, "integer length"),
        ({"codec": "vp9"}, "codec = 'vp9'"),
        ({"fps": 0}, "fps = 0"),
        ({"cameras": {"cam": (63, 64)}}, "height = 63: must be an even integer"),
        ({"cameras": {"cam": (64, 8)}}, "width = 8: must be an even integer >= 16"),
        ({"cameras": {"cam": 64}}, r"give \(height, width\)"),
        ({"cameras": {"observation.state": (64, 64)}}, "camera key 'observation.state'"),
        ({"cameras": {"a/b": (64, 64)}}, "without '/'"),
        ({"tasks": []}, "non-empty sequence"),
        ({"tasks": ["a", "a"]}, "distinct"),
        ({"episode_tasks": [0, 5, 0]}, r"episode_tasks\[1\] = 5"),
        ({"episode_tasks": [0]}, "one task index per episode"),
        ({"state_dim": -1}, "state_dim = -1"),
        ({"data_files_size_in_mb": 0}, "data_files_size_in_mb = 0"),
        ({"video_files_size_in_mb": float("nan")}, "video_files_size_in_mb = nan"),
        ({"chunks_size": 0}, "chunks_size = 0"),
    ],
)
def test_bad_arguments_raise_config_error_before_writing(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        write_dataset(tmp_path / "ds", **kwargs)
    assert not (tmp_path / "ds").exists()


def test_existing_root(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "ds", episode_lengths=[3], cameras=None)  # a fresh directory
    with pytest.raises(ConfigError, match="already exists and is not empty.*overwrite=True"):
        write_dataset(root, episode_lengths=[5], cameras=None)
    assert info(root)["total_frames"] == 3
    write_dataset(root, episode_lengths=[5], cameras=None, overwrite=True)
    assert info(root)["total_frames"] == 5

    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "todo.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        write_dataset(foreign, cameras=None, overwrite=True)
    assert (foreign / "todo.txt").read_text() == "keep me"

    # What a killed writer leaves (no meta/info.json yet) can be overwritten too.
    partial = tmp_path / "partial"
    (partial / "data" / "chunk-000").mkdir(parents=True)
    (partial / ".write_dataset-x1y2").mkdir()
    write_dataset(partial, episode_lengths=[2], cameras=None, overwrite=True)
    assert info(partial)["total_frames"] == 2 and sorted(p.name for p in partial.iterdir()) == [
        "data",
        "meta",
    ]

    a_file = tmp_path / "file"
    a_file.write_text("")
    with pytest.raises(ConfigError, match="not a directory"):
        write_dataset(a_file)


def test_failure_midway_leaves_root_empty(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Joining episodes into one mp4 needs the ffmpeg command; without it on PATH, writing fails after
    # the data files are written, and must not leave a half dataset behind.
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    root = tmp_path / "ds"
    with pytest.raises(ConfigError, match="needs the `ffmpeg` command"):
        write_dataset(root, codec="h264")
    assert root.is_dir() and not any(root.iterdir())
