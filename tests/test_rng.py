from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from streamnodes.rng import derive_seed, make_rng, rng_from_state, rng_state, weighted_choice


def test_derive_seed_is_stable_and_sensitive_to_every_part() -> None:
    assert derive_seed(0, 1, "pool") == derive_seed(0, 1, "pool")
    seeds = {derive_seed(0, 1, "pool"), derive_seed(1, 1, "pool"), derive_seed(0, 2, "pool"), derive_seed(0, 1, "shuffle"),
             derive_seed(0, "pool", 1)}
    assert len(seeds) == 5
    assert 0 <= derive_seed(-5, 3) < 2**64


def test_derive_seed_rejects_floats() -> None:
    with pytest.raises(TypeError):
        derive_seed(0, 1.5)  # type: ignore[arg-type]


def test_rng_state_is_plain_and_round_trips() -> None:
    rng = make_rng(3, "x")
    rng.integers(100, size=7)
    state = json.loads(json.dumps(rng_state(rng)))
    expected = rng.integers(1 << 30, size=20)
    assert np.array_equal(rng_from_state(state).integers(1 << 30, size=20), expected)
    with pytest.raises(ValueError):
        rng_from_state({"bit_generator": "MT19937"})


def test_weighted_choice_maps_integers_exactly() -> None:
    weights = [2, 0, 3, 1]
    picks = [weighted_choice(weights, u) for u in range(6)]
    assert picks == [0, 0, 2, 2, 2, 3]
    with pytest.raises(ValueError):
        weighted_choice(weights, 6)


def test_weighted_choice_is_proportional() -> None:
    rng = make_rng(0)
    weights = [1, 5, 10]
    counts = Counter(weighted_choice(weights, int(rng.integers(16))) for _ in range(16000))
    for i, w in enumerate(weights):
        assert abs(counts[i] / 16000 - w / 16) < 0.02
