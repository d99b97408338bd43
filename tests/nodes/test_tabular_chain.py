"""The whole tabular chain under generated configurations, and a restore in a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamnodes.format import open_dataset
from streamnodes.testing import write_dataset
from tests.nodes.helpers import chain, run_with_states

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.filterwarnings("ignore:ShardSource:UserWarning")
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lengths=st.lists(st.integers(1, 25), min_size=1, max_size=8),
    pool_size=st.integers(1, 5),
    buffer_size=st.integers(0, 8),
    consumers=st.integers(1, 4),
    seed=st.integers(0, 10_000),
    data=st.data(),
)
def test_chain_covers_every_frame_once_and_resumes(lengths, pool_size, buffer_size, consumers, seed, data) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        meta = open_dataset(write_dataset(Path(tmp) / "ds", episode_lengths=lengths, cameras=None, data_files_size_in_mb=0.004))
        seen = []
        for c in range(consumers):
            def build(c=c):
                return chain(meta, consumer=c, consumers=consumers, pool_size=pool_size, buffer_size=buffer_size, seed=seed)

            items, states = run_with_states(build())
            seen += items
            k = data.draw(st.integers(0, len(items)), label=f"resume position of consumer {c}")
            rest, _ = run_with_states(build(), states[k])
            assert rest == items[k:]
        expected = [(e.episode_index, i) for e in meta.episodes for i in range(e.length)]
        assert sorted(seen) == sorted(expected)


RESTORE_SCRIPT = """
import json, sys
from streamnodes.format import open_dataset
from tests.nodes.helpers import chain, run_with_states
root, state_file = sys.argv[1], sys.argv[2]
node = chain(open_dataset(root), pool_size=3, buffer_size=6, seed=11, delta_timestamps={"action": [0.0, 0.1, 0.2]})
items, _ = run_with_states(node, json.loads(open(state_file).read()))
print(json.dumps(items))
"""


def test_restore_in_a_fresh_process(tabular_dataset, tmp_path) -> None:
    meta = open_dataset(tabular_dataset)
    items, states = run_with_states(chain(meta, pool_size=3, buffer_size=6, seed=11, delta_timestamps={"action": [0.0, 0.1, 0.2]}))
    for k in (0, 17, len(items)):
        state_file = tmp_path / f"state{k}.json"
        state_file.write_text(json.dumps(states[k]))
        out = subprocess.run(
            [sys.executable, "-c", RESTORE_SCRIPT, str(tabular_dataset), str(state_file)],
            capture_output=True, text=True, check=True, cwd=ROOT,
        )
        assert [tuple(x) for x in json.loads(out.stdout)] == items[k:]
