"""The built-in receiver answers like the real telemetry-processor (docs/server-contract.md).

Every test talks to a real receiver over HTTP on 127.0.0.1: in this process through
``Receiver`` or as ``python -m primus_lens_inject receive`` in a subprocess.  Expected responses are
written out byte for byte, and stored rows are checked by value, so a receiver that answers right
but stores wrong (or the reverse) fails.
"""

from __future__ import annotations

import gzip
import http.client
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple
from urllib.parse import urlsplit

import jsonschema
import pytest

from primus_lens_inject.devserver.faults import Faults, FaultState
from primus_lens_inject.devserver.receiver import Receiver

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # tests/
REPO = os.path.dirname(HERE)
POD = "llama3-8b-pretrain-master-0"

# --------------------------------------------------------------------------------------------
# Helpers.


class Reply:
    def __init__(self, status: int, headers: Dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)


def call(base: str, method: str, path: str, body: bytes = b"", timeout: float = 10.0,
         headers: Optional[Dict[str, str]] = None) -> Reply:
    """One request on a fresh connection; ``path`` is relative to the base URL ending in /v1."""
    url = urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=timeout)
    try:
        conn.request(method, url.path + path, body=body,
                     headers={"Content-Type": "application/json", **(headers or {})})
        response = conn.getresponse()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        conn.close()


def post(receiver: Receiver, endpoint: str, body: Any) -> Reply:
    """POST to /v1/wandb/<endpoint>; a str or bytes body goes as is, anything else as JSON."""
    raw = body if isinstance(body, bytes) else (body if isinstance(body, str) else json.dumps(body)).encode()
    return call(receiver.url, "POST", f"/wandb/{endpoint}", raw)


def control(receiver: Receiver, method: str, name: str, body: Any = None) -> Reply:
    raw = b"" if body is None else json.dumps(body).encode()
    return call(receiver.url, method, f"/_receiver/{name}", raw)


def envelope(code: int, message: str, data: str = "null") -> bytes:
    return f'{{"meta":{{"code":{code},"message":"{message}"}},"data":{data},"tracing":null}}'.encode()


INVALID = envelope(400, "invalid request format")
IDENTITY_REQUIRED = envelope(400, "either workload_uid or pod_name is required")
NO_WORKLOAD = envelope(400, "no valid workload found")
ONE_LOG_OK = envelope(2000, "OK", '{"count":1,"message":"training data reported successfully",'
                                  '"success_count":1,"workloads_count":1}')


def one_log(step: Any = 1, pod: str = "p", **extra: Any) -> Dict[str, Any]:
    return {"pod_name": pod, "run_id": "r1", "logs": [{"step": step, "timestamp": 1767225612.5,
                                                       "data": {"loss": 2.5}}], **extra}


def wait_until(predicate: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def stored_rows(receiver: Receiver) -> Dict[str, int]:
    stats = receiver.stats()
    return {table: stats[table] for table in ("logs", "metrics", "detections", "steps", "otlp")}


NOTHING_STORED = {"logs": 0, "metrics": 0, "detections": 0, "steps": 0, "otlp": 0}




# --------------------------------------------------------------------------------------------
# Spec §10: the example bodies and their documented responses, byte for byte.

DETECTION_10_1 = r"""{
  "source": "wandb",
  "type": "framework_detection_raw",
  "version": "1.0",
  "pod_name": "llama3-8b-pretrain-master-0",
  "pod_uid": "5b0c3f0e-2a7d-4c61-9a51-0f4f6c1d2e3a",
  "namespace": "team-a",
  "evidence": {
    "wandb": {
      "project": "llama3-pretrain",
      "name": "llama3-8b-bf16-run7",
      "id": "k3x9q2ab",
      "config": {"framework": "megatron", "lr": 0.0003, "micro_batch_size": 2, "bf16": true, "model_name": "llama3-8b"},
      "tags": ["pretrain", "mi300x"]
    },
    "environment": {"PRIMUS_CONFIG": "/workspace/exp/llama3_8B.yaml", "PRIMUS_BACKEND": "megatron", "WORLD_SIZE": "16", "RANK": "0", "LOCAL_RANK": "0"},
    "pytorch": {"available": true, "version": "2.5.1+rocm6.2", "cuda_available": true,
                "detected_modules": {"deepspeed": false, "megatron": true, "transformers": false, "lightning": false}},
    "wrapper_frameworks": {"primus": {"detected": true, "version": "0.3.0", "initialized": true, "base_framework": "megatron"}},
    "base_frameworks": {"megatron": {"detected": true, "version": "unknown", "initialized": true}},
    "system": {"python_version": "3.10.14", "platform": "linux"},
    "hardware": {"gpu_arch": "mi300x", "gpu_count": 8, "gpu_memory_gb": 191.5, "gpu_name": "AMD Instinct MI300X", "rocm_version": "rocm6.2"},
    "software": {"rocm_version": "6.2", "packages": {"torch": "2.5.1+rocm6.2", "wandb": "0.19.1"}},
    "build": {"image_tag": "rocm/primus:v25.9", "git_commit": "0123abcd"}
  },
  "hints": {
    "wrapper_frameworks": ["primus"],
    "base_frameworks": ["megatron"],
    "possible_frameworks": ["primus", "megatron"],
    "confidence": "high",
    "primary_indicators": ["import.primus", "PRIMUS_BACKEND=megatron"],
    "framework_layers": {"primus": {"layer": "wrapper", "base_frameworks": ["megatron"]},
                         "megatron": {"layer": "base", "wrapper_frameworks": ["primus"]}}
  },
  "timestamp": 1767225600.123
}"""  # noqa: E501

METRICS_10_2 = r"""{
  "source": "wandb",
  "pod_name": "llama3-8b-pretrain-master-0",
  "pod_uid": "5b0c3f0e-2a7d-4c61-9a51-0f4f6c1d2e3a",
  "run_id": "k3x9q2ab",
  "metrics": [
    {"name": "train/loss", "value": 2.3125, "step": 100, "timestamp": 1767225612.5, "tags": {}},
    {"name": "train/lr", "value": 0.0003, "step": 100, "timestamp": 1767225612.5, "tags": {"rank": "0"}},
    {"name": "train/loss", "value": 2.2969, "step": 101, "timestamp": 1767225614.1, "tags": {}}
  ],
  "timestamp": 1767225614.2
}"""

LOGS_10_3 = r"""{
  "source": "wandb",
  "pod_name": "llama3-8b-pretrain-master-0",
  "pod_uid": "5b0c3f0e-2a7d-4c61-9a51-0f4f6c1d2e3a",
  "run_id": "k3x9q2ab",
  "logs": [
    {"step": 100, "timestamp": 1767225612.5, "data": {"train/loss": 2.3125, "train/lr": 0.0003, "train/grad_norm": 1.07, "throughput/tokens_per_sec": 41234.5}},
    {"step": 101, "timestamp": 1767225614.1, "data": {"train/loss": 2.2969, "train/lr": 0.0003, "train/grad_norm": 0.98, "throughput/tokens_per_sec": 41310.0}}
  ],
  "timestamp": 1767225614.2
}"""  # noqa: E501

BATCH_10_4 = r"""{
  "detection": {
    "source": "wandb", "type": "framework_detection_raw", "version": "1.0",
    "pod_name": "llama3-8b-pretrain-master-0", "namespace": "team-a",
    "evidence": {"wandb": {"project": "llama3-pretrain", "name": "llama3-8b-bf16-run7", "id": "k3x9q2ab", "config": {"framework": "megatron"}, "tags": []},
                 "environment": {"PRIMUS_BACKEND": "megatron", "PRIMUS_CONFIG": "/workspace/exp/llama3_8B.yaml"},
                 "system": {"platform": "linux"}},
    "hints": {"wrapper_frameworks": ["primus"], "base_frameworks": ["megatron"], "possible_frameworks": ["primus", "megatron"],
              "confidence": "medium", "primary_indicators": ["PRIMUS env vars"]},
    "timestamp": 1767225600.1
  },
  "metrics": {
    "source": "wandb", "pod_name": "llama3-8b-pretrain-master-0", "run_id": "k3x9q2ab",
    "metrics": [{"name": "eval/loss", "value": 2.41, "step": 100, "timestamp": 1767225620.0, "tags": {}}],
    "timestamp": 1767225620.1
  },
  "logs": {
    "source": "wandb", "pod_name": "llama3-8b-pretrain-master-0", "run_id": "k3x9q2ab",
    "logs": [{"step": 102, "timestamp": 1767225616.0, "data": {"train/loss": 2.2891}}],
    "timestamp": 1767225620.1
  }
}"""  # noqa: E501

SCHEMA_DEFS = {"detection": "DetectionRequest", "metrics": "MetricsRequest", "logs": "LogsRequest",
               "batch": "BatchRequest"}


@pytest.mark.parametrize("endpoint, body", [("detection", DETECTION_10_1), ("metrics", METRICS_10_2),
                                            ("logs", LOGS_10_3), ("batch", BATCH_10_4)])
def test_spec_example_bodies_validate_against_the_schema_copy(endpoint: str, body: str) -> None:
    with open(os.path.join(HERE, "telemetry-api.schema.json")) as f:
        schema = json.load(f)
    validator = jsonschema.Draft202012Validator({**schema, "$ref": f"#/$defs/{SCHEMA_DEFS[endpoint]}"})
    assert list(validator.iter_errors(json.loads(body))) == []
    wrong = {"pod_name": 5}
    assert not validator.is_valid({"logs": wrong} if endpoint == "batch" else wrong), "it must reject too"


def test_spec_10_1_detection_for_a_pod_with_two_workloads(make_receiver: Callable[..., Receiver]) -> None:
    receiver = make_receiver(pods={POD: ["wl-parent", "wl-child"]})
    reply = post(receiver, "detection", DETECTION_10_1)
    assert reply.status == 200
    assert reply.headers["content-type"] == "application/json; charset=utf-8"
    assert reply.body == (b'{"meta":{"code":2000,"message":"OK"},"data":{"message":"detection reported '
                          b'successfully","success_count":2,"workloads_count":2},"tracing":null}')
    rows = receiver.detections()
    assert [row["workload"] for row in rows] == ["wl-parent", "wl-child"]
    for row in rows:
        assert (row["pod"], row["pod_uid"], row["namespace"]) == (POD, "5b0c3f0e-2a7d-4c61-9a51-0f4f6c1d2e3a",
                                                                  "team-a")
        assert row["timestamp"] == 1767225600.123
        evidence = row["data"]["evidence"]
        assert evidence["wandb"]["tags"] == ["pretrain", "mi300x"]
        assert evidence["wandb"]["config"]["micro_batch_size"] == 2.0
        assert evidence["hardware"]["gpu_count"] == 8
        assert evidence["build"]["image_tag"] == "rocm/primus:v25.9"
        assert row["data"]["hints"]["framework_layers"]["primus"]["layer"] == "wrapper"


def test_spec_10_2_metrics(receiver: Receiver) -> None:
    reply = post(receiver, "metrics", METRICS_10_2)
    assert (reply.status, reply.body) == (200, envelope(2000, "OK", '{"count":3,"message":"metrics reported '
                                                                   'successfully","success_count":1,'
                                                                   '"workloads_count":1}'))
    points = [(m["name"], m["value"], m["step"], m["timestamp"], m["tags"]) for m in receiver.metrics()]
    assert points == [("train/loss", 2.3125, 100, 1767225612.5, {}),
                      ("train/lr", 0.0003, 100, 1767225612.5, {"rank": "0"}),
                      ("train/loss", 2.2969, 101, 1767225614.1, {})]
    assert {m["workload"] for m in receiver.metrics()} == {f"wl-{POD}"}
    steps = {row["iteration"]: row["data"] for row in receiver.steps()}
    assert steps == {
        100: {"source": "wandb", "run_id": "k3x9q2ab", "step": 100, "train/loss": 2.3125, "train/lr": 0.0003,
              "created_at": "2026-01-01T00:00:12Z"},
        101: {"source": "wandb", "run_id": "k3x9q2ab", "step": 101, "train/loss": 2.2969,
              "created_at": "2026-01-01T00:00:14Z"},
    }


def test_spec_10_3_logs(receiver: Receiver) -> None:
    reply = post(receiver, "logs", LOGS_10_3)
    assert (reply.status, reply.body) == (200, envelope(2000, "OK", '{"count":2,"message":"training data '
                                                                   'reported successfully","success_count":1,'
                                                                   '"workloads_count":1}'))
    logs = receiver.logs()
    assert [(row["step"], row["timestamp"], row["run_id"], row["pod"]) for row in logs] == [
        (100, 1767225612.5, "k3x9q2ab", POD), (101, 1767225614.1, "k3x9q2ab", POD)]
    assert logs[1]["data"] == {"train/loss": 2.2969, "train/lr": 0.0003, "train/grad_norm": 0.98,
                               "throughput/tokens_per_sec": 41310.0}


def test_spec_10_4_batch_with_a_failing_metrics_part(make_receiver: Callable[..., Receiver]) -> None:
    receiver = make_receiver(faults={"fail_rate": 1.0, "fail_endpoints": ["metrics"]})
    reply = post(receiver, "batch", BATCH_10_4)
    assert reply.status == 200
    assert reply.body == (
        b'{"meta":{"code":2000,"message":"OK"},"data":{"results":{"detection":{"success":true,'
        b'"success_count":1,"workloads_count":1},"logs":{"count":1,"success":true,"success_count":1,'
        b'"workloads_count":1},"metrics":{"error":"failed to store 0 metrics to MetricsStorage, 1 steps to '
        b'training_performance","success":false}},"success":true},"tracing":null}')
    assert [row["data"]["evidence"]["environment"] for row in receiver.detections()] == [
        {"PRIMUS_BACKEND": "megatron", "PRIMUS_CONFIG": "/workspace/exp/llama3_8B.yaml"}]
    assert [(row["step"], row["data"]) for row in receiver.logs()] == [(102, {"train/loss": 2.2891})]
    assert receiver.metrics() == []
    assert [row["iteration"] for row in receiver.steps()] == [102]


# --------------------------------------------------------------------------------------------
# Spec §1.4 and §3: what the decoder refuses, always for the whole request.

REJECTED = [
    # name, endpoint, body, response
    ("NaN token", "metrics", '{"metrics":[{"name":"loss","value":NaN,"step":1}],"pod_name":"p"}', INVALID),
    ("Infinity in data", "logs", '{"pod_name":"p","logs":[{"step":1,"data":{"x":Infinity}}]}', INVALID),
    ("-Infinity under an unknown key", "logs", '{"pod_name":"p","extra":-Infinity,"logs":[]}', INVALID),
    ("1e400 in a float64", "metrics", '{"pod_name":"p","metrics":[{"name":"x","value":1e400,"step":1}]}',
     INVALID),
    ("1e400 in data", "logs", '{"pod_name":"p","logs":[{"step":1,"data":{"x":1e400}}]}', INVALID),
    ("huge integer in data", "logs", '{"pod_name":"p","logs":[{"step":1,"data":{"x":1' + "0" * 400 + "}}]}",
     INVALID),
    ("3.0 in step", "logs", '{"pod_name":"p","logs":[{"step":3.0,"data":{"x":1}}]}', INVALID),
    ("1e3 in step", "logs", '{"pod_name":"p","logs":[{"step":1e3,"data":{"x":1}}]}', INVALID),
    ('"3" in step', "logs", '{"pod_name":"p","logs":[{"step":"3","data":{"x":1}}]}', INVALID),
    ("step beyond int64", "logs", '{"pod_name":"p","logs":[{"step":9223372036854775808}]}', INVALID),
    ("leading zero", "logs", '{"pod_name":"p","logs":[{"step":01}]}', INVALID),
    ("bool in value", "metrics", '{"pod_name":"p","metrics":[{"name":"x","value":true,"step":1}]}', INVALID),
    ("string in value", "metrics", '{"pod_name":"p","metrics":[{"name":"x","value":"2.5"}]}', INVALID),
    ("number in tags", "metrics", '{"pod_name":"p","metrics":[{"name":"x","value":1,"tags":{"rank":0}}]}',
     INVALID),
    ("array for data", "logs", '{"pod_name":"p","logs":[{"step":1,"data":[1,2]}]}', INVALID),
    ("object for logs", "logs", '{"pod_name":"p","logs":{"step":1}}', INVALID),
    ("number for pod_name", "logs", '{"pod_name":7,"logs":[]}', INVALID),
    ("number in environment", "detection", '{"pod_name":"p","evidence":{"environment":{"WORLD_SIZE":16}}}',
     INVALID),
    ("8.0 gpu_count", "detection", '{"pod_name":"p","evidence":{"hardware":{"gpu_count":8.0}}}', INVALID),
    ("string detected_modules", "detection",
     '{"pod_name":"p","evidence":{"pytorch":{"detected_modules":{"megatron":"yes"}}}}', INVALID),
    ("bool in a string list", "detection", '{"pod_name":"p","hints":{"base_frameworks":[true]}}', INVALID),
    ("number for confidence", "detection", '{"pod_name":"p","hints":{"confidence":0.9}}', INVALID),
    ("non-object framework entry", "detection",
     '{"pod_name":"p","evidence":{"wrapper_frameworks":{"primus":true}}}', INVALID),
    ("top-level array", "logs", "[]", INVALID),
    ("top-level string", "logs", '"pod_name"', INVALID),
    ("empty body", "logs", "", INVALID),
    ("whitespace body", "logs", " \n\t", INVALID),
    ("truncated body", "logs", '{"pod_name":"p"', INVALID),
    ("trailing comma", "logs", '{"pod_name":"p",}', INVALID),
    ("NaN in a batch part", "batch", '{"logs":{"pod_name":"p","logs":[]},"metrics":{"pod_name":"p",'
                                     '"metrics":[{"name":"x","value":NaN}]}}', INVALID),
    ("missing identity", "metrics", '{"metrics":[]}', IDENTITY_REQUIRED),
    ("empty identity", "logs", '{"pod_name":"","workload_uid":"","logs":[]}', IDENTITY_REQUIRED),
    ("null identity", "detection", '{"pod_name":null,"workload_uid":null}', IDENTITY_REQUIRED),
    ("top-level null", "logs", "null", IDENTITY_REQUIRED),
]


@pytest.mark.parametrize("endpoint, body, expected", [case[1:] for case in REJECTED],
                         ids=[case[0] for case in REJECTED])
def test_rejected_bodies_get_the_servers_400_and_store_nothing(receiver: Receiver, endpoint: str, body: str,
                                                               expected: bytes) -> None:
    reply = post(receiver, endpoint, body)
    assert (reply.status, reply.body) == (400, expected)
    assert reply.headers["content-type"] == "application/json; charset=utf-8"
    assert stored_rows(receiver) == NOTHING_STORED
    [request] = receiver.requests()
    assert (request["path"], request["status"]) == (f"/v1/wandb/{endpoint}", 400)
    assert request["body"] == body.encode()


def test_gzip_body_is_invalid(receiver: Receiver) -> None:
    body = gzip.compress(json.dumps(one_log()).encode())
    reply = call(receiver.url, "POST", "/wandb/logs", body, headers={"Content-Encoding": "gzip"})
    assert (reply.status, reply.body) == (400, INVALID)
    assert receiver.raw_bodies() == [body]


def test_invalid_request_records_where_the_decoder_failed(receiver: Receiver) -> None:
    post(receiver, "logs", '{"pod_name":"p","logs":[{"step":1},{"step":2.5}]}')
    [request] = receiver.requests(status=400)
    assert request["message"] == "invalid request format"
    assert request["detail"] == "logs[1].step: cannot unmarshal number 2.5 into Go value of type int64"


def test_unknown_pod_with_a_pod_list_gets_no_valid_workload(make_receiver: Callable[..., Receiver]) -> None:
    receiver = make_receiver(pods=["known"])
    assert (post(receiver, "logs", one_log(pod="stranger")).body) == NO_WORKLOAD
    assert post(receiver, "logs", one_log(pod="stranger")).status == 400
    assert post(receiver, "logs", one_log(pod="known")).body == ONE_LOG_OK
    assert post(receiver, "logs", one_log(pod="stranger", workload_uid="uid-given")).body == ONE_LOG_OK
    assert [(row["workload"], row["pod"]) for row in receiver.logs()] == [("wl-known", "known"),
                                                                          ("uid-given", "stranger")]


def test_a_pod_with_two_workloads_stores_every_entry_once_per_workload(
        make_receiver: Callable[..., Receiver]) -> None:
    receiver = make_receiver(pods={"p": ["a", "b"]})
    reply = post(receiver, "logs", one_log())
    assert reply.json()["data"] == {"count": 1, "message": "training data reported successfully",
                                    "success_count": 2, "workloads_count": 2}
    assert sorted(row["workload"] for row in receiver.logs()) == ["a", "b"]


# --------------------------------------------------------------------------------------------
# Spec §1.4: what the decoder lets through, and how.


def test_trailing_bytes_after_the_object_are_ignored(receiver: Receiver) -> None:
    assert post(receiver, "logs", json.dumps(one_log()) + " garbage {[").body == ONE_LOG_OK
    assert [row["data"] for row in receiver.logs()] == [{"loss": 2.5}]


def test_out_of_range_number_under_an_unknown_key_is_skipped_like_go(receiver: Receiver) -> None:
    body = json.dumps(one_log())[:-1] + ',"extra":{"big":1e400,"list":[1e999]}}'
    assert post(receiver, "logs", body).body == ONE_LOG_OK


def test_keys_match_case_insensitively(receiver: Receiver) -> None:
    body = '{"POD_NAME":"p","Run_Id":"r","LOGS":[{"STEP":5,"TimeStamp":12.5,"Data":{"Loss":1}}]}'
    assert post(receiver, "logs", body).body == ONE_LOG_OK
    [row] = receiver.logs()
    assert (row["pod"], row["run_id"], row["step"], row["timestamp"], row["data"]) == ("p", "r", 5, 12.5,
                                                                                       {"Loss": 1.0})


def test_duplicate_keys_last_wins_null_keeps_and_maps_merge(receiver: Receiver) -> None:
    body = ('{"pod_name":"first","pod_name":"second","run_id":"r","run_id":null,'
            '"logs":[{"step":1,"data":{"a":1,"a":2}}],"logs":[{"data":{"b":3}}]}')
    assert post(receiver, "logs", body).body == ONE_LOG_OK
    [row] = receiver.logs()
    assert (row["pod"], row["run_id"], row["step"], row["data"]) == ("second", "r", 1, {"a": 2.0, "b": 3.0})


def test_nulls_become_zero_values(receiver: Receiver) -> None:
    body = ('{"pod_name":"p","metrics":[{"name":"m","value":null,"step":null,"tags":null},null],'
            '"timestamp":null}')
    assert post(receiver, "metrics", body).json()["data"]["count"] == 2
    assert [(m["name"], m["value"], m["step"], m["tags"]) for m in receiver.metrics()] == [
        ("m", 0.0, 0, None), ("", 0.0, 0, None)]
    assert post(receiver, "logs", '{"pod_name":"p","logs":null}').json()["data"]["count"] == 0
    assert post(receiver, "logs", '{"pod_name":"p","logs":[{"step":7,"data":null}]}').body == ONE_LOG_OK
    assert [(row["step"], row["data"]) for row in receiver.logs()] == [(7, {})]


def test_integer_edges(receiver: Receiver) -> None:
    for step in (-1, 9223372036854775807, 2147483648):
        assert post(receiver, "logs", one_log(step=step)).body == ONE_LOG_OK
    assert [row["step"] for row in receiver.logs()] == [-1, 9223372036854775807, 2147483648]
    # The server keys training_performance by int32(step): 2^31 wraps to -2^31 (spec §6).
    assert [row["iteration"] for row in receiver.steps()] == [-2147483648, -1]
    assert [row["writes"] for row in receiver.steps()] == [1, 2]  # 2^63-1 and -1 share int32 -1


def test_invalid_utf8_and_lone_surrogates_become_replacement_characters(receiver: Receiver) -> None:
    body = b'{"pod_name":"p\xff","run_id":"r\\ud800x","logs":[{"step":1,"data":{"k\xe2\x82":1}}]}'
    assert post(receiver, "logs", body).body == ONE_LOG_OK
    [row] = receiver.logs()
    assert (row["pod"], row["run_id"], row["data"]) == ("p\ufffd", "r\ufffdx", {"k\ufffd\ufffd": 1.0})


def test_top_level_null_on_batch_is_an_empty_success(receiver: Receiver) -> None:
    reply = post(receiver, "batch", "null")
    assert (reply.status, reply.body) == (200, envelope(2000, "OK", '{"results":{},"success":true}'))
    assert post(receiver, "batch", "{}").body == reply.body


# --------------------------------------------------------------------------------------------
# Spec §7: batch.


def test_batch_reports_each_part_and_stores_only_good_ones(make_receiver: Callable[..., Receiver]) -> None:
    receiver = make_receiver(pods=["known"])
    body = {"detection": {"source": "wandb"},  # no identity: no pre-check in a batch
            "metrics": {"pod_name": "known", "metrics": [{"name": "m", "value": 1.5, "step": 3}]},
            "logs": {"workload_uid": "uid-9", "logs": [{"step": 4, "data": {"x": 1}}, {"step": 5}]}}
    reply = post(receiver, "batch", body)
    assert reply.status == 200
    assert reply.json() == {"meta": {"code": 2000, "message": "OK"}, "tracing": None, "data": {
        "success": True, "results": {
            "detection": {"success": False, "error": "no valid workload found"},
            "metrics": {"success": True, "count": 1, "success_count": 1, "workloads_count": 1},
            "logs": {"success": True, "count": 2, "success_count": 1, "workloads_count": 1}}}}
    assert receiver.detections() == []
    assert [(m["workload"], m["step"], m["value"]) for m in receiver.metrics()] == [("wl-known", 3, 1.5)]
    assert [(row["workload"], row["step"]) for row in receiver.logs()] == [("uid-9", 4), ("uid-9", 5)]


def test_batch_parts_that_are_null_or_absent_have_no_result(receiver: Receiver) -> None:
    reply = post(receiver, "batch", {"detection": None, "logs": one_log()})
    assert reply.json()["data"] == {"results": {"logs": {"count": 1, "success": True, "success_count": 1,
                                                         "workloads_count": 1}}, "success": True}


# --------------------------------------------------------------------------------------------
# Spec §1.2: paths and methods gin does not route.


@pytest.mark.parametrize("method, path", [("GET", "/wandb/logs"), ("PUT", "/wandb/metrics"),
                                          ("DELETE", "/wandb/batch"), ("OPTIONS", "/wandb/detection"),
                                          ("POST", "/wandb/Logs"), ("POST", "/wandb/log"),
                                          ("POST", "/wandb"), ("POST", "/logs")])
def test_other_paths_and_methods_get_gins_plain_404(receiver: Receiver, method: str, path: str) -> None:
    reply = call(receiver.url, method, path, json.dumps(one_log()).encode())
    assert (reply.status, reply.body) == (404, b"404 page not found")
    assert reply.headers["content-type"] == "text/plain"
    assert stored_rows(receiver) == NOTHING_STORED


def test_api_v1_prefix_is_not_found(receiver: Receiver) -> None:
    base = receiver.url[: -len("/v1")]
    assert call(base, "POST", "/api/v1/wandb/logs", json.dumps(one_log()).encode()).status == 404


def test_robust_layout_serves_the_routes_under_api_v1_and_its_probes(
        make_receiver: Callable[..., Receiver]) -> None:
    receiver = make_receiver(layout="robust")
    host = receiver.otlp_endpoint
    assert receiver.url == f"{host}/api/v1"
    assert post(receiver, "logs", one_log()).body == ONE_LOG_OK
    assert call(host, "POST", "/v1/wandb/logs", json.dumps(one_log()).encode()).status == 404
    for probe in ("/healthz", "/readyz"):
        assert (call(host, "GET", probe).status, call(host, "GET", probe).body) == (200, b"ok")
    reply = call(receiver.url, "POST", "/wandb/logs/", json.dumps(one_log()).encode())
    assert (reply.status, reply.headers["location"]) == (307, "/api/v1/wandb/logs")
    assert control(receiver, "GET", "stats").status == 200
    assert [row["step"] for row in receiver.logs()] == [1]


def test_robust_worker_layout_answers_only_its_probes(make_receiver: Callable[..., Receiver]) -> None:
    receiver = make_receiver(layout="robust-worker")
    host = receiver.otlp_endpoint
    assert call(host, "GET", "/healthz").status == 200
    for path in ("/api/v1/wandb/logs", "/api/v1/wandb/detection", "/v1/wandb/logs"):
        reply = call(host, "POST", path, json.dumps(one_log()).encode())
        assert (reply.status, reply.body) == (404, b"404 page not found"), path
    assert stored_rows(receiver) == NOTHING_STORED


def test_robust_empty_db_layout_fails_every_write(make_receiver: Callable[..., Receiver]) -> None:
    receiver = make_receiver(layout="robust-empty-db")
    reply = post(receiver, "logs", one_log())
    assert (reply.status, reply.body) == (500, envelope(500, "failed to process logs", "{}"))
    reply = post(receiver, "detection", {"pod_name": "p"})
    assert (reply.status, reply.body) == (500, envelope(500, "failed to process detection", "{}"))
    assert post(receiver, "batch", {"logs": one_log()}).json()["data"]["results"] == {"logs": {
        "success": False,
        "error": 'ERROR: relation "training_performance" does not exist (SQLSTATE 42P01)'}}
    assert post(receiver, "logs", b"[1]").body == INVALID  # decoding comes first, as before
    assert call(receiver.otlp_endpoint, "GET", "/healthz").status == 200
    assert stored_rows(receiver) == NOTHING_STORED


def test_unknown_layout_is_refused() -> None:
    with pytest.raises(ValueError, match="layout must be one of lens, robust, robust-worker"):
        Receiver(layout="robust-api")


def test_trailing_slash_gets_a_307_redirect_and_nothing_stored(receiver: Receiver) -> None:
    reply = call(receiver.url, "POST", "/wandb/metrics/", json.dumps(one_log()).encode())
    assert (reply.status, reply.headers["location"], reply.body) == (307, "/v1/wandb/metrics", b"")
    assert stored_rows(receiver) == NOTHING_STORED
    assert receiver.stats()["requests"] == {"/v1/wandb/metrics/": {"307": 1}}


# --------------------------------------------------------------------------------------------
# Faults.


def timed_post(receiver: Receiver, body: Any) -> Tuple[Reply, float]:
    start = time.monotonic()
    reply = post(receiver, "logs", body)
    return reply, time.monotonic() - start


# Delays are checked from below (an answer never comes before its delay); from above only
# against a delay far longer than any load could explain, so no test races the clock.
LONG_DELAY = 60.0


def test_fixed_delay_slows_every_answer(make_receiver: Callable[..., Receiver]) -> None:
    receiver = make_receiver(faults={"delay": 0.4})
    reply, elapsed = timed_post(receiver, one_log())
    assert reply.body == ONE_LOG_OK
    assert 0.4 <= elapsed < LONG_DELAY
    receiver.set_faults(delay=LONG_DELAY)
    receiver.set_faults()
    assert timed_post(receiver, one_log())[1] < LONG_DELAY / 2


def test_random_delay_stays_within_its_bounds(make_receiver: Callable[..., Receiver]) -> None:
    settings = {"delay": 0.1, "delay_max": 0.3, "seed": 3}
    receiver = make_receiver(faults=settings)
    elapsed = [timed_post(receiver, one_log(step=step))[1] for step in range(4)]
    assert all(0.1 <= seconds < LONG_DELAY for seconds in elapsed), elapsed
    state = FaultState(Faults.from_mapping(settings))  # the draws themselves, free of timing
    drawn = [state.delay() for _ in range(4)]
    assert all(0.1 <= seconds <= 0.3 for seconds in drawn) and len(set(drawn)) > 1, drawn


def test_client_giving_up_during_a_delay_gets_nothing_stored(make_receiver: Callable[..., Receiver]) -> None:
    """Driven by events: the request is waiting out its delay, then the client closes; the
    receiver notices at once (as a Go handler's context ends), long before the delay would."""
    receiver = make_receiver(faults={"delay": LONG_DELAY})
    body = json.dumps(one_log()).encode()
    url = urlsplit(receiver.url)
    with socket.create_connection((url.hostname, url.port), timeout=30) as client:
        client.sendall(f"POST {url.path}/wandb/logs HTTP/1.1\r\nHost: x\r\nContent-Type: "
                       f"application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        wait_until(lambda: receiver.delayed() == 1, timeout=30, what="the request to wait")
    [request] = wait_until(receiver.requests, timeout=LONG_DELAY / 2,
                           what="the abandoned request to be recorded")
    assert (request["status"], request["message"]) == (499, "client closed the connection during the delay")
    assert stored_rows(receiver) == NOTHING_STORED


def statuses_with_fail_rate(make_receiver: Callable[..., Receiver], seed: int, count: int) -> List[int]:
    receiver = make_receiver(faults={"fail_rate": 0.5, "seed": seed})
    replies = [post(receiver, "logs", one_log(step=step)) for step in range(count)]
    for reply in replies:
        assert reply.body in (ONE_LOG_OK, envelope(500, "failed to process logs", "{}"))
    ok_steps = [step for step, reply in enumerate(replies) if reply.status == 200]
    assert [row["step"] for row in receiver.logs()] == ok_steps, "a failed request must store nothing"
    return [reply.status for reply in replies]


def test_fail_rate_answers_500_reproducibly_with_a_seed(make_receiver: Callable[..., Receiver]) -> None:
    first = statuses_with_fail_rate(make_receiver, seed=7, count=30)
    assert 0 < first.count(500) < 30
    assert statuses_with_fail_rate(make_receiver, seed=7, count=30) == first
    assert statuses_with_fail_rate(make_receiver, seed=8, count=30) != first


def test_fail_endpoints_limits_which_bodies_fail(make_receiver: Callable[..., Receiver]) -> None:
    receiver = make_receiver(faults={"fail_rate": 1, "fail_endpoints": ["detection"]})
    reply = post(receiver, "detection", {"pod_name": "p"})
    assert (reply.status, reply.body) == (500, envelope(500, "failed to process detection", "{}"))
    assert post(receiver, "logs", one_log()).body == ONE_LOG_OK
    assert post(receiver, "batch", {"detection": {"pod_name": "p"}}).json()["data"]["results"] == {
        "detection": {"success": False,
                      "error": "failed to forward detection to ai-advisor (receiver fault injection)"}}


def test_no_valid_workload_window_then_recovery(make_receiver: Callable[..., Receiver]) -> None:
    start = time.monotonic()  # the window opens when the faults are set, inside make_receiver
    receiver = make_receiver(faults={"no_workload_for": 1.0})
    assert post(receiver, "logs", one_log()).body == NO_WORKLOAD
    assert post(receiver, "batch", {"logs": one_log()}).json()["data"]["results"] == {
        "logs": {"success": False, "error": "no valid workload found"}}
    assert post(receiver, "logs", one_log(workload_uid="uid-1")).body == ONE_LOG_OK  # no cache lookup
    wait_until(lambda: post(receiver, "logs", one_log(step=2)).status == 200, timeout=60,
               what="the window to end")
    assert time.monotonic() - start >= 1.0
    assert [(row["workload"], row["step"]) for row in receiver.logs()] == [("uid-1", 1), ("wl-p", 2)]


def test_faults_by_count_answer_the_next_requests_then_stop(
        make_receiver: Callable[..., Receiver]) -> None:
    receiver = make_receiver(faults={"no_workload_requests": 2, "fail_requests": 2,
                                     "fail_endpoints": ["logs"]})
    replies = [post(receiver, "logs", one_log(step=step)) for step in range(2, 7)]
    assert [reply.status for reply in replies] == [400, 400, 500, 500, 200]
    assert replies[0].body == NO_WORKLOAD
    assert post(receiver, "detection", {"pod_name": "p"}).status == 200  # not a fail endpoint
    receiver.set_faults(fail_requests=1)  # setting faults restarts the counts
    assert [post(receiver, "logs", one_log(step=9)).status for _ in range(2)] == [500, 200]


def test_no_valid_workload_until_the_faults_change(make_receiver: Callable[..., Receiver]) -> None:
    receiver = make_receiver(faults={"no_workload_for": -1})
    time.sleep(0.2)
    assert post(receiver, "detection", {"pod_name": "p"}).body == NO_WORKLOAD
    receiver.set_faults()
    assert post(receiver, "detection", {"pod_name": "p"}).status == 200


@pytest.mark.parametrize("status", [502, 200])
def test_garbage_answers_are_not_json_and_store_nothing(make_receiver: Callable[..., Receiver],
                                                        status: int) -> None:
    receiver = make_receiver(faults={"garbage_rate": 1, "garbage_status": status})
    reply = post(receiver, "logs", one_log())
    assert reply.status == status
    assert reply.headers["content-type"] == "text/html"
    assert reply.body.startswith(b"<html>")
    with pytest.raises(ValueError):
        reply.json()
    assert stored_rows(receiver) == NOTHING_STORED


def test_faults_can_be_changed_over_http(receiver: Receiver) -> None:
    reply = control(receiver, "POST", "faults", {"fail_rate": 1, "fail_endpoints": ["logs"], "seed": 1})
    assert reply.status == 200
    expected = {"delay": 0.0, "delay_max": 0.0, "fail_rate": 1.0, "fail_endpoints": ["logs"],
                "garbage_rate": 0.0, "garbage_status": 502, "no_workload_for": 0.0,
                "no_workload_requests": 0, "fail_requests": 0, "otlp_html_for": 0, "otlp_max_body": 0,
                "otlp_fail_status": 503, "otlp_retry_after": None, "otlp_reject_rate": 0.0, "seed": 1}
    assert reply.json() == expected
    assert control(receiver, "GET", "faults").json() == expected
    assert post(receiver, "logs", one_log()).status == 500
    assert post(receiver, "metrics", {"pod_name": "p", "metrics": []}).status == 200
    assert control(receiver, "POST", "faults", {}).json()["fail_rate"] == 0.0
    assert post(receiver, "logs", one_log()).status == 200


@pytest.mark.parametrize("settings, message", [
    ({"fail_rat": 1}, "unknown fault setting(s): fail_rat"),
    ({"fail_rate": 2}, "fail_rate must be between 0 and 1, not 2"),
    ({"delay": "1"}, "delay must be a finite number, not '1'"),
    ({"fail_endpoints": ["batch"]},
     "fail_endpoints must list some of detection, metrics, logs, otlp, not ['batch']"),
    ({"otlp_fail_status": 200}, "otlp_fail_status must be an HTTP status from 400 to 599, not 200"),
    ({"otlp_retry_after": 1.5}, "otlp_retry_after must be a whole number of seconds, not 1.5"),
    ({"otlp_reject_rate": -0.1}, "otlp_reject_rate must be between 0 and 1, not -0.1"),
    ({"garbage_status": 299}, "garbage_status must be an HTTP status from 200 to 599, not 299"),
    ({"seed": 1.5}, "seed must be an integer, not 1.5"),
    ({"fail_requests": -1}, "fail_requests must be a whole number, not -1"),
    ({"no_workload_requests": 2.5}, "no_workload_requests must be a whole number, not 2.5"),
    ([], "the body must be a JSON object of fault settings"),
])
def test_invalid_fault_settings_are_refused(receiver: Receiver, settings: Any, message: str) -> None:
    reply = control(receiver, "POST", "faults", settings)
    assert (reply.status, reply.json()) == (400, {"error": message})
    assert control(receiver, "GET", "faults").json()["fail_rate"] == 0.0


# --------------------------------------------------------------------------------------------
# Read endpoints.


def test_read_endpoints_filter_what_arrived(receiver: Receiver) -> None:
    post(receiver, "logs", one_log(step=1, pod="p1", run_id="a"))
    post(receiver, "logs", one_log(step=2, pod="p2", run_id="b"))
    points = [{"name": "m", "value": 1, "step": 1}, {"name": "n", "value": 2, "step": 1}]
    post(receiver, "metrics", {"pod_name": "p1", "run_id": "a", "metrics": points})
    post(receiver, "detection", {"pod_name": "p2", "namespace": "ns"})
    post(receiver, "logs", '{"pod_name":"p1","logs":[{"step":NaN}]}')

    def read(name: str, query: str = "") -> Any:
        reply = control(receiver, "GET", name + query)
        assert reply.status == 200
        return reply.json()

    assert [(row["run_id"], row["pod"], row["step"]) for row in read("logs", "?run_id=a")["logs"]] == [
        ("a", "p1", 1)]
    assert [row["step"] for row in read("logs", "?pod=p2")["logs"]] == [2]
    assert read("logs", "?pod=p2&run_id=a") == {"logs": []}
    assert [m["value"] for m in read("metrics", "?name=n")["metrics"]] == [2.0]
    assert [(d["pod"], d["namespace"], d["workload"]) for d in read("detections")["detections"]] == [
        ("p2", "ns", "wl-p2")]
    steps = read("steps", "?workload=wl-p1")["steps"]
    assert [(step["workload"], step["iteration"]) for step in steps] == [("wl-p1", 1)]
    [rejected] = read("requests", "?status=400")["requests"]
    assert rejected["body"] == '{"pod_name":"p1","logs":[{"step":NaN}]}'
    assert read("stats") == {"requests": {"/v1/wandb/detection": {"200": 1},
                                          "/v1/wandb/logs": {"200": 2, "400": 1},
                                          "/v1/wandb/metrics": {"200": 1}},
                             "logs": 2, "metrics": 2, "detections": 1, "steps": 2, "otlp": 0}
    reply = control(receiver, "GET", "logs?step=1")
    assert reply.status == 400
    assert reply.json() == {"error": "unknown filter(s) step; known: run_id, pod, workload"}
    assert control(receiver, "GET", "nothing").status == 404


def test_steps_merge_repeated_writes_like_training_performance(receiver: Receiver) -> None:
    post(receiver, "logs", {"pod_name": "p", "run_id": "r", "logs": [{"step": 3, "timestamp": 100,
                                                                      "data": {"a": 1, "b": 1}}]})
    post(receiver, "logs", {"pod_name": "q", "run_id": "r2", "logs": [{"step": 3, "timestamp": 200,
                                                                       "data": {"b": 2, "c": 3}}]})
    assert [row["writes"] for row in receiver.steps(workload="wl-p")] == [1]
    receiver.reset()
    post(receiver, "logs", {"workload_uid": "w", "run_id": "r", "logs": [{"step": 3, "timestamp": 100,
                                                                          "data": {"a": 1, "b": 1}}]})
    post(receiver, "logs", {"workload_uid": "w", "run_id": "r2", "logs": [{"step": 3, "timestamp": 200,
                                                                           "data": {"b": 2, "c": 3}}]})
    assert receiver.steps() == [{"workload": "w", "iteration": 3, "writes": 2, "data": {
        "source": "wandb", "run_id": "r2", "step": 3, "a": 1.0, "b": 2.0, "c": 3.0,
        "created_at": "1970-01-01T00:01:40Z", "updated_at": "1970-01-01T00:03:20Z"}}]
    assert len(receiver.logs()) == 2, "every write is kept as its own row"


def test_raw_bodies_hold_every_byte_received(receiver: Receiver) -> None:
    secret = "hunter2-token"
    accepted = json.dumps(one_log(run_id=secret)).encode()
    rejected = b'{"pod_name":"p","logs":[{"step":NaN,"data":{"pw":"' + secret.encode() + b'"}}]}'
    post(receiver, "logs", accepted)
    post(receiver, "logs", rejected)
    call(receiver.url, "GET", "/wandb/logs", secret.encode())
    bodies = receiver.raw_bodies()
    assert bodies == [accepted, rejected, secret.encode()]
    assert sum(secret.encode() in body for body in bodies) == 3


def test_reset_forgets_everything(receiver: Receiver) -> None:
    post(receiver, "logs", one_log())
    reply = control(receiver, "POST", "reset")
    assert reply.json() == {"requests": {}, **NOTHING_STORED}
    assert receiver.raw_bodies() == []


# --------------------------------------------------------------------------------------------
# Transport.


def test_keep_alive_connection_and_chunked_body(receiver: Receiver) -> None:
    url = urlsplit(receiver.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    try:
        for step in range(3):
            conn.request("POST", "/v1/wandb/logs", body=json.dumps(one_log(step=step)).encode())
            response = conn.getresponse()
            assert (response.status, response.read()) == (200, ONE_LOG_OK)
        local_port = conn.sock.getsockname()[1]
        body = json.dumps(one_log(step=9)).encode()
        conn.request("POST", "/v1/wandb/logs", body=iter([body[:10], body[10:]]), encode_chunked=True)
        response = conn.getresponse()
        assert (response.status, response.read()) == (200, ONE_LOG_OK)
        assert conn.sock.getsockname()[1] == local_port, "the connection was not kept alive"
    finally:
        conn.close()
    assert [row["step"] for row in receiver.logs()] == [0, 1, 2, 9]


@pytest.mark.parametrize("framing", [b"Transfer-Encoding: chunked\r\n\r\nzz\r\n",
                                     b"Content-Length: x\r\n\r\n"])
def test_broken_framing_gets_a_plain_400_and_a_closed_connection(receiver: Receiver, framing: bytes) -> None:
    with socket.create_connection(("127.0.0.1", receiver.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/wandb/logs HTTP/1.1\r\nHost: x\r\n" + framing)
        received = b""
        while chunk := sock.recv(4096):  # the server closes the connection after answering
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ")
    assert b"Connection: close" in head
    assert body == b"400 Bad Request"
    assert receiver.stats()["requests"] == {}


def raw_request(receiver: Receiver, request: bytes) -> Tuple[int, bytes, bytes]:
    """Send ``request`` as is (it asks to close or is refused, so the server closes after its
    answer) and return the status, the head and the body."""
    received = b""
    with socket.create_connection(("127.0.0.1", receiver.port), timeout=10) as sock:
        sock.sendall(request)
        while chunk := sock.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    assert head, "the connection was dropped without an answer"
    return int(head.split(b" ")[1]), head, body


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def log_with(value: bytes, key: bytes = b"data") -> bytes:
    """A logs body whose one entry holds ``value`` (at depth 4: body, logs, entry, data)."""
    return b'{"pod_name":"p","run_id":"r1","logs":[{"step":1,"timestamp":1.5,"' + key + \
        b'":{"k":' + value + b'}}]}'


HEAD = b"POST /v1/wandb/logs HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
BAD_FRAMING = b"400 Bad Request"
TOO_LARGE = b"request body larger than 16777216 bytes"


def sized(body: bytes) -> bytes:
    return HEAD + b"Content-Length: %d\r\n\r\n" % len(body) + body


def chunked(*lines: bytes) -> bytes:
    return HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + b"".join(lines)


DEPTH = "exceeded max depth"


@pytest.mark.parametrize("request_bytes, status, body, stored, detail", [
    (sized(log_with(nested(496))), 200, ONE_LOG_OK, 1, ""),  # 500 levels: the limit
    (sized(log_with(nested(497))), 400, INVALID, 0, DEPTH),
    (sized(log_with(nested(950))), 400, INVALID, 0, DEPTH),
    (sized(log_with(nested(100_000))), 400, INVALID, 0, DEPTH),
    (sized(log_with(nested(600), key=b"unknown")), 400, INVALID, 0, DEPTH),  # skipped, still counted
    (sized(b"\x00\xff garbage {]"), 400, INVALID, 0, "Expecting value: line 1 column 1 (char 0)"),
    (HEAD + b"Content-Length: 1000000000000000\r\n\r\n{}", 413, TOO_LARGE, None, ""),
    (HEAD + b"Content-Length: +2\r\n\r\n{}", 400, BAD_FRAMING, None, ""),
    (HEAD + b"Content-Length: 1_0\r\n\r\n{}", 400, BAD_FRAMING, None, ""),
    (HEAD + b"Content-Length: " + b"9" * 5000 + b"\r\n\r\n{}", 413, TOO_LARGE, None, ""),
    (HEAD + b"Content-Length: \xb2\r\n\r\n{}", 400, BAD_FRAMING, None, ""),  # "²": a str digit
    (HEAD + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{} ", 400, BAD_FRAMING, None, ""),
    (HEAD + b"Transfer-Encoding: gzip\r\n\r\n", 501, b"unsupported transfer encoding", None, ""),
    (chunked(b"38D7EA4C68000\r\n{}"), 413, TOO_LARGE, None, ""),  # 10^15
    (chunked(b"10000000000000000\r\n{}"), 400, BAD_FRAMING, None, ""),  # 17 digits
    (chunked(b"-2\r\n{}\r\n0\r\n\r\n"), 400, BAD_FRAMING, None, ""),
    (chunked(b"0x2\r\n{}\r\n0\r\n\r\n"), 400, BAD_FRAMING, None, ""),
    (chunked(b"2\r\n{}XX0\r\n\r\n"), 400, BAD_FRAMING, None, ""),  # no CRLF after the data
    (chunked(b"2\r\n{}\r\n0\r\n" + b"X-T: 1\r\n" * 101), 400, BAD_FRAMING, None, ""),
    (chunked(b"2;ext=1\r\n{}\r\n0\r\nX-T: 1\r\n\r\n"), 400,
     envelope(400, "either workload_uid or pod_name is required"), 0, ""),
])
def test_every_malformed_body_gets_an_answer(receiver: Receiver, request_bytes: bytes, status: int,
                                             body: bytes, stored: Optional[int], detail: str) -> None:
    """Whatever the body, the client reads a status: framing it cannot trust is refused before
    processing (not recorded), a body that Go's decoder refuses is 400, nesting past the limit
    included; and the receiver serves on."""
    got_status, head, got_body = raw_request(receiver, request_bytes)
    assert (got_status, got_body) == (status, body)
    assert b"Connection: close" in head
    if stored is None:
        assert receiver.stats()["requests"] == {}
    else:
        [request] = receiver.requests()
        assert request["status"] == status
        assert request["detail"].endswith(detail)
        assert receiver.stats()["logs"] == stored
    assert post(receiver, "logs", one_log()).status == 200


@pytest.mark.parametrize("request_bytes, status", [
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),  # TLS to a plain port
    (b"GARBAGE\r\n\r\n", 400),
    (b"POST /v1/wandb/logs HTTP/2.0\r\n\r\n", 505),
    (b"POST /v1/wandb/logs HTTP/1.1\r\n" + b"X: a\r\n" * 101 + b"\r\n", 431),
])
def test_garbage_requests_get_a_status_line(receiver: Receiver, request_bytes: bytes,
                                            status: int) -> None:
    got_status, head, _ = raw_request(receiver, request_bytes)
    assert got_status == status
    assert b"Connection: close" in head
    assert receiver.stats()["requests"] == {}


def test_a_body_over_the_limit_is_refused_and_the_client_reads_why(receiver: Receiver) -> None:
    """The client sends all of a 17 MiB body: it still reads the 413, not a reset."""
    reply = post(receiver, "logs", b"[" + b"0," * (17 << 19) + b"0]")
    assert (reply.status, reply.body) == (413, TOO_LARGE)
    deep = call(receiver.url, "POST", "/_receiver/faults", b'{"delay":' + nested(5000) + b"}")
    assert deep.status == 400 and "recursion" in deep.json()["error"]
    assert receiver.faults["delay"] == 0.0


def test_concurrent_requests_are_all_stored(receiver: Receiver) -> None:
    def send(thread: int) -> None:
        for index in range(20):
            reply = post(receiver, "logs", one_log(step=thread * 100 + index, run_id=f"t{thread}"))
            assert reply.status == 200

    threads = [threading.Thread(target=send, args=(thread,)) for thread in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not any(thread.is_alive() for thread in threads)
    steps = sorted(row["step"] for row in receiver.logs())
    assert steps == sorted(thread * 100 + index for thread in range(8) for index in range(20))
    assert receiver.stats()["requests"] == {"/v1/wandb/logs": {"200": 160}}


def big_logs(entries: int) -> Dict[str, Any]:
    """A body that takes the receiver a good part of a second to decode and store."""
    return {"pod_name": "p", "run_id": "big", "logs": [
        {"step": step, "timestamp": 1.0, "data": {f"k{key}": key * 1.5 for key in range(10)}}
        for step in range(entries)]}


BIG = 12000
BIG_LOGS_OK = envelope(2000, "OK", f'{{"count":{BIG},"message":"training data reported successfully",'
                                   '"success_count":1,"workloads_count":1}')


def test_stop_answers_a_request_in_progress(make_receiver: Callable[..., Receiver]) -> None:
    receiver = make_receiver(faults={"delay": LONG_DELAY})
    replies: List[Reply] = []
    sender = threading.Thread(target=lambda: replies.append(post(receiver, "logs", big_logs(BIG))))
    sender.start()
    wait_until(lambda: receiver.delayed() == 1, timeout=30, what="the request to wait out its delay")
    start = time.monotonic()
    receiver.stop()  # cuts the delay short, then the request is processed and answered
    assert time.monotonic() - start < LONG_DELAY / 2, "stop must cut the delay short"
    sender.join(10)
    assert [reply.body for reply in replies] == [BIG_LOGS_OK]
    assert len(receiver.logs()) == BIG
    with pytest.raises(ConnectionError):
        post(receiver, "logs", one_log())


# --------------------------------------------------------------------------------------------
# The command: python -m primus_lens_inject receive ...


class ReceiverProcess:
    """``primus-lens receive`` in a subprocess, ready once it printed its line."""

    def __init__(self, *args: str) -> None:
        env = dict(os.environ, PYTHONPATH=REPO)
        self.proc = subprocess.Popen([sys.executable, "-m", "primus_lens_inject", "receive", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        self.url = self._ready_url(timeout=20)
        self.port = urlsplit(self.url).port

    def _ready_url(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        readable, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline().decode() if readable else ""
        prefix = "primus-lens receiver listening on "
        assert line.startswith(prefix) and line.endswith("/v1\n"), f"not ready: {line!r}"
        return line[len(prefix):].strip()

    def signal(self, signum: int) -> int:
        self.proc.send_signal(signum)
        return self.proc.wait(timeout=15)


@pytest.fixture
def processes() -> Iterator[List[ReceiverProcess]]:
    started: List[ReceiverProcess] = []
    yield started
    for process in started:
        if process.proc.poll() is None:
            process.proc.kill()
            process.proc.wait(timeout=15)


def read_logs(url: str) -> List[Tuple[str, int]]:
    return [(row["run_id"], row["step"]) for row in call(url, "GET", "/_receiver/logs").json()["logs"]]


def test_subprocess_restart_on_the_same_db_keeps_data(processes: List[ReceiverProcess],
                                                      tmp_path: Any) -> None:
    db = str(tmp_path / "receiver.db")
    first = ReceiverProcess("--port", "0", "--db", db)
    processes.append(first)
    body = json.dumps(one_log(step=1, run_id="before")).encode()
    assert call(first.url, "POST", "/wandb/logs", body).body == ONE_LOG_OK
    assert first.signal(signal.SIGTERM) == 0
    with pytest.raises(ConnectionError):
        call(first.url, "GET", "/_receiver/stats")

    second = ReceiverProcess("--port", str(first.port), "--db", db)
    processes.append(second)
    assert second.url == first.url
    body = json.dumps(one_log(step=2, run_id="after")).encode()
    assert call(second.url, "POST", "/wandb/logs", body).body == ONE_LOG_OK
    assert read_logs(second.url) == [("before", 1), ("after", 2)]
    assert second.signal(signal.SIGINT) == 0
    assert second.proc.stderr is not None and second.proc.stderr.read() == b""


def test_subprocess_sigterm_answers_the_request_in_progress(processes: List[ReceiverProcess],
                                                            tmp_path: Any) -> None:
    db = str(tmp_path / "receiver.db")
    process = ReceiverProcess("--port", "0", "--db", db, "--delay", str(LONG_DELAY))
    processes.append(process)
    replies: List[Reply] = []
    body = json.dumps(big_logs(BIG)).encode()
    sender = threading.Thread(target=lambda: replies.append(call(process.url, "POST", "/wandb/logs", body,
                                                                 timeout=LONG_DELAY)))
    sender.start()
    wait_until(lambda: call(process.url, "GET", "/_receiver/delayed").json()["delayed"] == 1,
               timeout=30, what="the request to wait out its delay")
    start = time.monotonic()
    assert process.signal(signal.SIGTERM) == 0
    assert time.monotonic() - start < LONG_DELAY / 2, "SIGTERM must cut the delay short"
    sender.join(30)
    assert [reply.body for reply in replies] == [BIG_LOGS_OK]
    check = Receiver(db=db)
    try:
        assert len(check.logs(run_id="big")) == BIG
    finally:
        check.close()


def test_subprocess_pods_and_fault_options(processes: List[ReceiverProcess]) -> None:
    process = ReceiverProcess("--port", "0", "--pods", "a=uid-1+uid-2,b", "--pods", "c",
                              "--fail-rate", "1", "--fail-endpoints", "logs", "--seed", "4")
    processes.append(process)

    def send(endpoint: str, body: Any) -> Reply:
        return call(process.url, "POST", f"/wandb/{endpoint}", json.dumps(body).encode())

    assert send("detection", {"pod_name": "a"}).json()["data"]["workloads_count"] == 2
    assert send("detection", {"pod_name": "c"}).json()["data"]["workloads_count"] == 1
    assert send("detection", {"pod_name": "z"}).body == NO_WORKLOAD
    assert send("logs", one_log(pod="b")).body == envelope(500, "failed to process logs", "{}")
    detections = call(process.url, "GET", "/_receiver/detections").json()["detections"]
    assert [row["workload"] for row in detections] == ["uid-1", "uid-2", "wl-c"]
    assert call(process.url, "GET", "/_receiver/faults").json()["fail_endpoints"] == ["logs"]
    assert process.signal(signal.SIGTERM) == 0


@pytest.mark.parametrize("args, code, message", [
    (["--fail-rate", "2"], 2, "fail_rate must be between 0 and 1, not 2.0"),
    (["--fail-endpoints", "logs,oops"], 2, "fail_endpoints must list some of detection, metrics, logs"),
    (["--db", "/nonexistent-dir/x.db"], 1, "cannot open the database /nonexistent-dir/x.db"),
])
def test_subprocess_bad_options_exit_with_a_message(args: List[str], code: int, message: str) -> None:
    result = subprocess.run([sys.executable, "-m", "primus_lens_inject", "receive", "--port", "0", *args],
                            capture_output=True, timeout=30, env=dict(os.environ, PYTHONPATH=REPO))
    assert result.returncode == code
    assert message in result.stderr.decode()
    assert result.stdout == b""


def test_subprocess_port_in_use_exits_1(receiver: Receiver) -> None:
    command = [sys.executable, "-m", "primus_lens_inject", "receive", "--port", str(receiver.port)]
    result = subprocess.run(command, capture_output=True, timeout=30, env=dict(os.environ, PYTHONPATH=REPO))
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{receiver.port}" in result.stderr.decode()


def test_subprocess_layout_option(processes: List[ReceiverProcess]) -> None:
    process = ReceiverProcess("--port", "0", "--layout", "robust-worker")
    processes.append(process)
    assert process.url.endswith("/api/v1")
    host = process.url[: -len("/api/v1")]
    assert call(host, "GET", "/healthz").status == 200
    assert call(process.url, "POST", "/wandb/logs", json.dumps(one_log()).encode()).status == 404
    assert process.signal(signal.SIGTERM) == 0
