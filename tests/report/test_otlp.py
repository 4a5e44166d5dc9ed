"""The OTLP sink: its bodies decode with the official opentelemetry-proto classes in both
encodings, names, units, attributes and timestamps match the record row by row, and a real
training script under the injector delivers every row (docs/otlp.md)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from conftest import BOOTSTRAP_DIR, run_training
from fakes.fake_gpu_state import STATE_ENV, write
from fakes.libs import FAKES
from google.protobuf import json_format
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from otlp_support import OtlpServer, attributes

from primus_lens_inject.config import Config
from primus_lens_inject.report import owner, sendable
from primus_lens_inject.report.otlp import encoding as otlp
from primus_lens_inject.report.otlp import sink as otlp_sink
from primus_lens_inject.report.policy import DROP, OK, RETRY, STOP
from primus_lens_inject.report.reporter import no_gpus
from primus_lens_inject.report.sink import Context, Control
from primus_lens_inject.report.status import Stats
from primus_lens_inject.topology import Topology

SCRIPT = (Path(__file__).parents[1] / "scripts" / "otlp_run.py").read_text()
NAME = re.compile(r"[A-Za-z][A-Za-z0-9_./-]{0,254}\Z")
POD = "trainer-worker-3"


def otlp_env(url: str, **extra: str) -> dict:
    return {"PRIMUS_LENS_OTLP": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": url,
            "POD_NAME": POD, "POD_UID": "0c1d", "POD_NAMESPACE": "team-b", "NODE_NAME": "node-7",
            "PRIMUS_LENS_WANDB_API_REPORTING": "false", "PRIMUS_LENS_WANDB_FLUSH_INTERVAL": "0.2",
            "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=lab,team=a%2Cb",
            **extra}


def decode(body: bytes, json_body: bool) -> ExportMetricsServiceRequest:
    message = ExportMetricsServiceRequest()
    if json_body:
        json_format.Parse(body, message)
    else:
        message.ParseFromString(body)
    return message


ENTRIES = [
    {"step": 3, "timestamp": 1_700_000_000.25, "data": {
        "train/loss": 0.5, "9lives": 2, "a b": 1.5, "a_b": 2.5, "x" * 300: 1.0,
        "_primus_sys_cpu_percent": 12.5, "_primus_sys_memory_percent": 40.0,
        "_primus_sys_process_rss_bytes": 1 << 30, "_primus_gpu_util_percent": 87.0,
        "_primus_gpu_memory_used_bytes": 5 << 30, "_primus_gpu_2_memory_total_bytes": 80 << 30,
        "_primus_gpu_2_power_watts": 300.5, "_primus_gpu_temperature_celsius": 61.0,
        "_primus_gpu_1_temperature_junction_celsius": 70.0, "_primus_gpu_new_figure": 3.0,
        "_primus_sys_load": 1.25}},
    {"step": 4, "timestamp": 1_700_000_001.75, "data": {"train/loss": 0.25}},
]

# record key -> (name, unit, point attributes, exported value of row 0)
EXPECTED = {
    "train/loss": ("wandb.train/loss", "", {}, 0.5),
    "9lives": ("wandb.9lives", "", {}, 2.0),
    "a b": ("wandb.a_b", "", {"wandb.key": "a b"}, 1.5),
    "a_b": ("wandb.a_b", "", {}, 2.5),
    "x" * 300: ("wandb." + "x" * 249, "", {"wandb.key": "x" * 300}, 1.0),
    "_primus_sys_cpu_percent": ("system.cpu.utilization", "1", {}, 0.125),
    "_primus_sys_memory_percent": ("system.memory.utilization", "1", {}, 0.4),
    "_primus_sys_process_rss_bytes": ("process.memory.usage", "By", {}, float(1 << 30)),
    "_primus_gpu_util_percent": ("hw.gpu.utilization", "1", {"hw.id": "gpu", "hw.type": "gpu"},
                                 0.87),
    "_primus_gpu_memory_used_bytes": ("hw.gpu.memory.usage", "By",
                                      {"hw.id": "gpu", "hw.type": "gpu"}, float(5 << 30)),
    "_primus_gpu_2_memory_total_bytes": ("hw.gpu.memory.limit", "By",
                                         {"hw.id": "gpu2", "hw.type": "gpu"}, float(80 << 30)),
    "_primus_gpu_2_power_watts": ("hw.power", "W", {"hw.id": "gpu2", "hw.type": "gpu"}, 300.5),
    "_primus_gpu_temperature_celsius": ("hw.temperature", "Cel", {
        "hw.id": "gpu.gpu", "hw.type": "temperature", "hw.parent": "gpu",
        "hw.sensor_location": "gpu"}, 61.0),
    "_primus_gpu_1_temperature_junction_celsius": ("hw.temperature", "Cel", {
        "hw.id": "gpu1.junction", "hw.type": "temperature", "hw.parent": "gpu1",
        "hw.sensor_location": "junction"}, 70.0),
    "_primus_gpu_new_figure": ("primus.gpu.new_figure", "", {"hw.id": "gpu", "hw.type": "gpu"},
                               3.0),
    "_primus_sys_load": ("primus.sys.load", "", {}, 1.25),
}


@pytest.mark.parametrize("protocol", ["http/protobuf", "http/json"])
def test_bodies_decode_with_the_official_classes_and_match_the_rows(protocol):
    resource = otlp.resource_attributes("svc", "pod/rank5", {"pod_name": POD, "pod_uid": "u1",
                                        "namespace": "ns", "node_name": "n1"},
                                        Topology(rank=5, local_rank=1, node=2, world_size=8),
                                        5, "run-9", "proj", (("team", "a"),))
    (body,), count = otlp.Encoder(protocol).bodies(resource, ENTRIES, sendable.MAX_BODY)
    message = decode(body, protocol == "http/json")
    (rm,) = message.resource_metrics
    assert attributes(rm.resource.attributes) == {
        "service.name": "svc", "service.instance.id": "pod/rank5", "k8s.pod.name": POD,
        "k8s.pod.uid": "u1", "k8s.namespace.name": "ns", "k8s.node.name": "n1", "team": "a",
        "primus.rank": 5, "primus.local_rank": 1, "primus.node_rank": 2, "primus.world_size": 8,
        "wandb.run.id": "run-9", "wandb.project": "proj"}
    (sm,) = rm.scope_metrics
    assert sm.scope.name == "primus-lens-inject"
    got = {}
    names = [m.name for m in sm.metrics]
    assert len(names) == len(set(names))  # keys of one name share one metric
    for metric in sm.metrics:
        assert NAME.match(metric.name), metric.name
        for p in metric.gauge.data_points:
            got.setdefault((metric.name, metric.unit, json.dumps(attributes(p.attributes),
                                                                  sort_keys=True)), []).append(
                (p.time_unix_nano, p.as_double))
    times = [int(e["timestamp"] * 1e9) for e in ENTRIES]
    assert got.pop(("wandb.step", "{step}", "{}")) == [(times[0], 3.0), (times[1], 4.0)]
    for key, (name, unit, attrs, value) in EXPECTED.items():
        points = got.pop((name, unit, json.dumps(attrs, sort_keys=True)))
        assert points[0][0] == times[0] and points[0][1] == pytest.approx(value), key
        assert abs(points[0][0] - ENTRIES[0]["timestamp"] * 1e9) < 1000
    assert got == {}
    assert count == sum(len(e["data"]) for e in ENTRIES) + len(ENTRIES)


def test_every_name_is_valid_for_opentelemetry():
    for key in ["", "7", "/x", "ü", "a" * 400, "a\x00b", "loss (val)", "_primus_gpu_", "é/ß"]:
        assert NAME.match(otlp.describe(key).name), key


def test_settings_prefer_the_metrics_specific_variables():
    config = Config.from_env({
        "OTEL_EXPORTER_OTLP_ENDPOINT": "https://collector:4318/",
        "OTEL_EXPORTER_OTLP_HEADERS": "api-key=generic", "OTEL_EXPORTER_OTLP_TIMEOUT": "2500",
        "OTEL_EXPORTER_OTLP_METRICS_HEADERS": "Authorization=Bearer%20tok%3D,x-tenant=t1",
        "OTEL_EXPORTER_OTLP_METRICS_COMPRESSION": "gzip",
        "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "http/json"})
    s = otlp_sink.settings(config)
    assert s.endpoint == "https://collector:4318/v1/metrics"
    assert s.headers == (("Authorization", "Bearer tok="), ("x-tenant", "t1"))
    assert (s.timeout, s.gzip, s.protocol) == (2.5, True, "http/json")
    config = Config.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "https://collector:4318",
                              "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://m:9/custom/path"})
    assert otlp_sink.settings(config).endpoint == "http://m:9/custom/path"
    defaults = otlp_sink.settings(Config())
    assert defaults == ("http://localhost:4318/v1/metrics", (), 10.0, False, "http/protobuf",
                        None, None, None, (), "")


def test_our_own_variables_win_over_the_opentelemetry_ones():
    """PRIMUS_LENS_OTLP_* > OTEL_EXPORTER_OTLP_METRICS_* > OTEL_EXPORTER_OTLP_*, each setting on
    its own; a full metrics URL beats a base URL of its tier, and a query string stays last."""
    otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://generic:4318",
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://metrics:4318/v1/metrics",
            "OTEL_EXPORTER_OTLP_HEADERS": "a=generic", "OTEL_EXPORTER_OTLP_METRICS_HEADERS": "a=m",
            "OTEL_EXPORTER_OTLP_TIMEOUT": "1000", "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT": "2000",
            "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json",
            "OTEL_EXPORTER_OTLP_CERTIFICATE": "/otel/ca.pem",
            "OTEL_RESOURCE_ATTRIBUTES": "team=otel", "OTEL_SERVICE_NAME": "otel-svc"}
    ours = {"PRIMUS_LENS_OTLP_ENDPOINT": "https://ours:4318/api?code=k3y%3D",
            "PRIMUS_LENS_OTLP_HEADERS": "a=ours", "PRIMUS_LENS_OTLP_TIMEOUT": "3000",
            "PRIMUS_LENS_OTLP_COMPRESSION": "none", "PRIMUS_LENS_OTLP_PROTOCOL": "http/protobuf",
            "PRIMUS_LENS_OTLP_CERTIFICATE": "/ours/ca.pem",
            "PRIMUS_LENS_OTLP_CLIENT_CERTIFICATE": "/ours/c.pem",
            "PRIMUS_LENS_OTLP_CLIENT_KEY": "/ours/k.pem",
            "PRIMUS_LENS_OTLP_RESOURCE_ATTRIBUTES": "team=ours",
            "PRIMUS_LENS_OTLP_SERVICE_NAME": "ours-svc"}
    assert otlp_sink.settings(Config.from_env({**otel, **ours})) == (
        "https://ours:4318/api/v1/metrics?code=k3y%3D", (("a", "ours"),), 3.0, False,
        "http/protobuf", "/ours/ca.pem", "/ours/c.pem", "/ours/k.pem", (("team", "ours"),),
        "ours-svc")
    assert otlp_sink.settings(Config.from_env(otel)) == (
        "http://metrics:4318/v1/metrics", (("a", "m"),), 2.0, True, "http/json", "/otel/ca.pem",
        None, None, (("team", "otel"),), "otel-svc")
    full = {**otel, **ours, "PRIMUS_LENS_OTLP_METRICS_ENDPOINT": "http://full:1/x"}
    assert otlp_sink.settings(Config.from_env(full)).endpoint == "http://full:1/x"


def test_grpc_and_garbage_fall_back_with_one_warning_each():
    config = Config.from_env({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                              "OTEL_EXPORTER_OTLP_TIMEOUT": "soon",
                              "OTEL_EXPORTER_OTLP_HEADERS": "no-equals-sign-secret",
                              "OTEL_EXPORTER_OTLP_COMPRESSION": "zstd"})
    assert {p.variable for p in config.problems} == {
        "OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TIMEOUT",
        "OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_COMPRESSION"}
    assert "grpc is not supported" in next(p.message() for p in config.problems
                                           if p.variable.endswith("PROTOCOL"))
    assert all("no-equals-sign-secret" not in p.message() for p in config.problems)
    assert otlp_sink.settings(config)[2:5] == (10.0, False, "http/protobuf")


@pytest.mark.parametrize("status,action", [
    (200, OK), (202, OK), (0, RETRY), (429, RETRY), (502, RETRY), (503, RETRY), (504, RETRY),
    (400, DROP), (413, DROP), (500, DROP), (501, DROP), (401, STOP), (403, STOP), (404, STOP),
    (405, STOP), (308, STOP)])
def test_answers_are_classified_as_the_otlp_specification_says(status, action):
    assert otlp_sink.classify(status, "")[0] == action


def test_a_2xx_that_is_not_an_otlp_answer_is_retried():
    action, reason = otlp_sink.classify(200, "", understood=False)
    assert action == RETRY and "not an OTLP ExportMetricsServiceResponse" in reason


def test_retry_after_in_seconds_or_as_a_date():
    assert otlp_sink.retry_after("3") == 3.0
    assert otlp_sink.retry_after("100000") == otlp_sink.RETRY_AFTER_MAX
    assert otlp_sink.retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert otlp_sink.retry_after(None) is None and otlp_sink.retry_after("soon") is None


@pytest.mark.parametrize("json_body", [False, True])
def test_answers_are_read_from_the_official_response(json_body):
    kind = "application/json" if json_body else "application/x-protobuf"
    response = ExportMetricsServiceResponse()
    assert otlp.read_answer(kind, response.SerializeToString()) == (0, "")  # empty: all taken
    assert otlp.read_answer(kind + "; charset=utf-8", b"{}" if json_body else b"") == (0, "")
    response.partial_success.rejected_data_points = 7
    response.partial_success.error_message = "name too long"
    body = (json_format.MessageToJson(response).encode() if json_body
            else response.SerializeToString())
    assert otlp.read_answer(kind, body) == (7, "name too long")
    assert otlp.read_answer("Application/X-Protobuf" if not json_body else "APPLICATION/JSON",
                            body) == (7, "name too long")


HTML = b"<html><head><title>OK</title></head><body>Welcome to nginx!</body></html>"


@pytest.mark.parametrize("content_type,body", [
    ("text/html", HTML), ("application/x-protobuf", HTML), ("application/json", HTML),
    ("", b"\x0a\x02\x08\x07"), ("text/plain", b"OK"), ("application/json", b"[1]"),
    ("application/json", b'{"partialSuccess": "x"}'),
    ("application/json", b'{"partialSuccess": {"rejectedDataPoints": "many"}}'),
    ("application/x-protobuf", b"\x0a\x10\x08"),  # truncated
    ("application/x-protobuf", b"\x0a\x03\x12\x01\xff"),  # message not UTF-8
])
def test_anything_else_is_not_an_answer(content_type, body):
    assert otlp.read_answer(content_type, body) is None


def test_a_huge_row_is_split_into_bodies_under_the_limit_each_point_once():
    keys = {f"layer{i}/grad_norm": float(i) for i in range(60_000)}
    entries = [{"step": 9, "timestamp": 1_700_000_000.5, "data": keys},
               {"step": 10, "timestamp": 1_700_000_001.5, "data": {"loss": 1.0}}]
    bodies, count = otlp.Encoder("http/protobuf").bodies((("service.name", "s"),), entries,
                                                          sendable.MAX_BODY)
    assert len(bodies) > 2 and all(len(body) <= sendable.MAX_BODY for body in bodies)
    seen = []
    for body in bodies:
        for rm in decode(body, False).resource_metrics:
            assert attributes(rm.resource.attributes) == {"service.name": "s"}
            seen += [(m.name, p.time_unix_nano, p.as_double) for sm in rm.scope_metrics
                     for m in sm.metrics for p in m.gauge.data_points]
    assert len(seen) == len(set(seen)) == count == 60_000 + 1 + 2  # two steps, once each
    assert sorted(v for name, _, v in seen if name == "wandb.step") == [9.0, 10.0]
    assert {v for name, _, v in seen if name.startswith("wandb.layer")} == set(keys.values())


def test_the_runs_free_text_in_the_resource_is_redacted(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_PROJECT", "proj-hf_abcdefghijklmnopqrstuvwxyz0123456789-Xk9vQ2mZr7Lp4sWt8yBn")
    writer = owner.Writer({"pod_name": POD}, 0, True)
    record = str(tmp_path / "r.jsonl")
    sink = otlp_sink.OtlpSink(Context(Config.from_env({}), Topology(), record, Control(record),
                                      owner.Writers(record), writer, Stats(), no_gpus))
    resource = dict(sink._resource(writer, "run-password=hunter2hunter2"))
    assert "hf_abcdefghijklmnopqrstuvwxyz" not in str(resource) and "Xk9vQ2" not in str(resource)
    assert "hunter2" not in str(resource)
    assert resource["wandb.project"].startswith("proj-") and "[REDACTED]" in resource["wandb.project"]


def rows_of(record):
    """(step, {exported metric name: value}) per record row, as the sink must send them."""
    out = []
    for row in record:
        entry, _ = sendable.log_entry(row["step"], row["timestamp"], row["data"])
        if entry is not None:
            out.append((row, {otlp.describe(k).name: v * otlp.describe(k).scale
                              for k, v in entry["data"].items()}))
    return out


def check_delivery(server, result, run_id):
    """Every row of the record arrives once, with its values, time and resource."""
    points = [p for p in server.points() if p.resource["wandb.run.id"] == run_id]
    by_time = {}
    for p in points:
        by_time.setdefault(p.time_unix_nano, {})
        assert p.name not in by_time[p.time_unix_nano], f"duplicate point {p}"
        by_time[p.time_unix_nano][p.name] = p.value
    expected = rows_of(result.record())
    assert len(expected) == 40 and len(by_time) == 40
    for row, values in expected:
        got = by_time.pop(int(row["timestamp"] * 1e9))
        assert got.pop("wandb.step") == row["step"]
        assert got == pytest.approx(values)
    resource = points[0].resource
    assert resource["k8s.pod.name"] == POD and resource["k8s.namespace.name"] == "team-b"
    assert resource["k8s.pod.uid"] == "0c1d" and resource["k8s.node.name"] == "node-7"
    assert resource["service.instance.id"] == f"{POD}/rank0"
    assert resource["deployment.environment"] == "lab" and resource["team"] == "a,b"
    assert resource["primus.rank"] == 0
    assert not server.undecodable


@pytest.mark.parametrize("protocol,compression", [("http/protobuf", "gzip"),
                                                  ("http/json", "none")])
def test_training_script_delivers_every_row(tmp_path, protocol, compression):
    with OtlpServer() as server:
        result = run_training(tmp_path, SCRIPT, env=otlp_env(
            server.url, OTEL_EXPORTER_OTLP_PROTOCOL=protocol, WANDB_PROJECT="otlp-proj",
            OTEL_EXPORTER_OTLP_COMPRESSION=compression, OTEL_SERVICE_NAME="trainer",
            OTEL_EXPORTER_OTLP_HEADERS="x-api-key=s3cr3t%21"))
        assert result.proc.returncode == 0, result.stderr
        report = json.loads(result.proc.stdout.splitlines()[-1])
        check_delivery(server, result, report["run_id"])
        request = server.accepted()[0]
        assert request["path"] == "/v1/metrics"
        assert request["json"] == (protocol == "http/json")
        assert request["gzip"] == (compression == "gzip")
        assert request["headers"]["x-api-key"] == "s3cr3t!"
        assert server.points()[0].resource["service.name"] == "trainer"
        assert server.points()[0].resource["wandb.project"] == "otlp-proj"
    assert "s3cr3t" not in result.stderr
    status = json.loads((result.output / "node_0" / "rank_0" / "wandb_metrics.status.json")
                        .read_text())
    assert status["otlp"]["rows_sent"] == 40 and status["otlp"]["backlog_bytes"] == 0
    assert status["otlp"]["state"] == "exited, all delivered"
    assert (result.output / "node_0" / "rank_0" / "wandb_metrics.otlp.cursor").exists()
    assert not (result.output / "node_0" / "rank_0" / "wandb_metrics.cursor").exists()


def test_system_figures_arrive_under_semantic_convention_names(tmp_path):
    with OtlpServer() as server:
        result = run_training(tmp_path, SCRIPT, env=otlp_env(
            server.url, PRIMUS_LENS_WANDB_ENHANCE_METRICS="true", PRIMUS_LENS_GPU_BACKEND="none"))
        assert result.proc.returncode == 0, result.stderr
        record = result.record()
        points = {(p.name, p.time_unix_nano): p for p in server.points()}
    for row in record:
        at = int(row["timestamp"] * 1e9)
        cpu = points[("system.cpu.utilization", at)]
        assert cpu.unit == "1" and cpu.value == pytest.approx(row["data"]["_primus_sys_cpu_percent"] / 100)
        rss = points[("process.memory.usage", at)]
        assert rss.unit == "By" and rss.value == row["data"]["_primus_sys_process_rss_bytes"]


def test_gpu_figures_arrive_under_the_hardware_conventions_names(tmp_path):
    """A real training run on the (fake) NVML of one H100: every recorded row's GPU figures reach
    the endpoint as ``hw.*`` metrics with their units, scaled, at the row's time."""
    state = str(tmp_path / "gpu-state.json")
    write(state, {"nvml": {"driver_version": "550.54.15", "devices": [{
        "name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-aaaa0000-1111-2222-3333-444455556666",
        "bus_id": "00000000:1B:00.0", "memory_total": 80 << 30, "memory_used": 3 << 30,
        "util_gpu": 77, "power_mw": 250_500, "temperature": 66}]}})
    with OtlpServer() as server:
        result = run_training(tmp_path, SCRIPT, env=otlp_env(
            server.url, PYTHONPATH=f"{FAKES}{os.pathsep}{BOOTSTRAP_DIR}",
            PRIMUS_LENS_WANDB_ENHANCE_METRICS="true", PRIMUS_LENS_GPU_BACKEND="nvml",
            OTLP_TEST_ROWS="10", **{STATE_ENV: state}))
        assert result.proc.returncode == 0, result.stderr
        record = result.record()
        points = {(p.name, p.time_unix_nano): p for p in server.points()}
    gpu = {"hw.id": "gpu", "hw.type": "gpu"}
    expected = {  # metric -> (unit, point attributes, value)
        "hw.gpu.utilization": ("1", gpu, 0.77),
        "hw.gpu.memory.usage": ("By", gpu, float(3 << 30)),
        "hw.gpu.memory.limit": ("By", gpu, float(80 << 30)),
        "hw.power": ("W", gpu, 250.5),
        "hw.temperature": ("Cel", {"hw.id": "gpu.gpu", "hw.type": "temperature",
                                   "hw.parent": "gpu", "hw.sensor_location": "gpu"}, 66.0),
    }
    assert len(record) == 10
    for row in record:
        assert row["data"]["_primus_gpu_util_percent"] == 77.0
        at = int(row["timestamp"] * 1e9)
        for name, (unit, point_attributes, value) in expected.items():
            point = points[(name, at)]
            assert (point.unit, point.attributes) == (unit, point_attributes), name
            assert point.value == pytest.approx(value), name
            assert point.resource["k8s.pod.name"] == POD


def test_sink_off_loads_no_otlp_module(tmp_path):
    result = run_training(tmp_path, SCRIPT, env={"PRIMUS_LENS_OTLP": "false"})
    assert result.proc.returncode == 0, result.stderr
    assert json.loads(result.proc.stdout.splitlines()[-1])["modules"] == []
    with OtlpServer() as server:
        result = run_training(tmp_path, SCRIPT, env=otlp_env(server.url))
    modules = json.loads(result.proc.stdout.splitlines()[-1])["modules"]
    assert modules == ["primus_lens_inject.report.otlp", "primus_lens_inject.report.otlp.encoding",
                       "primus_lens_inject.report.otlp.sink"]



def test_mutual_tls_with_the_standard_certificate_variables(tmp_path):
    import ssl

    import trustme

    ca = trustme.CA()
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(tls)
    tls.verify_mode = ssl.CERT_REQUIRED  # the client must show a certificate of our CA
    ca.configure_trust(tls)
    client = ca.issue_cert("trainer.example")
    files = {name: tmp_path / f"{name}.pem" for name in ("ca", "cert", "key")}
    ca.cert_pem.write_to_path(str(files["ca"]))
    client.cert_chain_pems[0].write_to_path(str(files["cert"]))
    client.private_key_pem.write_to_path(str(files["key"]))
    with OtlpServer(tls=tls) as server:
        result = run_training(tmp_path, SCRIPT, env=otlp_env(
            server.url, OTEL_EXPORTER_OTLP_CERTIFICATE=str(files["ca"]),
            OTEL_EXPORTER_OTLP_METRICS_CLIENT_CERTIFICATE=str(files["cert"]),
            OTEL_EXPORTER_OTLP_CLIENT_KEY=str(files["key"])))
        assert result.proc.returncode == 0, result.stderr
        check_delivery(server, result, json.loads(result.proc.stdout.splitlines()[-1])["run_id"])


def test_otlp_header_values_are_scrubbed_from_what_we_print():
    from primus_lens_inject.credentials import REDACTED, scrub

    env = {"OTEL_EXPORTER_OTLP_HEADERS": "x-api-key=plainkey77,x-org=ml",
           "OTEL_EXPORTER_OTLP_METRICS_HEADERS": "Authorization=Bearer%20tok3nvalue9"}
    line = "OTLP export failed: sent plainkey77 and Bearer tok3nvalue9 for ml"
    assert scrub(line, env) == f"OTLP export failed: sent {REDACTED} and {REDACTED} for ml"
