"""The built-in receiver: a development stand-in for the Lens telemetry-processor.

``primus-lens receive`` (or :class:`Receiver` inside a test) serves the four ``POST /v1/wandb/...``
endpoints the way the real server does (``spec/telemetry-api.md``): Go's decoding strictness
(see :mod:`godecode`), identity resolution, the response envelope and status codes, batch
semantics, gin's 404 and trailing-slash 307.  The demo and the tests need exactly that: a client
bug that production answers with 400 must show up here too, and a response the client relies on
must look the same byte for byte.

What it accepts goes to SQLite, one row per log entry, metric point and detection body, so a test
can prove that every row arrived exactly once; every raw request body is kept with its status, so
a test can search all received bytes for leaked secrets.  Read endpoints under ``/v1/_receiver/``
show what arrived, and faults (delay, 5xx, "no valid workload found", garbage answers) can be
switched on from the command line or at run time to exercise the client's retry paths.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import http
import inspect
import json
import math
import random
import re
import select
import signal
import socket
import sqlite3
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import (
    Any,
    Callable,
    Dict,
    Iterable,
    List,
    Mapping,
    NamedTuple,
    Optional,
    Sequence,
    Set,
    Tuple,
    Union,
)
from urllib.parse import parse_qsl

from . import godecode, httpbody
from .godecode import ANY, BOOL, FLOAT64, INT64, STRING, GoDecodeError, Map, Pointer, Slice, Struct

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8989
CONTROL_PREFIX = "/v1/_receiver/"
MAX_BODY = 16 << 20  # larger bodies get 413; the client keeps its requests under 1 MiB
MAX_TRAILER_LINES = 100
READY_LINE = "primus-lens receiver listening on {url}"

# --------------------------------------------------------------------------------------------
# The request bodies, as the server's Go structs declare them (spec §4-§7).

_STRINGS = Slice(STRING)
_NESTED = Map(Map(ANY))
_BUILD_FIELDS = ("build_url", "dockerfile_url", "image_tag", "build_date", "git_commit", "git_branch",
                 "git_repo", "ci_pipeline_id")

DETECTION = Struct(
    "WandBDetectionRequest",
    source=STRING, type=STRING, version=STRING, workload_uid=STRING, pod_uid=STRING,
    pod_name=STRING, namespace=STRING,
    evidence=Struct(
        "WandBEvidence",
        wandb=Struct("WandBInfo", project=STRING, name=STRING, id=STRING, config=Map(ANY), tags=_STRINGS),
        environment=Map(STRING),
        pytorch=Pointer(Struct("PyTorchInfo", available=BOOL, version=STRING, cuda_available=BOOL,
                               detected_modules=Map(BOOL))),
        wrapper_frameworks=_NESTED,
        base_frameworks=_NESTED,
        system=Map(ANY),
        hardware=Pointer(Struct("HardwareInfo", gpu_arch=STRING, gpu_count=INT64, gpu_memory_gb=FLOAT64,
                                gpu_name=STRING, rocm_version=STRING, cuda_version=STRING)),
        software=Pointer(Struct("SoftwareInfo", rocm_version=STRING, packages=Map(STRING))),
        build=Pointer(Struct("BuildInfo", **dict.fromkeys(_BUILD_FIELDS, STRING))),
    ),
    hints=Struct("WandBHints", wrapper_frameworks=_STRINGS, base_frameworks=_STRINGS,
                 possible_frameworks=_STRINGS, confidence=STRING, primary_indicators=_STRINGS,
                 framework_layers=_NESTED),
    timestamp=FLOAT64,
)
_DATA_IDENTITY = {"source": STRING, "workload_uid": STRING, "pod_uid": STRING, "pod_name": STRING,
                  "run_id": STRING}
METRICS = Struct(
    "WandBMetricsRequest", **_DATA_IDENTITY,
    metrics=Slice(Struct("WandBMetric", name=STRING, value=FLOAT64, step=INT64, timestamp=FLOAT64,
                         tags=Map(STRING))),
    timestamp=FLOAT64,
)
LOGS = Struct(
    "WandBLogsRequest", **_DATA_IDENTITY,
    logs=Slice(Struct("WandBLog", step=INT64, timestamp=FLOAT64, data=Map(ANY))),
    timestamp=FLOAT64,
)
BATCH = Struct("WandBBatchRequest", detection=Pointer(DETECTION), metrics=Pointer(METRICS),
               logs=Pointer(LOGS))

# --------------------------------------------------------------------------------------------
# What an accepted request leaves behind: rows for the SQLite store.


class _LogRow(NamedTuple):
    workload: str
    pod: str
    pod_uid: str
    run_id: str
    step: int
    timestamp: float
    data: str


class _MetricRow(NamedTuple):
    workload: str
    pod: str
    pod_uid: str
    run_id: str
    name: str
    value: float
    step: int
    timestamp: float
    tags: str


class _DetectionRow(NamedTuple):
    workload: str
    pod: str
    pod_uid: str
    namespace: str
    timestamp: float
    data: str


class _StepWrite(NamedTuple):
    """One upsert of the server's ``training_performance`` row for (workload, step)."""

    workload: str
    step: int
    run_id: str
    timestamp: float
    data: Dict[str, Any]


class _RequestRow(NamedTuple):
    received: float
    method: str
    path: str
    status: int
    message: str
    detail: str
    body: bytes


@dataclasses.dataclass
class _Accepted:
    """Everything one request adds to the store, written in one transaction."""

    logs: List[_LogRow] = dataclasses.field(default_factory=list)
    metrics: List[_MetricRow] = dataclasses.field(default_factory=list)
    detections: List[_DetectionRow] = dataclasses.field(default_factory=list)
    steps: List[_StepWrite] = dataclasses.field(default_factory=list)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _accept_detection(accepted: _Accepted, workload: str, request: Dict[str, Any]) -> None:
    """ai-advisor gets one forwarded copy per resolved workload; we keep the decoded body instead."""
    accepted.detections.append(_DetectionRow(workload, request["pod_name"], request["pod_uid"],
                                             request["namespace"], request["timestamp"], _dumps(request)))


def _accept_metrics(accepted: _Accepted, workload: str, request: Dict[str, Any]) -> None:
    """Every point is kept; per step the points merge into one upsert (same name: last wins,
    timestamp: the first point's), as the server groups them (spec §5)."""
    who = (workload, request["pod_name"], request["pod_uid"], request["run_id"])
    steps: Dict[int, _StepWrite] = {}
    for metric in request["metrics"] or []:
        accepted.metrics.append(_MetricRow(*who, metric["name"], metric["value"], metric["step"],
                                           metric["timestamp"], _dumps(metric["tags"])))
        write = steps.setdefault(metric["step"], _StepWrite(workload, metric["step"], request["run_id"],
                                                            metric["timestamp"], {}))
        write.data[metric["name"]] = metric["value"]
    accepted.steps.extend(steps.values())


def _accept_logs(accepted: _Accepted, workload: str, request: Dict[str, Any]) -> None:
    """One row and one upsert per entry, in array order (spec §6)."""
    who = (workload, request["pod_name"], request["pod_uid"], request["run_id"])
    for entry in request["logs"] or []:
        data = entry["data"] or {}
        accepted.logs.append(_LogRow(*who, entry["step"], entry["timestamp"], _dumps(data)))
        accepted.steps.append(_StepWrite(workload, entry["step"], request["run_id"], entry["timestamp"],
                                         data))


@dataclasses.dataclass(frozen=True)
class _Endpoint:
    name: str
    request: Struct
    items: str  # the list whose length the response reports as "count"; "" for detection
    ok_message: str
    failure: str  # the batch part's error text when a fault fails it; {steps} = distinct steps
    accept: Callable[[_Accepted, str, Dict[str, Any]], None]


_ENDPOINTS = {endpoint.name: endpoint for endpoint in (
    _Endpoint("detection", DETECTION, "", "detection reported successfully",
              "failed to forward detection to ai-advisor (receiver fault injection)", _accept_detection),
    _Endpoint("metrics", METRICS, "metrics", "metrics reported successfully",
              "failed to store 0 metrics to MetricsStorage, {steps} steps to training_performance",
              _accept_metrics),
    _Endpoint("logs", LOGS, "logs", "training data reported successfully",
              "failed to store {steps} steps to training_performance (receiver fault injection)",
              _accept_logs),
)}  # in the order a batch processes its parts
_ROUTES = {f"/v1/wandb/{name}": name for name in (*_ENDPOINTS, "batch")}

# --------------------------------------------------------------------------------------------
# Responses.


@dataclasses.dataclass
class _Response:
    status: int
    body: bytes = b""
    content_type: str = ""
    headers: Tuple[Tuple[str, str], ...] = ()
    note: str = ""  # the outcome as the requests table records it (meta.message, ...)
    detail: str = ""  # why, where the response does not say (the decode error)
    send: bool = True  # False: the client is gone, close without answering


def envelope(status: int, message: str, data: Any = None) -> _Response:
    """The server's ``rest.Response`` (spec §3): meta.code 2000 on success, else the HTTP status;
    map keys in ``data`` sorted as Go marshals maps."""
    meta = _dumps({"code": 2000 if status == 200 else status, "message": message})
    payload = json.dumps(data, separators=(",", ":"), ensure_ascii=False, sort_keys=True)
    body = f'{{"meta":{meta},"data":{payload},"tracing":null}}'.encode()
    return _Response(status, body, "application/json; charset=utf-8", note=message)


def _plain(status: int, text: str) -> _Response:
    return _Response(status, text.encode(), "text/plain", note=text)


def _not_found() -> _Response:
    return _plain(404, "404 page not found")  # gin's default, for a wrong path or method


def _control_json(status: int, value: Any) -> _Response:
    body = json.dumps(value, default=lambda raw: raw.decode("utf-8", "replace")).encode()
    return _Response(status, body, "application/json")


def _garbage(status: int) -> _Response:
    """What a proxy or a half-dead pod might answer instead of the server: HTML, not JSON."""
    phrase = http.HTTPStatus(status).phrase
    text = (f"<html><head><title>{status} {phrase}</title></head>"
            f"<body><center><h1>{status} {phrase}</h1></center></body></html>\n")
    return _Response(status, text.encode(), "text/html", note=f"garbage {status} (fault)")


@dataclasses.dataclass
class _Part:
    """How one body (a single request or one batch part) fared across its resolved workloads."""

    workloads: int
    succeeded: int
    count: Optional[int]
    error: str = ""

    def counts(self) -> Dict[str, int]:
        out = {"success_count": self.succeeded, "workloads_count": self.workloads}
        if self.count is not None:
            out["count"] = self.count
        return out

    def batch_result(self) -> Dict[str, Any]:
        if self.succeeded == 0:
            return {"success": False, "error": self.error}
        return {"success": True, **self.counts()}


# --------------------------------------------------------------------------------------------
# Faults.


_ALL_PARTS = tuple(_ENDPOINTS)
_GARBAGE_STATUSES = {int(status) for status in http.HTTPStatus if status >= 200}


@dataclasses.dataclass(frozen=True)
class Faults:
    """What the receiver does wrong on purpose; all off by default.  Setting faults replaces all
    of them (``{}`` clears) and restarts the no-workload window and the random sequence."""

    delay: float = 0.0  # seconds before each /v1/wandb/ request is answered
    delay_max: float = 0.0  # above ``delay``: a uniformly random delay in [delay, delay_max]
    fail_rate: float = 0.0  # chance that processing fails: 500 "failed to process ..." (nothing stored)
    fail_endpoints: Tuple[str, ...] = _ALL_PARTS  # which bodies (also as batch parts) can fail
    garbage_rate: float = 0.0  # chance of a non-JSON HTML answer instead of processing
    garbage_status: int = 502  # the HTTP status of that answer (200 is allowed)
    no_workload_for: float = 0.0  # seconds of "no valid workload found" for pod names; -1: until reset
    seed: Optional[int] = None  # seeds the random choices; None: different every time

    @classmethod
    def from_mapping(cls, settings: Mapping[str, Any]) -> Faults:
        """Validated faults from JSON, command-line options or keyword arguments."""
        unknown = set(settings) - {field.name for field in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown fault setting(s): {', '.join(sorted(unknown))}")
        values = dict(settings)
        for name, low, high in (("delay", 0, None), ("delay_max", 0, None), ("fail_rate", 0, 1),
                                ("garbage_rate", 0, 1), ("no_workload_for", -1, None)):
            if name in values:
                values[name] = _number(name, values[name], low, high)
        if "fail_endpoints" in values:
            values["fail_endpoints"] = _endpoint_names(values["fail_endpoints"])
        if "garbage_status" in values and not (_is_int(values["garbage_status"])
                                               and values["garbage_status"] in _GARBAGE_STATUSES):
            raise ValueError(f"garbage_status must be an HTTP status from 200 to 599, "
                             f"not {values['garbage_status']!r}")
        if values.get("seed") is not None and not _is_int(values["seed"]):
            raise ValueError(f"seed must be an integer, not {values['seed']!r}")
        return cls(**values)

    def to_json(self) -> Dict[str, Any]:
        return {**dataclasses.asdict(self), "fail_endpoints": list(self.fail_endpoints)}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(name: str, value: Any, low: float, high: Optional[float]) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, not {value!r}")
    if value < low or (high is not None and value > high):
        raise ValueError(f"{name} must be between {low} and {'any' if high is None else high}, not {value}")
    return float(value)


def _endpoint_names(value: Any) -> Tuple[str, ...]:
    names = value.split(",") if isinstance(value, str) else value
    if not isinstance(names, (list, tuple)) or not all(name in _ENDPOINTS for name in names):
        raise ValueError(f"fail_endpoints must list some of {', '.join(_ALL_PARTS)}, not {value!r}")
    return tuple(names)


class _FaultState:
    """The faults in effect with their clock and random source, shared by all request threads."""

    def __init__(self, faults: Faults) -> None:
        self._lock = threading.Lock()
        self.set(faults)

    def set(self, faults: Faults) -> None:
        with self._lock:
            self.faults = faults
            self._since = time.monotonic()
            self._random = random.Random(faults.seed)

    def delay(self) -> float:
        with self._lock:
            low, high = self.faults.delay, self.faults.delay_max
            return self._random.uniform(low, high) if high > low else low

    def garbage(self) -> bool:
        with self._lock:
            return self._chance(self.faults.garbage_rate)

    def fails(self, endpoint: str) -> bool:
        with self._lock:
            return endpoint in self.faults.fail_endpoints and self._chance(self.faults.fail_rate)

    def hides_workloads(self) -> bool:
        with self._lock:
            window = self.faults.no_workload_for
            return window < 0 or time.monotonic() - self._since < window

    def _chance(self, rate: float) -> bool:
        return rate > 0 and self._random.random() < rate  # no draw when off: sequences stay seeded


# --------------------------------------------------------------------------------------------
# Storage.

_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (id INTEGER PRIMARY KEY, received REAL, method TEXT, path TEXT,
    status INTEGER, message TEXT, detail TEXT, body BLOB);
CREATE TABLE IF NOT EXISTS logs (id INTEGER PRIMARY KEY, request_id INTEGER, received REAL,
    workload TEXT, pod TEXT, pod_uid TEXT, run_id TEXT, step INTEGER, timestamp REAL, data TEXT);
CREATE TABLE IF NOT EXISTS metrics (id INTEGER PRIMARY KEY, request_id INTEGER, received REAL,
    workload TEXT, pod TEXT, pod_uid TEXT, run_id TEXT, name TEXT, value REAL, step INTEGER,
    timestamp REAL, tags TEXT);
CREATE TABLE IF NOT EXISTS detections (id INTEGER PRIMARY KEY, request_id INTEGER, received REAL,
    workload TEXT, pod TEXT, pod_uid TEXT, namespace TEXT, timestamp REAL, data TEXT);
CREATE TABLE IF NOT EXISTS steps (workload TEXT, iteration INTEGER, writes INTEGER, data TEXT,
    PRIMARY KEY (workload, iteration));
"""
_TABLES = ("requests", "logs", "metrics", "detections", "steps")
_JSON_COLUMNS = {"data", "tags"}
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def rfc3339(seconds: float) -> str:
    """Go's ``time.Unix(0, int64(ts*1e9))`` in RFC 3339, UTC; out of range (milliseconds sent as
    seconds) gives the minimum int64, i.e. the year 1677, as on the server's amd64 build."""
    nanos = seconds * 1e9
    nanos = int(nanos) if godecode.INT64_MIN <= nanos < 2**63 else godecode.INT64_MIN
    return (_EPOCH + datetime.timedelta(microseconds=nanos // 1000)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _int32(step: int) -> int:
    """The server keys rows by ``iteration``, an int32 conversion of the step (larger values wrap)."""
    return (step + 2**31) % 2**32 - 2**31


class Store:
    """Every request seen and every row accepted, in one SQLite database.

    One connection behind one lock: requests arrive on many threads, and several connections would
    only add SQLite's busy waits.  A file database is kept in WAL mode so a test can read it while
    the receiver runs, and survives a restart (or a SIGKILL) of the receiver.
    """

    def __init__(self, path: str) -> None:
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False)
        if path != ":memory:":
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def commit(self, request: _RequestRow, accepted: _Accepted) -> None:
        with self._lock, self._db:
            request_id = self._db.execute(_insert_sql("requests", request._fields), request).lastrowid
            fixed = (request_id, request.received)
            for table, rows in (("logs", accepted.logs), ("metrics", accepted.metrics),
                                ("detections", accepted.detections)):
                if rows:
                    sql = _insert_sql(table, ("request_id", "received", *rows[0]._fields))
                    self._db.executemany(sql, [fixed + row for row in rows])
            for write in accepted.steps:
                self._upsert_step(write)

    def _upsert_step(self, write: _StepWrite) -> None:
        """``training_performance`` as the server keeps it (spec §8.1): one row per (workload,
        step) whatever the run or pod; a repeat overlays its keys (new wins), keeps ``created_at``
        and sets ``updated_at``.  The server's ``history`` snapshots are reduced to a count."""
        key = (write.workload, _int32(write.step))
        stamp = rfc3339(write.timestamp)
        fields = {"source": "wandb", "run_id": write.run_id, "step": write.step, **write.data}
        where = "WHERE workload = ? AND iteration = ?"
        row = self._db.execute(f"SELECT data FROM steps {where}", key).fetchone()
        if row is None:
            data = _dumps({**fields, "created_at": stamp})
            self._db.execute("INSERT INTO steps VALUES (?, ?, 1, ?)", (*key, data))
            return
        old = json.loads(row[0])
        merged = {**old, **fields, "created_at": old["created_at"], "updated_at": stamp}
        self._db.execute(f"UPDATE steps SET writes = writes + 1, data = ? {where}", (_dumps(merged), *key))

    def select(self, table: str, filters: Mapping[str, Any], order: str = "rowid") -> List[Dict[str, Any]]:
        """Rows of ``table`` whose columns equal every filter that is not None, JSON decoded."""
        used = {column: value for column, value in filters.items() if value is not None}
        where = " AND ".join(f"{column} = ?" for column in used)
        sql = f"SELECT * FROM {table}{' WHERE ' + where if where else ''} ORDER BY {order}"
        with self._lock:
            cursor = self._db.execute(sql, tuple(used.values()))
            columns = [description[0] for description in cursor.description]
            rows = cursor.fetchall()
        return [{column: json.loads(value) if column in _JSON_COLUMNS else value
                 for column, value in zip(columns, row)} for row in rows]

    def stats(self) -> Dict[str, Any]:
        with self._lock:
            by_path: Dict[str, Dict[str, int]] = {}
            for path, status, count in self._db.execute("SELECT path, status, COUNT(*) FROM requests "
                                                        "GROUP BY path, status ORDER BY path, status"):
                by_path.setdefault(path, {})[str(status)] = count
            rows = {table: self._db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
                    for table in _TABLES[1:]}
        return {"requests": by_path, **rows}

    def reset(self) -> None:
        with self._lock, self._db:
            for table in _TABLES:
                self._db.execute(f"DELETE FROM {table}")

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _insert_sql(table: str, columns: Sequence[str]) -> str:
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"


# --------------------------------------------------------------------------------------------
# HTTP.


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

    def __init__(self, response: _Response, unread: int = 0) -> None:
        super().__init__(response.note)
        self.response = response
        self.unread = unread


class _ClientGone(Exception):
    """The client closed its end before the body was complete."""


def _too_large() -> _Response:
    return _plain(413, f"request body larger than {MAX_BODY} bytes")


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: Tuple[str, int], receiver: Receiver, verbose: bool) -> None:
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
    server: _Server

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
            response = self.server.receiver.handle(self.command, self.path, body, self._client_gone)
        except Exception as exc:  # a bug of ours; gin's recovery answers 500 the same way
            print(f"primus-lens receive: internal error on {self.command} {self.path}: "
                  f"{type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            self.close_connection = True
            response = _plain(500, "500 Internal Server Error")
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
                raise _Refused(_plain(501, "unsupported transfer encoding"))  # Go's answer
            return self._read_chunked()
        lengths = {httpbody.content_length(value)
                   for value in self.headers.get_all("Content-Length") or []}
        if not lengths:
            return b""
        length = lengths.pop()
        if lengths or length is None:
            raise _Refused(_plain(400, "400 Bad Request"))
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
                raise _Refused(_plain(400, "400 Bad Request"))
            size = int(match.group(1), 16)
            if size == 0:
                break
            total += size
            if total > MAX_BODY:
                raise _Refused(_too_large(), unread=httpbody.DRAIN_LIMIT)
            chunks.append(self._read_exactly(size))
            if self._read_exactly(2) != b"\r\n":
                raise _Refused(_plain(400, "400 Bad Request"))
        for _ in range(MAX_TRAILER_LINES + 1):  # the trailers, then the empty line
            if self._read_line() in (b"\r\n", b"\n"):
                return b"".join(chunks)
        raise _Refused(_plain(400, "400 Bad Request"))

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

    def _send(self, response: _Response) -> None:
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


# --------------------------------------------------------------------------------------------
# The receiver.

PodTable = Union[Mapping[str, Optional[Sequence[str]]], Iterable[str]]


def default_workload(pod_name: str) -> str:
    """The workload UID a pod resolves to when no table says otherwise."""
    return f"wl-{pod_name}"


class Receiver:
    """The receiver in this process: serves on a background thread, answers queries directly.

    ``pods``: None resolves every pod name to its own workload (:func:`default_workload`); a list
    of names or a mapping ``{pod: [workload UID, ...]}`` is the whole pod cache, so other pods get
    "no valid workload found" and a pod with several UIDs is processed once per workload.
    ``faults``: settings of :class:`Faults`.
    """

    def __init__(self, host: str = DEFAULT_HOST, port: int = 0, db: str = ":memory:",
                 pods: Optional[PodTable] = None, faults: Optional[Mapping[str, Any]] = None,
                 verbose: bool = False) -> None:
        self.host = host
        self._port = port
        self._pods = None if pods is None else _pod_cache(pods)
        self._faults = _FaultState(Faults.from_mapping(faults or {}))
        self._verbose = verbose
        self._store = Store(db)
        self._stopping = threading.Event()
        self._server: Optional[_Server] = None
        self._thread: Optional[threading.Thread] = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> int:
        """Bind and serve on a background thread; returns the port (useful with port 0)."""
        self._stopping.clear()
        self._server = _Server((self.host, self._port), self, self._verbose)
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
        """The base URL a client is configured with, ending in ``/v1``."""
        host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        return f"http://{f'[{host}]' if ':' in host else host}:{self._port}/v1"

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

    def requests(self, path: Optional[str] = None, status: Optional[int] = None) -> List[Dict[str, Any]]:
        """Every request to a non-control path, accepted or not, with its raw body and outcome."""
        return self._store.select("requests", {"path": path, "status": status})

    def raw_bodies(self) -> List[bytes]:
        """Every body received, for searching all received bytes (e.g. for leaked secrets)."""
        return [row["body"] for row in self.requests()]

    def stats(self) -> Dict[str, Any]:
        """Request counts by path and status, and row counts per table."""
        return self._store.stats()

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

    def handle(self, method: str, target: str, body: bytes, client_gone: Callable[[], bool]) -> _Response:
        """Answer one request, transport aside; record it unless it is a control request."""
        path, _, query = target.partition("?")
        if path.startswith(CONTROL_PREFIX):
            return self._control(method, path[len(CONTROL_PREFIX):], query, body)
        received = time.time()
        accepted = _Accepted()
        response = self._answer(method, path, query, body, accepted, client_gone)
        self._store.commit(_RequestRow(received, method, path, response.status, response.note,
                                       response.detail, body), accepted)
        return response

    def _answer(self, method: str, path: str, query: str, body: bytes, accepted: _Accepted,
                client_gone: Callable[[], bool]) -> _Response:
        route = _ROUTES.get(path)
        if route is None or method != "POST":
            if method == "POST" and path.endswith("/") and path[:-1] in _ROUTES:  # gin's trailing slash
                location = path[:-1] + (f"?{query}" if query else "")
                return _Response(307, headers=(("Location", location),), note="307 redirect")
            return _not_found()
        delay = self._faults.delay()
        if delay > 0:
            self._stopping.wait(delay)
            if client_gone():  # the server's request context is cancelled: nothing stored
                return _Response(499, note="client closed the connection during the delay", send=False)
        if self._faults.garbage():
            return _garbage(self._faults.faults.garbage_status)
        try:
            request = godecode.decode_body(body, BATCH if route == "batch" else _ENDPOINTS[route].request)
        except GoDecodeError as exc:
            response = envelope(400, "invalid request format")
            response.detail = str(exc)
            return response
        if route == "batch":
            return self._batch(request, accepted)
        return self._single(_ENDPOINTS[route], request, accepted)

    def _single(self, endpoint: _Endpoint, request: Dict[str, Any], accepted: _Accepted) -> _Response:
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

    def _batch(self, request: Dict[str, Any], accepted: _Accepted) -> _Response:
        """Spec §7: parts in order detection, metrics, logs; no identity pre-check; always 200."""
        results = {name: self._process(endpoint, request[name], accepted).batch_result()
                   for name, endpoint in _ENDPOINTS.items() if request[name] is not None}
        return envelope(200, "OK", {"results": results, "success": True})

    def _process(self, endpoint: _Endpoint, request: Dict[str, Any], accepted: _Accepted) -> _Part:
        items = (request[endpoint.items] or []) if endpoint.items else None
        count = None if items is None else len(items)
        workloads = self._resolve(request["workload_uid"], request["pod_name"])
        if not workloads:
            return _Part(0, 0, count, "no valid workload found")
        if self._faults.fails(endpoint.name):
            steps = len({item["step"] for item in items or []})
            return _Part(len(workloads), 0, count, endpoint.failure.format(steps=steps))
        for workload in workloads:
            endpoint.accept(accepted, workload, request)
        return _Part(len(workloads), len(workloads), count)

    def _resolve(self, workload_uid: str, pod_name: str) -> List[str]:
        """Spec §2: a workload UID is used verbatim; a pod name goes through the pod cache, which
        the no-workload fault empties."""
        if workload_uid:
            return [workload_uid]
        if not pod_name or self._faults.hides_workloads():
            return []
        if self._pods is None:
            return [default_workload(pod_name)]
        return self._pods.get(pod_name, [])

    def _control(self, method: str, name: str, query: str, body: bytes) -> _Response:
        """``/v1/_receiver/...``: plain JSON reads of what arrived, and the fault switch."""
        queries = {"logs": self.logs, "metrics": self.metrics, "detections": self.detections,
                   "steps": self.steps, "requests": self.requests}
        if method == "GET" and name in queries:
            params = dict(parse_qsl(query, keep_blank_values=True))
            allowed = inspect.signature(queries[name]).parameters
            unknown = sorted(set(params) - set(allowed))
            if unknown:
                return _control_json(400, {"error": f"unknown filter(s) {', '.join(unknown)}; "
                                                    f"known: {', '.join(allowed)}"})
            return _control_json(200, {name: queries[name](**params)})
        if method == "GET" and name == "stats":
            return _control_json(200, self.stats())
        if method == "GET" and name == "faults":
            return _control_json(200, self.faults)
        if method == "POST" and name == "faults":
            try:
                settings = json.loads(body or b"{}")
                if not isinstance(settings, dict):
                    raise ValueError("the body must be a JSON object of fault settings")
                self._faults.set(Faults.from_mapping(settings))
            except (ValueError, RecursionError) as exc:
                return _control_json(400, {"error": str(exc)})
            return _control_json(200, self.faults)
        if method == "POST" and name == "reset":
            self.reset()
            return _control_json(200, self.stats())
        return _not_found()


def _pod_cache(pods: PodTable) -> Dict[str, List[str]]:
    if isinstance(pods, Mapping):
        return {pod: list(uids or ()) or [default_workload(pod)] for pod, uids in pods.items()}
    return {pod: [default_workload(pod)] for pod in pods}


# --------------------------------------------------------------------------------------------
# Command line.


def _parse_pods(specs: Optional[List[str]]) -> Optional[Dict[str, List[str]]]:
    """``--pods a,b=uid1+uid2`` (repeatable) -> ``{"a": [], "b": ["uid1", "uid2"]}``."""
    if specs is None:
        return None
    table: Dict[str, List[str]] = {}
    for spec in specs:
        for entry in filter(None, (part.strip() for part in spec.split(","))):
            pod, _, uids = entry.partition("=")
            table[pod] = [uid for uid in uids.split("+") if uid]
    return table


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="primus-lens receive",
        description="Development stand-in for the Lens telemetry-processor: serves POST "
                    "/v1/wandb/{detection,metrics,logs,batch} like the real server, stores what it "
                    "accepts in SQLite, shows it under /v1/_receiver/. See docs/receiver.md.")
    parser.add_argument("--host", default=DEFAULT_HOST, help="address to listen on (default %(default)s)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help="port (default %(default)s; 0 picks a free one, printed when ready)")
    parser.add_argument("--db", default=":memory:", metavar="FILE",
                        help="SQLite file to keep data in, kept across restarts (default: in memory)")
    parser.add_argument("--pods", action="append", metavar="POD[=UID+UID...],...",
                        help="the only pods the pod cache knows, optionally with their workload UIDs "
                             "(repeatable); without it every pod is its own workload wl-POD")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every request on stderr")
    faults = parser.add_argument_group("faults (also settable at run time: POST /v1/_receiver/faults)")
    faults.add_argument("--delay", type=float, metavar="SECONDS", help="delay before each answer")
    faults.add_argument("--delay-max", type=float, metavar="SECONDS",
                        help="random delay between --delay and this")
    faults.add_argument("--fail-rate", type=float, metavar="P", help="chance of 500 'failed to process ...'")
    faults.add_argument("--fail-endpoints", metavar="LIST",
                        help="comma-separated subset of detection,metrics,logs that may fail (default all)")
    faults.add_argument("--garbage-rate", type=float, metavar="P", help="chance of a non-JSON answer")
    faults.add_argument("--garbage-status", type=int, metavar="CODE", help="its status (default 502)")
    faults.add_argument("--no-workload-for", type=float, metavar="SECONDS",
                        help="answer 'no valid workload found' for pod names this long (-1: until changed)")
    faults.add_argument("--seed", type=int, help="seed for the random faults")
    return parser


_FAULT_OPTIONS = tuple(field.name for field in dataclasses.fields(Faults))


def main(argv: Optional[List[str]] = None) -> int:
    """``primus-lens receive``: serve until SIGTERM or SIGINT, then stop cleanly (exit 0)."""
    parser = _parser()
    args = parser.parse_args(argv)
    settings = {name: getattr(args, name) for name in _FAULT_OPTIONS if getattr(args, name) is not None}
    try:
        receiver = Receiver(args.host, args.port, args.db, _parse_pods(args.pods), settings, args.verbose)
    except ValueError as exc:
        parser.error(str(exc))
    except sqlite3.Error as exc:
        print(f"primus-lens receive: cannot open the database {args.db}: {exc}", file=sys.stderr)
        return 1
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda _signum, _frame: stop.set())
                for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        receiver.start()
    except OSError as exc:
        print(f"primus-lens receive: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}",
              file=sys.stderr)
        return 1
    else:
        print(READY_LINE.format(url=receiver.url), flush=True)
        stop.wait()
    finally:
        receiver.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
