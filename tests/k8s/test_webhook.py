"""The webhook as the API server meets it: AdmissionReview v1 over real TLS, patch applied.

The test plays kube-apiserver: it dials the server, verifies its certificate against the CA under
the Service name ``<svc>.<ns>.svc``, posts to ``/mutate?timeout=5s``, applies the returned
JSONPatch with ``jsonpatch`` and checks the resulting pod field by field and against the Pod
schema of the oldest supported Kubernetes.  The last tests run the real ``primus-lens webhook``
process with the TLS Secret and settings that the Helm chart renders.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest
import trustme
from conftest import wait_until

from k8s.support import (
    WebhookCaller,
    WebhookProcess,
    admission_review,
    apply_response,
    env_of,
    hold_request,
    load_pod,
    only,
    pem_of,
    render,
    status_field,
    validate_pod,
    webhook_process,
)
from primus_lens_inject.k8s import admission, webhook

SERVICE = "lens-primus-lens-inject"
NAMESPACE = "primus-lens"
SERVICE_NAME = f"{SERVICE}.{NAMESPACE}.svc"
IMAGE = "registry.example.com/platform/primus-lens-inject:0.1.0"
MOUNT = "/opt/primus-lens"
REPORTING = {"PRIMUS_LENS_API_BASE_URL": "http://lens.primus-lens.svc:8989/v1",
             "PRIMUS_LENS_WANDB_API_REPORTING": "true"}
SETTINGS = admission.Settings.from_mapping({"image": IMAGE, "env": REPORTING})
DOWNWARD = {"POD_NAME": "metadata.name", "POD_UID": "metadata.uid",
            "POD_NAMESPACE": "metadata.namespace", "NODE_NAME": "spec.nodeName"}


# -- a server with a trustme CA -------------------------------------------------------------------

def issue(ca: trustme.CA, directory: Path) -> Tuple[str, str]:
    cert = ca.issue_cert(SERVICE_NAME, f"{SERVICE_NAME}.cluster.local")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tls.crt").write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(directory / "tls.key"))
    return str(directory / "tls.crt"), str(directory / "tls.key")


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def server(ca: trustme.CA, tmp_path: Path) -> Iterator[webhook.WebhookServer]:
    cert, key = issue(ca, tmp_path / "tls")
    srv = webhook.WebhookServer(("127.0.0.1", 0), SETTINGS, webhook.TLSFiles(cert, key))
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(5)


@pytest.fixture
def caller(server: webhook.WebhookServer, ca: trustme.CA) -> WebhookCaller:
    return WebhookCaller(server.server_port, ca.cert_pem.bytes(), SERVICE_NAME)


def admit(caller: WebhookCaller, pod: Dict[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """One admission through the server: (the reply, the pod after the API server applied it)."""
    reply = caller.review(admission_review(pod))
    return reply, apply_response(pod, reply)


def undo(after: Dict[str, Any], before: Dict[str, Any]) -> Dict[str, Any]:
    """``after`` without everything the injector may add: must equal ``before`` exactly."""
    pod = copy.deepcopy(after)
    spec, old = pod["spec"], before["spec"]
    for key, name in (("initContainers", SETTINGS.init_container_name),
                      ("volumes", SETTINGS.volume_name)):
        kept = [item for item in spec.get(key) or [] if item["name"] != name]
        if kept or key in old:
            spec[key] = kept
        else:
            spec.pop(key, None)
    for container, original in zip(spec["containers"], old["containers"]):
        names = {entry["name"] for entry in original.get("env") or []}
        for key, keep in (("volumeMounts", lambda m: m["name"] != SETTINGS.volume_name),
                          ("env", lambda e, names=names: e["name"] in names)):
            kept = [item for item in container.get(key) or [] if keep(item)]
            if kept or key in original:
                container[key] = kept
            else:
                container.pop(key, None)
        for entry, was in zip(container.get("env") or [], original.get("env") or []):
            if entry["name"] == "PYTHONPATH" and "value" in was:
                entry["value"] = was["value"]
    annotations = pod["metadata"].get("annotations") or {}
    for key in (admission.INJECTED_KEY, admission.SKIPPED_KEY):
        annotations.pop(key, None)
    if not annotations and "annotations" not in before["metadata"]:
        pod["metadata"].pop("annotations", None)
    return pod


def check_pod_level(pod: Dict[str, Any]) -> None:
    """The volume and the init container, exactly once each."""
    volumes = [v for v in pod["spec"]["volumes"] if v["name"] == SETTINGS.volume_name]
    assert volumes == [{"name": "primus-lens-inject", "emptyDir": {"sizeLimit": "64Mi"}}]
    inits = [c for c in pod["spec"]["initContainers"] if c["name"] == "primus-lens-inject"]
    assert len(inits) == 1
    init = inits[0]
    assert init["image"] == IMAGE
    assert init["command"] == ["cp", "-R", "/opt/primus-lens/.", "/mnt/primus-lens"]
    assert init["volumeMounts"] == [{"name": "primus-lens-inject", "mountPath": "/mnt/primus-lens"}]
    assert init["securityContext"]["runAsNonRoot"] is True
    assert init["securityContext"]["runAsUser"] != 0
    assert init["securityContext"]["allowPrivilegeEscalation"] is False
    assert init["securityContext"]["readOnlyRootFilesystem"] is True
    assert init["resources"]["requests"] == {"cpu": "10m", "memory": "32Mi"}


def check_container(container: Dict[str, Any], python_path: str,
                    kept: Dict[str, str] = ()) -> None:
    """Mount read-only, PYTHONPATH, identity and reporting; ``kept``: values the pod set itself."""
    mounts = [m for m in container["volumeMounts"] if m["name"] == SETTINGS.volume_name]
    assert mounts == [{"name": "primus-lens-inject", "mountPath": MOUNT, "readOnly": True}]
    env = env_of(container)
    assert env["PYTHONPATH"] == {"name": "PYTHONPATH", "value": python_path}
    for name, field_path in DOWNWARD.items():
        if name in dict(kept):
            assert env[name] == {"name": name, "value": dict(kept)[name]}
        else:
            assert env[name] == {"name": name, "valueFrom": {
                "fieldRef": {"apiVersion": "v1", "fieldPath": field_path}}}
    for name, value in REPORTING.items():
        assert env[name]["value"] == dict(kept).get(name, value)
    assert len(env) == len(container["env"]), "no variable may appear twice"


# -- the five kinds of request ------------------------------------------------------------------

def test_pytorchjob_worker_is_injected(caller: WebhookCaller) -> None:
    pod = load_pod("pytorchjob-worker.yaml")
    reply, patched = admit(caller, pod)
    assert "warnings" not in reply["response"]
    validate_pod(patched)
    check_pod_level(patched)
    [container] = patched["spec"]["containers"]
    check_container(container, f"{MOUNT}:/workspace/Primus:/workspace/Megatron-LM")
    env = env_of(container)
    assert env["WORKLOAD_UID"] == {"name": "WORKLOAD_UID",
                                   "value": "7d0f6c2e-5b1a-4c33-9d2e-1f8a6b4e9c01"}
    assert [e["name"] for e in container["env"][:7]] == [
        "MASTER_PORT", "MASTER_ADDR", "WORLD_SIZE", "RANK", "PYTHONUNBUFFERED",
        "PET_NPROC_PER_NODE", "PET_NODE_RANK"], "the pod's own variables keep their order"
    assert patched["metadata"]["annotations"][admission.INJECTED_KEY] == "pytorch"
    assert undo(patched, pod) == pod


def test_plain_job_pod_without_env_or_volumes(caller: WebhookCaller) -> None:
    pod = load_pod("job-pod.yaml")
    _, patched = admit(caller, pod)
    validate_pod(patched)
    check_pod_level(patched)
    [container] = patched["spec"]["containers"]
    check_container(container, MOUNT)
    assert "WORKLOAD_UID" not in env_of(container), "never guessed without the annotation"
    assert patched["metadata"]["annotations"] == {admission.INJECTED_KEY: "train"}
    assert undo(patched, pod) == pod


def test_pod_with_its_own_pythonpath_and_pod_name(caller: WebhookCaller) -> None:
    pod = load_pod("own-pythonpath-pod.yaml")
    reply, patched = admit(caller, pod)
    validate_pod(patched)
    check_pod_level(patched)
    trainer, shipper = patched["spec"]["containers"]
    check_container(trainer, f"{MOUNT}:/app/src:/app/vendor",
                    kept={"POD_NAME": "finetune-custom-name",
                          "PRIMUS_LENS_API_BASE_URL": "http://lens.research.svc:8989/v1"})
    assert trainer["envFrom"] == [{"configMapRef": {"name": "finetune-settings"}}]
    assert shipper == pod["spec"]["containers"][1], "valueFrom PYTHONPATH: left alone"
    annotations = patched["metadata"]["annotations"]
    assert annotations[admission.INJECTED_KEY] == "trainer"
    assert "log-shipper: PYTHONPATH comes from valueFrom" in annotations[admission.SKIPPED_KEY]
    assert reply["response"]["warnings"] == [
        "primus-lens: container log-shipper not injected: PYTHONPATH comes from valueFrom; "
        "the webhook cannot prepend to it"]
    assert undo(patched, pod) == pod


def test_opted_out_pod_is_admitted_unchanged(caller: WebhookCaller) -> None:
    pod = load_pod("opted-out-pod.yaml")
    reply, patched = admit(caller, pod)
    assert reply["response"] == {"uid": reply["response"]["uid"], "allowed": True}
    assert patched == pod


def test_malformed_review_is_admitted_unchanged(caller: WebhookCaller,
                                               caplog: pytest.LogCaptureFixture) -> None:
    pod = load_pod("job-pod.yaml")
    pod["spec"]["containers"] = {"name": "train"}  # not a list
    review = admission_review(pod)
    with caplog.at_level(logging.INFO, logger=webhook.LOG.name):
        reply = caller.review(review)
    assert reply["response"] == {"uid": review["request"]["uid"], "allowed": True}
    [line] = [json.loads(r.getMessage()) for r in caplog.records if "admission" in r.getMessage()]
    assert line["pod"] == "research/mnist-train-*"
    assert "spec.containers is not a list" in line["error"]


@pytest.mark.parametrize("body", [b"{not json", b"[]", b'{"request": {}}', b"[" * 100_000,
                                  json.dumps({"apiVersion": "admission.k8s.io/v1beta1",
                                              "kind": "AdmissionReview",
                                              "request": {"uid": "u1"}}).encode()])
def test_review_without_answerable_uid_gets_400(caller: WebhookCaller, body: bytes) -> None:
    """No uid to echo means no valid answer; the API server then applies failurePolicy Ignore."""
    status, payload = caller.post(body)
    assert status == 400
    assert payload["error"]


def test_internal_error_admits_unchanged_and_logs_why(caller: WebhookCaller,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    def broken(pod: Any, settings: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(admission, "decide", broken)
    review = admission_review(load_pod("pytorchjob-worker.yaml"))
    with caplog.at_level(logging.WARNING, logger=webhook.LOG.name):
        reply = caller.review(review)
    assert reply["response"] == {"uid": review["request"]["uid"], "allowed": True}
    assert any('"error": "RuntimeError: boom"' in r.getMessage() for r in caplog.records)


def test_unforeseen_failure_still_answers_with_the_uid(caller: WebhookCaller,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(body: bytes, settings: Any) -> Any:
        raise MemoryError("while answering")

    monkeypatch.setattr(admission, "review", broken)
    review = admission_review(load_pod("job-pod.yaml"))
    assert caller.review(review)["response"] == {"uid": review["request"]["uid"],
                                                 "allowed": True}
    assert caller.post(b"{broken")[0] == 400


@pytest.mark.parametrize("fixture", ["pytorchjob-worker.yaml", "job-pod.yaml",
                                     "own-pythonpath-pod.yaml", "opted-out-pod.yaml"])
def test_second_admission_changes_nothing(caller: WebhookCaller, fixture: str) -> None:
    once = admit(caller, load_pod(fixture))[1]
    reply, twice = admit(caller, once)
    assert "patch" not in reply["response"]
    assert twice == once


def test_reinvocation_injects_a_container_added_by_another_webhook(caller: WebhookCaller) -> None:
    once = admit(caller, load_pod("job-pod.yaml"))[1]
    once["spec"]["containers"].append({"name": "profiler", "image": "registry.example.com/prof:1"})
    _, again = admit(caller, once)
    check_container(again["spec"]["containers"][1], MOUNT)
    assert again["spec"]["containers"][0] == once["spec"]["containers"][0]
    assert len(again["spec"]["initContainers"]) == 1
    assert again["metadata"]["annotations"][admission.INJECTED_KEY] == "profiler,train"
    assert admit(caller, again)[1] == again
    validate_pod(again)


# -- HTTP and TLS behaviour ----------------------------------------------------------------------

def test_paths_are_matched_without_the_query(caller: WebhookCaller) -> None:
    body = json.dumps(admission_review(load_pod("job-pod.yaml"))).encode()
    assert caller.post(body, path="/mutate?timeout=30s")[0] == 200
    assert caller.post(body, path="/mutate")[0] == 200
    assert caller.post(body, path="/validate?timeout=5s")[0] == 404
    assert caller.get("/healthz?verbose") == (200, b"ok\n")
    assert caller.get("/metrics")[0] == 404


def test_keep_alive_connection_serves_many_reviews(caller: WebhookCaller) -> None:
    conn = caller.connect()
    try:
        for _ in range(3):
            pod = load_pod("pytorchjob-worker.yaml")
            check_container(apply_response(pod, caller.review(admission_review(pod), conn=conn))
                            ["spec"]["containers"][0],
                            f"{MOUNT}:/workspace/Primus:/workspace/Megatron-LM")
    finally:
        conn.close()


def test_oversized_or_unsized_bodies_are_refused(caller: WebhookCaller) -> None:
    conn = caller.connect()
    try:
        conn.putrequest("POST", "/mutate?timeout=5s")
        conn.putheader("Content-Length", str(webhook.MAX_BODY + 1))
        conn.endheaders()
        assert conn.getresponse().status == 413
    finally:
        conn.close()
    conn = caller.connect()
    try:
        conn.putrequest("POST", "/mutate")
        conn.endheaders()
        assert conn.getresponse().status == 411
    finally:
        conn.close()


def raw_exchange(caller: WebhookCaller, request: bytes) -> Tuple[bytes, bool]:
    """Send raw bytes over TLS; return the first answer's head and whether the server closed."""
    sock = caller.context.wrap_socket(socket.create_connection(("127.0.0.1", caller.port), 5),
                                      server_hostname=caller.server_name)
    with sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, f"closed without an answer: {data!r}"
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        while len(rest) < length:
            rest += sock.recv(65536)
        sock.settimeout(1.5)  # longer than the server drains a refused body (drain.IDLE)
        try:
            closed = sock.recv(1) == b""
        except socket.timeout:
            closed = False  # still open, waiting for the next request
        except OSError:  # an abrupt end of the TLS session is a close as well
            closed = True
    return head, closed


@pytest.mark.parametrize("request_bytes, status, closes", [
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", b"200", True),
    (b"GET /healthz HTTP/1.0\r\n\r\n", b"200", True),
    (b"GARBAGE\r\n\r\n", b"400", True),
    (b"GET /healthz HTTP/2.0\r\n\r\n", b"400", True),
    (b"GET /healthz HTTP/1.1\r\nno colon here\r\n\r\n", b"400", True),
    (b"POST /mutate HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", b"411", True),
    (b"POST /mutate HTTP/1.1\r\nContent-Length: ten\r\n\r\n", b"400", True),
    (b"POST /mutate HTTP/1.1\r\nContent-Length: +2\r\n\r\n{}", b"400", True),
    (b"POST /mutate HTTP/1.1\r\nContent-Length: 1_0\r\n\r\n{}", b"400", True),
    (b"POST /mutate HTTP/1.1\r\nContent-Length: -1\r\n\r\n", b"400", True),
    (b"POST /mutate HTTP/1.1\r\nContent-Length: 1000000000000000\r\n\r\n{}", b"413", True),
    (b"POST /mutate HTTP/1.1\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n{}", b"413", True),
    (b"POST /mutate HTTP/1.1\r\nContent-Length: \xd9\xa1\r\n\r\n{}", b"400", True),
    (b"PUT /mutate HTTP/1.1\r\nContent-Length: 0\r\n\r\n", b"405", False),
    (b"GET /healthz HTTP/1.1\r\n" + b"X-A: b\r\n" * 101 + b"\r\n", b"431", True),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", b"400", True),
])
def test_http_subset(caller: WebhookCaller, request_bytes: bytes, status: bytes,
                     closes: bool) -> None:
    """What the API server and kubelet send works; anything else gets a 4xx, never a hang."""
    head, closed = raw_exchange(caller, request_bytes)
    assert head.split(b" ")[1] == status, head
    assert closed is closes
    assert (b"connection: close" in head.lower()) is closes


def test_a_busy_decode_budget_answers_503_by_the_api_servers_timeout(
        server: webhook.WebhookServer, ca: trustme.CA) -> None:
    """Bodies being decoded share one budget; a review that cannot get its share is answered
    503 by ``REPLY_SHARE`` of the timeout the API server sends (it then applies failurePolicy at
    once instead of waiting out its timeout), and a body-less request needs no share."""
    # the API server's timeout is also the caller's: no answer in time fails the post
    caller = WebhookCaller(server.server_port, ca.cert_pem.bytes(), SERVICE_NAME, timeout_s=3)
    body = json.dumps(admission_review(load_pod("job-pod.yaml"))).encode()
    held = webhook.DECODE_BUDGET - 10
    assert server.decode_budget.acquire(held, 0)
    try:
        assert caller.post(body) == (503, {"error": "too many large requests at once"})
        assert caller.get("/healthz") == (200, b"ok\n"), "a body-less request needs no share"
    finally:
        server.decode_budget.release(held)
    assert caller.post(body)[0] == 200


def test_a_stalled_body_is_cut_off_by_the_api_servers_timeout(caller: WebhookCaller) -> None:
    """A client that declares a body and stops sending holds nothing for long: by
    ``REPLY_SHARE`` of its ``?timeout=`` (here before ``RECEIVE_SECONDS``) its connection is
    closed unanswered, and admissions go on."""
    api_timeout = 1  # seconds, as ?timeout=1s
    assert api_timeout * webhook.REPLY_SHARE < webhook.RECEIVE_SECONDS
    sock = caller.context.wrap_socket(socket.create_connection(("127.0.0.1", caller.port), 5),
                                      server_hostname=caller.server_name)
    with sock:
        sock.sendall(b"POST /mutate?timeout=%ds HTTP/1.1\r\nContent-Length: %d\r\n\r\n{"
                     % (api_timeout, webhook.MAX_BODY))
        sock.settimeout(webhook.RECEIVE_SECONDS + 2)  # bounded; the server closes well before
        try:
            assert sock.recv(1) == b"", "closed without an answer"
        except ssl.SSLEOFError:
            pass  # closed without a TLS close_notify: also closed
    body = json.dumps(admission_review(load_pod("job-pod.yaml"))).encode()
    assert caller.post(body)[0] == 200


def test_colliding_names_and_missing_metadata_over_tls(caller: WebhookCaller) -> None:
    """Names the pod already uses are not reused; a pod without metadata gets it created."""
    pod = load_pod("job-pod.yaml")
    pod["spec"]["containers"].append({"name": "primus-lens-inject", "image": "user/sidecar:1"})
    pod["spec"]["volumes"] = [{"name": "primus-lens-inject", "secret": {"secretName": "s"}}]
    del pod["metadata"]
    _, patched = admit(caller, pod)
    validate_pod(patched)
    assert patched["metadata"] == {"annotations": {
        admission.INJECTED_KEY: "primus-lens-inject,train"}}
    [init] = patched["spec"]["initContainers"]
    assert init["name"] == "primus-lens-inject-2"
    assert init["volumeMounts"] == [{"name": "primus-lens-inject-2",
                                     "mountPath": "/mnt/primus-lens"}]
    assert patched["spec"]["volumes"] == [
        {"name": "primus-lens-inject", "secret": {"secretName": "s"}},
        {"name": "primus-lens-inject-2", "emptyDir": {"sizeLimit": "64Mi"}}]
    for container in patched["spec"]["containers"]:
        assert container["volumeMounts"][-1] == {"name": "primus-lens-inject-2",
                                                 "mountPath": MOUNT, "readOnly": True}
    assert admit(caller, patched)[1] == patched


def test_certificate_is_verified_by_name_and_ca(server: webhook.WebhookServer,
                                                ca: trustme.CA) -> None:
    body = json.dumps(admission_review(load_pod("job-pod.yaml"))).encode()
    wrong_name = WebhookCaller(server.server_port, ca.cert_pem.bytes(), "other.primus-lens.svc")
    with pytest.raises(ssl.SSLCertVerificationError, match="match"):
        wrong_name.post(body)
    wrong_ca = WebhookCaller(server.server_port, trustme.CA().cert_pem.bytes(), SERVICE_NAME)
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate"):
        wrong_ca.post(body)


def test_a_silent_client_does_not_stall_others(caller: WebhookCaller,
                                              server: webhook.WebhookServer) -> None:
    with socket.create_connection(("127.0.0.1", server.server_port), 5):  # never says hello
        started = time.monotonic()
        assert caller.get("/healthz")[0] == 200
        assert time.monotonic() - started < 2


def test_rotated_certificate_is_served_without_restart(server: webhook.WebhookServer,
                                                       tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(webhook, "RELOAD_CHECK_SECONDS", 0.0)
    new_ca = trustme.CA()
    issue(new_ca, tmp_path / "tls")  # the files the server was started with, replaced
    caller = WebhookCaller(server.server_port, new_ca.cert_pem.bytes(), SERVICE_NAME)
    assert caller.get("/healthz")[0] == 200


# -- the real process, configured by the chart --------------------------------------------------

@pytest.fixture(scope="module")
def chart(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    """The chart's default rendering: TLS Secret, settings file and webhook registration."""
    docs = render(tmp_path_factory.mktemp("helm"), release="lens", namespace=NAMESPACE)
    return {"secret": only(docs, "Secret"), "config": only(docs, "ConfigMap"),
            "registration": only(docs, "MutatingWebhookConfiguration")}


def test_chart_configured_webhook_process(chart: Dict[str, Any], tmp_path: Path) -> None:
    secret, registration = chart["secret"], chart["registration"]
    config = json.loads(chart["config"]["data"]["config.json"])
    with webhook_process(tmp_path, config, pem_of(secret["data"]["tls.crt"]),
                         pem_of(secret["data"]["tls.key"])) as running:
        for hook in registration["webhooks"]:
            service = hook["clientConfig"]["service"]
            caller = WebhookCaller(running.port, pem_of(hook["clientConfig"]["caBundle"]),
                                   f"{service['name']}.{service['namespace']}.svc",
                                   path=service["path"], timeout_s=hook["timeoutSeconds"])
            pod = load_pod("pytorchjob-worker.yaml")
            patched = apply_response(pod, caller.review(admission_review(pod)))
            validate_pod(patched)
            [init] = [c for c in patched["spec"]["initContainers"]
                      if c["name"] == "primus-lens-inject"]
            assert init["image"] == "ghcr.io/amd-agi/primus-lens-inject:0.1.0"
            env = env_of(patched["spec"]["containers"][0])
            assert "PRIMUS_LENS_API_BASE_URL" not in env and "PRIMUS_LENS_API_PRESET" not in env
            assert env["PRIMUS_LENS_WANDB_API_REPORTING"]["value"] == "true"
            assert env["POD_UID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.uid"
        safe = load_pod("safe-pytorchjob-pod.yaml")
        reply = caller.review(admission_review(safe))
        assert "warnings" not in reply["response"]
        patched = apply_response(safe, reply)
        validate_pod(patched)
        assert patched["metadata"]["annotations"][admission.INJECTED_KEY] == "pytorch"
        assert patched["spec"]["containers"][1] == safe["spec"]["containers"][1]
    decisions = [json.loads(line) for line in running.logs if '"admission"' in line]
    assert [d["decision"] for d in decisions] == ["injected", "injected", "injected"]
    assert decisions[0]["pod"] == "ml-team/llama-pretrain-worker-3"
    assert decisions[2]["injected"] == ["pytorch"]


def test_webhook_process_refuses_a_bad_config(tmp_path: Path, ca: trustme.CA) -> None:
    cert, key = issue(ca, tmp_path / "tls")
    (tmp_path / "config.json").write_text(json.dumps({"image": "x:1", "mountpath": "/x"}))
    proc = subprocess.run([sys.executable, "-m", "primus_lens_inject", "webhook", "--port", "0",
                           "--tls-cert", cert, "--tls-key", key,
                           "--config", str(tmp_path / "config.json")],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "unknown configuration keys: mountpath" in proc.stderr


def test_default_address_serves_ipv4_and_drains_on_sigterm(tmp_path: Path, ca: trustme.CA) -> None:
    """``--host ::`` (dual stack, or IPv4 where IPv6 is off) and the grace period after SIGTERM;
    at start-up, a chart setting the injector does not read is named once (the command hands the
    stdlib-only webhook the injector's variable names)."""
    cert, key = issue(ca, tmp_path / "tls")
    settings = {"image": IMAGE, "env": {"PRIMUS_LENS_WANDB_API_REPORTING": "true",
                                        "PRIMUS_LENS_WANDB_BATCH_SIZ": "50"}}
    with webhook_process(tmp_path / "run", settings, Path(cert).read_bytes(),
                         Path(key).read_bytes(), "--host", "::", "--shutdown-delay", "1.5") as running:
        unknown = [json.loads(line) for line in running.logs if '"unknown_env"' in line]
        assert [entry["name"] for entry in unknown] == ["PRIMUS_LENS_WANDB_BATCH_SIZ"]
        caller = WebhookCaller(running.port, ca.cert_pem.bytes(), SERVICE_NAME)
        assert caller.get("/healthz")[0] == 200
        running.proc.send_signal(signal.SIGTERM)
        stopped = time.monotonic()
        assert wait_until(lambda: any('"stopping"' in line for line in running.logs), 5)
        assert caller.get("/healthz")[0] == 200, "still answering during the grace period"
        assert running.proc.wait(10) == 0
        assert 1.2 <= time.monotonic() - stopped < 8


def dense_review(size: int) -> bytes:
    """A pod's AdmissionReview padded to about ``size`` bytes (never more) with empty arrays:
    the JSON that costs the most memory per byte to decode."""
    review = admission_review(load_pod("job-pod.yaml"))
    review["request"]["options"] = []
    body = json.dumps(review).encode()
    pads = (size - len(body) - 2) // 3
    return body.replace(b'"options": []', b'"options": [' + b"[]," * pads + b"[]]")


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident memory (VmHWM) so far."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM for {pid}")


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads VmHWM from /proc")
def test_webhook_process_memory_stays_bounded(tmp_path: Path, ca: trustme.CA) -> None:
    """Anyone who reaches the port can post: a 16 MiB review is refused unread (413, and the
    client still reads the answer), and concurrent reviews at the limit, made of the JSON that
    is dearest to decode, take their turns instead of adding up past the chart's 256 Mi."""
    cert, key = issue(ca, tmp_path / "tls")
    huge, at_limit = dense_review(16 << 20), dense_review(webhook.MAX_BODY)
    assert (16 << 20) - 3 <= len(huge) <= 16 << 20
    assert webhook.MAX_BODY - 3 <= len(at_limit) <= webhook.MAX_BODY
    with webhook_process(tmp_path / "run", {"image": IMAGE}, Path(cert).read_bytes(),
                         Path(key).read_bytes()) as running:
        caller = WebhookCaller(running.port, ca.cert_pem.bytes(), SERVICE_NAME, timeout_s=60)
        assert caller.post(huge) == (413, {"error": "body larger than 3145728 bytes"})
        assert peak_rss_mib(running.proc.pid) < 64
        assert wait_until(lambda: any('"body_refused"' in line for line in running.logs), 10)
        [refused] = [json.loads(line) for line in running.logs if '"body_refused"' in line]
        assert (refused["status"], refused["bytes"]) == (413, len(huge))
        statuses: List[Any] = []

        def post_at_limit() -> None:
            try:
                statuses.append(caller.post(at_limit)[0])
            except (ConnectionError, OSError):
                statuses.append("dropped")  # a client slower than RECEIVE_SECONDS is cut off

        posts = [threading.Thread(target=post_at_limit) for _ in range(4)]
        for thread in posts:
            thread.start()
        for thread in posts:
            thread.join(90)
        # They take turns: how many fit in the API server's timeout depends on how loaded the
        # machine is (each decode is seconds of CPU here), so a turn that would come too late
        # is refused (503) or its slow sender cut off; what must hold is that at least one is
        # admitted and, above all, that they never add up in memory.
        assert len(statuses) == 4 and set(statuses) <= {200, 503, "dropped"}, statuses
        assert 200 in statuses, statuses
        assert peak_rss_mib(running.proc.pid) < 200


# -- attacks on the real process (issue 19) -----------------------------------------------------

API_TIMEOUT = 5.0  # the chart's timeoutSeconds: an answer later than this admits uninjected


@contextlib.contextmanager
def attacked_webhook(tmp_path: Path, ca: trustme.CA) -> Iterator[Tuple[WebhookProcess,
                                                                         WebhookCaller]]:
    """The real ``primus-lens webhook`` process, and the API server's client of it."""
    cert, key = issue(ca, tmp_path / "tls")
    with webhook_process(tmp_path / "run", {"image": IMAGE}, Path(cert).read_bytes(),
                         Path(key).read_bytes()) as running:
        yield running, WebhookCaller(running.port, ca.cert_pem.bytes(), SERVICE_NAME,
                                     timeout_s=int(API_TIMEOUT))


def admissions(caller: WebhookCaller, count: int) -> List[str]:
    """``count`` admissions of a PyTorchJob worker, one after another, each on a connection of
    its own as a reconnecting API server makes them; what went wrong with each that was not
    injected within the API server's timeout (an empty list: all were)."""
    failures = []
    for _ in range(count):
        pod = load_pod("pytorchjob-worker.yaml")
        started = time.monotonic()
        try:
            patched = apply_response(pod, caller.review(admission_review(pod)))
        except (OSError, AssertionError, ValueError) as exc:  # timed out, reset, 503, ...
            failures.append(f"{type(exc).__name__}: {exc}"[:200])
            continue
        seconds = time.monotonic() - started
        if seconds >= API_TIMEOUT:
            failures.append(f"answered after {seconds:.1f} s")
        elif patched["metadata"]["annotations"].get(admission.INJECTED_KEY) != "pytorch":
            failures.append(f"not injected: {patched['metadata'].get('annotations')}")
    return failures


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads VmHWM from /proc")
def test_clients_that_declare_bodies_and_stall_do_not_delay_admissions(tmp_path: Path,
                                                                      ca: trustme.CA) -> None:
    """Six clients send the head of a 3 MiB review and nothing, four send all of it but one
    byte, each reconnecting when dropped: a declared length holds nothing, a body that stops
    arriving is cut off, and the API server's admissions go on meanwhile."""
    stop, announced = threading.Event(), threading.Semaphore(0)
    almost = b" " * (webhook.MAX_BODY - 1)
    attackers: List[threading.Thread] = []
    with attacked_webhook(tmp_path, ca) as (running, caller):
        try:
            for body in [b""] * 6 + [almost] * 4:
                attackers.append(threading.Thread(
                    target=hold_request, daemon=True,
                    args=(running.port, caller.context, SERVICE_NAME, webhook.MAX_BODY, body,
                          stop, announced)))
                attackers[-1].start()
            assert all(announced.acquire(timeout=20) for _ in attackers), "attack not started"
            time.sleep(0.5)  # the bodies are on their way
            failures = admissions(caller, 12)
            peak = peak_rss_mib(running.proc.pid)
            assert running.proc.poll() is None, "the webhook died"
        finally:
            stop.set()
    for thread in attackers:
        thread.join(10)
    assert failures == [], f"{len(failures)} of 12 admissions not injected within 5 s"
    assert peak < 256


def base36(number: int) -> str:
    """The shortest container name for ``number`` (as many containers as fit in 750 KB)."""
    digits = ""
    while True:
        number, digit = divmod(number, 36)
        digits = "0123456789abcdefghijklmnopqrstuvwxyz"[digit] + digits
        if not number:
            return digits


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads VmHWM from /proc")
def test_a_review_of_50000_containers_gets_a_small_answer(tmp_path: Path, ca: trustme.CA) -> None:
    """A 750 KB review can list 50,000 containers, whose patch would take 40 MB: the pod is
    admitted unchanged with a warning that says why, in an answer of a few hundred bytes."""
    pod = load_pod("pytorchjob-worker.yaml")
    pod["spec"]["containers"] = [{"name": base36(n)} for n in range(50_000)]  # the API server
    review = admission_review(pod)  # checks images after admission: a review may lack them
    body = json.dumps(review, separators=(",", ":")).encode()
    assert 700_000 < len(body) < 800_000
    with attacked_webhook(tmp_path, ca) as (running, caller):
        conn = caller.connect()
        try:
            conn.request("POST", caller.path, body=body,
                         headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            answer = response.read()
        finally:
            conn.close()
        peak = peak_rss_mib(running.proc.pid)
    assert response.status == 200
    assert len(answer) < 1024
    assert json.loads(answer)["response"] == {
        "uid": review["request"]["uid"], "allowed": True,
        "warnings": ["primus-lens: pod not injected: 50000 containers to inject, more than the "
                     f"{admission.MAX_CONTAINERS} the webhook injects in one pod"]}
    assert peak < 128


IDLE_ATTEMPTS = 712  # well over MAX_CONNECTIONS: each one a thread, were they all served


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads Threads from /proc")
def test_idle_connections_are_capped_and_admissions_still_answer(tmp_path: Path,
                                                                ca: trustme.CA) -> None:
    """712 connections that send nothing, half after a TLS handshake and half raw TCP: the
    threads stay within MAX_CONNECTIONS (idle ones are shed, the rest refused), the shedding is
    logged, and the API server's admissions are answered in time meanwhile."""
    held: List[socket.socket] = []
    refused: List[str] = []
    with attacked_webhook(tmp_path, ca) as (running, caller):
        threads = [status_field(running.proc.pid, "Threads") or 0]
        sampled = threading.Event()

        def sample() -> None:
            while not sampled.wait(0.02):
                threads.append(status_field(running.proc.pid, "Threads") or 0)

        def open_idle(count: int, tls: bool) -> None:
            for _ in range(count):
                try:
                    sock = socket.create_connection(("127.0.0.1", running.port), 5)
                except OSError as exc:
                    refused.append(repr(exc))
                    continue
                if tls:
                    try:
                        sock = caller.context.wrap_socket(sock,
                                                          server_hostname=caller.server_name)
                    except OSError as exc:  # shed or refused before the handshake finished
                        sock.close()
                        refused.append(repr(exc))
                        continue
                held.append(sock)

        sampler = threading.Thread(target=sample, daemon=True)
        openers = [threading.Thread(target=open_idle, daemon=True,
                                    args=(IDLE_ATTEMPTS // 8, n % 2 == 0)) for n in range(8)]
        try:
            sampler.start()
            for thread in openers:
                thread.start()
            for thread in openers:
                thread.join(60)
            assert not any(thread.is_alive() for thread in openers)
            assert len(held) + len(refused) == IDLE_ATTEMPTS
            failures = admissions(caller, 10)  # the idle connections still held
            logged = wait_until(lambda: any('"connections_shed"' in line
                                            for line in running.logs), 5)
            peak = peak_rss_mib(running.proc.pid)
            assert running.proc.poll() is None, "the webhook died"
        finally:
            sampled.set()
            sampler.join(5)
            for sock in held:
                sock.close()
    assert max(threads) <= webhook.MAX_CONNECTIONS + 8
    assert failures == [], f"{len(failures)} of 10 admissions not injected within 5 s"
    assert logged, "no connections_shed line"
    assert peak < 256


# -- the connection table's shedding order ------------------------------------------------------

Pair = Tuple[socket.socket, socket.socket]  # (the server's end, the client's end)


@pytest.fixture
def pairs() -> Iterator[Any]:
    """Makes connected socket pairs (the table shuts the server's end down to close it), all
    closed after the test."""
    made: List[Pair] = []

    def make() -> Pair:
        made.append(socket.socketpair())
        return made[-1]

    yield make
    for ours, theirs in made:
        ours.close()
        theirs.close()


def enter(table: webhook.Connections, pairs: Any, state: str) -> Pair:
    """A connection in ``state`` as a handler thread takes it there: ``fresh`` (accepted, no
    request yet), ``receiving`` (a request started), ``working`` (the request arrived whole) or
    ``kept`` (answered, kept alive for the next request)."""
    pair = pairs()
    ours = pair[0]
    assert table.open(ours)
    if state != "fresh":
        assert table.receiving(ours)
    if state in ("working", "kept"):
        table.working(ours)
    if state == "kept":
        table.idle(ours)
    return pair


def shut_down(pair: Pair) -> bool:
    """Whether the table shut the server's end down: the client's end reads the end."""
    pair[1].setblocking(False)
    try:
        return pair[1].recv(1) == b""
    except BlockingIOError:
        return False


def test_connections_are_shed_idle_first_then_slowest_never_working(pairs: Any) -> None:
    """Above MAX_CONNECTIONS - SPARE_CONNECTIONS, each new connection closes two that have done
    nothing for SLOW_SECONDS: those that never sent a request first (oldest first, even when
    others are older), then those still sending one (longest first), then kept-alive ones
    (longest idle first); a connection whose request has arrived, never."""
    table = webhook.Connections(webhook.MAX_CONNECTIONS, webhook.SPARE_CONNECTIONS)
    working = [enter(table, pairs, "working")
               for _ in range(webhook.MAX_CONNECTIONS - webhook.SPARE_CONNECTIONS)]
    kept = [enter(table, pairs, "kept") for _ in range(3)]  # the oldest idle ones
    receiving = [enter(table, pairs, "receiving") for _ in range(3)]
    fresh = [enter(table, pairs, "fresh") for _ in range(3)]  # the youngest
    time.sleep(webhook.SLOW_SECONDS * 1.5)  # all of them now idle for longer than SLOW_SECONDS
    names = {id(pair): f"{state}{n}" for state, group in (("kept", kept), ("receiving", receiving),
                                                           ("fresh", fresh))
             for n, pair in enumerate(group)}
    turns = []
    for _ in range(6):
        table.make_room()  # before each accept
        closed = [pair for pair in fresh + receiving + kept  # the order of the rule
                  if id(pair) in names and shut_down(pair)]
        turns.append([names.pop(id(pair)) for pair in closed])
        for ours, _ in closed:  # their threads wake up and end them
            assert not table.receiving(ours), "a connection shed is not taken back"
            table.close(ours)
    assert turns == [["fresh0", "fresh1"], ["fresh2", "receiving0"], ["receiving1", "receiving2"],
                     ["kept0", "kept1"], ["kept2"], []]
    assert not any(shut_down(pair) for pair in working)
    assert table.count == webhook.MAX_CONNECTIONS - webhook.SPARE_CONNECTIONS
    assert table.shed["idle_closed"] == 9


def test_connections_at_work_are_never_shed(pairs: Any, caplog: pytest.LogCaptureFixture) -> None:
    """With every slot taken by a connection at work (its request arrived, whether on a new or a
    kept-alive connection), nothing is closed however long they take: the accept loop waits up
    to SLOW_SECONDS for a slot, then the new connection is refused, and that is logged."""
    table = webhook.Connections(webhook.MAX_CONNECTIONS, webhook.SPARE_CONNECTIONS)
    busy = [enter(table, pairs, "working") for _ in range(webhook.MAX_CONNECTIONS - 1)]
    again = enter(table, pairs, "kept")  # a kept-alive connection whose next request arrived
    assert table.receiving(again[0])
    table.working(again[0])
    busy.append(again)
    time.sleep(webhook.SLOW_SECONDS * 1.5)  # older than any idle connection may get
    with caplog.at_level(logging.WARNING, logger=webhook.LOG.name):
        table.make_room()  # at the limit: closes nothing, returns after SLOW_SECONDS
        late = pairs()
        assert not table.open(late[0]), "a connection without a slot is refused"
    assert not any(shut_down(pair) for pair in busy)
    assert table.count == webhook.MAX_CONNECTIONS
    [line] = [json.loads(r.getMessage()) for r in caplog.records
              if '"connections_shed"' in r.getMessage()]
    assert (line["refused"], line["idle_closed"], line["open"]) == (
        1, 0, webhook.MAX_CONNECTIONS)
    table.close(busy[0][0])  # one ends: its slot is free at once
    table.make_room()
    assert table.open(late[0])
    assert not any(shut_down(pair) for pair in busy[1:])
