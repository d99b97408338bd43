"""Relabel: a mixture source's samples under the mixture's key names, tagged with ``dataset_index``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from torchdata.nodes import BaseNode

from streamnodes.nodes._state import require_keys, shutdown_source
from streamnodes.types import Sample

DATASET_INDEX_KEY = "dataset_index"
PAD_SUFFIX = "_is_pad"


class Relabel(BaseNode[Sample]):
    """Renames (or drops) keys of each :class:`~streamnodes.types.Sample` and adds ``dataset_index``.

    ``rename`` maps a feature of the source to its name in the output, or to ``None`` to drop it (a
    dropped camera is never decoded); the feature's ``_is_pad`` flags follow it. ``dataset_index`` is
    the source's position in the mixture, an int64 scalar in every sample. The video queries keep
    their original camera name, so decode errors name the camera as the source's files do.

    State: ``{"source": ...}``; the node is a pure function of its input.
    """

    SOURCE_KEY = "source"

    def __init__(self, source: BaseNode[Sample], *, dataset_index: int, rename: Mapping[str, str | None] | None = None) -> None:
        super().__init__()
        self.source = source
        self.dataset_index = int(dataset_index)
        self._index = np.int64(self.dataset_index)
        names: dict[str, str | None] = {}
        for old, new in (rename or {}).items():
            names[old] = new
            names[old + PAD_SUFFIX] = None if new is None else new + PAD_SUFFIX
        self._names = names

    def reset(self, initial_state: dict[str, Any] | None = None) -> None:
        super().reset(initial_state)
        if initial_state is not None:
            require_keys("Relabel", initial_state, (self.SOURCE_KEY,))
        self.source.reset(initial_state[self.SOURCE_KEY] if initial_state is not None else None)

    def next(self) -> Sample:
        sample = next(self.source)
        names = self._names
        if names:
            data = {names.get(k, k): v for k, v in sample.data.items() if names.get(k, k) is not None}
            videos = {names.get(k, k): q for k, q in sample.videos.items() if names.get(k, k) is not None}
        else:
            data, videos = dict(sample.data), sample.videos
        data[DATASET_INDEX_KEY] = self._index
        return Sample(sample.episode_index, sample.frame_index, data, videos)

    def get_state(self) -> dict[str, Any]:
        return {self.SOURCE_KEY: self.source.state_dict()}

    def shutdown(self) -> None:
        shutdown_source(self.source)

    def __repr__(self) -> str:
        return f"Relabel(dataset_index={self.dataset_index}, rename={ {k: v for k, v in self._names.items() if not k.endswith(PAD_SUFFIX)} })"
