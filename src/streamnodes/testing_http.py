"""A real HTTP file server on 127.0.0.1 for tests and for trying remote datasets without a hub.

:func:`serve_directory` serves a directory over plain HTTP/1.1 with what remote readers need: ``HEAD``
with ``Content-Length``, single ``Range`` requests (``206 Partial Content`` + ``Content-Range``: fsspec and
pyarrow read parquet footers and row groups by range), keep-alive connections, and per-path request
counters so a test can assert how often each file was fetched.

Faults are injected on purpose, seeded and bounded (:class:`Faults`): answer a fraction of requests
with ``500``, or with ``429``/``503`` and a ``Retry-After`` header (a busy or rate-limiting server), cut a
fraction of bodies mid-way (the connection is closed after half the bytes), delay responses, fail
chosen paths on every request (a permanently broken file), or refuse chosen paths with ``403`` for
their first requests (a signed URL that expired once).

``serve_directory(root, ranges=False)`` serves like ``python -m http.server``: ``Range`` headers are
ignored and every GET is answered ``200`` with the whole file. ``server.bytes_of(path)`` counts the
body bytes sent per file, so a test can assert that a file was fetched whole exactly once.

    with serve_directory(dataset_root, faults=Faults(error_rate=0.3, seed=0)) as server:
        meta = open_dataset(server.url)
        ...
        assert server.count("videos/observation.images.cam/chunk-000/file-000.mp4") == 1

The server only binds loopback addresses; it is not meant to face a network.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import random
import re
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

__all__ = ["Faults", "HTTPTestServer", "serve_directory"]

log = logging.getLogger(__name__)

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_COPY_CHUNK = 256 * 1024


@dataclass
class Faults:
    """Which requests the server spoils. Random faults are drawn from ``random.Random(seed)``.

    Args:
        error_rate: fraction of eligible requests answered ``500 Internal Server Error``.
        drop_rate: fraction of eligible ``GET`` bodies cut after half their bytes (connection closed).
        delay_s: seconds to sleep before answering a delayed request.
        delay_rate: fraction of eligible requests delayed by ``delay_s`` (1.0: all of them).
        fail_paths: paths relative to the served root (``"videos/.../file-000.mp4"``) answered ``500``
            on every request, whatever the bounds below: a permanently failing file.
        forbidden: path -> how many of its first requests (any method) are answered ``403 Forbidden``;
            later ones are served normally (a signed URL that expired and was renewed). Not bounded below.
        throttle_rate: fraction of eligible requests answered ``throttle_status`` with ``Retry-After``.
        throttle_status: ``429`` (Too Many Requests) or ``503`` (Service Unavailable).
        retry_after: the ``Retry-After`` header value of throttled answers (seconds, or an HTTP date);
            ``None`` sends none.
        suffixes: random faults only hit paths ending with one of these (``(".mp4",)``); ``None``: all.
        max_faults: stop injecting random faults after this many (``None``: no limit).
        max_consecutive: at most this many random faults in a row on one request (its method, path and
            ``Range``); the next identical request is served normally. Keeps a client with enough retries
            always able to finish, even while other clients (loader workers) read other parts of the same
            file: their requests neither extend nor reset its streak.
        seed: seed of the fault draws.
    """

    error_rate: float = 0.0
    drop_rate: float = 0.0
    delay_s: float = 0.0
    delay_rate: float = 1.0
    fail_paths: Collection[str] = ()
    forbidden: Mapping[str, int] = field(default_factory=dict)
    throttle_rate: float = 0.0
    throttle_status: int = 503
    retry_after: str | None = "1"
    suffixes: tuple[str, ...] | None = None
    max_faults: int | None = None
    max_consecutive: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("error_rate", "drop_rate", "delay_rate", "throttle_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"Faults.{name} must be within [0, 1], got {value}")
        if self.delay_s < 0:
            raise ValueError(f"Faults.delay_s must be >= 0, got {self.delay_s}")
        if self.throttle_status not in (429, 503):
            raise ValueError(f"Faults.throttle_status must be 429 or 503, got {self.throttle_status}")
        self.fail_paths = frozenset(p.lstrip("/") for p in self.fail_paths)
        self.forbidden = {p.lstrip("/"): int(n) for p, n in dict(self.forbidden).items()}


@dataclass
class _Decision:
    error: bool = False
    drop: bool = False
    delay: float = 0.0
    refuse: HTTPStatus | None = None  # 403, 429 or 503 instead of the file
    retry_after: str | None = None


@dataclass
class HTTPTestServer:
    """What :func:`serve_directory` yields: the base URL, counters, and the faults (mutable while serving).

    ``ranges`` (mutable too): ``False`` ignores ``Range`` headers like ``python -m http.server``.
    ``bandwidth`` (mutable too): bytes/s that all bodies share, like one network link (``None``: unlimited);
    per-request latency is ``Faults(delay_s=...)``.
    """

    root: Path
    url: str
    faults: Faults
    ranges: bool = True
    bandwidth: float | None = None
    _link_free_at: float = field(default=0.0, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _requests: Counter = field(default_factory=Counter, repr=False)
    _faults_injected: Counter = field(default_factory=Counter, repr=False)
    _consecutive: Counter = field(default_factory=Counter, repr=False)
    _forbidden_served: Counter = field(default_factory=Counter, repr=False)
    _bytes: Counter = field(default_factory=Counter, repr=False)
    _spans: dict = field(default_factory=dict, repr=False)  # path -> [(start, stop), ...] of GET bodies
    bytes_sent: int = 0
    _rng: random.Random | None = field(default=None, repr=False)

    def count(self, path: str, method: str = "GET") -> int:
        """Requests received for ``path`` (relative to the root) with ``method``, faulty ones included."""
        with self._lock:
            return self._requests[(method, path.lstrip("/"))]

    @property
    def requests(self) -> dict[tuple[str, str], int]:
        """``(method, relative path) -> requests received`` so far (a copy)."""
        with self._lock:
            return dict(self._requests)

    def bytes_of(self, path: str) -> int:
        """Body bytes sent for ``path`` (relative to the root), all requests together; error pages excluded."""
        with self._lock:
            return self._bytes[path.lstrip("/")]

    def spans_of(self, path: str) -> list[tuple[int, int]]:
        """Byte ranges ``[start, stop)`` that ``GET`` answers for ``path`` carried, in order (faulty ones
        included; a dropped body counts as asked). ``(0, size)`` for a whole file."""
        with self._lock:
            return list(self._spans.get(path.lstrip("/"), ()))

    @property
    def bytes_by_path(self) -> dict[str, int]:
        """``relative path -> body bytes sent`` so far (a copy)."""
        with self._lock:
            return dict(self._bytes)

    @property
    def faults_injected(self) -> dict[str, int]:
        """``kind -> count`` of faults injected so far (``error``, ``drop``, ``delay``, ``fail_path``,
        ``throttle``, ``forbidden``)."""
        with self._lock:
            return dict(self._faults_injected)

    def reset_counts(self) -> None:
        with self._lock:
            self._requests.clear()
            self._faults_injected.clear()
            self._consecutive.clear()
            self._bytes.clear()
            self._spans.clear()
            self.bytes_sent = 0

    def set_faults(self, faults: Faults) -> None:
        """Change the faults of a running server (the fault RNG restarts from ``faults.seed``, and the
        ``forbidden`` counts start again)."""
        with self._lock:
            self.faults = faults
            self._rng = random.Random(faults.seed)
            self._consecutive.clear()
            self._forbidden_served.clear()

    def url_of(self, path: str) -> str:
        """The URL of a file given by its path relative to the served root."""
        return f"{self.url}/{urllib.parse.quote(path.lstrip('/'))}"

    # ---- used by the handler ----------------------------------------------------------------------
    def _record(self, method: str, path: str, range_header: str | None) -> _Decision:
        request = (method, path, range_header)  # what a client's retry repeats
        with self._lock:
            self._requests[(method, path)] += 1
            f = self.faults
            if path in f.fail_paths:
                self._faults_injected["fail_path"] += 1
                return _Decision(error=True)
            if self._forbidden_served[path] < f.forbidden.get(path, 0):
                self._forbidden_served[path] += 1
                self._faults_injected["forbidden"] += 1
                return _Decision(refuse=HTTPStatus.FORBIDDEN)
            if f.suffixes is not None and not path.endswith(tuple(f.suffixes)):
                return _Decision()
            rng = self._rng
            if rng is None:
                rng = self._rng = random.Random(f.seed)
            decision = _Decision()
            if f.delay_s > 0 and rng.random() < f.delay_rate:
                decision.delay = f.delay_s
                self._faults_injected["delay"] += 1
            budget_left = (
                f.max_faults is None
                or sum(self._faults_injected[k] for k in ("error", "drop", "throttle")) < f.max_faults
            )
            streak_ok = self._consecutive[request] < f.max_consecutive
            draw_error, draw_drop = rng.random(), rng.random()  # always draw both: a stable sequence
            draw_throttle = rng.random() if f.throttle_rate > 0 else 1.0  # sequences without it unchanged
            if budget_left and streak_ok and draw_throttle < f.throttle_rate:
                decision.refuse = HTTPStatus(f.throttle_status)
                decision.retry_after = f.retry_after
                self._faults_injected["throttle"] += 1
            elif budget_left and streak_ok and draw_error < f.error_rate:
                decision.error = True
                self._faults_injected["error"] += 1
            elif budget_left and streak_ok and method == "GET" and draw_drop < f.drop_rate:
                decision.drop = True
                self._faults_injected["drop"] += 1
            if decision.error or decision.drop or decision.refuse:
                self._consecutive[request] += 1
            else:
                self._consecutive.pop(request, None)
            return decision

    def _pace(self, n: int) -> None:
        """Sleep until ``n`` more body bytes fit the shared ``bandwidth`` (bodies queue on one link)."""
        if not self.bandwidth:
            return
        with self._lock:
            start = max(time.monotonic(), self._link_free_at)
            self._link_free_at = start + n / self.bandwidth
            wait = self._link_free_at - time.monotonic()
        if wait > 0:
            time.sleep(wait)

    def _sent(self, path: str, n: int) -> None:
        with self._lock:
            self.bytes_sent += n
            self._bytes[path] += n


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "streamnodes-test/1"
    timeout = 30  # idle keep-alive connections end after this (seconds)
    disable_nagle_algorithm = True  # headers and body go out in separate writes
    state: HTTPTestServer  # set on the subclass made per server

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - BaseHTTPRequestHandler's signature
        log.debug("%s - %s", self.address_string(), format % args)

    def do_HEAD(self) -> None:  # noqa: N802 - http.server naming
        self._serve(body=False)

    def do_GET(self) -> None:  # noqa: N802
        self._serve(body=True)

    def _relative_path(self) -> str | None:
        raw = urllib.parse.urlsplit(self.path).path
        rel = urllib.parse.unquote(raw).lstrip("/")
        parts = [p for p in rel.split("/") if p not in ("", ".")]
        if any(p == ".." for p in parts):
            return None
        return "/".join(parts)

    def _error(self, status: HTTPStatus, body: bool, retry_after: str | None = None) -> None:
        message = f"{status.value} {status.phrase}\n".encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(message)))
        if retry_after is not None:
            self.send_header("Retry-After", retry_after)
        self.end_headers()
        if body:
            self.wfile.write(message)

    def _serve(self, body: bool) -> None:
        rel = self._relative_path()
        if rel is None:
            self._error(HTTPStatus.FORBIDDEN, body)
            return
        decision = self.state._record(self.command, rel, self.headers.get("Range"))
        if decision.delay:
            time.sleep(decision.delay)
        if decision.error:
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, body)
            return
        if decision.refuse is not None:
            self._error(decision.refuse, body, decision.retry_after)
            return
        path = self.state.root / rel
        if not path.is_file():
            self._error(HTTPStatus.NOT_FOUND, body)
            return
        size = path.stat().st_size
        start, stop = 0, size  # [start, stop)
        status = HTTPStatus.OK
        header = self.headers.get("Range") if self.state.ranges else None
        if header:
            parsed = _parse_range(header, size)
            if parsed is None:
                self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            start, stop = parsed
            status = HTTPStatus.PARTIAL_CONTENT
        length = stop - start
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        if self.state.ranges:
            self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(length))
        if status == HTTPStatus.PARTIAL_CONTENT:
            self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{size}")
        self.end_headers()
        if not body:
            return
        with self.state._lock:
            self.state._spans.setdefault(rel, []).append((start, stop))
        to_send = length // 2 if decision.drop else length
        with open(path, "rb") as f:
            f.seek(start)
            sent = 0
            while sent < to_send:
                chunk = f.read(min(_COPY_CHUNK, to_send - sent))
                if not chunk:
                    break
                self.state._pace(len(chunk))
                self.state._sent(rel, len(chunk))  # counted first: a client that has the bytes sees the count
                self.wfile.write(chunk)
                sent += len(chunk)
        if decision.drop:
            self.wfile.flush()
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(2)  # SHUT_RDWR: the client sees the body end early


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """``Range: bytes=a-b`` (one range) -> ``[start, stop)`` within ``size``; ``None`` if unsatisfiable.

    Multi-range requests are refused (``None``, answered 416): no reader used here sends them.
    """
    m = _RANGE.match(header.strip())
    if m is None:
        return None
    first, last = m.group(1), m.group(2)
    if first == "" and last == "":
        return None
    if first == "":  # suffix: the last N bytes
        n = int(last)
        if n == 0:
            return None
        return max(0, size - n), size
    start = int(first)
    stop = size if last == "" else min(int(last) + 1, size)
    if start >= size or stop <= start:
        return None
    return start, stop


def _check_loopback(host: str) -> None:
    if host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"serve_directory only binds loopback addresses (127.0.0.1), got host={host!r}")


@contextlib.contextmanager
def serve_directory(
    root: str | os.PathLike[str],
    host: str = "127.0.0.1",
    port: int = 0,
    faults: Faults | None = None,
    ranges: bool = True,
    bandwidth: float | None = None,
) -> Iterator[HTTPTestServer]:
    """Serve ``root`` over HTTP on ``host:port`` (port 0: an ephemeral one) while the block runs.

    ``ranges=False`` ignores ``Range`` headers (every GET answers ``200`` with the whole file), as
    ``python -m http.server`` does. ``bandwidth`` (bytes/s) limits all bodies together, like one link.

    Yields an :class:`HTTPTestServer` whose ``url`` (``http://127.0.0.1:PORT``, no trailing slash) is
    the dataset root URL, e.g. for ``open_dataset(server.url)``. The server thread is a daemon and is
    stopped (and its socket closed) when the block exits.
    """
    _check_loopback(host)
    root_path = Path(root).resolve()
    if not root_path.is_dir():
        raise FileNotFoundError(f"serve_directory: {root_path} is not a directory")
    state = HTTPTestServer(root=root_path, url="", faults=faults or Faults(), ranges=ranges, bandwidth=bandwidth)
    handler = type("_BoundHandler", (_Handler,), {"state": state})
    httpd = ThreadingHTTPServer((host, port), handler)
    httpd.daemon_threads = True
    bound_host, bound_port = httpd.server_address[:2]
    if isinstance(bound_host, bytes):
        bound_host = bound_host.decode()
    state.url = f"http://{bound_host}:{bound_port}"
    thread = threading.Thread(
        target=httpd.serve_forever,
        kwargs={"poll_interval": 0.05},
        daemon=True,
        name=f"serve_directory:{bound_port}",
    )
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
