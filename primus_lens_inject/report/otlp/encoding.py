"""The OTLP data model of the record's rows, and its encoding as an OTLP/HTTP
``ExportMetricsServiceRequest`` in protobuf or JSON (docs/otlp.md has the mapping table).

Written by hand for the few fixed message shapes we send (varints, length-delimited fields,
fixed64 timestamps, doubles), so a training process imports neither ``protobuf`` nor any
``opentelemetry`` package: the application's own versions of those always win, and nothing is
loaded when the sink is off.  It is also what keeps the cost near 1 µs per data point: each
metric's header and attributes are encoded once and cached, a point is one ``struct.pack``.

The model: one Gauge per record key, one data point per row at the row's time; the step is its
own gauge (``wandb.step``), never an attribute.  A wandb key ``k`` becomes ``wandb.<k>`` with
every character outside ``[A-Za-z0-9_./-]`` replaced by ``_`` (cut to 255 characters); when that
changed the key, the point carries the key itself as ``wandb.key`` so two keys that map to one
name stay two series.  ``_primus_sys_*`` and ``_primus_gpu_*`` figures take the OpenTelemetry
semantic conventions' names and units (``system.*``, ``process.*``, ``hw.*``).  The run, the rank
and the pod are resource attributes (``resource_attributes``).
"""

from __future__ import annotations

import json
import re
import struct
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ... import __version__

_SCOPE_NAME = "primus-lens-inject"
_DEFAULT_SERVICE_NAME = "primus-lens-inject"
_STEP_METRIC = "wandb.step"  # no key maps to it: the key "step" is sent as "wandb/step" (sendable)
_STEP_UNIT = "{step}"
_KEY_PREFIX = "wandb."
_KEY_ATTRIBUTE = "wandb.key"
_MAX_NAME = 255
_CACHE_LIMIT = 50_000  # metric descriptions kept; a run with more distinct keys starts over
_PROTOBUF_TYPES = ("application/x-protobuf", "application/protobuf")  # what we send, and accept

_OUTSIDE_NAME = re.compile(r"[^A-Za-z0-9_./-]")
_INTEGER = re.compile(r"-?[0-9]{1,19}\Z")  # an int64 as OTLP/JSON writes it
_GPU_KEY = re.compile(r"_primus_gpu_(?:(\d+)_)?([a-z_]+)\Z")
_SYS_PREFIX = "_primus_sys_"

# record key -> (name, unit, scale): host figures (metrics/host.py)
_SYSTEM = {
    "_primus_sys_cpu_percent": ("system.cpu.utilization", "1", 0.01),
    "_primus_sys_memory_percent": ("system.memory.utilization", "1", 0.01),
    "_primus_sys_process_rss_bytes": ("process.memory.usage", "By", 1.0),
}
# GPU figure (metrics/gpu/device.py) -> (name, unit, scale, temperature sensor location or "")
_GPU = {
    "util_percent": ("hw.gpu.utilization", "1", 0.01, ""),
    "memory_used_bytes": ("hw.gpu.memory.usage", "By", 1.0, ""),
    "memory_total_bytes": ("hw.gpu.memory.limit", "By", 1.0, ""),
    "power_watts": ("hw.power", "W", 1.0, ""),
    "temperature_celsius": ("hw.temperature", "Cel", 1.0, "gpu"),
    "temperature_junction_celsius": ("hw.temperature", "Cel", 1.0, "junction"),
    "temperature_memory_celsius": ("hw.temperature", "Cel", 1.0, "memory"),
}

Attributes = Sequence[Tuple[str, Any]]


class Metric:
    """How one record key is exported; the encoded pieces are made once per key.  Compared by
    identity: the encoder holds one per key."""

    __slots__ = (
        "attributes",
        "header",
        "json_attributes",
        "name",
        "point_attributes",
        "scale",
        "unit",
    )

    def __init__(self, name: str, unit: str, scale: float,
                 attributes: Tuple[Tuple[str, Any], ...]) -> None:
        self.name = name
        self.unit = unit
        self.scale = scale  # record value × scale = exported value (percent -> ratio)
        self.attributes = attributes
        self.header = _string(1, name) + (_string(3, unit) if unit else b"")  # Metric 1, 3
        self.point_attributes = b"".join(_field(7, _key_value(k, v)) for k, v in attributes)
        self.json_attributes = json_attributes(attributes)


def _metric_name(key: str) -> str:
    """``wandb.<key>`` made a valid OpenTelemetry instrument name."""
    return (_KEY_PREFIX + _OUTSIDE_NAME.sub("_", key))[:_MAX_NAME]


def describe(key: str) -> Metric:
    """The metric that carries the record key ``key``."""
    attributes: List[Tuple[str, Any]] = []
    unit, scale = "", 1.0
    gpu = _GPU_KEY.match(key) if key.startswith("_primus_gpu_") else None
    if key in _SYSTEM:
        name, unit, scale = _SYSTEM[key]
    elif gpu is not None:
        index, figure = gpu.groups()
        gpu_id = "gpu" if index is None else f"gpu{index}"
        name, unit, scale, sensor = _GPU.get(figure, ("primus.gpu." + figure, "", 1.0, ""))
        if sensor:
            attributes += [("hw.id", f"{gpu_id}.{sensor}"), ("hw.type", "temperature"),
                           ("hw.parent", gpu_id), ("hw.sensor_location", sensor)]
        else:
            attributes += [("hw.id", gpu_id), ("hw.type", "gpu")]
    elif key.startswith(_SYS_PREFIX):
        name = _metric_name(key[len(_SYS_PREFIX):]).replace(_KEY_PREFIX, "primus.sys.", 1)
    else:
        name = _metric_name(key)
        if name != _KEY_PREFIX + key:
            attributes.append((_KEY_ATTRIBUTE, key))
    return Metric(name, unit, scale, tuple(attributes))


def resource_attributes(service: str, instance: str, pod: Dict[str, str], topology: Any,
                        rank: int, run_id: str, project: str,
                        extra: Attributes = ()) -> List[Tuple[str, Any]]:
    """The resource of one batch (one writer, one run), in order: ``extra`` (from
    ``OTEL_RESOURCE_ATTRIBUTES``) overrides the service and Kubernetes defaults; the service
    name given (``OTEL_SERVICE_NAME``) overrides both; the run, the ranks and the instance
    (which Prometheus turns into the ``instance`` label, so ranks stay apart) are always ours."""
    out: Dict[str, Any] = {"service.name": _DEFAULT_SERVICE_NAME}
    for key, value in (("k8s.pod.name", pod.get("pod_name", "")),
                       ("k8s.pod.uid", pod.get("pod_uid", "")),
                       ("k8s.namespace.name", pod.get("namespace", "")),
                       ("k8s.node.name", pod.get("node_name", ""))):
        if value:
            out[key] = value
    out.update(extra)
    if service:
        out["service.name"] = service
    out["service.instance.id"] = instance
    out.update({"primus.rank": rank, "primus.local_rank": topology.local_rank,
                "primus.node_rank": topology.node, "primus.world_size": topology.world_size,
                "wandb.run.id": run_id})
    if project:
        out["wandb.project"] = project
    return list(out.items())


class Encoder:
    """Batches of rows as request bodies of one encoding; keeps the per-key descriptions."""

    def __init__(self, protocol: str) -> None:
        self.json = protocol == "http/json"
        self._metrics: Dict[str, Metric] = {}
        # the gauge of each entry's step (None: the entries' steps are not sent, ``otlp.pulse``)
        self._steps: Optional[Metric] = Metric(_STEP_METRIC, _STEP_UNIT, 1.0, ())

    def metric(self, key: str) -> Metric:
        found = self._metrics.get(key)
        if found is None:
            if len(self._metrics) >= _CACHE_LIMIT:
                self._metrics.clear()
            found = self._metrics[key] = describe(key)
        return found

    def bodies(self, resource: Attributes, entries: List[Dict[str, Any]],
               limit: int) -> Tuple[List[bytes], int]:
        """``entries`` (``sendable.log_entry`` shapes of one run) as ``ExportMetricsServiceRequest``
        bodies of at most ``limit`` bytes each (before compression), and their number of data
        points.  A request too large is halved by data points, so a row of 60,000 keys becomes
        a few requests and each point, the step's included, is sent once; only a lone point
        larger than the limit goes as it is."""
        points = self._points(entries)
        return self._bounded(resource, points, limit), sum(len(p) for p in points.values())

    def _points(self, entries: List[Dict[str, Any]]) -> Dict[Metric, List[Tuple[int, float]]]:
        """The points of each metric, in the entries' order; gathered by key first (a batch
        repeats its keys row after row), then described and scaled once per key."""
        steps = self._steps  # None: the entries' steps are not sent (``otlp.pulse``)
        stamps: List[Tuple[int, float]] = []
        by_key: Dict[str, List[Tuple[int, float]]] = {}
        for entry in entries:
            at = int(entry["timestamp"] * 1e9)
            if steps is not None:
                stamps.append((at, float(entry["step"])))
            for key, value in entry["data"].items():
                found = by_key.get(key)
                if found is None:
                    found = by_key[key] = []
                found.append((at, value))
        points: Dict[Metric, List[Tuple[int, float]]] = {}
        if steps is not None:
            points[steps] = stamps
        for key, values in by_key.items():
            info = self.metric(key)
            points[info] = values if info.scale == 1.0 \
                else [(at, value * info.scale) for at, value in values]
        return points

    def _request(self, resource: Attributes, points: Dict[Metric, List[Tuple[int, float]]]
                 ) -> bytes:
        if self.json:
            return _json_request(resource, points)
        return _protobuf_request(resource, points)

    def _bounded(self, resource: Attributes, points: Dict[Metric, List[Tuple[int, float]]],
                 limit: int) -> List[bytes]:
        body = self._request(resource, points)
        if len(body) <= limit:
            return [body]  # the common case: nothing more to build
        flat = [(info, point) for info, values in points.items() for point in values]
        if len(flat) < 2:
            return [body]
        half = len(flat) // 2
        out: List[bytes] = []
        for part in (flat[:half], flat[half:]):
            grouped: Dict[Metric, List[Tuple[int, float]]] = {}
            for info, point in part:
                grouped.setdefault(info, []).append(point)
            out += self._bounded(resource, grouped, limit)
        return out


# -- protobuf ---------------------------------------------------------------------------------

_DOUBLE = struct.Struct("<d")
_POINT = struct.Struct("<BQBd")  # time_unix_nano (3, fixed64), as_double (4, double)
_BARE_POINT = struct.Struct("<BBBQBd")  # the same inside Gauge.data_points (1) with its length


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64: two's complement, ten bytes
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _string(number: int, text: str) -> bytes:
    return _field(number, text.encode("utf-8", "replace"))


def _any_value(value: Any) -> bytes:
    if isinstance(value, bool):
        return bytes((0x10, int(value)))  # bool_value (2)
    if isinstance(value, int):
        return b"\x18" + _varint(value)  # int_value (3)
    if isinstance(value, float):
        return b"\x21" + _DOUBLE.pack(value)  # double_value (4)
    return _string(1, str(value))  # string_value (1)


def _key_value(key: str, value: Any) -> bytes:
    return _string(1, key) + _field(2, _any_value(value))


def _by_name(points: Dict[Metric, List[Tuple[int, float]]]) -> List[List[Metric]]:
    """Keys that share a name and unit (``wandb.key`` tells them apart) form one metric."""
    groups: Dict[Tuple[str, str], List[Metric]] = {}
    for info in points:
        groups.setdefault((info.name, info.unit), []).append(info)
    return list(groups.values())


def _protobuf_request(resource: Attributes, points: Dict[Metric, List[Tuple[int, float]]]
                      ) -> bytes:
    metrics = []
    bare, with_attributes = _BARE_POINT.pack, _POINT.pack
    for group in _by_name(points):
        gauge = []
        for info in group:
            values = points[info]
            if info.point_attributes:
                prefix = info.point_attributes
                gauge += [_field(1, prefix + with_attributes(0x19, at, 0x21, value))
                          for at, value in values]
            else:
                gauge += [bare(0x0A, 18, 0x19, at, 0x21, value) for at, value in values]
        metrics.append(_field(2, group[0].header + _field(5, b"".join(gauge))))
    scope = _field(1, _string(1, _SCOPE_NAME) + _string(2, __version__))
    resource_pb = b"".join(_field(1, _key_value(k, v)) for k, v in resource)
    return _field(1, _field(1, resource_pb) + _field(2, scope + b"".join(metrics)))


# -- JSON (OTLP/JSON: lowerCamelCase names, 64-bit integers as decimal strings) ----------------

def _json_value(value: Any) -> Dict[str, Any]:
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, float):
        return {"doubleValue": value}
    return {"stringValue": str(value)}


def json_attributes(attributes: Attributes) -> List[Dict[str, Any]]:
    return [{"key": k, "value": _json_value(v)} for k, v in attributes]


def _json_request(resource: Attributes, points: Dict[Metric, List[Tuple[int, float]]]) -> bytes:
    metrics = []
    for group in _by_name(points):
        data: List[Dict[str, Any]] = []
        for info in group:
            if info.json_attributes:
                data += [{"attributes": info.json_attributes, "timeUnixNano": str(at),
                          "asDouble": float(value)} for at, value in points[info]]
            else:
                data += [{"timeUnixNano": str(at), "asDouble": float(value)}
                         for at, value in points[info]]
        metric: Dict[str, Any] = {"name": group[0].name, "gauge": {"dataPoints": data}}
        if group[0].unit:
            metric["unit"] = group[0].unit
        metrics.append(metric)
    request = {"resourceMetrics": [{
        "resource": {"attributes": json_attributes(resource)},
        "scopeMetrics": [{"scope": {"name": _SCOPE_NAME, "version": __version__},
                          "metrics": metrics}]}]}
    return json.dumps(request, separators=(",", ":"), allow_nan=False).encode("utf-8")


# -- the answer -------------------------------------------------------------------------------

def read_answer(content_type: str, body: bytes) -> Optional[Tuple[int, str]]:
    """(rejected data points, error message) of a 2xx answer that is an
    ``ExportMetricsServiceResponse`` in the encoding its ``Content-Type`` names, (0, "") for an
    empty body (the specification lets a server answer so); None for anything else, such as the
    HTML page of a proxy or an ingress default backend, which proves nothing was exported."""
    if not body:
        return 0, ""
    media = content_type.partition(";")[0].strip().lower()
    try:
        if media == "application/json":
            return _json_answer(json.loads(body))
        if media in _PROTOBUF_TYPES:
            return _protobuf_answer(body)
    except (ValueError, TypeError, IndexError, RecursionError):
        pass
    return None


def _json_answer(answer: Any) -> Optional[Tuple[int, str]]:
    """OTLP/JSON: an object whose ``partialSuccess`` (proto3 JSON also allows the proto name),
    when present, holds an integer count and a string message."""
    if not isinstance(answer, dict):
        return None
    partial = answer.get("partialSuccess", answer.get("partial_success")) or {}
    if not isinstance(partial, dict):
        return None
    rejected = partial.get("rejectedDataPoints", partial.get("rejected_data_points")) or 0
    message = partial.get("errorMessage", partial.get("error_message")) or ""
    if isinstance(rejected, str) and _INTEGER.match(rejected):
        rejected = int(rejected)
    if type(rejected) is not int or not isinstance(message, str):
        return None
    return rejected, message


def _protobuf_answer(body: bytes) -> Optional[Tuple[int, str]]:
    """The binary message: field 1 a message whose field 1 is a varint and field 2 UTF-8 text
    (unknown fields skipped, as protobuf readers do); anything malformed is not an answer."""
    outer = _fields(body)
    partial = outer.get(1, [b""])[-1]
    if not isinstance(partial, bytes):
        return None
    found = _fields(partial)
    rejected = found.get(1, [0])[-1]
    message = found.get(2, [b""])[-1]
    if not isinstance(rejected, int) or not isinstance(message, bytes):
        return None
    if rejected >= 1 << 63:  # int64 on the wire: two's complement
        rejected -= 1 << 64
    return rejected, message.decode("utf-8")


def _fields(data: bytes) -> Dict[int, List[Any]]:
    """A protobuf message's varint and length-delimited fields by number (others skipped);
    ValueError or IndexError for bytes that are not a well-formed message."""
    out: Dict[int, List[Any]] = {}
    at = 0
    while at < len(data):
        tag, at = _read_varint(data, at)
        kind = tag & 7
        value: Any
        if kind == 0:
            value, at = _read_varint(data, at)
        elif kind == 2:
            size, at = _read_varint(data, at)
            value, at = data[at:at + size], at + size
        elif kind in (1, 5):
            value, at = None, at + (8 if kind == 1 else 4)
        else:
            raise ValueError("unsupported wire type")
        if at > len(data) or tag >> 3 == 0:
            raise ValueError("truncated message or field number 0")
        if value is not None:
            out.setdefault(tag >> 3, []).append(value)
    return out


def _read_varint(data: bytes, at: int) -> Tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def content_type(protocol: str) -> str:
    return "application/json" if protocol == "http/json" else _PROTOBUF_TYPES[0]
