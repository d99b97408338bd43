"""Damaged or missing files are found when the dataset is opened, in the calling process, not by the
first batch in a worker; every such error names the file and points to `streamnodes check`. Also: no
torchdata `set_vital` warning in user scripts.

Real datasets from write_dataset (and LeRobot's own fixture), damaged on disk.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import fsspec
import pytest

from streamnodes import DatasetFormatError, build_loader, open_dataset
from streamnodes.check import check_dataset
from streamnodes.decoder_cache import open_video
from streamnodes.format.video_files import mp4_truncation, ranges, video_uses
from tests.conftest import REF_ROOT

FRONT, WRIST = "observation.images.front", "observation.images.wrist"
LENGTHS = [6, 5, 7, 4, 6]
CHECK = "Run `python -m streamnodes check {root}` for a report of every damaged file."


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    from streamnodes.testing import write_dataset

    return write_dataset(
        tmp_path_factory.mktemp("early") / "clean", episode_lengths=LENGTHS, cameras={FRONT: (32, 32), WRIST: (16, 16)},
        video_files_size_in_mb=0.001, data_files_size_in_mb=0.004,
    )


@pytest.fixture
def ds(clean, tmp_path) -> Path:
    return Path(shutil.copytree(clean, tmp_path / "ds"))


def _videos(root: Path, camera: str) -> list[Path]:
    return sorted(root.glob(f"videos/{camera}/*/*.mp4"))


def _episodes_using(root: Path, video: Path) -> list[int]:
    rel = str(video.relative_to(root))
    return sorted(e for e, _ in video_uses(open_dataset(root, check_files=False))[rel])


def _cut(path: Path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_fixture_has_several_mp4s_per_camera(clean) -> None:
    assert len(_videos(clean, FRONT)) >= 3 and len(_videos(clean, WRIST)) >= 2
    open_dataset(clean)  # a whole dataset passes the early checks
    assert list(build_loader(clean, batch_size=4))


def test_missing_mp4_fails_build_loader_naming_file_episodes_and_check(ds) -> None:
    video = _videos(ds, WRIST)[-1]
    episodes = _episodes_using(ds, video)
    video.unlink()
    with pytest.raises(DatasetFormatError) as caught:
        build_loader(ds, batch_size=4, num_workers=1)  # raised here: no worker exists yet
    error = caught.value
    text = str(error)
    assert text.startswith(f"{video}: video file missing.")
    assert f"Episodes using this file: {ranges(episodes)} (camera {WRIST})." in text
    assert text.endswith(CHECK.format(root=ds))
    assert (error.path, error.episode_index, error.camera) == (str(video), episodes[0], WRIST)
    assert "streamnodes check" not in error.detail  # `streamnodes check` reports it without the hint


def test_every_missing_mp4_is_counted_in_one_error(ds) -> None:
    gone = [_videos(ds, FRONT)[0], *_videos(ds, WRIST)]
    shutil.rmtree(ds / "videos" / WRIST)  # a whole camera directory is missing
    _videos(ds, FRONT)[0].unlink()
    with pytest.raises(DatasetFormatError, match=rf"{gone[0]}: video file missing") as caught:
        open_dataset(ds)
    rest = [str(p.relative_to(ds)) for p in gone[1:]]
    assert f"{len(rest)} more video file(s) missing: {', '.join(rest)}." in str(caught.value)


@pytest.mark.parametrize("keep", [0.5, 0.0])
def test_truncated_mp4_fails_open_dataset(ds, keep) -> None:
    video = _videos(ds, FRONT)[1]
    episodes = _episodes_using(ds, video)
    _cut(video, keep)
    with pytest.raises(DatasetFormatError) as caught:
        build_loader(ds, batch_size=4, num_workers=1)
    text = str(caught.value)
    what = "the file is empty" if keep == 0 else "box spans bytes"
    assert text.startswith(f"{video}: truncated mp4: ") and what in text
    assert f"Episodes using this file: {ranges(episodes)} (camera {FRONT})." in text
    assert text.endswith(CHECK.format(root=ds))


def test_truncated_lerobot_mp4_with_index_first_is_found_though_torchcodec_opens_it(tmp_path) -> None:
    """LeRobot writes the index (moov) first: half a file still opens, only the box walk sees the cut."""
    root = Path(shutil.copytree(REF_ROOT, tmp_path / "ref"))
    video = sorted(root.glob("videos/*/*/*.mp4"))[0]
    _cut(video, 0.5)
    open_video(str(video))  # torchcodec's header alone does not notice
    with pytest.raises(DatasetFormatError, match=rf"^{video}: truncated mp4: its 'mdat' box spans bytes \d+\.\.\d+ but the file has \d+ bytes"):
        open_dataset(root)


def test_mp4_that_is_not_a_video_fails_at_torchcodec_header(ds) -> None:
    video = _videos(ds, FRONT)[0]
    video.write_bytes(b"<!DOCTYPE html><html><body>rate limited</body></html>\n" * 20)
    with pytest.raises(DatasetFormatError, match=rf"^{video}: cannot open the video \(.*\)\. The file is truncated or corrupt"):
        open_dataset(ds)


def test_damaged_files_are_left_to_the_stream_with_on_error_skip_or_without_file_checks(ds) -> None:
    _videos(ds, FRONT)[0].unlink()
    _cut(_videos(ds, WRIST)[0], 0.5)
    open_dataset(ds, check_files=False)
    loader = build_loader(ds, batch_size=4, on_error="skip")
    list(loader)
    assert loader.stats()["skipped_episodes"] > 0


def test_missing_mp4_of_a_listable_remote_dataset(ds) -> None:
    """memory:// lists directories like hf:// and s3://: one listing per video directory finds the file."""
    video = _videos(ds, WRIST)[0]
    video.unlink()
    mem = fsspec.filesystem("memory")
    for path in ds.rglob("*"):
        if path.is_file():
            mem.pipe(f"/early_remote/{path.relative_to(ds)}", path.read_bytes())
    try:
        with pytest.raises(DatasetFormatError, match=rf"/early_remote/{video.relative_to(ds)}: video file missing") as caught:
            open_dataset("memory://early_remote")
        assert str(caught.value).endswith(CHECK.format(root="memory://early_remote"))
    finally:
        mem.rm("/early_remote", recursive=True)


def test_missing_mp4_over_http_is_left_to_the_prefetcher(ds) -> None:
    """Plain HTTP cannot list directories: open_dataset does not ask for each mp4 (documented skip)."""
    from streamnodes.testing_http import serve_directory

    video = _videos(ds, FRONT)[0]
    video.unlink()
    with serve_directory(ds) as server:
        meta = open_dataset(server.url)
        assert meta.total_episodes == len(LENGTHS)
        rel = str(video.relative_to(ds))
        assert server.count(rel) == 0 and server.count(rel, "HEAD") == 0


def test_damaged_data_file_error_points_to_check(ds) -> None:
    data_file = sorted(ds.glob("data/*/*.parquet"))[0]
    _cut(data_file, 0.9)
    with pytest.raises(DatasetFormatError, match=rf"{data_file.name}: not a readable parquet file") as caught:
        build_loader(ds, batch_size=4)
    assert str(caught.value).endswith(CHECK.format(root=ds))


def test_check_report_has_no_hint_to_run_itself(ds) -> None:
    _videos(ds, FRONT)[0].unlink()
    _cut(sorted(ds.glob("data/*/*.parquet"))[0], 0.9)
    report = check_dataset(ds, progress=False)
    assert len(report.problems) >= 2
    assert not [p for p in report.problems if "streamnodes check" in p.message]


# ---- mp4 box walk (pure) --------------------------------------------------------------------------


def _box(kind: str, payload: int) -> bytes:
    return (8 + payload).to_bytes(4, "big") + kind.encode() + b"\0" * payload


@pytest.mark.parametrize(
    ("data", "verdict"),
    [
        (_box("ftyp", 8) + _box("moov", 20) + _box("mdat", 40), None),
        (_box("ftyp", 8) + _box("mdat", 40) + _box("moov", 20), None),
        (_box("ftyp", 8) + (0).to_bytes(4, "big") + b"mdat" + b"\0" * 9, "no 'moov' box"),
        ((_box("ftyp", 8) + _box("moov", 20) + _box("mdat", 40))[:-1], "'mdat' box spans bytes 44..92 but the file has 91 bytes"),
        ((_box("ftyp", 8) + _box("mdat", 40) + _box("moov", 20))[:72], "'moov' box spans bytes 64..92 but the file has 72 bytes"),
        (_box("ftyp", 8) + _box("moov", 20), "no 'mdat' box (frame data)"),
        (_box("ftyp", 8)[:5], "no 'moov' box (index) and no 'mdat' box"),
        (b"", "the file is empty"),
        (b"<!DOCTYPE html>" * 4, None),  # not an mp4: torchcodec decides
        (_box("ftyp", 8) + (1).to_bytes(4, "big") + b"mdat" + (56).to_bytes(8, "big") + b"\0" * 40 + _box("moov", 4), None),
        (_box("ftyp", 8) + (1).to_bytes(4, "big") + b"mdat" + (57).to_bytes(8, "big") + b"\0" * 40, "'mdat' box spans bytes 16..73"),
    ],
)
def test_mp4_truncation(data, verdict) -> None:
    found = mp4_truncation(lambda offset, n: data[offset : offset + n], len(data))
    if verdict is None:
        assert found is None
    else:
        assert found is not None and verdict in found


def test_ranges() -> None:
    assert ranges([5, 0, 1, 2, 7, 8, 2]) == "0-2, 5, 7-8"
    assert ranges([3]) == "3"


# ---- no torchdata noise -------------------------------------------------------------------------


def test_build_and_iterate_with_a_worker_emits_no_set_vital_warning(clean) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # over pytest's own filters (pyproject ignores this warning)
        loader = build_loader(clean, batch_size=4, num_workers=1)
        assert list(loader)
    assert not [w for w in caught if "set_vital" in str(w.message)]


@pytest.mark.slow
def test_user_script_prints_no_set_vital_warning(clean, tmp_path) -> None:
    """A user's script with Python's default warning filters: nothing about set_vital on stderr."""
    script = textwrap.dedent(
        f"""
        from streamnodes import build_loader
        loader = build_loader({str(clean)!r}, batch_size=4, num_workers=1)
        print(sum(1 for _ in loader), "batches")
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "batches" in out.stdout
    assert "set_vital" not in out.stderr, out.stderr
