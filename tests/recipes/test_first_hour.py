"""Issue-13 habits that need no process launch: dtype strings, bad batch sizes, len(loader), tqdm totals."""

from __future__ import annotations

import pytest
import torch

from streamnodes import ConfigError, StreamConfig, build_loader


@pytest.mark.parametrize(("given", "expected"), [("uint8", torch.uint8), ("float32", torch.float32), ("torch.uint8", torch.uint8)])
def test_image_dtype_accepts_the_strings_the_recipe_takes(video_dataset, given, expected) -> None:
    loader = build_loader(video_dataset, batch_size=4, image_dtype=given)
    assert loader.graph.config.image_dtype is expected
    batch = next(iter(loader))
    assert batch["observation.images.front"].dtype is expected


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_bad_batch_size_is_our_config_error_naming_it(video_dataset, bad) -> None:
    with pytest.raises(ConfigError, match=rf"batch_size must be an integer >= 1 or None \(unbatched samples\), got {bad!r}"):
        build_loader(video_dataset, batch_size=bad)


def test_unknown_setting_names_the_valid_ones(video_dataset) -> None:
    with pytest.raises(ConfigError, match=r"unknown setting\(s\) \['pool_size'\]; the stream settings are .*episode_pool_size"):
        build_loader(video_dataset, pool_size=3)


def test_image_dtype_of_another_kind_is_refused() -> None:
    with pytest.raises(ConfigError, match="image_dtype must be torch.float32 or torch.uint8"):
        StreamConfig(image_dtype="float16")


@pytest.mark.parametrize("num_workers", [0, 2])
def test_len_is_the_number_of_batches_and_tqdm_gets_it(video_dataset, num_workers) -> None:
    from tqdm import tqdm

    loader = build_loader(video_dataset, batch_size=4, num_workers=num_workers, episode_pool_size=2)
    bar = tqdm(loader, disable=True)
    assert bar.total == len(loader) == loader.batches_per_epoch()
    assert len(list(loader)) == len(loader)
