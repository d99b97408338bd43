"""In a mixture, every sample of LeRobot's own dataset equals LeRobot's reference values (every key), and
every sample of a generated dataset at another fps carries its own rows and frames: batched with sources
aligned by per-source windows, unbatched with different cameras, locally and with the reference served
over HTTP (through the Prefetcher, in DataLoader workers)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from streamnodes import Source, build_loader
from streamnodes.testing import expected_action, expected_state, frame_identity, write_dataset
from tests.recipes.test_loader_parity import CAM, _expected, _source

FPS = 20  # the generated dataset's rate; the reference is at 10 fps


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    """20 fps, the reference's camera name and size (48x64) plus a second camera of another size."""
    return write_dataset(tmp_path_factory.mktemp("mixp") / "ds", episode_lengths=[9, 14, 6], fps=FPS,
                         cameras={CAM: (48, 64), "observation.images.side": (32, 32)})


def _generated_source(generated: Path, reference_config: dict, aligned: bool) -> Source:
    """The reference's windows in seconds at 20 fps: the same number of steps, each 1/20 s."""
    deltas = {key: [round(d * 10) / FPS for d in values] for key, values in reference_config["delta_timestamps"].items()}
    return Source(generated, delta_timestamps=deltas, rename={"observation.images.side": None} if aligned else None)


def _check_generated(sample: dict, lengths: list[int], indices: dict[str, list[int]]) -> None:
    episode, frame = int(sample["episode_index"]), int(sample["frame_index"])
    clamp = [min(max(frame + k, 0), lengths[episode] - 1) for k in indices["observation.state"]]
    assert torch.equal(sample["observation.state"], torch.from_numpy(expected_state(episode, clamp)))
    clamp = [min(max(frame + k, 0), lengths[episode] - 1) for k in indices["action"]]
    assert torch.equal(sample["action"], torch.from_numpy(expected_action(episode, clamp)))
    clamp = [min(max(frame + k, 0), lengths[episode] - 1) for k in indices[CAM]]
    assert [frame_identity(img) for img in sample[CAM]] == [(episode, f) for f in clamp]


@pytest.mark.parametrize(("where", "batch_size", "num_workers"), [("local", 8, 0), ("http", 8, 2), ("local", None, 2)])
def test_reference_samples_in_a_mixture_equal_lerobot(
    reference, reference_config, generated, tmp_path, where, batch_size, num_workers
) -> None:
    expected = _expected(reference, deltas=True, uint8=True)
    row_of = {int(q): row for row, q in enumerate(reference["query_idx"])}
    indices = reference_config["delta_indices"]
    lengths = [9, 14, 6]
    seen: dict[int, list[int]] = {0: [], 1: []}
    with _source(where) as root:
        loader = build_loader(
            [root, _generated_source(generated, reference_config, aligned=batch_size is not None)], weights=[0.5, 0.5],
            stop="all_exhausted", batch_size=batch_size, num_workers=num_workers, episode_pool_size=2, seed=4,
            delta_timestamps=reference_config["delta_timestamps"], image_dtype=torch.uint8, cache_dir=str(tmp_path / "cache"),
        )
        assert loader.graph.graphs[0].meta.is_remote == (where == "http")  # remote: the source's chain has its Prefetcher
        for batch in loader:
            samples = [batch] if batch_size is None else [
                {k: v[i] for k, v in batch.items()} for i in range(len(batch["index"]))
            ]
            for sample in samples:
                source, index = int(sample["dataset_index"]), int(sample["index"])
                seen[source].append(index)
                if source == 1:
                    _check_generated(sample, lengths, indices)
                    continue
                row = row_of[index]
                assert set(sample) == set(expected) | {"dataset_index"}
                assert sample["task"] == str(reference["task"][row])
                for key, values in expected.items():
                    if key != "task":
                        want = torch.from_numpy(np.array(values[row]))  # 0-d for scalars
                        assert torch.equal(sample[key], want), f"{key} of reference frame {index} differs from LeRobot"
    assert sorted(seen[0]) == list(range(len(reference["index"])))  # all_exhausted: every frame once
    assert sorted(seen[1]) == list(range(sum(lengths)))
