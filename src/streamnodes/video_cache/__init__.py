"""Bounded, refcounted local caches of remote videos: :class:`SpanCache` (what the Prefetcher hands out:
per episode and camera only the bytes that decode the episode, as a small mp4; see
:mod:`.span_cache` and docs/prefetch.md) and :class:`VideoCache` (whole files, described below; the
Prefetcher's ``byte_ranges=False``).

``VideoCache.acquire(url)`` returns a :class:`CachedVideo` handle at once and starts the download in a
background thread; ``handle.local_path()`` blocks until the local copy is complete. Every handle holds
one reference to its file's cache entry. The file is deleted when its last handle goes away, either by
``handle.release()`` or when the handle is garbage collected: samples buffered downstream (a shuffle
buffer) keep their episode's handles, and so the file, alive after the episode left the pool.

Several episodes usually share one mp4: while any handle on a URL is alive, acquiring it again counts
one more reference and reuses the same local copy (one download per residency).

Disk use is bounded: a download first reserves its file's size (``fs.size``) and waits, in acquisition
order, until the reservation fits within ``max_bytes``. A file larger than ``max_bytes`` fails at once
with :class:`~streamnodes.errors.ConfigError`; a consumer that waits on a file whose download cannot
get space for ``space_timeout_s`` (every cached file still referenced: the pool holds more than
``max_bytes``) gets a ``ConfigError`` saying to raise ``max_bytes`` or lower the pool size.

Local names are unique per residency (``000042-file-007.mp4``); a deleted file is truncated before it
is unlinked, so a decoder that still holds it open (VideoDecode caches decoders by path) does not keep
its bytes on disk. Downloads go to ``.<name>.part`` and are renamed when complete. Each chunk is one
ranged read through the project's retry policy (:func:`streamnodes.format.retry.with_retries`): a
transient failure is retried from the chunk where it stopped, with exponential backoff; ``retries``
failures in a row without progress raise :class:`~streamnodes.errors.DownloadError` naming the URL.

The parts, each small and usable on its own:

- :mod:`.space`: :class:`~.space.SpaceBudget`, bytes against ``max_bytes`` granted in arrival order
  (pure, knows no files);
- :mod:`.entries`: :class:`~.entries.EntryTable`, refcounted entries by URL with an
  :class:`~.entries.EntryState` (pure);
- :mod:`.download`: copying one file chunk by chunk through a retry function (no cache state);
- :mod:`.locking`: :class:`~.locking.DeferringLock`, so finalizers in any thread never block;
- :mod:`.core`: the threads, waits and counters that tie them together;
- :mod:`.handle` and :mod:`.cache`: the public :class:`CachedVideo` and :class:`VideoCache`;
- :mod:`.span_plan` (pure: an episode's frames and span in an indexed file) and :mod:`.span_cache`
  (:class:`SpanCache`, :class:`CachedSpan`).
"""

from streamnodes.video_cache.cache import GiB, MiB, VideoCache
from streamnodes.video_cache.handle import CachedVideo
from streamnodes.video_cache.span_cache import CachedSpan, SpanCache

__all__ = ["GiB", "MiB", "CachedSpan", "CachedVideo", "SpanCache", "VideoCache"]
