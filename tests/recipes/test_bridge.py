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


def test_workers_stay_quiet_when_the_main_process_hangs_up_mid_transfer(capsys) -> None:
    """A Ctrl-C in the main process while it receives a batch's file descriptor breaks the worker's
    resource-sharer pipe; that traceback is not printed. Any other exception still is."""
    import sys

    from streamnodes.recipes import bridge

    def raise_in(filename: str, error: BaseException) -> None:
        # like multiprocessing's _serve: the catching frame is in that file
        source = "import sys\ndef serve(e):\n    try:\n        raise e\n    except BaseException:\n        sys.excepthook(*sys.exc_info())\n"
        namespace: dict = {}
        exec(compile(source, filename, "exec"), namespace)
        namespace["serve"](error)

    saved = sys.excepthook
    try:
        bridge._quiet_hang_ups_while_sending()
        bridge._quiet_hang_ups_while_sending()  # idempotent: one wrapper
        raise_in("/usr/lib/python3.11/multiprocessing/resource_sharer.py", BrokenPipeError(32, "Broken pipe"))
        assert capsys.readouterr().err == ""
        raise_in("/usr/lib/python3.11/multiprocessing/resource_sharer.py", ValueError("real problem"))
        raise_in("/somewhere/else.py", BrokenPipeError(32, "Broken pipe"))
        err = capsys.readouterr().err
        assert "ValueError: real problem" in err and "BrokenPipeError" in err
    finally:
        sys.excepthook = saved
