"""Hub dataset ids ("lerobot/pusht") and the error when the Hub cannot be reached.

There is no network here and nothing may leave the machine: id resolution is pure, the offline error
runs with huggingface_hub's offline mode on (no request is made), and the unreachable error points
HF_ENDPOINT at a closed port on 127.0.0.1 in a subprocess.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

import pytest

from streamnodes import ConfigError, DownloadError, open_dataset
from streamnodes.format.hub import hub_url, is_hub_id, quote_revision, resolve_root

NOWHERE = lambda path: False  # noqa: E731 - no local path exists


@pytest.mark.parametrize(
    ("root", "revision", "expected"),
    [
        ("lerobot/pusht", None, "hf://datasets/lerobot/pusht"),
        ("lerobot/pusht", "v3.0", "hf://datasets/lerobot/pusht@v3.0"),
        ("lerobot/pusht", "refs/pr/3", "hf://datasets/lerobot/pusht@refs/pr/3"),
        ("lerobot/pusht", "feature/x", "hf://datasets/lerobot/pusht@feature%2Fx"),
        ("my-org/my_data.v2", None, "hf://datasets/my-org/my_data.v2"),
        ("hf://datasets/lerobot/pusht", "v3.0", "hf://datasets/lerobot/pusht@v3.0"),
        ("hf://datasets/lerobot/pusht@v3.0", "v3.0", "hf://datasets/lerobot/pusht@v3.0"),
        ("hf://datasets/lerobot/pusht/sub", "main", "hf://datasets/lerobot/pusht@main/sub"),
        ("hf://datasets/lerobot/pusht", None, "hf://datasets/lerobot/pusht"),
        ("https://example.org/ds", None, "https://example.org/ds"),
        ("pusht", None, "pusht"),  # one part: a (missing) local path, not an id
        ("a/b/c", None, "a/b/c"),
        ("./lerobot/pusht", None, "./lerobot/pusht"),
        ("/lerobot/pusht", None, "/lerobot/pusht"),
        ("../pusht", None, "../pusht"),
    ],
)
def test_resolve_root(root, revision, expected) -> None:
    assert resolve_root(root, revision, exists=NOWHERE) == expected


def test_hub_url_spells_revisions_as_huggingface_hub_parses_them() -> None:
    parse_hf_uri = pytest.importorskip("huggingface_hub.utils").parse_hf_uri
    for revision in (None, "v3.0", "refs/pr/3", "feature/x", "a b"):
        parsed = parse_hf_uri(hub_url("lerobot/pusht", revision))
        assert (parsed.type, parsed.id, parsed.revision) == ("dataset", "lerobot/pusht", revision)
    assert quote_revision("refs/convert/parquet") == "refs/convert/parquet"


def test_existing_local_path_that_looks_like_an_id_stays_local(tmp_path, monkeypatch) -> None:
    (tmp_path / "lerobot" / "pusht").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert is_hub_id("lerobot/pusht")
    assert resolve_root("lerobot/pusht") == "lerobot/pusht"  # the real os.path.exists
    assert resolve_root("lerobot/other") == "hf://datasets/lerobot/other"
    with pytest.raises(ConfigError, match=r"lerobot/pusht is a local directory"):
        resolve_root("lerobot/pusht", "v3.0")


@pytest.mark.parametrize(
    ("root", "revision", "message"),
    [
        ("https://example.org/ds", "v3.0", r"Hugging Face Hub datasets only"),
        ("hf://datasets/lerobot/pusht@v2.1", "v3.0", r"names revision 'v2.1', and revision='v3.0'"),
        ("hf://lerobot/pusht", "v3.0", r"not a Hub dataset URL"),
        ("a/b/c", "v3.0", r"neither a Hub dataset id"),
        ("lerobot/pusht", "", r"non-empty"),
    ],
)
def test_revision_that_cannot_apply_is_refused(root, revision, message) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve_root(root, revision, exists=NOWHERE)


def test_offline_hub_id_raises_download_error_naming_url_and_remedy(monkeypatch, tmp_path) -> None:
    constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # huggingface_hub makes no request
    monkeypatch.setenv("HF_LEROBOT_HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)  # no local "lerobot/pusht" here
    with pytest.raises(DownloadError) as caught:
        open_dataset("lerobot/pusht", revision="v3.0")
    text = str(caught.value)
    assert text.startswith("hf://datasets/lerobot/pusht@v3.0: ")
    assert caught.value.path == "hf://datasets/lerobot/pusht@v3.0"
    assert "HF_HUB_OFFLINE" in text and "local path" in text and "hf download lerobot/pusht" in text
    assert "LeRobot's copy" not in text  # none under HF_LEROBOT_HOME yet
    info = tmp_path / "lerobot" / "pusht" / "meta" / "info.json"
    info.parent.mkdir(parents=True)
    info.write_text("{}")
    with pytest.raises(DownloadError, match=rf"LeRobot's copy of it is at {tmp_path}/lerobot/pusht: pass that path"):
        open_dataset("hf://datasets/lerobot/pusht")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_unreachable_hub_from_build_loader_is_a_download_error(tmp_path) -> None:
    """build_loader("lerobot/pusht") against a Hub endpoint that refuses connections (a closed local port)."""
    script = textwrap.dedent(
        """
        from streamnodes import DownloadError, build_loader
        try:
            build_loader("lerobot/pusht", batch_size=2)
        except DownloadError as e:
            print("PATH", e.path)
            print("TEXT", e)
        """
    )
    port = _closed_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{port}", HF_HOME=str(tmp_path / "hf"), HF_HUB_DISABLE_TELEMETRY="1")
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    assert "PATH hf://datasets/lerobot/pusht\n" in out.stdout
    text = out.stdout.split("TEXT ", 1)[1]
    assert text.startswith("hf://datasets/lerobot/pusht: cannot read the Hugging Face Hub dataset")
    assert f"127.0.0.1:{port} cannot be reached" in text
    assert "HF_ENDPOINT" in text and "local path" in text
