"""Test-side stand-ins for what a cluster would provide: helm, the API server's webhook client, and
just enough of the API server's REST surface for ``helm --dry-run=server`` lookups.

No cluster exists on the test machines (see the tooling notes), so the tests play each part the
way the real component behaves: the webhook is called over TLS verified against the caBundle
under the Service's DNS name, at ``/mutate?timeout=...``, and its JSONPatch is applied to the pod.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import http.client
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import jsonpatch
import kubernetes_validate
import yaml
from conftest import require

from primus_lens_inject.config import VARIABLES

ROOT = Path(__file__).resolve().parents[2]
# The variables this injector reads: what `primus-lens webhook` hands the webhook (cli/webhook.py).
KNOWN_ENV = frozenset(var.name for var in VARIABLES)
CHART = ROOT / "charts" / "primus-lens-inject"
FIXTURES = Path(__file__).resolve().parent
HELM = ROOT / ".tools" / "helm" / "helm"
K8S_MIN = "1.27.0"  # the oldest Kubernetes the chart supports (Chart.yaml kubeVersion)


def helm(*args: str, home: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    require("helm", HELM.is_file() and os.access(HELM, os.X_OK),
            f"{HELM.relative_to(ROOT)} is missing; run `make tools`")
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(home),
           "HELM_CACHE_HOME": str(home / "cache"), "HELM_CONFIG_HOME": str(home / "config"),
           "HELM_DATA_HOME": str(home / "data"), "KUBECONFIG": str(home / "no-kubeconfig")}
    return subprocess.run([str(HELM), *args], capture_output=True, text=True, timeout=timeout,
                          env=env)


def render(home: Path, *extra: str, release: str = "lens", namespace: str = "primus-lens",
           kube_version: str = K8S_MIN) -> List[Dict[str, Any]]:
    """``helm template`` → the list of rendered objects (fails the test on a helm error)."""
    proc = helm("template", release, str(CHART), "--namespace", namespace,
                "--kube-version", kube_version, *extra, home=home)
    assert proc.returncode == 0, proc.stderr
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def only(docs: Sequence[Dict[str, Any]], kind: str) -> Dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def validate(doc: Dict[str, Any], version: str = K8S_MIN) -> None:
    """Strict schema check: unknown fields and wrong types fail (enums are the tests' job)."""
    kubernetes_validate.validate(doc, version, strict=True)


_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_ENV_NAME = re.compile(r"[-._a-zA-Z][-._a-zA-Z0-9]*")
ANNOTATIONS_LIMIT = 256 * 1024  # the API server's cap on all of a pod's annotations together


def validate_pod(pod: Dict[str, Any], version: str = K8S_MIN) -> None:
    """The schema, plus the API server's pod rules that a schema cannot state and a webhook's
    patch can break: container names unique across init, app and ephemeral containers, volume
    names unique, every mount naming a volume of the pod, mount paths unique per container,
    names that are DNS labels, valid variable names, annotations within their size limit."""
    validate(pod, version)
    spec = pod["spec"]
    containers = [c for key in ("initContainers", "containers", "ephemeralContainers")
                  for c in spec.get(key) or []]
    names = [c["name"] for c in containers]
    assert len(names) == len(set(names)), f"duplicate container names: {names}"
    volumes = [v["name"] for v in spec.get("volumes") or []]
    assert len(volumes) == len(set(volumes)), f"duplicate volume names: {volumes}"
    for name in names + volumes:
        assert _DNS_LABEL.fullmatch(name), f"not a DNS label: {name!r}"
    for container in containers:
        mounts = container.get("volumeMounts") or []
        paths = [m["mountPath"] for m in mounts]
        assert len(paths) == len(set(paths)), f"{container['name']}: duplicate mountPath {paths}"
        for mount in mounts:
            assert mount["name"] in volumes, f"{container['name']}: no volume {mount['name']}"
        for entry in container.get("env") or []:
            assert _ENV_NAME.fullmatch(entry["name"]), f"bad variable name {entry['name']!r}"
            assert not ("value" in entry and "valueFrom" in entry), entry
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    size = sum(len(k) + len(v.encode()) for k, v in annotations.items())
    assert size <= ANNOTATIONS_LIMIT, f"annotations take {size} bytes"


# -- pods and reviews ----------------------------------------------------------------------------

def load_pod(name: str) -> Dict[str, Any]:
    return yaml.safe_load((FIXTURES / name).read_text())


def small_pod(*containers: Dict[str, Any], annotations: Optional[Dict[str, str]] = None,
              **spec: Any) -> Dict[str, Any]:
    """The smallest pod that shows a rule: ``containers`` (default: one) and ``spec`` fields."""
    metadata: Dict[str, Any] = {"name": "p", "namespace": "ns"}
    if annotations is not None:
        metadata["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata,
            "spec": {"containers": list(containers) or [{"name": "main", "image": "img"}],
                     **spec}}


def admission_review(pod: Dict[str, Any], operation: str = "CREATE",
                     uid: Optional[str] = None) -> Dict[str, Any]:
    """The AdmissionReview the API server sends for a pod CREATE (admission.k8s.io/v1)."""
    metadata = pod.get("metadata", {})
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid or str(uuid.uuid4()),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": metadata.get("name", ""),
            "namespace": metadata.get("namespace", "default"),
            "operation": operation,
            "userInfo": {"username": "system:serviceaccount:kubeflow:training-operator",
                         "groups": ["system:serviceaccounts"]},
            "object": pod,
            "oldObject": None,
            "dryRun": False,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    }


def apply_response(pod: Dict[str, Any], review: Dict[str, Any]) -> Dict[str, Any]:
    """What the API server does with the webhook's answer: check it, apply the patch."""
    response = review["response"]
    assert review["apiVersion"] == "admission.k8s.io/v1" and review["kind"] == "AdmissionReview"
    assert response["allowed"] is True
    if "patch" not in response:
        assert "patchType" not in response
        return copy.deepcopy(pod)
    assert response["patchType"] == "JSONPatch"
    operations = json.loads(base64.b64decode(response["patch"]))
    return jsonpatch.JsonPatch(operations).apply(pod)


def env_of(container: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    return {entry["name"]: entry for entry in container.get("env") or []}


# -- the API server's side of a webhook call ------------------------------------------------------

class WebhookCaller:
    """Calls the webhook like kube-apiserver: TLS to an address, verified as ``<svc>.<ns>.svc``."""

    def __init__(self, port: int, ca_pem: bytes, server_name: str, path: str = "/mutate",
                 timeout_s: int = 5) -> None:
        self.port = port
        self.server_name = server_name
        self.path = f"{path}?timeout={timeout_s}s"
        self.context = ssl.create_default_context(cadata=ca_pem.decode())
        self.timeout = timeout_s

    def connect(self) -> http.client.HTTPSConnection:
        caller = self

        class Connection(http.client.HTTPSConnection):
            def connect(self) -> None:
                sock = socket.create_connection(("127.0.0.1", caller.port), caller.timeout)
                self.sock = caller.context.wrap_socket(sock, server_hostname=caller.server_name)

        return Connection("127.0.0.1", self.port, timeout=self.timeout, context=self.context)

    def post(self, body: bytes, conn: Optional[http.client.HTTPSConnection] = None,
             path: Optional[str] = None) -> Tuple[int, Any]:
        own = conn is None
        conn = conn or self.connect()
        try:
            conn.request("POST", path or self.path, body=body,
                         headers={"Content-Type": "application/json",
                                  "Accept": "application/json"})
            response = conn.getresponse()
            data = response.read()
            try:
                payload = json.loads(data)
            except ValueError:
                payload = data
            return response.status, payload
        finally:
            if own:
                conn.close()

    def review(self, review: Dict[str, Any], **kwargs: Any) -> Dict[str, Any]:
        status, payload = self.post(json.dumps(review).encode(), **kwargs)
        assert status == 200, payload
        assert payload["response"]["uid"] == review["request"]["uid"]
        return payload

    def get(self, path: str) -> Tuple[int, bytes]:
        conn = self.connect()
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()


class MemoryCgroup:
    """A memory cgroup limiting a process as a container's memory limit does (cgroup v2, else
    v1); ``create`` gives None where this machine does not let us make one (not root, no memory
    controller), and callers then fall back to the process's own peak (``status_field``)."""

    def __init__(self, path: Path, version: int) -> None:
        self.path, self.version = path, version

    @classmethod
    def create(cls, limit: int) -> Optional[MemoryCgroup]:
        name = f"primus-lens-test-{os.getpid()}-{time.monotonic_ns()}"
        for root, version, limit_file in ((Path("/sys/fs/cgroup"), 2, "memory.max"),
                                          (Path("/sys/fs/cgroup/memory"), 1,
                                           "memory.limit_in_bytes")):
            if version == 2 and "memory" not in _read(root / "cgroup.subtree_control").split():
                continue
            try:
                (root / name).mkdir()
            except OSError:
                continue
            try:
                (root / name / limit_file).write_text(str(limit))
                return cls(root / name, version)
            except OSError:
                (root / name).rmdir()
        return None

    def command(self, argv: Sequence[str]) -> List[str]:
        """``argv`` started inside the cgroup: a shell moves itself in, then execs it (no
        ``preexec_fn``, which is unsafe in a process with threads)."""
        return ["sh", "-c", 'echo $$ > "$0" && exec "$@"', str(self.path / "cgroup.procs"),
                *argv]

    def peak_mib(self) -> Optional[float]:
        raw = _read(self.path / ("memory.peak" if self.version == 2 else
                                 "memory.max_usage_in_bytes"))
        return int(raw) / (1 << 20) if raw.strip().isdigit() else None

    def oom_kills(self) -> int:
        events = _read(self.path / ("memory.events" if self.version == 2 else
                                    "memory.oom_control"))
        for line in events.splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1])
        return 0

    def remove(self) -> None:
        for _ in range(50):  # the last process may take a moment to leave
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.1)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def status_field(pid: int, name: str) -> Optional[int]:
    """A number from ``/proc/<pid>/status`` (``VmHWM`` in KiB, ``Threads``), None without it."""
    for line in _read(Path(f"/proc/{pid}/status")).splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    return None


def hold_request(port: int, context: ssl.SSLContext, server_name: str, length: int,
                 body: bytes, stop: threading.Event,
                 announced: Optional[threading.Semaphore] = None) -> int:
    """An attacking client of the webhook (the tests' and ``make bench-webhook``'s): over TLS,
    the head of ``POST /mutate`` declaring ``length`` body bytes, then ``body`` (fewer, or all),
    then silence; whenever the server drops it, it reconnects, until ``stop`` is set.
    ``announced`` is released once, when the first head is out.  Returns the connections made."""
    connections = 0
    while not stop.is_set():
        try:
            with context.wrap_socket(socket.create_connection(("127.0.0.1", port), 5),
                                     server_hostname=server_name) as sock:
                sock.sendall(b"POST /mutate?timeout=30s HTTP/1.1\r\nContent-Length: %d\r\n\r\n"
                             % length)
                connections += 1
                if announced is not None and connections == 1:
                    announced.release()
                sock.sendall(body)
                sock.settimeout(0.5)  # so that ``stop`` is seen while the server says nothing
                while not stop.is_set():
                    try:
                        if not sock.recv(65536):
                            break
                    except socket.timeout:
                        continue
        except OSError:  # refused, reset, shut down, or the body would not go out in time
            stop.wait(0.05)
    return connections


@dataclass
class WebhookProcess:
    port: int
    logs: List[str]  # stderr lines, appended while it runs
    proc: subprocess.Popen
    cgroup: Optional[MemoryCgroup] = None  # the memory limit it runs under, where one could be made


@contextlib.contextmanager
def webhook_process(tmp: Path, config: Dict[str, Any], cert: bytes, key: bytes,
                    *args: str, memory_limit: Optional[int] = None) -> Iterator[WebhookProcess]:
    """``primus-lens webhook`` as the Deployment runs it (``args`` override the defaults here),
    in a memory cgroup of ``memory_limit`` bytes where this machine lets us create one."""
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "config.json").write_text(json.dumps(config))
    (tmp / "tls.crt").write_bytes(cert)
    (tmp / "tls.key").write_bytes(key)
    argv = [sys.executable, "-m", "primus_lens_inject", "webhook", "--host", "127.0.0.1",
            "--port", "0", "--tls-cert", str(tmp / "tls.crt"), "--tls-key", str(tmp / "tls.key"),
            "--config", str(tmp / "config.json"), "--shutdown-delay", "0", *args]
    cgroup = MemoryCgroup.create(memory_limit) if memory_limit else None
    proc = subprocess.Popen(cgroup.command(argv) if cgroup else argv,
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=tmp)
    lines: List[str] = []
    listening = threading.Event()

    def pump() -> None:
        for line in proc.stderr:
            lines.append(line.rstrip("\n"))
            if '"listening"' in line:
                listening.set()
        listening.set()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        assert listening.wait(20), "the webhook did not start within 20 s"
        started = [json.loads(line) for line in lines if '"listening"' in line]
        assert started, "\n".join(lines)
        yield WebhookProcess(started[0]["port"], lines, proc, cgroup)
    finally:
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        reader.join(5)
        if cgroup is not None:
            cgroup.remove()


def pem_of(b64: str) -> bytes:
    return base64.b64decode(b64)


# -- a sliver of the API server for `helm --dry-run=server` ---------------------------------------

_RESOURCES = {
    "v1": [("secrets", "Secret", True), ("configmaps", "ConfigMap", True),
           ("services", "Service", True), ("serviceaccounts", "ServiceAccount", True)],
    "apps/v1": [("deployments", "Deployment", True)],
    "policy/v1": [("poddisruptionbudgets", "PodDisruptionBudget", True)],
    "admissionregistration.k8s.io/v1": [
        ("mutatingwebhookconfigurations", "MutatingWebhookConfiguration", False)],
}


class FakeKubeAPI:
    """Discovery for the chart's kinds plus GET of stored Secrets; every other object is 404."""

    def __init__(self, secrets: Optional[Dict[Tuple[str, str], Dict[str, Any]]] = None) -> None:
        self.secrets = secrets or {}
        self.requests: List[str] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                api.requests.append(self.path)
                status, body = api.answer(self.path.split("?")[0])
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def answer(self, path: str) -> Tuple[int, Dict[str, Any]]:
        if path == "/version":
            return 200, {"major": "1", "minor": "27", "gitVersion": "v1.27.0",
                         "platform": "linux/amd64"}
        if path == "/api":
            return 200, {"kind": "APIVersions", "versions": ["v1"],
                         "serverAddressByClientCIDRs": []}
        if path == "/apis":
            groups = [{"name": gv.split("/")[0], "versions": [{"groupVersion": gv, "version": "v1"}],
                       "preferredVersion": {"groupVersion": gv, "version": "v1"}}
                      for gv in _RESOURCES if gv != "v1"]
            return 200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}
        group_version = "v1" if path == "/api/v1" else path[len("/apis/"):]
        if group_version in _RESOURCES:
            resources = [{"name": name, "singularName": kind.lower(), "namespaced": namespaced,
                          "kind": kind, "verbs": ["get", "list", "create", "update"]}
                         for name, kind, namespaced in _RESOURCES[group_version]]
            return 200, {"kind": "APIResourceList", "apiVersion": "v1",
                         "groupVersion": group_version, "resources": resources}
        match = re.fullmatch(r"/api/v1/namespaces/([^/]+)/secrets/([^/]+)", path)
        if match and (match.group(1), match.group(2)) in self.secrets:
            return 200, self.secrets[(match.group(1), match.group(2))]
        return 404, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                     "reason": "NotFound", "code": 404}

    def __enter__(self) -> FakeKubeAPI:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)

    def kubeconfig(self, path: Path) -> Path:
        port = self.server.server_address[1]
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
            "users": [{"name": "fake", "user": {}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
        }))
        return path


def as_installed(obj: Dict[str, Any], release: str = "lens",
                 namespace: str = "primus-lens") -> Dict[str, Any]:
    """``obj`` as the cluster holds it after ``helm install``: with helm's ownership marks."""
    stored = copy.deepcopy(obj)
    stored["metadata"].setdefault("annotations", {}).update(
        {"meta.helm.sh/release-name": release, "meta.helm.sh/release-namespace": namespace})
    stored["metadata"].setdefault("labels", {})["app.kubernetes.io/managed-by"] = "Helm"
    return stored


def render_against(api: FakeKubeAPI, home: Path, *extra: str, release: str = "lens",
                   namespace: str = "primus-lens") -> List[Dict[str, Any]]:
    """``helm template --dry-run=server``: lookups are answered by ``api`` (an upgrade's view)."""
    kubeconfig = api.kubeconfig(home / "kubeconfig")
    proc = helm("template", release, str(CHART), "--namespace", namespace, "--dry-run=server",
                "--disable-openapi-validation", "--kubeconfig", str(kubeconfig), *extra,
                home=home)
    assert proc.returncode == 0, proc.stderr
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def tool_path(name: str) -> Optional[str]:
    """A system tool, also from the sbin directories a non-login root shell may lack."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/local/sbin")


