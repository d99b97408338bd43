"""Damaged datasets through the whole loader: clear errors by default, whole-episode skips on request."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from streamnodes import (
    ConfigError,
    DatasetFormatError,
    StateError,
    StreamNodesError,
    VideoDecodeError,
    build_loader,
    open_dataset,
)

LENGTHS = [12, 7, 15, 9, 11, 6, 10]
CAM = "observation.images.cam"


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    from streamnodes.testing import write_dataset

    return write_dataset(
        tmp_path_factory.mktemp("bad") / "clean", episode_lengths=LENGTHS, cameras={CAM: (64, 64)},
        video_files_size_in_mb=0.012, data_files_size_in_mb=0.012,
    )


@pytest.fixture
def ds(clean, tmp_path) -> Path:
    dst = tmp_path / "ds"
    shutil.copytree(clean, dst)
    return dst


def _episodes_of(root: Path, path_part: str, kind: str) -> list[int]:
    meta = open_dataset(root, check_files=False)
    if kind == "video":
        return [e.episode_index for e in meta.episodes if path_part in e.video(CAM).path]
    return [e.episode_index for e in meta.episodes if path_part in e.data_path]


def _video_files(root: Path) -> list[Path]:
    return sorted(root.glob(f"videos/{CAM}/*/*.mp4"))


def _frames_by_episode(loader) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for batch in loader:
        for e, f in zip(batch["episode_index"].tolist(), batch["frame_index"].tolist(), strict=True):
            out.setdefault(e, []).append(f)
    return out


def _assert_skipped_whole(frames: dict[int, list[int]], skipped: set[int]) -> None:
    assert skipped and not skipped & set(frames)  # not one frame of a skipped episode
    for e, fs in frames.items():
        assert sorted(fs) == list(range(LENGTHS[e])), e  # every other episode whole, once


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_clean_dataset_reads_every_frame(clean) -> None:
    frames = _frames_by_episode(build_loader(clean, batch_size=5, on_error="skip"))
    assert {e: sorted(f) for e, f in frames.items()} == {e: list(range(n)) for e, n in enumerate(LENGTHS)}


def test_truncated_mp4_raises_naming_file_and_episode(ds) -> None:
    video = _video_files(ds)[0]
    _truncate(video, 0.3)
    meta = open_dataset(ds, check_files=False)  # past open_dataset's early check (tests/recipes/test_early_errors.py)
    with pytest.raises(VideoDecodeError, match=rf"{video.name} \(episode \d+.*(truncated or corrupt|outside|re-download)"):
        list(build_loader(meta, batch_size=4, episode_pool_size=1, shuffle=False))


def test_truncated_mp4_skipped_whole_and_reported(ds) -> None:
    video = _video_files(ds)[0]
    _truncate(video, 0.3)
    loader = build_loader(ds, batch_size=4, on_error="skip", episode_pool_size=2)
    frames = _frames_by_episode(loader)
    stats = loader.stats()
    skipped = {e for e, _ in stats["skipped"]}
    _assert_skipped_whole(frames, skipped)
    assert skipped <= set(_episodes_of(ds, "file-000", "video"))
    assert all(video.name in reason for _, reason in stats["skipped"])


def test_missing_mp4_raises_and_skips(ds) -> None:
    video = _video_files(ds)[-1]
    video.unlink()
    meta = open_dataset(ds, check_files=False)  # past open_dataset's early check (tests/recipes/test_early_errors.py)
    with pytest.raises(VideoDecodeError, match=rf"{video.name} \(episode \d+\): video file not found"):
        list(build_loader(meta, batch_size=4))
    loader = build_loader(ds, batch_size=4, num_workers=2, on_error="skip")
    frames = _frames_by_episode(loader)
    skipped = {e for e, _ in loader.stats()["skipped"]}
    assert skipped == set(_episodes_of(ds, video.parent.name + "/" + video.name, "video"))
    _assert_skipped_whole(frames, skipped)


def test_corrupt_parquet_footer_raises_and_skips(ds) -> None:
    data_file = sorted(ds.glob("data/*/*.parquet"))[1]
    _truncate(data_file, 0.9)
    with pytest.raises(DatasetFormatError, match=rf"{data_file.name}: not a readable parquet file"):
        build_loader(ds)
    loader = build_loader(ds, batch_size=4, on_error="skip")
    frames = _frames_by_episode(loader)
    skipped = {e for e, _ in loader.stats()["skipped"]}
    rel = str(data_file.relative_to(ds))
    assert skipped == set(_episodes_of(ds, rel, "data"))
    _assert_skipped_whole(frames, skipped)


def test_missing_row_group_skips_that_episode(ds) -> None:
    data_file = next(p for p in sorted(ds.glob("data/*/*.parquet")) if pq.ParquetFile(p).metadata.num_row_groups > 1)
    pf = pq.ParquetFile(data_file)
    lost = pf.read_row_group(0).column("episode_index")[0].as_py()
    groups = [pf.read_row_group(i) for i in range(1, pf.metadata.num_row_groups)]
    with pq.ParquetWriter(data_file, pf.schema_arrow) as writer:  # the first episode's row group is gone
        for group in groups:
            writer.write_table(group, row_group_size=group.num_rows)
    with pytest.raises(StreamNodesError, match=rf"{data_file.name}: holds \d+ rows .* rows are missing or extra. Restore"):
        build_loader(ds)
    loader = build_loader(ds, batch_size=4, on_error="skip")
    frames = _frames_by_episode(loader)
    skipped = {e for e, _ in loader.stats()["skipped"]}
    assert lost in skipped and skipped <= set(_episodes_of(ds, str(data_file.relative_to(ds)), "data"))
    _assert_skipped_whole(frames, skipped)


def test_timestamps_outside_tolerance(ds) -> None:
    episodes_file = ds / "meta/episodes/chunk-000/file-000.parquet"
    table = pq.read_table(episodes_file)
    col = f"videos/{CAM}/from_timestamp"
    values = table.column(col).to_pylist()
    values[3] += 0.05  # half a frame at 10 fps
    table = table.set_column(table.column_names.index(col), col, pa.array(values, pa.float64()))
    pq.write_table(table, episodes_file)
    with pytest.raises(VideoDecodeError, match=r"\(episode 3, camera observation.images.cam\).*beyond tolerance_s=0.0001"):
        list(build_loader(ds, batch_size=4, shuffle=False, episode_pool_size=1))
    loader = build_loader(ds, batch_size=4, on_error="skip")
    frames = _frames_by_episode(loader)
    assert {e for e, _ in loader.stats()["skipped"]} == {3}
    _assert_skipped_whole(frames, {3})


def test_info_json_problems(ds) -> None:
    info = json.loads((ds / "meta/info.json").read_text())
    (ds / "meta/info.json").write_text(json.dumps({**info, "codebase_version": "v2.1"}))
    with pytest.raises(DatasetFormatError, match="convert_dataset_v21_to_v30"):
        build_loader(ds)
    del info["features"]
    (ds / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(DatasetFormatError, match=r"missing keys \['features'\]"):
        build_loader(ds)


def test_bad_arguments(clean) -> None:
    with pytest.raises(ConfigError, match="not features"):
        build_loader(clean, delta_timestamps={"observation.velocity": [0.0]})
    with pytest.raises(ConfigError, match="not multiples of 1/fps"):
        build_loader(clean, delta_timestamps={"action": [0.0, 0.05]})
    with pytest.raises(ConfigError, match="on_error"):
        build_loader(clean, on_error="ignore")
    with pytest.raises(ConfigError, match="image_dtype"):
        build_loader(clean, image_dtype=torch.float16)
    with pytest.raises(ConfigError, match=r"max_decoders must be an integer >= 1, got 0"):
        build_loader(clean, max_decoders=0)
    with pytest.raises(ConfigError, match=rf"episodes \[99\] are not in {clean} \(it has 7 episodes, indices 0..6\). "
                       r"Pick indices from meta.episodes"):
        build_loader(clean, episodes=[3, 99])


@pytest.mark.parametrize(
    ("saved", "change", "message"),
    [
        ({}, {"seed": 1}, "another stream configuration"),
        ({}, {"episode_pool_size": 3}, "another stream configuration"),
        ({}, {"delta_timestamps": {"action": [0.0, 0.2]}}, "another stream configuration"),
        # one rank's state of a 2-rank run: alone it cannot say what the other rank delivered
        ({"rank": 0, "world_size": 2}, {"rank": 1, "world_size": 2}, r"rank saved 0, now 1\)\. Restore each rank's own"),
        ({"rank": 0, "world_size": 2}, {"num_workers": 1}, r"world_size saved 2, now 1, num_workers saved 2, now 1\).*EVERY rank's state"),
    ],
)
def test_state_from_another_config_or_topology(clean, saved, change, message) -> None:
    base = {"batch_size": 4, "num_workers": 2, "episode_pool_size": 2, "seed": 0, "delta_timestamps": {"action": [0.0, 0.1]}}
    loader = build_loader(clean, **base, **saved)
    it = iter(loader)
    next(it)
    state = loader.state_dict()
    with pytest.raises(StateError, match=message):
        build_loader(clean, **{**base, **change}).load_state_dict(state)


@pytest.mark.parametrize("change", [{"num_workers": 1}, {"num_workers": 0}, {"rank": 1, "world_size": 2}])
def test_a_one_rank_runs_state_re_deals_into_another_topology(clean, change) -> None:
    """A one-rank run's single state is every rank's state: another num_workers or world size re-deals it."""
    base = {"batch_size": 4, "num_workers": 2, "episode_pool_size": 2, "seed": 0}
    loader = build_loader(clean, **base)
    it = iter(loader)
    first = next(it)["index"].tolist()
    state = loader.state_dict()
    resumed = build_loader(clean, **{**base, **change})
    resumed.load_state_dict(state)
    rest = [i for batch in resumed for i in batch["index"].tolist()]
    assert resumed.epoch == 0 and not set(first) & set(rest) and len(rest) == len(set(rest)) > 0


def test_state_from_another_dataset_or_version(clean, ds, tmp_path) -> None:
    from streamnodes.testing import write_dataset

    other = write_dataset(tmp_path / "other", episode_lengths=[5, 6, 7], cameras={CAM: (64, 64)})
    loader = build_loader(clean, batch_size=4, episode_pool_size=2)
    it = iter(loader)
    next(it)
    state = loader.state_dict()
    restored = build_loader(other, batch_size=4, episode_pool_size=2)
    # refused in load_state_dict (the main process), naming both datasets with their episode counts
    expected = f"saved reading {clean} ({len(LENGTHS)} episodes); this loader reads {other} (3 episodes)"
    with pytest.raises(StateError, match=re.escape(expected)):
        restored.load_state_dict(state)
    # the per-consumer check stays as a second line of defence (a state edited to pass the first one)
    edited = {**state, "streamnodes": {**state["streamnodes"], "dataset": None}}
    restored.load_state_dict(edited)
    with pytest.raises(StateError, match="dataset: saved"):
        next(iter(restored))
    old = {**state, "streamnodes": {**state["streamnodes"], "version": 0}}
    with pytest.raises(StateError, match="version 0"):
        build_loader(clean, batch_size=4, episode_pool_size=2).load_state_dict(old)
    with pytest.raises(StateError, match="not a streamnodes loader state"):
        build_loader(clean).load_state_dict({"_snapshot": {}})


@pytest.mark.timeout(120)
def test_worker_error_surfaces_in_main_process(ds) -> None:
    """Damage after the dataset was opened (and checked) is met by a worker; the main process raises the
    worker's own error, attributes included, not torch's "Caught ... in DataLoader worker" re-wrap."""
    meta = open_dataset(ds)
    damaged = _video_files(ds)[0]
    _truncate(damaged, 0.3)
    for batch_size in (4, None):  # the graph batches (BatchDecode), or the samples go unbatched
        with pytest.raises(VideoDecodeError, match=r"episode \d+") as caught:
            list(build_loader(meta, batch_size=batch_size, num_workers=2))
        assert "Caught" not in str(caught.value) and "Traceback" not in str(caught.value)
        assert caught.value.path is not None and caught.value.path.endswith(damaged.name)
        assert caught.value.episode_index is not None and caught.value.camera == CAM


@pytest.mark.timeout(120)
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the DataLoader's __del__ after the kill
def test_killed_worker_does_not_hang(clean) -> None:
    loader = build_loader(clean, batch_size=2, num_workers=2, episode_pool_size=1)
    it = iter(loader)
    next(it)
    os.kill(it._workers[0].pid, signal.SIGKILL)
    with pytest.raises(RuntimeError, match="DataLoader worker .* exited unexpectedly|killed by signal"):
        for _ in range(100):
            next(it)
