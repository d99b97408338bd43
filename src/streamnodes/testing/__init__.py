"""Real LeRobot v3.0 datasets with real mp4 video, written in a few seconds, for tests.

:func:`write_dataset` writes the same on-disk layout as LeRobot's own writer (``meta/info.json``,
``meta/stats.json``, ``meta/tasks.parquet``, ``meta/episodes/...``, ``data/chunk-XXX/file-XXX.parquet``
with one row group per episode, ``videos/<key>/chunk-XXX/file-XXX.mp4`` with episodes back to back),
including LeRobot's size-based file and chunk roll-over, so a test can get several episodes per file,
several files per chunk, several chunks, and video file boundaries that differ from data file
boundaries from a dataset of a few hundred frames. The layout's path templates come from
:mod:`streamnodes.format`, so the writer and the reader cannot drift apart.

Every value encodes where it came from, so a test can tell that it got the right row and the right
frame even after lossy video coding:

- ``observation.state[d] = 1000 * episode_index + frame_index + 0.01 * d`` (float32), see
  :func:`expected_state`; ``action = -state`` over ``action_dim`` dimensions, see :func:`expected_action`.
- every video frame carries its (episode, frame, camera) as a grid of 8x8 light and dark cells that
  survives AV1 and H.264 coding at any supported size: :func:`frame_identity` and
  :func:`camera_identity` read it back, :func:`identity_image` draws it.

Modules: ``identity`` (the codes), ``layout`` (file roll-over arithmetic), ``tabular`` (data parquet),
``video`` (mp4 encoding and joining), ``stats`` and ``meta`` (the ``meta/`` files), ``writer``
(:func:`write_dataset`).
"""

from streamnodes.testing.identity import (
    MAX_CAMERAS,
    MAX_EPISODE_LENGTH,
    MAX_EPISODES,
    MIN_IMAGE_SIDE,
    camera_identity,
    expected_action,
    expected_state,
    frame_identity,
    identity_image,
)
from streamnodes.testing.layout import _assign_files, _next_file  # noqa: F401 - tested directly
from streamnodes.testing.writer import DEFAULT_CAMERAS, DEFAULT_TASKS, write_dataset

__all__ = [
    "DEFAULT_CAMERAS",
    "DEFAULT_TASKS",
    "MAX_CAMERAS",
    "MAX_EPISODES",
    "MAX_EPISODE_LENGTH",
    "MIN_IMAGE_SIDE",
    "camera_identity",
    "expected_action",
    "expected_state",
    "frame_identity",
    "identity_image",
    "write_dataset",
]
