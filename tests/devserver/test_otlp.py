"""``primus-lens receive --otlp``: OTLP/HTTP metrics, read without the protobuf package.

Every body here is built with the official ``opentelemetry-proto`` classes and encoded by the
protobuf library itself (binary, and ``json_format`` for OTLP/JSON), so the receiver's own wire
reader is checked against the reference encoder: each stored row is compared by value with what
the message holds, read through the official classes.  Answers are decoded with the official
response classes too.
"""

from __future__ import annotations

import base64
import gzip
import http.client
import json
import math
import os
import select
import signal
import subprocess
import sys
from typing import Any, Callable, Dict, List, Optional, Tuple
from urllib.parse import urlsplit

import pytest
import yaml
from google.protobuf import json_format
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric, NumberDataPoint

from primus_lens_inject.devserver.faults import Faults
from primus_lens_inject.devserver.receiver import Receiver

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROTOBUF = "application/x-protobuf"
JSON = "application/json"
T0 = 1_767_225_612_500_000_000  # ns


class Reply:
    def __init__(self, status: int, headers: Dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


def send(endpoint: str, body: bytes, content_type: str = PROTOBUF, method: str = "POST",
         headers: Optional[Dict[str, str]] = None, path: str = "/v1/metrics") -> Reply:
    url = urlsplit(endpoint)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": content_type, **(headers or {})})
        response = conn.getresponse()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        conn.close()


def encode(request: ExportMetricsServiceRequest, encoding: str) -> Tuple[bytes, str, Dict[str, str]]:
    """(body, content type, extra headers) for one of the encodings a client may use."""
    if encoding.startswith("json"):
        snake = encoding == "json-snake"
        body = json_format.MessageToJson(request, preserving_proto_field_name=snake).encode()
        content_type = JSON
    else:
        body, content_type = request.SerializeToString(), PROTOBUF
    if encoding.endswith("gzip"):
        return gzip.compress(body), content_type, {"Content-Encoding": "gzip"}
    return body, content_type, {}


def response_of(reply: Reply) -> ExportMetricsServiceResponse:
    assert reply.status == 200, reply.body
    if reply.headers["content-type"] == JSON:
        return json_format.Parse(reply.body, ExportMetricsServiceResponse())
    assert reply.headers["content-type"] == PROTOBUF
    return ExportMetricsServiceResponse.FromString(reply.body)


def status_of(reply: Reply) -> Tuple[int, str]:
    """The google.rpc.Status of an error answer, decoded by the official class."""
    status_pb2 = pytest.importorskip("google.rpc.status_pb2")
    if reply.headers["content-type"] == JSON:
        status = json_format.Parse(reply.body, status_pb2.Status())
    else:
        assert reply.headers["content-type"] == PROTOBUF
        status = status_pb2.Status.FromString(reply.body)
    return status.code, status.message


def attribute(key: str, **value: Any) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(**value))


def plain(value: AnyValue) -> Any:
    """What the receiver should store for an attribute value, read with the official class."""
    which = value.WhichOneof("value")
    if which == "array_value":
        return [plain(item) for item in value.array_value.values]
    if which == "kvlist_value":
        return {pair.key: plain(pair.value) for pair in value.kvlist_value.values}
    if which == "bytes_value":
        return base64.b64encode(value.bytes_value).decode()
    return None if which is None else getattr(value, which)


def expected_rows(request: ExportMetricsServiceRequest) -> List[Dict[str, Any]]:
    """Every number point of ``request``, as the otlp table should hold it."""
    rows = []
    for resource_metrics in request.resource_metrics:
        resource = {kv.key: plain(kv.value) for kv in resource_metrics.resource.attributes}
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                kind = metric.WhichOneof("data")
                for point in getattr(metric, kind).data_points:
                    rows.append({
                        "resource": resource, "scope": scope_metrics.scope.name, "name": metric.name,
                        "description": metric.description, "unit": metric.unit, "kind": kind,
                        "start_time": point.start_time_unix_nano, "time": point.time_unix_nano,
                        "value": getattr(point, point.WhichOneof("value")),
                        "attributes": {kv.key: plain(kv.value) for kv in point.attributes}})
    return rows


def stored(receiver: Receiver) -> List[Dict[str, Any]]:
    return [{key: value for key, value in row.items() if key not in ("id", "request_id", "received")}
            for row in receiver.otlp_points()]


def training_request() -> ExportMetricsServiceRequest:
    """Two pods' points, every attribute value type, gauges of doubles and ints, a sum, and the
    fields the receiver skips (exemplars, flags, temporality, metadata, schema URLs)."""
    request = ExportMetricsServiceRequest()
    for pod, loss in (("trainer-0", 2.5), ("trainer-1", -0.0)):
        resource_metrics = request.resource_metrics.add(schema_url="https://opentelemetry.io/schemas/1.26.0")
        resource_metrics.resource.attributes.extend([
            attribute("service.name", string_value="primus-lens"),
            attribute("k8s.pod.name", string_value=pod),
            attribute("primus.rank", int_value=-1 if pod.endswith("1") else 2**63 - 1),
            attribute("primus.enabled", bool_value=True),
            attribute("ratio", double_value=0.25),
            attribute("blob", bytes_value=b"\x00\xffbytes"),
            attribute("ranks", array_value={"values": [AnyValue(int_value=0), AnyValue(string_value="1"),
                                                      AnyValue(array_value={"values": []})]}),
            attribute("nested", kvlist_value={"values": [attribute("a", double_value=1.5),
                                                         attribute("b", string_value="ü ✓")]}),
            KeyValue(key="unset"),
        ])
        resource_metrics.resource.dropped_attributes_count = 3
        scope_metrics = resource_metrics.scope_metrics.add()
        scope_metrics.scope.name, scope_metrics.scope.version = "primus_lens_inject", "1.0"
        loss_metric = scope_metrics.metrics.add(name="train_loss", description="wandb key train/loss",
                                                unit="1")
        loss_metric.metadata.append(attribute("origin", string_value="wandb"))
        loss_metric.gauge.data_points.extend([
            NumberDataPoint(time_unix_nano=T0, as_double=loss,
                            attributes=[attribute("step", int_value=7)], flags=1),
            NumberDataPoint(start_time_unix_nano=T0 - 10**9, time_unix_nano=T0 + 1, as_double=1e-300),
        ])
        step_metric = scope_metrics.metrics.add(name="primus_step", unit="{step}")
        step_metric.gauge.data_points.add(time_unix_nano=T0, as_int=-(2**63))
        step_metric.gauge.data_points.add(time_unix_nano=2**63 - 1, as_int=0)
        tokens = scope_metrics.metrics.add(name="tokens", unit="{token}")
        tokens.sum.aggregation_temporality = 2
        tokens.sum.is_monotonic = True
        point = tokens.sum.data_points.add(time_unix_nano=T0, as_int=123456789012345)
        point.exemplars.add(time_unix_nano=T0, as_double=1.0, span_id=b"\x01" * 8)
    return request


@pytest.fixture
def make_receiver(make_receiver: Callable[..., Receiver]) -> Callable[..., Receiver]:
    """The receivers here accept OTLP unless a test says otherwise."""
    return lambda **kwargs: make_receiver(**{"otlp": True, **kwargs})


# -- what arrives is stored exactly -------------------------------------------------------------

ENCODINGS = ["protobuf", "protobuf-gzip", "json", "json-gzip", "json-snake"]


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_every_point_is_stored_as_the_official_classes_read_it(receiver: Receiver, encoding: str) -> None:
    request = training_request()
    body, content_type, headers = encode(request, encoding)
    reply = send(receiver.otlp_endpoint, body, content_type, headers=headers)
    assert reply.headers["content-type"] == content_type
    assert not response_of(reply).HasField("partial_success")
    assert reply.body == (b"{}" if content_type == JSON else b"")
    rows = stored(receiver)
    assert rows == expected_rows(request)
    assert len(rows) == 10
    assert [type(row["value"]) for row in rows[:5]] == [float, float, int, int, int]
    assert math.copysign(1, rows[5]["value"]) == -1  # -0.0 kept
    assert rows[0]["resource"]["blob"] == "AP9ieXRlcw=="
    assert rows[0]["resource"]["primus.rank"] == 2**63 - 1
    assert receiver.stats()["requests"] == {"/v1/metrics": {"200": 1}}
    assert receiver.stats()["otlp"] == 10


def test_points_can_be_filtered_by_name_and_kind_over_http(receiver: Receiver) -> None:
    send(receiver.otlp_endpoint, training_request().SerializeToString())
    assert [row["value"] for row in receiver.otlp_points(name="primus_step")] == [-(2**63), 0, -(2**63), 0]
    reply = send(receiver.otlp_endpoint, b"", method="GET", path="/v1/_receiver/otlp?kind=sum")
    assert [row["value"] for row in json.loads(reply.body)["otlp"]] == [123456789012345] * 2


def length_field(number: int, payload: bytes) -> bytes:
    """One length-delimited record (lengths under 2^14 here: a varint of at most two bytes)."""
    size = len(payload)
    assert size < 1 << 14
    length = bytes([size]) if size < 0x80 else bytes([size & 0x7F | 0x80, size >> 7])
    return bytes([number << 3 | 2]) + length + payload


def test_repeated_singular_messages_merge_and_the_last_oneof_member_wins(receiver: Receiver) -> None:
    """Protobuf semantics a hand-written reader easily gets wrong: a singular message given twice
    is merged, and of a oneof the member set last wins.  Two encoded messages back to back are
    their merge; the official parser's reading of the same bytes is the expectation."""
    first = Metric(name="m", unit="s", gauge={"data_points": [NumberDataPoint(time_unix_nano=T0, as_int=5)]})
    two_values = (NumberDataPoint(as_int=1).SerializeToString()
                  + NumberDataPoint(time_unix_nano=T0, as_double=2.5).SerializeToString())
    second = length_field(5, length_field(1, two_values))  # Metric.gauge.data_points
    then_sum = (Metric(name="n", gauge={"data_points": [{"as_int": 9}]}).SerializeToString()
                + Metric(sum={"data_points": [{"as_int": 10}]}).SerializeToString())
    metrics = length_field(2, first.SerializeToString() + second) + length_field(2, then_sum)
    body = length_field(1, length_field(2, metrics))  # request.resource_metrics[0].scope_metrics[0]
    reply = send(receiver.otlp_endpoint, body)
    assert not response_of(reply).HasField("partial_success")
    assert [(row["name"], row["kind"], row["value"]) for row in stored(receiver)] == [
        ("m", "gauge", 5), ("m", "gauge", 2.5), ("n", "sum", 10)]
    assert stored(receiver) == expected_rows(ExportMetricsServiceRequest.FromString(body))


# -- partial success ---------------------------------------------------------------------------

def rejected_request() -> ExportMetricsServiceRequest:
    request = ExportMetricsServiceRequest()
    metrics = request.resource_metrics.add().scope_metrics.add().metrics
    good = metrics.add(name="loss")
    good.gauge.data_points.add(time_unix_nano=T0, as_double=1.0)
    good.gauge.data_points.add(time_unix_nano=T0)  # no value
    good.gauge.data_points.add(time_unix_nano=T0, as_double=float("nan"))
    good.gauge.data_points.add(time_unix_nano=T0, as_double=float("-inf"))
    good.gauge.data_points.add(time_unix_nano=2**64 - 1, as_double=1.0)
    metrics.add().gauge.data_points.add(time_unix_nano=T0, as_double=1.0)  # no name
    histogram = metrics.add(name="latency")
    histogram.histogram.data_points.add(count=3, sum=1.0)
    histogram.histogram.data_points.add(count=1)
    metrics.add(name="empty")  # no data: no points, nothing rejected
    return request


@pytest.mark.parametrize("encoding", ["protobuf", "json"])
def test_points_without_a_finite_value_are_refused_by_partial_success(receiver: Receiver,
                                                                      encoding: str) -> None:
    body, content_type, _ = encode(rejected_request(), encoding)
    partial = response_of(send(receiver.otlp_endpoint, body, content_type)).partial_success
    assert partial.rejected_data_points == 7
    assert partial.error_message == (
        "1 points without a value; 2 points with a non-finite value; 1 points with a time beyond "
        "2^63-1 ns; 1 points of a metric without a name; 2 histogram points (this receiver stores "
        "gauges and sums)")
    assert [(row["name"], row["value"]) for row in stored(receiver)] == [("loss", 1.0)]


def test_reject_fault_refuses_points_reproducibly(make_receiver: Callable[..., Receiver]) -> None:
    request = training_request()
    receiver = make_receiver(faults={"otlp_reject_rate": 0.5, "seed": 3})
    partial = response_of(send(receiver.otlp_endpoint, request.SerializeToString())).partial_success
    again = make_receiver(faults={"otlp_reject_rate": 0.5, "seed": 3})
    assert response_of(send(again.otlp_endpoint, request.SerializeToString())).partial_success == partial
    assert 0 < partial.rejected_data_points < 10
    assert len(stored(receiver)) == 10 - partial.rejected_data_points
    assert stored(receiver) == stored(again)
    assert partial.error_message == (f"{partial.rejected_data_points} points refused by the receiver's "
                                     "otlp_reject_rate fault")


# -- refused requests -----------------------------------------------------------------------------

def nested_arrays(depth: int) -> bytes:
    """A resource attribute of arrays in arrays: deeper than protobuf's own parser takes."""
    value = AnyValue(int_value=1).SerializeToString()
    for _ in range(depth):
        value = length_field(5, length_field(1, value))  # AnyValue.array_value.values[0]
    pair = length_field(1, b"deep") + length_field(2, value)
    return length_field(1, length_field(1, length_field(1, pair)))  # resource_metrics.resource.attributes


GOOD = training_request().SerializeToString()
BAD_BODIES = [
    (GOOD[:-3], PROTOBUF, {}, "longer than the message"),
    (b"\x0a\x80", PROTOBUF, {}, "truncated or overlong varint"),
    (b"\x0b", PROTOBUF, {}, "wire type 3"),
    (b"\x09" + b"\x00" * 8, PROTOBUF, {}, "request.resource_metrics: wire type 1, expected 2"),
    (ExportMetricsServiceRequest(resource_metrics=[{"scope_metrics": [{"metrics": [Metric(name="x")]}]}])
     .SerializeToString().replace(b"\x01x", b"\x01\xff"), PROTOBUF, {}, "invalid UTF-8"),
    (nested_arrays(50), PROTOBUF, {}, "nested more than 100 messages deep"),
    (b"{", JSON, {}, "the body is not JSON"),
    (b'{"resourceMetrics": [{"scopeMetrics": [{"metrics": [{"gauge": {"dataPoints": '
     b'[{"asDouble": NaN}]}}]}]}]}', JSON, {}, "NaN is not JSON"),
    (b'{"resourceMetrics": {}}', JSON, {}, "request.resourceMetrics: expected an array"),
    (b'{"resourceMetrics": [{"scopeMetrics": [{"metrics": [{"gauge": {"dataPoints": '
     b'[{"timeUnixNano": "1.5"}]}}]}]}]}', JSON, {}, "timeUnixNano: \"1.5\" is not a valid fixed64"),
    (b'{"resourceMetrics": [{"resource": {"attributes": [{"key": "k", "value": {"bytesValue": "*"}}]}}]}',
     JSON, {}, "bytesValue: not base64"),
    (b"[]", JSON, {}, "request: expected an object"),
    (GOOD, PROTOBUF, {"Content-Encoding": "gzip"}, "the gzip body is corrupt"),
    (gzip.compress(GOOD)[:-4], PROTOBUF, {"Content-Encoding": "gzip"}, "the gzip body is truncated"),
    (GOOD, PROTOBUF, {"Content-Encoding": "br"}, "unsupported Content-Encoding 'br'"),
]


@pytest.mark.parametrize("body, content_type, headers, message", BAD_BODIES)
def test_undecodable_bodies_get_400_with_a_status_and_store_nothing(
        receiver: Receiver, body: bytes, content_type: str, headers: Dict[str, str], message: str) -> None:
    reply = send(receiver.otlp_endpoint, body, content_type, headers=headers)
    assert reply.status == 400
    code, text = status_of(reply)
    assert code == 3 and message in text
    assert receiver.otlp_points() == []
    [request] = receiver.requests()
    assert (request["path"], request["status"], request["body"]) == ("/v1/metrics", 400, body)


def test_json_with_unknown_keys_and_nulls_is_accepted(receiver: Receiver) -> None:
    body = json.dumps({"resourceMetrics": [{"future": {"x": [1]}, "resource": None, "scopeMetrics": [
        {"metrics": [{"name": "m", "gauge": {"dataPoints": [
            {"asInt": "-5", "timeUnixNano": 7, "startTimeUnixNano": None, "attributes": None}]}}]}]}]})
    assert not response_of(send(receiver.otlp_endpoint, body.encode(), JSON)).HasField("partial_success")
    [row] = stored(receiver)
    assert (row["name"], row["value"], row["time"], row["start_time"], row["resource"]) == ("m", -5, 7, 0, {})


@pytest.mark.parametrize("content_type", ["text/plain", "application/protobuf", ""])
def test_other_content_types_get_415(receiver: Receiver, content_type: str) -> None:
    reply = send(receiver.otlp_endpoint, GOOD, content_type)
    assert reply.status == 415
    assert receiver.otlp_points() == []


def test_media_type_parameters_and_case_are_ignored(receiver: Receiver) -> None:
    assert send(receiver.otlp_endpoint, b"{}", "Application/JSON; charset=utf-8").status == 200


def test_other_methods_get_405(receiver: Receiver) -> None:
    reply = send(receiver.otlp_endpoint, b"", method="GET")
    assert (reply.status, reply.headers["allow"]) == (405, "POST")


def test_without_otlp_the_path_is_gins_404(make_receiver: Callable[..., Receiver]) -> None:
    receiver = make_receiver(otlp=False)
    reply = send(receiver.otlp_endpoint, GOOD)
    assert (reply.status, reply.body) == (404, b"404 page not found")


# -- faults ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("encoding", ["protobuf", "json"])
def test_fail_fault_answers_503_with_retry_after_and_leaves_lens_alone(
        make_receiver: Callable[..., Receiver], encoding: str) -> None:
    receiver = make_receiver(faults={"fail_rate": 1, "fail_endpoints": ["otlp"], "otlp_retry_after": 2})
    body, content_type, _ = encode(training_request(), encoding)
    reply = send(receiver.otlp_endpoint, body, content_type)
    assert (reply.status, reply.headers["retry-after"]) == (503, "2")
    assert status_of(reply) == (14, "receiver fault injection")
    lens = json.dumps({"pod_name": "p", "logs": [{"step": 1, "timestamp": 1.0, "data": {"x": 1}}]})
    assert send(receiver.otlp_endpoint, lens.encode(), JSON, path="/v1/wandb/logs").status == 200
    assert receiver.otlp_points() == [] and len(receiver.logs()) == 1


def test_fail_status_is_configurable_and_retry_after_optional(make_receiver: Callable[..., Receiver]) -> None:
    receiver = make_receiver(faults={"fail_rate": 1, "otlp_fail_status": 500})
    reply = send(receiver.otlp_endpoint, GOOD)
    assert reply.status == 500 and "retry-after" not in reply.headers
    assert status_of(reply) == (13, "receiver fault injection")


def test_lens_faults_limited_to_lens_leave_otlp_alone(make_receiver: Callable[..., Receiver]) -> None:
    receiver = make_receiver(faults={"fail_rate": 1, "fail_endpoints": ["logs"]})
    assert send(receiver.otlp_endpoint, GOOD).status == 200


def test_garbage_fault_applies_to_otlp(make_receiver: Callable[..., Receiver]) -> None:
    receiver = make_receiver(faults={"garbage_rate": 1, "garbage_status": 502})
    reply = send(receiver.otlp_endpoint, GOOD)
    assert (reply.status, reply.headers["content-type"]) == (502, "text/html")
    assert receiver.otlp_points() == []


def test_html_fault_answers_200_with_a_page_for_the_next_n_requests(
        make_receiver: Callable[..., Receiver]) -> None:
    receiver = make_receiver(faults={"otlp_html_for": 2})
    replies = [send(receiver.otlp_endpoint, GOOD) for _ in range(3)]
    assert [(r.status, r.headers["content-type"]) for r in replies] == [
        (200, "text/html"), (200, "text/html"), (200, PROTOBUF)]
    assert replies[0].body.startswith(b"<html>")
    assert len(receiver.otlp_points()) == len(expected_rows(training_request()))  # only the third stored


def test_body_limit_fault_answers_413_above_the_limit(make_receiver: Callable[..., Receiver]) -> None:
    receiver = make_receiver(faults={"otlp_max_body": len(GOOD)})
    assert send(receiver.otlp_endpoint, GOOD).status == 200
    big = training_request()
    big.resource_metrics[0].resource.attributes.add(key="pad").value.string_value = "x" * len(GOOD)
    body, content_type, _ = encode(big, "protobuf")
    assert send(receiver.otlp_endpoint, body, content_type).status == 413
    assert len(receiver.otlp_points()) == len(expected_rows(training_request()))


@pytest.mark.parametrize("faults", [{"otlp_html_for": -1}, {"otlp_max_body": 1.5},
                                    {"otlp_html_for": True}])
def test_count_faults_are_whole_numbers(faults: Dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must be a whole number"):
        Faults.from_mapping(faults)


# -- the command ---------------------------------------------------------------------------------

def test_receive_otlp_command_prints_the_endpoint_and_stores_points() -> None:
    command = [sys.executable, "-m", "primus_lens_inject", "receive", "--port", "0", "--otlp",
               "--otlp-reject-rate", "1"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=dict(os.environ, PYTHONPATH=REPO))
    try:
        assert proc.stdout is not None
        readable, _, _ = select.select([proc.stdout], [], [], 20)
        assert readable, "the receiver did not start"
        lines = [proc.stdout.readline().decode() for _ in range(2)]  # written at once
        assert lines[0].startswith("primus-lens receiver listening on http://127.0.0.1:")
        endpoint = lines[0].split(" on ")[1].strip()[:-len("/v1")]
        assert lines[1] == ("primus-lens receiver accepting OTLP/HTTP metrics: "
                            f"PRIMUS_LENS_OTLP_ENDPOINT={endpoint}\n")
        partial = response_of(send(endpoint, GOOD)).partial_success
        assert partial.rejected_data_points == 10
        control = http.client.HTTPConnection(urlsplit(endpoint).hostname, urlsplit(endpoint).port, timeout=10)
        control.request("POST", "/v1/_receiver/faults", body=b"{}")
        assert control.getresponse().status == 200
        control.close()
        assert not response_of(send(endpoint, GOOD)).HasField("partial_success")
        reply = send(endpoint, b"", method="GET", path="/v1/_receiver/otlp?name=train_loss")
        assert [row["value"] for row in json.loads(reply.body)["otlp"]] == [2.5, 1e-300, -0.0, 1e-300]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=15)


# -- a real OTLP client ---------------------------------------------------------------------------

def test_the_opentelemetry_sdk_exporter_is_understood(receiver: Receiver) -> None:
    """The OpenTelemetry SDK's own OTLP/HTTP exporter (gzip, protobuf) against the receiver."""
    exporter_module = pytest.importorskip("opentelemetry.exporter.otlp.proto.http.metric_exporter")
    sdk_metrics = pytest.importorskip("opentelemetry.sdk.metrics")
    export = pytest.importorskip("opentelemetry.sdk.metrics.export")
    resources = pytest.importorskip("opentelemetry.sdk.resources")
    from opentelemetry.exporter.otlp.proto.http import Compression

    exporter = exporter_module.OTLPMetricExporter(endpoint=f"{receiver.otlp_endpoint}/v1/metrics",
                                                  compression=Compression.Gzip, timeout=10)
    reader = export.InMemoryMetricReader()
    provider = sdk_metrics.MeterProvider(resource=resources.Resource({"k8s.pod.name": "sdk-0"}),
                                         metric_readers=[reader])
    gauge = provider.get_meter("test").create_gauge("train_loss", unit="1")
    gauge.set(0.75, {"phase": "train"})
    assert exporter.export(reader.get_metrics_data()).name == "SUCCESS"
    provider.shutdown()
    [row] = stored(receiver)
    assert (row["name"], row["unit"], row["value"], row["attributes"]) == ("train_loss", "1", 0.75,
                                                                          {"phase": "train"})
    assert row["resource"]["k8s.pod.name"] == "sdk-0"
    assert row["kind"] == "gauge" and row["time"] > 0


# -- the Collector configuration users copy -------------------------------------------------------

def test_example_collector_config_wires_otlp_http_to_prometheus() -> None:
    """examples/otel-collector.yaml: what docs/otlp.md and the chart promise about it (no Collector
    binary here, so the wiring is checked: every component a pipeline names is defined)."""
    with open(os.path.join(REPO, "examples", "otel-collector.yaml")) as handle:
        config = yaml.safe_load(handle)
    assert config["receivers"]["otlp"]["protocols"] == {"http": {"endpoint": "0.0.0.0:4318"}}
    prometheus = config["exporters"]["prometheus"]
    assert prometheus["endpoint"] == "0.0.0.0:8889"
    assert prometheus["resource_to_telemetry_conversion"] == {"enabled": True}
    pipeline = config["service"]["pipelines"]["metrics"]
    assert pipeline["exporters"] == ["prometheus", "debug"]
    for kind in ("receivers", "processors", "exporters"):
        assert set(pipeline[kind]) <= set(config[kind]), kind
