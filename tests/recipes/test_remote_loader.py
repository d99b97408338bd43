"""build_loader over a real HTTP server on 127.0.0.1, with forked workers: same batches as local."""

from __future__ import annotations

import torch

from streamnodes import build_loader
from streamnodes.testing_http import serve_directory


def test_remote_loader_with_workers_equals_local(video_dataset, tmp_path) -> None:
    kwargs = {"batch_size": 4, "num_workers": 2, "episode_pool_size": 2, "seed": 3,
              "delta_timestamps": {"observation.images.front": [-0.1, 0.0], "action": [0.0, 0.1]}}
    local = list(build_loader(video_dataset, **kwargs))
    cache = tmp_path / "cache"
    with serve_directory(video_dataset) as server:
        loader = build_loader(server.url, cache_dir=str(cache), **kwargs)
        remote = list(loader)
        fetched = {path.lstrip("/") for (method, path), _ in server.requests.items() if method == "GET"}
    mp4s = {str(p.relative_to(video_dataset)) for p in video_dataset.rglob("*.mp4")}
    assert mp4s and mp4s <= fetched  # every video really came over HTTP
    assert len(remote) == len(local) == loader.batches_per_epoch()
    for a, b in zip(local, remote, strict=True):
        assert set(a) == set(b)
        for key, value in a.items():  # every key, not a chosen few
            assert torch.equal(value, b[key]) if isinstance(value, torch.Tensor) else value == b[key], key
    assert not [p for p in cache.rglob("*") if p.is_file()]  # every downloaded file was freed
