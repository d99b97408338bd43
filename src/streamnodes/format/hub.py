"""Hugging Face Hub dataset ids: ``"lerobot/pusht"`` -> ``"hf://datasets/lerobot/pusht"``, and the Hub's errors.

LeRobot users name datasets by their Hub id (``repo_id``). A root that is such an id (``owner/name``,
no protocol) and not an existing local path is read through huggingface_hub's fsspec file system
(``HfFileSystem``, registered as ``hf://``), whose URLs spell a revision (branch, tag, commit or
``refs/pr/N``) as ``hf://datasets/<owner>/<name>@<revision>``. Nothing is downloaded here:
:func:`resolve_root` is string work plus one ``os.path.exists``; :func:`unreachable_error` words the
error when the Hub cannot be reached (offline, ``HF_HUB_OFFLINE=1``, a wrong ``HF_ENDPOINT``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from urllib.parse import quote

from streamnodes.errors import ConfigError, DownloadError, short_text
from streamnodes.format.fs import is_url

HUB_PROTOCOL = "hf://"
HUB_DATASETS = "hf://datasets/"
# A Hub repo id: "owner/name", each part letters, digits, "-", "_", "." (not starting with "." or "-").
_REPO_ID = re.compile(r"^[A-Za-z0-9_][\w.-]*/[A-Za-z0-9_][\w.-]*$")
# Revisions HfFileSystem reads with their "/" unquoted; any other revision is percent-quoted whole.
_SPECIAL_REF = re.compile(r"^refs/(?:convert/[\w.-]+|pr/\d+)$")


def is_hub_id(root: str) -> bool:
    """True when ``root`` has the form of a Hub repo id (``owner/name``); says nothing of local paths."""
    return bool(_REPO_ID.match(root)) and ".." not in root


def is_hub_url(root: str) -> bool:
    """True when ``root`` is read through huggingface_hub's file system (``hf://...``)."""
    return root.startswith(HUB_PROTOCOL)


def quote_revision(revision: str) -> str:
    """``revision`` as HfFileSystem URLs spell it after ``@``: ``refs/pr/N`` and ``refs/convert/X`` as
    they are, anything else percent-quoted (a branch ``"feature/x"`` is ``"feature%2Fx"``)."""
    return revision if _SPECIAL_REF.match(revision) else quote(revision, safe="")


def hub_url(repo_id: str, revision: str | None = None) -> str:
    """The ``hf://`` URL of the Hub dataset ``repo_id`` at ``revision`` (default: the main branch)."""
    url = HUB_DATASETS + repo_id
    return url if not revision else f"{url}@{quote_revision(revision)}"


def resolve_root(
    root: str, revision: str | None = None, *, exists: Callable[[str], bool] = os.path.exists
) -> str:
    """The dataset root ``open_dataset`` reads for the ``root`` a user gave, and ``revision``.

    - A URL (``scheme://...``) stays as it is; ``revision`` is added to an ``hf://`` URL that has none.
    - An existing local path stays local, even when it looks like a Hub id (``data/pusht``).
    - A Hub id (``owner/name``) that is not a local path becomes ``hf://datasets/owner/name[@revision]``.
    - Anything else stays as it is (``open_dataset`` then reports the missing ``meta/info.json``).

    Raises :class:`ConfigError` for a ``revision`` that cannot apply (a local path, a non-Hub URL, or an
    ``hf://`` URL that names another revision). ``exists`` is the local existence test (pure in tests).
    """
    root = str(root)
    if revision is not None and not str(revision):
        raise ConfigError("revision must be a non-empty branch, tag or commit, or None for the main branch.")
    if is_url(root):
        if revision is None:
            return root
        if not is_hub_url(root):
            raise ConfigError(
                f"revision={revision!r} applies to Hugging Face Hub datasets only; {root} is not one (hf://...). "
                "Drop revision, or name the Hub dataset (e.g. 'lerobot/pusht')."
            )
        return _with_revision(root, revision)
    if exists(root):
        if revision is not None:
            raise ConfigError(
                f"revision={revision!r}, but {root} is a local directory (a local copy has no revisions). Drop "
                f"revision, or name the Hub dataset as hf://datasets/<owner>/<name> to read it from the Hub."
            )
        return root
    if is_hub_id(root):
        return hub_url(root, revision)
    if revision is not None:
        raise ConfigError(
            f"revision={revision!r}, but {root!r} is neither a Hub dataset id ('owner/name') nor a local path."
        )
    return root


def _with_revision(url: str, revision: str) -> str:
    """``revision`` added to an ``hf://`` URL after its repo id (``hf://datasets/owner/name@rev/...``)."""
    head, sep, rest = url.partition(HUB_DATASETS)
    if not sep:  # hf://owner/name is a model repo; datasets are under hf://datasets/
        raise ConfigError(f"{url}: not a Hub dataset URL; Hub datasets are hf://datasets/<owner>/<name>.")
    parts = rest.split("/", 2)
    repo = "/".join(parts[:2])
    if "@" in repo:
        given = repo.split("@", 1)[1]
        if given not in (revision, quote_revision(revision)):
            raise ConfigError(f"{url} names revision {given!r}, and revision={revision!r}: give one of them.")
        return url
    tail = "/" + parts[2] if len(parts) > 2 else ""
    return f"{head}{HUB_DATASETS}{repo}@{quote_revision(revision)}{tail}"


def is_offline() -> bool:
    """Whether huggingface_hub is in offline mode (``HF_HUB_OFFLINE=1``): the Hub is never asked."""
    try:
        from huggingface_hub import constants
    except ImportError:  # huggingface_hub absent: hf:// URLs fail in fsspec with their own message
        return False
    return bool(constants.HF_HUB_OFFLINE)


def endpoint() -> str:
    """The Hub endpoint huggingface_hub uses (``HF_ENDPOINT``, default https://huggingface.co)."""
    try:
        from huggingface_hub import constants
    except ImportError:
        return os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    return str(constants.ENDPOINT)


def unreachable_error(url: str, error: BaseException | None = None) -> DownloadError:
    """The error for a Hub dataset that cannot be read because the Hub cannot be reached.

    Names ``url`` (the ``hf://`` URL), the endpoint, the cause and the remedies: the network or
    ``HF_ENDPOINT``, ``HF_HUB_OFFLINE``, or a local copy passed as a path.
    """
    if error is None and is_offline():
        why = "HF_HUB_OFFLINE is set, so huggingface_hub does not contact the Hub"
        fix = "Unset HF_HUB_OFFLINE to read from the Hub"
    else:
        why = f"the Hub at {endpoint()} cannot be reached ({_cause(error)})"
        fix = "Check the network and HF_ENDPOINT (a mirror or proxy must serve the Hub API)"
    repo = url.removeprefix(HUB_DATASETS).split("/", 2)
    repo_id = "/".join(repo[:2]).split("@", 1)[0]
    copy = lerobot_copy(repo_id)
    local = f" LeRobot's copy of it is at {copy}: pass that path." if copy else ""
    return DownloadError(
        f"{url}: cannot read the Hugging Face Hub dataset: {why}. {fix}, or pass the local path of a "
        f"downloaded copy (`hf download {repo_id} --repo-type dataset --local-dir DIR`, then use DIR).{local}",
        path=url,
    )


def lerobot_copy(repo_id: str) -> str | None:
    """The directory where LeRobot keeps its own copy of ``repo_id`` (``$HF_LEROBOT_HOME/<repo_id>``,
    default ``$HF_HOME/lerobot``), when it holds a dataset (``meta/info.json``), else ``None``."""
    home = os.environ.get("HF_LEROBOT_HOME")
    if not home:
        try:
            from huggingface_hub import constants

            home = os.path.join(constants.HF_HOME, "lerobot")
        except ImportError:
            return None
    path = os.path.join(os.path.expanduser(home), repo_id)
    return path if os.path.isfile(os.path.join(path, "meta", "info.json")) else None


def _cause(error: BaseException | None) -> str:
    """The innermost useful error of a chain (httpx wraps the socket error), as ``Type: text``."""
    if error is None:
        return "no response"
    inner = error
    while isinstance(inner, DownloadError) and inner.__cause__ is not None:
        inner = inner.__cause__
    return f"{type(inner).__name__}: {short_text(inner, limit=200)}"


__all__ = [
    "HUB_DATASETS",
    "endpoint",
    "hub_url",
    "is_hub_id",
    "is_hub_url",
    "is_offline",
    "lerobot_copy",
    "quote_revision",
    "resolve_root",
    "unreachable_error",
]
