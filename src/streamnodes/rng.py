"""Seeds and random generators derived from (seed, epoch, rank, worker, salt), with plain-type state.

Everything random in streamnodes comes from here so that order is a pure function of the
configuration (seed, epoch, consumer) and generator state can sit in a JSON/``torch.load(weights_only=True)``
friendly checkpoint (Python ints only, no numpy scalars).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np


def _part_to_int(part: int | str) -> int:
    if isinstance(part, str):
        return int.from_bytes(hashlib.blake2b(part.encode(), digest_size=8).digest(), "little")
    if isinstance(part, (bool, np.bool_)) or not isinstance(part, (int, np.integer)):
        raise TypeError(f"seed parts must be ints or strings, got {part!r}")
    return int(part) & 0xFFFF_FFFF_FFFF_FFFF


def derive_seed(seed: int, *parts: int | str) -> int:
    """A 64-bit seed that depends on ``seed`` and every part (order matters); stable across processes."""
    entropy = [_part_to_int(seed), *(_part_to_int(p) for p in parts)]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0])


def make_rng(seed: int, *parts: int | str) -> np.random.Generator:
    """A PCG64 generator seeded by :func:`derive_seed`."""
    return np.random.Generator(np.random.PCG64(derive_seed(seed, *parts)))


def rng_state(rng: np.random.Generator) -> dict[str, Any]:
    """The generator's state as plain Python types (safe for JSON and ``weights_only`` loads)."""
    return _plain(rng.bit_generator.state)


def rng_from_state(state: dict[str, Any]) -> np.random.Generator:
    """Rebuild a generator saved with :func:`rng_state`."""
    if state.get("bit_generator") != "PCG64":
        raise ValueError(f"expected a PCG64 state, got {state.get('bit_generator')!r}")
    bitgen = np.random.PCG64()
    bitgen.state = state  # type: ignore[assignment]  # numpy checks it; its stubs want their own TypedDict
    return np.random.Generator(bitgen)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.integer):
        return int(value)
    return value


def weighted_choice(weights: Sequence[int], u: int) -> int:
    """The slot ``i`` with ``sum(weights[:i]) <= u < sum(weights[:i+1])``: integer ``u`` in [0, sum).

    Drawing ``u`` uniformly and mapping it here picks a slot with probability proportional to its
    weight, exactly (no floating point).
    """
    acc = 0
    for i, w in enumerate(weights):
        acc += w
        if u < acc:
            return i
    raise ValueError(f"u={u} is not below the total weight {acc}")
