"""The pod agent's rules in the admission decision, each on the smallest pod that shows it.

Where the records lie and who shares them, what the agent inherits from the trainer, the drain
budget from the pod's grace period, opt-outs, names and ports the pod already uses, and
re-admission.  ``admission.review`` is called directly (the TLS round trips and the chart are in
``test_agent_injection.py``); every patched pod is validated as the API server would.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional

import pytest

from k8s.support import admission_review, apply_response, env_of, load_pod, validate_pod
from k8s.support import small_pod as pod
from primus_lens_inject.k8s import admission, sidecar

SIDECARS = "1.30.0"
RECORDS = "/var/lib/primus-lens/records"


# The chart names the trainers' user (agent.securityContext), as a cluster whose pods do not
# name it must: only then do trainers leave the sending to the agent.
TRAINERS_USER = {**sidecar.AgentSettings().security_context, "runAsUser": 1000, "runAsGroup": 1000}


def settings(mode: str = "sidecar", **agent: Any) -> admission.Settings:
    return admission.Settings.from_mapping({
        "image": "reg.example.com/pli:1", "env": {"PRIMUS_LENS_API_PRESET": "robust"},
        "agent": {"mode": mode, "securityContext": TRAINERS_USER, **agent}})


SIDECAR = settings()


def review(obj: Dict[str, Any], config: admission.Settings = SIDECAR) -> Dict[str, Any]:
    reply, _ = admission.review(json.dumps(admission_review(obj)).encode(), config)
    return reply


def run(obj: Dict[str, Any], config: admission.Settings = SIDECAR) -> Dict[str, Any]:
    after = apply_response(obj, review(obj, config))
    validate_pod(after, SIDECARS)
    return after


def agents(obj: Dict[str, Any]) -> List[Dict[str, Any]]:
    spec = obj["spec"]
    return [c for key in ("initContainers", "containers") for c in spec.get(key) or []
            if (c.get("args") or [])[:1] == sidecar.ARGS]


def plain(container: Dict[str, Any]) -> Dict[str, str]:
    return {name: entry["value"] for name, entry in env_of(container).items() if "value" in entry}


# -- the form ------------------------------------------------------------------------------------

def test_settings_without_an_agent_add_none() -> None:
    """The webhook's own default is off: a config file from an older chart injects as before."""
    for config in (admission.Settings.from_mapping({"image": "i"}), settings("off")):
        after = run(pod(), config)
        assert agents(after) == []
        assert "PRIMUS_LENS_AGENT" not in env_of(after["spec"]["containers"][0])
        assert "labels" not in after["metadata"]


def test_native_sidecar_comes_after_every_init_container() -> None:
    after = run(pod(initContainers=[{"name": "fetch", "image": "busybox"}]))
    assert [c["name"] for c in after["spec"]["initContainers"]] == [
        "fetch", "primus-lens-inject", "primus-lens-agent"]
    assert after["spec"]["initContainers"][-1]["restartPolicy"] == "Always"


def test_regular_container_comes_last() -> None:
    after = run(pod({"name": "a", "image": "i"}, {"name": "b", "image": "i"}), settings("container"))
    assert [c["name"] for c in after["spec"]["containers"]] == ["a", "b", "primus-lens-agent"]
    [agent] = agents(after)
    assert "restartPolicy" not in agent
    assert agent["args"] == ["agent", "--exit-when-done"], "else a Job's pod never completes"
    assert [c["name"] for c in after["spec"]["initContainers"]] == ["primus-lens-inject"]
    for trainer in after["spec"]["containers"][:2]:
        assert plain(trainer)["PRIMUS_LENS_AGENT"] == "true"
    assert run(after, settings("container")) == after, "the agent is not injected as a trainer"


def test_trainers_without_lists_of_their_own() -> None:
    """No env, no volumeMounts, no volumes, no metadata: the patch creates each list once."""
    before = {"apiVersion": "v1", "kind": "Pod", "spec": {
        "containers": [{"name": "m", "image": "i"}], "volumes": None}}
    after = run(before)
    assert [v["name"] for v in after["spec"]["volumes"]] == ["primus-lens-inject",
                                                             "primus-lens-records"]
    assert after["spec"]["containers"][0]["volumeMounts"] == [
        {"name": "primus-lens-inject", "mountPath": "/opt/primus-lens", "readOnly": True},
        {"name": "primus-lens-records", "mountPath": RECORDS}]
    assert after["metadata"]["labels"] == {admission.AGENT_KEY: "true"}
    assert run(after) == after


# -- opting out, and when there is no agent ------------------------------------------------------

@pytest.mark.parametrize("value", ["false", "off", "0"])
def test_agent_opt_out_annotation_keeps_in_process_sending(value: str) -> None:
    after = run(pod(annotations={admission.AGENT_KEY: value}))
    assert agents(after) == []
    env = plain(after["spec"]["containers"][0])
    assert "PRIMUS_LENS_AGENT" not in env and "PRIMUS_LENS_WANDB_OUTPUT_PATH" not in env
    assert env["PRIMUS_LENS_API_PRESET"] == "robust", "the injector itself still goes in"
    _, outcome = admission.review(json.dumps(admission_review(
        pod(annotations={admission.AGENT_KEY: value}))).encode(), SIDECAR)
    assert outcome.agent == f"opted out by the annotation {admission.AGENT_KEY}"


def test_the_pods_opt_out_of_the_injector_covers_the_agent() -> None:
    before = load_pod("opted-out-pod.yaml")
    assert run(before) == before


def test_own_output_path_on_no_volume_falls_back_with_a_warning() -> None:
    """Records on the container's own filesystem cannot be shared: no agent, the trainer sends."""
    before = pod({"name": "m", "image": "i", "env": [
        {"name": "PRIMUS_LENS_WANDB_OUTPUT_PATH", "value": "/workspace/lens"}]})
    reply = review(before)
    assert reply["response"]["warnings"] == [
        "primus-lens: container m sends by itself: its records (/workspace/lens) are on no "
        "volume the agent could mount"]
    after = run(before)
    assert agents(after) == [] and "primus-lens-records" not in str(after)
    assert "PRIMUS_LENS_AGENT" not in env_of(after["spec"]["containers"][0])


@pytest.mark.parametrize("entry", [
    {"name": "PRIMUS_LENS_WANDB_OUTPUT_PATH", "valueFrom": {
        "configMapKeyRef": {"name": "c", "key": "k"}}},
    {"name": "PRIMUS_LENS_WANDB_OUTPUT_PATH", "value": "relative/lens"},
])
def test_an_output_path_the_webhook_cannot_read_falls_back(entry: Dict[str, Any]) -> None:
    reply = review(pod({"name": "m", "image": "i", "env": [entry]}))
    assert reply["response"]["warnings"] == [
        "primus-lens: container m sends by itself: its PRIMUS_LENS_WANDB_OUTPUT_PATH is not an "
        "absolute path in the pod spec"]


def test_one_root_per_agent_others_send_by_themselves() -> None:
    """Two trainers on different volumes: the first decides the agent's root."""
    before = pod(
        {"name": "a", "image": "i", "volumeMounts": [{"name": "va", "mountPath": "/data"}]},
        {"name": "b", "image": "i", "env": [
            {"name": "PRIMUS_LENS_WANDB_OUTPUT_PATH", "value": "/other/lens"}],
         "volumeMounts": [{"name": "vb", "mountPath": "/other"}]},
        volumes=[{"name": "va", "emptyDir": {}}, {"name": "vb", "emptyDir": {}}])
    reply = review(before)
    assert reply["response"]["warnings"] == [
        "primus-lens: container b sends by itself: its records are not where the agent reads"]
    after = run(before)
    a, b = after["spec"]["containers"]
    assert plain(a)["PRIMUS_LENS_AGENT"] == "true"
    assert "PRIMUS_LENS_AGENT" not in plain(b)
    [agent] = agents(after)
    assert plain(agent)["PRIMUS_LENS_WANDB_OUTPUT_PATH"] == RECORDS


def test_a_port_the_pod_declares_keeps_the_agent_out() -> None:
    before = pod({"name": "m", "image": "i", "ports": [{"containerPort": 9470}]})
    assert review(before)["response"]["warnings"] == [
        "primus-lens: no agent: a container of the pod already declares port 9470 (agent.port); "
        "every container sends by itself"]
    assert agents(run(before)) == []


# -- where the records lie -----------------------------------------------------------------------

def test_chart_output_path_is_the_shared_root() -> None:
    """reporting.outputPath: the trainers' root, on our emptyDir, seen by the agent there."""
    config = admission.Settings.from_mapping({
        "image": "i", "env": {"PRIMUS_LENS_WANDB_OUTPUT_PATH": "/scratch/lens/"},
        "agent": {"mode": "sidecar", "recordsSizeLimit": "4Gi"}})
    after = run(pod(), config)
    [agent] = agents(after)
    trainer = after["spec"]["containers"][0]
    assert plain(agent)["PRIMUS_LENS_WANDB_OUTPUT_PATH"] == "/scratch/lens"
    assert [e["name"] for e in trainer["env"]].count("PRIMUS_LENS_WANDB_OUTPUT_PATH") == 1
    assert plain(trainer)["PRIMUS_LENS_WANDB_OUTPUT_PATH"] == "/scratch/lens"
    assert {"name": "primus-lens-records", "emptyDir": {"sizeLimit": "4Gi"}} in (
        after["spec"]["volumes"])
    assert agent["volumeMounts"] == [{"name": "primus-lens-records", "mountPath": "/scratch/lens"}]


def test_a_volume_the_container_mounts_above_the_root_is_shared() -> None:
    """The default root lies in a volume the trainer mounts: no emptyDir of ours, the agent
    mounts the same volume (subPath and all) at the same place."""
    mount = {"name": "state", "mountPath": "/var/lib", "subPath": "job-7", "readOnly": False}
    after = run(pod({"name": "m", "image": "i", "volumeMounts": [mount]},
                    volumes=[{"name": "state", "persistentVolumeClaim": {"claimName": "c"}}]))
    [agent] = agents(after)
    assert agent["volumeMounts"] == [{"name": "state", "mountPath": "/var/lib",
                                      "subPath": "job-7"}]
    assert [v["name"] for v in after["spec"]["volumes"]] == ["state", "primus-lens-inject"]
    assert plain(after["spec"]["containers"][0])["PRIMUS_LENS_WANDB_OUTPUT_PATH"] == RECORDS


def test_names_the_pod_uses_get_a_numbered_suffix() -> None:
    before = pod({"name": "primus-lens-agent", "image": "user/agent"},
                 volumes=[{"name": "primus-lens-records", "configMap": {"name": "x"}}])
    after = run(before)
    [agent] = agents(after)
    assert agent["name"] == "primus-lens-agent-2"
    assert agent["volumeMounts"] == [{"name": "primus-lens-records-2", "mountPath": RECORDS}]
    assert after["spec"]["volumes"][0] == before["spec"]["volumes"][0]
    assert run(after) == after


# -- what the agent inherits ---------------------------------------------------------------------

def test_agent_takes_the_trainers_identity_and_sink_settings() -> None:
    """Rows go where the trainer would send them, under the trainer's identity; the chart's
    settings (OTLP headers from a Secret among them) fill in what the trainer does not set."""
    config = admission.Settings.from_mapping({
        "image": "i", "env": {"PRIMUS_LENS_API_BASE_URL": "http://chart:1/v1",
                              "PRIMUS_LENS_OTLP": "true"},
        "secretEnv": {"PRIMUS_LENS_OTLP_HEADERS": {"name": "otlp", "key": "headers"}},
        "agent": {"mode": "sidecar"}})
    own = [{"name": "POD_NAME", "value": "fixed-name"},
           {"name": "PRIMUS_LENS_API_BASE_URL", "value": "http://own:2/v1"},
           {"name": "PRIMUS_LENS_AGENT_DRAIN_SECONDS", "value": "7"},
           {"name": "PRIMUS_LENS_AGENT", "value": "false"},
           {"name": "HOME", "value": "/root"}]
    after = run(pod({"name": "m", "image": "i", "env": own},
                    annotations={admission.WORKLOAD_UID_KEY: "w-1"}), config)
    [agent] = agents(after)
    env = env_of(agent)
    assert plain(agent)["POD_NAME"] == "fixed-name"
    assert plain(agent)["PRIMUS_LENS_API_BASE_URL"] == "http://own:2/v1"
    assert plain(agent)["PRIMUS_LENS_AGENT_DRAIN_SECONDS"] == "7", "the pod's own, kept"
    assert plain(agent)["WORKLOAD_UID"] == "w-1"
    assert plain(agent)["PRIMUS_LENS_OTLP"] == "true"
    assert env["PRIMUS_LENS_OTLP_HEADERS"]["valueFrom"]["secretKeyRef"]["name"] == "otlp"
    assert env["POD_UID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.uid"
    assert "HOME" not in env and "PRIMUS_LENS_AGENT" not in env and "PYTHONPATH" not in env
    trainer = plain(after["spec"]["containers"][0])
    assert trainer["PRIMUS_LENS_AGENT"] == "false", "the container's own setting wins"


@pytest.mark.parametrize("grace, drain", [(None, "25"), (30, "25"), (120, "115"), (10, "5"),
                                          (6, "3"), (0, "0")])
def test_drain_stays_below_the_grace_period(grace: Optional[int], drain: str) -> None:
    extra = {} if grace is None else {"terminationGracePeriodSeconds": grace}
    [agent] = agents(run(pod(**extra)))
    assert plain(agent)["PRIMUS_LENS_AGENT_DRAIN_SECONDS"] == drain


DEFAULT_CONTEXT = sidecar.AgentSettings().security_context  # the chart's: non-root, no user


@pytest.mark.parametrize("pod_context, own_context, expected", [
    ({"runAsUser": 2000, "runAsGroup": 100}, {}, {"runAsUser": 2000, "runAsGroup": 100,
                                                  "runAsNonRoot": True}),
    ({"runAsUser": 1000}, {"runAsUser": 0}, DEFAULT_CONTEXT),
    ({"runAsUser": 0, "runAsGroup": 0}, {}, DEFAULT_CONTEXT),
])
def test_agent_runs_as_the_trainers_user_unless_root(pod_context: Dict[str, Any],
                                                     own_context: Dict[str, Any],
                                                     expected: Dict[str, Any]) -> None:
    """A non-root user the pod names for the trainer is the agent's too; a root trainer does
    not make the agent root (it opens the record's directories to the agent instead); either
    way the trainer leaves the sending to the agent."""
    config = settings(securityContext=DEFAULT_CONTEXT)
    container = {"name": "m", "image": "i", "securityContext": own_context}
    after = run(pod(container, securityContext=pod_context), config)
    [agent] = agents(after)
    context = agent["securityContext"]
    assert (context if expected is DEFAULT_CONTEXT else
            {key: context[key] for key in expected}) == expected
    assert plain(after["spec"]["containers"][0])["PRIMUS_LENS_AGENT"] == "true"


def test_a_trainer_of_unknown_user_leaves_the_sending_to_a_non_root_agent() -> None:
    """SaFE's pods name no user and run as root: the agent stays the chart's non-root user and
    still sends (the trainer, in agent mode, opens the record's directories to it)."""
    config = settings(securityContext=DEFAULT_CONTEXT)
    before = load_pod("safe-pytorchjob-pod.yaml")
    reply, outcome = admission.review(json.dumps(admission_review(before)).encode(), config)
    after = apply_response(before, reply)
    validate_pod(after, SIDECARS)
    [agent] = agents(after)
    assert agent["securityContext"] == DEFAULT_CONTEXT
    assert "runAsUser" not in agent["securityContext"]
    env = plain(after["spec"]["containers"][0])
    assert env["PRIMUS_LENS_AGENT"] == "true"
    assert env["PRIMUS_LENS_WANDB_OUTPUT_PATH"] == RECORDS == plain(agent)[
        "PRIMUS_LENS_WANDB_OUTPUT_PATH"]
    assert outcome.agent == "sidecar"
    assert "warnings" not in reply["response"]


def test_containers_of_different_users_all_leave_the_sending_to_the_agent() -> None:
    after = run(pod({"name": "a", "image": "i"},
                    {"name": "b", "image": "i", "securityContext": {"runAsUser": 3000}}))
    a, b = after["spec"]["containers"]
    assert plain(a)["PRIMUS_LENS_AGENT"] == "true" == plain(b)["PRIMUS_LENS_AGENT"]
    assert plain(b)["PRIMUS_LENS_WANDB_OUTPUT_PATH"] == RECORDS


def test_chart_user_applies_where_the_pod_names_none() -> None:
    """A chart that sets the agent's user (here root: not needed any more, still honoured)
    applies to pods that name none; a pod that names its own non-root user gets it."""
    root = {**sidecar.AgentSettings().security_context, "runAsUser": 0, "runAsNonRoot": False}
    config = settings(securityContext=root)
    [agent] = agents(run(load_pod("safe-pytorchjob-pod.yaml"), config))
    assert agent["securityContext"] == root
    [agent] = agents(run(pod(securityContext={"runAsUser": 1000}), config))
    assert (agent["securityContext"]["runAsUser"], agent["securityContext"]["runAsNonRoot"]) == (
        1000, True)
    assert agent["securityContext"]["capabilities"] == {"drop": ["ALL"]}


def test_agent_port_follows_the_trainers_setting() -> None:
    after = run(pod({"name": "m", "image": "i", "env": [
        {"name": "PRIMUS_LENS_AGENT_PORT", "value": "9600"}]}))
    [agent] = agents(after)
    assert agent["ports"] == [{"name": "metrics", "containerPort": 9600, "protocol": "TCP"}]
    assert after["metadata"]["annotations"]["prometheus.io/port"] == "9600"


def test_settings_turn_the_probe_and_the_annotations_off() -> None:
    after = run(pod(), settings(readinessProbe=False, prometheusAnnotations=False))
    [agent] = agents(after)
    assert "readinessProbe" not in agent and "livenessProbe" in agent
    assert after["metadata"]["annotations"] == {admission.INJECTED_KEY: "main"}


def test_a_pods_own_prometheus_annotations_are_kept() -> None:
    own = {"prometheus.io/scrape": "true", "prometheus.io/port": "8000"}
    after = run(pod(annotations=dict(own)))
    assert {k: v for k, v in after["metadata"]["annotations"].items()
            if k.startswith("prometheus.io/")} == own


# -- re-admission --------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["sidecar", "container"])
@pytest.mark.parametrize("fixture", ["safe-pytorchjob-pod.yaml", "job-pod.yaml",
                                     "own-output-path-pod.yaml", "pytorchjob-worker.yaml"])
def test_second_admission_changes_nothing(mode: str, fixture: str) -> None:
    config = settings(mode)
    once = run(load_pod(fixture), config)
    assert len(agents(once)) == 1
    reply = review(once, config)
    assert "patch" not in reply["response"]


def test_a_container_added_by_another_webhook_joins_the_agent() -> None:
    once = run(load_pod("job-pod.yaml"))
    once["spec"]["containers"].append({"name": "profiler", "image": "prof:1"})
    again = run(once)
    assert len(agents(again)) == 1
    profiler = again["spec"]["containers"][1]
    assert plain(profiler)["PRIMUS_LENS_AGENT"] == "true"
    assert {"name": "primus-lens-records", "mountPath": RECORDS} in profiler["volumeMounts"]
    assert run(again) == again


# -- settings ------------------------------------------------------------------------------------

@pytest.mark.parametrize("agent, message", [
    ([], "the agent must be a JSON object"),
    ({"mode": "always"}, "agent.mode must be one of off, sidecar, container"),
    ({"mod": "sidecar"}, "unknown agent keys: mod"),
    ({"port": 0}, "agent.port must be a port number"),
    ({"port": True}, "agent.port must be a port number"),
    ({"recordsPath": "rel"}, "agent.records_path must be an absolute path"),
    ({"recordsSizeLimit": "lots"}, "agent.recordsSizeLimit must be empty or a quantity"),
    ({"containerName": "Agent"}, "agent.container_name must be a DNS label"),
    ({"readinessProbe": "yes"}, "agent.readiness_probe must be true or false"),
    ({"resources": []}, "agent.resources must be an object"),
    ({"containerName": "primus-lens-inject"}, "need names of their own"),
    ({"recordsVolumeName": "primus-lens-inject"}, "need names of their own"),
])
def test_agent_settings_are_validated_strictly(agent: Any, message: str) -> None:
    with pytest.raises(admission.SettingsError, match=message):
        admission.Settings.from_mapping({"image": "i", "agent": agent})


@pytest.mark.parametrize("broken", [
    {"containers": [{"name": "m", "image": "i", "ports": "9470"}]},
    {"containers": [{"name": "m", "image": "i", "securityContext": ["root"]}]},
    {"containers": [{"name": "m", "image": "i"}], "securityContext": "root"},
    {"containers": [{"name": "m", "image": "i", "volumeMounts": {"name": "v"}}]},
])
def test_a_malformed_pod_is_admitted_unchanged_with_a_reason(broken: Dict[str, Any]) -> None:
    before = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": broken}
    reply, outcome = admission.review(json.dumps(admission_review(before)).encode(), SIDECAR)
    assert reply["response"] == {"uid": reply["response"]["uid"], "allowed": True}
    assert outcome.error.startswith("MalformedPod"), outcome.error


@pytest.mark.parametrize("grace", ["30", -5, True, 2.5])
def test_a_grace_period_that_is_not_a_count_of_seconds_drains_as_the_default(grace: Any) -> None:
    [agent] = agents(apply_response(pod(), review(pod(terminationGracePeriodSeconds=grace))))
    assert plain(agent)["PRIMUS_LENS_AGENT_DRAIN_SECONDS"] == "25"
