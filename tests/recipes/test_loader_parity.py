"""The packaged build_loader equals LeRobot's map-style reader on LeRobot's own dataset, for every key of
every frame: with and without delta_timestamps, float32 and uint8 images, locally and over HTTP.

The node-level tests compare each node with the reference; this one compares what a user gets from
the collated batches of the whole recipe.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from streamnodes import build_loader
from streamnodes.testing_http import serve_directory
from tests.conftest import REF_ROOT

CAM = "observation.images.cam"
IDENTITY = ("index", "episode_index", "frame_index", "task_index", "timestamp")
WINDOWED = ("observation.state", "action", CAM)


@contextmanager
def _source(where: str) -> Iterator[str]:
    if where == "local":
        yield str(REF_ROOT)
        return
    with serve_directory(REF_ROOT) as server:
        yield server.url


def _expected(reference: dict, deltas: bool, uint8: bool) -> dict[str, np.ndarray]:
    """What LeRobot returned per frame (rows in reference order), under the names the loader uses."""
    out = {key: reference[key] for key in (*IDENTITY, "task")}
    for key in WINDOWED:
        out[key] = reference[key] if deltas else reference[f"nodelta__{key}"]
        if deltas:
            out[f"{key}_is_pad"] = reference[f"{key}_is_pad"]
    if uint8:
        out[CAM] = np.round(out[CAM] * 255).astype(np.uint8)
    return out


# Each place sees both window modes and both image dtypes (the full product adds time, not coverage).
@pytest.mark.parametrize(
    ("where", "deltas", "uint8"),
    [("local", True, False), ("local", False, True), ("http", True, True), ("http", False, False)],
)
def test_every_key_of_every_frame_equals_lerobot(reference, reference_config, tmp_path, where, deltas, uint8) -> None:
    expected = _expected(reference, deltas, uint8)
    # LeRobot's map-style reader was asked for item query_idx; that item is the frame with global index query_idx
    row_of = {int(q): row for row, q in enumerate(reference["query_idx"])}
    assert all(int(reference["index"][row]) == q for q, row in row_of.items())
    seen = []
    with _source(where) as root:
        loader = build_loader(
            root, batch_size=16, num_workers=2 if where == "http" else 0, episode_pool_size=2, seed=1,
            delta_timestamps=reference_config["delta_timestamps"] if deltas else None,
            image_dtype=torch.uint8 if uint8 else torch.float32, cache_dir=str(tmp_path / "cache"),
        )
        for batch in loader:
            assert set(batch) == set(expected)
            rows = [row_of[int(i)] for i in batch["index"]]
            seen += rows
            assert batch["task"] == [str(reference["task"][r]) for r in rows]
            for key, values in expected.items():
                if key == "task":
                    continue
                got = batch[key]
                want = torch.from_numpy(np.ascontiguousarray(values[rows]))
                assert got.dtype == want.dtype, key
                assert torch.equal(got, want), f"{key} differs from LeRobot for global indices {batch['index'].tolist()}"
    assert sorted(seen) == list(range(len(reference["index"])))  # every frame, once
