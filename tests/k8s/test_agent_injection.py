"""The pod agent as the chart and the webhook put it into pods: both forms, end to end.

``helm template`` renders the chart (the agent's form decided by the cluster's version or the
value), every object is validated strictly against the Kubernetes schemas, and the real
``primus-lens webhook`` process, started with the chart's TLS Secret and settings file, is called
like the API server calls it (TLS verified against the caBundle under the Service name).  Its
JSONPatch is applied to SaFE's PyTorchJob worker pod and the result validated as a pod of a
Kubernetes version that has the form (native sidecars: 1.29 and later).  The monitor templates
are rendered too; no tool here knows their CRDs' schemas (kubeconform is in no registry we can
reach, see the tooling notes), so their fields are checked against what the webhook writes.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest

from k8s.support import (
    CHART,
    K8S_MIN,
    KNOWN_ENV,
    WebhookCaller,
    WebhookProcess,
    admission_review,
    apply_response,
    env_of,
    helm,
    load_pod,
    only,
    pem_of,
    render,
    validate,
    validate_pod,
    webhook_process,
)
from primus_lens_inject.config import Config
from primus_lens_inject.k8s import admission, sidecar

NAMESPACE = "primus-lens"
SIDECARS = "1.30.0"  # a Kubernetes with native sidecars (1.29+)
NEWEST = "1.37.0"
IMAGE = "ghcr.io/amd-agi/primus-lens-inject:0.1.0"
RECORDS = "/var/lib/primus-lens/records"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("helm-home")


def webhook_config(docs: List[Dict[str, Any]]) -> Dict[str, Any]:
    return json.loads(only(docs, "ConfigMap")["data"]["config.json"])


def kube_objects(docs: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The objects whose schemas kubernetes-validate has (not the operators' CRDs)."""
    return [d for d in docs if d["kind"] not in ("PodMonitor", "VMPodScrape")]


@contextlib.contextmanager
def chart_webhook(docs: List[Dict[str, Any]], tmp: Path) -> Iterator[Tuple[WebhookCaller,
                                                                           WebhookProcess]]:
    """The webhook process as the chart deploys it, and the API server's client for it."""
    secret = only(docs, "Secret")
    [hook, *_] = only(docs, "MutatingWebhookConfiguration")["webhooks"]
    service = hook["clientConfig"]["service"]
    with webhook_process(tmp, webhook_config(docs), pem_of(secret["data"]["tls.crt"]),
                         pem_of(secret["data"]["tls.key"])) as running:
        yield WebhookCaller(running.port, pem_of(hook["clientConfig"]["caBundle"]),
                            f"{service['name']}.{service['namespace']}.svc",
                            path=service["path"], timeout_s=hook["timeoutSeconds"]), running


def admit(caller: WebhookCaller, pod: Dict[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    reply = caller.review(admission_review(pod))
    return reply, apply_response(pod, reply)


def plain(env: Dict[str, Dict[str, Any]]) -> Dict[str, str]:
    return {name: entry["value"] for name, entry in env.items() if "value" in entry}


# -- the form follows the cluster, or the value ----------------------------------------------------

@pytest.mark.parametrize("version, values, mode", [
    (K8S_MIN, [], "off"),  # no native sidecars before 1.29: no agent unless asked for
    ("1.28.9", [], "off"),
    ("1.29.0", [], "sidecar"),
    (NEWEST, [], "sidecar"),
    (K8S_MIN, ["--set", "agent.mode=container"], "container"),
    (SIDECARS, ["--set", "agent.mode=container"], "container"),
    (SIDECARS, ["--set", "agent.mode=off"], "off"),
])
def test_agent_mode_follows_the_cluster_version(home: Path, version: str, values: List[str],
                                                mode: str) -> None:
    docs = render(home, *values, kube_version=version)
    settings = admission.Settings.from_mapping(webhook_config(docs))
    assert settings.agent.mode == mode
    assert settings.agent.port == 9470
    assert settings.agent.records_path == RECORDS
    assert settings.agent.prometheus_annotations and settings.agent.readiness_probe
    for doc in kube_objects(docs):
        validate(doc, version)


@pytest.mark.parametrize("values", [
    ["--set", "agent.mode=container"],
    ["--set", "agent.prometheus.podMonitor.enabled=true,agent.prometheus.vmPodScrape.enabled=true"],
])
def test_lint_strict_with_the_agent_values(home: Path, values: List[str]) -> None:
    proc = helm("lint", "--strict", str(CHART), *values, home=home)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[WARNING]" not in proc.stdout and "[ERROR]" not in proc.stdout


@pytest.mark.parametrize("setting, complaint", [
    ("agent.mode=always", "/agent/mode"),
    ("agent.port=0", "/agent/port"),
    ("agent.recordsPath=records", "/agent/recordsPath"),
    ("agent.recordsSizeLimit=lots", "/agent/recordsSizeLimit"),
    ("agent.readinessProbe=maybe", "/agent/readinessProbe"),
    ("agent.prometheus.podMonitor.interval=often", "/agent/prometheus/podMonitor/interval"),
    ("agent.prometheus.vmPodScrape.labels.team=a b", "/agent/prometheus/vmPodScrape/labels/team"),
])
def test_agent_values_schema_rejects(home: Path, setting: str, complaint: str) -> None:
    proc = helm("template", "x", str(CHART), "--kube-version", SIDECARS, "--set", setting,
                home=home)
    assert proc.returncode != 0
    assert complaint in proc.stderr, proc.stderr


def test_agent_values_flow_into_the_webhook_settings(home: Path) -> None:
    docs = render(home, "--set", "agent.mode=container,agent.port=9555,agent.recordsPath=/lens/rec,"
                  "agent.recordsSizeLimit=8Gi,agent.readinessProbe=false,"
                  "agent.prometheus.annotations=false,agent.resources.limits.memory=1Gi",
                  kube_version=SIDECARS)
    settings = admission.Settings.from_mapping(webhook_config(docs))
    assert settings.agent == sidecar.AgentSettings(
        mode="container", port=9555, records_path="/lens/rec", records_size_limit="8Gi",
        resources={"requests": {"cpu": "50m", "memory": "96Mi"},
                   "limits": {"cpu": "1", "memory": "1Gi"}},
        security_context=sidecar.AgentSettings().security_context,
        readiness_probe=False, prometheus_annotations=False)

    def checksum(rendered: List[Dict[str, Any]]) -> str:
        return only(rendered, "Deployment")["spec"]["template"]["metadata"]["annotations"][
            "checksum/config"]

    assert checksum(docs) != checksum(render(home, kube_version=SIDECARS)), (
        "a changed agent setting rolls the webhook's pods")


# -- the monitor templates -----------------------------------------------------------------------

def test_monitor_templates_are_off_by_default(home: Path) -> None:
    kinds = {doc["kind"] for doc in render(home, kube_version=SIDECARS)}
    assert not kinds & {"PodMonitor", "VMPodScrape"}


def test_monitor_templates_select_the_agents_metrics_port(home: Path) -> None:
    docs = render(home, "--set", "agent.prometheus.podMonitor.enabled=true,"
                  "agent.prometheus.podMonitor.labels.release=kube-prometheus-stack,"
                  "agent.prometheus.vmPodScrape.enabled=true,agent.prometheus.vmPodScrape.interval=15s",
                  kube_version=SIDECARS)
    monitor, scrape = only(docs, "PodMonitor"), only(docs, "VMPodScrape")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert scrape["apiVersion"] == "operator.victoriametrics.com/v1beta1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    for doc, interval in ((monitor, "30s"), (scrape, "15s")):
        assert doc["metadata"]["namespace"] == NAMESPACE
        spec = doc["spec"]
        assert spec["namespaceSelector"] == {"any": True}
        assert spec["podMetricsEndpoints"] == [
            {"port": sidecar.PORT_NAME, "path": "/metrics", "interval": interval}]
        assert spec["selector"] == {"matchLabels": {admission.AGENT_KEY: "true"}}
    for doc in kube_objects(docs):
        validate(doc, SIDECARS)

    # the pods they select are those the webhook gave an agent, on the port it named
    settings = admission.Settings.from_mapping(webhook_config(docs))
    pod = load_pod("safe-pytorchjob-pod.yaml")
    reply, _ = admission.review(json.dumps(admission_review(pod)).encode(), settings)
    patched = apply_response(pod, reply)
    labels = patched["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    [agent] = [c for c in patched["spec"]["initContainers"] if c.get("args") == sidecar.ARGS]
    assert [p["name"] for p in agent["ports"]] == [sidecar.PORT_NAME]


# -- the real webhook process on a SaFE pod, in both forms ---------------------------------------

def check_agent(agent: Dict[str, Any], trainer: Dict[str, Any], drain: str = "25",
                form: str = "sidecar") -> None:
    """The agent's container: our image running `primus-lens agent` (a regular container ends
    by itself once the trainers are gone: a Job's pod completes), the port, probes, limits, the
    records at the trainer's path, the trainer's identity and sink settings."""
    assert agent["name"] == "primus-lens-agent"
    assert agent["image"] == IMAGE and agent["args"] == (
        ["agent", "--exit-when-done"] if form == "container" else ["agent"])
    assert agent["ports"] == [{"name": "metrics", "containerPort": 9470, "protocol": "TCP"}]
    assert agent["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert agent["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert "startupProbe" not in agent, "a sidecar's startup probe would hold the trainers back"
    assert set(agent["resources"]) == {"requests", "limits"}
    context = agent["securityContext"]
    assert "runAsUser" not in context and context["runAsNonRoot"] is True, (
        "the image's non-root user, though SaFE's trainers run as root")
    assert context["readOnlyRootFilesystem"] is True and context["capabilities"] == {
        "drop": ["ALL"]}
    assert context["allowPrivilegeEscalation"] is False
    assert agent["volumeMounts"] == [{"name": "primus-lens-records", "mountPath": RECORDS}]
    env, trainer_env = env_of(agent), env_of(trainer)
    assert plain(env)["PRIMUS_LENS_WANDB_OUTPUT_PATH"] == RECORDS
    assert plain(env)["PRIMUS_LENS_AGENT_PORT"] == "9470"
    assert plain(env)["PRIMUS_LENS_AGENT_DRAIN_SECONDS"] == drain
    assert "PRIMUS_LENS_AGENT" not in env, "the agent is not a trainer"
    for name in ("POD_NAME", "POD_UID", "POD_NAMESPACE", "NODE_NAME",
                 "PRIMUS_LENS_WANDB_API_REPORTING", "PRIMUS_LENS_API_PRESET"):
        assert env[name] == trainer_env[name], name
    config = Config.from_env(plain(env))
    assert (config.output_path, config.agent_port, config.agent_drain_seconds) == (
        RECORDS, 9470, float(drain))
    assert not config.agent
    assert set(env) <= KNOWN_ENV | {"POD_NAME", "POD_UID", "POD_NAMESPACE", "NODE_NAME"}


def check_trainer(trainer: Dict[str, Any]) -> None:
    """The trainer records into the shared root and leaves the sending to the agent."""
    assert {"name": "primus-lens-records", "mountPath": RECORDS} in trainer["volumeMounts"]
    config = Config.from_env(plain(env_of(trainer)))
    assert config.agent is True
    assert config.output_path == RECORDS
    assert config.agent_port == 9470


@pytest.mark.parametrize("version, values, form", [
    (SIDECARS, [], "sidecar"),
    (NEWEST, [], "sidecar"),
    (K8S_MIN, ["--set", "agent.mode=container"], "container"),
])
def test_webhook_puts_the_agent_into_a_safe_pod(home: Path, tmp_path: Path, version: str,
                                                values: List[str], form: str) -> None:
    docs = render(home, "--set", "reporting.apiPreset=robust", *values, kube_version=version)
    safe = load_pod("safe-pytorchjob-pod.yaml")
    with chart_webhook(docs, tmp_path) as (caller, running):
        reply, patched = admit(caller, safe)
        again_reply, again = admit(caller, patched)
        opted_out = load_pod("opted-out-pod.yaml")
        assert admit(caller, opted_out)[1] == opted_out
    assert "warnings" not in reply["response"]
    validate_pod(patched, version)
    assert "patch" not in again_reply["response"] and again == patched, "re-admission: no change"

    spec = patched["spec"]
    trainer, exporter, *agents = spec["containers"]
    assert exporter == safe["spec"]["containers"][1], "SaFE's log exporter is left alone"
    inits = [c["name"] for c in spec["initContainers"]]
    if form == "sidecar":
        assert inits == ["init-launcher", "primus-lens-inject", "primus-lens-agent"], (
            "after SaFE's launcher and after our copy")
        agent = spec["initContainers"][-1]
        assert agent["restartPolicy"] == "Always"
        assert agents == []
    else:
        assert inits == ["init-launcher", "primus-lens-inject"]
        [agent] = agents
        assert "restartPolicy" not in agent
    check_agent(agent, trainer, form=form)
    check_trainer(trainer)
    assert {"name": "primus-lens-records", "emptyDir": {}} in spec["volumes"]
    metadata = patched["metadata"]
    assert metadata["labels"][admission.AGENT_KEY] == "true"
    assert {key: metadata["annotations"][key] for key in admission.PROMETHEUS_KEYS} == {
        "prometheus.io/scrape": "true", "prometheus.io/port": "9470",
        "prometheus.io/path": "/metrics"}

    decisions = [json.loads(line) for line in running.logs if '"admission"' in line]
    assert [(d["decision"], d.get("agent")) for d in decisions] == [
        ("injected", form), ("already injected", "present"),
        ("opted out by the annotation primus-lens.amd.com/inject", None)]


def test_webhook_shares_a_pods_own_record_volume_with_the_agent(home: Path,
                                                                 tmp_path: Path) -> None:
    """The pod keeps its records on its own volume: the agent mounts that volume at the same
    place, runs as the pod's user, sends where the trainer would, and drains within the pod's
    grace period."""
    docs = render(home, kube_version=SIDECARS)
    pod = load_pod("own-output-path-pod.yaml")
    with chart_webhook(docs, tmp_path) as (caller, _):
        reply, patched = admit(caller, pod)
        assert admit(caller, patched)[1] == patched
    assert "warnings" not in reply["response"]
    validate_pod(patched, SIDECARS)
    [trainer] = patched["spec"]["containers"]
    agent = patched["spec"]["initContainers"][-1]
    assert agent["volumeMounts"] == [{"name": "scratch", "mountPath": "/scratch"}]
    assert [v["name"] for v in patched["spec"]["volumes"]] == ["scratch", "primus-lens-inject"], (
        "no records emptyDir: the pod's volume holds them")
    env = plain(env_of(agent))
    assert env["PRIMUS_LENS_WANDB_OUTPUT_PATH"] == "/scratch/sft-run-7/lens"
    assert env["PRIMUS_LENS_API_BASE_URL"] == "http://lens.research.svc:8989/v1"
    assert env["PRIMUS_LENS_AGENT_DRAIN_SECONDS"] == "115"
    assert (agent["securityContext"]["runAsUser"], agent["securityContext"]["runAsGroup"]) == (
        1000, 1000)
    trainer_env = plain(env_of(trainer))
    assert trainer_env["PRIMUS_LENS_AGENT"] == "true"
    assert trainer_env["PRIMUS_LENS_WANDB_OUTPUT_PATH"] == "/scratch/sft-run-7/lens"
    assert [m["name"] for m in trainer["volumeMounts"]] == ["scratch", "primus-lens-inject"]
