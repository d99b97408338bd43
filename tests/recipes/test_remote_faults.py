"""The whole loader against a real HTTP server that fails, drops and delays requests."""

from __future__ import annotations

import pytest
import torch

from streamnodes import DownloadError, build_loader
from streamnodes.testing_http import Faults, serve_directory

KW = {"batch_size": 4, "num_workers": 2, "episode_pool_size": 2, "seed": 3,
      "delta_timestamps": {"observation.images.front": [-0.1, 0.0], "action": [0.0, 0.1]}}


@pytest.fixture(scope="module")
def local_run(video_dataset):
    return list(build_loader(video_dataset, **KW))


def _same(a, b) -> None:
    assert len(a) == len(b) > 0
    for x, y in zip(a, b, strict=True):
        assert set(x) == set(y)
        for key, value in x.items():  # every key, not a chosen few
            assert torch.equal(value, y[key]) if isinstance(value, torch.Tensor) else value == y[key], key


def test_intermittent_errors_and_dropped_connections(video_dataset, local_run, tmp_path) -> None:
    faults = Faults(error_rate=0.25, drop_rate=0.15, seed=11, max_consecutive=3)
    with serve_directory(video_dataset, faults=faults) as server:
        remote = list(build_loader(server.url, cache_dir=str(tmp_path), **KW))
        injected = server.faults_injected
    _same(local_run, remote)
    assert injected.get("error", 0) > 5 and injected.get("drop", 0) > 0  # the faults really happened


def test_slow_responses(video_dataset, local_run, tmp_path) -> None:
    with serve_directory(video_dataset, faults=Faults(delay_s=0.02, delay_rate=0.5, seed=2)) as server:
        remote = list(build_loader(server.url, cache_dir=str(tmp_path), **KW))
        assert server.faults_injected.get("delay", 0) > 10
    _same(local_run, remote)


def test_permanently_failing_video_raises_with_its_url(video_dataset, tmp_path) -> None:
    bad = sorted(p.relative_to(video_dataset).as_posix() for p in video_dataset.glob("videos/*/*/*.mp4"))[0]
    with serve_directory(video_dataset, faults=Faults(fail_paths=[bad])) as server:
        with pytest.raises(DownloadError, match=rf"{server.url_of(bad)}"):
            list(build_loader(server.url, cache_dir=str(tmp_path), **KW))
        attempts = server.count(bad)
    assert 1 <= attempts <= 12  # bounded retries, not a hang


def test_permanently_failing_data_file_raises_with_its_url(video_dataset, tmp_path) -> None:
    bad = sorted(p.relative_to(video_dataset).as_posix() for p in video_dataset.glob("data/*/*.parquet"))[-1]
    with serve_directory(video_dataset, faults=Faults(fail_paths=[bad])) as server:
        with pytest.raises(DownloadError, match=rf"{server.url_of(bad)}.*still failing after 5 retries"):
            build_loader(server.url, cache_dir=str(tmp_path), **KW)
        assert server.count(bad, "HEAD") + server.count(bad) <= 12


def test_skip_policy_skips_episodes_of_a_failing_video(video_dataset, tmp_path) -> None:
    from streamnodes import open_dataset

    meta = open_dataset(video_dataset)
    bad = meta.episodes[0].video("observation.images.front").path
    hit = {e.episode_index for e in meta.episodes if e.video("observation.images.front").path == bad}
    with serve_directory(video_dataset, faults=Faults(fail_paths=[bad])) as server:
        loader = build_loader(server.url, cache_dir=str(tmp_path), on_error="skip", **{**KW, "num_workers": 0})
        seen = {e for b in loader for e in b["episode_index"].tolist()}
        skipped = {e for e, _ in loader.stats()["skipped"]}
    assert skipped == hit and not seen & hit
    assert seen | hit == {e.episode_index for e in meta.episodes}
