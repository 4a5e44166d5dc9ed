"""Reporting to a real receiver on loopback: every row arrives exactly once, whatever happens.

Training runs in real subprocesses; the receiver (``primus-lens receive``) applies the real
server's decoding rules, so a body the telemetry-processor would reject fails here too.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import jsonschema
import pytest
from conftest import TRAIN_PYTHON, free_port, run_training, strict_json, training_env, wait_until

from primus_lens_inject.devserver.receiver import Receiver
from primus_lens_inject.view import build_model

SCHEMA = json.loads((Path(__file__).parents[1] / "telemetry-api.schema.json").read_text())
POD = "trainer-master-0"


def validator(name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator({**SCHEMA, "$ref": f"#/$defs/{name}"})


def reporting_env(url: str, **extra: str) -> dict:
    return {"PRIMUS_LENS_WANDB_API_REPORTING": "true", "PRIMUS_LENS_API_BASE_URL": url,
            "POD_NAME": POD, "POD_UID": "5b0c3f0e-2a7d-4c61-9a51-0f4f6c1d2e3a",
            "POD_NAMESPACE": "team-a", "PRIMUS_LENS_WANDB_FLUSH_INTERVAL": "0.2", **extra}


def assert_bodies_valid(receiver: Receiver) -> None:
    """Every body we sent decodes under the server's rules and validates against the contract;
    the only 400 is the transient "no valid workload found" (doctor's empty probe aside)."""
    logs, detection = validator("LogsRequest"), validator("DetectionRequest")
    for request in receiver.requests():
        if request["body"] == b"{}" or request["method"] != "POST":
            continue  # primus-lens doctor's probe, refused before anything is stored; /healthz
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
    # the acknowledged report left the queue; its verdict is kept for the report page
    detections = result.output / "node_0" / "rank_0" / "wandb_metrics.detections"
    assert [p.name for p in detections.iterdir()] == ["sent"]
    [kept] = [json.loads(p.read_text()) for p in (detections / "sent").iterdir()]
    assert kept["hints"] == body["hints"] and kept["evidence"]["wandb"]["id"] == run_id
    [shown] = build_model([str(result.output)])["job"]["frameworks"]
    assert (shown["state"], shown["run"], shown["why"]) == (
        "acknowledged", run_id, body["hints"]["primary_indicators"])

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
    """Faults by count, never by clock: the first two lookups of the pod find no workload, the
    next two bodies fail with 500, then the server recovers.  Four failures in a row stay under
    the flush's give-up count (5), and the process end's budget is generous, so however slowly
    a loaded machine runs, every row arrives once before the process exits."""
    receiver.set_faults(no_workload_requests=2, fail_requests=2)
    result = run_training(tmp_path, LOGGING, env=reporting_env(
        receiver.url, PRIMUS_LENS_SHUTDOWN_TIMEOUT="120"), timeout=300)
    assert result.proc.returncode == 0, result.stderr
    run_id = result.proc.stdout.split()[1]
    exactly_once(receiver, run_id, range(50))
    assert len(receiver.detections()) == 1
    statuses = Counter(r["status"] for r in receiver.requests())
    assert (statuses[400], statuses[500]) == (2, 2) and statuses[200] >= 2, statuses
    assert len([ln for ln in result.injector_lines() if "no valid workload found" in ln]) == 1
    assert_bodies_valid(receiver)


def test_garbage_and_slow_answers(tmp_path, receiver):
    receiver.set_faults(garbage_rate=0.3, garbage_status=502, delay=0.05, delay_max=0.3, seed=3)
    result = run_training(tmp_path, LOGGING, env=reporting_env(receiver.url))
    run_id = result.proc.stdout.split()[1]
    exactly_once(receiver, run_id, range(50))


class Lines:
    """Every line of a process's stream, read on a thread, so a test can wait for one of them
    (an event of the process, not a delay) and still read them all at the end."""

    def __init__(self, stream) -> None:
        self.lines: queue.Queue = queue.Queue()
        self.seen: list = []
        threading.Thread(target=lambda: [self.lines.put(line) for line in stream],
                         daemon=True).start()

    def wait_for(self, text: str, timeout: float = 120.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            self.seen.append(line)
            if text in line:
                return line


def test_outage_at_start_then_server_appears(tmp_path):
    port = free_port()
    (tmp_path / "train.py").write_text(LOGGING)
    proc = subprocess.Popen([TRAIN_PYTHON, "train.py"], cwd=tmp_path, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=training_env(tmp_path, reporting_env(
                                f"http://127.0.0.1:{port}/v1", LENS_TEST_WAIT_STDIN="1",
                                PRIMUS_LENS_SHUTDOWN_TIMEOUT="120")))
    run_id = proc.stdout.readline().split()[1]  # every row is logged
    stderr = Lines(proc.stderr)
    stderr.wait_for("retrying with backoff")  # the sender tried while nothing listens
    with Receiver(port=port) as server:
        proc.stdin.write("go\n")
        proc.stdin.close()
        assert proc.wait(timeout=300) == 0, stderr.seen
        exactly_once(server, run_id, range(50))
        assert wait_until(server.detections)
        assert_bodies_valid(server)


def test_a_record_line_over_the_ceiling_is_skipped_and_counted(tmp_path, receiver):
    """A line just over the reader's real ceiling (64 MiB of text in one row, left in the record
    by an earlier process) is skipped whole and counted, once on stderr and in the status file;
    the rows before and after it are all sent."""
    from primus_lens_inject.report import spool
    from primus_lens_inject.report.sink import TOO_LONG

    record = tmp_path / "out" / "node_0" / "rank_0" / "wandb_metrics.jsonl"
    record.parent.mkdir(parents=True)
    with open(record, "wb") as f:
        f.write(json.dumps({"timestamp": 1.7e9, "step": 0, "run_id": "before",
                            "data": {"loss": 1.0}}).encode() + b"\n")
        f.write(b'{"timestamp": 1.7e9, "step": 1, "run_id": "before", "data": {"text": "')
        f.write(b"x" * spool.MAX_LINE + b'"}}\n')
        skipped_end = f.tell()
    result = run_training(tmp_path, LOGGING, env=reporting_env(receiver.url), timeout=300)
    assert result.proc.returncode == 0, result.stderr
    exactly_once(receiver, result.proc.stdout.split()[1], range(50))
    exactly_once(receiver, "before", [0])
    said = [ln for ln in result.injector_lines() if "reader's 64 MiB ceiling" in ln]
    assert len(said) == 1 and f"ending at byte {skipped_end}:" in said[0], said
    status = sender_status(result)
    assert status["dropped"] == {TOO_LONG: 1} and status["backlog_bytes"] == 0, status
    assert status["state"] == "exited, all delivered"


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
import sys, time, wandb
run = wandb.init(project="restart")
for i in range(300):
    run.log({"i": i})
    time.sleep(0.01)
print("logged", run.id, flush=True)
sys.stdin.readline()  # the test restarts the receiver, then lets the run finish
run.finish()
"""
    (tmp_path / "train.py").write_text(script)
    proc = subprocess.Popen([TRAIN_PYTHON, "train.py"], cwd=tmp_path, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=training_env(tmp_path, reporting_env(
                                f"http://127.0.0.1:{port}/v1", PRIMUS_LENS_SHUTDOWN_TIMEOUT="120")))
    assert wait_until(lambda: _logs_in(db), timeout=120)  # rows are arriving: restart now
    server.send_signal(signal.SIGTERM)
    server.wait(timeout=30)
    server = _receiver_process(port, db)
    try:
        out, err = proc.communicate("go\n", timeout=300)
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
        record = tmp_path / "out" / "node_0" / "rank_0" / "wandb_metrics.jsonl"
        assert wait_until(lambda: len(record.read_text().splitlines()) == 100, timeout=60)
        proc.kill()  # every row is in the record (the event), none acknowledged since the stop
        proc.wait(timeout=30)
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
        assert sender.flush(time.monotonic() + 30)
        sender.close(time.monotonic() + 1.0)
        # acknowledged: removed from the queue; the job's (both runs') last verdict kept
        assert os.listdir(record.parent / "wandb_metrics.detections") == ["sent"]
        [kept] = os.listdir(record.parent / "wandb_metrics.detections" / "sent")
        assert json.loads((record.parent / "wandb_metrics.detections" / "sent" / kept)
                          .read_text())["evidence"]["wandb"]["id"] == "r2"
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


# -- primus-robust's layouts (docs/reporting.md, "Endpoints" and "Answers") ----------------------

def robust_env(receiver: Receiver, **extra: str) -> dict:
    """The injector pointed at a robust layout the way AMD's agents are: ROBUST_ANALYZER_URL, a
    host only; the base URL becomes ``{host}/api/v1``."""
    env = reporting_env(receiver.url, ROBUST_ANALYZER_URL=receiver.otlp_endpoint,
                        PRIMUS_LENS_SHUTDOWN_TIMEOUT="60", **extra)
    env.pop("PRIMUS_LENS_API_BASE_URL")
    return env


def sender_status(result) -> dict:
    return json.loads((result.output / "node_0" / "rank_0" / "wandb_metrics.status.json")
                      .read_text())


def test_robust_analyzer_url_reaches_robust_api(tmp_path):
    with Receiver(port=0, layout="robust") as server:
        result = run_training(tmp_path, LOGGING, env=robust_env(server))
        assert result.proc.returncode == 0, result.stderr
        exactly_once(server, result.proc.stdout.split()[1], range(50))
        assert {r["path"] for r in server.requests()} == {"/api/v1/wandb/logs",
                                                          "/api/v1/wandb/detection"}
        assert_bodies_valid(server)
    assert sender_status(result)["endpoint"] == server.url


def test_robust_worker_is_named_once_and_doctor_says_so(tmp_path):
    """robust 1.0.6's robust-analyzer answers its probes and 404s the API: one line names it and
    the cure, reporting stops, every row stays in the record."""
    from primus_lens_inject.report.policy import WORKER_HINT

    with Receiver(port=0, layout="robust-worker") as server:
        result = run_training(tmp_path, LOGGING, env=robust_env(server))
        assert result.proc.returncode == 0, result.stderr
        said = [ln for ln in result.injector_lines() if WORKER_HINT in ln]
        assert len(said) == 1 and server.url in said[0], result.injector_lines()
        assert len([ln for ln in result.injector_lines() if "answers HTTP 404" in ln
                    and "NO TELEMETRY ENDPOINT" in ln and "(ROBUST_ANALYZER_URL)" in ln]) == 1
        assert len(result.record()) == 50
        status = sender_status(result)
        assert status["state"].startswith("stopped: wrong endpoint (HTTP 404)"), status
        assert status["rows_sent"] == 0
        assert [r["status"] for r in server.requests(path="/healthz")] == [200]
        assert server.logs() == []

        env = training_env(tmp_path, robust_env(server))
        doctor = subprocess.run([sys.executable, "-m", "primus_lens_inject", "doctor", "--json"],
                                env=env, capture_output=True, text=True, timeout=120)
        check = json.loads(doctor.stdout)["reporting"]["endpoint_check"]
        assert check == f"answers HTTP 404, and /healthz answers 200: {WORKER_HINT}"


def test_empty_database_500s_stop_the_sink_once_and_keep_the_record(tmp_path):
    """The logging add-on's robust-api answers every write 500: after the window of identical
    answers (0 s here: the third identical answer) the Lens sink says what the server answers,
    once, and stops; the status file says why; the record keeps every row."""
    with Receiver(port=0, layout="robust-empty-db") as server:
        result = run_training(tmp_path, LOGGING, env=robust_env(
            server, PRIMUS_LENS_API_GIVE_UP_AFTER="0"))
        assert result.proc.returncode == 0, result.stderr
        stops = [ln for ln in result.injector_lines() if "will not store these rows" in ln]
        assert len(stops) == 1, result.injector_lines()
        assert "the server has answered HTTP 500 'failed to process" in stops[0]
        assert "rows stay in the local record" in stops[0]
        status = sender_status(result)
        assert status["state"].startswith("stopped: the server has answered HTTP 500"), status
        assert status["rows_sent"] == 0 and status["backlog_bytes"] > 0
        assert len(result.record()) == 50
        answers = Counter((r["path"], r["status"]) for r in server.requests())
        assert set(answers) <= {("/api/v1/wandb/logs", 500), ("/api/v1/wandb/detection", 500)}
        assert max(answers.values()) == 3, answers  # stopped at the third identical answer


# -- the answers, one by one ----------------------------------------------------------------------

def test_robust_answers_are_classified():
    from primus_lens_inject.report import policy

    assert policy.classify(400, "some robust text")[0] == policy.DROP
    action, reason = policy.classify(400, "some robust text", robust=True)
    assert action == policy.RETRY and "some robust text" in reason
    for message, action in (("no valid workload found", policy.RETRY),
                            ("either workload_uid or pod_name is required", policy.STOP)):
        assert policy.classify(400, message, robust=True)[0] == action
    assert policy.classify(500, "failed to process logs")[1] == \
        "server error (HTTP 500: failed to process logs)"
    for body in (b'{"meta":{"code":2000}}', b'{"meta":{"code":2000,"message":null}}',
                 b'{"meta":{"code":2000,"message":"OK"},"data":null}'):
        assert policy.acknowledges(200, body), body
    for body in (b'{"meta":{"code":2000,"message":5}}', b'{"meta":[]}', b'{"meta":{"code":500}}'):
        assert not policy.acknowledges(200, body), body
    assert policy.answer_text(500, b'{"meta":{"code":500,"message":"failed"}}') == \
        "HTTP 500 'failed'"
    assert policy.answer_text(502, b"<html>\n<b>Bad</b>  gateway</html>") == \
        "HTTP 502 '<html> <b>Bad</b> gateway</html>'"


def test_a_streak_of_one_answer_ends_after_its_window_and_three_answers():
    from primus_lens_inject.report.policy import DROP, OK, RETRY, STOP, Streak, give_up

    now = [100.0]
    streak = Streak(window=60.0, clock=lambda: now[0])
    assert not streak.answer(RETRY, 500, "failed to process logs")
    now[0] += 61
    assert not streak.answer(RETRY, 500, "failed to process logs")  # two answers only
    assert streak.answer(RETRY, 500, "failed to process logs")
    assert give_up(streak, 500, "HTTP 500 'failed to process logs'") == (
        STOP, "the server has answered HTTP 500 'failed to process logs' to every request for "
              "1 min (3 times); it will not store these rows")
    # another answer starts a new streak; a success ends it
    assert not streak.answer(RETRY, 500, "other")
    now[0] += 61
    assert not streak.answer(OK, 200, "OK") and not streak.answer(RETRY, 500, "other")
    # answers that say the server is away never count: retried for as long as they last
    count = Streak(window=0.0)
    for status, message in ((0, "ConnectError"), (503, ""), (502, ""), (429, ""),
                            (400, "no valid workload found")):
        assert not any(count.answer(RETRY, status, message) for _ in range(5)), status
    # a 400 robust keeps giving: its batch is dropped once, then the sink stops
    assert [count.answer(RETRY, 400, "odd") for _ in range(3)] == [False, False, True]
    assert give_up(count, 400, "HTTP 400 'odd'")[0] == DROP
    assert count.answer(RETRY, 400, "odd") and give_up(count, 400, "HTTP 400 'odd'")[0] == STOP


def test_presets_and_the_robust_analyzer_url_alias():
    from primus_lens_inject.config import API_PRESETS, Config, endpoint_hint

    assert API_PRESETS["robust"] == "http://robust-api.primus-robust.svc:8085/api/v1"
    assert API_PRESETS["robust-legacy"] == "http://robust-analyzer.primus-robust.svc:8085/api/v1"
    alias = Config.from_env({"ROBUST_ANALYZER_URL": "http://robust-api:8085/"})
    assert (alias.api_base_url, alias.robust, alias.problems) == (
        "http://robust-api:8085/api/v1", True, ())
    assert "(ROBUST_ANALYZER_URL)" in endpoint_hint(alias, "answers HTTP 404")
    assert Config.from_env({"ROBUST_ANALYZER_URL": "http://h:8085/api/v1"}).api_base_url == \
        "http://h:8085/api/v1"
    both = Config.from_env({"ROBUST_ANALYZER_URL": "http://robust-api:8085",
                            "PRIMUS_LENS_API_BASE_URL": "http://mine:1/v1"})
    assert (both.api_base_url, both.robust) == ("http://mine:1/v1", False)
    garbage = Config.from_env({"ROBUST_ANALYZER_URL": "robust-api 8085"})
    assert garbage.api_base_url == API_PRESETS["lens"] and not garbage.robust
    assert [p.variable for p in garbage.problems] == ["ROBUST_ANALYZER_URL"]
    legacy = Config.from_env({"PRIMUS_LENS_API_PRESET": "robust-legacy"})
    assert (legacy.api_base_url, legacy.robust) == (API_PRESETS["robust-legacy"], True)
    assert Config.from_env({}).api_give_up_after == 1800.0
