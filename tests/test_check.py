"""``streamnodes check``: real datasets (the LeRobot-written fixture and write_dataset output), damaged on
disk in the ways users meet (truncated or missing mp4, corrupt parquet, merged row groups, shifted
timestamps, wrong or missing metadata). No mocks."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from streamnodes.__main__ import main
from streamnodes.check import CheckReport, Problem, _ranges, check_dataset
from streamnodes.decoder_cache import DecoderCache
from streamnodes.errors import DatasetFormatError, StreamNodesError, VideoDecodeError, short_text
from streamnodes.format import DatasetMeta, open_dataset, read_episode_columns
from streamnodes.format.fs import fs_is_http, fs_is_local, fs_is_remote, is_url, join, relative_to, url_to_fs
from streamnodes.nodes.episode_batcher import EpisodeBatcher
from streamnodes.nodes.episode_guard import EpisodeGuard
from streamnodes.nodes.shard_source import ShardSource
from streamnodes.nodes.video_decode import decode_query
from streamnodes.types import VideoQuery
from tests.conftest import REF_ROOT

REF_VIDEO = "videos/observation.images.cam/chunk-000/file-000.mp4"
REF_DATA = "data/chunk-000/file-000.parquet"
REF_CAM = "observation.images.cam"
EPISODES = "meta/episodes/chunk-000/file-000.parquet"
FRONT = "observation.images.front"
WRIST = "observation.images.wrist"


def copy_dataset(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    for p in dst.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    return dst


@pytest.fixture
def video_copy(video_dataset: Path, tmp_path: Path) -> Path:
    """A writable copy of conftest's two-camera dataset (5 episodes, several data files and mp4s; the
    exact layout follows the encoded sizes, so tests read it from the metadata)."""
    return copy_dataset(video_dataset, tmp_path / "video")


def truncate(path: Path, keep: int | None = None) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2 if keep is None else keep])


def shift_from_timestamp(root: Path, key: str, episode: int, seconds: float) -> None:
    path = root / EPISODES
    table = pq.read_table(path)
    name = f"videos/{key}/from_timestamp"
    values = table.column(name).to_pylist()
    row = table.column("episode_index").to_pylist().index(episode)
    values[row] += seconds
    table = table.set_column(table.column_names.index(name), name, pa.array(values, pa.float64()))
    pq.write_table(table, path)


def damage_data_page(root: Path, row_group: int) -> None:
    """Overwrite one data page of the reference data file (episode ``row_group``'s observation.state);
    the footer stays intact, so only reading that row group finds it."""
    path = root / REF_DATA
    metadata = pq.ParquetFile(path).metadata
    names = [metadata.row_group(row_group).column(i).path_in_schema for i in range(metadata.num_columns)]
    chunk = metadata.row_group(row_group).column(names.index("observation.state.list.element"))
    data = bytearray(path.read_bytes())
    start, stop = chunk.data_page_offset + 20, chunk.data_page_offset + chunk.total_compressed_size - 5
    data[start:stop] = b"\xab" * (stop - start)
    path.write_bytes(bytes(data))


def first_and_last(meta: DatasetMeta, episode: int, key: str = REF_CAM) -> VideoQuery:
    """The query check_dataset decodes for ``episode``: its first and last frame of camera ``key``."""
    ref = meta.episode(episode)
    segment = ref.video(key)
    nominal = np.array([0.0, (ref.length - 1) / meta.fps])  # the reference writes timestamp = frame / fps
    return VideoQuery(key, meta.url(segment.path), episode, segment.from_timestamp + nominal)


def videos_by_file(root: Path) -> dict[str, list[int]]:
    """Relative mp4 path -> the episodes whose frames it holds, from the dataset's own metadata."""
    out: dict[str, list[int]] = {}
    for ep in open_dataset(root).episodes:
        for segment in ep.videos:
            out.setdefault(segment.path, []).append(ep.episode_index)
    return out


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(["check", *argv, "--quiet"])
    return code, capsys.readouterr().out


def problem_files(report: CheckReport) -> list[tuple[str, int | None]]:
    return [(p.file, p.episode) for p in report.problems]


# ---- valid datasets --------------------------------------------------------------------------------


@pytest.mark.slow
def test_reference_fixture_is_ok_as_a_subprocess() -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    result = subprocess.run(
        [sys.executable, "-m", "streamnodes", "check", str(REF_ROOT)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "6 episodes, 237 frames, fps 10, cameras: observation.images.cam" in out
    assert "data files: 1 checked" in out
    assert "6 episodes, 237 rows read (timestamp, index)" in out
    assert "video files: 1 checked, 12 frames decoded" in out
    assert out.rstrip().endswith("OK: no problems found.")
    # The `streamnodes` console script is the same function.
    (script,) = entry_points(group="console_scripts", name="streamnodes")
    assert script.load() is main


def test_generated_two_camera_dataset_is_ok(video_dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    meta = open_dataset(video_dataset)
    data_files = {ep.data_path for ep in meta.episodes}
    video_files = {seg.path for ep in meta.episodes for seg in ep.videos}
    assert len(video_files) > 2  # several mp4s, some holding several episodes
    report = check_dataset(video_dataset, progress=False)
    assert report.ok, report.format()
    assert (report.episodes, report.frames) == (5, 54)
    assert (report.data_files, report.video_files) == (len(data_files), len(video_files))
    assert report.cameras == (FRONT, WRIST)
    assert report.frames_decoded == 5 * 2 * 2  # first and last frame, every episode, both cameras
    assert report.rows_read == 54

    code, out = run(capsys, str(video_dataset), "--read-rows")
    assert code == 0
    assert "5 episodes, 54 rows read (all columns)" in out
    assert f"video files: {len(video_files)} checked, 20 frames decoded" in out
    assert "OK: no problems found." in out


# ---- damaged datasets ------------------------------------------------------------------------------


def test_truncated_mp4_with_header_first_names_each_episode_past_the_cut(
    ref_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """LeRobot's mp4 has its index (moov) first: half a file still opens, the later frames are gone."""
    truncate(ref_copy / REF_VIDEO)
    report = check_dataset(ref_copy, progress=False)
    assert problem_files(report) == [(REF_VIDEO, 2), (REF_VIDEO, 3), (REF_VIDEO, 4), (REF_VIDEO, 5)]
    for problem in report.problems:
        assert "truncated or corrupt" in problem.message and "re-download" in problem.message
    assert report.frames_decoded == 4  # episodes 0 and 1 decode fine

    code, out = run(capsys, str(ref_copy))
    assert code == 1
    assert f"- {REF_VIDEO}\n    episode 2: camera observation.images.cam: decoding frames [55, 114]" in out
    assert out.rstrip().endswith("FAILED: 4 problems.")


def test_truncated_and_missing_mp4_are_both_reported(
    video_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    users = videos_by_file(video_copy)
    front = max((f for f in users if FRONT in f), key=lambda f: len(users[f]))  # most episodes
    wrist = min((f for f in users if WRIST in f), key=lambda f: len(users[f]))
    truncate(video_copy / front)
    (video_copy / wrist).unlink()
    report = check_dataset(video_copy, progress=False)
    assert {p.file for p in report.problems} == {front, wrist}
    for problem in report.problems:
        if problem.file == front:  # one problem for the file, or one per episode past the cut
            assert "truncated or corrupt" in problem.message and "re-download it" in problem.message
            assert problem.episode is None or problem.episode in users[front]
    (missing,) = [p for p in report.problems if p.file == wrist]
    assert missing.episode is None and "video file not found" in missing.message
    assert f"Episodes using this file: {_ranges(users[wrist])}." in missing.message

    code, out = run(capsys, str(video_copy))
    assert code == 1
    assert f"- {front}\n" in out and f"- {wrist}\n" in out
    assert " problems in 2 files:" in out


def test_corrupt_parquet_footer(video_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    meta = open_dataset(video_copy)
    data = meta.episodes[0].data_path
    in_file = sum(ep.data_path == data for ep in meta.episodes)
    truncate(video_copy / data, keep=(video_copy / data).stat().st_size - 10)
    report = check_dataset(video_copy, progress=False)
    assert problem_files(report) == [(data, None)]
    assert "corrupt or truncated footer" in report.problems[0].message
    assert "Re-download or re-write it" in report.problems[0].message
    assert (report.episodes_not_read, report.episodes_read) == (in_file, 5 - in_file)
    assert report.frames_decoded == 20  # videos are still checked, at nominal timestamps for that file

    code, out = run(capsys, str(video_copy))
    assert code == 1 and f"- {data}\n    not a readable parquet file" in out
    assert "not read, their data file has a problem" in out


def test_merged_row_groups(ref_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = ref_copy / REF_DATA
    pq.write_table(pq.read_table(path), path)  # one row group for all six episodes
    assert pq.ParquetFile(path).metadata.num_row_groups == 1
    report = check_dataset(ref_copy, progress=False)
    assert problem_files(report) == [(REF_DATA, None)]
    message = report.problems[0].message
    assert "6 episodes (index, length) [(0, 20), (1, 35)" in message
    assert "one row group per episode" in message and "rewrite_row_groups" in message
    assert report.frames_decoded == 12  # the mp4 is fine and still checked

    code, out = run(capsys, str(ref_copy), "--no-decode")
    assert code == 1 and "rewrite_row_groups" in out


def test_from_timestamp_shifted_by_half_a_frame(ref_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shift_from_timestamp(ref_copy, "observation.images.cam", episode=3, seconds=0.05)  # fps 10: half a frame
    report = check_dataset(ref_copy, progress=False)
    assert problem_files(report) == [(REF_VIDEO, 3)]
    message = report.problems[0].message
    # episode 3 is [11.5, 14.1] s in the mp4; asked for 11.55 and 14.15, a frame is 0.05 s away.
    assert "camera observation.images.cam: requested timestamps [11.55, 14.15] s" in message
    assert "tolerance_s=0.0001" in message and "check meta/episodes" in message  # decode_query's remedy

    code, out = run(capsys, str(ref_copy))
    assert code == 1 and "episode 3: camera observation.images.cam: requested timestamps" in out
    # A tolerance wider than the shift accepts it.
    code, out = run(capsys, str(ref_copy), "--tolerance-s", "0.06")
    assert code == 0, out


def test_several_problems_in_data_and_metadata_at_once(ref_copy: Path) -> None:
    """A damaged data file, a shifted episode and a truncated video: all three are found in one run."""
    pq.write_table(pq.read_table(ref_copy / REF_DATA), ref_copy / REF_DATA)
    shift_from_timestamp(ref_copy, "observation.images.cam", episode=0, seconds=0.05)
    truncate(ref_copy / REF_VIDEO, keep=(ref_copy / REF_VIDEO).stat().st_size * 3 // 4)
    report = check_dataset(ref_copy, progress=False)
    files = problem_files(report)
    assert files[0] == (REF_DATA, None)
    assert (REF_VIDEO, 0) in files and (REF_VIDEO, 5) in files
    assert "beyond tolerance_s" in report.problems[1].message
    assert "truncated or corrupt" in report.problems[-1].message


@pytest.mark.parametrize("damage", ["wrong_version", "missing_info"])
def test_unreadable_metadata_is_the_one_problem(
    ref_copy: Path, capsys: pytest.CaptureFixture[str], damage: str
) -> None:
    info = ref_copy / "meta" / "info.json"
    if damage == "wrong_version":
        info.write_text(json.dumps({**json.loads(info.read_text()), "codebase_version": "v2.1"}))
        expected = "codebase_version is 'v2.1'"
    else:
        info.unlink()
        expected = "missing. A LeRobot v3.0 dataset root holds meta/info.json"
    (ref_copy / REF_VIDEO).unlink()  # not reached: without metadata there is nothing to check it against
    report = check_dataset(ref_copy, progress=False)
    assert report.problems == [Problem("meta/info.json", None, report.problems[0].message)]
    assert expected in report.problems[0].message
    assert not report.metadata_ok

    code, out = run(capsys, str(ref_copy))
    assert code == 1
    assert out.splitlines()[1:] == [
        "",
        "1 problem in 1 file:",
        "- meta/info.json",
        f"    {report.problems[0].message}",
        "FAILED: 1 problem.",
    ]
    if damage == "wrong_version":
        assert "convert_dataset_v21_to_v30" in out


# ---- options ---------------------------------------------------------------------------------------


def test_no_decode_skips_videos(ref_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (ref_copy / REF_VIDEO).unlink()
    report = check_dataset(ref_copy, decode=False, progress=False)
    assert report.ok and report.frames_decoded == 0 and report.episodes_read == 0
    code, out = run(capsys, str(ref_copy), "--no-decode")
    assert code == 0
    assert "video files: 1 not checked (--no-decode)" in out and "rows read" not in out
    code, out = run(capsys, str(ref_copy), "--no-decode", "--read-rows")
    assert code == 0 and "6 episodes, 237 rows read (all columns)" in out
    assert run(capsys, str(ref_copy))[0] == 1  # decoding finds the missing mp4


def test_read_rows_finds_a_damaged_data_page(ref_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The footer is intact, so only reading the row group finds the damage."""
    damage_data_page(ref_copy, row_group=3)  # episode 3

    assert check_dataset(ref_copy, progress=False).ok  # timestamp and index are other column chunks
    report = check_dataset(ref_copy, read_rows=True, progress=False)
    assert problem_files(report) == [(REF_DATA, 3)]
    assert report.problems[0].message.startswith("row group 3 cannot be read (")
    assert "The file is damaged; re-download or re-write it." in report.problems[0].message
    assert (report.episodes_read, report.frames_decoded) == (5, 12)
    code, out = run(capsys, str(ref_copy), "--read-rows")
    assert code == 1 and "    episode 3: row group 3 cannot be read" in out


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert main(["check"]) == 2
    assert main(["check", str(REF_ROOT), "--tolerance-s", "-1"]) == 2
    assert main(["nonsense", str(REF_ROOT)]) == 2
    assert "must be >= 0 seconds" in capsys.readouterr().err
    with pytest.raises(ValueError, match="tolerance_s"):
        check_dataset(REF_ROOT, tolerance_s=-1)


def test_report_shows_at_most_five_problems_per_file() -> None:
    report = CheckReport(root="ds", problems=[Problem("videos/a.mp4", i, "cannot decode") for i in range(8)])
    text = report.format()
    assert text.count("cannot decode") == 5
    assert "  ... and 3 more in this file (episodes 5-7)" in text
    assert text.endswith("FAILED: 8 problems.")
    assert _ranges([7, 0, 1, 2, 5]) == "0-2, 5, 7"


# ---- structured errors: the facts check and EpisodeGuard read are attributes ------------------------


def test_truncated_mp4_error_names_file_episode_and_camera_as_attributes(ref_copy: Path) -> None:
    truncate(ref_copy / REF_VIDEO)
    meta = open_dataset(ref_copy, check_files=False)  # open_dataset's own check would stop at the cut file
    with pytest.raises(VideoDecodeError, match=r"\(episode 3, camera observation.images.cam\): decoding frames") as info:
        decode_query(DecoderCache(), first_and_last(meta, 3))
    error = info.value
    assert (error.path, error.episode_index, error.camera) == (meta.url(REF_VIDEO), 3, REF_CAM)
    assert error.detail.startswith("decoding frames [115, 141] for timestamps [11.5, 14.1] s failed (")
    assert "truncated or corrupt" in error.detail and meta.url(REF_VIDEO) not in error.detail
    # DataLoader workers and StreamLoader states pickle errors: the attributes travel with them.
    copy = pickle.loads(pickle.dumps(error))
    assert (type(copy), str(copy)) == (VideoDecodeError, str(error))
    assert (copy.path, copy.episode_index, copy.camera) == (error.path, 3, REF_CAM)


def test_missing_mp4_open_error_gets_the_camera_from_decode_query(ref_copy: Path) -> None:
    meta = open_dataset(ref_copy)
    (ref_copy / REF_VIDEO).unlink()
    with pytest.raises(VideoDecodeError, match=r"file-000.mp4 \(episode 2\): video file not found") as info:
        decode_query(DecoderCache(), first_and_last(meta, 2))
    error = info.value
    assert (error.path, error.episode_index, error.camera) == (meta.url(REF_VIDEO), 2, REF_CAM)
    assert error.detail.startswith("video file not found. Check the dataset root")


def test_damaged_rows_and_metadata_errors_carry_path_and_episode(ref_copy: Path) -> None:
    damage_data_page(ref_copy, row_group=3)
    meta = open_dataset(ref_copy)
    with pytest.raises(DatasetFormatError, match=r"file-000.parquet: episode 3 \(row group 3\) cannot be read") as info:
        read_episode_columns(meta, meta.episode(3), meta.data_keys)
    error = info.value
    assert (error.path, error.episode_index, error.camera) == (meta.url(REF_DATA), 3, None)
    assert error.detail.startswith("row group 3 cannot be read (")

    (ref_copy / "meta" / "info.json").unlink()
    with pytest.raises(DatasetFormatError, match="missing. A LeRobot v3.0 dataset root") as info:
        open_dataset(ref_copy)
    assert (info.value.path, info.value.episode_index) == (str(ref_copy / "meta" / "info.json"), None)


def test_episode_guard_skips_by_the_error_attribute_of_a_damaged_row_group(ref_copy: Path) -> None:
    """EpisodeBatcher's read error reaches EpisodeGuard with its episode_index: the guard skips episode 3."""
    damage_data_page(ref_copy, row_group=3)
    meta = open_dataset(ref_copy)
    source = ShardSource(meta, seed=0, shuffle=False, rank=0, world_size=1, worker_id=0, num_workers=1)
    guard = EpisodeGuard(EpisodeBatcher(source, meta), meta, on_error="skip")
    guard.reset()
    assert [episode.episode_index for episode in guard] == [0, 1, 2, 4, 5]
    ((episode, reason),) = guard.skipped
    assert episode == 3 and reason.startswith("DatasetFormatError: ") and "episode 3 (row group 3) cannot be read" in reason


def test_with_context_fills_only_unknown_attributes() -> None:
    error = DatasetFormatError("data/x.parquet: unreadable.", path="data/x.parquet")
    assert error.with_context(path="other", episode_index=7, camera="cam") is error  # for `raise e.with_context(...)`
    assert (error.path, error.episode_index, error.camera) == ("data/x.parquet", 7, "cam")
    error.with_context(episode_index=8)
    assert error.episode_index == 7  # the raiser's facts win
    bare = StreamNodesError("no facts")
    assert (bare.path, bare.episode_index, bare.camera, bare.detail) == (None, None, None, "no facts")


def test_short_text_is_the_one_line_quote_of_an_error() -> None:
    torchcodec = RuntimeError(
        "SingleStreamDecoder, /__w/torchcodec/src/SingleStreamDecoder.cpp:52, Could not open\n   input file."
        " This should never happen. Please report a bug to https://github.com/pytorch/torchcodec/issues."
    )
    assert short_text(torchcodec) == "Could not open input file."
    cut = short_text("word " * 100, limit=20)
    assert len(cut) == 20 and cut.endswith("...") and cut.startswith("word word")
    assert short_text("x" * 400, limit=None) == "x" * 400
    assert short_text("x" * 400) == "x" * 297 + "..."


def test_fs_helpers_tell_local_remote_and_http_apart(tmp_path: Path) -> None:
    local, root = url_to_fs(f"{tmp_path}/")
    assert root == str(tmp_path) and fs_is_local(local) and not fs_is_remote(local) and not fs_is_http(local)
    assert url_to_fs("/")[1] == "/"
    memory = fsspec.filesystem("memory")
    assert fs_is_remote(memory) and not fs_is_http(memory)
    http = fsspec.filesystem("http")
    assert fs_is_remote(http) and fs_is_http(http)
    assert is_url("https://host/ds/a.mp4") and not is_url(str(tmp_path / "a.mp4"))
    assert join(root, "meta/info.json") == f"{tmp_path}/meta/info.json"
    assert relative_to(root, f"{tmp_path}/meta/info.json") == "meta/info.json"
    assert relative_to(root, f"{tmp_path}x/meta/info.json") is None
