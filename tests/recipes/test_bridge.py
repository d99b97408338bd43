"""The IterableDataset bridge refuses states that do not belong to its consumer, with a StateError."""

from __future__ import annotations

import re

import pytest

from streamnodes import StateError, build_loader


def test_state_of_another_or_no_consumer_is_refused(video_dataset) -> None:
    dataset = build_loader(video_dataset, batch_size=None).dataset
    iter(dataset)
    state = dataset.state_dict()
    for consumer in ([0, 1, 0, 2], None):  # another worker count, and a state without the key
        dataset.load_state_dict({**state, "consumer": consumer})
        expected = f"consumer [rank, world_size, worker, num_workers] = {consumer}; it is being restored into [0, 1, 0, 1]"
        with pytest.raises(StateError, match=re.escape(expected)):
            iter(dataset)
