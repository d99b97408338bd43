"""DeltaWindow equals LeRobot's map-style reader for every frame of LeRobot's own dataset."""

from __future__ import annotations

import numpy as np
import pytest
from torchdata.nodes import IterableWrapper

from streamnodes.errors import ConfigError
from streamnodes.format import open_dataset
from streamnodes.nodes.delta_window import DeltaWindow
from tests.conftest import REF_ROOT
from tests.nodes.helpers import assert_resumes_everywhere, chain

TABULAR = ["observation.state", "action", "observation.state_is_pad", "action_is_pad", "observation.images.cam_is_pad"]
IDENTITY = {"index": np.int64, "episode_index": np.int64, "frame_index": np.int64, "task_index": np.int64, "timestamp": np.float32}


@pytest.fixture(scope="module")
def meta():
    return open_dataset(REF_ROOT)


def _rows(reference):
    return {int(i): k for k, i in enumerate(reference["index"])}


def test_windows_pads_identity_task_and_query_times_equal_lerobot(meta, reference, reference_config) -> None:
    node = chain(meta, pool_size=2, delta_timestamps=reference_config["delta_timestamps"])
    rows = _rows(reference)
    seen = set()
    for sample in node:
        k = rows[int(sample.data["index"])]
        seen.add(k)
        for key in TABULAR:
            got = sample.data[key]
            assert got.dtype == reference[key].dtype and np.array_equal(got, reference[key][k]), key
        for key, dtype in IDENTITY.items():
            assert np.asarray(sample.data[key]).shape == () and sample.data[key].dtype == dtype
            assert sample.data[key] == reference[key][k], key
        assert sample.data["task"] == reference["task"][k]
        query = sample.videos["observation.images.cam"]
        assert np.array_equal(query.timestamps, reference["observation.images.cam__query_ts"][k])
        assert query.file.endswith(str(reference["observation.images.cam__video_path"][k]))
        assert not query.single and query.episode_index == sample.episode_index
    assert len(seen) == 237


def test_without_deltas_rows_are_single_frames(meta, reference) -> None:
    rows = _rows(reference)
    for sample in chain(meta, pool_size=6):
        k = rows[int(sample.data["index"])]
        for key in ("observation.state", "action"):
            assert np.array_equal(sample.data[key], reference[f"nodelta__{key}"][k])
        assert not any(key.endswith("_is_pad") for key in sample.data)
        q = sample.videos["observation.images.cam"]
        assert q.single and np.array_equal(q.timestamps, reference["nodelta__observation.images.cam__query_ts"][k])


def test_items_never_share_memory_between_keys(meta) -> None:
    """Keys with the same offsets get their own arrays: writing into one key's window or pads (e.g. an
    in-place op on the collated tensor) never changes another key of the same or another sample."""
    same = [-0.2, -0.1, 0.0]
    deltas = {"observation.state": same, "action": same, "observation.images.cam": same}
    node = chain(meta, pool_size=2, delta_timestamps=deltas)
    samples = list(node)
    assert {s.data["frame_index"].item() for s in samples} >= {0, 1, 2, 10}  # padded and interior windows
    for sample in samples:
        arrays = [(k, v) for k, v in sample.data.items() if isinstance(v, np.ndarray) and v.ndim > 0]
        assert {k for k, _ in arrays} == {
            "observation.state", "action", "observation.state_is_pad", "action_is_pad", "observation.images.cam_is_pad"
        }
        for i, (a, x) in enumerate(arrays):
            for b, y in arrays[i + 1 :]:
                assert not np.shares_memory(x, y), f"{a} and {b} share memory in sample {sample.ref}"


def test_config_errors(meta) -> None:
    with pytest.raises(ConfigError, match="not features"):
        DeltaWindow(IterableWrapper([]), meta, delta_timestamps={"observation.velocity": [0.0]})
    with pytest.raises(ConfigError, match=r"\[0.15\], not multiples of 1/fps"):
        DeltaWindow(IterableWrapper([]), meta, delta_timestamps={"action": [0.0, 0.15]})


def test_rebuilder_rebuilds_samples_reading_each_episode_once(meta, reference_config) -> None:
    node = chain(meta, delta_timestamps=reference_config["delta_timestamps"])
    node.reset(None)
    originals = [next(node) for _ in range(20)]
    batcher = node.source.source
    before = batcher.episodes_read
    rebuilt = node.rebuilder(batcher.reader)([s.ref for s in originals])
    assert batcher.episodes_read - before == len({s.episode_index for s in originals})
    for a, b in zip(originals, rebuilt, strict=True):
        assert a.ref == b.ref
        assert np.array_equal(a.data["action"], b.data["action"])
        assert np.array_equal(a.videos["observation.images.cam"].timestamps, b.videos["observation.images.cam"].timestamps)


def test_resume_at_every_position(meta, reference_config) -> None:
    assert_resumes_everywhere(lambda: chain(meta, pool_size=2, delta_timestamps=reference_config["delta_timestamps"]), step=3)
