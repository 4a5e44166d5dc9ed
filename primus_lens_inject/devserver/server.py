"""The HTTP transport: framing as Go's server does it (Content-Length, chunked, 413 above
``MAX_BODY``), keep-alive, and a shutdown that answers the requests in progress.  What to answer
is the receiver's business (:class:`_Answerer`)."""

from __future__ import annotations

import re
import select
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, List, Mapping, Protocol, Set, Tuple

from .. import httpbody
from .responses import Response, plain

MAX_BODY = 16 << 20  # larger bodies get 413; the client keeps its requests under 1 MiB
_MAX_TRAILER_LINES = 100


class _Answerer(Protocol):
    """What the server asks for each request (the :class:`~.receiver.Receiver`)."""

    def handle(self, method: str, target: str, headers: Mapping[str, str], body: bytes,
               client_gone: Callable[[], bool]) -> Response: ...


def _shutdown(conn: socket.socket) -> None:
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already gone


class _Connections:
    """Connection bookkeeping so that stopping behaves like Go's ``http.Server.Shutdown``.

    Idle keep-alive connections are closed at once; a request already being handled finishes,
    gets its answer, then its connection closes.  Without this, restarting the receiver in the
    middle of a test could store a request whose answer never reaches the client, which then
    sends it again: a duplicate caused by the receiver, not by the client under test.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._idle: Set[socket.socket] = set()
        self._busy: Set[socket.socket] = set()
        self.closing = False

    def opened(self, conn: socket.socket) -> bool:
        with self._cond:
            if not self.closing:
                self._idle.add(conn)
            return not self.closing

    def begin(self, conn: socket.socket) -> bool:
        """A request arrived on ``conn``; False when stopping already closed it (do not process)."""
        with self._cond:
            if conn not in self._idle:
                return False
            self._idle.remove(conn)
            self._busy.add(conn)
            return True

    def end(self, conn: socket.socket) -> bool:
        """The answer went out; False when the connection must close now."""
        with self._cond:
            self._busy.discard(conn)
            if self.closing:
                self._cond.notify_all()
                return False
            self._idle.add(conn)
            return True

    def closed(self, conn: socket.socket) -> None:
        with self._cond:
            self._idle.discard(conn)
            self._busy.discard(conn)
            self._cond.notify_all()

    def close_all(self, timeout: float) -> None:
        with self._cond:
            self.closing = True
            for conn in self._idle:
                _shutdown(conn)
            self._idle.clear()
            self._cond.wait_for(lambda: not self._busy, timeout)
            for conn in self._busy:  # still busy after the grace period: cut off
                _shutdown(conn)


_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;[^\r\n]*)?\r?\n")  # Go: at most 16 digits


class _Refused(Exception):
    """The request's framing is refused with ``response``; ``unread``: bytes it may still send."""

    def __init__(self, response: Response, unread: int = 0) -> None:
        super().__init__(response.note)
        self.response = response
        self.unread = unread


class _ClientGone(Exception):
    """The client closed its end before the body was complete."""


def _too_large() -> Response:
    return plain(413, f"request body larger than {MAX_BODY} bytes")


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: Tuple[str, int], receiver: _Answerer, verbose: bool) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.receiver = receiver
        self.verbose = verbose
        self.connections = _Connections()
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that resets its connection is routine; anything else gets one line, not
        socketserver's traceback."""
        exc = sys.exc_info()[1]
        if not isinstance(exc, ConnectionError):
            print(f"primus-lens receive: connection from {client_address[0]}: "
                  f"{type(exc).__name__}: {exc}", file=sys.stderr, flush=True)


class _Handler(BaseHTTPRequestHandler):
    """HTTP/1.1 with keep-alive, every method routed to the receiver (gin answers any method)."""

    protocol_version = "HTTP/1.1"
    default_request_version = "HTTP/1.1"  # a garbage request line still gets a status line
    disable_nagle_algorithm = True  # headers and body go out back to back, like Go's server
    server: Server

    def setup(self) -> None:
        super().setup()
        self._tracked = self.server.connections.opened(self.connection)

    def handle(self) -> None:
        if self._tracked:
            super().handle()

    def finish(self) -> None:
        self.server.connections.closed(self.connection)
        super().finish()

    def _dispatch(self) -> None:
        connections = self.server.connections
        if not connections.begin(self.connection):
            self.close_connection = True
            return
        try:
            self._serve_one()
        finally:
            if not connections.end(self.connection):
                self.close_connection = True

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = _dispatch

    def _serve_one(self) -> None:
        try:
            body = self._read_body()
        except _Refused as refused:  # the framing is broken: the stream cannot be trusted
            self.close_connection = True
            self._send(refused.response)
            httpbody.discard(self.connection, self.rfile, refused.unread)
            return
        except _ClientGone:
            self.close_connection = True  # nobody is left to answer
            return
        try:
            headers = {name.lower(): value for name, value in self.headers.items()}
            response = self.server.receiver.handle(self.command, self.path, headers, body,
                                                   self._client_gone)
        except Exception as exc:  # a bug of ours; gin's recovery answers 500 the same way
            print(f"primus-lens receive: internal error on {self.command} {self.path}: "
                  f"{type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            self.close_connection = True
            response = plain(500, "500 Internal Server Error")
        if self.server.connections.closing:
            self.close_connection = True
        if response.send:
            self._send(response)
        else:
            self.close_connection = True

    def _read_body(self) -> bytes:
        """The body, as Go's server frames it; ``_Refused`` and ``_ClientGone`` otherwise."""
        encodings = self.headers.get_all("Transfer-Encoding") or []
        if encodings:
            if [e.strip().lower() for e in encodings] != ["chunked"]:
                raise _Refused(plain(501, "unsupported transfer encoding"))  # Go's answer
            return self._read_chunked()
        lengths = {httpbody.content_length(value)
                   for value in self.headers.get_all("Content-Length") or []}
        if not lengths:
            return b""
        length = lengths.pop()
        if lengths or length is None:
            raise _Refused(plain(400, "400 Bad Request"))
        if length > MAX_BODY:
            raise _Refused(_too_large(), unread=length)
        return self._read_exactly(length)

    def _read_exactly(self, size: int) -> bytes:
        data = self.rfile.read(size)
        if len(data) < size:
            raise _ClientGone()
        return data

    def _read_chunked(self) -> bytes:
        chunks: List[bytes] = []
        total = 0
        while True:
            match = _CHUNK_SIZE.fullmatch(self._read_line())
            if match is None:
                raise _Refused(plain(400, "400 Bad Request"))
            size = int(match.group(1), 16)
            if size == 0:
                break
            total += size
            if total > MAX_BODY:
                raise _Refused(_too_large(), unread=httpbody.DRAIN_LIMIT)
            chunks.append(self._read_exactly(size))
            if self._read_exactly(2) != b"\r\n":
                raise _Refused(plain(400, "400 Bad Request"))
        for _ in range(_MAX_TRAILER_LINES + 1):  # the trailers, then the empty line
            if self._read_line() in (b"\r\n", b"\n"):
                return b"".join(chunks)
        raise _Refused(plain(400, "400 Bad Request"))

    def _read_line(self) -> bytes:
        line = self.rfile.readline(1024)
        if not line:
            raise _ClientGone()
        return line

    def _client_gone(self) -> bool:
        """True when the client closed its end (it gave up waiting): readable with nothing to read."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def _send(self, response: Response) -> None:
        self.send_response(response.status)
        if response.content_type:
            self.send_header("Content-Type", response.content_type)
        for name, value in response.headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            super().log_message(format, *args)
