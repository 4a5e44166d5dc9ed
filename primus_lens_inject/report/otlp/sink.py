"""The OTLP sink: the record's rows as OTLP/HTTP metrics, from a cursor of its own
(``wandb_metrics.otlp.cursor``), with the guarantees of every ``report.sink.RowsSink``.

Imported only when ``PRIMUS_LENS_OTLP=true`` (``report.sinks``). A request body stays under 1
MiB (a larger batch, or one huge row, is split by data points: ``encoding.Encoder.bodies``).
Answers are classified as the OTLP/HTTP specification says: a 2xx counts only when its body is
an ``ExportMetricsServiceResponse`` in the encoding its ``Content-Type`` names, or empty (an
HTML page from a proxy or an ingress default backend proves nothing was exported: retried like a
busy endpoint, said once); a ``partial_success`` that rejected points is still accepted (said
once per process, not retried, the rejected points counted in the status file); 429, 502, 503
and 504 retried with backoff, or after ``Retry-After`` when the endpoint gives one; transport
errors retried; every other 4xx and 5xx not retried: the batch is dropped (it stays in the
record) and said once. 401, 403, 404, 405 and redirects mean a wrong endpoint or credentials,
which every later batch would meet too: the sink stops in this process, said once, and keeps its
cursor, so a process started with a fixed configuration sends the rows from there.
"""

from __future__ import annotations

import email.utils
import gzip
import os
import socket
import time
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

from ... import credentials, log
from ...config import Config
from ...recordline import Line
from .. import owner, transport
from ..policy import DROP, OK, RETRY, STOP
from ..sendable import MAX_BODY, log_entry
from ..sink import Batch, Context, RowsSink, answered
from . import encoding

_RETRYABLE = frozenset((429, 502, 503, 504))
_REFUSED = frozenset((401, 403, 404, 405))  # every later batch would be refused the same way
RETRY_AFTER_MAX = 300.0  # seconds: a longer Retry-After is cut to this
_GZIP_LEVEL = 1  # the sink runs beside training: the cheapest level, most of the gain


class Settings(NamedTuple):
    """The OTLP exporter settings in effect (``settings`` says which variable wins)."""

    endpoint: str
    headers: Tuple[Tuple[str, str], ...]
    timeout: float  # seconds
    gzip: bool
    protocol: str
    certificate: Optional[str]
    client_certificate: Optional[str]
    client_key: Optional[str]
    resource_attributes: Tuple[Tuple[str, str], ...]
    service_name: str


def settings(config: Config) -> Settings:
    """The settings in effect, each from the first variable that sets it
    (``config.Config.otlp_setting``: ``PRIMUS_LENS_OTLP_*``, then ``OTEL_EXPORTER_OTLP_METRICS_*``,
    then ``OTEL_EXPORTER_OTLP_*``).  Our own names come first because the chart sets them: the
    ``OTEL_*`` names are also read by every OpenTelemetry SDK in the process (wandb ≥ 0.31 exports
    to W&B with one), so they stay a fallback for runs by hand."""
    pick = config.otlp_setting
    return Settings(pick("endpoint"), pick("headers"), pick("timeout") / 1000.0,
                    pick("compression") == "gzip", pick("protocol"), pick("certificate"),
                    pick("client_certificate"), pick("client_key"), pick("resource_attributes"),
                    pick("service_name"))


def classify(status: int, message: str, understood: bool = True) -> Tuple[str, str]:
    """(action, reason) of an OTLP/HTTP answer; ``status`` 0: no answer (transport error);
    ``understood``: a 2xx body is an ``ExportMetricsServiceResponse`` (``encoding.read_answer``)."""
    if 200 <= status < 300:
        if not understood:
            return RETRY, (f"HTTP {status} whose body is not an OTLP ExportMetricsServiceResponse "
                           "(a proxy or another service answers at this address?)")
        return OK, ""
    if status == 0:
        return RETRY, message or "connection failed"
    if status in _RETRYABLE:
        return RETRY, f"endpoint busy or unavailable (HTTP {status})"
    if status in _REFUSED or 300 <= status < 400:
        return STOP, (f"endpoint refused the credentials or the address (HTTP {status}); check "
                      "PRIMUS_LENS_OTLP_ENDPOINT and PRIMUS_LENS_OTLP_HEADERS (docs/otlp.md)")
    return DROP, f"endpoint rejected the batch (HTTP {status}{': ' + message if message else ''})"


def retry_after(value: Optional[str]) -> Optional[float]:
    """Seconds from a ``Retry-After`` header (seconds or an HTTP date), at most
    ``RETRY_AFTER_MAX``; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    return min(max(seconds, 0.0), RETRY_AFTER_MAX)


class OtlpSink(RowsSink):
    """Every row of a reporting writer, once per job, to ``{endpoint}/v1/metrics``."""

    name = "otlp"

    def __init__(self, context: Context) -> None:
        super().__init__(context)
        self.settings = settings(context.config)
        self.endpoint = self.settings.endpoint
        self.topology = context.topology
        self.encoder = encoding.Encoder(self.settings.protocol)
        self._resources: Dict[Tuple[int, str], List[Tuple[str, Any]]] = {}
        self._asked: Optional[float] = None  # Retry-After of the last answer

    @property
    def where(self) -> str:
        return f"OTLP export to {self.endpoint}"

    @property
    def address(self) -> str:
        return self.endpoint

    def open_client(self) -> Any:
        s = self.settings
        headers = {"Content-Type": encoding.content_type(s.protocol),
                   "User-Agent": "primus-lens-inject", **dict(s.headers)}
        if s.gzip:
            headers["Content-Encoding"] = "gzip"
        cert = (s.client_certificate, s.client_key) if s.client_certificate else None
        return transport.client(self.endpoint, headers, s.timeout,
                                min(s.timeout, self.config.connect_timeout),
                                ca_file=s.certificate, client_cert=cert,
                                trust_env=self.config.api_use_proxy,
                                http_transport=self.context.http_transport)

    def entry(self, row: Line, writer: owner.Writer) -> Tuple[Optional[Dict[str, Any]], str]:
        return log_entry(row.step, row.timestamp, row.data)  # rank: a resource

    def encode(self, batch: Batch, now: float) -> List[bytes]:
        writer, run_id, entries = batch
        bodies, _points = self.encoder.bodies(self._resource(writer, run_id), entries,
                                              MAX_BODY)
        if self.settings.gzip:
            return [gzip.compress(body, _GZIP_LEVEL) for body in bodies]
        return bodies

    def _resource(self, writer: owner.Writer, run_id: str) -> List[Tuple[str, Any]]:
        key = (id(writer), run_id)
        found = self._resources.get(key)
        if found is None:
            config = self.config
            pod = {"pod_name": writer.identity.get("pod_name") or config.pod_name,
                   "pod_uid": writer.identity.get("pod_uid") or config.pod_uid,
                   "namespace": config.pod_namespace, "node_name": config.node_name}
            instance = f"{pod['pod_name'] or socket.gethostname()}/rank{writer.rank}"
            if len(self._resources) > 64:
                self._resources.clear()
            # the run's own free text goes through the rule of the rows' keys (sendable)
            # and of the detection report's run labels: a token may stand alone in a name
            found = self._resources[key] = encoding.resource_attributes(
                self.settings.service_name, instance, pod, self.topology, writer.rank,
                credentials.redact_label(run_id),
                credentials.redact_label(os.environ.get("WANDB_PROJECT", "")),
                self.settings.resource_attributes)
        return found

    def retry_after(self) -> Optional[float]:
        return self._asked

    def post(self, client: Any, body: bytes) -> Tuple[str, str]:
        self._asked = None
        answer: Optional[Tuple[int, str]] = None
        try:
            response = client.post(self.endpoint, content=body)
            status, message = response.status_code, ""
            if 200 <= status < 300:
                answer = encoding.read_answer(response.headers.get("Content-Type", ""),
                                          response.content)
            else:
                message = _status_text(response.content)
            if status in _RETRYABLE:
                self._asked = retry_after(response.headers.get("Retry-After"))
        except Exception as exc:  # httpx.TransportError and anything below it
            status, message = 0, f"{type(exc).__name__}: {exc}"
        action, reason = classify(status, message, answer is not None or not 200 <= status < 300)
        answered(self.stats, action, reason, self.where,
                 f"otlp-{action}-{status}")
        if answer is not None:
            self._partial(*answer)
        return action, reason

    def _partial(self, rejected: int, message: str) -> None:
        """A partial success: the rejected points are counted (a running count under the status
        file's ``otlp.dropped``), and said once per process, not once per batch."""
        if rejected > 0:
            self.stats.dropped["data points rejected by the OTLP endpoint"] += rejected
        if rejected > 0 or message:
            log.warn(f"OTLP export to {self.endpoint}: the endpoint accepted a batch partly "
                     f"({rejected} data points rejected: {message or 'no reason given'}); "
                     "not retried; said once, the status file counts every rejected point "
                     "(otlp.dropped)", key="otlp-partial")

    def stopped(self, reason: str) -> None:
        super().stopped(reason)
        log.warn(f"OTLP export to {self.endpoint} stopped: {reason}; rows stay in the local "
                 "record and its OTLP cursor, a process started with a fixed configuration "
                 "sends them", key="otlp-stopped")


def _status_text(content: bytes) -> str:
    """A short reason from an error body (OTLP sends a ``google.rpc.Status``; any text will do),
    printable and short."""
    text = content[:200].decode("utf-8", "replace")
    return "".join(c if c.isprintable() else " " for c in text).strip()[:120]
