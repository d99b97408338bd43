"""Checkpoints: atomic files, one loader state per rank, completeness markers, world-size checks."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch

from streamnodes.errors import StateError
from streamnodes.recipes import checkpoint as ckpt
from streamnodes.recipes.checkpoint import (
    atomic_save,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)


def _loader_state(rank: int, step: int) -> dict:
    # the shape of a real loader state: nested plain types only
    return {"epoch": 1, "rank": rank, "step": step, "nodes": {"pool": [[3, 4], [7, 0]], "rng": [1, 2, 3]}}


def _save_all(directory: Path, step: int, world_size: int, ranks: list[int] | None = None) -> Path:
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    path = directory
    for rank in range(world_size) if ranks is None else ranks:
        path = save_checkpoint(
            directory,
            step,
            model_state=model.state_dict() if rank == 0 else None,
            optimizer_state=optimizer.state_dict() if rank == 0 else None,
            loader_state=_loader_state(rank, step),
            rank=rank,
            world_size=world_size,
            extra={"samples": step * 4, "rng": torch.get_rng_state()},
        )
    return path


# ---------------------------------------------------------------------------------------------------
# atomic_save


def test_atomic_save_round_trip(tmp_path: Path) -> None:
    obj = {"a": [1, 2, {"b": "c"}], "t": torch.arange(5)}
    path = atomic_save(obj, tmp_path / "sub" / "x.pt")
    loaded = torch.load(path, weights_only=True)
    assert loaded["a"] == obj["a"] and torch.equal(loaded["t"], obj["t"])
    assert [p.name for p in path.parent.iterdir()] == ["x.pt"]  # no temp file left


def test_atomic_save_failure_keeps_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "state.pt"
    atomic_save({"version": 1}, path)

    real_save = torch.save

    def crash_halfway(obj, f, *args, **kwargs):  # write some bytes, then die like a killed process
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        raise KeyboardInterrupt("killed mid-save")

    monkeypatch.setattr(ckpt.torch, "save", crash_halfway)
    with pytest.raises(KeyboardInterrupt):
        atomic_save({"version": 2, "payload": list(range(1000))}, path)
    monkeypatch.undo()

    assert torch.load(path, weights_only=True) == {"version": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.pt"]  # the temp file was cleaned up


def test_stray_temp_file_of_a_killed_save_is_ignored(tmp_path: Path) -> None:
    # A SIGKILL mid-save leaves a temp file behind and no marker: the checkpoint is not complete.
    good = _save_all(tmp_path, 10, world_size=1)
    half = ckpt.step_dir(tmp_path, 20)
    half.mkdir()
    (half / ".loader-rank0.pt.abc123.tmp").write_bytes(b"\x80\x02half a pickle")
    (good / ".model.pt.xyz.tmp").write_bytes(b"garbage")  # also a stray one inside a complete checkpoint

    assert latest_checkpoint(tmp_path, world_size=1) == good
    loaded = load_checkpoint(good, rank=0, world_size=1)
    assert loaded["step"] == 10 and loaded["model"] is not None
    with pytest.raises(StateError, match="incomplete"):
        load_checkpoint(half, rank=0)


# ---------------------------------------------------------------------------------------------------
# save / load / latest


def test_layout_and_round_trip(tmp_path: Path) -> None:
    path = _save_all(tmp_path, 500, world_size=2)
    assert path == tmp_path / "step-00000500"
    assert sorted(p.name for p in path.iterdir()) == [
        "complete-rank0",
        "complete-rank1",
        "loader-rank0.pt",
        "loader-rank1.pt",
        "model.pt",
        "optimizer.pt",
    ]
    for rank in range(2):
        loaded = load_checkpoint(path, rank, world_size=2)
        assert loaded["step"] == 500 and loaded["world_size"] == 2
        assert loaded["loader"] == _loader_state(rank, 500)
        assert loaded["extra"]["samples"] == 2000
        assert loaded["extra"]["rng"].dtype == torch.uint8  # tensors survive weights_only loading
        assert set(loaded["model"]) == {"weight", "bias"}
        assert "state" in loaded["optimizer"]


def test_dummy_checkpoint_has_no_model(tmp_path: Path) -> None:
    path = save_checkpoint(
        tmp_path, 3, model_state=None, optimizer_state=None, loader_state={"x": 1}, rank=0, world_size=1
    )
    assert not (path / "model.pt").exists()
    loaded = load_checkpoint(path, 0)
    assert loaded["model"] is None and loaded["optimizer"] is None and loaded["loader"] == {"x": 1}


def test_latest_picks_complete_checkpoints_only(tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path, world_size=2) is None
    assert latest_checkpoint(tmp_path / "missing", world_size=2) is None
    _save_all(tmp_path, 100, world_size=2)
    complete = _save_all(tmp_path, 200, world_size=2)
    _save_all(tmp_path, 300, world_size=2, ranks=[1])  # rank 0 killed before it finished
    _save_all(tmp_path, 400, world_size=2, ranks=[0])  # rank 1 killed before it finished
    (tmp_path / "step-00000500").mkdir()  # killed before anything was written
    (tmp_path / "notes").mkdir()  # unrelated directories are ignored
    assert [p.name for p in list_checkpoints(tmp_path)][-1] == "step-00000500"
    assert latest_checkpoint(tmp_path, world_size=2) == complete


def test_resaving_a_step_withdraws_the_marker_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _save_all(tmp_path, 7, world_size=1)
    assert latest_checkpoint(tmp_path, 1) == path

    def die(obj, f, *args, **kwargs):
        raise KeyboardInterrupt("killed while saving the same step again")

    monkeypatch.setattr(ckpt.torch, "save", die)
    with pytest.raises(KeyboardInterrupt):
        _save_all(tmp_path, 7, world_size=1)
    monkeypatch.undo()
    assert latest_checkpoint(tmp_path, 1) is None  # the half-rewritten checkpoint no longer counts


def test_another_world_size_loads_every_ranks_loader_state(tmp_path: Path) -> None:
    path = _save_all(tmp_path, 50, world_size=2)
    assert latest_checkpoint(tmp_path, world_size=1) == path  # found whatever world size wrote it
    for rank in range(4):  # a run of 4 ranks: each gets both saved loader states, in rank order
        loaded = load_checkpoint(path, rank=rank, world_size=4)
        assert loaded["loader"] == [_loader_state(0, 50), _loader_state(1, 50)] and loaded["world_size"] == 2
    assert load_checkpoint(path, rank=0, world_size=1)["loader"] == [_loader_state(0, 50), _loader_state(1, 50)]
    with pytest.raises(StateError, match="no loader state for rank 3.*world_size= to load every rank's state"):
        load_checkpoint(path, rank=3)
    with pytest.raises(StateError, match="does not exist"):
        load_checkpoint(tmp_path / "step-00000099", rank=0)


def test_loaded_files_are_weights_only(tmp_path: Path) -> None:
    import numpy as np

    # a numpy scalar in a loader state would break weights_only loading: it must fail loudly
    save_checkpoint(
        tmp_path, 1, model_state=None, optimizer_state=None, loader_state={"n": np.int64(3)}, rank=0, world_size=1
    )
    with pytest.raises(StateError, match=r"loader-rank0.pt: cannot be loaded with torch.load\(weights_only=True\).*"
                       r"no numpy scalars\); save it again"):
        load_checkpoint(tmp_path / "step-00000001", 0)


def test_checkpoint_format_mismatch(tmp_path: Path) -> None:
    path = _save_all(tmp_path, 8, world_size=1)
    state = torch.load(path / "loader-rank0.pt", weights_only=True)
    atomic_save({**state, "format": 0}, path / "loader-rank0.pt")  # written by another streamnodes version
    with pytest.raises(StateError, match=r"step-00000008/loader-rank0.pt has checkpoint format 0; this version of "
                       r"streamnodes reads format 1. Resume with the streamnodes version that wrote it, or start fresh"):
        load_checkpoint(path, rank=0)


def test_checkpoint_assembled_from_different_runs(tmp_path: Path) -> None:
    path = _save_all(tmp_path, 9, world_size=2)
    (path / "loader-rank1.pt").write_bytes((path / "loader-rank0.pt").read_bytes())  # rank 0's file copied over
    assert load_checkpoint(path, rank=0)["loader"] == _loader_state(0, 9)
    with pytest.raises(StateError, match=r"step-00000009/loader-rank1.pt says rank 0 of 2, expected rank 1 of 2: the "
                       r"checkpoint directory was assembled from different runs. Resume from a checkpoint written by one run"):
        load_checkpoint(path, rank=1)


def test_prune_keeps_newest_complete(tmp_path: Path) -> None:
    for step in (10, 20, 30, 40):
        _save_all(tmp_path, step, world_size=1)
    _save_all(tmp_path, 5, world_size=2, ranks=[1])  # incomplete: left alone
    removed = prune_checkpoints(tmp_path, keep_last=2)
    assert [p.name for p in removed] == ["step-00000010", "step-00000020"]
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000005", "step-00000030", "step-00000040"]
    assert prune_checkpoints(tmp_path, keep_last=0) == []


def test_resume_withdraws_markers_of_the_rolled_back_future(tmp_path: Path) -> None:
    """The interleaving a SIGKILL test produced: rank 0 saved step 6 in a run killed before rank 1 did;
    the restart resumed from 3 and its rank 1 saved step 6 too. Without withdrawal the two markers
    would make step 6 "complete", stitched from two incarnations."""
    def save(step: int, rank: int) -> None:
        ckpt.save_checkpoint(tmp_path, step, model_state=None, optimizer_state=None,
                             loader_state={"rank": rank, "step": step}, rank=rank, world_size=2)

    for rank in (0, 1):
        save(3, rank)
    save(6, 0)  # first incarnation: rank 0 only, then killed
    assert latest_checkpoint(tmp_path, 2).name == "step-00000003"
    # restart from 3: every rank withdraws its markers after 3 before anyone saves
    assert ckpt.withdraw_after(tmp_path, 3, rank=0) == [tmp_path / "step-00000006"]
    assert ckpt.withdraw_after(tmp_path, 3, rank=1) == []
    save(6, 1)  # second incarnation: rank 1 saves 6, rank 0 is killed before it does
    assert latest_checkpoint(tmp_path, 2).name == "step-00000003"  # not the stitched step 6
    save(6, 0)
    assert latest_checkpoint(tmp_path, 2).name == "step-00000006"  # both ranks of one incarnation
