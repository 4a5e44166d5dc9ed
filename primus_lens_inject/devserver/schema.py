"""The request bodies as the server's Go structs declare them (spec §4-§7), and what an accepted
body adds to the store: the rows of each endpoint, built by its ``accept`` function."""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable, Dict, List, NamedTuple, Union

from .godecode import ANY, BOOL, FLOAT64, INT64, STRING, Map, Pointer, Slice, Struct

_STRINGS = Slice(STRING)
_NESTED = Map(Map(ANY))
_BUILD_FIELDS = ("build_url", "dockerfile_url", "image_tag", "build_date", "git_commit", "git_branch",
                 "git_repo", "ci_pipeline_id")

_DETECTION = Struct(
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
BATCH = Struct("WandBBatchRequest", detection=Pointer(_DETECTION), metrics=Pointer(METRICS),
               logs=Pointer(LOGS))


# What an accepted request leaves behind: rows for the SQLite store.


class LogRow(NamedTuple):
    workload: str
    pod: str
    pod_uid: str
    run_id: str
    step: int
    timestamp: float
    data: str


class MetricRow(NamedTuple):
    workload: str
    pod: str
    pod_uid: str
    run_id: str
    name: str
    value: float
    step: int
    timestamp: float
    tags: str


class DetectionRow(NamedTuple):
    workload: str
    pod: str
    pod_uid: str
    namespace: str
    timestamp: float
    data: str


class StepWrite(NamedTuple):
    """One upsert of the server's ``training_performance`` row for (workload, step)."""

    workload: str
    step: int
    run_id: str
    timestamp: float
    data: Dict[str, Any]


class OtlpRow(NamedTuple):
    """One OTLP number data point (``otlp`` table): times in ns since the epoch as sent, the value
    as sent (int for ``as_int``, float for ``as_double``), attributes as JSON objects."""

    resource: str
    scope: str
    name: str
    description: str
    unit: str
    kind: str  # gauge or sum
    start_time: int
    time: int
    value: Union[int, float]
    attributes: str


class RequestRow(NamedTuple):
    received: float
    method: str
    path: str
    status: int
    message: str
    detail: str
    body: bytes


@dataclasses.dataclass
class Accepted:
    """Everything one request adds to the store, written in one transaction."""

    logs: List[LogRow] = dataclasses.field(default_factory=list)
    metrics: List[MetricRow] = dataclasses.field(default_factory=list)
    detections: List[DetectionRow] = dataclasses.field(default_factory=list)
    steps: List[StepWrite] = dataclasses.field(default_factory=list)
    otlp: List[OtlpRow] = dataclasses.field(default_factory=list)


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _accept_detection(accepted: Accepted, workload: str, request: Dict[str, Any]) -> None:
    """ai-advisor gets one forwarded copy per resolved workload; we keep the decoded body instead."""
    accepted.detections.append(DetectionRow(workload, request["pod_name"], request["pod_uid"],
                                             request["namespace"], request["timestamp"], dumps(request)))


def _accept_metrics(accepted: Accepted, workload: str, request: Dict[str, Any]) -> None:
    """Every point is kept; per step the points merge into one upsert (same name: last wins,
    timestamp: the first point's), as the server groups them (spec §5)."""
    who = (workload, request["pod_name"], request["pod_uid"], request["run_id"])
    steps: Dict[int, StepWrite] = {}
    for metric in request["metrics"] or []:
        accepted.metrics.append(MetricRow(*who, metric["name"], metric["value"], metric["step"],
                                           metric["timestamp"], dumps(metric["tags"])))
        write = steps.setdefault(metric["step"], StepWrite(workload, metric["step"], request["run_id"],
                                                            metric["timestamp"], {}))
        write.data[metric["name"]] = metric["value"]
    accepted.steps.extend(steps.values())


def _accept_logs(accepted: Accepted, workload: str, request: Dict[str, Any]) -> None:
    """One row and one upsert per entry, in array order (spec §6)."""
    who = (workload, request["pod_name"], request["pod_uid"], request["run_id"])
    for entry in request["logs"] or []:
        data = entry["data"] or {}
        accepted.logs.append(LogRow(*who, entry["step"], entry["timestamp"], dumps(data)))
        accepted.steps.append(StepWrite(workload, entry["step"], request["run_id"], entry["timestamp"],
                                         data))


@dataclasses.dataclass(frozen=True)
class Endpoint:
    name: str
    request: Struct
    items: str  # the list whose length the response reports as "count"; "" for detection
    ok_message: str
    failure: str  # the batch part's error text when a fault fails it; {steps} = distinct steps
    accept: Callable[[Accepted, str, Dict[str, Any]], None]


ENDPOINTS = {endpoint.name: endpoint for endpoint in (
    Endpoint("detection", _DETECTION, "", "detection reported successfully",
              "failed to forward detection to ai-advisor (receiver fault injection)", _accept_detection),
    Endpoint("metrics", METRICS, "metrics", "metrics reported successfully",
              "failed to store 0 metrics to MetricsStorage, {steps} steps to training_performance",
              _accept_metrics),
    Endpoint("logs", LOGS, "logs", "training data reported successfully",
              "failed to store {steps} steps to training_performance (receiver fault injection)",
              _accept_logs),
)}  # in the order a batch processes its parts
ROUTES = {f"/v1/wandb/{name}": name for name in (*ENDPOINTS, "batch")}
