"""The Helm chart, checked offline with the real helm binary and the Kubernetes schemas.

``helm lint --strict`` and ``helm template`` run for the default values and for a file that moves
every knob; each rendered object is validated strictly against the schemas of the oldest
supported Kubernetes (and the newest one bundled), and the rules no schema encodes (the
webhook's enums and ranges, selectors, TLS names, wiring between objects) are asserted here.
A tiny fake API server answers helm's lookups to show that the generated CA survives upgrades.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest
import yaml
from cryptography import x509

from k8s.support import (
    CHART,
    FIXTURES,
    K8S_MIN,
    KNOWN_ENV,
    FakeKubeAPI,
    admission_review,
    apply_response,
    as_installed,
    helm,
    only,
    render,
    render_against,
    validate,
    validate_pod,
)
from primus_lens_inject.config import API_PRESETS, Config
from primus_lens_inject.k8s import admission
from primus_lens_inject.report.otlp import sink as otlp_sink

NAMESPACE = "primus-lens"
NEWEST = "1.37.0"
NONDEFAULT = str(FIXTURES / "values-nondefault.yaml")
NOT_AFTER = "primus-lens.amd.com/not-after-unix"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("helm-home")


@pytest.fixture(scope="module")
def default(home: Path) -> List[Dict[str, Any]]:
    return render(home, release="lens", namespace=NAMESPACE)


@pytest.fixture(scope="module")
def nondefault(home: Path) -> List[Dict[str, Any]]:
    return render(home, "-f", NONDEFAULT, release="lens", namespace="platform")


def certificates(pem_b64: str) -> List[x509.Certificate]:
    return x509.load_pem_x509_certificates(base64.b64decode(pem_b64))


def kube_objects(docs: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The objects whose schemas kubernetes-validate has (not cert-manager's or the monitoring
    operators' CRDs)."""
    return [d for d in docs if not d["apiVersion"].startswith(
        ("cert-manager.io/", "monitoring.coreos.com/", "operator.victoriametrics.com/"))]


# -- lint and schemas -----------------------------------------------------------------------------

@pytest.mark.parametrize("values", [[], ["-f", NONDEFAULT],
                                    ["--set", "tls.certManager.enabled=true"]])
def test_lint_strict(home: Path, values: List[str]) -> None:
    proc = helm("lint", "--strict", str(CHART), *values, home=home)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout
    assert "[WARNING]" not in proc.stdout and "[ERROR]" not in proc.stdout


@pytest.mark.parametrize("version", [K8S_MIN, NEWEST])
def test_rendered_objects_match_the_kubernetes_schemas(home: Path, version: str) -> None:
    for values in ([], ["-f", NONDEFAULT], ["--set", "tls.certManager.enabled=true"]):
        docs = render(home, *values, kube_version=version)
        for doc in kube_objects(docs):
            validate(doc, version)


def test_older_kubernetes_is_refused(home: Path) -> None:
    proc = helm("template", "x", str(CHART), "--kube-version", "1.26.9", home=home)
    assert proc.returncode != 0
    assert "kubeVersion" in proc.stderr or "incompatible" in proc.stderr


@pytest.mark.parametrize("setting, complaint", [
    ("webhook.replicas=0", "/webhook/replicas"),
    ("webhook.timeoutSeconds=31", "/webhook/timeoutSeconds"),
    ("webhook.failurePolicy=Sometimes", "/webhook/failurePolicy"),
    ("webhook.reinvocationPolicy=Always", "/webhook/reinvocationPolicy"),
    ("reporting.extraEnv.PATH=/bin", "PATH"),
    ("reporting.apiBaseUrl=ftp://x", "/reporting/apiBaseUrl"),
    ("injection.mountPath=/a:/b", "/injection/mountPath"),
    ("image.digest=latest", "/image/digest"),
    ("selectors.optInLabel=bad label", "/selectors/optInLabel"),
    ("selectors.optInValue=", "/selectors/optInValue"),
    ("replicaCount=3", "replicaCount"),
    ("reporting.apiPreset=lens-robust", "/reporting/apiPreset"),
    ("injection.mainContainerAnnotation=bad key", "/injection/mainContainerAnnotation"),
    ("tls.certManager.issuerRef.kind=ClusterIssuer", "/tls/certManager/issuerRef"),
    ("selectors.byNamespaceLabel=false,selectors.byPodLabel=false", "enable byNamespaceLabel"),
    ("otlp.enabled=true", "/otlp/endpoint"),
    ("otlp.endpoint=otel-collector:4318", "/otlp/endpoint"),
    ("otlp.protocol=grpc", "/otlp/protocol"),
    ("otlp.compression=zstd", "/otlp/compression"),
    ("otlp.timeoutMs=-1", "/otlp/timeoutMs"),
    ("otlp.headersSecret.name=Bad_Name", "/otlp/headersSecret/name"),
])
def test_values_schema_rejects(home: Path, setting: str, complaint: str) -> None:
    proc = helm("template", "x", str(CHART), "--set", setting, home=home)
    assert proc.returncode != 0
    assert complaint in proc.stderr, proc.stderr


def test_renewal_window_must_be_shorter_than_validity(home: Path) -> None:
    proc = helm("template", "x", str(CHART), "--set", "tls.generated.renewDays=4000", home=home)
    assert proc.returncode != 0
    assert "renewDays must be smaller" in proc.stderr


# -- the default rendering ------------------------------------------------------------------------

def test_default_objects(default: List[Dict[str, Any]]) -> None:
    assert sorted(d["kind"] for d in default) == [
        "ConfigMap", "Deployment", "MutatingWebhookConfiguration", "PodDisruptionBudget",
        "Secret", "Service", "ServiceAccount"]
    for doc in default:
        if doc["kind"] != "MutatingWebhookConfiguration":
            assert doc["metadata"]["namespace"] == NAMESPACE


def test_webhook_registration(default: List[Dict[str, Any]]) -> None:
    registration = only(default, "MutatingWebhookConfiguration")
    service = only(default, "Service")
    hooks = {hook["name"]: hook for hook in registration["webhooks"]}
    assert set(hooks) == {"namespaces.inject.primus-lens.amd.com",
                          "pods.inject.primus-lens.amd.com"}
    for hook in hooks.values():
        assert hook["failurePolicy"] == "Ignore"
        assert hook["sideEffects"] == "None"
        assert 1 <= hook["timeoutSeconds"] <= 5, "short: the pod waits for us"
        assert hook["reinvocationPolicy"] == "IfNeeded"
        assert hook["admissionReviewVersions"] == ["v1"]
        assert hook["matchPolicy"] == "Equivalent"
        assert hook["rules"] == [{"apiGroups": [""], "apiVersions": ["v1"],
                                  "operations": ["CREATE"], "resources": ["pods"],
                                  "scope": "Namespaced"}]
        assert hook["clientConfig"]["service"] == {
            "name": service["metadata"]["name"], "namespace": NAMESPACE, "path": "/mutate",
            "port": service["spec"]["ports"][0]["port"]}
        excluded = hook["namespaceSelector"]["matchExpressions"][0]
        assert excluded == {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": [
            "kube-system", "kube-public", "kube-node-lease", "primus-safe", "primus-lens",
            "primus-robust", "primus-safe-observability", "kube-amd-gpu"]}, (
            "the system's, the platform's and the GPU operator's namespaces, and ourselves")

    by_namespace = hooks["namespaces.inject.primus-lens.amd.com"]
    assert by_namespace["namespaceSelector"]["matchLabels"] == {
        "primus-lens.amd.com/inject": "enabled"}
    assert by_namespace["objectSelector"] == {"matchExpressions": [
        {"key": "primus-lens.amd.com/inject", "operator": "NotIn", "values": ["disabled"]}]}

    by_pod = hooks["pods.inject.primus-lens.amd.com"]
    assert by_pod["objectSelector"] == {"matchLabels": {"primus-lens.amd.com/inject": "enabled"}}
    assert {"key": "primus-lens.amd.com/inject", "operator": "NotIn", "values": ["enabled"]} in (
        by_pod["namespaceSelector"]["matchExpressions"]), "one call per pod, not two"


def test_generated_tls_secret_and_ca_bundle(default: List[Dict[str, Any]]) -> None:
    secret = only(default, "Secret")
    registration = only(default, "MutatingWebhookConfiguration")
    assert secret["type"] == "kubernetes.io/tls"
    [ca] = certificates(secret["data"]["ca.crt"])
    [leaf] = certificates(secret["data"]["tls.crt"])
    leaf.verify_directly_issued_by(ca)
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    service = "lens-primus-lens-inject"
    assert set(names.get_values_for_type(x509.DNSName)) == {
        service, f"{service}.{NAMESPACE}", f"{service}.{NAMESPACE}.svc",
        f"{service}.{NAMESPACE}.svc.cluster.local"}
    for hook in registration["webhooks"]:
        assert hook["clientConfig"]["caBundle"] == secret["data"]["ca.crt"]
    not_after = int(secret["metadata"]["annotations"][NOT_AFTER])
    assert abs(not_after - leaf.not_valid_after_utc.timestamp()) < 2 * 86400
    assert not_after > time.time() + 3000 * 86400


def test_webhook_deployment(default: List[Dict[str, Any]]) -> None:
    deployment = only(default, "Deployment")
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    [container] = pod["containers"]
    assert spec["replicas"] == 2
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["automountServiceAccountToken"] is False
    context = container["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert set(container["resources"]) == {"requests", "limits"}
    assert container["image"] == "ghcr.io/amd-agi/primus-lens-inject:0.1.0"
    assert container["args"][0] == "webhook"
    args = dict(arg.split("=", 1) for arg in container["args"][1:])
    assert args["--port"] == str(container["ports"][0]["containerPort"]) == "8443"
    assert container["ports"][0]["name"] == "https"
    for probe in (container["readinessProbe"], container["livenessProbe"]):
        assert probe["httpGet"] == {"path": "/healthz", "port": "https", "scheme": "HTTPS"}
    assert pod["terminationGracePeriodSeconds"] > float(args["--shutdown-delay"])
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert args["--tls-cert"].startswith("/tls/") and mounts["/tls"] == "tls"
    assert volumes["tls"]["secret"]["secretName"] == only(default, "Secret")["metadata"]["name"]
    assert args["--config"] == "/config/config.json" and mounts["/config"] == "config"
    assert volumes["config"]["configMap"]["name"] == only(default, "ConfigMap")["metadata"]["name"]
    assert pod["serviceAccountName"] == only(default, "ServiceAccount")["metadata"]["name"]
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    assert only(default, "Service")["spec"]["selector"].items() <= labels.items()
    assert only(default, "Service")["spec"]["ports"][0]["targetPort"] == "https"
    budget = only(default, "PodDisruptionBudget")["spec"]
    assert budget == {"minAvailable": 1, "selector": spec["selector"]}
    config = only(default, "ConfigMap")["data"]["config.json"]
    checksum = spec["template"]["metadata"]["annotations"]["checksum/config"]
    assert checksum == hashlib.sha256(config.rstrip("\n").encode()).hexdigest()


def test_config_is_what_the_webhook_reads(default: List[Dict[str, Any]]) -> None:
    config = json.loads(only(default, "ConfigMap")["data"]["config.json"])
    settings = admission.Settings.from_mapping(config)
    assert settings.image == "ghcr.io/amd-agi/primus-lens-inject:0.1.0"
    assert settings.mount_dir == "/opt/primus-lens"
    assert dict(settings.env) == {"PRIMUS_LENS_WANDB_API_REPORTING": "true"}, (
        "no endpoint: the injector's default preset applies; no OTLP")
    assert settings.secret_env == ()
    assert admission.unknown_env_names(settings, KNOWN_ENV) == []
    assert settings.downward_api and settings.workload_uid_from_annotation
    assert settings.main_container_annotation == "primus-safe.main.container"
    assert settings.init_security_context["runAsNonRoot"] is True


# -- every knob moved -----------------------------------------------------------------------------

def test_nondefault_values(nondefault: List[Dict[str, Any]]) -> None:
    kinds = sorted(d["kind"] for d in nondefault)
    assert kinds == ["Certificate", "ConfigMap", "Deployment", "MutatingWebhookConfiguration",
                     "PodMonitor", "Service", "VMPodScrape"], (
        "no Secret (cert-manager), no PDB (1 replica), no SA (create: false)")
    registration = only(nondefault, "MutatingWebhookConfiguration")
    assert registration["metadata"]["annotations"] == {
        "cert-manager.io/inject-ca-from": "platform/lens-injector"}
    [hook] = registration["webhooks"]
    assert hook["name"] == "pods.inject.primus-lens.amd.com"
    assert "caBundle" not in hook["clientConfig"]
    assert hook["timeoutSeconds"] == 3
    assert hook["reinvocationPolicy"] == "Never"
    assert hook["failurePolicy"] == "Ignore"
    assert hook["objectSelector"] == {
        "matchLabels": {"lens.example.com/telemetry": "on"},
        "matchExpressions": [{"key": "training.kubeflow.org/job-name", "operator": "Exists"}]}
    assert hook["namespaceSelector"]["matchExpressions"] == [
        {"key": "kubernetes.io/metadata.name", "operator": "NotIn",
         "values": ["kube-system", "monitoring", "platform"]},
        {"key": "lens.example.com/telemetry", "operator": "NotIn", "values": ["on"]}]

    certificate = only(nondefault, "Certificate")
    assert certificate["metadata"]["name"] == "lens-injector"
    assert certificate["spec"]["secretName"] == "lens-injector-tls"
    assert certificate["spec"]["issuerRef"] == {"name": "platform-ca", "kind": "ClusterIssuer",
                                               "group": "cert-manager.io"}
    assert "lens-injector.platform.svc" in certificate["spec"]["dnsNames"]
    assert certificate["spec"]["duration"] == "2160h"

    deployment = only(nondefault, "Deployment")["spec"]
    pod = deployment["template"]["spec"]
    [container] = pod["containers"]
    assert deployment["replicas"] == 1
    assert container["image"] == ("registry.internal.example.com/platform/primus-lens-inject@"
                                  "sha256:3f1c9a7be0d4c2b6a9e8f7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c5"
                                  "b4a392")
    assert container["imagePullPolicy"] == "Always"
    assert "--port=9443" in container["args"] and "--log-level=debug" in container["args"]
    assert container["ports"][0]["containerPort"] == 9443
    assert pod["serviceAccountName"] == "lens-injector"
    assert pod["imagePullSecrets"] == [{"name": "internal-registry"}]
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["topologySpreadConstraints"][0]["topologyKey"] == "topology.kubernetes.io/zone"
    assert [v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v] == [
        "lens-injector-tls"]

    settings = admission.Settings.from_mapping(
        json.loads(only(nondefault, "ConfigMap")["data"]["config.json"]))
    assert settings.image == container["image"]
    assert settings.image_pull_policy == "Always"
    assert settings.mount_dir == "/lens/injector"
    assert settings.volume_size_limit == "32Mi"
    assert dict(settings.env) == {
        "PRIMUS_LENS_API_BASE_URL": "https://lens.example.com/api/v1",
        "PRIMUS_LENS_API_PRESET": "robust",
        "PRIMUS_LENS_WANDB_API_REPORTING": "false",
        "PRIMUS_LENS_WANDB_OUTPUT_PATH": "/scratch/lens",
        "PRIMUS_LENS_WANDB_ENHANCE_METRICS": "true", "PRIMUS_LENS_GPU_SCOPE": "node",
        "PRIMUS_LENS_OTLP": "true",
        "PRIMUS_LENS_OTLP_ENDPOINT": "https://otel-collector.observability.svc:4318",
        "PRIMUS_LENS_OTLP_PROTOCOL": "http/json", "PRIMUS_LENS_OTLP_COMPRESSION": "gzip",
        "PRIMUS_LENS_OTLP_TIMEOUT": "20000",
        "PRIMUS_LENS_OTLP_RESOURCE_ATTRIBUTES": "k8s.cluster.name=mi300x-a,deployment.environment=prod"}
    assert settings.secret_env == (("PRIMUS_LENS_OTLP_HEADERS", "otlp-token", "authorization"),)
    assert not settings.downward_api and not settings.workload_uid_from_annotation
    assert settings.main_container_annotation == ""
    assert settings.init_resources == {"requests": {"cpu": "5m", "memory": "16Mi"},
                                       "limits": {"memory": "64Mi"}}
    assert "runAsUser" not in settings.init_security_context
    assert settings.init_security_context["runAsNonRoot"] is True
    agent = settings.agent
    assert (agent.mode, agent.port, agent.records_path, agent.records_size_limit) == (
        "container", 9555, "/lens/records", "8Gi")
    assert agent.resources == {"requests": {"cpu": "20m", "memory": "64Mi"},
                               "limits": {"memory": "256Mi"}}
    assert agent.security_context["readOnlyRootFilesystem"] is True
    assert not agent.readiness_probe and not agent.prometheus_annotations
    assert only(nondefault, "PodMonitor")["spec"]["podMetricsEndpoints"][0]["interval"] == "15s"
    assert only(nondefault, "PodMonitor")["metadata"]["labels"]["release"] == (
        "kube-prometheus-stack")
    assert only(nondefault, "VMPodScrape")["spec"]["podMetricsEndpoints"][0]["interval"] == "1m"


def test_cert_manager_with_the_charts_own_ca(home: Path) -> None:
    docs = render(home, "--set", "tls.certManager.enabled=true", release="lens",
                  namespace=NAMESPACE)
    by_name = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    assert by_name[("Issuer", "lens-primus-lens-inject-selfsigned")]["spec"] == {"selfSigned": {}}
    ca = by_name[("Certificate", "lens-primus-lens-inject-ca")]["spec"]
    assert ca["isCA"] is True and ca["issuerRef"]["name"] == "lens-primus-lens-inject-selfsigned"
    assert by_name[("Issuer", "lens-primus-lens-inject-ca")]["spec"] == {
        "ca": {"secretName": ca["secretName"]}}
    serving = by_name[("Certificate", "lens-primus-lens-inject")]["spec"]
    assert serving["issuerRef"] == {"name": "lens-primus-lens-inject-ca", "kind": "Issuer",
                                    "group": "cert-manager.io"}
    assert serving["secretName"] == "lens-primus-lens-inject-tls"
    registration = only(docs, "MutatingWebhookConfiguration")
    assert registration["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == (
        f"{NAMESPACE}/lens-primus-lens-inject")
    assert not [d for d in docs if d["kind"] == "Secret"]


# -- upgrades: the generated CA is looked up and kept ---------------------------------------------

def test_generated_tls_survives_an_upgrade(home: Path) -> None:
    with FakeKubeAPI() as api:
        first = only(render_against(api, home), "Secret")
    key = (NAMESPACE, first["metadata"]["name"])
    with FakeKubeAPI({key: as_installed(first)}) as api:
        docs = render_against(api, home)
        assert f"/api/v1/namespaces/{NAMESPACE}/secrets/{key[1]}" in api.requests
    assert only(docs, "Secret") == first
    for hook in only(docs, "MutatingWebhookConfiguration")["webhooks"]:
        assert hook["clientConfig"]["caBundle"] == first["data"]["ca.crt"]


def test_generated_tls_is_renewed_near_expiry_and_both_cas_trusted(home: Path) -> None:
    with FakeKubeAPI() as api:
        old = only(render_against(api, home), "Secret")
    old["metadata"]["annotations"][NOT_AFTER] = str(int(time.time()) + 10 * 86400)
    with FakeKubeAPI({(NAMESPACE, old["metadata"]["name"]): as_installed(old)}) as api:
        docs = render_against(api, home)
    new = only(docs, "Secret")
    assert new["data"]["ca.crt"] != old["data"]["ca.crt"]
    [new_ca] = certificates(new["data"]["ca.crt"])
    [old_ca] = certificates(old["data"]["ca.crt"])
    [leaf] = certificates(new["data"]["tls.crt"])
    leaf.verify_directly_issued_by(new_ca)
    for hook in only(docs, "MutatingWebhookConfiguration")["webhooks"]:
        assert certificates(hook["clientConfig"]["caBundle"]) == [new_ca, old_ca]


# -- SaFE clusters --------------------------------------------------------------------------------

def selects(selector: Dict[str, Any], labels: Dict[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels and matchExpressions) applied to ``labels``."""
    if any(labels.get(key) != value for key, value in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator = expression["key"], expression["operator"]
        present = key in labels
        matched = {"In": present and labels[key] in expression.get("values", []),
                   "NotIn": not present or labels[key] not in expression.get("values", []),
                   "Exists": present, "DoesNotExist": not present}[operator]
        if not matched:
            return False
    return True


def calling_webhooks(registration: Dict[str, Any], namespace: Dict[str, str],
                     pod: Dict[str, Any]) -> List[str]:
    """The webhooks the API server calls for ``pod`` created in a namespace with these labels."""
    return [hook["name"] for hook in registration["webhooks"]
            if selects(hook["namespaceSelector"], namespace)
            and selects(hook["objectSelector"], pod["metadata"].get("labels") or {})]


def test_safe_pod_gets_only_its_main_container_and_the_robust_preset(home: Path) -> None:
    """On a SaFE cluster: the Workload's label (copied to its pods) opts a pod in wherever it
    runs; the platform's namespaces are never called; the main container alone is injected."""
    docs = render(home, "--set", "reporting.apiPreset=robust", release="lens",
                  namespace="primus-lens")
    registration = only(docs, "MutatingWebhookConfiguration")
    pod = yaml.safe_load((FIXTURES / "safe-pytorchjob-pod.yaml").read_text())
    workspace = {"kubernetes.io/metadata.name": pod["metadata"]["namespace"]}
    assert calling_webhooks(registration, workspace, pod) == ["pods.inject.primus-lens.amd.com"]
    labelled = {**workspace, "primus-lens.amd.com/inject": "enabled"}
    assert calling_webhooks(registration, labelled, pod) == [
        "namespaces.inject.primus-lens.amd.com"], "one call per pod, not two"
    for platform in ("primus-safe", "primus-lens", "primus-robust", "primus-safe-observability",
                     "kube-amd-gpu"):
        namespace = {"kubernetes.io/metadata.name": platform, "primus-lens.amd.com/inject": "enabled"}
        assert calling_webhooks(registration, namespace, pod) == [], platform

    settings = admission.Settings.from_mapping(
        json.loads(only(docs, "ConfigMap")["data"]["config.json"]))
    reply, outcome = admission.review(json.dumps(admission_review(pod)).encode(), settings)
    patched = apply_response(pod, reply)
    validate_pod(patched)
    assert outcome.injected == ["pytorch"] and outcome.skipped == {}
    main, exporter = patched["spec"]["containers"]
    assert exporter == pod["spec"]["containers"][1]
    env = {entry["name"]: entry.get("value") for entry in main["env"]}
    assert env["PRIMUS_LENS_API_PRESET"] == "robust"
    assert "PRIMUS_LENS_API_BASE_URL" not in env
    assert Config.from_env({k: v for k, v in env.items() if v is not None}).api_base_url == (
        API_PRESETS["robust"])
    assert admission.unknown_env_names(settings, KNOWN_ENV) == []


def test_otlp_value_points_injected_pods_at_a_collector(home: Path) -> None:
    """otlp.enabled: the webhook gives each selected container the sink's switch and its
    PRIMUS_LENS_OTLP_* settings next to the downward API identity the sink turns into k8s.*
    resource attributes; a container's own settings stay."""
    docs = render(home, "--set", "otlp.enabled=true,otlp.endpoint=http://otel-collector.observability.svc:4318,"
                  "otlp.headersSecret.name=otlp-headers")
    settings = admission.Settings.from_mapping(json.loads(only(docs, "ConfigMap")["data"]["config.json"]))
    pod = yaml.safe_load((FIXTURES / "pytorchjob-worker.yaml").read_text())
    own = {"name": "PRIMUS_LENS_OTLP_RESOURCE_ATTRIBUTES", "value": "team=a"}
    pod["spec"]["containers"][0].setdefault("env", []).append(own)
    reply, outcome = admission.review(json.dumps(admission_review(pod)).encode(), settings)
    patched = apply_response(pod, reply)
    validate_pod(patched)
    assert outcome.injected == [pod["spec"]["containers"][0]["name"]]
    env = {entry["name"]: entry for entry in patched["spec"]["containers"][0]["env"]}
    assert {name: env[name].get("value") for name in (
        "PRIMUS_LENS_OTLP", "PRIMUS_LENS_OTLP_ENDPOINT", "PRIMUS_LENS_OTLP_PROTOCOL")} == {
        "PRIMUS_LENS_OTLP": "true",
        "PRIMUS_LENS_OTLP_ENDPOINT": "http://otel-collector.observability.svc:4318",
        "PRIMUS_LENS_OTLP_PROTOCOL": "http/protobuf"}
    assert env["PRIMUS_LENS_OTLP_HEADERS"]["valueFrom"] == {
        "secretKeyRef": {"name": "otlp-headers", "key": "headers", "optional": True}}
    assert env["PRIMUS_LENS_OTLP_RESOURCE_ATTRIBUTES"] == own
    assert {name: env[name]["valueFrom"]["fieldRef"]["fieldPath"] for name in (
        "POD_NAME", "POD_UID", "POD_NAMESPACE", "NODE_NAME")} == {
        "POD_NAME": "metadata.name", "POD_UID": "metadata.uid", "POD_NAMESPACE": "metadata.namespace",
        "NODE_NAME": "spec.nodeName"}
    assert "PRIMUS_LENS_OTLP_COMPRESSION" not in env and "PRIMUS_LENS_OTLP_TIMEOUT" not in env
    assert admission.unknown_env_names(settings, KNOWN_ENV) == []
    config = Config.from_env({name: entry["value"] for name, entry in env.items() if "value" in entry})
    assert config.otlp and config.otlp_endpoint == "http://otel-collector.observability.svc:4318"


def test_injected_containers_get_no_opentelemetry_variable(home: Path) -> None:
    """Every OTLP knob on and the headers from a Secret: no injected container gets an OTEL_*
    variable, which wandb's own OpenTelemetry exporter (and any other SDK in the pod) would read
    and send to its own destination; the sink still finds every setting under our names."""
    docs = render(home, "-f", NONDEFAULT, "--set", "identity.downwardAPI=true")
    config_json = only(docs, "ConfigMap")["data"]["config.json"]
    assert "OTEL_" not in config_json
    settings = admission.Settings.from_mapping(json.loads(config_json))
    pod = yaml.safe_load((FIXTURES / "pytorchjob-worker.yaml").read_text())
    reply, outcome = admission.review(json.dumps(admission_review(pod)).encode(), settings)
    patched = apply_response(pod, reply)
    validate_pod(patched)
    assert outcome.injected
    containers = patched["spec"]["containers"] + patched["spec"].get("initContainers", [])
    names = [entry["name"] for container in containers for entry in container.get("env", [])]
    assert [name for name in names if name.startswith("OTEL_")] == []
    for container in patched["spec"]["containers"]:
        if container["name"] not in outcome.injected:
            continue
        env = {entry["name"]: entry for entry in container["env"]}
        assert env["PRIMUS_LENS_OTLP_HEADERS"]["valueFrom"]["secretKeyRef"]["name"] == "otlp-token"
        plain = {name: entry["value"] for name, entry in env.items() if "value" in entry}
        s = otlp_sink.settings(Config.from_env({**plain, "PRIMUS_LENS_OTLP_HEADERS": "a=b"}))
        assert (s.endpoint, s.protocol, s.gzip, s.timeout, s.headers) == (
            "https://otel-collector.observability.svc:4318/v1/metrics", "http/json", True, 20.0,
            (("a", "b"),))
        assert dict(s.resource_attributes) == {"k8s.cluster.name": "mi300x-a",
                                               "deployment.environment": "prod"}
