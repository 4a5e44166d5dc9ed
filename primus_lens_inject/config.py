"""The injector's whole configuration, parsed once from the environment into one typed object.

Every setting is declared once, as a ``Config`` field made by ``setting``: its variable, default,
parser and one-line description.  ``VARIABLES`` is derived from those fields; ``Config.from_env``
parses them, and ``primus-lens doctor`` and the README table are built from the same
declarations.  An invalid value never raises: it is reported as a ``Problem`` (one warning naming
the variable, given by ``state.get_config``) and the default is used instead.

The fields come in blocks, one per part that reads them (capture, the sampler, every sink, the
Lens sink, the OTLP sink, the pod's identity).  Each OTLP setting can be given by our variable
or by OpenTelemetry's (metrics-only or general); which one wins is declared once,
``OTLP_TIERS``, and applied by ``Config.otlp_setting``.

A leaf below ``log``: it imports nothing of the package, so the log can read its own switch with
``value_of`` without a cycle.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable, Mapping, Optional, Tuple

# Where the wandb routes are served, by installation (docs/reporting.md says why these):
# lens: a stock Primus Lens install (spec §1.1): Service "primus-lens-telemetry-processor" in
#   namespace "primus-lens", port 8989, route group /v1.
# robust: its successor on SaFE clusters, the primus-robust add-on, 1.0.6 and later (the
#   microservice layout): every HTTP route is served by the Service robust-api:8085 under /api/v1
#   (robust-analyzer is a background worker there that answers only /healthz and /readyz).
# robust-legacy: robust 1.0.0, one binary, robust-analyzer:8085 serving every route under /api/v1.
API_PRESETS = {
    "lens": "http://primus-lens-telemetry-processor.primus-lens.svc.cluster.local:8989/v1",
    "robust": "http://robust-api.primus-robust.svc:8085/api/v1",
    "robust-legacy": "http://robust-analyzer.primus-robust.svc:8085/api/v1",
}
_ROBUST_PRESETS = ("robust", "robust-legacy")
_ROBUST_ROUTES = "/api/v1"  # what ROBUST_ANALYZER_URL (a host) is completed with
_DEFAULT_API_PRESET = "lens"
DEFAULT_API_BASE_URL = API_PRESETS[_DEFAULT_API_PRESET]

_GPU_BACKENDS = ("auto", "amdsmi", "sysfs", "nvml", "none")
_GPU_SCOPES = ("process", "node")
_REPORT_RANKS = ("owner", "zero", "all")  # or a list of global ranks, e.g. "0,8"
_EVIDENCE_LEVELS = ("standard", "minimal", "off")
_OTLP_PROTOCOLS = ("http/protobuf", "http/json")
_OTLP_COMPRESSIONS = ("gzip", "none")
_DEFAULT_OTLP_ENDPOINT = "http://localhost:4318"
# Three families of variables name the OTLP settings, and the first tier that sets one gives it
# (``Config.otlp_setting``): our own (PRIMUS_LENS_OTLP_*, what the chart sets), then
# OpenTelemetry's metrics-only ones (OTEL_EXPORTER_OTLP_METRICS_*), then its general ones
# (OTEL_EXPORTER_OTLP_*, which hold the defaults).  Within each family the signal-specific variable
# wins, so our PRIMUS_LENS_OTLP_METRICS_ENDPOINT comes before PRIMUS_LENS_OTLP_ENDPOINT.  A tier is
# the prefix of the ``Config`` fields it sets.
OTLP_TIERS = ("otlp_metrics", "otlp", "otel_metrics", "otel")
OTLP_SETTINGS = ("endpoint", "headers", "timeout", "compression", "protocol", "certificate",
                 "client_certificate", "client_key", "resource_attributes", "service_name")
_OTLP_METRICS_PATH = "/v1/metrics"  # what a base endpoint is completed with (OTLP/HTTP)

_TRUE = frozenset(("1", "true", "yes", "on", "y", "t"))
_FALSE = frozenset(("0", "false", "no", "off", "n", "f"))


class _InvalidValue(ValueError):
    """Raised by a parser when a raw value cannot be used; the message says what is expected."""


def _parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise _InvalidValue("expected true/false (1/0, yes/no, on/off)")


def _number(kind: Callable[[str], Any], low: float, high: float) -> Callable[[str], Any]:
    def parse(raw: str) -> Any:
        try:
            value = kind(raw.strip())
        except ValueError:
            raise _InvalidValue(f"expected a {kind.__name__} between {low:g} and {high:g}")
        if (isinstance(value, float) and not math.isfinite(value)) or not low <= value <= high:
            raise _InvalidValue(f"expected a {kind.__name__} between {low:g} and {high:g}")
        return value

    return parse


def _choice(options: Tuple[str, ...]) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in options:
            raise _InvalidValue("expected one of " + "|".join(options))
        return value

    return parse


def _text(raw: str) -> str:
    return raw.strip()


def _path(raw: str) -> str:
    value = raw.strip()
    if "\x00" in value:
        raise _InvalidValue("a path cannot contain NUL")
    return os.path.abspath(os.path.expanduser(value))


def _url(raw: str) -> str:
    """An http(s) URL with a host, and a port from 1 to 65535 where one is given."""
    from urllib.parse import urlsplit

    value = raw.strip().rstrip("/")
    scheme, sep, rest = value.partition("://")
    if not sep or scheme.lower() not in ("http", "https") or not rest or " " in value:
        raise _InvalidValue("expected an http:// or https:// URL")
    parts = urlsplit(value)
    try:
        port = parts.port  # ValueError: not a number, or beyond 65535
    except ValueError:
        port = -1
    if port is not None and not 1 <= port <= 65535:
        raise _InvalidValue(f"port {parts.netloc.rpartition(':')[2]!r} is not a number from 1 "
                            "to 65535")
    if not parts.hostname:
        raise _InvalidValue("expected a host name after ://")
    return value


def _metrics_url(base: str) -> str:
    """``{base}/v1/metrics``, a query string (a function key, a signature) kept at the end."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(base)
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") + _OTLP_METRICS_PATH))


def _headers(raw: str) -> Tuple[Tuple[str, str], ...]:
    """Extra request headers: a JSON object, or ``Name: value`` pairs separated by newlines or ``;``."""
    text = raw.strip()
    pairs: list = []
    if text.startswith("{"):
        try:
            obj = json.loads(text)
        except ValueError:
            raise _InvalidValue('expected a JSON object {"Name": "value"} or "Name: value; ..."')
        if not isinstance(obj, dict) or not all(isinstance(v, str) for v in obj.values()):
            raise _InvalidValue("header values must be strings")
        pairs = list(obj.items())
    else:
        for part in text.replace("\n", ";").split(";"):
            if not part.strip():
                continue
            name, sep, value = part.partition(":")
            if not sep or not name.strip():
                raise _InvalidValue('expected "Name: value" pairs separated by ";"')
            pairs.append((name.strip(), value.strip()))
    for name, value in pairs:
        if not name or any(c in name for c in " \t\r\n:") or any(c in value for c in "\r\n"):
            raise _InvalidValue(f"invalid header {name!r}")
    return tuple(pairs)


def _pairs(raw: str) -> Tuple[Tuple[str, str], ...]:
    """OpenTelemetry's list form, ``key=value,key2=value2``, values URL-decoded (used by
    ``OTEL_EXPORTER_OTLP_HEADERS`` and ``OTEL_RESOURCE_ATTRIBUTES``)."""
    from urllib.parse import unquote

    pairs = []
    for part in raw.split(","):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        name, value = name.strip(), unquote(value.strip())
        if not sep or not name or any(c in name + value for c in "\r\n"):
            raise _InvalidValue("expected key=value pairs separated by commas")
        pairs.append((unquote(name), value))
    return tuple(pairs)


def _otlp_protocol(raw: str) -> str:
    value = raw.strip().lower()
    if value == "grpc":
        raise _InvalidValue("grpc is not supported by this exporter, it sends OTLP/HTTP")
    return _choice(_OTLP_PROTOCOLS)(value)


def _report_ranks(raw: str) -> str:
    """owner | zero | all, or global ranks separated by commas (kept as "0,8", sorted)."""
    value = raw.strip().lower()
    if value in _REPORT_RANKS:
        return value
    parts = [part.strip() for part in value.split(",") if part.strip()]
    if not parts or not all(part.isdigit() and part.isascii() for part in parts):
        raise _InvalidValue("expected owner, zero, all or a list of global ranks such as 0,8")
    return ",".join(str(rank) for rank in sorted({int(part) for part in parts}))


_SETTING = "primus_lens_setting"  # the dataclass field metadata key of a setting's declaration


def setting(variable: str, default: Any, parse: Callable[[str], Any], doc: str,
            secret: bool = False) -> Any:
    """A ``Config`` field that an environment variable sets: the one place a setting is declared
    (its variable, default, parser and description); ``VARIABLES`` and the README table are
    derived from these fields."""
    return field(default=default, metadata={_SETTING: (variable, parse, doc, secret)})


@dataclass(frozen=True)
class Problem:
    """An environment value that could not be used; the default was taken instead."""

    variable: str
    raw: str
    reason: str
    used: str = field(default="", compare=False)  # what is used instead, where "the default"
    # would not say it (the base URL's comes from the preset)

    def message(self) -> str:
        shown = self.raw if len(self.raw) <= 60 else self.raw[:57] + "..."
        return (f"ignoring {self.variable}={shown!r}: {self.reason}; "
                + (f"using {self.used} instead" if self.used else "using the default"))


@dataclass(frozen=True)
class Config:
    """Every setting of the injector, each declared once with ``setting``: the defaults here are
    the documented defaults."""

    # -- The switch, the local record and the process's end (capture, log) -------------------------
    hook: bool = setting(
        "PRIMUS_LENS_WANDB_HOOK", True, _parse_bool,
        "Master switch. false: the bootstrap imports nothing, patches nothing, starts nothing.")
    enhance_metrics: bool = setting(
        "PRIMUS_LENS_WANDB_ENHANCE_METRICS", False, _parse_bool,
        "Add `_primus_sys_*` / `_primus_gpu_*` figures to every logged row (wandb and record).")
    save_local: bool = setting(
        "PRIMUS_LENS_WANDB_SAVE_LOCAL", True, _parse_bool,
        "Keep the local JSONL record under the output path.")
    output_path: Optional[str] = setting(
        "PRIMUS_LENS_WANDB_OUTPUT_PATH", None, _path,
        "Root of the local record. Unset: `$WANDB_DIR/wandb/primus-lens` "
        "(`./wandb/primus-lens` without `WANDB_DIR`), next to wandb's own files.")
    debug: bool = setting(
        "PRIMUS_LENS_WANDB_DEBUG", False, _parse_bool,
        "Print one JSON line per injector decision on stderr.")
    shutdown_timeout: float = setting(
        "PRIMUS_LENS_SHUTDOWN_TIMEOUT", 5.0, _number(float, 0.0, 600.0),
        "Most seconds spent flushing at finish, exit or SIGTERM before giving up (data stays "
        "in the record and is sent by the next process that uses it).")

    # -- The background sampler (metrics) ----------------------------------------------------------
    sample_interval: float = setting(
        "PRIMUS_LENS_SAMPLE_INTERVAL", 1.0, _number(float, 0.1, 3600.0),
        "Seconds between two system/GPU samples of the background sampler.")
    gpu_backend: str = setting(
        "PRIMUS_LENS_GPU_BACKEND", "auto", _choice(_GPU_BACKENDS),
        "GPU library: auto (amdsmi, then amdgpu sysfs, then NVML), amdsmi, sysfs, nvml, none.")
    gpu_scope: str = setting(
        "PRIMUS_LENS_GPU_SCOPE", "process", _choice(_GPU_SCOPES),
        "process: this process's own GPU(s); node: every GPU, sampled by local rank 0 only.")
    sysfs_root: str = setting(
        "PRIMUS_LENS_SYSFS_ROOT", "/sys", _path,
        "Where sysfs is mounted, for the amdgpu fallback (chroots, tests).")

    # -- The rank pulse and the stall watchdog (pulse) -------------------------------------------
    pulse: bool = setting(
        "PRIMUS_LENS_PULSE", True, _parse_bool,
        "Pulse in every distributed rank: optimizer steps, step times, own GPU/host figures and "
        "stall stacks in `pulse.jsonl` beside the record (docs/pulse.md).")
    pulse_interval: float = setting(
        "PRIMUS_LENS_PULSE_INTERVAL", 10.0, _number(float, 0.5, 3600.0),
        "Seconds between two pulse lines of a rank.")
    stall_seconds: float = setting(
        "PRIMUS_LENS_STALL_SECONDS", 300.0, _number(float, 1.0, 7 * 86400.0),
        "A rank without an optimizer step for longer than max(this, "
        "PRIMUS_LENS_STALL_FACTOR x its median step time) is stalled: its stacks are written.")
    stall_factor: float = setting(
        "PRIMUS_LENS_STALL_FACTOR", 10.0, _number(float, 1.0, 1000.0),
        "How many median step times without a step make a stall (see PRIMUS_LENS_STALL_SECONDS).")

    # -- The pod agent (agent) ----------------------------------------------------------------------
    agent: bool = setting(
        "PRIMUS_LENS_AGENT", False, _parse_bool,
        "true: a `primus-lens agent` in this pod sends its records (the chart and webhook set it); "
        "this process only records, in directories open to the agent's user (mode 0777: the "
        "pod's own volume; docs/agent.md).")
    agent_address: str = setting(
        "PRIMUS_LENS_AGENT_ADDRESS", "0.0.0.0", _text,
        "The address the agent's `/metrics`, `/healthz` and `/readyz` listen on.")
    agent_port: int = setting(
        "PRIMUS_LENS_AGENT_PORT", 9470, _number(int, 0, 65535),
        "The agent's port (0: any free port, said on stderr and in the agent file).")
    agent_drain_seconds: float = setting(
        "PRIMUS_LENS_AGENT_DRAIN_SECONDS", 25.0, _number(float, 0.0, 3600.0),
        "After SIGTERM the agent keeps sending for at most this long (keep it below the pod's "
        "terminationGracePeriodSeconds).")
    agent_detection_window: float = setting(
        "PRIMUS_LENS_AGENT_DETECTION_WINDOW", 30.0, _number(float, 0.0, 3600.0),
        "The agent sends a job's first detection report at a random moment within this many "
        "seconds, so a job's pods do not all send at once.")
    metrics_max_series: int = setting(
        "PRIMUS_LENS_METRICS_MAX_SERIES", 20000, _number(int, 1, 10_000_000),
        "Most series the agent's `/metrics` exposes in all; the rest are counted in "
        "`primus_lens_series_dropped_total`.")
    metrics_max_series_per_metric: int = setting(
        "PRIMUS_LENS_METRICS_MAX_SERIES_PER_METRIC", 2000, _number(int, 1, 10_000_000),
        "Most series of one metric name on `/metrics` (ranks x runs).")

    # -- Every sink: which processes send ----------------------------------------------------------
    report_ranks: str = setting(
        "PRIMUS_LENS_REPORT_RANKS", "owner", _report_ranks,
        "Which processes send rows and detection: owner (every process that owns a wandb "
        "run), zero (global rank 0), all (every owner, keys always prefixed with its "
        "`rankN/` label) or a list of global ranks (`0,8`); see docs/reporting.md.")

    # -- The Lens sink: rows and the framework-detection report (report) ---------------------------
    api_reporting: bool = setting(
        "PRIMUS_LENS_WANDB_API_REPORTING", True, _parse_bool,
        "Send rows and the framework-detection report to the Lens telemetry-processor.")
    api_preset: str = setting(
        "PRIMUS_LENS_API_PRESET", _DEFAULT_API_PRESET, _choice(tuple(API_PRESETS)),
        "Where the server is: lens (Primus Lens's telemetry-processor, "
        "`primus-lens-telemetry-processor.primus-lens:8989/v1`), robust (SaFE's primus-robust "
        "add-on 1.0.6 and later, `robust-api.primus-robust:8085/api/v1`) or robust-legacy "
        "(robust 1.0.0, `robust-analyzer.primus-robust:8085/api/v1`); see docs/reporting.md.")
    api_base_url: str = setting(
        "PRIMUS_LENS_API_BASE_URL", DEFAULT_API_BASE_URL, _url,
        "Base URL of the telemetry-processor, overriding the preset's; requests go to "
        "`{base}/wandb/logs` and `{base}/wandb/detection`.")
    robust_analyzer_url: Optional[str] = setting(
        "ROBUST_ANALYZER_URL", None, _url,
        "robust's address as AMD's own agents read it, a host such as "
        "`http://robust-api.primus-robust:8085`: the base URL becomes `{url}/api/v1` and robust's "
        "answers apply, unless `PRIMUS_LENS_API_BASE_URL` is set.")
    api_give_up_after: float = setting(
        "PRIMUS_LENS_API_GIVE_UP_AFTER", 1800.0, _number(float, 0.0, 7 * 86400.0),
        "Seconds of one identical failing answer (the same HTTP 500, say) after which the Lens "
        "sink stops for the process, saying what the server answers (the record keeps every "
        "row); see docs/reporting.md.")
    batch_size: int = setting(
        "PRIMUS_LENS_WANDB_BATCH_SIZE", 100, _number(int, 1, 500),
        "Most steps sent in one request (the server has no cap; we keep requests ≤ 1 MiB); "
        "the pod agent's batches grow to 500 steps while they wait for their turn "
        "(docs/agent.md).")
    flush_interval: float = setting(
        "PRIMUS_LENS_WANDB_FLUSH_INTERVAL", 1.0, _number(float, 0.05, 300.0),
        "Seconds the reporter waits to fill a batch before sending what it has.")
    connect_timeout: float = setting(
        "PRIMUS_LENS_API_CONNECT_TIMEOUT", 5.0, _number(float, 0.1, 60.0),
        "Seconds to establish a connection to the telemetry-processor.")
    read_timeout: float = setting(
        "PRIMUS_LENS_API_TIMEOUT", 30.0, _number(float, 1.0, 600.0),
        "Seconds to wait for a response to a rows request.")
    detection_timeout: float = setting(
        "PRIMUS_LENS_API_DETECTION_TIMEOUT", 150.0, _number(float, 1.0, 600.0),
        "Seconds to wait for a detection response (the server forwards it synchronously).")
    api_headers: Tuple[Tuple[str, str], ...] = setting(
        "PRIMUS_LENS_API_HEADERS", (), _headers,
        'Extra request headers, e.g. `Cookie: token=...` or a JSON object; never logged.',
        secret=True)
    api_verify: bool = setting(
        "PRIMUS_LENS_API_VERIFY", True, _parse_bool,
        "Verify the server's TLS certificate for https:// base URLs.")
    api_ca_bundle: Optional[str] = setting(
        "PRIMUS_LENS_API_CA_BUNDLE", None, _path,
        "PEM file of CA certificates to verify the server with (default: system/certifi).")
    api_use_proxy: bool = setting(
        "PRIMUS_LENS_API_USE_PROXY", False, _parse_bool,
        "Honour HTTP(S)_PROXY/NO_PROXY for the telemetry-processor (default: connect directly).")
    evidence: str = setting(
        "PRIMUS_LENS_EVIDENCE", "standard", _choice(_EVIDENCE_LEVELS),
        "What the detection report carries: standard (allow-listed evidence), minimal "
        "(framework names and versions only) or off (framework names only, no evidence); "
        "see docs/detection.md.")

    # -- The OTLP sink (report) --------------------------------------------------------------------
    # Up to four variables give each setting; read them with ``Config.otlp_setting``, which
    # takes each from the first tier that sets it (the order: ``OTLP_TIERS``).  The chart
    # sets only our names: the OTEL_* ones are also read by every OpenTelemetry SDK in the
    # process, wandb's own exporter to W&B among them.
    otlp: bool = setting(
        "PRIMUS_LENS_OTLP", False, _parse_bool,
        "Also export the rows as OTLP/HTTP metrics to an OpenTelemetry endpoint, configured by "
        "the `PRIMUS_LENS_OTLP_*` variables below; see docs/otlp.md.")
    otlp_endpoint: Optional[str] = setting(
        "PRIMUS_LENS_OTLP_ENDPOINT", None, _url,
        "OTLP base URL; metrics go to `{endpoint}/v1/metrics`. Unset: "
        "`OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`, then `OTEL_EXPORTER_OTLP_ENDPOINT`.")
    otlp_metrics_endpoint: Optional[str] = setting(
        "PRIMUS_LENS_OTLP_METRICS_ENDPOINT", None, _url,
        "Full OTLP metrics URL, used as it is; wins over `PRIMUS_LENS_OTLP_ENDPOINT`.")
    otlp_headers: Optional[Tuple[Tuple[str, str], ...]] = setting(
        "PRIMUS_LENS_OTLP_HEADERS", None, _pairs,
        "OTLP request headers, `key=value,...` (URL-decoded); never logged.", secret=True)
    otlp_timeout: Optional[int] = setting(
        "PRIMUS_LENS_OTLP_TIMEOUT", None, _number(int, 1, 600_000),
        "Milliseconds to wait for an OTLP answer (default 10000).")
    otlp_compression: Optional[str] = setting(
        "PRIMUS_LENS_OTLP_COMPRESSION", None, _choice(_OTLP_COMPRESSIONS),
        "OTLP body compression: gzip or none (default none).")
    otlp_protocol: Optional[str] = setting(
        "PRIMUS_LENS_OTLP_PROTOCOL", None, _otlp_protocol,
        "OTLP encoding: http/protobuf (default) or http/json (grpc is refused with a warning).")
    otlp_certificate: Optional[str] = setting(
        "PRIMUS_LENS_OTLP_CERTIFICATE", None, _path,
        "PEM file of CA certificates to verify the OTLP endpoint with.")
    otlp_client_certificate: Optional[str] = setting(
        "PRIMUS_LENS_OTLP_CLIENT_CERTIFICATE", None, _path,
        "PEM client certificate for mutual TLS with the OTLP endpoint.")
    otlp_client_key: Optional[str] = setting(
        "PRIMUS_LENS_OTLP_CLIENT_KEY", None, _path,
        "PEM private key of the client certificate.")
    otlp_resource_attributes: Optional[Tuple[Tuple[str, str], ...]] = setting(
        "PRIMUS_LENS_OTLP_RESOURCE_ATTRIBUTES", None, _pairs,
        "Extra OTLP resource attributes, `key=value,...` (URL-decoded).")
    otlp_service_name: Optional[str] = setting(
        "PRIMUS_LENS_OTLP_SERVICE_NAME", None, _text,
        "OTLP `service.name` (wins over one in the resource attributes; "
        "default `primus-lens-inject`).")
    otel_endpoint: str = setting(
        "OTEL_EXPORTER_OTLP_ENDPOINT", _DEFAULT_OTLP_ENDPOINT, _url,
        "Fallback of `PRIMUS_LENS_OTLP_ENDPOINT`, for runs by hand (see docs/otlp.md).")
    otel_metrics_endpoint: Optional[str] = setting(
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", None, _url,
        "Fallback of `PRIMUS_LENS_OTLP_METRICS_ENDPOINT`; wins over "
        "`OTEL_EXPORTER_OTLP_ENDPOINT`.")
    otel_headers: Tuple[Tuple[str, str], ...] = setting(
        "OTEL_EXPORTER_OTLP_HEADERS", (), _pairs,
        "Fallback of `PRIMUS_LENS_OTLP_HEADERS` (wandb ≥ 0.31 also sends it to W&B: doctor "
        "warns).", secret=True)
    otel_metrics_headers: Optional[Tuple[Tuple[str, str], ...]] = setting(
        "OTEL_EXPORTER_OTLP_METRICS_HEADERS", None, _pairs,
        "Fallback of `PRIMUS_LENS_OTLP_HEADERS`; wins over `OTEL_EXPORTER_OTLP_HEADERS`.",
        secret=True)
    otel_timeout: int = setting(
        "OTEL_EXPORTER_OTLP_TIMEOUT", 10_000, _number(int, 1, 600_000),
        "Fallback of `PRIMUS_LENS_OTLP_TIMEOUT`.")
    otel_metrics_timeout: Optional[int] = setting(
        "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", None, _number(int, 1, 600_000),
        "The same, metrics only; wins over `OTEL_EXPORTER_OTLP_TIMEOUT`.")
    otel_compression: str = setting(
        "OTEL_EXPORTER_OTLP_COMPRESSION", "none", _choice(_OTLP_COMPRESSIONS),
        "Fallback of `PRIMUS_LENS_OTLP_COMPRESSION`.")
    otel_metrics_compression: Optional[str] = setting(
        "OTEL_EXPORTER_OTLP_METRICS_COMPRESSION", None, _choice(_OTLP_COMPRESSIONS),
        "The same, metrics only; wins over `OTEL_EXPORTER_OTLP_COMPRESSION`.")
    otel_protocol: str = setting(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf", _otlp_protocol,
        "Fallback of `PRIMUS_LENS_OTLP_PROTOCOL`.")
    otel_metrics_protocol: Optional[str] = setting(
        "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", None, _otlp_protocol,
        "The same, metrics only; wins over `OTEL_EXPORTER_OTLP_PROTOCOL`.")
    otel_certificate: Optional[str] = setting(
        "OTEL_EXPORTER_OTLP_CERTIFICATE", None, _path,
        "Fallback of `PRIMUS_LENS_OTLP_CERTIFICATE`.")
    otel_metrics_certificate: Optional[str] = setting(
        "OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE", None, _path,
        "The same, metrics only; wins over `OTEL_EXPORTER_OTLP_CERTIFICATE`.")
    otel_client_certificate: Optional[str] = setting(
        "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", None, _path,
        "Fallback of `PRIMUS_LENS_OTLP_CLIENT_CERTIFICATE`.")
    otel_metrics_client_certificate: Optional[str] = setting(
        "OTEL_EXPORTER_OTLP_METRICS_CLIENT_CERTIFICATE", None, _path,
        "The same, metrics only; wins over `OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE`.")
    otel_client_key: Optional[str] = setting(
        "OTEL_EXPORTER_OTLP_CLIENT_KEY", None, _path,
        "Fallback of `PRIMUS_LENS_OTLP_CLIENT_KEY`.")
    otel_metrics_client_key: Optional[str] = setting(
        "OTEL_EXPORTER_OTLP_METRICS_CLIENT_KEY", None, _path,
        "The same, metrics only; wins over `OTEL_EXPORTER_OTLP_CLIENT_KEY`.")
    otel_resource_attributes: Tuple[Tuple[str, str], ...] = setting(
        "OTEL_RESOURCE_ATTRIBUTES", (), _pairs,
        "Fallback of `PRIMUS_LENS_OTLP_RESOURCE_ATTRIBUTES`.")
    otel_service_name: str = setting(
        "OTEL_SERVICE_NAME", "", _text,
        "Fallback of `PRIMUS_LENS_OTLP_SERVICE_NAME`.")

    # -- The pod's identity (downward API): the Lens sink's request identity, the OTLP resource ----
    pod_name: str = setting(
        "POD_NAME", "", _text, "Pod name (downward API): the server's identity key.")
    pod_uid: str = setting(
        "POD_UID", "", _text, "Pod UID (downward API), sent alongside the name.")
    pod_namespace: str = setting(
        "POD_NAMESPACE", "", _text, "Pod namespace (downward API).")
    workload_uid: str = setting(
        "WORKLOAD_UID", "", _text,
        "Lens workload UID, only when an operator knows it; otherwise the pod name is used.")
    node_name: str = setting(
        "NODE_NAME", "", _text, "Kubernetes node name, for diagnostics.")
    problems: Tuple[Problem, ...] = field(default=(), compare=False)  # not a setting: the
    # values from_env could not use

    @classmethod
    def from_env(cls, environ: Optional[Mapping[str, str]] = None) -> Config:
        env = os.environ if environ is None else environ
        values = {}
        problems = []
        for var in VARIABLES:
            value = _read(var, env)
            if isinstance(value, Problem):
                problems.append(value)
            elif value is not _UNSET:
                values[var.field] = value
        if "api_base_url" not in values and values.get("robust_analyzer_url"):
            host = values["robust_analyzer_url"]
            values["api_base_url"] = host if host.endswith(_ROBUST_ROUTES) else host + _ROBUST_ROUTES
        values.setdefault("api_base_url", API_PRESETS[values.get("api_preset", _DEFAULT_API_PRESET)])
        config = cls(**values)
        # an invalid base URL is said once, with the URL used instead and where it comes from
        used = f"{config.api_base_url} ({config.base_url_source})"
        return replace(config, problems=tuple(
            replace(p, used=used) if p.variable == "PRIMUS_LENS_API_BASE_URL" else p
            for p in problems))

    @property
    def has_identity(self) -> bool:
        """The server needs a pod name or a workload UID (spec §2); without one we only record."""
        return bool(self.pod_name or self.workload_uid)

    @property
    def robust(self) -> bool:
        """The server is primus-robust (a robust preset, or the base URL from
        ``ROBUST_ANALYZER_URL``): its error texts are not public, so an unknown 400 is retried
        for a while instead of dropped at once (``report.policy``)."""
        return self.api_preset in _ROBUST_PRESETS or self.base_url_source == "ROBUST_ANALYZER_URL"

    @property
    def base_url_source(self) -> str:
        """Where ``api_base_url`` came from, as a user would name it (a preset nobody chose is
        "the default preset"; one used because the base URL was invalid says so)."""
        if self.api_base_url == API_PRESETS.get(self.api_preset):
            chosen = "preset" if self.api_preset != _DEFAULT_API_PRESET else "the default preset"
            invalid = any(p.variable == "PRIMUS_LENS_API_BASE_URL" for p in self.problems)
            return f"{chosen} {self.api_preset}" + (
                ", PRIMUS_LENS_API_BASE_URL being invalid" if invalid else "")
        if self.robust_analyzer_url and self.api_base_url.startswith(self.robust_analyzer_url):
            return "ROBUST_ANALYZER_URL"
        return "PRIMUS_LENS_API_BASE_URL"

    def default_of(self, name: str) -> Any:
        return next(f.default for f in fields(self) if f.name == name)

    def otlp_setting(self, name: str) -> Any:
        """The OTLP setting ``name`` (one of ``OTLP_SETTINGS``) from the first tier of
        ``OTLP_TIERS`` that sets it, the last tier giving the default; a tier without that name
        is passed over (the resource attributes and the service name have no metrics-only
        variable).  ``endpoint`` is the URL metrics are posted to: a base endpoint (a variable
        without ``METRICS`` in its name) gets ``/v1/metrics`` after its path, a metrics
        endpoint is used as it is.  Timeouts are in milliseconds, as the variables give them."""
        if name not in OTLP_SETTINGS:
            raise ValueError(f"{name!r} is not an OTLP setting: one of {', '.join(OTLP_SETTINGS)}")
        chain = [f"{tier}_{name}" for tier in OTLP_TIERS if f"{tier}_{name}" in _BY_FIELD]
        for setter in chain:
            value = getattr(self, setter)
            if value is not None:
                break
        if name == "endpoint" and not setter.endswith("_metrics_endpoint"):
            return _metrics_url(value)
        return value


@dataclass(frozen=True)
class Variable:
    """One environment variable: the field it sets, how it is parsed, and what it means."""

    name: str
    field: str
    parse: Callable[[str], Any]
    doc: str
    secret: bool = False


# Every variable the injector reads, in declaration order (doctor, the README, the webhook's list
# of known names).
VARIABLES: Tuple[Variable, ...] = tuple(
    Variable(f.metadata[_SETTING][0], f.name, *f.metadata[_SETTING][1:])
    for f in fields(Config) if _SETTING in f.metadata)

_BY_FIELD = {var.field: var for var in VARIABLES}
_UNSET = object()


def _read(var: Variable, env: Mapping[str, str]) -> Any:
    """The parsed value of one variable, ``_UNSET`` when it is unset or blank, or the ``Problem``
    that made it unusable."""
    raw = env.get(var.name)
    if raw is None or raw.strip() == "":
        return _UNSET
    try:
        return var.parse(raw)
    except _InvalidValue as exc:
        return Problem(var.name, "<hidden>" if var.secret else raw, str(exc))


def value_of(name: str, environ: Optional[Mapping[str, str]] = None) -> Any:
    """The setting ``name`` (a ``Config`` field) as ``Config.from_env`` would read it (the default
    where unset or invalid), without parsing the others or saying anything about problems."""
    var = _BY_FIELD[name]
    value = _read(var, os.environ if environ is None else environ)
    if value is _UNSET or isinstance(value, Problem):
        return Config().default_of(name)
    return value


def variable_rows(config: Config) -> list:
    """(name, effective value, default, description) for doctor and docs; secrets are masked."""
    rows = []
    for var in VARIABLES:
        value = getattr(config, var.field)
        default = config.default_of(var.field)
        if var.secret and value:
            value = "<set, hidden>"
        rows.append((var.name, value, default, var.doc))
    return rows


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None or value in ((), ""):
        return "unset"
    return str(value)


def markdown_table() -> str:
    """The README's configuration table, generated from ``VARIABLES`` (a test keeps it current)."""
    defaults = Config()
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for var in VARIABLES:
        rows.append(f"| `{var.name}` | `{_shown(getattr(defaults, var.field))}` | {var.doc} |")
    return "\n".join(rows)


def endpoint_hint(config: Config, problem: str) -> str:
    """What to say, once, when the endpoint answers 404 or its host name does not resolve: the
    URL that was tried, where it came from, and the presets there are."""
    source = config.base_url_source
    presets = "; ".join(f"{name}: {url}" for name, url in API_PRESETS.items())
    return (f"NO TELEMETRY ENDPOINT: {config.api_base_url} ({source}) {problem}. Presets "
            f"(PRIMUS_LENS_API_PRESET): {presets}; or set PRIMUS_LENS_API_BASE_URL to your "
            "server's base URL")
