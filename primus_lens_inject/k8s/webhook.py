"""The Kubernetes mutating admission webhook: ``primus-lens webhook --port P --tls-cert F --tls-key F``.

A small HTTPS server on the standard library only, so the injector image needs nothing beyond
Python to run it.  ``POST /mutate`` answers AdmissionReview v1 (the decision itself lives in
``admission``); ``GET /healthz`` serves the probes.  Paths are matched without the query string,
because the API server calls ``/mutate?timeout=5s``.  The server never blocks a pod: whatever
goes wrong while answering, the reply admits the pod unchanged and the log says why.

TLS files are re-read when they change (cert-manager and the kubelet rotate the mounted Secret
in place), and the handshake runs in the connection's thread so one slow client cannot stall
the accept loop.

Nothing a client does can take the memory or the answers away (the port answers anyone who
reaches it, unauthenticated; the chart gives the process 256 Mi):

- Connections, and with them threads, are capped at ``MAX_CONNECTIONS``.  An idle one costs a
  thread and ~60 KB; near the cap, each new connection closes others that have done nothing
  for ``SLOW_SECONDS`` (``Connections`` says which first).  The TLS handshake must finish
  within ``_HANDSHAKE_TIMEOUT``.
- A request must arrive whole within ``RECEIVE_SECONDS`` of its first byte (time we spend
  waiting for the pool aside), and is answered
  (or dropped) by ``REPLY_SHARE`` of the API server's own timeout, which it sends as
  ``?timeout=5s``: no wait of ours outlasts the API server's patience.
- Body bytes are charged as they arrive, never for a declared length: the first ``_FREE_BODY``
  bytes of each body are the connection's own (every real pod's review fits), the rest is drawn
  from the shared ``_BODY_POOL``.  A client that sends headers and nothing holds nothing.
- Decoding JSON costs up to 35 bytes of memory per byte of input, so bodies being decoded share
  ``DECODE_BUDGET``; it is held only while the CPU decodes and decides, never while waiting on a
  client.  A body above ``MAX_BODY`` is refused with 413 before it is read.
- Answers are bounded by ``admission`` (patch size, warnings), and large buffers are returned
  to the system when freed (``_keep_heap_small``).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import logging
import os
import re
import signal
import socket
import socketserver
import ssl
import sys
import threading
import time
from collections import OrderedDict
from http import HTTPStatus
from http.server import ThreadingHTTPServer
from typing import AbstractSet, Any, Dict, List, NamedTuple, Optional, Tuple, Union

from .. import httpbody
from . import admission

LOG = logging.getLogger("primus_lens_inject.k8s.webhook")
# The API server refuses requests above 3 MiB itself and etcd stores objects up to 1.5 MiB, so a
# pod's AdmissionReview (the object once, for CREATE) is far below this.
MAX_BODY = 3 << 20
_FREE_BODY = 64 << 10  # bytes of one body held without drawing on the pool (real reviews: ~3-30 KB)
_BODY_POOL = 8 << 20  # bytes of bodies beyond _FREE_BODY held at once, across connections
DECODE_BUDGET = MAX_BODY  # bytes of bodies being decoded at once (x35 in memory while decoding)
MAX_CONNECTIONS = 256  # connections (one thread each) served at once; more are closed at once
SPARE_CONNECTIONS = 32  # above MAX_CONNECTIONS - this, new connections close idle ones
SLOW_SECONDS = 0.25  # silent, idle or still sending this long: not the API server at work
_HANDSHAKE_TIMEOUT = 3.0
RECEIVE_SECONDS = 3.0  # from a request's first byte to its last (the API server sends at once)
_IDLE_TIMEOUT = 120.0  # the API server keeps connections alive between admissions
_DEFAULT_API_TIMEOUT = 10.0  # without ?timeout= (the API server's default timeoutSeconds)
_MAX_API_TIMEOUT = 30.0  # the largest timeoutSeconds the API server allows
REPLY_SHARE = 0.8  # of the API server's timeout: by then the answer is sent, or the wait given up
_WRITE_SECONDS = 5.0  # to hand an answer to a client that does not read
_CHUNK = 16 << 10  # bytes received at once (a TLS record at most)
_MAX_HEAD = 16 << 10  # request line and headers together
MAX_LINE = 8192  # request line or one header
_MAX_HEADERS = 100
_SHED_LOG_SECONDS = 10.0  # closed or refused connections are summed up in one line this often
_MMAP_THRESHOLD = 128 << 10  # buffers this large get mappings of their own (see _keep_heap_small)
RELOAD_CHECK_SECONDS = 5.0

_DURATION = re.compile(r"([0-9]+(?:\.[0-9]*)?)(ns|us|\u00b5s|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "\u00b5s": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0,
                 "h": 3600.0}


class TLSFiles:
    """The server's SSL context, rebuilt when the certificate or key file changes on disk."""

    def __init__(self, cert: str, key: str) -> None:
        self.cert = cert
        self.key = key
        self._lock = threading.Lock()
        self._stamp = self._read_stamp()
        self._context = self._build()  # a broken pair fails start-up, loudly
        self._checked = time.monotonic()

    def _read_stamp(self) -> Tuple[Tuple[int, int, int], ...]:
        stamps = []
        for path in (self.cert, self.key):
            st = os.stat(path)
            stamps.append((st.st_mtime_ns, st.st_ino, st.st_size))
        return tuple(stamps)

    def _build(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert, self.key)
        return context

    def context(self) -> ssl.SSLContext:
        now = time.monotonic()
        if now - self._checked < RELOAD_CHECK_SECONDS:
            return self._context
        with self._lock:
            if now - self._checked >= RELOAD_CHECK_SECONDS:
                self._checked = now
                self._reload()
        return self._context

    def _reload(self) -> None:
        try:
            stamp = self._read_stamp()
            if stamp != self._stamp:
                self._context = self._build()
                self._stamp = stamp
                LOG.info(_line("tls_reloaded", cert=self.cert))
        except (OSError, ssl.SSLError) as exc:  # mid-rotation: keep serving the previous pair
            LOG.warning(_line("tls_reload_failed", error=str(exc)))


def _line(event: str, **fields: Any) -> str:
    """Log lines are single JSON objects: log collectors parse them, people grep them."""
    return json.dumps({"event": event, **fields}, sort_keys=True, default=str)


class _BodyBudget:
    """Bytes held at once, shared by connections: a request takes what it needs and gives it
    back when done, so concurrent large bodies wait instead of adding up.  Every wait ends by
    the waiter's deadline."""

    def __init__(self, total: int) -> None:
        self._free = total
        self._cond = threading.Condition()

    def acquire(self, size: int, timeout: float) -> bool:
        with self._cond:
            if not self._cond.wait_for(lambda: self._free >= size, max(0.0, timeout)):
                return False
            self._free -= size
            return True

    def release(self, size: int) -> None:
        with self._cond:
            self._free += size
            self._cond.notify_all()


class _BodyCharge:
    """The bytes one body holds, charged as they arrive: the first ``free`` are the
    connection's own, the rest come from ``pool``.  Declaring a length costs nothing."""

    def __init__(self, pool: _BodyBudget, free: int) -> None:
        self.pool = pool
        self.free = free
        self.held = 0
        self.taken = 0  # of ``held``, from the pool

    def add(self, size: int, deadline: float) -> bool:
        """Charge ``size`` more bytes; False if the pool cannot give them by ``deadline``."""
        need = max(0, self.held + size - self.free) - self.taken
        if need and not self.pool.acquire(need, deadline - time.monotonic()):
            return False
        self.taken += need
        self.held += size
        return True

    def release(self) -> None:
        self.pool.release(self.taken)
        self.held = self.taken = 0


class Connections:
    """The connections being served (a thread each), at most ``limit`` at once.

    An idle connection (in its TLS handshake, or waiting for a request) costs a thread and
    ~60 KB while doing nothing, and anyone can open thousands.  Above ``limit - spare`` each new
    connection closes two others that have been doing nothing for ``SLOW_SECONDS``: first those
    that never sent a request, oldest first (a client that connects and waits), then those still
    sending a request, longest first (the API server sends its request at once), then kept-alive
    ones, longest idle first (the API server reconnects in milliseconds).  A connection whose
    request has arrived, or that is younger, busier or faster than that, is never closed: the
    API server's are.  At ``limit``, the accept loop waits up to ``SLOW_SECONDS`` for a slot
    (connections waiting in the listen backlog keep their order meanwhile, and the ones just
    accepted grow old enough to close); a connection still without one is closed at once.
    """

    def __init__(self, limit: int, spare: int) -> None:
        self.limit = limit
        self.spare = spare
        self.count = 0
        self.shed = {"idle_closed": 0, "refused": 0}  # since the last log line
        self._lock = threading.Lock()
        self._freed = threading.Condition(self._lock)
        # socket -> since when, oldest first, for each state a connection can be closed in
        self._fresh: OrderedDict = OrderedDict()  # never sent a request
        self._receiving: OrderedDict = OrderedDict()  # a request started, not yet whole
        self._kept: OrderedDict = OrderedDict()  # idle between requests
        self._logged = float("-inf")

    def make_room(self) -> None:
        """Before accepting: above ``limit - spare`` close up to two connections doing nothing;
        at ``limit``, wait up to ``SLOW_SECONDS`` for one to end."""
        deadline = time.monotonic() + SLOW_SECONDS
        with self._lock:
            while True:
                if self.count >= self.limit - self.spare:
                    for _ in range(2):
                        self._close_idle()
                left = deadline - time.monotonic()
                if self.count < self.limit or left <= 0:
                    return
                self._freed.wait(min(left, 0.02))  # a closed one ends, or an idle one ages

    def open(self, sock: socket.socket) -> bool:
        """Count a new connection in; False when it must be closed instead."""
        with self._lock:
            accepted = self.count < self.limit
            if accepted:
                self.count += 1
                self._fresh[sock] = time.monotonic()
            else:
                self.shed["refused"] += 1
        self._report()
        return accepted

    def _close_idle(self) -> None:
        """Shut the longest-idle connection down; its thread wakes up and ends it.  Under the
        lock: ``close`` removes a socket before it is closed, so its descriptor is never reused
        while it can still be picked here."""
        slow = time.monotonic() - SLOW_SECONDS
        for state in (self._fresh, self._receiving, self._kept):
            if state and next(iter(state.values())) < slow:
                sock, _ = state.popitem(last=False)
                try:  # the socket's own shutdown, not TLS's: another thread may be reading it
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)
                except OSError:
                    pass
                self.shed["idle_closed"] += 1
                return

    def receiving(self, sock: socket.socket) -> bool:
        """The connection started a request; False if it was closed as idle just before."""
        with self._lock:
            for idle in (self._fresh, self._kept):
                if sock in idle:
                    del idle[sock]
                    self._receiving[sock] = time.monotonic()
                    return True
            return False

    def working(self, sock: socket.socket) -> None:
        """The request has arrived whole: from now on the connection is not closed."""
        with self._lock:
            self._receiving.pop(sock, None)

    def idle(self, sock: socket.socket) -> None:
        with self._lock:
            self._kept[sock] = time.monotonic()

    def close(self, sock: socket.socket) -> None:
        with self._lock:
            for state in (self._fresh, self._kept, self._receiving):
                state.pop(sock, None)
            self.count -= 1
            self._freed.notify()

    def _report(self) -> None:
        """One line at most every _SHED_LOG_SECONDS while connections are being shed."""
        now = time.monotonic()
        if not any(self.shed.values()) or now - self._logged < _SHED_LOG_SECONDS:
            return
        with self._lock:
            shed, self.shed = self.shed, {"idle_closed": 0, "refused": 0}
            self._logged = now
            count = self.count
        LOG.warning(_line("connections_shed", open=count, limit=self.limit, **shed))


class WebhookServer(ThreadingHTTPServer):
    """One thread per connection, at most ``MAX_CONNECTIONS``; TLS is wrapped per connection
    with the current certificate."""

    daemon_threads = True
    request_queue_size = 1024  # a flood of connections must not crowd the API server's out

    def __init__(self, address: Tuple[str, int], settings: admission.Settings,
                 tls: TLSFiles) -> None:
        self.settings = settings
        self.tls = tls
        self.body_pool = _BodyBudget(_BODY_POOL)
        self.decode_budget = _BodyBudget(DECODE_BUDGET)
        self.connections = Connections(MAX_CONNECTIONS, SPARE_CONNECTIONS)
        host = address[0]
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host name (a DNS query that can hang in a cluster
        # without reverse DNS); nothing here needs it.
        if self.address_family == socket.AF_INET6:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # also IPv4
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]

    def get_request(self) -> Tuple[socket.socket, Any]:
        self.connections.make_room()
        sock, address = self.socket.accept()
        try:
            # Answers are small and single: never let Nagle wait for the client's delayed ACK.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            wrapped = self.tls.context().wrap_socket(sock, server_side=True,
                                                     do_handshake_on_connect=False)
        except (OSError, ssl.SSLError):
            sock.close()
            raise
        return wrapped, address

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.connections.open(request):
            request.close()
            return
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        self.connections.close(request)
        super().shutdown_request(request)

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(_HANDSHAKE_TIMEOUT)  # for the whole handshake, not per read
        try:
            request.do_handshake()
        except (OSError, ssl.SSLError) as exc:
            LOG.debug(_line("tls_handshake_failed", client=client_address[0], error=str(exc)))
            return
        super().finish_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """One line instead of socketserver's traceback; a client that went away is routine."""
        exc = sys.exc_info()[1]
        routine = isinstance(exc, (ConnectionError, ssl.SSLEOFError, TimeoutError, socket.timeout))
        LOG.log(logging.DEBUG if routine else logging.WARNING,
                _line("connection_error", client=client_address[0],
                      error=f"{type(exc).__name__}: {exc}"))

    def admit(self, body: Union[bytes, bytearray]) -> Tuple[int, Dict[str, Any]]:
        """HTTP status and JSON reply for one review; logs the decision."""
        started = time.perf_counter()
        try:
            reply, outcome = admission.review(body, self.settings)
        except admission.BadReview as exc:
            LOG.warning(_line("bad_review", error=str(exc)))
            return 400, {"error": str(exc)}
        fields: Dict[str, Any] = {"pod": outcome.pod, "uid": outcome.uid,
                                  "decision": outcome.decision,
                                  "ms": round((time.perf_counter() - started) * 1000, 2)}
        if outcome.injected:
            fields["injected"] = outcome.injected
        if outcome.skipped:
            fields["skipped"] = outcome.skipped
        if outcome.agent:
            fields["agent"] = outcome.agent
        if outcome.error:
            fields["error"] = outcome.error
            LOG.warning(_line("admission", **fields))
        else:
            LOG.info(_line("admission", **fields))
        return 200, reply


def _api_timeout(target: bytes) -> float:
    """The seconds the API server waits for this answer: its ``?timeout=`` (a Go duration such
    as ``5s``), or the default; at most ``_MAX_API_TIMEOUT``."""
    query = target.partition(b"?")[2].decode("latin-1")
    for pair in query.split("&"):
        name, _, value = pair.partition("=")
        if name != "timeout":
            continue
        parts = _DURATION.findall(value)
        if parts and "".join(number + unit for number, unit in parts) == value:
            seconds = sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts)
            return min(seconds, _MAX_API_TIMEOUT)
    return _DEFAULT_API_TIMEOUT


class _Head(NamedTuple):
    method: bytes
    target: bytes
    version: bytes
    headers: Dict[bytes, bytes]


class _Gone(Exception):
    """The client went away, stalled past a deadline, or its connection was closed as idle."""


class _Handler(socketserver.BaseRequestHandler):
    """HTTP/1.1 for exactly what calls the webhook: the API server (``POST /mutate`` with a
    Content-Length body, kept alive) and the kubelet's probes (``GET /healthz``).

    ``BaseHTTPRequestHandler`` parses every header block with the ``email`` package and formats
    a Date for every answer: a fifth of the CPU that an admission costs, and under the GIL that
    CPU is what a burst of pod creations waits for.  It also reads lines without a deadline for
    the whole head.  Anything this subset does not cover gets a 4xx answer and a closed
    connection.
    """

    request: ssl.SSLSocket
    server: WebhookServer

    def setup(self) -> None:
        self.buffer = bytearray()  # received, not yet used: the next request's bytes

    def handle(self) -> None:
        try:
            while self._serve_one():
                self.server.connections.idle(self.request)
        except _Gone:
            pass

    def _receive(self, deadline: float, size: int = _CHUNK) -> bytes:
        """Up to ``size`` bytes from the client before ``deadline``."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise _Gone()
        self.request.settimeout(left)
        try:
            data = self.request.recv(size)
        except OSError:  # timed out, reset, shut down as idle, or a TLS error
            raise _Gone() from None
        if not data:
            raise _Gone()
        return data

    def read1(self, size: int) -> bytes:
        """What ``httpbody.discard`` reads: buffered bytes first, then the socket."""
        if self.buffer:
            data = bytes(self.buffer[:size])
            del self.buffer[:size]
            return data
        return self.request.recv(size)

    def _serve_one(self) -> bool:
        """Answer one request; False when the connection is to be closed."""
        if not self.buffer:
            self.buffer += self._receive(time.monotonic() + _IDLE_TIMEOUT)
        if not self.server.connections.receiving(self.request):
            return False
        started = time.monotonic()
        receive_by = started + RECEIVE_SECONDS
        head = self._read_head(receive_by)
        if not isinstance(head, _Head):
            return self._send(*head, keep=False)
        method, target, version, headers = head
        keep = version == b"HTTP/1.1" and headers.get(b"connection", b"").lower() != b"close"
        if b"transfer-encoding" in headers:
            return self._send(411, {"error": "Content-Length required"}, keep=False)
        length = httpbody.content_length(headers.get(b"content-length", b"0"))
        if length is None:
            return self._send(400, {"error": "bad Content-Length"}, keep=False)
        if length > MAX_BODY:
            return self._refuse(413, f"body larger than {MAX_BODY} bytes", length)
        deadline = started + _api_timeout(target) * REPLY_SHARE
        charge = _BodyCharge(self.server.body_pool, _FREE_BODY)
        try:
            body = self._read_body(length, receive_by, deadline, charge)
            if body is None:
                charge.release()  # before the rest is drained, not after
                return self._refuse(503, "too many large requests at once", length)
            self.server.connections.working(self.request)
            status, payload, keep_ok = self._route(method, target, headers, body, deadline)
            del body  # the answer goes out without the body's memory
        finally:
            charge.release()
        return self._send(status, payload, keep=keep and keep_ok)

    def _route(self, method: bytes, target: bytes, headers: Dict[bytes, bytes],
               body: bytearray, deadline: float) -> Tuple[int, Any, bool]:
        """(status, payload, whether the connection may stay open) for a received request."""
        path = target.split(b"?", 1)[0]  # the API server calls /mutate?timeout=5s
        if method == b"POST" and path == b"/mutate":
            if b"content-length" not in headers:
                return 411, {"error": "Content-Length required"}, False
            return (*self._admit(body, deadline), True)
        if method == b"GET" and path in (b"/healthz", b"/readyz"):
            return 200, b"ok\n", True
        if method in (b"GET", b"POST"):
            return 404, {"error": "not found"}, True
        return 405, {"error": "method not allowed"}, True

    def _read_head(self, deadline: float) -> Union[_Head, Tuple[int, Any]]:
        """The request's head, or (status, payload) for a head we refuse."""
        while True:
            ends = [(at, len(mark)) for mark in (b"\n\r\n", b"\n\n")
                    for at in (self.buffer.find(mark),) if at >= 0]
            if ends:
                at, mark = min(ends)
                head = bytes(self.buffer[:at])
                del self.buffer[:at + mark]
                break
            if len(self.buffer) > _MAX_HEAD:
                first = self.buffer.find(b"\n")
                if first < 0 or first > MAX_LINE:
                    return 400, {"error": "bad request line"}
                return 431, {"error": "request header fields too large"}
            self.buffer += self._receive(deadline)
        lines = [line[:-1] if line.endswith(b"\r") else line for line in head.split(b"\n")]
        parts = lines[0].split()
        if len(lines[0]) > MAX_LINE or len(parts) != 3 or parts[2] not in (b"HTTP/1.1",
                                                                            b"HTTP/1.0"):
            return 400, {"error": "bad request line"}
        headers: Dict[bytes, bytes] = {}
        for field in lines[1:_MAX_HEADERS + 1]:
            name, colon, value = field.partition(b":")
            if not colon or len(field) > MAX_LINE:
                return 400, {"error": "bad header"}
            headers[name.strip().lower()] = value.strip()
        if len(lines) > _MAX_HEADERS + 1:
            return 431, {"error": "too many headers"}
        return _Head(parts[0], parts[1], parts[2], headers)

    def _read_body(self, length: int, receive_by: float, deadline: float,
                   charge: _BodyCharge) -> Optional[bytearray]:
        """``length`` bytes charged as they arrive; None when the pool had no room for them by
        ``deadline``.  Raises ``_Gone`` when the client is slower than ``receive_by`` (time
        spent waiting for the pool is ours, not the client's) or than ``deadline``."""
        body = bytearray()
        while len(body) < length:
            if self.buffer:
                data = bytes(self.buffer[:length - len(body)])
                del self.buffer[:len(data)]
            else:
                data = self._receive(min(receive_by, deadline), min(_CHUNK, length - len(body)))
            waiting = time.monotonic()
            if not charge.add(len(data), deadline):
                return None
            receive_by += time.monotonic() - waiting
            body += data
        return body

    def _admit(self, body: bytearray, deadline: float) -> Tuple[int, Any]:
        """Decode and decide within the decode budget, held only while the CPU works."""
        if not self.server.decode_budget.acquire(len(body), deadline - time.monotonic()):
            LOG.warning(_line("body_refused", status=503, error="decode budget busy",
                              bytes=len(body), client=self.client_address[0]))
            return 503, {"error": "too many large requests at once"}
        try:
            return self.server.admit(body)
        except Exception as exc:  # the last line of defence: still answer, still admit
            LOG.error(_line("internal_error", error=f"{type(exc).__name__}: {exc}"))
            return _fallback(body)
        finally:
            self.server.decode_budget.release(len(body))

    def _refuse(self, status: int, error: str, length: int) -> bool:
        """Answer without reading (the rest of) the body, say so in the log, and close once the
        client has had the chance to read the answer (see ``httpbody``)."""
        LOG.warning(_line("body_refused", status=status, error=error, bytes=length,
                          client=self.client_address[0]))
        self._send(status, {"error": error}, keep=False)
        httpbody.discard(self.request, self, length)  # type: ignore[arg-type]
        return False

    def _send(self, status: int, payload: Any, keep: bool) -> bool:
        """One write per answer (one TLS record); returns ``keep`` for the request loop."""
        if isinstance(payload, bytes):
            body, content_type = payload, b"text/plain"
        else:
            body = json.dumps(payload, separators=(",", ":")).encode()
            content_type = b"application/json"
        head = b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s\r\n" % (
            status, HTTPStatus(status).phrase.encode(), content_type, len(body),
            b"" if keep else b"Connection: close\r\n")
        self.request.settimeout(_WRITE_SECONDS)  # a client that does not read holds no thread
        try:
            self.request.sendall(head + body)
        except OSError:
            raise _Gone() from None
        return keep


def _fallback(body: Union[bytes, bytearray]) -> Tuple[int, Dict[str, Any]]:
    """Admit unchanged when answering failed in an unforeseen way; 400 without a uid."""
    try:
        uid = json.loads(body)["request"]["uid"]
    except Exception:
        return 400, {"error": "internal error"}
    return 200, {"apiVersion": admission.REVIEW_API_VERSION, "kind": "AdmissionReview",
                 "response": {"uid": uid, "allowed": True}}


def _load_settings(path: Optional[str], image: Optional[str]) -> admission.Settings:
    """The chart's config file; ``--image`` alone is enough for a quick local run."""
    data: Dict[str, Any] = {}
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError) as exc:
            raise admission.SettingsError(f"cannot read {path}: {exc}")
        if not isinstance(data, dict):
            raise admission.SettingsError(f"{path}: the configuration must be a JSON object")
    if image:
        data = {**data, "image": image}
    return admission.Settings.from_mapping(data)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="primus-lens webhook",
        description="Mutating admission webhook that mounts the injector into selected pods.")
    parser.add_argument("--port", type=int, default=8443, help="HTTPS port (default 8443)")
    parser.add_argument("--host", default="::",
                        help="address to listen on (default :: = every IPv6 and IPv4 address)")
    parser.add_argument("--tls-cert", required=True, help="PEM certificate (chain) file")
    parser.add_argument("--tls-key", required=True, help="PEM private key file")
    parser.add_argument("--config", help="JSON settings written by the Helm chart")
    parser.add_argument("--image", help="injector image for the init container (overrides --config)")
    parser.add_argument("--shutdown-delay", type=float, default=5.0,
                        help="seconds to keep serving after SIGTERM (default 5)")
    parser.add_argument("--log-level", default="info",
                        choices=("debug", "info", "warning", "error"))
    return parser


def serve(server: WebhookServer, shutdown_delay: float) -> None:
    """Serve until SIGTERM/SIGINT, then keep answering for ``shutdown_delay`` seconds.

    The API server learns that this pod is going away only after the kubelet has signalled it;
    admissions sent meanwhile would fail and, with failurePolicy Ignore, admit pods uninjected.
    """
    def stop_later() -> None:
        time.sleep(shutdown_delay)
        server.shutdown()

    def stop(signum: int, frame: Any) -> None:
        LOG.info(_line("stopping", signal=signum, delay_s=shutdown_delay))
        threading.Thread(target=stop_later, daemon=True).start()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()


def listen(host: str, port: int, settings: admission.Settings, tls: TLSFiles) -> WebhookServer:
    """Bind ``host``; the default ``::`` falls back to IPv4 where IPv6 is disabled."""
    try:
        return WebhookServer((host, port), settings, tls)
    except OSError:
        if host != "::":
            raise
    return WebhookServer(("0.0.0.0", port), settings, tls)


class _LineHandler(logging.Handler):
    """One ``os.write`` per record, without the handler lock.

    Every admission logs a line.  ``StreamHandler`` holds a lock while it writes and flushes;
    under a burst of 50 the request threads queue on that lock (each write releases the GIL) and
    the queue becomes the tail latency.  A single write of a line shorter than PIPE_BUF is atomic
    on the container's stderr pipe, so lines never interleave and no lock is needed.
    """

    def __init__(self, fd: int, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self.fd = fd

    def handle(self, record: logging.LogRecord) -> Any:
        accepted = self.filter(record)
        if accepted:
            self.emit(record)
        return accepted

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = memoryview((self.format(record) + "\n").encode("utf-8", "replace"))
            while data:
                data = data[os.write(self.fd, data):]
        except Exception:
            self.handleError(record)


def _keep_heap_small() -> None:
    """Fix glibc's mmap threshold, so that every buffer of ``_MMAP_THRESHOLD`` bytes or more gets
    a mapping of its own, returned to the system when freed.

    glibc raises the threshold each time such a buffer is freed (up to 32 MiB); after that,
    bodies and decoded strings of a few MiB come from the heap and fragment it.  Under a
    sustained flood of 3 MiB reviews plus 240 clients holding body shares the process crept
    from 160 MiB to 255 MiB in 90 s; with the threshold fixed it stays near 160 MiB.  Where the
    C library has no ``mallopt`` (musl, macOS) nothing changes.
    """
    m_mmap_threshold = -3  # glibc's malloc.h
    try:
        ctypes.CDLL(None).mallopt(m_mmap_threshold, _MMAP_THRESHOLD)
    except (OSError, AttributeError):
        pass


def main(argv: List[str], known_env: AbstractSet[str]) -> int:
    """Run the server; ``known_env``: the variables the injector reads (``primus-lens webhook``
    passes them from the injector's config, which this stdlib-only product does not import)."""
    args = _parser().parse_args(argv)
    handler = _LineHandler(sys.stderr.fileno())
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger()
    root.setLevel(args.log_level.upper())
    root.addHandler(handler)
    return _run(args, known_env)


def _run(args: argparse.Namespace, known_env: AbstractSet[str]) -> int:
    try:
        settings = _load_settings(args.config, args.image)
        tls = TLSFiles(args.tls_cert, args.tls_key)
    except admission.SettingsError as exc:
        print(f"primus-lens webhook: {exc}", file=sys.stderr)
        return 2
    except (OSError, ssl.SSLError) as exc:
        print(f"primus-lens webhook: cannot load the TLS certificate/key: {exc}", file=sys.stderr)
        return 2
    for name in admission.unknown_env_names(settings, known_env):
        LOG.warning(_line("unknown_env", name=name,
                          note="not a variable this version of the injector reads"))
    try:
        server = listen(args.host, args.port, settings, tls)
    except OSError as exc:
        print(f"primus-lens webhook: cannot listen on {args.host}:{args.port}: {exc}",
              file=sys.stderr)
        return 2
    LOG.info(_line("listening", address=server.server_name, port=server.server_port,
                   image=settings.image, mount=settings.mount_dir))
    _keep_heap_small()
    gc.freeze()  # what start-up made lives forever: a full collection mid-burst then costs ~0
    serve(server, args.shutdown_delay)
    return 0
