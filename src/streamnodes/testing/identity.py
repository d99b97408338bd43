"""Identity-coded content: every value :func:`~streamnodes.testing.write_dataset` writes says where it came from.

- ``observation.state[d] = 1000 * episode_index + frame_index + 0.01 * d`` (float32), see
  :func:`expected_state`; ``action = -state``, see :func:`expected_action`.
- every video frame carries its (episode, frame, camera) as a grid of 8x8 light and dark cells that
  survives AV1 and H.264 coding at any supported size: :func:`frame_identity` and
  :func:`camera_identity` read it back, :func:`identity_image` draws it.

Pure numpy; nothing here touches the disk.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from streamnodes.errors import ConfigError

# ---------------------------------------------------------------------------------------------------
# The identity code drawn into every video frame.
#
# A 32-bit word (frame_index in bits 0-13, episode_index in bits 14-27, camera_index in bits 28-31) is
# drawn as an 8x8 grid of cells spanning the whole image. Bit k sits in row k // 4 and is written
# differentially: column 2 * (k % 4) holds the bit, the next column its complement. Reading compares
# the mean of the two cells' centres, so it needs no threshold, survives brightness and contrast shifts,
# resizing and codec blur, and can tell a readable frame from something else (a weak pair means the
# image is not one of ours or is too damaged).

_GRID = 8
_FRAME_BITS = 14
_EPISODE_BITS = 14
_CAMERA_BITS = 4
_WORD_BITS = _FRAME_BITS + _EPISODE_BITS + _CAMERA_BITS  # = _GRID * _GRID // 2
MAX_EPISODES = 1 << _EPISODE_BITS
MAX_EPISODE_LENGTH = 1 << _FRAME_BITS
MAX_CAMERAS = 1 << _CAMERA_BITS
MIN_IMAGE_SIDE = 16  # 2 px cells still read back exactly after AV1 / H.264 (measured)
_ON_RGB = (255, 224, 160)  # a warm light tone and a dark brown, so the three channels differ
_OFF_RGB = (64, 32, 0)
_MIN_CONTRAST = 0.2  # weakest accepted difference between a bit cell and its complement, in [0, 1]


def _identity_words(episode_index: int, frame_indices: np.ndarray, camera_index: int) -> np.ndarray:
    return (
        (np.int64(camera_index) << (_FRAME_BITS + _EPISODE_BITS))
        | (np.int64(episode_index) << _FRAME_BITS)
        | frame_indices.astype(np.int64)
    )


def _cell_of_pixel(size: int) -> np.ndarray:
    """Grid row (or column) of every pixel row (or column) of an image side of ``size`` pixels."""
    return (np.arange(size) * _GRID) // size


def _identity_images(
    episode_index: int, frame_indices: np.ndarray, height: int, width: int, camera_index: int
) -> np.ndarray:
    """Identity frames of one episode and camera as uint8 ``[N, 3, H, W]`` (torchcodec's layout)."""
    words = _identity_words(episode_index, frame_indices, camera_index)
    bits = (words[:, None] >> np.arange(_WORD_BITS)) & 1  # [N, 32]
    n = len(frame_indices)
    cells = np.empty((n, _GRID, _GRID), dtype=np.intp)
    cells[:, :, 0::2] = bits.reshape(n, _GRID, _GRID // 2)
    cells[:, :, 1::2] = 1 - cells[:, :, 0::2]
    palette = np.array([_OFF_RGB, _ON_RGB], dtype=np.uint8).T  # [3, 2]
    small = palette[:, cells].transpose(1, 0, 2, 3)  # [N, 3, 8, 8]
    # Each cell is a block of whole pixels: repeat rows and columns by the pixels of each cell.
    rows = np.bincount(_cell_of_pixel(height), minlength=_GRID)
    cols = np.bincount(_cell_of_pixel(width), minlength=_GRID)
    return np.repeat(np.repeat(small, rows, axis=2), cols, axis=3)


def identity_image(
    episode_index: int, frame_index: int, height: int, width: int, camera_index: int = 0
) -> np.ndarray:
    """The frame :func:`write_dataset` draws for ``(episode_index, frame_index)``, uint8 ``[3, H, W]``.

    ``camera_index`` is the camera's position in the ``cameras`` mapping. Useful to build inputs for a
    node under test without going through a video file.
    """
    _check_identity_range(episode_index, frame_index, camera_index)
    return _identity_images(episode_index, np.array([frame_index]), height, width, camera_index)[0]


def _check_identity_range(episode_index: int, frame_index: int, camera_index: int) -> None:
    for name, value, limit in (
        ("episode_index", episode_index, MAX_EPISODES),
        ("frame_index", frame_index, MAX_EPISODE_LENGTH),
        ("camera_index", camera_index, MAX_CAMERAS),
    ):
        if not 0 <= value < limit:
            raise ConfigError(f"{name}={value} cannot be drawn into a test frame: it must be in [0, {limit})")


def _as_gray_hw(image: Any) -> np.ndarray:
    """One image (CHW or HWC, uint8 or float in [0, 1], numpy or torch) as float64 gray ``[H, W]``."""
    if hasattr(image, "detach"):  # a torch tensor, without importing torch here
        image = image.detach().cpu().numpy()
    array = np.asarray(image)
    if array.ndim == 3:
        if array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
            array = array.mean(axis=0, dtype=np.float64)
        elif array.shape[-1] in (1, 3):
            array = array.mean(axis=-1, dtype=np.float64)
        else:
            raise ValueError(
                f"cannot read an identity code from an image of shape {tuple(array.shape)}: "
                "expected [3, H, W] or [H, W, 3]"
            )
    elif array.ndim != 2:
        raise ValueError(
            f"cannot read an identity code from an array of shape {tuple(array.shape)}: pass one image "
            "([3, H, W], [H, W, 3] or [H, W]); for a batch or a window, call once per frame"
        )
    gray = array.astype(np.float64, copy=False)
    if np.issubdtype(np.asarray(image).dtype, np.integer):
        gray = gray / 255.0
    if min(gray.shape) < _GRID:
        raise ValueError(f"image of {gray.shape[0]}x{gray.shape[1]} px is too small to hold an identity code")
    return gray


def _read_identity_word(image: Any) -> int:
    gray = _as_gray_hw(image)
    height, width = gray.shape

    def centres(size: int) -> list[slice]:
        edges = [-(-i * size // _GRID) for i in range(_GRID + 1)]  # first pixel of each cell
        out = []
        for lo, hi in zip(edges[:-1], edges[1:], strict=True):
            quarter = (hi - lo) // 4
            out.append(slice(lo + quarter, hi - quarter))
        return out

    rows, cols = centres(height), centres(width)
    levels = np.array([[gray[r, c].mean() for c in cols] for r in rows])  # [8, 8]
    contrast = (levels[:, 0::2] - levels[:, 1::2]).reshape(-1)  # bit k at index k
    weakest = float(np.abs(contrast).min())
    if weakest < _MIN_CONTRAST:
        raise ValueError(
            f"no readable identity code in this {height}x{width} image (weakest bit contrast {weakest:.3f} "
            f"< {_MIN_CONTRAST}): it is not a frame written by streamnodes.testing.write_dataset, or it was "
            "cropped or degraded beyond recognition"
        )
    return int(sum(1 << k for k in range(_WORD_BITS) if contrast[k] > 0))


def frame_identity(image: Any) -> tuple[int, int]:
    """Read ``(episode_index, frame_index)`` back from a frame written by :func:`write_dataset`.

    Accepts one image as a numpy array or torch tensor, ``[3, H, W]`` or ``[H, W, 3]`` (or gray
    ``[H, W]``), uint8 in [0, 255] or float in [0, 1], at the written size or resized. Exact after AV1 or
    H.264 coding. Raises ``ValueError`` when the image carries no readable code (another frame source,
    a blank, a crop). A mirrored image swaps each bit with its complement and reads as another identity,
    so a test comparing identities still catches it.
    """
    word = _read_identity_word(image)
    frame_index = word & (MAX_EPISODE_LENGTH - 1)
    episode_index = (word >> _FRAME_BITS) & (MAX_EPISODES - 1)
    return episode_index, frame_index


def camera_identity(image: Any) -> int:
    """Read the camera index (position in ``write_dataset``'s ``cameras`` mapping) from a frame.

    Lets a test tell two cameras of the same size apart. Same inputs and errors as :func:`frame_identity`.
    """
    return _read_identity_word(image) >> (_FRAME_BITS + _EPISODE_BITS)


# ---------------------------------------------------------------------------------------------------
# Tabular content.


def expected_state(
    episode_index: int | np.ndarray, frame_index: int | Sequence[int] | np.ndarray, dim: int = 6
) -> np.ndarray:
    """``observation.state`` as written: ``1000 * episode + frame + 0.01 * d`` for ``d < dim``, float32.

    ``frame_index`` may be an array of N indices (``episode_index`` too, one per frame); the result is
    then ``[N, dim]``. Values are computed in float64 and rounded to float32 once, exactly as written
    (so equality checks are exact; large episode indices lose the ``0.01 * d`` part to float32 rounding).
    """
    frames = np.asarray(frame_index, dtype=np.float64)
    values = (1000.0 * episode_index + frames)[..., None] + 0.01 * np.arange(dim, dtype=np.float64)
    return values.astype(np.float32)


def expected_action(
    episode_index: int | np.ndarray, frame_index: int | Sequence[int] | np.ndarray, dim: int = 6
) -> np.ndarray:
    """``action`` as written: ``-expected_state(episode_index, frame_index, dim)``."""
    return -expected_state(episode_index, frame_index, dim)
