"""OTLP/HTTP metrics as the receiver reads and answers them (``POST /v1/metrics``).

The OpenTelemetry protocol sends an ``ExportMetricsServiceRequest`` in protobuf or in OTLP/JSON
(proto3 JSON with lowerCamelCase keys, 64-bit integers as strings).  The receiver reads both
with one description of the messages below, which names only the fields it stores: a metric's
name, description and unit, and the number data points of gauges and sums with their
attributes, times and values, under the resource's attributes.  Other fields are skipped as
the specification asks of a receiver.  Histogram, exponential histogram and summary points are
counted and refused through ``partial_success``, as are points without a finite value, so a
client's handling of partial success can be tested with ordinary bodies.

Answers follow the OTLP/HTTP specification: 200 with an ``ExportMetricsServiceResponse`` in the
request's encoding, 400 with a ``google.rpc.Status`` for a body that cannot be decoded, 415 for
any other content type.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import math
import re
import zlib
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Tuple, cast

from . import protowire
from .protowire import FIXED64, LENGTH, VARINT, WireError
from .responses import Response
from .schema import OtlpRow, dumps

PATH = "/v1/metrics"
PROTOBUF = "application/x-protobuf"
JSON = "application/json"
MAX_DEPTH = 100  # messages in one another, protobuf's own limit (attribute values nest freely)
_MAX_UNPACKED = 64 << 20  # bytes a gzip body may inflate to
_INT64_MAX = 2**63 - 1
_INTEGER = re.compile(r"-?[0-9]+")
_GRPC_CODES = {400: 3, 429: 8, 500: 13, 502: 14, 503: 14, 504: 4}  # google.rpc.Code by status; else 2


class BadRequest(ValueError):
    """The body is not an ExportMetricsServiceRequest in the declared encoding: 400."""


# -- the messages, as far as the receiver reads them ----------------------------------------------

_WIRE = {"string": LENGTH, "bytes": LENGTH, "message": LENGTH, "bool": VARINT, "int64": VARINT,
         "fixed64": FIXED64, "sfixed64": FIXED64, "double": FIXED64}


class Field(NamedTuple):
    number: int
    name: str  # the proto name; OTLP/JSON uses its lowerCamelCase form (both are accepted)
    kind: str  # a key of _WIRE
    message: Optional[Message] = None
    repeated: bool = False
    oneof: str = ""  # setting one member of a oneof clears the others (the last one wins)

    @property
    def nested(self) -> Message:
        """The type of a ``message`` field's value: every such field is declared with one."""
        if self.message is None:
            raise TypeError(f"{self.name} is a {self.kind} field, not a message")
        return self.message


class Message:
    """A protobuf message: the fields the receiver reads, by number and by JSON name."""

    def __init__(self, name: str, *fields: Field) -> None:
        self.name = name
        self.fields: Dict[int, Field] = {}
        self.by_key: Dict[str, Field] = {}
        self.others: Dict[str, Tuple[str, ...]] = {}  # a oneof member's name -> the other members
        self.define(*fields)

    def define(self, *fields: Field) -> None:
        """Add fields; separate from the constructor for messages that contain themselves."""
        for field in fields:
            self.fields[field.number] = field
            head, *rest = field.name.split("_")
            self.by_key[field.name] = self.by_key[head + "".join(p.title() for p in rest)] = field
        for field in self.fields.values():
            if field.oneof:
                self.others[field.name] = tuple(other.name for other in self.fields.values()
                                                if other.oneof == field.oneof and other is not field)


def _message(number: int, name: str, message: Message, repeated: bool = False, oneof: str = "") -> Field:
    return Field(number, name, "message", message, repeated, oneof)


_ANY_VALUE = Message("AnyValue")
_KEY_VALUE = Message("KeyValue", Field(1, "key", "string"), _message(2, "value", _ANY_VALUE))
_ANY_VALUE.define(
    Field(1, "string_value", "string", oneof="value"), Field(2, "bool_value", "bool", oneof="value"),
    Field(3, "int_value", "int64", oneof="value"), Field(4, "double_value", "double", oneof="value"),
    _message(5, "array_value", Message("ArrayValue", _message(1, "values", _ANY_VALUE, True)), oneof="value"),
    _message(6, "kvlist_value", Message("KeyValueList", _message(1, "values", _KEY_VALUE, True)),
             oneof="value"),
    Field(7, "bytes_value", "bytes", oneof="value"))
_NUMBER_POINT = Message(
    "NumberDataPoint", _message(7, "attributes", _KEY_VALUE, True),
    Field(2, "start_time_unix_nano", "fixed64"), Field(3, "time_unix_nano", "fixed64"),
    Field(4, "as_double", "double", oneof="value"), Field(6, "as_int", "sfixed64", oneof="value"))
_NUMBERS = Message("Gauge or Sum", _message(1, "data_points", _NUMBER_POINT, True))
_OTHERS = Message("Histogram or Summary", _message(1, "data_points", Message("data point"), True))
_METRIC = Message(
    "Metric", Field(1, "name", "string"), Field(2, "description", "string"), Field(3, "unit", "string"),
    *(_message(number, kind, data, oneof="data") for number, kind, data in (
        (5, "gauge", _NUMBERS), (7, "sum", _NUMBERS), (9, "histogram", _OTHERS),
        (10, "exponential_histogram", _OTHERS), (11, "summary", _OTHERS))))
_REQUEST = Message("ExportMetricsServiceRequest", _message(1, "resource_metrics", Message(
    "ResourceMetrics",
    _message(1, "resource", Message("Resource", _message(1, "attributes", _KEY_VALUE, True))),
    _message(2, "scope_metrics", Message(
        "ScopeMetrics",
        _message(1, "scope", Message("InstrumentationScope", Field(1, "name", "string"),
                                     Field(2, "version", "string"))),
        _message(2, "metrics", _METRIC, True)), True)), True))
_NUMBER_KINDS = ("gauge", "sum")
_DATA_KINDS = tuple(field.name for field in _METRIC.fields.values() if field.oneof)


def _set(out: Dict[str, Any], message: Message, field: Field, value: Any) -> None:
    for other in message.others.get(field.name, ()):
        out.pop(other, None)
    out[field.name] = value


# -- protobuf -----------------------------------------------------------------------------------

def _from_proto(message: Message, data: bytes, where: str, depth: int) -> Dict[str, Any]:
    """The fields of ``message`` that ``data`` sets, by proto name; repeated ones as lists.  A
    singular message given more than once is merged, as protobuf parsers do."""
    if depth > MAX_DEPTH:
        raise BadRequest(f"{where}: nested more than {MAX_DEPTH} messages deep")
    out: Dict[str, Any] = {}
    parts: Dict[Field, List[bytes]] = {}
    try:
        for number, wire, value in protowire.fields(data):
            field = message.fields.get(number)
            if field is None:
                continue
            path = f"{where}.{field.name}"
            if wire != _WIRE[field.kind]:
                raise BadRequest(f"{path}: wire type {wire}, expected {_WIRE[field.kind]}")
            if field.kind != "message":
                _set(out, message, field, _proto_scalar(field.kind, value, path))
                continue
            chunk = cast(bytes, value)  # wire type LEN, checked above: the message's bytes
            if field.repeated:
                items = out.setdefault(field.name, [])
                items.append(_from_proto(field.nested, chunk, f"{path}[{len(items)}]", depth + 1))
            else:
                parts.setdefault(field, []).append(chunk)
                _set(out, message, field, None)  # keeps the oneof order; filled in below
    except WireError as exc:
        raise BadRequest(f"{where}: {exc}") from None
    for field, chunks in parts.items():
        if field.name in out:
            out[field.name] = _from_proto(field.nested, b"".join(chunks), f"{where}.{field.name}", depth + 1)
    return out


def _proto_scalar(kind: str, value: Any, where: str) -> Any:
    if kind == "string":
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest(f"{where}: invalid UTF-8 in a string") from None
    if kind == "bool":
        return value != 0
    if kind in ("int64", "sfixed64"):
        return protowire.signed64(value)
    if kind == "double":
        return protowire.double(value)
    return value  # bytes, fixed64


# -- OTLP/JSON ----------------------------------------------------------------------------------

def _from_json(message: Message, value: Any, where: str, depth: int) -> Dict[str, Any]:
    if depth > MAX_DEPTH:
        raise BadRequest(f"{where}: nested more than {MAX_DEPTH} messages deep")
    if not isinstance(value, dict):
        raise BadRequest(f"{where}: expected an object for {message.name}")
    out: Dict[str, Any] = {}
    for key, item in value.items():
        field = message.by_key.get(key)
        if field is None or item is None:  # unknown keys are ignored, null is the default
            continue
        path = f"{where}.{key}"
        if not field.repeated:
            _set(out, message, field, _json_value(field, item, path, depth))
        elif isinstance(item, list):
            out[field.name] = [_json_value(field, element, f"{path}[{index}]", depth)
                               for index, element in enumerate(item)]
        else:
            raise BadRequest(f"{path}: expected an array")
    return out


def _json_value(field: Field, value: Any, where: str, depth: int) -> Any:
    kind = field.kind
    if kind == "message":
        return _from_json(field.nested, value, where, depth + 1)
    if kind == "string" and isinstance(value, str):
        return value
    if kind == "bool" and isinstance(value, bool):
        return value
    if kind == "bytes" and isinstance(value, str):
        try:
            return base64.b64decode(value.replace("-", "+").replace("_", "/") + "=" * (-len(value) % 4),
                                    validate=True)
        except binascii.Error:
            raise BadRequest(f"{where}: not base64") from None
    if kind == "double" and not isinstance(value, bool):
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # "NaN", "Infinity", "-Infinity" and numbers as strings
            except ValueError:
                pass
    if kind in ("int64", "sfixed64", "fixed64") and not isinstance(value, bool):
        number = _json_integer(value)
        low, high = (0, 2**64 - 1) if kind == "fixed64" else (-(2**63), _INT64_MAX)
        if number is not None and low <= number <= high:
            return number
    raise BadRequest(f"{where}: {json.dumps(value)[:40]} is not a valid {kind}")


def _json_integer(value: Any) -> Optional[int]:
    """proto3 JSON integers: a number without a fraction, or a decimal string."""
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and _INTEGER.fullmatch(value):
        return int(value)
    return None


def _no_constants(token: str) -> Any:
    raise ValueError(f"{token} is not JSON")


# -- HTTP -----------------------------------------------------------------------------------------

def encoding_of(content_type: str) -> Optional[str]:
    """``PROTOBUF`` or ``JSON`` for the request's media type (parameters ignored), else None."""
    media = content_type.split(";", 1)[0].strip().lower()
    return media if media in (PROTOBUF, JSON) else None


def unpack(content_encoding: str, body: bytes) -> bytes:
    """The body with its ``Content-Encoding`` undone: none or gzip."""
    encoding = content_encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding != "gzip":
        raise BadRequest(f"unsupported Content-Encoding {content_encoding!r} (gzip or none)")
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        data = inflater.decompress(body, _MAX_UNPACKED)
    except zlib.error as exc:
        raise BadRequest(f"the gzip body is corrupt: {exc}") from None
    if inflater.unconsumed_tail:
        raise BadRequest(f"the gzip body inflates beyond {_MAX_UNPACKED} bytes")
    if not inflater.eof:
        raise BadRequest("the gzip body is truncated")
    return data


def decode(encoding: str, data: bytes) -> Dict[str, Any]:
    """The request's fields, by proto name, whichever the encoding."""
    if encoding == PROTOBUF:
        return _from_proto(_REQUEST, data, "request", 0)
    try:
        document = json.loads(data, parse_constant=_no_constants)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise BadRequest(f"the body is not JSON: {exc}") from None
    return _from_json(_REQUEST, document, "request", 0)


# -- from the request to stored points ---------------------------------------------------------

@dataclasses.dataclass
class Export:
    """What one request holds: the points to store, and how many were refused for what reason."""

    rows: List[OtlpRow] = dataclasses.field(default_factory=list)
    rejected: Dict[str, int] = dataclasses.field(default_factory=dict)

    def reject(self, reason: str, count: int = 1) -> None:
        if count:
            self.rejected[reason] = self.rejected.get(reason, 0) + count

    @property
    def rejected_count(self) -> int:
        return sum(self.rejected.values())

    def error_message(self) -> str:
        return "; ".join(f"{count} {reason}" for reason, count in self.rejected.items())


def read(request: Mapping[str, Any], rejects: Callable[[], bool]) -> Export:
    """Every number data point of ``request`` as a row, or as a rejection; ``rejects`` is asked
    once per otherwise good point (the receiver's fault that refuses points)."""
    export = Export()
    for resource_metrics in request.get("resource_metrics", []):
        resource = dumps(attributes(resource_metrics.get("resource", {}).get("attributes", [])))
        for scope_metrics in resource_metrics.get("scope_metrics", []):
            scope = scope_metrics.get("scope", {}).get("name", "")
            for metric in scope_metrics.get("metrics", []):
                _read_metric(export, metric, resource, scope, rejects)
    return export


def _read_metric(export: Export, metric: Mapping[str, Any], resource: str, scope: str,
                 rejects: Callable[[], bool]) -> None:
    kind = next((name for name in _DATA_KINDS if name in metric), "")
    if not kind:
        return  # a metric without data holds no points
    points = metric[kind].get("data_points", [])
    if kind not in _NUMBER_KINDS:
        export.reject(f"{kind} points (this receiver stores gauges and sums)", len(points))
        return
    name = metric.get("name", "")
    if not name:
        export.reject("points of a metric without a name", len(points))
        return
    fixed = (resource, scope, name, metric.get("description", ""), metric.get("unit", ""), kind)
    for point in points:
        value = point.get("as_double", point.get("as_int"))
        times = (point.get("start_time_unix_nano", 0), point.get("time_unix_nano", 0))
        if value is None:
            export.reject("points without a value")
        elif isinstance(value, float) and not math.isfinite(value):
            export.reject("points with a non-finite value")
        elif max(times) > _INT64_MAX:
            export.reject("points with a time beyond 2^63-1 ns")
        elif rejects():
            export.reject("points refused by the receiver's otlp_reject_rate fault")
        else:
            pairs = point.get("attributes")
            export.rows.append(OtlpRow(*fixed, *times, value, dumps(attributes(pairs)) if pairs else "{}"))


def attributes(pairs: List[Mapping[str, Any]]) -> Dict[str, Any]:
    """KeyValue pairs as a JSON object (a repeated key: the last one wins)."""
    return {pair.get("key", ""): _plain(pair.get("value", {})) for pair in pairs}


def _plain(any_value: Mapping[str, Any]) -> Any:
    """An AnyValue as plain JSON: bytes in base64, a non-finite double as its name, unset as null."""
    for name, item in any_value.items():  # one member at most: it is a oneof
        if name == "array_value":
            return [_plain(value) for value in item.get("values", [])]
        if name == "kvlist_value":
            return attributes(item.get("values", []))
        if name == "bytes_value":
            return base64.b64encode(item).decode("ascii")
        if isinstance(item, float) and not math.isfinite(item):
            return repr(item)
        return item
    return None


# -- answers --------------------------------------------------------------------------------------

def success(encoding: str, export: Export) -> Response:
    """200 with an ExportMetricsServiceResponse; ``partial_success`` only when points were refused."""
    rejected = export.rejected_count
    note = f"partial success: {export.error_message()}" if rejected else "OK"
    if encoding == JSON:
        body = {"partialSuccess": {"rejectedDataPoints": str(rejected),
                                   "errorMessage": export.error_message()}} if rejected else {}
        return Response(200, dumps(body).encode(), JSON, note=note)
    payload = b""
    if rejected:
        partial = (protowire.encode_field(1, rejected)
                   + protowire.encode_field(2, export.error_message().encode()))
        payload = protowire.encode_field(1, partial)
    return Response(200, payload, PROTOBUF, note=note)


def failure(encoding: str, status: int, message: str,
            headers: Tuple[Tuple[str, str], ...] = ()) -> Response:
    """``status`` with a google.rpc.Status in the request's encoding, as the specification asks."""
    code = _GRPC_CODES.get(status, 2)
    if encoding == JSON:
        body = dumps({"code": code, "message": message}).encode()
    else:
        body = protowire.encode_field(1, code) + protowire.encode_field(2, message.encode())
    return Response(status, body, encoding, headers, note=message)

