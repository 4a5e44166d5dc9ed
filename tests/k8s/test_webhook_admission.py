"""The admission decision on its own: selection, PYTHONPATH rules, identity, settings, edge cases.

The TLS round trips live in ``test_webhook.py``; here ``admission.review`` is called directly, so
each rule is checked on the smallest pod that shows it.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Dict, List, Optional

import pytest

from k8s.support import (
    KNOWN_ENV,
    admission_review,
    apply_response,
    env_of,
    load_pod,
    validate_pod,
)
from k8s.support import small_pod as pod
from primus_lens_inject.k8s import admission

SETTINGS = admission.Settings.from_mapping({"image": "reg.example.com/pli:1"})


def run(obj: Dict[str, Any], settings: admission.Settings = SETTINGS,
        **review: Any) -> Dict[str, Any]:
    reply, _ = admission.review(json.dumps(admission_review(obj, **review)).encode(), settings)
    return apply_response(obj, reply)


def python_path(obj: Dict[str, Any], index: int = 0) -> Optional[str]:
    entry = env_of(obj["spec"]["containers"][index]).get("PYTHONPATH")
    return None if entry is None else entry.get("value")


def injected(obj: Dict[str, Any]) -> List[str]:
    return [c["name"] for c in obj["spec"]["containers"]
            if any(m["name"] == "primus-lens-inject" for m in c.get("volumeMounts") or [])]


@pytest.mark.parametrize("value", ["false", "False", " disabled ", "no", "off", "0"])
def test_opt_out_annotation_values(value: str) -> None:
    before = pod(annotations={admission.INJECT_KEY: value})
    assert run(before) == before


@pytest.mark.parametrize("value", ["true", "enabled", ""])
def test_other_annotation_values_do_not_opt_out(value: str) -> None:
    assert injected(run(pod(annotations={admission.INJECT_KEY: value}))) == ["main"]


def test_containers_annotation_selects_and_reports_unknown_names() -> None:
    after = run(pod({"name": "trainer", "image": "a"}, {"name": "proxy", "image": "b"},
                    annotations={admission.CONTAINERS_KEY: "trainer, ghost"}))
    assert injected(after) == ["trainer"]
    assert "env" not in after["spec"]["containers"][1]
    assert after["metadata"]["annotations"][admission.SKIPPED_KEY] == (
        f"ghost: named in {admission.CONTAINERS_KEY} but not in the pod")
    validate_pod(after)


def test_image_pythonpath_annotation_per_pod_and_per_container() -> None:
    after = run(pod({"name": "a", "image": "x"}, {"name": "b", "image": "y"}, annotations={
        admission.IMAGE_PYTHONPATH_KEY: "/img/lib::/img/more",
        admission.IMAGE_PYTHONPATH_KEY + ".b": "/only/b"}))
    assert python_path(after, 0) == "/opt/primus-lens:/img/lib:/img/more"
    assert python_path(after, 1) == "/opt/primus-lens:/only/b"


def test_spec_pythonpath_wins_over_the_annotation() -> None:
    """A spec PYTHONPATH already replaced the image's; the annotation must not resurrect it."""
    after = run(pod({"name": "m", "image": "i", "env": [{"name": "PYTHONPATH", "value": "/s"}]},
                    annotations={admission.IMAGE_PYTHONPATH_KEY: "/img"}))
    assert python_path(after) == "/opt/primus-lens:/s"


def test_empty_and_duplicate_pythonpath_entries() -> None:
    after = run(pod({"name": "m", "image": "i", "env": [
        {"name": "PYTHONPATH", "value": "/first"}, {"name": "PYTHONPATH"}]}))
    env = after["spec"]["containers"][0]["env"]
    assert env[0] == {"name": "PYTHONPATH", "value": "/first"}, "the kubelet uses the last one"
    assert env[1] == {"name": "PYTHONPATH", "value": "/opt/primus-lens"}


def test_pythonpath_already_holding_our_directory_is_kept() -> None:
    before = pod({"name": "m", "image": "i",
                  "env": [{"name": "PYTHONPATH", "value": "/x:/opt/primus-lens"}]})
    assert python_path(run(before)) == "/x:/opt/primus-lens"


def test_env_from_may_hide_a_pythonpath() -> None:
    after = run(pod({"name": "m", "image": "i", "envFrom": [{"configMapRef": {"name": "c"}}]},
                    annotations={admission.IMAGE_PYTHONPATH_KEY: "/img"}))
    assert python_path(after) == "/opt/primus-lens:$(PYTHONPATH):/img"


def test_value_from_pythonpath_skips_only_that_container() -> None:
    after = run(pod({"name": "a", "image": "i", "env": [
        {"name": "PYTHONPATH", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}}]},
        {"name": "b", "image": "i"}))
    assert injected(after) == ["b"]
    assert after["metadata"]["annotations"][admission.INJECTED_KEY] == "b"


def test_nothing_injectable_adds_no_volume_or_init_container() -> None:
    after = run(pod({"name": "a", "image": "i", "volumeMounts": [
        {"name": "other", "mountPath": "/opt/primus-lens/"}]}, volumes=[{"name": "other",
                                                                       "emptyDir": {}}]))
    assert "initContainers" not in after["spec"]
    assert [v["name"] for v in after["spec"]["volumes"]] == ["other"]
    assert "something else is mounted at /opt/primus-lens" in (
        after["metadata"]["annotations"][admission.SKIPPED_KEY])


def test_a_block_device_at_our_path_skips_the_container() -> None:
    after = run(pod({"name": "a", "image": "i", "volumeDevices": [
        {"name": "disk", "devicePath": "/opt/primus-lens"}]}, {"name": "b", "image": "i"},
        volumes=[{"name": "disk", "persistentVolumeClaim": {"claimName": "c"}}]))
    validate_pod(after)
    assert injected(after) == ["b"]
    assert after["metadata"]["annotations"][admission.SKIPPED_KEY] == (
        "a: something else is mounted at /opt/primus-lens")


def test_workload_uid_only_from_a_valid_annotation() -> None:
    assert "WORKLOAD_UID" not in env_of(run(pod())["spec"]["containers"][0])
    bad = run(pod(annotations={admission.WORKLOAD_UID_KEY: "x; rm -rf /"}))
    assert "WORKLOAD_UID" not in env_of(bad["spec"]["containers"][0])
    off = admission.Settings.from_mapping({"image": "i", "workloadUidFromAnnotation": False})
    good = pod(annotations={admission.WORKLOAD_UID_KEY: "3f2a-11"})
    assert "WORKLOAD_UID" not in env_of(run(good, off)["spec"]["containers"][0])
    assert env_of(run(good)["spec"]["containers"][0])["WORKLOAD_UID"]["value"] == "3f2a-11"


def test_downward_api_and_reporting_follow_the_settings() -> None:
    settings = admission.Settings.from_mapping({
        "image": "i", "downwardAPI": False,
        "env": {"PRIMUS_LENS_WANDB_API_REPORTING": "false", "PRIMUS_LENS_GPU_SCOPE": "node"}})
    env = env_of(run(pod(), settings)["spec"]["containers"][0])
    assert set(env) == {"PYTHONPATH", "PRIMUS_LENS_WANDB_API_REPORTING", "PRIMUS_LENS_GPU_SCOPE"}


def test_custom_paths_and_names_flow_into_the_patch() -> None:
    settings = admission.Settings.from_mapping({
        "image": "i", "mountPath": "/lens/injector/", "sourcePath": "/srv/tree",
        "volumeName": "lens", "initContainerName": "lens-copy", "volumeSizeLimit": "32Mi"})
    after = run(pod(), settings)
    [init] = after["spec"]["initContainers"]
    assert init["name"] == "lens-copy"
    assert init["command"] == ["cp", "-R", "/srv/tree/.", "/mnt/primus-lens"]
    assert after["spec"]["volumes"] == [{"name": "lens", "emptyDir": {"sizeLimit": "32Mi"}}]
    assert after["spec"]["containers"][0]["volumeMounts"] == [
        {"name": "lens", "mountPath": "/lens/injector", "readOnly": True}]
    assert python_path(after) == "/lens/injector"
    validate_pod(after)


def test_existing_init_containers_come_first() -> None:
    after = run(pod(initContainers=[{"name": "fetch-data", "image": "busybox"}]))
    assert [c["name"] for c in after["spec"]["initContainers"]] == ["fetch-data",
                                                                    "primus-lens-inject"]


def test_annotation_keys_are_escaped_in_json_pointers() -> None:
    reply, _ = admission.review(json.dumps(admission_review(pod(annotations={"a": "b"}))).encode(),
                                SETTINGS)
    paths = [op["path"] for op in json.loads(base64.b64decode(reply["response"]["patch"]))]
    assert "/metadata/annotations/primus-lens.amd.com~1injected" in paths


def test_windows_pods_are_left_alone() -> None:
    before = pod(os={"name": "windows"})
    assert run(before) == before


@pytest.mark.parametrize("operation", ["UPDATE", "DELETE", "CONNECT"])
def test_only_creates_are_mutated(operation: str) -> None:
    before = load_pod("job-pod.yaml")
    assert run(before, operation=operation) == before


def test_other_kinds_are_admitted_unchanged() -> None:
    review = admission_review(pod())
    review["request"]["kind"] = {"group": "apps", "version": "v1", "kind": "Deployment"}
    reply, outcome = admission.review(json.dumps(review).encode(), SETTINGS)
    assert reply["response"] == {"uid": review["request"]["uid"], "allowed": True}
    assert outcome.decision.startswith("not a pod")


@pytest.mark.parametrize("broken", [
    {"spec": {"containers": []}},
    {"spec": {"containers": [{"image": "no-name"}]}},
    {"spec": {"containers": [{"name": "m", "env": "PYTHONPATH=/x"}]}},
    {"spec": None, "metadata": {"annotations": ["not", "a", "map"]}},
    "not an object",
])
def test_malformed_pods_are_admitted_unchanged_with_a_reason(broken: Any) -> None:
    review = admission_review(pod())
    review["request"]["object"] = broken
    reply, outcome = admission.review(json.dumps(review).encode(), SETTINGS)
    assert reply["response"] == {"uid": review["request"]["uid"], "allowed": True}
    assert outcome.error.startswith("MalformedPod")


@pytest.mark.parametrize("config, message", [
    ({}, "image is required"),
    ({"image": "i", "mountpath": "/x"}, "unknown configuration keys: mountpath"),
    ({"image": "i", "mountPath": "relative"}, "mount_path must be an absolute path"),
    ({"image": "i", "mountPath": "/a:/b"}, "mount_path must be an absolute path"),
    ({"image": "i", "mountPath": "/"}, "mount_path must be an absolute path"),
    ({"image": "i", "imagePullPolicy": "Sometimes"}, "imagePullPolicy must be"),
    ({"image": "i", "env": {"PATH": "/bin"}}, "not a PRIMUS_LENS_* variable name"),
    ({"image": "i", "env": {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}},
     "not a PRIMUS_LENS_* variable name"),
    ({"image": "i", "secretEnv": {"HEADERS": {"name": "s", "key": "k"}}}, "not a PRIMUS_LENS_*"),
    ({"image": "i", "secretEnv": {"OTEL_EXPORTER_OTLP_HEADERS": {"name": "s", "key": "k"}}},
     "not a PRIMUS_LENS_*"),
    ({"image": "i", "secretEnv": {"PRIMUS_LENS_OTLP_HEADERS": {"name": "s"}}}, "exactly name and key"),
    ({"image": "i", "secretEnv": {"PRIMUS_LENS_OTLP_HEADERS": {"name": "S_1", "key": "k"}}},
     "must be a DNS subdomain"),
    ({"image": "i", "secretEnv": {"PRIMUS_LENS_OTLP_HEADERS": {"name": "s", "key": "a/b"}}},
     "must be a Secret data key"),
    ({"image": "i", "secretEnv": []}, "secretEnv must be an object"),
    ({"image": "i", "env": {"PRIMUS_LENS_OTLP_HEADERS": "a=b"},
      "secretEnv": {"PRIMUS_LENS_OTLP_HEADERS": {"name": "s", "key": "k"}}},
     "env and secretEnv both set PRIMUS_LENS_OTLP_HEADERS"),
    ({"image": "i", "env": {"PRIMUS_LENS_WANDB_DEBUG": True}}, "must be a string"),
    ({"image": "i", "downwardAPI": "yes"}, "must be true or false"),
    ({"image": "i", "volumeName": "Bad_Name"}, "must be a DNS label"),
    ({"image": "i", "volumeSizeLimit": "lots"}, "must be a quantity"),
    ({"image": "i", "initResources": []}, "must be an object"),
    (["image"], "must be a JSON object"),
])
def test_settings_are_validated_strictly(config: Any, message: str) -> None:
    with pytest.raises(admission.SettingsError, match=message.replace("*", r"\*")):
        admission.Settings.from_mapping(config)


def test_unknown_reporting_variables_are_flagged() -> None:
    settings = admission.Settings.from_mapping({"image": "i", "env": {
        "PRIMUS_LENS_API_BASE_URL": "http://x", "PRIMUS_LENS_TYPO": "1"}})
    assert admission.unknown_env_names(settings, KNOWN_ENV) == ["PRIMUS_LENS_TYPO"]


def test_otlp_variables_are_not_flagged_as_unknown() -> None:
    settings = admission.Settings.from_mapping({"image": "i", "env": {
        "PRIMUS_LENS_OTLP_ENDPOINT": "http://c:4318",
        "PRIMUS_LENS_OTLP_RESOURCE_ATTRIBUTES": "k8s.cluster.name=a"}})
    assert admission.unknown_env_names(settings, KNOWN_ENV) == []


# -- the OTLP sink: what the chart's otlp value hands the webhook -----------------------------------

OTLP_SETTINGS = admission.Settings.from_mapping({
    "image": "i",
    "env": {"PRIMUS_LENS_OTLP": "true", "PRIMUS_LENS_OTLP_ENDPOINT": "http://otel-collector.obs.svc:4318",
            "PRIMUS_LENS_OTLP_PROTOCOL": "http/protobuf"},
    "secretEnv": {"PRIMUS_LENS_OTLP_HEADERS": {"name": "otlp-headers", "key": "headers"}}})
HEADERS_FROM_SECRET = {"name": "PRIMUS_LENS_OTLP_HEADERS", "valueFrom": {
    "secretKeyRef": {"name": "otlp-headers", "key": "headers", "optional": True}}}


def test_otlp_settings_add_the_sink_variables_after_the_identity() -> None:
    reply, _ = admission.review(json.dumps(admission_review(pod())).encode(), OTLP_SETTINGS)
    operations = json.loads(base64.b64decode(reply["response"]["patch"]))
    [env] = [op for op in operations if op["path"] == "/spec/containers/0/env"]
    assert [entry["name"] for entry in env["value"]] == [
        "PYTHONPATH", "POD_NAME", "POD_UID", "POD_NAMESPACE", "NODE_NAME",
        "PRIMUS_LENS_OTLP", "PRIMUS_LENS_OTLP_ENDPOINT", "PRIMUS_LENS_OTLP_PROTOCOL",
        "PRIMUS_LENS_OTLP_HEADERS"]
    assert env["value"][-4:] == [
        {"name": "PRIMUS_LENS_OTLP", "value": "true"},
        {"name": "PRIMUS_LENS_OTLP_ENDPOINT", "value": "http://otel-collector.obs.svc:4318"},
        {"name": "PRIMUS_LENS_OTLP_PROTOCOL", "value": "http/protobuf"},
        HEADERS_FROM_SECRET]
    after = apply_response(pod(), reply)
    validate_pod(after)
    assert run(after, OTLP_SETTINGS) == after, "a second admission changes nothing"


def test_otlp_variables_the_container_sets_are_kept() -> None:
    own = [{"name": "PRIMUS_LENS_OTLP_ENDPOINT", "value": "http://own-collector:4318"},
           {"name": "PRIMUS_LENS_OTLP_HEADERS",
            "valueFrom": {"secretKeyRef": {"name": "mine", "key": "h"}}},
           {"name": "PRIMUS_LENS_OTLP", "value": "false"}]
    before = pod({"name": "m", "image": "i", "env": own})
    after = run(before, OTLP_SETTINGS)
    env = after["spec"]["containers"][0]["env"]
    assert env[:3] == own
    assert [entry["name"] for entry in env[3:]] == [
        "PYTHONPATH", "POD_NAME", "POD_UID", "POD_NAMESPACE", "NODE_NAME", "PRIMUS_LENS_OTLP_PROTOCOL"]


# -- patches the API server accepts, whatever the pod already holds -------------------------------

def patch_of(obj: Dict[str, Any], settings: admission.Settings = SETTINGS) -> List[Dict[str, Any]]:
    reply, _ = admission.review(json.dumps(admission_review(obj)).encode(), settings)
    return json.loads(base64.b64decode(reply["response"]["patch"]))


def test_names_taken_by_the_pod_get_a_numbered_suffix() -> None:
    """A container called like our init container (the API server refuses duplicates) and a
    configMap volume called like our volume (our copy would write into it): both ours move."""
    before = pod({"name": "primus-lens-inject", "image": "user/app",
                  "volumeMounts": [{"name": "primus-lens-inject", "mountPath": "/etc/app"}]},
                 initContainers=[{"name": "primus-lens-inject-2", "image": "user/setup"}],
                 volumes=[{"name": "primus-lens-inject", "configMap": {"name": "app"}}])
    init = {**SETTINGS.init_container, "name": "primus-lens-inject-3",
            "volumeMounts": [{"name": "primus-lens-inject-2", "mountPath": "/mnt/primus-lens"}]}
    downward = [{"name": name, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": path}}}
                for name, path in admission.DOWNWARD_API]
    assert patch_of(before) == [
        {"op": "add", "path": "/spec/volumes/-",
         "value": {"name": "primus-lens-inject-2", "emptyDir": {"sizeLimit": "64Mi"}}},
        {"op": "add", "path": "/spec/initContainers/-", "value": init},
        {"op": "add", "path": "/spec/containers/0/env",
         "value": [{"name": "PYTHONPATH", "value": "/opt/primus-lens"}, *downward]},
        {"op": "add", "path": "/spec/containers/0/volumeMounts/-",
         "value": {"name": "primus-lens-inject-2", "mountPath": "/opt/primus-lens",
                   "readOnly": True}},
        {"op": "add", "path": "/metadata/annotations",
         "value": {admission.INJECTED_KEY: "primus-lens-inject"}},
    ]
    after = run(before)
    validate_pod(after)
    assert after["spec"]["volumes"][0] == before["spec"]["volumes"][0], "the user's volume kept"
    assert run(after) == after, "a second admission finds ours under the new names"


def test_a_long_configured_name_stays_a_dns_label() -> None:
    long = "v" * 63
    settings = admission.Settings.from_mapping({"image": "i", "volumeName": long,
                                                "initContainerName": long})
    after = run(pod({"name": long, "image": "a"}, volumes=[{"name": long, "emptyDir": {}}]),
                settings)
    validate_pod(after)
    assert after["spec"]["initContainers"][0]["name"] == "v" * 61 + "-2"
    assert [v["name"] for v in after["spec"]["volumes"]] == [long, "v" * 61 + "-2"]


def test_pod_without_metadata_or_lists() -> None:
    """No metadata at all, and lists that are null: the patch creates what it adds to."""
    before = {"apiVersion": "v1", "kind": "Pod", "spec": {
        "containers": [{"name": "m", "image": "i", "env": None, "volumeMounts": None}],
        "volumes": None, "initContainers": None}}
    after = run(before)
    validate_pod(after)
    assert after["metadata"] == {"annotations": {admission.INJECTED_KEY: "m"}}
    assert [v["name"] for v in after["spec"]["volumes"]] == ["primus-lens-inject"]
    assert [c["name"] for c in after["spec"]["initContainers"]] == ["primus-lens-inject"]
    assert python_path(after) == "/opt/primus-lens"
    assert run(after) == after


def test_metadata_without_labels_or_annotations() -> None:
    before = pod()
    before["metadata"] = {"generateName": "job-"}
    after = run(before)
    validate_pod(after)
    assert after["metadata"] == {"generateName": "job-",
                                 "annotations": {admission.INJECTED_KEY: "main"}}


def test_variables_already_present_are_never_duplicated() -> None:
    own = [{"name": "PYTHONPATH", "value": None}, {"name": "POD_NAME", "value": "fixed"},
           {"name": "POD_UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
           {"name": "POD_NAMESPACE", "value": "ns"}, {"name": "NODE_NAME", "value": "n"},
           {"name": "WORKLOAD_UID", "value": "mine"},
           {"name": "PRIMUS_LENS_API_BASE_URL", "value": "http://own:1/v1"}]
    settings = admission.Settings.from_mapping(
        {"image": "i", "env": {"PRIMUS_LENS_API_BASE_URL": "http://chart:2/v1"}})
    after = run(pod({"name": "m", "image": "i", "env": own},
                    annotations={admission.WORKLOAD_UID_KEY: "from-annotation"}), settings)
    validate_pod(after)
    env = after["spec"]["containers"][0]["env"]
    assert env == [{"name": "PYTHONPATH", "value": "/opt/primus-lens"}, *own[1:]]


def test_our_annotations_and_warnings_stay_bounded() -> None:
    ghosts = ",".join(f"ghost-{n:04d}" for n in range(2000))
    before = pod({"name": "m" * 63, "image": "i", "env": [{"name": "PYTHONPATH", "valueFrom": {
        "configMapKeyRef": {"name": "c", "key": "k"}}}]},
        annotations={admission.CONTAINERS_KEY: "a" * 300 + "," + ghosts + "," + "m" * 63})
    reply, _ = admission.review(json.dumps(admission_review(before)).encode(), SETTINGS)
    patch = json.loads(base64.b64decode(reply["response"]["patch"]))
    assert [op["path"] for op in patch] == ["/metadata/annotations/primus-lens.amd.com~1skipped"]
    skipped = patch[0]["value"]
    assert len(skipped) == admission.MAX_ANNOTATION_VALUE and skipped.endswith("...")
    warnings = reply["response"]["warnings"]
    assert len(warnings) == admission.MAX_WARNINGS
    assert max(map(len, warnings)) == admission.MAX_WARNING, "the long name is cut"
    assert warnings[-1] == ("primus-lens: 1993 more containers not injected "
                            "(annotation primus-lens.amd.com/skipped)")
    validate_pod(apply_response(before, reply))


@pytest.mark.parametrize("count", [admission.MAX_CONTAINERS + 1, 50_000])
def test_a_pod_with_too_many_containers_is_admitted_unchanged_with_a_warning(count: int) -> None:
    """The work and the answer are bounded before any patch is built: 50,000 containers
    (a 750 KB review) once made a 39 MB patch."""
    before = pod(*({"name": f"c{n}", "image": "i"} for n in range(count)))
    reply, outcome = admission.review(json.dumps(admission_review(before)).encode(), SETTINGS)
    assert reply["response"] == {
        "uid": reply["response"]["uid"], "allowed": True, "warnings": [
            f"primus-lens: pod not injected: {count} containers to inject, more than the "
            f"{admission.MAX_CONTAINERS} the webhook injects in one pod"]}
    assert outcome.decision.startswith("not injected:")
    assert len(json.dumps(reply)) < 1024


def test_the_limit_counts_containers_to_inject() -> None:
    """At the limit every container is injected, with the chart's full settings (OTLP on, each
    container with variables of its own) inside the patch bound; beyond it, a pod whose
    annotation selects one container is injected all the same."""
    settings = admission.Settings.from_mapping({
        "image": "registry.example.com/platform/primus-lens-inject@sha256:" + "a" * 64,
        "env": {"PRIMUS_LENS_API_BASE_URL": "http://lens.primus-lens.svc:8989/v1",
                "PRIMUS_LENS_WANDB_API_REPORTING": "true", "PRIMUS_LENS_OTLP": "true",
                "PRIMUS_LENS_OTLP_ENDPOINT": "http://otel-collector.observability.svc:4318",
                "PRIMUS_LENS_OTLP_RESOURCE_ATTRIBUTES": "k8s.cluster.name=mi300x-a,team=ml"},
        "secretEnv": {"PRIMUS_LENS_OTLP_HEADERS": {"name": "otlp-headers", "key": "headers"}}})
    many = [{"name": f"container-{n:02d}", "image": "i", "env": [{"name": "X", "value": "1"}]}
            for n in range(admission.MAX_CONTAINERS)]
    after = run(pod(*many, annotations={admission.WORKLOAD_UID_KEY: "u-1"}), settings)
    validate_pod(after)
    assert len(injected(after)) == admission.MAX_CONTAINERS
    crowd = pod(*({"name": f"c{n}", "image": "i"} for n in range(1000)),
                annotations={admission.CONTAINERS_KEY: "c7"})
    assert injected(run(crowd)) == ["c7"]


def test_a_patch_over_its_bound_is_not_sent() -> None:
    """Settings can make each container's patch large; the answer stays bounded all the same."""
    settings = admission.Settings.from_mapping(
        {"image": "i", "env": {"PRIMUS_LENS_EXTRA": "x" * 4096}})
    before = pod(*({"name": f"c{n}", "image": "i"} for n in range(30)))
    reply, outcome = admission.review(json.dumps(admission_review(before)).encode(), settings)
    assert outcome.decision.startswith("not injected: its patch would take ")
    [warning] = reply["response"]["warnings"]
    assert warning.startswith("primus-lens: pod not injected: its patch would take ")
    assert warning.endswith(f"bytes, more than {admission.MAX_PATCH_BYTES}")
    assert "patch" not in reply["response"]
    assert run(before, settings) == before
    assert len(injected(run(pod(*before["spec"]["containers"][:3]), settings))) == 3


# -- SaFE's main-container annotation -------------------------------------------------------------

def test_safe_main_container_annotation_selects_one_container() -> None:
    before = load_pod("safe-pytorchjob-pod.yaml")
    after = run(before)
    validate_pod(after)
    assert injected(after) == ["pytorch"]
    assert after["spec"]["containers"][1] == before["spec"]["containers"][1]
    assert after["metadata"]["annotations"] == {
        admission.SAFE_MAIN_CONTAINER_KEY: "pytorch", admission.INJECTED_KEY: "pytorch"}
    env = env_of(after["spec"]["containers"][0])
    assert env["POD_IP"] == before["spec"]["containers"][0]["env"][6], "SaFE's own kept"
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert [c["name"] for c in after["spec"]["initContainers"]] == ["init-launcher",
                                                                    "primus-lens-inject"]
    assert run(after) == after


def test_our_containers_annotation_wins_over_the_main_container() -> None:
    before = load_pod("safe-pytorchjob-pod.yaml")
    before["metadata"]["annotations"][admission.CONTAINERS_KEY] = "log-exporter"
    assert injected(run(before)) == ["log-exporter"]


def test_main_container_missing_from_the_pod_injects_nothing() -> None:
    before = pod({"name": "a", "image": "i"}, {"name": "b", "image": "i"},
                 annotations={admission.SAFE_MAIN_CONTAINER_KEY: "trainer"})
    reply, outcome = admission.review(json.dumps(admission_review(before)).encode(), SETTINGS)
    assert outcome.decision == "no container to inject"
    assert reply["response"]["warnings"] == [
        "primus-lens: container trainer not injected: named in primus-safe.main.container "
        "but not in the pod"]
    assert injected(apply_response(before, reply)) == []


def test_main_container_rule_can_be_turned_off() -> None:
    settings = admission.Settings.from_mapping({"image": "i", "mainContainerAnnotation": ""})
    assert injected(run(load_pod("safe-pytorchjob-pod.yaml"), settings)) == [
        "pytorch", "log-exporter"]
