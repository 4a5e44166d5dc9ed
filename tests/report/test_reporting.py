"""Reporting to a real receiver on loopback: every row arrives exactly once, whatever happens.

Training runs in real subprocesses; the receiver (``primus-lens receive``) applies the real
server's decoding rules, so a body the telemetry-processor would reject fails here too.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import jsonschema
import pytest
from conftest import TRAIN_PYTHON, run_training, strict_json, training_env

from primus_lens_inject.devserver.receiver import Receiver

SCHEMA = json.loads((Path(__file__).parents[1] / "telemetry-api.schema.json").read_text())
POD = "trainer-master-0"


def validator(name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator({**SCHEMA, "$ref": f"#/$defs/{name}"})


def reporting_env(url: str, **extra: str) -> dict:
    return {"PRIMUS_LENS_WANDB_API_REPORTING": "true", "PRIMUS_LENS_API_BASE_URL": url,
            "POD_NAME": POD, "POD_UID": "5b0c3f0e-2a7d-4c61-9a51-0f4f6c1d2e3a",
            "POD_NAMESPACE": "team-a", "PRIMUS_LENS_WANDB_FLUSH_INTERVAL": "0.2", **extra}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()


def assert_bodies_valid(receiver: Receiver) -> None:
    """Every body we sent decodes under the server's rules and validates against the contract;
    the only 400 is the transient "no valid workload found" (doctor's empty probe aside)."""
    logs, detection = validator("LogsRequest"), validator("DetectionRequest")
    for request in receiver.requests():
        if request["body"] == b"{}":
            continue  # primus-lens doctor's probe, refused before anything is stored
        assert request["status"] != 400 or request["message"] == "no valid workload found", request
        body = json.loads(request["body"])
        (logs if request["path"].endswith("/logs") else detection).validate(body)


def exactly_once(receiver: Receiver, run_id: str, steps) -> None:
    got = Counter(row["step"] for row in receiver.logs(run_id=run_id))
    assert sorted(got) == sorted(steps) and set(got.values()) == {1}, got


@pytest.fixture
def receiver():
    """A receiver on loopback; whatever a test sent to it must have been a valid body."""
    with Receiver(port=0) as server:
        yield server
        assert_bodies_valid(server)


# The training script of these tests, a real file; its variations come from its environment.
LOGGING = (Path(__file__).parents[1] / "scripts" / "logging_run.py").read_text()


def test_every_row_arrives_once_with_valid_bodies_and_detection(tmp_path, receiver):
    result = run_training(tmp_path, LOGGING, env=reporting_env(receiver.url))
    assert result.proc.returncode == 0, result.stderr
    run_id = result.proc.stdout.split()[1]
    exactly_once(receiver, run_id, range(50))
    rows = {row["step"]: row for row in receiver.logs(run_id=run_id)}
    assert rows[7]["data"] == {"loss": 0.125, "huge": 7, "nested.a": 7, "wandb/step": 70}
    assert "huge" not in rows[3]["data"]
    assert all(row["pod"] == POD for row in receiver.logs())
    (detection,) = receiver.detections()
    assert detection["pod"] == POD and detection["namespace"] == "team-a"
    body = detection["data"]
    assert body["evidence"]["wandb"]["id"] == run_id
    assert body["evidence"]["wandb"]["config"]["lr"] == 3e-4
    assert_bodies_valid(receiver)
    raw = b"".join(receiver.raw_bodies())
    assert b"hunter2-secret" not in raw and b"s3cr3tKey" not in raw
    status = json.loads((result.output / "node_0" / "rank_0" / "wandb_metrics.status.json")
                        .read_text())
    assert status["rows_sent"] == 50 and status["backlog_bytes"] == 0
    assert status["detections_sent"] == 1 and status["dropped"] == {}
    assert status["state"] == "exited, all delivered"

    env = training_env(tmp_path, reporting_env(receiver.url))
    doctor = subprocess.run([sys.executable, "-m", "primus_lens_inject", "doctor", "--json"],
                            env=env, capture_output=True, text=True, timeout=120)
    reporting = json.loads(doctor.stdout)["reporting"]
    assert reporting["endpoint"] == receiver.url
    assert reporting["endpoint_check"].startswith("answers (HTTP 400")
    assert reporting["identity"] == {"pod_name": POD, "pod_uid": "5b0c3f0e-2a7d-4c61-9a51-0f4f6c1d2e3a"}
    assert reporting["sender"]["rows_sent"] == 50


def test_secrets_in_environment_never_leave(tmp_path, receiver):
    secrets = {"WANDB_API_KEY": "wandb-key-0123456789abcdef", "HF_TOKEN": "hf_abcdefghijklmnopqrstu",
               "GIT_REPO": "https://alice:ghp_tokenvalue123456@github.com/org/repo.git",
               "DEEPSPEED_CONFIG": "/cfg/ds.json", "PRIMUS_LENS_API_HEADERS": "Cookie: sess=c00kie"}
    result = run_training(tmp_path, LOGGING, env=reporting_env(receiver.url, **secrets))
    assert result.proc.returncode == 0, result.stderr
    assert wait_until(receiver.detections)
    raw = b"".join(receiver.raw_bodies())
    for value in ("wandb-key-0123456789abcdef", "hf_abcdefghijklmnopqrstu", "ghp_tokenvalue123456",
                  "c00kie", "hunter2-secret", "s3cr3tKey"):
        assert value.encode() not in raw, value
    assert b"/cfg/ds.json" in raw  # ordinary evidence still arrives


def test_no_identity_sends_nothing_and_records_locally(tmp_path, receiver):
    env = reporting_env(receiver.url)
    env.pop("POD_NAME")
    result = run_training(tmp_path, LOGGING, env={**env, "POD_NAME": ""})
    assert result.proc.returncode == 0
    assert len(result.record()) == 50
    assert receiver.requests() == []


def test_only_rank_zero_reports_unless_all_ranks_asked(tmp_path, receiver):
    result = run_training(tmp_path, LOGGING, env=reporting_env(
        receiver.url, RANK="1", PRIMUS_LENS_REPORT_RANKS="zero"))
    assert len(result.record(rank=1)) == 50 and receiver.requests() == []
    result = run_training(tmp_path, LOGGING, env=reporting_env(
        receiver.url, RANK="1", PRIMUS_LENS_REPORT_RANKS="all"))
    run_id = result.proc.stdout.split()[1]
    exactly_once(receiver, run_id, range(50))
    keys = set()
    for row in receiver.logs(run_id=run_id):
        keys |= set(row["data"])
    assert keys == {"rank1/loss", "rank1/huge", "rank1/nested.a", "rank1/wandb/step"}


def test_5xx_bursts_and_unknown_pod_then_recovery(tmp_path, receiver):
    receiver.set_faults(fail_rate=0.5, seed=7, no_workload_for=2.0)
    result = run_training(tmp_path, LOGGING,
                          env=reporting_env(receiver.url, LENS_TEST_LINGER="3"))
    assert result.proc.returncode == 0, result.stderr
    run_id = result.proc.stdout.split()[1]
    exactly_once(receiver, run_id, range(50))
    assert wait_until(receiver.detections, timeout=60)
    statuses = Counter(r["status"] for r in receiver.requests())
    assert statuses[500] > 0 and statuses[400] > 0 and statuses[200] > 0
    assert len([ln for ln in result.injector_lines() if "no valid workload found" in ln]) == 1
    assert_bodies_valid(receiver)


def test_garbage_and_slow_answers(tmp_path, receiver):
    receiver.set_faults(garbage_rate=0.3, garbage_status=502, delay=0.05, delay_max=0.3, seed=3)
    result = run_training(tmp_path, LOGGING, env=reporting_env(receiver.url))
    run_id = result.proc.stdout.split()[1]
    exactly_once(receiver, run_id, range(50))


def test_outage_at_start_then_server_appears(tmp_path):
    port = free_port()
    (tmp_path / "train.py").write_text(LOGGING)
    proc = subprocess.Popen([TRAIN_PYTHON, "train.py"], cwd=tmp_path, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=training_env(tmp_path, reporting_env(f"http://127.0.0.1:{port}/v1",
                                                                    LENS_TEST_PAUSE="4")))
    time.sleep(2.0)  # the rows are logged while nothing listens
    with Receiver(port=port) as server:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        exactly_once(server, out.split()[1], range(50))
        assert wait_until(server.detections)
        assert_bodies_valid(server)


def test_wrong_endpoint_stops_reporting_once(tmp_path, receiver):
    result = run_training(tmp_path, LOGGING, env=reporting_env(receiver.url + "/api"))
    assert result.proc.returncode == 0
    lines = [ln for ln in result.injector_lines() if "check PRIMUS_LENS_API_BASE_URL" in ln]
    assert len(lines) == 1 and len(result.record()) == 50


def _receiver_process(port: int, db: Path, *flags: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "primus_lens_inject", "receive", "--port",
                             str(port), "--db", str(db), *flags], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert "listening" in proc.stdout.readline()
    return proc


def _logs_in(db: Path) -> list:
    import sqlite3

    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT run_id, step FROM logs").fetchall()


def test_receiver_restart_mid_run(tmp_path):
    port, db = free_port(), tmp_path / "lens.db"
    server = _receiver_process(port, db)
    script = """
import time, wandb
run = wandb.init(project="restart")
for i in range(300):
    run.log({"i": i})
    time.sleep(0.01)
print("logged", run.id, flush=True)
run.finish()
"""
    (tmp_path / "train.py").write_text(script)
    proc = subprocess.Popen([TRAIN_PYTHON, "train.py"], cwd=tmp_path, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=training_env(tmp_path, reporting_env(f"http://127.0.0.1:{port}/v1",
                                                                    LENS_TEST_PAUSE="4")))
    time.sleep(1.5)
    server.send_signal(signal.SIGTERM)
    server.wait(timeout=30)
    time.sleep(1.0)
    server = _receiver_process(port, db)
    try:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    run_id = out.split()[1]
    got = Counter(step for rid, step in _logs_in(db) if rid == run_id)
    assert sorted(got) == list(range(300)) and set(got.values()) == {1}


def test_sigterm_flushes_to_the_server(tmp_path, receiver):
    (tmp_path / "train.py").write_text(LOGGING)
    proc = subprocess.Popen([TRAIN_PYTHON, "train.py"], cwd=tmp_path, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=training_env(tmp_path, reporting_env(
                                receiver.url, PRIMUS_LENS_WANDB_FLUSH_INTERVAL="30",
                                PRIMUS_LENS_WANDB_BATCH_SIZE="500", LENS_TEST_LINGER="60",
                                LENS_TEST_NO_FINISH="1")))
    run_id = proc.stdout.readline().split()[1]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == -signal.SIGTERM
    exactly_once(receiver, run_id, range(50))


def test_sigkill_then_restart_resumes_without_duplicates(tmp_path):
    port = free_port()
    env = reporting_env(f"http://127.0.0.1:{port}/v1")
    first = """
import sys, time, wandb
run = wandb.init(project="resume")
for i in range(60):
    run.log({"i": i})
print("half", run.id, flush=True)
sys.stdin.readline()              # the test stops the server here
for i in range(60, 100):
    run.log({"i": i})
print("all", flush=True)
time.sleep(60)
"""
    (tmp_path / "first.py").write_text(first)
    with Receiver(port=port) as server:
        proc = subprocess.Popen([TRAIN_PYTHON, "first.py"], cwd=tmp_path, text=True,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=training_env(tmp_path, env))
        run_id = proc.stdout.readline().split()[1]
        assert wait_until(lambda: len(server.logs(run_id=run_id)) == 60)
        server.stop()
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "all"
        time.sleep(1.2)
        proc.kill()
        proc.wait(timeout=30)
        record = tmp_path / "out" / "node_0" / "rank_0" / "wandb_metrics.jsonl"
        assert len(record.read_text().splitlines()) == 100
        server.start()  # same port, same data
        second = run_training(tmp_path, """
            import wandb
            run = wandb.init(project="resume")
            run.log({"i": 1000})
            print("second", run.id)
            run.finish()
        """, env=env)
        assert second.proc.returncode == 0, second.stderr
        exactly_once(server, run_id, range(100))
        exactly_once(server, second.proc.stdout.split()[1], [0])
        assert_bodies_valid(server)
        assert [strict_json(line)["step"] for line in record.read_text().splitlines()][-1] == 0


def test_forked_child_rows_are_sent_once_by_one_sender(tmp_path, receiver):
    result = run_training(tmp_path, """
        import os, wandb
        run = wandb.init(project="parent")
        for i in range(30):
            run.log({"i": i})
        pid = os.fork()
        if pid == 0:
            child = wandb.init(project="child", reinit=True)
            for i in range(20):
                child.log({"c": i})
            child.finish()
            print("child", child.id, flush=True)
            os._exit(0)
        os.waitpid(pid, 0)
        for i in range(30, 40):
            run.log({"i": i})
        print("parent", run.id, flush=True)
        run.finish()
    """, env=reporting_env(receiver.url), timeout=180)
    assert result.proc.returncode == 0, result.stderr
    ids = dict(line.split() for line in result.proc.stdout.splitlines())
    exactly_once(receiver, ids["parent"], range(40))
    exactly_once(receiver, ids["child"], range(20))
    assert len(receiver.detections()) == 2


def test_long_outage_at_high_rate_keeps_memory_bounded(tmp_path):
    port = free_port()  # nothing ever listens
    result = run_training(tmp_path, """
        import resource, wandb
        run = wandb.init(project="outage", mode="disabled")
        row = {f"k{j}": 0.5 for j in range(20)}
        for i in range(2000):
            run.log(row)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for i in range(60000):
            run.log(row)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print("grew_kib", after - before)
        run.finish()
    """, env=reporting_env(f"http://127.0.0.1:{port}/v1", PRIMUS_LENS_SHUTDOWN_TIMEOUT="2"))
    assert result.proc.returncode == 0, result.stderr
    grew = int(result.proc.stdout.split()[1])
    assert grew < 40 * 1024, f"RSS grew by {grew} KiB while 62,000 rows waited on disk"
    assert len(result.record()) == 62000
    assert os.path.getsize(result.output / "node_0" / "rank_0" / "wandb_metrics.jsonl") > 10 << 20


def test_reporter_in_process_takes_the_gpu_inventory_it_is_given(tmp_path, receiver):
    """The reporter names the GPUs its ``inventory`` describes (asked once, whatever the number of
    runs), keeps each report as a file until the server acknowledged it, and writes its status;
    with the default inventory a report names no GPU."""
    from dataclasses import replace

    from primus_lens_inject.config import Config
    from primus_lens_inject.report.reporter import Reporter
    from primus_lens_inject.report.runfacts import RunFacts
    from primus_lens_inject.topology import Topology

    asked = []

    def inventory() -> dict:
        asked.append(1)
        return {"vendor": "amd", "backend": "sysfs", "driver_version": "6.8",
                "devices": [{"name": "AMD Instinct MI300X", "memory_total_bytes": 192 << 30}] * 2}

    config = Config(api_base_url=receiver.url, pod_name=POD, flush_interval=0.05)
    for given, pod in (({"inventory": inventory}, "with-gpus"), ({}, "without")):
        record = tmp_path / pod / "wandb_metrics.jsonl"
        record.parent.mkdir()
        record.write_text(json.dumps({"timestamp": 1.7e9, "step": 0, "run_id": "r1",
                                      "data": {"loss": 1.0}}) + "\n")
        sender = Reporter(replace(config, pod_name=pod), Topology(), str(record), **given)
        sender.start()
        sender.add_run(RunFacts(project="p", id="r1"))
        sender.add_run(RunFacts(project="p", id="r2"))
        assert sender.flush(timeout=30)
        sender.close(1.0)
        assert os.listdir(sender.detections.directory) == []  # acknowledged: removed
        status = json.loads((tmp_path / pod / "wandb_metrics.status.json").read_text())
        assert (status["rows_sent"], status["detections_sent"], status["dropped"]) == (1, 2, {})
        assert status["identity"] == {"pod_name": pod}
    assert len(asked) == 1
    gpu_keys = ("gpu_count", "gpu_name", "gpu_arch", "gpu_memory_gb")  # beside them: versions
    hardware = {d["pod"]: {k: v for k, v in (d["data"]["evidence"].get("hardware") or {}).items()
                           if k in gpu_keys} for d in receiver.detections()}
    assert hardware == {"with-gpus": {"gpu_count": 2, "gpu_name": "AMD Instinct MI300X",
                                      "gpu_arch": "mi300x", "gpu_memory_gb": 192.0},
                        "without": {}}
    assert len(receiver.detections()) == 4
