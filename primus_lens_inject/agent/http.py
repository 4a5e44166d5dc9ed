"""The agent's HTTP endpoint: ``/metrics`` for Prometheus, ``/healthz`` and ``/readyz`` for the
kubelet (docs/prometheus.md, docs/agent.md).

The standard library's threaded server, bounded, because anything in the pod's network may
connect to it: at most ``MAX_CONNECTIONS`` connections are served at once (one more is closed at
once, unanswered: a scraper retries at its next interval), every socket operation times out after
``SOCKET_TIMEOUT`` seconds (an idle keep-alive connection is closed then), a request must be
whole and answered within ``REQUEST_SECONDS`` (a client that trickles one byte at a time cannot
hold a thread), the request line and
headers are bounded by ``http.server`` itself (64 KiB a line, 100 headers), and a request body is
never read.  ``/metrics`` renders from memory (``exposition``), gzip-compressed for a scraper
that accepts it; the files are read by a thread of its own once a second, never by a scrape.
"""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Optional, Tuple

from .. import guard
from ..config import Config
from .exposition import READ_SECONDS, Exposition

MAX_CONNECTIONS = 16
SOCKET_TIMEOUT = 5.0  # seconds: one read or write
REQUEST_SECONDS = 15.0  # seconds from a connection's start or last answer to the next answer
_BACKLOG = 64

Ready = Callable[[], Tuple[bool, str]]


class _Listener(ThreadingHTTPServer):
    """A threaded server that serves ``MAX_CONNECTIONS`` connections at most at a time."""

    daemon_threads = True
    request_queue_size = _BACKLOG

    def __init__(self, address: Tuple[str, int], owner: Server) -> None:
        self.owner = owner
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            self.shutdown_request(request)  # full: closed unanswered, the client retries
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection that broke (reset, cut, timed out) is the client's business: nothing is
        printed for it (``socketserver`` would print a traceback per connection)."""

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


def _cut(request: socket.socket) -> None:
    """End a connection whose request took longer than ``REQUEST_SECONDS`` (its thread's read or
    write fails)."""
    try:
        request.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class _Handler(BaseHTTPRequestHandler):
    server: _Listener
    protocol_version = "HTTP/1.1"  # keep-alive: a scraper reuses its connection
    timeout = SOCKET_TIMEOUT
    server_version = "primus-lens-agent"
    sys_version = ""
    _deadline: Optional[threading.Timer] = None

    def setup(self) -> None:
        super().setup()
        self._arm()

    def _arm(self) -> None:
        """A new request may take ``REQUEST_SECONDS`` from now (the connection's start, or the
        previous answer), then its connection is cut."""
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = threading.Timer(REQUEST_SECONDS, _cut, (self.connection,))
        self._deadline.daemon = True
        self._deadline.start()

    def finish(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        super().finish()

    def do_GET(self) -> None:
        self._answer(send_body=True)

    def do_HEAD(self) -> None:
        self._answer(send_body=False)

    def _answer(self, send_body: bool) -> None:
        path = self.path.split("?", 1)[0]
        owner = self.server.owner
        content_type = "text/plain; charset=utf-8"
        gzipped = False
        if path == "/metrics":
            gzipped = _accepts_gzip(self.headers.get("Accept-Encoding", ""))
            body, content_type = owner.exposition.render(self.headers.get("Accept", ""), gzipped)
            status = 200
        elif path == "/healthz":
            status, body = 200, b"ok\n"
        elif path == "/readyz":
            ready, reason = owner.readiness()
            status = 200 if ready else 503
            body = ((reason or "ready") if ready else f"not ready: {reason}").encode() + b"\n"
        else:
            status, body = 404, b"not found: /metrics, /healthz, /readyz\n"
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        if gzipped:
            self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body)
        self._arm()

    def log_message(self, format: str, *args: Any) -> None:
        """Requests are not logged: a scrape every few seconds would fill the agent's log."""


def _accepts_gzip(header: str) -> bool:
    """Whether ``Accept-Encoding`` names gzip without refusing it (``q=0``)."""
    for part in header.lower().split(","):
        coding, _, params = part.partition(";")
        if coding.strip() == "gzip":
            return params.replace(" ", "") not in ("q=0", "q=0.0", "q=0.00", "q=0.000")
    return False


class Server:
    """The agent's endpoint on ``config.agent_address``:``config.agent_port`` (0: any free
    port); ``ready()`` answers ``/readyz`` (ready, reason)."""

    def __init__(self, config: Config, root: str, ready: Ready) -> None:
        self.config = config
        self.exposition = Exposition(config, root)
        self._ready = ready
        self._listener: Optional[_Listener] = None
        self._stop = threading.Event()

    def start(self) -> None:
        """Bind (``OSError`` when the address cannot be had) and serve on daemon threads."""
        self._listener = _Listener((self.config.agent_address, self.config.agent_port), self)
        guard.start_thread("agent-metrics", self._refresh)
        guard.start_thread("agent-http", self._listener.serve_forever, restart=False)

    @property
    def port(self) -> int:
        """The port bound (the one asked for, or the one the system chose for 0)."""
        return self._listener.server_address[1] if self._listener is not None else 0

    def readiness(self) -> Tuple[bool, str]:
        """``ready()``, where an exception is an answer too (not ready, and why)."""
        try:
            return self._ready()
        except Exception as exc:
            return False, f"readiness check failed: {type(exc).__name__}: {exc}"

    def close(self) -> None:
        """Stop serving and reading; the port is free when it returns."""
        self._stop.set()
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.shutdown()
            listener.server_close()

    def _refresh(self) -> None:
        while not self._stop.is_set():
            self.exposition.refresh()
            self.exposition.prerender()
            self._stop.wait(READ_SECONDS)
