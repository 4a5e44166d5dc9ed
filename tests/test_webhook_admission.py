"""The admission decision on its own: selection, PYTHONPATH rules, identity, settings, edge cases.

The TLS round trips live in ``test_webhook.py``; here ``admission.review`` is called directly, so
each rule is checked on the smallest pod that shows it.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Dict, List, Optional

import pytest
from k8s.support import admission_review, apply_response, env_of, load_pod, validate

from primus_lens_inject import admission

SETTINGS = admission.Settings.from_mapping({"image": "reg.example.com/pli:1"})


def pod(*containers: Dict[str, Any], annotations: Optional[Dict[str, str]] = None,
        **spec: Any) -> Dict[str, Any]:
    metadata: Dict[str, Any] = {"name": "p", "namespace": "ns"}
    if annotations is not None:
        metadata["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata,
            "spec": {"containers": list(containers) or [{"name": "main", "image": "img"}],
                     **spec}}


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
    validate(after)


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
    validate(after)


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
    ({"image": "i", "env": {"PATH": "/bin"}}, "not a PRIMUS_LENS_* variable"),
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
    assert admission.unknown_env_names(settings) == ["PRIMUS_LENS_TYPO"]
