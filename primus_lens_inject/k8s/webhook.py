"""The Kubernetes mutating admission webhook: ``primus-lens webhook --port P --tls-cert F --tls-key F``.

A small HTTPS server on the standard library only, so the injector image needs nothing beyond
Python to run it.  ``POST /mutate`` answers AdmissionReview v1 (the decision itself lives in
``admission``); ``GET /healthz`` serves the probes.  Paths are matched without the query string,
because the API server calls ``/mutate?timeout=5s``.  The server never blocks a pod: whatever
goes wrong while answering, the reply admits the pod unchanged and the log says why.

TLS files are re-read when they change (cert-manager and the kubelet rotate the mounted Secret
in place), and the handshake runs in the connection's thread so one slow client cannot stall
the accept loop.

Memory is bounded whatever a client sends (the port answers anyone who reaches it): a body
above ``MAX_BODY`` is refused with 413 before it is read, and the bodies being read and decoded
at any moment hold at most ``BODY_BUDGET`` bytes together.  Decoding JSON costs up to about 35
bytes of memory per byte of input (a body of empty arrays), so the worst case stays near
150 MB, well inside the chart's 256 Mi limit.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import signal
import socket
import socketserver
import ssl
import sys
import threading
import time
from http import HTTPStatus
from http.server import ThreadingHTTPServer
from typing import AbstractSet, Any, Dict, List, Optional, Tuple

from .. import httpbody
from . import admission

LOG = logging.getLogger("primus_lens_inject.k8s.webhook")
# The API server refuses requests above 3 MiB itself and etcd stores objects up to 1.5 MiB, so a
# pod's AdmissionReview (the object once, for CREATE) is far below this.
MAX_BODY = 3 << 20
BODY_BUDGET = MAX_BODY  # bytes of bodies read or decoded at once, across connections
BUDGET_WAIT = 10.0  # seconds a request waits for its share, then 503 (the API server admits)
BODY_SECONDS = 10.0  # to receive a whole body: a trickling client cannot hold its share longer
HANDSHAKE_TIMEOUT = 10.0
IDLE_TIMEOUT = 120.0  # the API server keeps connections alive between admissions
MAX_LINE = 8192  # request line or one header
MAX_HEADERS = 100
RELOAD_CHECK_SECONDS = 5.0


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


class BodyBudget:
    """Bytes of request bodies held at once: a request takes its share before reading its body
    and gives it back after answering, so concurrent large bodies wait instead of adding up."""

    def __init__(self, total: int) -> None:
        self._free = total
        self._cond = threading.Condition()

    def acquire(self, size: int, timeout: float) -> bool:
        with self._cond:
            if not self._cond.wait_for(lambda: self._free >= size, timeout):
                return False
            self._free -= size
            return True

    def release(self, size: int) -> None:
        with self._cond:
            self._free += size
            self._cond.notify_all()


class WebhookServer(ThreadingHTTPServer):
    """One thread per connection; TLS is wrapped per connection with the current certificate."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: Tuple[str, int], settings: admission.Settings,
                 tls: TLSFiles) -> None:
        self.settings = settings
        self.tls = tls
        self.budget = BodyBudget(BODY_BUDGET)
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

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(HANDSHAKE_TIMEOUT)
        try:
            request.do_handshake()
        except (OSError, ssl.SSLError) as exc:
            LOG.debug(_line("tls_handshake_failed", client=client_address[0], error=str(exc)))
            return
        request.settimeout(None)
        super().finish_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """One line instead of socketserver's traceback; a client that went away is routine."""
        exc = sys.exc_info()[1]
        routine = isinstance(exc, (ConnectionError, ssl.SSLEOFError, TimeoutError))
        LOG.log(logging.DEBUG if routine else logging.WARNING,
                _line("connection_error", client=client_address[0],
                      error=f"{type(exc).__name__}: {exc}"))

    def admit(self, body: bytes) -> Tuple[int, Dict[str, Any]]:
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
        if outcome.error:
            fields["error"] = outcome.error
            LOG.warning(_line("admission", **fields))
        else:
            LOG.info(_line("admission", **fields))
        return 200, reply


class _Handler(socketserver.StreamRequestHandler):
    """HTTP/1.1 for exactly what calls the webhook: the API server (``POST /mutate`` with a
    Content-Length body, kept alive) and the kubelet's probes (``GET /healthz``).

    ``BaseHTTPRequestHandler`` parses every header block with the ``email`` package and formats
    a Date for every answer: a fifth of the CPU that an admission costs, and under the GIL that
    CPU is what a burst of pod creations waits for.  Anything this subset does not cover gets a
    4xx answer and a closed connection.
    """

    timeout = IDLE_TIMEOUT  # an idle keep-alive connection is closed after this
    server: WebhookServer

    def handle(self) -> None:
        while self._serve_one():
            pass

    def _serve_one(self) -> bool:
        """Answer one request; False when the connection is to be closed."""
        try:
            line = self.rfile.readline(MAX_LINE + 1)
        except socket.timeout:
            return False
        if not line:
            return False
        parts = line.split()
        if len(line) > MAX_LINE or len(parts) != 3 or parts[2] not in (b"HTTP/1.1", b"HTTP/1.0"):
            return self._send(400, {"error": "bad request line"}, keep=False)
        method, target, version = parts
        headers: Dict[bytes, bytes] = {}
        for _ in range(MAX_HEADERS):
            field = self.rfile.readline(MAX_LINE + 1)
            if not field:
                return False
            if field in (b"\r\n", b"\n"):
                break
            name, colon, value = field.partition(b":")
            if not colon or len(field) > MAX_LINE:
                return self._send(400, {"error": "bad header"}, keep=False)
            headers[name.strip().lower()] = value.strip()
        else:
            return self._send(431, {"error": "too many headers"}, keep=False)
        keep = version == b"HTTP/1.1" and headers.get(b"connection", b"").lower() != b"close"
        if b"transfer-encoding" in headers:
            return self._send(411, {"error": "Content-Length required"}, keep=False)
        length = httpbody.content_length(headers.get(b"content-length", b"0"))
        if length is None:
            return self._send(400, {"error": "bad Content-Length"}, keep=False)
        if length > MAX_BODY:
            return self._refuse(413, f"body larger than {MAX_BODY} bytes", length)
        if not self.server.budget.acquire(length, BUDGET_WAIT):
            return self._refuse(503, "too many large requests at once", length)
        try:
            return self._respond(method, target, headers, length, keep)
        finally:
            self.server.budget.release(length)

    def _respond(self, method: bytes, target: bytes, headers: Dict[bytes, bytes], length: int,
                 keep: bool) -> bool:
        """Read the body (its share of the budget is held) and answer the request."""
        body = self._read_body(length)
        if body is None:
            return False  # the client went away or stalled mid-body
        path = target.split(b"?", 1)[0]  # the API server calls /mutate?timeout=5s
        if method == b"POST" and path == b"/mutate":
            if b"content-length" not in headers:
                return self._send(411, {"error": "Content-Length required"}, keep=False)
            return self._send(*self._admit(body), keep=keep)
        if method == b"GET" and path in (b"/healthz", b"/readyz"):
            return self._send(200, b"ok\n", keep=keep)
        if method in (b"GET", b"POST"):
            return self._send(404, {"error": "not found"}, keep=keep)
        return self._send(405, {"error": "method not allowed"}, keep=keep)

    def _read_body(self, length: int) -> Optional[bytes]:
        """``length`` bytes within ``BODY_SECONDS``, or None."""
        if not length:
            return b""
        parts = []
        deadline = time.monotonic() + BODY_SECONDS
        try:
            while length:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.connection.settimeout(left)
                part = self.rfile.read1(length)
                if not part:
                    return None
                parts.append(part)
                length -= len(part)
        except OSError:  # timed out, reset, or a TLS error
            return None
        finally:
            self.connection.settimeout(self.timeout)
        return b"".join(parts)

    def _refuse(self, status: int, error: str, length: int) -> bool:
        """Answer without reading the body, say so in the log, and close once the client has
        had the chance to read the answer (see ``httpbody``)."""
        LOG.warning(_line("body_refused", status=status, error=error, bytes=length,
                          client=self.client_address[0]))
        self._send(status, {"error": error}, keep=False)
        httpbody.discard(self.connection, self.rfile, length)
        return False

    def _admit(self, body: bytes) -> Tuple[int, Dict[str, Any]]:
        try:
            return self.server.admit(body)
        except Exception as exc:  # the last line of defence: still answer, still admit
            LOG.error(_line("internal_error", error=f"{type(exc).__name__}: {exc}"))
            return _fallback(body)

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
        self.wfile.write(head + body)
        return keep


def _fallback(body: bytes) -> Tuple[int, Dict[str, Any]]:
    """Admit unchanged when answering failed in an unforeseen way; 400 without a uid."""
    try:
        uid = json.loads(body)["request"]["uid"]
    except Exception:
        return 400, {"error": "internal error"}
    return 200, {"apiVersion": admission.REVIEW_API_VERSION, "kind": "AdmissionReview",
                 "response": {"uid": uid, "allowed": True}}


def load_settings(path: Optional[str], image: Optional[str]) -> admission.Settings:
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


class LineHandler(logging.Handler):
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


def main(argv: List[str], known_env: AbstractSet[str]) -> int:
    """Run the server; ``known_env``: the variables the injector reads (``primus-lens webhook``
    passes them from the injector's config, which this stdlib-only product does not import)."""
    args = _parser().parse_args(argv)
    handler = LineHandler(sys.stderr.fileno())
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger()
    root.setLevel(args.log_level.upper())
    root.addHandler(handler)
    return _run(args, known_env)


def _run(args: argparse.Namespace, known_env: AbstractSet[str]) -> int:
    try:
        settings = load_settings(args.config, args.image)
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
    gc.freeze()  # what start-up made lives forever: a full collection mid-burst then costs ~0
    serve(server, args.shutdown_delay)
    return 0
