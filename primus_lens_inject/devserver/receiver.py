"""The built-in receiver: a development stand-in for the Lens telemetry-processor.

``primus-lens receive`` (or :class:`Receiver` inside a test) serves the four ``POST /v1/wandb/...``
endpoints the way the real server does (``docs/server-contract.md``): Go's decoding strictness
(see :mod:`godecode`), identity resolution, the response envelope and status codes, batch
semantics, gin's 404 and trailing-slash 307.  The demo and the tests need exactly that: a client
bug that production answers with 400 must show up here too, and a response the client relies on
must look the same byte for byte.

What it accepts goes to SQLite, one row per log entry, metric point and detection body, so a test
can prove that every row arrived exactly once; every raw request body is kept with its status, so
a test can search all received bytes for leaked secrets.  Read endpoints under ``/v1/_receiver/``
show what arrived, and faults (delay, 5xx, "no valid workload found", garbage answers) can be
switched on from the command line or at run time to exercise the client's retry paths.

With ``layout`` (``primus-lens receive --layout``) it answers as one of primus-robust's layouts
instead (:data:`LAYOUTS`): the routes under ``/api/v1`` and the probes ``/healthz``/``/readyz``;
robust 1.0.6's ``robust-analyzer`` worker, which answers its probes and 404s every API route; and
the logging add-on's robust-api on an empty database, which answers every write with 500.  The
injector's handling of each is tested against real processes this way.

With ``otlp=True`` (``primus-lens receive --otlp``) the same port also serves ``POST /v1/metrics``,
the OTLP/HTTP metrics path under the endpoint :attr:`Receiver.otlp_endpoint` (the path the
OpenTelemetry exporters append; no Lens route uses it).  Its data points go to an ``otlp`` table
beside the Lens rows.

This module routes and decides; the rest sits beside it: the request structs (``schema``), the
answers (``responses``), ``faults``, the SQLite ``store``, the HTTP transport (``server``), the
OTLP decoding and answers (``otlp``, over the wire format reader ``protowire``) and the command
(``cli``).
"""

from __future__ import annotations

import inspect
import json
import threading
import time
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Union
from urllib.parse import parse_qsl

from . import godecode, otlp
from .faults import OTLP, Faults, FaultState
from .godecode import GoDecodeError
from .responses import Part, Response, control_json, envelope, garbage, not_found, plain
from .schema import BATCH, ENDPOINTS, ROUTES, Accepted, Endpoint, RequestRow
from .server import Server
from .store import Store

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8989
_CONTROL_PREFIX = "/v1/_receiver/"
_ROBUST_PREFIX = "/api"  # robust serves the Lens route group under /api/v1
_PROBES = ("/healthz", "/readyz")
# How the receiver answers (docs/receiver.md, "Layouts"):
LAYOUTS = {
    "lens": "Lens's telemetry-processor: the routes under /v1, no probes",
    "robust": "robust-api (robust 1.0.6 and later) or robust 1.0.0's single binary: the routes "
              "under /api/v1, /healthz and /readyz",
    "robust-worker": "robust 1.0.6's robust-analyzer, a background worker: /healthz and /readyz "
                     "answer 200, every API route 404",
    "robust-empty-db": "robust-api of the primus-robust-logging add-on, on a database without "
                       "tables: routes under /api/v1, every write answers 500",
}
_EMPTY_DB_ERROR = 'ERROR: relation "training_performance" does not exist (SQLSTATE 42P01)'

_PodTable = Union[Mapping[str, Optional[Sequence[str]]], Iterable[str]]


def _default_workload(pod_name: str) -> str:
    """The workload UID a pod resolves to when no table says otherwise."""
    return f"wl-{pod_name}"


class Receiver:
    """The receiver in this process: serves on a background thread, answers queries directly.

    ``pods``: None resolves every pod name to its own workload (:func:`_default_workload`); a list
    of names or a mapping ``{pod: [workload UID, ...]}`` is the whole pod cache, so other pods get
    "no valid workload found" and a pod with several UIDs is processed once per workload.
    ``faults``: settings of :class:`Faults`.  ``otlp``: also accept OTLP/HTTP metrics.
    ``layout``: which server to answer as, one of :data:`LAYOUTS`.
    """

    def __init__(self, host: str = DEFAULT_HOST, port: int = 0, db: str = ":memory:",
                 pods: Optional[_PodTable] = None, faults: Optional[Mapping[str, Any]] = None,
                 verbose: bool = False, otlp: bool = False, layout: str = "lens") -> None:
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, not {layout!r}")
        self.host = host
        self.otlp = otlp
        self.layout = layout
        self._port = port
        self._pods = None if pods is None else _pod_cache(pods)
        self._faults = FaultState(Faults.from_mapping(faults or {}))
        self._verbose = verbose
        self._store = Store(db)
        self._stopping = threading.Event()
        self._delayed = 0  # requests now waiting out a fault delay
        self._delayed_lock = threading.Lock()
        self._server: Optional[Server] = None
        self._thread: Optional[threading.Thread] = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> int:
        """Bind and serve on a background thread; returns the port (useful with port 0)."""
        self._stopping.clear()
        self._server = Server((self.host, self._port), self, self._verbose)
        self._port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="primus-lens-receiver", daemon=True)
        self._thread.start()
        return self._port

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving: no new connections, idle ones closed, requests in progress answered
        (a fault delay is cut short) for up to ``timeout`` seconds.  The data stays queryable."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self._stopping.set()
        server.shutdown()
        server.server_close()
        server.connections.close_all(timeout)
        thread.join(timeout)
        self._server = self._thread = None

    def close(self) -> None:
        """Stop and close the database (an in-memory one is gone afterwards)."""
        self.stop()
        self._store.close()

    def __enter__(self) -> Receiver:
        self.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        """The base URL a client is configured with, ending in ``/v1`` (``/api/v1`` when the
        layout is robust's)."""
        return f"{self.otlp_endpoint}{self._prefix}/v1"

    @property
    def _prefix(self) -> str:
        return "" if self.layout == "lens" else _ROBUST_PREFIX

    @property
    def otlp_endpoint(self) -> str:
        """``http://host:port``: the value for ``OTEL_EXPORTER_OTLP_ENDPOINT`` (an OTLP client
        appends ``/v1/metrics``); the Lens base URL is this plus ``/v1``."""
        host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        return f"http://{f'[{host}]' if ':' in host else host}:{self._port}"

    # -- what arrived --------------------------------------------------------------------------

    def logs(self, run_id: Optional[str] = None, pod: Optional[str] = None,
             workload: Optional[str] = None) -> List[Dict[str, Any]]:
        """Accepted ``logs[]`` entries, one per entry and workload, oldest first."""
        return self._store.select("logs", {"run_id": run_id, "pod": pod, "workload": workload})

    def metrics(self, run_id: Optional[str] = None, pod: Optional[str] = None,
                workload: Optional[str] = None, name: Optional[str] = None) -> List[Dict[str, Any]]:
        """Accepted ``metrics[]`` points, one per point and workload, oldest first."""
        filters = {"run_id": run_id, "pod": pod, "workload": workload, "name": name}
        return self._store.select("metrics", filters)

    def detections(self, pod: Optional[str] = None, workload: Optional[str] = None) -> List[Dict[str, Any]]:
        """Accepted detection bodies (as decoded), one per request and workload, oldest first."""
        return self._store.select("detections", {"pod": pod, "workload": workload})

    def steps(self, workload: Optional[str] = None) -> List[Dict[str, Any]]:
        """The server's merged per-step view (``training_performance``), by workload and iteration."""
        return self._store.select("steps", {"workload": workload}, order="workload, iteration")

    def otlp_points(self, name: Optional[str] = None, kind: Optional[str] = None) -> List[Dict[str, Any]]:
        """Accepted OTLP number data points, one row per point, oldest first."""
        return self._store.select("otlp", {"name": name, "kind": kind})

    def requests(self, path: Optional[str] = None, status: Optional[int] = None) -> List[Dict[str, Any]]:
        """Every request to a non-control path, accepted or not, with its raw body and outcome."""
        return self._store.select("requests", {"path": path, "status": status})

    def raw_bodies(self) -> List[bytes]:
        """Every body received, for searching all received bytes (e.g. for leaked secrets)."""
        return [row["body"] for row in self.requests()]

    def stats(self) -> Dict[str, Any]:
        """Request counts by path and status, and row counts per table."""
        return self._store.stats()

    def delayed(self) -> int:
        """How many requests are waiting out a fault delay now: the event a test waits for
        before it stops the receiver under a request in progress (instead of sleeping)."""
        with self._delayed_lock:
            return self._delayed

    def reset(self) -> None:
        """Forget everything stored (the faults stay)."""
        self._store.reset()

    @property
    def faults(self) -> Dict[str, Any]:
        return self._faults.faults.to_json()

    def set_faults(self, **settings: Any) -> Dict[str, Any]:
        """Replace all faults (no arguments: none); returns the faults now in effect."""
        self._faults.set(Faults.from_mapping(settings))
        return self.faults

    # -- one HTTP exchange ---------------------------------------------------------------------

    def handle(self, method: str, target: str, headers: Mapping[str, str], body: bytes,
               client_gone: Callable[[], bool]) -> Response:
        """Answer one request, transport aside; record it unless it is a control request.
        ``headers``: by lower-case name."""
        path, _, query = target.partition("?")
        for prefix in {_CONTROL_PREFIX, self._prefix + _CONTROL_PREFIX}:
            if path.startswith(prefix):
                return self._control(method, path[len(prefix):], query, body)
        received = time.time()
        accepted = Accepted()
        response = self._answer(method, path, query, headers, body, accepted, client_gone)
        self._store.commit(RequestRow(received, method, path, response.status, response.note,
                                       response.detail, body), accepted)
        return response

    def _answer(self, method: str, path: str, query: str, headers: Mapping[str, str], body: bytes,
                accepted: Accepted, client_gone: Callable[[], bool]) -> Response:
        if self.layout != "lens" and path in _PROBES:
            return plain(200, "ok") if method in ("GET", "HEAD") else not_found()
        if self.layout == "robust-worker":
            return not_found()  # "all HTTP routes are served by the api service"
        local = self._local(path)
        route = ROUTES.get(local)
        if self.otlp and path == otlp.PATH:
            if method != "POST":
                return Response(405, b"405 method not allowed, supported: [POST]", "text/plain",
                                (("Allow", "POST"),), note="405 method not allowed")
            route = OTLP
        if route is None or method != "POST":
            if method == "POST" and local.endswith("/") and local[:-1] in ROUTES:  # gin's trailing slash
                location = path[:-1] + (f"?{query}" if query else "")
                return Response(307, headers=(("Location", location),), note="307 redirect")
            return not_found()
        delay = self._faults.delay()
        if delay > 0 and not self._wait_out(delay, client_gone):  # its context is cancelled
            return Response(499, note="client closed the connection during the delay", send=False)
        if self._faults.garbage():
            return garbage(self._faults.faults.garbage_status)
        if route == OTLP:
            return self._export(headers, body, accepted)
        try:
            request = godecode.decode_body(body, BATCH if route == "batch" else ENDPOINTS[route].request)
        except GoDecodeError as exc:
            response = envelope(400, "invalid request format")
            response.detail = str(exc)
            return response
        if route == "batch":
            return self._batch(request, accepted)
        return self._single(ENDPOINTS[route], request, accepted)

    def _wait_out(self, delay: float, client_gone: Callable[[], bool]) -> bool:
        """The fault delay, counted in ``delayed`` while it lasts; stopping cuts it short.  False
        as soon as the client has gone (it gave up waiting), as a Go handler's context ends."""
        with self._delayed_lock:
            self._delayed += 1
        deadline = time.monotonic() + delay
        try:
            while not self._stopping.wait(max(0.0, min(deadline - time.monotonic(), 0.05))):
                if client_gone():
                    return False
                if time.monotonic() >= deadline:
                    break
            return not client_gone()
        finally:
            with self._delayed_lock:
                self._delayed -= 1

    def _local(self, path: str) -> str:
        """``path`` as the Lens routes name it (``/v1/...``); "" where this layout has none."""
        if not self._prefix:
            return path
        return path[len(self._prefix):] if path.startswith(self._prefix + "/v1/") else ""

    def _export(self, headers: Mapping[str, str], body: bytes, accepted: Accepted) -> Response:
        """``POST /v1/metrics``: the OTLP/HTTP answers (spec: status codes and partial success),
        after the faults of a proxy in front of it (a body limit, HTML pages with 200)."""
        if self._faults.too_large(len(body)):
            return plain(413, "413 Request Entity Too Large")
        if self._faults.otlp_html():
            return garbage(200)
        encoding = otlp.encoding_of(headers.get("content-type", ""))
        if encoding is None:
            return plain(415, f"415 unsupported media type, supported: [{otlp.JSON}, {otlp.PROTOBUF}]")
        if self._faults.fails(OTLP):
            faults = self._faults.faults
            wait = faults.otlp_retry_after
            retry = () if wait is None else (("Retry-After", str(wait)),)
            return otlp.failure(encoding, faults.otlp_fail_status, "receiver fault injection", retry)
        try:
            request = otlp.decode(encoding, otlp.unpack(headers.get("content-encoding", ""), body))
        except otlp.BadRequest as exc:
            return otlp.failure(encoding, 400, str(exc))
        export = otlp.read(request, self._faults.rejects_point)
        accepted.otlp.extend(export.rows)
        return otlp.success(encoding, export)

    def _single(self, endpoint: Endpoint, request: Dict[str, Any], accepted: Accepted) -> Response:
        if not request["workload_uid"] and not request["pod_name"]:
            return envelope(400, "either workload_uid or pod_name is required")
        part = self._process(endpoint, request, accepted)
        if part.workloads == 0:
            return envelope(400, "no valid workload found")
        if part.succeeded == 0:
            response = envelope(500, f"failed to process {endpoint.name}", {})
            response.detail = part.error
            return response
        return envelope(200, "OK", {**part.counts(), "message": endpoint.ok_message})

    def _batch(self, request: Dict[str, Any], accepted: Accepted) -> Response:
        """Spec §7: parts in order detection, metrics, logs; no identity pre-check; always 200."""
        results = {name: self._process(endpoint, request[name], accepted).batch_result()
                   for name, endpoint in ENDPOINTS.items() if request[name] is not None}
        return envelope(200, "OK", {"results": results, "success": True})

    def _process(self, endpoint: Endpoint, request: Dict[str, Any], accepted: Accepted) -> Part:
        items = (request[endpoint.items] or []) if endpoint.items else None
        count = None if items is None else len(items)
        workloads = self._resolve(request["workload_uid"], request["pod_name"])
        if not workloads:
            return Part(0, 0, count, "no valid workload found")
        if self.layout == "robust-empty-db":  # the write finds no table
            return Part(len(workloads), 0, count, _EMPTY_DB_ERROR)
        if self._faults.fails(endpoint.name):
            steps = len({item["step"] for item in items or []})
            return Part(len(workloads), 0, count, endpoint.failure.format(steps=steps))
        for workload in workloads:
            endpoint.accept(accepted, workload, request)
        return Part(len(workloads), len(workloads), count)

    def _resolve(self, workload_uid: str, pod_name: str) -> List[str]:
        """Spec §2: a workload UID is used verbatim; a pod name goes through the pod cache, which
        the no-workload fault empties."""
        if workload_uid:
            return [workload_uid]
        if not pod_name or self._faults.hides_workloads():
            return []
        if self._pods is None:
            return [_default_workload(pod_name)]
        return self._pods.get(pod_name, [])

    def _control(self, method: str, name: str, query: str, body: bytes) -> Response:
        """``/v1/_receiver/...``: plain JSON reads of what arrived, and the fault switch."""
        queries: Dict[str, Callable[..., Any]] = {
            "logs": self.logs, "metrics": self.metrics, "detections": self.detections,
            "steps": self.steps, "requests": self.requests, "otlp": self.otlp_points}
        if method == "GET" and name in queries:
            params = dict(parse_qsl(query, keep_blank_values=True))
            allowed = inspect.signature(queries[name]).parameters
            unknown = sorted(set(params) - set(allowed))
            if unknown:
                return control_json(400, {"error": f"unknown filter(s) {', '.join(unknown)}; "
                                                    f"known: {', '.join(allowed)}"})
            return control_json(200, {name: queries[name](**params)})
        if method == "GET" and name == "stats":
            return control_json(200, self.stats())
        if method == "GET" and name == "faults":
            return control_json(200, self.faults)
        if method == "GET" and name == "delayed":
            return control_json(200, {"delayed": self.delayed()})
        if method == "POST" and name == "faults":
            try:
                settings = json.loads(body or b"{}")
                if not isinstance(settings, dict):
                    raise ValueError("the body must be a JSON object of fault settings")
                self._faults.set(Faults.from_mapping(settings))
            except (ValueError, RecursionError) as exc:
                return control_json(400, {"error": str(exc)})
            return control_json(200, self.faults)
        if method == "POST" and name == "reset":
            self.reset()
            return control_json(200, self.stats())
        return not_found()


def _pod_cache(pods: _PodTable) -> Dict[str, List[str]]:
    if isinstance(pods, Mapping):
        return {pod: list(uids or ()) or [_default_workload(pod)] for pod, uids in pods.items()}
    return {pod: [_default_workload(pod)] for pod in pods}
