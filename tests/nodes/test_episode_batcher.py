from __future__ import annotations

import fsspec
import numpy as np
import pytest

from streamnodes.errors import ConfigError
from streamnodes.format import open_dataset
from streamnodes.nodes.episode_batcher import EpisodeBatcher
from streamnodes.nodes.shard_source import ShardSource
from streamnodes.testing import expected_state
from tests.nodes.helpers import assert_resumes_everywhere


def _batcher(meta, **kw):
    src = ShardSource(meta, seed=0, rank=0, world_size=1, worker_id=0, num_workers=1)
    return EpisodeBatcher(src, meta, **kw)


def test_reads_each_episode_with_identity_values(tabular_dataset) -> None:
    meta = open_dataset(tabular_dataset)
    node = _batcher(meta)
    seen = []
    for ep in node:
        seen.append(ep.episode_index)
        n = ep.length
        assert set(ep.columns) == set(meta.data_keys)
        np.testing.assert_array_equal(ep.columns["frame_index"], np.arange(n))
        np.testing.assert_allclose(ep.columns["observation.state"], expected_state(ep.episode_index, np.arange(n), 6))
        assert ep.video_files == {}
    assert sorted(seen) == list(range(7)) and node.episodes_read == 7


def test_column_projection(tabular_dataset) -> None:
    meta = open_dataset(tabular_dataset)
    node = _batcher(meta, columns=["action"])
    ep = next(node)
    assert set(ep.columns) == {"action", "timestamp", "task_index", "index"}
    with pytest.raises(ConfigError, match=r"columns \['nope'\] are not data features"):
        _batcher(meta, columns=["nope"])


def test_local_and_fsspec_url_give_the_same_episodes(tabular_dataset) -> None:
    mem = fsspec.filesystem("memory")
    for path in tabular_dataset.rglob("*"):
        if path.is_file():
            mem.pipe(f"/tab/{path.relative_to(tabular_dataset)}", path.read_bytes())
    local, remote = open_dataset(tabular_dataset), open_dataset("memory://tab")
    for a, b in zip(_batcher(local), _batcher(remote), strict=True):
        assert a.ref == b.ref
        for k in a.columns:
            np.testing.assert_array_equal(a.columns[k], b.columns[k])


def test_video_locations_are_dataset_files(reference) -> None:
    from tests.conftest import REF_ROOT

    meta = open_dataset(REF_ROOT)
    ep = _batcher(meta).reader(2)
    assert ep.episode_index == 2 and ep.length == 60
    assert ep.video_files["observation.images.cam"].endswith(str(reference["observation.images.cam__video_path"][0]))


def test_state_nests_the_source_and_resumes(tabular_dataset) -> None:
    meta = open_dataset(tabular_dataset)
    node = _batcher(meta)
    node.reset(None)
    assert set(node.state_dict()) == {"source"}
    assert_resumes_everywhere(lambda: _batcher(meta))
