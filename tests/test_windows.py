from __future__ import annotations

import numpy as np
import pytest

from streamnodes.errors import ConfigError
from streamnodes.windows import delta_indices, window


def test_delta_indices_matches_lerobot_reference(reference_config) -> None:
    got = delta_indices(reference_config["delta_timestamps"], reference_config["fps"], features=reference_config["delta_timestamps"])
    for key, expected in reference_config["delta_indices"].items():
        assert got[key].tolist() == expected and got[key].dtype == np.int64


def test_off_grid_delta_is_refused_with_the_values() -> None:
    with pytest.raises(ConfigError, match=r"delta_timestamps\['action'\] has \[0.05\].*1/fps = 0.1 s.*10 fps"):
        delta_indices({"action": [0.0, 0.05, 0.1]}, 10)
    # within tolerance is accepted (float noise)
    assert delta_indices({"action": [0.1 + 5e-6]}, 10)["action"].tolist() == [1]


def test_unknown_key_and_empty_deltas() -> None:
    with pytest.raises(ConfigError, match=r"keys \['nope'\] that are not features"):
        delta_indices({"nope": [0.0]}, 10, features={"action"})
    with pytest.raises(ConfigError, match="non-empty"):
        delta_indices({"action": []}, 10)
    assert delta_indices(None, 10) == {}


def test_window_clamps_and_flags_pads() -> None:
    rows, pad = window(1, 5, np.array([-3, -1, 0, 2, 6]))
    assert rows.tolist() == [0, 0, 1, 3, 4]
    assert pad.tolist() == [True, False, False, False, True]
    rows, pad = window(0, 1, np.array([-1, 0, 1]))
    assert rows.tolist() == [0, 0, 0] and pad.tolist() == [True, False, True]
