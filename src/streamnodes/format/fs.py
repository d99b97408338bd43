"""fsspec protocol helpers: the one place that knows how local paths and URLs are told apart.

A dataset root is a local path or any fsspec URL (``https://``, ``hf://``, ``s3://`` ...).
:func:`url_to_fs` opens its file system, :func:`join` names a file under it as that file system does,
:func:`fs_is_remote` decides whether the Prefetcher and retries apply, :func:`fs_is_http` whether
HTTP-specific handling does, and :func:`is_url` whether a path string goes to FFmpeg as a URL.
"""

from __future__ import annotations

import posixpath

import fsspec

_LOCAL_PROTOCOLS = frozenset({"file", "local"})
_HTTP_PROTOCOLS = frozenset({"http", "https"})


def protocols(fs: fsspec.AbstractFileSystem) -> frozenset[str]:
    """Every protocol name ``fs`` answers to (fsspec gives a string or a tuple)."""
    return frozenset(fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def fs_is_remote(fs: fsspec.AbstractFileSystem) -> bool:
    """True unless ``fs`` is the local file system."""
    return not (_LOCAL_PROTOCOLS & protocols(fs))


def fs_is_local(fs: fsspec.AbstractFileSystem) -> bool:
    """True when ``fs`` is the local file system (``os`` calls work on its paths)."""
    return not fs_is_remote(fs)


def fs_is_http(fs: fsspec.AbstractFileSystem) -> bool:
    """True when ``fs`` is fsspec's HTTP(S) file system."""
    return bool(_HTTP_PROTOCOLS & protocols(fs))


def is_url(path: str) -> bool:
    """True when ``path`` carries a protocol (``scheme://...``) rather than being a local path."""
    return "://" in path


def url_to_fs(root: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The file system of ``root`` (local path or fsspec URL) and the root as it names it, without a
    trailing ``/`` (except for the file system root ``/`` itself)."""
    fs, path = fsspec.core.url_to_fs(str(root))
    return fs, path.rstrip("/") if path != "/" else path


def join(root_path: str, relative_path: str) -> str:
    """``relative_path`` (``/``-separated, as in LeRobot's templates) under ``root_path``."""
    return posixpath.join(root_path, relative_path)


def relative_to(root_path: str, path: str) -> str | None:
    """``path`` relative to ``root_path`` when it lies under it, else ``None``."""
    prefix = root_path.rstrip("/") + "/"
    return path[len(prefix) :] if path.startswith(prefix) else None


__all__ = [
    "fs_is_http",
    "fs_is_local",
    "fs_is_remote",
    "is_url",
    "join",
    "protocols",
    "relative_to",
    "url_to_fs",
]
