"""Copying one remote file to a local file, chunk by chunk, through the project's retry policy.

No locks and no cache state: the caller passes ``retry`` (:func:`streamnodes.format.retry.with_retries`
with its settings, as ``retry(fn, what)``) and hooks that stop a cancelled copy, reserve disk space and
count bytes. Each chunk of a file of known size is one ranged read
(:func:`streamnodes.format.retry.read_range`) retried on its own, so ``retries`` counts failures in a row
without progress and a retry resumes at the last complete chunk.

A server that ignores ``Range`` (Python's ``http.server``) answers the first chunk's request with the
whole file: that body is written as the file, once (logged; its size was reserved like any download's),
and no further request is made. The body is held in memory while it is written.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import BinaryIO, TypeVar

import fsspec

from streamnodes.format.retry import RangeIgnored, note_range_ignored, read_range

__all__ = ["copy_sized", "copy_unsized", "file_size", "read_range"]

T = TypeVar("T")
Retry = Callable[[Callable[[], T], str], T]


def file_size(fs: fsspec.AbstractFileSystem, url: str) -> int | None:
    """The file's size from the file system (``fs.size``, else ``fs.info``), ``None`` if it gives none."""
    try:
        size = fs.size(url)
    except (NotImplementedError, AttributeError):
        size = fs.info(url).get("size")
    return None if size is None else int(size)


def copy_sized(
    fs: fsspec.AbstractFileSystem,
    url: str,
    size: int,
    out: BinaryIO,
    *,
    chunk_bytes: int,
    retry: Retry,
    before_chunk: Callable[[], None],
    on_chunk: Callable[[int], None],
) -> None:
    """Write ``url``'s ``size`` bytes to ``out``: ranged reads of ``chunk_bytes``, each retried on its own.

    ``before_chunk()`` runs before each read (it raises to stop the copy); ``on_chunk(n)`` after each write.
    If the server ignores ``Range``, the whole file arrives with one read: its bytes not yet written are
    written at once and the copy ends (one request for the file).
    """
    done = 0
    while done < size:
        before_chunk()
        start, end = done, min(size, done + chunk_bytes)
        try:
            data = retry(functools.partial(read_range, fs, url, start, end, size=size), f"{url} [{start}:{end}]")
        except RangeIgnored as whole:
            note_range_ignored(url, size)
            rest = memoryview(whole.body)[done:]
            out.write(rest)
            on_chunk(len(rest))
            return
        out.write(data)
        done = end
        on_chunk(len(data))


def copy_unsized(
    fs: fsspec.AbstractFileSystem,
    url: str,
    out: BinaryIO,
    *,
    chunk_bytes: int,
    retry: Retry,
    grow: Callable[[int], None],
    on_chunk: Callable[[int], None],
) -> None:
    """Write ``url`` (size unknown: read until the end) to ``out``, from the start on every attempt.

    A stream of unknown length cannot resume at an offset, so a failed attempt starts over.
    ``grow(total)`` runs before ``out`` reaches ``total`` bytes (it reserves space, or raises to stop);
    ``on_chunk(n)`` after each write.
    """

    def attempt() -> None:
        out.seek(0)
        out.truncate()
        done = 0
        with fs.open(url, "rb", block_size=chunk_bytes, cache_type="none") as src:
            while chunk := src.read(chunk_bytes):
                grow(done + len(chunk))
                out.write(chunk)
                done += len(chunk)
                on_chunk(len(chunk))

    retry(attempt, url)
