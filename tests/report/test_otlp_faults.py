"""The OTLP sink across faults, with real training processes: an endpoint down then up, busy
(503/429 with Retry-After), failing (500: dropped, as the OTLP specification says), slow, partly
accepting, refusing credentials; a restart resumes from the OTLP cursor; and both sinks at once,
each delivering every row once whichever of them is down."""

from __future__ import annotations

import json
import threading
from collections import Counter
from pathlib import Path

from conftest import run_cli, run_training, training_env
from otlp_support import Answer, OtlpServer
from test_otlp import SCRIPT, check_delivery, otlp_env
from test_reporting import exactly_once, free_port

from primus_lens_inject.devserver.receiver import Receiver


def run_id_of(result) -> str:
    return json.loads(result.proc.stdout.splitlines()[-1])["run_id"]


def status_of(result) -> dict:
    path = result.output / "node_0" / "rank_0" / "wandb_metrics.status.json"
    return json.loads(path.read_text())


def once_each(server: OtlpServer, run_id: str, steps) -> None:
    got = Counter(server.steps(run_id))
    assert sorted(got) == sorted(steps) and set(got.values()) == {1}, got


def test_endpoint_down_at_start_then_up(tmp_path):
    port = free_port()
    started = []  # the endpoint appears while the rows wait (the script pauses 4 s)
    timer = threading.Timer(2.0, lambda: started.append(OtlpServer(port=port).__enter__()))
    timer.start()
    try:
        result = run_training(tmp_path, SCRIPT, env=otlp_env(f"http://127.0.0.1:{port}",
                                                             OTLP_TEST_PAUSE="4"))
        timer.join()
        assert result.proc.returncode == 0, result.stderr
        check_delivery(started[0], result, run_id_of(result))
    finally:
        timer.join()
        for server in started:
            server.__exit__(None, None, None)


def test_busy_answers_are_retried_after_the_time_asked(tmp_path):
    def script(n, request):
        if n < 3:
            return Answer(503 if n % 2 == 0 else 429, headers=(("Retry-After", "1"),))
        return Answer()

    with OtlpServer(script=script) as server:
        result = run_training(tmp_path, SCRIPT, env=otlp_env(server.url))
        assert result.proc.returncode == 0, result.stderr
        check_delivery(server, result, run_id_of(result))
        statuses = [r["status"] for r in server.requests]
    assert statuses[:3] == [503, 429, 503] and statuses[3] == 200
    assert sum("retrying" in line for line in result.injector_lines()) == 2  # once per status


def test_a_failing_endpoint_drops_the_batch_as_the_specification_says(tmp_path):
    with OtlpServer(script=lambda n, r: Answer(500 if n == 0 else 200)) as server:
        result = run_training(tmp_path, SCRIPT, env=otlp_env(
            server.url, PRIMUS_LENS_WANDB_BATCH_SIZE="10"))
        assert result.proc.returncode == 0, result.stderr
        steps = Counter(server.steps(run_id_of(result)))
    dropped = status_of(result)["otlp"]["dropped"]
    (reason, count), = dropped.items()
    assert "HTTP 500" in reason and count == 10 and len(steps) == 30
    assert set(steps.values()) == {1} and len(server.requests) == 4  # never retried
    assert sum("dropped (kept in the local record)" in line
               for line in result.injector_lines()) == 1
    assert len(result.record()) == 40  # the record keeps them


def test_slow_endpoint(tmp_path):
    with OtlpServer(script=lambda n, r: Answer(delay=0.4)) as server:
        result = run_training(tmp_path, SCRIPT, env=otlp_env(
            server.url, PRIMUS_LENS_WANDB_BATCH_SIZE="10"))
        assert result.proc.returncode == 0, result.stderr
        check_delivery(server, result, run_id_of(result))


def test_partial_success_is_accepted_said_once_and_not_retried(tmp_path):
    with OtlpServer(script=lambda n, r: Answer(rejected=2, message="bad point")) as server:
        result = run_training(tmp_path, SCRIPT, env=otlp_env(
            server.url, PRIMUS_LENS_WANDB_BATCH_SIZE="10"))
        assert result.proc.returncode == 0, result.stderr
        check_delivery(server, result, run_id_of(result))  # every row once: nothing resent
        requests = len(server.requests)
    assert requests >= 4
    lines = [line for line in result.injector_lines() if "bad point" in line]
    assert len(lines) == 1 and "not retried" in lines[0]
    assert status_of(result)["otlp"]["dropped"] == {
        "data points rejected by the OTLP endpoint": 2 * requests}


def test_restart_resumes_from_the_otlp_cursor_without_duplicates(tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    first = run_training(tmp_path, SCRIPT, env=otlp_env(dead, PRIMUS_LENS_SHUTDOWN_TIMEOUT="1"))
    assert first.proc.returncode == 0, first.stderr
    assert status_of(first)["otlp"]["state"] == "exited with a backlog"
    with OtlpServer() as server:
        second = run_training(tmp_path, SCRIPT, env=otlp_env(server.url))
        once_each(server, run_id_of(first), range(40))
        once_each(server, run_id_of(second), range(40))
        third = run_training(tmp_path, SCRIPT, env=otlp_env(server.url))
        once_each(server, run_id_of(first), range(40))  # not again
        once_each(server, run_id_of(second), range(40))
        once_each(server, run_id_of(third), range(40))


def test_refused_credentials_stop_once_and_keep_the_rows(tmp_path):
    def script(n, request):
        return Answer() if request["headers"].get("authorization") == "Bearer ok" else Answer(401)

    with OtlpServer(script=script) as server:
        first = run_training(tmp_path, SCRIPT, env=otlp_env(server.url))
        lines = [line for line in first.injector_lines() if "stopped" in line]
        assert len(lines) == 1 and "HTTP 401" in lines[0]
        assert [r["status"] for r in server.requests] == [401]
        second = run_training(tmp_path, SCRIPT, env=otlp_env(
            server.url, OTEL_EXPORTER_OTLP_METRICS_HEADERS="Authorization=Bearer%20ok"))
        once_each(server, run_id_of(first), range(40))
        once_each(server, run_id_of(second), range(40))


def both_env(lens_url: str, otlp_url: str) -> dict:
    return otlp_env(otlp_url, PRIMUS_LENS_WANDB_API_REPORTING="true",
                    PRIMUS_LENS_API_BASE_URL=lens_url, PRIMUS_LENS_SHUTDOWN_TIMEOUT="8")


def test_both_sinks_deliver_every_row_once(tmp_path):
    with Receiver(port=0) as lens, OtlpServer() as server:
        result = run_training(tmp_path, SCRIPT, env=both_env(lens.url, server.url))
        assert result.proc.returncode == 0, result.stderr
        run_id = run_id_of(result)
        check_delivery(server, result, run_id)
        exactly_once(lens, run_id, range(40))
    status = status_of(result)
    assert status["rows_sent"] == 40 and status["otlp"]["rows_sent"] == 40
    node = result.output / "node_0" / "rank_0"
    assert (node / "wandb_metrics.cursor").exists() and (node / "wandb_metrics.otlp.cursor").exists()


def test_lens_down_does_not_hold_back_otlp(tmp_path):
    dead = f"http://127.0.0.1:{free_port()}/v1"
    with OtlpServer() as server:
        result = run_training(tmp_path, SCRIPT, env=both_env(dead, server.url))
        assert result.proc.returncode == 0, result.stderr
        check_delivery(server, result, run_id_of(result))
    status = status_of(result)
    assert status["rows_sent"] == 0 and status["state"] == "exited with a backlog"
    assert status["otlp"]["state"] == "exited, all delivered"


def test_otlp_down_does_not_hold_back_lens(tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    with Receiver(port=0) as lens:
        result = run_training(tmp_path, SCRIPT, env=both_env(lens.url, dead))
        assert result.proc.returncode == 0, result.stderr
        exactly_once(lens, run_id_of(result), range(40))
    status = status_of(result)
    assert status["state"] == "exited, all delivered"
    assert status["otlp"]["rows_sent"] == 0 and status["otlp"]["state"] == "exited with a backlog"


def test_doctor_shows_the_otlp_settings_without_header_values(tmp_path):
    env = training_env(tmp_path, otlp_env("http://collector:4318",
                                          OTEL_EXPORTER_OTLP_HEADERS="api-key=t0pS3cret"))
    doctor = run_cli(["doctor", "--json"], env)  # as users run it, from the layout under test
    assert doctor.returncode == 0, doctor.stderr
    assert "t0pS3cret" not in doctor.stdout
    section = json.loads(doctor.stdout)["otlp"]
    assert section["enabled"] is True
    assert section["endpoint"] == "http://collector:4318/v1/metrics"
    assert section["protocol"] == "http/protobuf" and section["headers"] == ["api-key"]
    text = run_cli(["doctor"], env).stdout
    assert "http://collector:4318/v1/metrics" in text and "t0pS3cret" not in text


def test_fork_children_rows_are_exported_once_by_the_owner(tmp_path):
    """multiprocessing fork children with runs of their own, without ``finish``: the parent owns
    the record (the lock both sinks share) and exports every run's rows once."""
    script = (Path(__file__).parents[1] / "scripts" / "fork_children.py").read_text()
    with OtlpServer() as server:
        result = run_training(tmp_path, script, env=otlp_env(server.url), args=["offline"])
        assert result.proc.returncode == 0, result.stderr
        out = result.proc.stdout
        assert "exit codes [0, 0]" in out
        ids = [line.split()[1] for line in out.splitlines() if line.startswith(("child", "parent"))]
        for run_id in ids[:2]:
            once_each(server, run_id, range(50))
        once_each(server, ids[2], range(10))


# -- behind a proxy: the built-in receiver's OTLP faults, request-counted -------------------------

def receiver_steps(receiver: Receiver, run_id: str) -> Counter:
    return Counter(int(p["value"]) for p in receiver.otlp_points(name="wandb.step")
                   if p["resource"]["wandb.run.id"] == run_id)


def test_html_200_answers_are_retried_said_once_and_every_row_arrives(tmp_path):
    """A proxy answering 200 with its own HTML page exported nothing: the rows are sent again
    until the collector answers, said once, and the status says all delivered."""
    with Receiver(port=0, otlp=True, faults={"otlp_html_for": 3}) as receiver:
        result = run_training(tmp_path, SCRIPT, env=otlp_env(
            receiver.otlp_endpoint, OTLP_TEST_ROWS="3000", PRIMUS_LENS_SHUTDOWN_TIMEOUT="60"),
            timeout=300)
        assert result.proc.returncode == 0, result.stderr
        steps = receiver_steps(receiver, run_id_of(result))
        statuses = [r["status"] for r in receiver.requests(path="/v1/metrics")]
    assert sorted(steps) == list(range(3000)) and set(steps.values()) == {1}
    assert statuses[:3] == [200, 200, 200] and len(statuses) > 3
    said = [line for line in result.injector_lines() if "not an OTLP" in line]
    assert len(said) == 1 and "retrying" in said[0]
    otlp = status_of(result)["otlp"]
    assert otlp["rows_sent"] == 3000 and otlp["dropped"] == {} and otlp["retries"] == 3
    assert otlp["state"] == "exited, all delivered"


def test_a_60000_key_row_is_split_under_a_1_mib_limit_and_every_point_arrives(tmp_path):
    with Receiver(port=0, otlp=True, faults={"otlp_max_body": 1 << 20}) as receiver:
        # an answer timeout generous for a loaded machine: the receiver decodes 60,000 points
        # in Python, and a request whose answer comes after the timeout is sent again (at least
        # once), which the exact count below would see as a duplicate
        result = run_training(tmp_path, SCRIPT, env=otlp_env(
            receiver.otlp_endpoint, OTLP_TEST_WIDE="60000", PRIMUS_LENS_SHUTDOWN_TIMEOUT="60",
            OTEL_EXPORTER_OTLP_TIMEOUT="120000"), timeout=300)
        assert result.proc.returncode == 0, result.stderr
        run_id = run_id_of(result)
        wide = [p for p in receiver.otlp_points() if p["name"].startswith("wandb.wide/")]
        steps = receiver_steps(receiver, run_id)
        sizes = [len(r["body"]) for r in receiver.requests(path="/v1/metrics")]
        statuses = {r["status"] for r in receiver.requests(path="/v1/metrics")}
    assert sorted((p["name"], p["value"]) for p in wide) == sorted(
        (f"wandb.wide/{i}", float(i)) for i in range(60_000))
    assert sorted(steps) == list(range(41)) and set(steps.values()) == {1}
    assert statuses == {200} and max(sizes) < 1 << 20 and len(sizes) >= 3
    assert status_of(result)["otlp"]["rows_sent"] == 41


def test_partial_success_is_said_once_per_process_with_the_count_in_the_status(tmp_path):
    """Each batch's partial success has its own message (its count): still one line."""
    with Receiver(port=0, otlp=True, faults={"otlp_reject_rate": 0.01, "seed": 7}) as receiver:
        result = run_training(tmp_path, SCRIPT, env=otlp_env(
            receiver.otlp_endpoint, OTLP_TEST_ROWS="3000", PRIMUS_LENS_SHUTDOWN_TIMEOUT="60"),
            timeout=300)
        assert result.proc.returncode == 0, result.stderr
        stored = len(receiver.otlp_points())
        batches = len(receiver.requests(path="/v1/metrics"))
    said = [line for line in result.injector_lines() if "accepted a batch partly" in line]
    assert len(said) == 1 and batches >= 18
    sent = 3000 * 6  # five numeric keys and the step per row
    rejected = status_of(result)["otlp"]["dropped"]["data points rejected by the OTLP endpoint"]
    assert rejected == sent - stored and 0 < rejected < sent // 10


def test_endpoint_query_credentials_and_the_project_never_leak(tmp_path):
    """A collector behind a function key (``?code=``) that first answers with an HTML page: the key
    reaches the collector but not stderr, the status file or doctor; a token-shaped project name
    arrives redacted like the Lens sink's keys."""
    key, token = "Xk9vQ2mZr7Lp4sWt8yBn3cJd", "ghp_" + "a1B2c3D4e5F6g7H8i9J0" * 2
    with Receiver(port=0, otlp=True, faults={"otlp_html_for": 1}) as receiver:
        env = otlp_env("http://unused:4318", PRIMUS_LENS_OTLP_ENDPOINT=f"{receiver.otlp_endpoint}?code={key}",
                       WANDB_PROJECT=f"team-{token}")
        result = run_training(tmp_path, SCRIPT, env=env)
        assert result.proc.returncode == 0, result.stderr
        resource = receiver.otlp_points(name="wandb.step")[0]["resource"]
        targets = [r["path"] for r in receiver.requests(path="/v1/metrics")]
    assert len(targets) >= 2  # the HTML answer was retried
    assert resource["wandb.project"].startswith("team-") and token not in json.dumps(resource)
    doctor = run_cli(["doctor", "--json"], training_env(tmp_path, env))
    said = [line for line in result.injector_lines() if "not an OTLP" in line]
    assert len(said) == 1 and "?code=" in said[0]
    status = json.dumps(status_of(result))
    assert "/v1/metrics?code=" in status and "/v1/metrics?code=" in doctor.stdout
    for text in (result.stderr, status, doctor.stdout, doctor.stderr):
        assert key not in text


def test_doctor_warns_that_wandb_sends_the_standard_otlp_headers_to_wandb(tmp_path):
    """wandb ≥ 0.31 online exports its own telemetry with the OpenTelemetry SDK, which adds
    OTEL_EXPORTER_OTLP_HEADERS to its requests to W&B: doctor says so (with the sink on or off),
    not for an offline run, and not for our own PRIMUS_LENS_OTLP_HEADERS."""
    def doctor(**extra: str) -> tuple:
        env = training_env(tmp_path, {"PRIMUS_LENS_OTLP": "false", **extra})
        report = json.loads(run_cli(["doctor", "--json"], env).stdout)
        return report["wandb"]["installed"], report["otlp"]["warnings"], run_cli(["doctor"], env)

    version, warnings, text = doctor(WANDB_MODE=None, OTEL_EXPORTER_OTLP_HEADERS="api-key=t0pS3cret")
    if tuple(int(p) for p in version.split(".")[:2]) < (0, 31):
        assert warnings == []
        return
    (warning,) = warnings
    assert warning.startswith("OTEL_EXPORTER_OTLP_HEADERS set: wandb ")
    assert "sent to W&B" in warning and "PRIMUS_LENS_OTLP_HEADERS" in warning
    assert f"  warning: {warning}" in text.stdout and "t0pS3cret" not in text.stdout
    _, warnings, _ = doctor(WANDB_MODE="online", OTEL_EXPORTER_OTLP_METRICS_HEADERS="a=b")
    assert len(warnings) == 1 and warnings[0].startswith("OTEL_EXPORTER_OTLP_METRICS_HEADERS set")
    assert doctor(WANDB_MODE="offline", OTEL_EXPORTER_OTLP_HEADERS="a=b")[1] == []
    assert doctor(WANDB_MODE=None, PRIMUS_LENS_OTLP_HEADERS="a=b")[1] == []
