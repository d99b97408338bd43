"""Byte-range access to the frames of an mp4 through its own sample tables (``moov``).

``read_index`` (a few ranged reads) -> ``episode_span`` (which samples and byte ranges decode frames
``first..last``) -> ``fetch_span`` (the ranged reads) -> ``synthesize`` (a small self-contained mp4 for
torchcodec's public ``VideoDecoder``, keeping the original pts). Files that cannot be indexed raise
``Mp4IndexError``: fall back to the whole file.
"""

from streamnodes.mp4.boxes import Mp4IndexError
from streamnodes.mp4.index import Mp4Index, ReadRange, read_index
from streamnodes.mp4.spans import Span, episode_span, fetch_span, frame_at
from streamnodes.mp4.synth import synthesize

__all__ = [
    "Mp4Index",
    "Mp4IndexError",
    "ReadRange",
    "Span",
    "episode_span",
    "fetch_span",
    "frame_at",
    "read_index",
    "synthesize",
]
