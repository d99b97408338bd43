"""Exception types. Every error streamnodes raises on purpose derives from :class:`StreamNodesError`.

Messages name the file (or URL), the episode where there is one, and what to do about it. The same
facts are attributes (``path``, ``episode_index``, ``camera``; ``None`` where unknown), so code that
handles an error (``EpisodeGuard``, ``streamnodes check``) reads them instead of parsing the text.
"""

from __future__ import annotations

import re

# torchcodec prefixes errors with its C++ function and source location: "SingleStreamDecoder,
# /__w/torchcodec/.../SingleStreamDecoder.cpp:52, Could not open input file: ..."
_CPP_LOCATION = re.compile(r"\b\w+, \S+\.(?:cpp|h):\d+, ")
# ... and ends them with a bug-report footer that says nothing about the file.
_TORCHCODEC_FOOTER = " This should never happen."
# The closing sentence of every error about a damaged or missing data or video file (see check_hint).
_CHECK_HINT = re.compile(r" ?Run `python -m streamnodes check [^`]*` for a report of every damaged file\.$")


def check_hint(root: str | None = None) -> str:
    """The sentence that ends errors about damaged or missing files: run ``streamnodes check`` on ``root``.

    The loader stops at the first damaged file; ``streamnodes check`` reports all of them. ``root`` is the
    dataset's path or URL when the raiser knows it, else the placeholder ``ROOT``.
    """
    return f"Run `python -m streamnodes check {root or 'ROOT'}` for a report of every damaged file."


def short_text(error: BaseException | str, limit: int | None = 300) -> str:
    """``error``'s text on one line, for quoting inside another message or a report.

    Whitespace runs become one space (pyarrow's messages span several lines), torchcodec's C++ source
    locations and its "This should never happen..." footer are dropped, and text longer than ``limit``
    characters is cut to ``limit`` with a trailing ``...`` (``limit=None``: never cut).
    """
    text = " ".join(str(error).split())
    text = _CPP_LOCATION.sub("", text).split(_TORCHCODEC_FOOTER)[0]
    if limit is None or len(text) <= limit:
        return text
    return text[: max(limit - 3, 0)] + "..."


class StreamNodesError(Exception):
    """Base class of every error streamnodes raises for bad input, bad state or bad configuration.

    Args:
        message: the text users read; it names the file, episode and remedy itself.
        path: the file or URL at fault, as the message names it (``None`` when no single file is).
        episode_index: the episode being read or decoded, where there is one.
        camera: the video key, for errors about one camera's frames.

    The attributes survive pickling (DataLoader workers). Code that learns more context on the way up
    adds it with :meth:`with_context` and re-raises the same error.
    """

    def __init__(
        self,
        message: str = "",
        *,
        path: str | None = None,
        episode_index: int | None = None,
        camera: str | None = None,
    ) -> None:
        super().__init__(message)
        self.path = path
        self.episode_index = None if episode_index is None else int(episode_index)
        self.camera = camera

    def with_context(
        self, *, path: str | None = None, episode_index: int | None = None, camera: str | None = None
    ) -> StreamNodesError:
        """Fill in the attributes still unknown (``None``) and return ``self``, to re-raise.

        Attributes the raiser already set are kept: the raiser knew best. The message is unchanged.
        """
        if self.path is None and path is not None:
            self.path = path
        if self.episode_index is None and episode_index is not None:
            self.episode_index = int(episode_index)
        if self.camera is None and camera is not None:
            self.camera = camera
        return self

    @property
    def detail(self) -> str:
        """The message without its leading location, for reports that name file and episode themselves.

        Drops ``"<path>: "`` (also ``"<path> (episode N): "`` and ``"<path> (episode N, camera C): "``),
        then ``"episode N: "``; ``"episode N (row group K) ..."`` becomes ``"row group K ..."``; the closing
        :func:`check_hint` sentence is dropped too. Only the
        error's own attributes are matched, so a message that starts otherwise is returned whole.
        """
        text = _CHECK_HINT.sub("", str(self))  # reports come from `streamnodes check` itself
        if self.path is not None:
            heads = [f"{self.path}: "]
            if self.episode_index is not None:
                heads.insert(0, f"{self.path} (episode {self.episode_index}): ")
                if self.camera is not None:
                    heads.insert(0, f"{self.path} (episode {self.episode_index}, camera {self.camera}): ")
            for head in heads:
                if text.startswith(head):
                    text = text[len(head) :]
                    break
        if self.episode_index is not None:
            episode = f"episode {self.episode_index}"
            text = text.removeprefix(f"{episode}: ")
            text = re.sub(rf"^{episode} \(([^)]*)\) ", r"\1 ", text)
        return text

    def __repr__(self) -> str:
        facts = "".join(
            f", {name}={value!r}"
            for name, value in (
                ("path", self.path),
                ("episode_index", self.episode_index),
                ("camera", self.camera),
            )
            if value is not None
        )
        return f"{type(self).__name__}({str(self)!r}{facts})"


class DatasetFormatError(StreamNodesError):
    """A dataset on disk is not a valid LeRobot v3.0 dataset (missing files, wrong version, bad schema)."""


class DatasetConsistencyError(DatasetFormatError):
    """Metadata and data disagree (row counts, index ranges, row groups vs episodes)."""


class ConfigError(StreamNodesError, ValueError):
    """Arguments that cannot work with this dataset (unknown keys, deltas off the frame grid)."""


class StateError(StreamNodesError):
    """A saved state does not fit the node or loader it is restored into."""


class VideoDecodeError(StreamNodesError):
    """A video file cannot be decoded, or decoded frames do not match the requested timestamps."""


class DownloadError(StreamNodesError):
    """A remote file could not be fetched after the allowed retries."""
