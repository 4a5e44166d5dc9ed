"""A loopback OTLP/HTTP metrics endpoint for the tests: decodes every body with the official
``opentelemetry-proto`` classes (protobuf or JSON, gzip or not) and answers as scripted.

A body that does not decode is answered 400 and kept in ``undecodable``: the tests assert it
stays empty.  ``points()`` flattens what was accepted (2xx) into one tuple per data point.
"""

from __future__ import annotations

import gzip
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

from google.protobuf import json_format
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)


class Point(NamedTuple):
    resource: Dict[str, Any]
    name: str
    unit: str
    attributes: Dict[str, Any]
    time_unix_nano: int
    value: float


class Answer(NamedTuple):
    status: int = 200
    headers: Tuple[Tuple[str, str], ...] = ()
    rejected: int = 0  # partial_success.rejected_data_points
    message: str = ""  # partial_success.error_message
    delay: float = 0.0


def any_value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


def attributes(pairs: Any) -> Dict[str, Any]:
    return {kv.key: any_value(kv.value) for kv in pairs}


class OtlpServer:
    """``script(n, request) -> Answer`` decides the answer to the n-th request (from 0)."""

    def __init__(self, port: int = 0, script: Optional[Callable[[int, Dict[str, Any]], Answer]] = None,
                 tls: Optional[ssl.SSLContext] = None) -> None:
        self.script = script or (lambda n, request: Answer())
        self.requests: List[Dict[str, Any]] = []
        self.undecodable: List[bytes] = []
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                owner._handle(self, raw)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        if tls is not None:
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
        self.port = self._server.server_address[1]
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> OtlpServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handle(self, handler: BaseHTTPRequestHandler, raw: bytes) -> None:
        headers = {k.lower(): v for k, v in handler.headers.items()}
        json_body = headers.get("content-type") == "application/json"
        body = gzip.decompress(raw) if headers.get("content-encoding") == "gzip" else raw
        message = ExportMetricsServiceRequest()
        try:
            if json_body:
                json_format.Parse(body, message)
            else:
                message.ParseFromString(body)
            decoded: Optional[ExportMetricsServiceRequest] = message
        except Exception:
            decoded = None
        with self._lock:
            n = len(self.requests)
            request = {"path": handler.path, "headers": headers, "json": json_body,
                       "gzip": headers.get("content-encoding") == "gzip", "message": decoded,
                       "status": 0}
            self.requests.append(request)
        answer = self.script(n, request) if decoded is not None else Answer(400)
        if decoded is None:
            self.undecodable.append(body)
        if answer.delay:
            time.sleep(answer.delay)
        request["status"] = answer.status
        response = ExportMetricsServiceResponse()
        if answer.rejected or answer.message:
            response.partial_success.rejected_data_points = answer.rejected
            response.partial_success.error_message = answer.message
        out = (json_format.MessageToJson(response).encode() if json_body
               else response.SerializeToString()) if 200 <= answer.status < 300 else b"nope"
        handler.send_response(answer.status)
        handler.send_header("Content-Type", headers.get("content-type", "text/plain"))
        handler.send_header("Content-Length", str(len(out)))
        for name, value in answer.headers:
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(out)

    def accepted(self) -> List[Dict[str, Any]]:
        with self._lock:
            return [r for r in self.requests if 200 <= r["status"] < 300]

    def points(self) -> List[Point]:
        out = []
        for request in self.accepted():
            for rm in request["message"].resource_metrics:
                resource = attributes(rm.resource.attributes)
                for sm in rm.scope_metrics:
                    for metric in sm.metrics:
                        assert metric.WhichOneof("data") == "gauge", metric
                        for p in metric.gauge.data_points:
                            assert p.WhichOneof("value") == "as_double"
                            out.append(Point(resource, metric.name, metric.unit,
                                             attributes(p.attributes), p.time_unix_nano,
                                             p.as_double))
        return out

    def steps(self, run_id: Optional[str] = None) -> List[int]:
        """Every ``wandb.step`` point accepted (of one run), in arrival order."""
        return [int(p.value) for p in self.points() if p.name == "wandb.step"
                and (run_id is None or p.resource["wandb.run.id"] == run_id)]


