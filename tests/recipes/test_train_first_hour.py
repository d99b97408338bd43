"""recipes/train.py in a new user's first hour: a checkpoint of another dataset, Ctrl-C, a finished run,
a changed batch size, and the defaults. End to end in fresh processes, real workers and real signals."""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest
import torch

from streamnodes import StreamConfig
from streamnodes.recipes.checkpoint import latest_checkpoint

REPO = Path(__file__).resolve().parents[2]
TRAIN = REPO / "recipes" / "train.py"
ARGS = ["--batch_size", "4", "--num_workers", "2", "--episode_pool_size", "2", "--seed", "3", "--chunk", "4"]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def _env() -> dict[str, str]:
    drop = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    return {k: v for k, v in os.environ.items() if k not in drop}


def _train_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("train_recipe", TRAIN)
    assert spec is not None and spec.loader is not None
    module = sys.modules.get(spec.name)
    if module is None:
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
        spec.loader.exec_module(module)
    return module


def run_train(dataset: Path, out: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(TRAIN), "--dataset", str(dataset), "--output_dir", str(out), *args]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=_env(), timeout=240)
    if ok:
        assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return result


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A: 4 episodes, 6-d state and action. B: 3 other episodes, 3-d state, 2-d action (another model shape)."""
    from streamnodes.testing import write_dataset

    root = tmp_path_factory.mktemp("first_hour")
    cameras = {"observation.images.cam": (64, 64)}
    a = write_dataset(root / "dataset_a", episode_lengths=[9, 14, 7, 11], fps=10, cameras=cameras)
    b = write_dataset(root / "dataset_b", episode_lengths=[12, 8, 10], fps=10, cameras=cameras, state_dim=3, action_dim=2)
    return a, b


@pytest.fixture(scope="module")
def finished_run(datasets: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Dataset A trained to its --steps 4, checkpoints at 2 and 4."""
    out = tmp_path_factory.mktemp("finished") / "run"
    result = run_train(datasets[0], out, *ARGS, "--steps", "4", "--save_every", "2")
    assert "train done: steps 0->4" in result.stdout
    assert latest_checkpoint(out, 1) == out / "step-00000004"
    return out


def test_resume_with_another_dataset_names_both_and_touches_no_model(
    datasets: tuple[Path, Path], finished_run: Path
) -> None:
    a, b = datasets
    before = sorted(p.relative_to(finished_run) for p in finished_run.rglob("*"))
    result = run_train(b, finished_run, *ARGS, "--steps", "8", "--resume_from", "auto", ok=False)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output  # one line says it all
    (error,) = errors
    assert str(a) in error and str(b) in error  # both datasets named
    assert f"--dataset {a}" in error and "another --output_dir" in error  # and what to do
    assert "Traceback" not in output and "RuntimeError" not in output and "state_dict for Policy" not in output
    # the refused resume changed nothing: A's checkpoints are all there and complete
    assert sorted(p.relative_to(finished_run) for p in finished_run.rglob("*")) == before
    assert latest_checkpoint(finished_run, 1) == finished_run / "step-00000004"


def test_resuming_a_finished_run_has_nothing_to_do(datasets: tuple[Path, Path], finished_run: Path) -> None:
    summary = (finished_run / "summary.json").read_text()
    result = run_train(datasets[0], finished_run, *ARGS, "--steps", "4", "--resume_from", "auto")
    assert "nothing to do: the run finished at step 4" in result.stdout
    assert "--steps" in result.stdout and "another --output_dir" in result.stdout
    output = result.stdout + result.stderr
    assert "train done" not in output and "nan" not in output and "frames/s" not in output  # no summary
    assert "step/s" not in output and "%|" not in output  # no progress bar
    assert (finished_run / "summary.json").read_text() == summary  # the finished run's summary stays


def _flat(log: Path) -> list[int]:
    return [int(i) for line in log.read_text().splitlines() for i in line.split()[2:]]


def test_a_changed_batch_size_resumes_the_same_sample_stream(datasets: tuple[Path, Path], tmp_path: Path) -> None:
    """batch_size is no order-shaping setting: a resume with another one is allowed, warned about, and
    continues the very samples the uninterrupted run consumes (one consumer: num_workers 0)."""
    a = datasets[0]
    args = [*ARGS[:2], "--num_workers", "0", *ARGS[4:], "--dummy"]
    ref_log, log = tmp_path / "reference.log", tmp_path / "resumed.log"
    run_train(a, tmp_path / "reference", *args, "--steps", "6", "--log_indices", str(ref_log))  # 24 samples
    run_train(a, tmp_path / "run", *args, "--steps", "3", "--save_every", "3", "--log_indices", str(log))
    args[1] = "6"  # --batch_size 4 -> 6
    result = run_train(a, tmp_path / "run", *args, "--steps", "5", "--resume_from", "auto", "--log_indices", str(log))
    assert "--batch_size 4 -> 6" in result.stderr and "WARNING" in result.stderr
    assert "dummy done: steps 3->5" in result.stdout
    resumed = _flat(log)
    assert len(resumed) == 3 * 4 + 2 * 6
    assert resumed == _flat(ref_log)


def _wait_for(condition, proc: subprocess.Popen[str], what: str, limit_s: float = 180) -> None:
    deadline = time.monotonic() + limit_s
    while not condition():
        assert proc.poll() is None, f"train.py ended (exit code {proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"no {what} after {limit_s} s"
        time.sleep(0.05)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _interrupt(command: list[str], ready, what: str, output: Path) -> tuple[int, str]:
    """Start ``command`` in its own process group, wait until ``ready()``, then Ctrl-C the group (SIGINT to
    the main process and its DataLoader workers, as a terminal does). Returns the exit code and output."""
    with output.open("w") as sink:
        # A shell runs background jobs with SIGINT ignored, and an ignored signal stays ignored across exec
        # (Python then installs no KeyboardInterrupt handler): give the child the disposition of a
        # terminal's foreground job, whatever this test process inherited.
        proc = subprocess.Popen(command, cwd=REPO, env=_env(), stdout=sink, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True, preexec_fn=_default_sigint)  # fmt: skip
        try:
            _wait_for(ready, proc, what)
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    return proc.returncode, output.read_text()


def test_ctrl_c_stops_cleanly_names_the_last_checkpoint_and_the_resume_command(
    datasets: tuple[Path, Path], tmp_path: Path
) -> None:
    a, out = datasets[0], tmp_path / "run"
    command = [sys.executable, str(TRAIN), "--dataset", str(a), "--output_dir", str(out), *ARGS,
               "--steps", "100000", "--save_every", "3"]  # fmt: skip
    ready = lambda: latest_checkpoint(out, 1) is not None  # noqa: E731
    code, output = _interrupt(command, ready, "complete checkpoint", tmp_path / "output.txt")
    assert code == 130, output
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output
    lines = [line for line in output.splitlines() if line.startswith("interrupted")]
    assert len(lines) == 1, output
    match = re.fullmatch(
        r"interrupted at step (\d+) \(epoch (\d+)\); last complete checkpoint: (\S+) \(step (\d+)\); "
        r"resume with: python (.+)",
        lines[0],
    )
    assert match is not None, lines[0]
    stopped, path, saved, resume = int(match[1]), Path(match[3]), int(match[4]), shlex.split(match[5])
    assert path == latest_checkpoint(out, 1) == out / f"step-{saved:08d}"  # the newest complete one
    assert 3 <= saved <= stopped and saved % 3 == 0
    assert resume[0] == str(TRAIN) and resume[-2:] == ["--resume_from", "auto"]
    assert resume[resume.index("--output_dir") + 1] == str(out)

    # the printed command resumes (with fewer --steps, so it ends): from that checkpoint, on to the end
    result = subprocess.run([sys.executable, *resume, "--steps", str(saved + 2)], capture_output=True, text=True,
                            cwd=REPO, env=_env(), timeout=240)  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    assert f"resumed from {path} at step {saved}" in result.stderr
    assert f"train done: steps {saved}->{saved + 2}" in result.stdout


def test_ctrl_c_before_the_first_checkpoint_says_there_is_none(datasets: tuple[Path, Path], tmp_path: Path) -> None:
    a, out, log = datasets[0], tmp_path / "run", tmp_path / "idx.log"
    command = [sys.executable, str(TRAIN), "--dataset", str(a), "--output_dir", str(out), *ARGS, "--dummy",
               "--steps", "100000", "--save_every", "100000", "--log_indices", str(log)]  # fmt: skip
    ready = lambda: log.exists() and log.stat().st_size > 0  # noqa: E731
    code, output = _interrupt(command, ready, "logged step", tmp_path / "output.txt")
    assert code == 130, output
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if line.startswith("interrupted")]
    assert len(lines) == 1, output
    assert re.match(r"interrupted at step \d+ \(epoch \d+\); no complete checkpoint in \S+ yet", lines[0]), lines[0]
    assert lines[0].endswith("--resume_from auto") and latest_checkpoint(out, 1) is None


def test_a_ctrl_c_that_cpython_swallowed_still_stops_the_next_step_quietly() -> None:
    """A Ctrl-C landing while a DataLoader worker is forked runs the handler inside an at-fork callback,
    where CPython drops the exception and prints it with a traceback (seen once: a run that went on after
    Ctrl-C). A finalizer drops exceptions the same way. The note stops the next step, and the dropped
    KeyboardInterrupt is not printed; other dropped exceptions still are."""
    ctrl_c = _train_module().CtrlC()
    ctrl_c.check()  # nothing pressed: no interrupt

    class Interrupted:
        def __del__(self) -> None:
            ctrl_c(signal.SIGINT, None)  # what the handler does when the signal lands in here

    class Failing:
        def __del__(self) -> None:
            raise ValueError("not a Ctrl-C")

    printed: list = []
    saved, sys.unraisablehook = sys.unraisablehook, printed.append
    try:
        with ctrl_c.installed():
            Interrupted()  # no KeyboardInterrupt reaches this line
            Failing()
    finally:
        sys.unraisablehook = saved
    assert [type(u.exc_value) for u in printed] == [ValueError]
    with pytest.raises(KeyboardInterrupt):
        ctrl_c.check()


def test_ctrl_c_handler_is_installed_only_where_python_handles_sigint() -> None:
    ctrl_c = _train_module().CtrlC()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with ctrl_c.installed():
        assert signal.getsignal(signal.SIGINT) is ctrl_c
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)  # the handler raises in this thread long before
        assert ctrl_c.pressed
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a background job: SIGINT stays ignored
    try:
        with ctrl_c.installed():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            assert not ctrl_c.pressed  # a new run does not inherit the last one's Ctrl-C
    finally:
        signal.signal(signal.SIGINT, previous)


def test_resume_command_replaces_any_resume_from() -> None:
    train = _train_module()
    for given in (["--resume_from", "runs/a/step-00000006"], ["--resume_from=auto"], ["--resume", "x"]):
        command = train.resume_command(["--dataset", "d", *given, "--steps", "9"], "auto", 1)
        assert command.startswith("python ") and command.endswith("--dataset d --steps 9 --resume_from auto")
    assert "launcher" in train.resume_command(["--dataset", "d"], "auto", 2)


def test_images_stay_uint8_by_default_and_decode_threads_reaches_the_stream(datasets: tuple[Path, Path]) -> None:
    train = _train_module()
    session = train.Session(accelerator=None, rank=0, world_size=1)
    args = train.parse_args(["--dataset", str(datasets[0]), "--num_workers", "0"])
    assert args.image_dtype == "uint8"
    _, loader = train.open_stream(args, session)
    assert loader.graph.config.image_dtype == torch.uint8
    assert loader.graph.config.decode_threads == StreamConfig().decode_threads  # not given: the default
    batch = next(iter(loader))
    assert batch["observation.images.cam"].dtype == torch.uint8
    # the policy turns them into float on the device: the same features as the float32 frames
    encoder = train.ConvEncoder()
    frames = batch["observation.images.cam"]
    assert torch.allclose(encoder(frames), encoder(frames.float() / 255.0))
    loader.shutdown()

    args = train.parse_args(["--dataset", str(datasets[0]), "--num_workers", "0", "--decode_threads", "1"])
    _, loader = train.open_stream(args, session)
    assert loader.graph.config.decode_threads == 1 != StreamConfig().decode_threads
    with pytest.raises(SystemExit):
        train.parse_args(["--dataset", "x", "--decode_threads", "-1"])
