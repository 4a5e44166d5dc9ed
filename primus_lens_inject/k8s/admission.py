"""What the admission webhook decides for one pod, and the JSONPatch that carries it out.

Pure functions over plain dicts: AdmissionReview has no model in any Kubernetes client, and the
server (``webhook``) must stay stdlib-only.  The patch only ever *adds what is missing* (the
volume, the init container, a container's mount and each environment variable), so running it on
a pod it already produced yields an empty patch: a second admission, a reinvocation after another
webhook, or a replayed request changes nothing, while a container that another webhook added in
between is still injected.  Anything unexpected about a pod results in *no* patch; the caller
admits the pod unchanged, because a telemetry injector must never stop a training job.

Every patch must also be one the API server accepts and that leaves a working pod: names that the
pod already uses for a volume or a container are never reused (ours get a numbered suffix), a
missing ``metadata`` or list is created rather than indexed, and the annotations we write are
bounded so they cannot push the pod over the API server's size limit for annotations.

The work and the answer are bounded too, whatever the review holds: a pod with more than
``MAX_CONTAINERS`` containers to inject (no real pod comes near; a 750 KB review can list
50,000, whose patch would take 40 MB) or whose patch would exceed ``MAX_PATCH_BYTES`` is
admitted unchanged, and a warning in the answer says why.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import AbstractSet, Any, Dict, List, Mapping, Tuple, Union

from . import sidecar
from .podspec import (
    DNS_LABEL,
    QUANTITY,
    MalformedPod,
    SettingsError,
    append,
    append_all,
    container_names,
    fields,
    free_name,
    last_env,
    mapping,
    objects,
)

PREFIX = "primus-lens.amd.com/"
INJECT_KEY = PREFIX + "inject"  # label "enabled" opts in (webhook selectors); annotation "false" opts out
CONTAINERS_KEY = PREFIX + "containers"  # annotation: comma-separated container names (default: all)
SAFE_MAIN_CONTAINER_KEY = "primus-safe.main.container"  # SaFE's annotation naming the main container
IMAGE_PYTHONPATH_KEY = PREFIX + "image-pythonpath"  # annotation: the image's own ENV PYTHONPATH
WORKLOAD_UID_KEY = PREFIX + "workload-uid"  # annotation: the Lens workload UID, if an operator knows it
INJECTED_KEY = PREFIX + "injected"  # written: the containers that carry the injector
SKIPPED_KEY = PREFIX + "skipped"  # written: containers left alone, and why
# annotation "false" keeps the pod agent out of one pod; label "true" written on pods with one
# (what the chart's PodMonitor and VMPodScrape select)
AGENT_KEY = PREFIX + "agent"
PROMETHEUS_KEYS = ("prometheus.io/scrape", "prometheus.io/port", "prometheus.io/path")

_OPT_OUT_VALUES = frozenset(("false", "disabled", "no", "off", "0"))
DOWNWARD_API = (("POD_NAME", "metadata.name"), ("POD_UID", "metadata.uid"),
                ("POD_NAMESPACE", "metadata.namespace"), ("NODE_NAME", "spec.nodeName"))
_INIT_TARGET = "/mnt/primus-lens"  # where the init container sees the emptyDir
REVIEW_API_VERSION = "admission.k8s.io/v1"
MAX_ANNOTATION_VALUE = 1024  # our annotations stay far below the API server's 256 KiB for all of them
MAX_WARNING = 256  # the API server may truncate a longer warning
MAX_WARNINGS = 10  # ... and ignores them beyond 4 KiB in all
MAX_CONTAINERS = 32  # more containers to inject: the pod is admitted unchanged, before any patch
MAX_PATCH_BYTES = 96 << 10  # a larger patch is not sent (its base64 answer stays under 128 KiB)

# Ours only: the OTEL_* names are read by every OpenTelemetry SDK in the pod (wandb's own exporter
# to W&B among them), so the OTLP sink is configured by PRIMUS_LENS_OTLP_* (docs/otlp.md).
_OUR_ENV_NAME = re.compile(r"^PRIMUS_LENS_[A-Z0-9_]+$")
_SECRET_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")  # a DNS subdomain
_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]{1,253}$")
_UID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")

_DEFAULT_SECURITY_CONTEXT: Dict[str, Any] = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "runAsUser": 65532,
    "runAsGroup": 65532,
    "seccompProfile": {"type": "RuntimeDefault"},
}
_DEFAULT_RESOURCES: Dict[str, Any] = {
    "requests": {"cpu": "10m", "memory": "32Mi"},
    "limits": {"cpu": "500m", "memory": "128Mi"},
}


@dataclass(frozen=True)
class Settings:
    """What the chart tells the webhook to inject (its ``config.json``, camelCase as in values)."""

    image: str
    image_pull_policy: str = "IfNotPresent"
    source_path: str = "/opt/primus-lens"  # the tree inside the injector image
    mount_path: str = "/opt/primus-lens"  # where the selected containers see it, read-only
    volume_name: str = "primus-lens-inject"
    volume_size_limit: str = "64Mi"
    init_container_name: str = "primus-lens-inject"
    init_resources: Mapping[str, Any] = field(default_factory=lambda: _DEFAULT_RESOURCES)
    init_security_context: Mapping[str, Any] = field(
        default_factory=lambda: _DEFAULT_SECURITY_CONTEXT)
    env: Tuple[Tuple[str, str], ...] = ()  # reporting configuration, added where not set
    # (name, secret, key): variables read from a Secret in the pod's namespace, added where not set
    secret_env: Tuple[Tuple[str, str, str], ...] = ()
    downward_api: bool = True
    workload_uid_from_annotation: bool = True
    # Without a containers annotation, a pod annotated with this key gets only the container it
    # names (SaFE marks its training container so); "" turns the rule off.
    main_container_annotation: str = SAFE_MAIN_CONTAINER_KEY
    agent: sidecar.AgentSettings = field(default_factory=sidecar.AgentSettings)  # off by default

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Settings:
        """Validate the config file strictly: a typo must fail at start-up, not silently."""
        keys = {"image": "image", "imagePullPolicy": "image_pull_policy",
                "sourcePath": "source_path", "mountPath": "mount_path",
                "volumeName": "volume_name", "volumeSizeLimit": "volume_size_limit",
                "initContainerName": "init_container_name", "initResources": "init_resources",
                "initSecurityContext": "init_security_context", "env": "env", "secretEnv": "secret_env",
                "downwardAPI": "downward_api",
                "workloadUidFromAnnotation": "workload_uid_from_annotation",
                "mainContainerAnnotation": "main_container_annotation", "agent": "agent"}
        values = fields(data, keys, "configuration")
        for name in ("image", "image_pull_policy", "source_path", "mount_path", "volume_name",
                     "volume_size_limit", "init_container_name"):
            if name in values and (not isinstance(values[name], str) or not values[name]):
                raise SettingsError(f"{name} must be a non-empty string")
        if not values.get("image"):
            raise SettingsError("image is required")
        for name in ("downward_api", "workload_uid_from_annotation"):
            if name in values and not isinstance(values[name], bool):
                raise SettingsError(f"{name} must be true or false")
        if not isinstance(values.get("main_container_annotation", ""), str):
            raise SettingsError("main_container_annotation must be a string (\"\" turns it off)")
        for name in ("init_resources", "init_security_context"):
            if name in values and not isinstance(values[name], Mapping):
                raise SettingsError(f"{name} must be an object")
        if "agent" in values:
            values["agent"] = sidecar.AgentSettings.from_mapping(values["agent"])
        values["env"] = _settings_env(values.get("env", {}))
        values["secret_env"] = _settings_secret_env(values.get("secret_env", {}))
        twice = {name for name, _ in values["env"]} & {name for name, _, _ in values["secret_env"]}
        if twice:
            raise SettingsError(f"env and secretEnv both set {', '.join(sorted(twice))}")
        settings = cls(**values)
        settings._check()
        return settings

    def _check(self) -> None:
        if self.image_pull_policy not in ("Always", "IfNotPresent", "Never"):
            raise SettingsError("imagePullPolicy must be Always, IfNotPresent or Never")
        for name in ("source_path", "mount_path"):
            path = getattr(self, name)
            if not path.startswith("/") or ":" in path or path.rstrip("/") == "":
                raise SettingsError(f"{name} must be an absolute path without ':' and not /")
        for name in ("volume_name", "init_container_name"):
            if not DNS_LABEL.match(getattr(self, name)):
                raise SettingsError(f"{name} must be a DNS label (lowercase, digits, '-')")
        if not QUANTITY.match(self.volume_size_limit):
            raise SettingsError("volumeSizeLimit must be a quantity such as 64Mi")
        if self.agent.container_name == self.init_container_name or (
                self.agent.records_volume_name == self.volume_name):
            raise SettingsError("the agent's container and volume need names of their own")

    @property
    def mount_dir(self) -> str:
        return self.mount_path.rstrip("/")

    @cached_property
    def init_container(self) -> Dict[str, Any]:
        """Built once: patches are serialised, never mutated, so every pod can share it."""
        return {
            "name": self.init_container_name,
            "image": self.image,
            "imagePullPolicy": self.image_pull_policy,
            # cp without -p: a non-root user can copy, and the copy belongs to it.
            "command": ["cp", "-R", self.source_path.rstrip("/") + "/.", _INIT_TARGET],
            "volumeMounts": [{"name": self.volume_name, "mountPath": _INIT_TARGET}],
            "resources": dict(self.init_resources),
            "securityContext": dict(self.init_security_context),
            "terminationMessagePolicy": "FallbackToLogsOnError",
        }


def _settings_env(raw: Any) -> Tuple[Tuple[str, str], ...]:
    """Reporting variables from the chart: PRIMUS_LENS_* names only, string values."""
    if not isinstance(raw, Mapping):
        raise SettingsError("env must be an object of NAME: value")
    pairs = []
    for name, value in sorted(raw.items()):
        _check_env_name("env", name)
        if not isinstance(value, str):
            raise SettingsError(f"env: the value of {name} must be a string")
        pairs.append((name, value))
    return tuple(pairs)


def _settings_secret_env(raw: Any) -> Tuple[Tuple[str, str, str], ...]:
    """Variables from a Secret (the OTLP headers: credentials stay out of the chart's ConfigMap):
    ``{NAME: {"name": secret, "key": key}}``."""
    if not isinstance(raw, Mapping):
        raise SettingsError("secretEnv must be an object of NAME: {name, key}")
    entries = []
    for name, ref in sorted(raw.items()):
        _check_env_name("secretEnv", name)
        if not isinstance(ref, Mapping) or set(ref) != {"name", "key"}:
            raise SettingsError(f"secretEnv: {name} must be an object with exactly name and key")
        if not isinstance(ref["name"], str) or not _SECRET_NAME.match(ref["name"]):
            raise SettingsError(f"secretEnv: the secret name of {name} must be a DNS subdomain")
        if not isinstance(ref["key"], str) or not _SECRET_KEY.match(ref["key"]):
            raise SettingsError(f"secretEnv: the key of {name} must be a Secret data key")
        entries.append((name, ref["name"], ref["key"]))
    return tuple(entries)


def _check_env_name(where: str, name: Any) -> None:
    if not isinstance(name, str) or not _OUR_ENV_NAME.match(name):
        raise SettingsError(f"{where}: {name!r} is not a PRIMUS_LENS_* variable name")


def unknown_env_names(settings: Settings, known: AbstractSet[str]) -> List[str]:
    """Names outside ``known``, the variables the injector reads (typos, or a newer chart): worth
    a start-up warning.  The caller passes them: this module imports no injector code."""
    return [name for name, _ in settings.env if name not in known]


# -- the decision for one pod ---------------------------------------------------------------------

@dataclass
class Decision:
    """The patch for one pod and, for the log and the user's warnings, why it looks like it does."""

    summary: str
    patch: List[Dict[str, Any]] = field(default_factory=list)
    injected: List[str] = field(default_factory=list)  # containers injected by this patch
    skipped: Dict[str, str] = field(default_factory=dict)  # container -> reason
    warning: str = ""  # why the whole pod was left alone, for the user (kubectl shows it)
    agent: str = ""  # the pod agent: the form added, "present", or why there is none
    notes: List[str] = field(default_factory=list)  # about the agent, for the user


def escape(key: str) -> str:
    """A key as one JSON Pointer segment (RFC 6901): annotation keys contain ``/``."""
    return key.replace("~", "~0").replace("/", "~1")


@dataclass(frozen=True)
class _Names:
    """What our volume and init container are called in this pod, and whether they exist yet."""

    volume: str
    init: str
    present: bool  # an earlier admission already added both


def decide(pod: Any, settings: Settings) -> Decision:
    """Compute the patch that gives ``pod`` the injector, or say why it gets none."""
    if not isinstance(pod, dict):
        raise MalformedPod("the object is not a pod")
    metadata = mapping(pod.get("metadata"), "metadata")
    annotations = mapping(metadata.get("annotations"), "metadata.annotations")
    spec = mapping(pod.get("spec"), "spec")
    containers = objects(spec.get("containers"), "spec.containers")
    if not containers:
        raise MalformedPod("the pod has no containers")
    if str(annotations.get(INJECT_KEY, "")).strip().lower() in _OPT_OUT_VALUES:
        return Decision(f"opted out by the annotation {INJECT_KEY}")
    if mapping(spec.get("os"), "spec.os").get("name") == "windows":
        return Decision("a Windows pod")
    selected, missing = _selection(annotations, containers, settings)
    if len(selected) > MAX_CONTAINERS:
        return _refused(f"{len(selected)} containers to inject, more than the {MAX_CONTAINERS} "
                        "the webhook injects in one pod")

    names = _our_names(spec, settings)
    decision = Decision("", skipped=missing)
    agent = sidecar.find_agent(spec, settings.image)
    carrying: List[str] = []
    to_inject: List[Tuple[int, Dict[str, Any]]] = []
    for index, container in enumerate(containers):
        name = container.get("name")
        if not isinstance(name, str) or not name:
            raise MalformedPod(f"spec.containers[{index}] has no name")
        if name not in selected or container is agent:
            continue
        state = _container_state(container, names, settings)
        if state == "injected":
            carrying.append(name)
        elif state:
            decision.skipped[name] = state
        else:
            to_inject.append((index, container))
            carrying.append(name)

    plan = _agent_plan(spec, annotations, [c for _, c in to_inject], settings)
    decision.agent, decision.notes = plan.summary, plan.notes
    for index, container in to_inject:
        decision.patch.extend(_container_patch(index, container, annotations, names, settings,
                                               plan))
        decision.injected.append(container["name"])

    volumes: List[Dict[str, Any]] = []
    inits: List[Dict[str, Any]] = []
    if decision.injected and not names.present:
        volumes, inits = _pod_additions(names, settings)
    volumes.extend(plan.volumes)
    if plan.agent is not None and plan.list_key == "initContainers":
        inits.append(plan.agent)  # a native sidecar, after our copy
    decision.patch[:0] = [*append_all(spec, "/spec", "volumes", volumes),
                          *append_all(spec, "/spec", "initContainers", inits)]
    if plan.agent is not None and plan.list_key == "containers":
        decision.patch.append(append(spec, "/spec", "containers", plan.agent))
    if carrying or decision.skipped:
        decision.patch.extend(_metadata_patch(pod, carrying, decision.skipped,
                                              _agent_marks(plan, annotations, settings)))
    if decision.injected:
        decision.summary = "injected"
    elif carrying:
        decision.summary = "already injected"
    else:
        decision.summary = "no container to inject"
    return decision


def _agent_plan(spec: Dict[str, Any], annotations: Mapping[str, Any],
                trainers: List[Dict[str, Any]], settings: Settings) -> sidecar.Plan:
    """The pod agent for the containers injected now, unless the pod opts out of it."""
    if str(annotations.get(AGENT_KEY, "")).strip().lower() in _OPT_OUT_VALUES:
        return sidecar.Plan(f"opted out by the annotation {AGENT_KEY}")
    default_path = dict(settings.env).get(sidecar.OUTPUT_PATH) or settings.agent.records_path
    return sidecar.plan(spec, trainers, settings.agent, settings.image,
                        settings.image_pull_policy, default_path.rstrip("/") or "/",
                        _standard_env(annotations, settings))


def _agent_marks(plan: sidecar.Plan, annotations: Mapping[str, Any],
                 settings: Settings) -> Tuple[Dict[str, str], Dict[str, str]]:
    """(annotations, labels) a pod gets with a new agent: the label the chart's PodMonitor and
    VMPodScrape select, and the prometheus.io/* annotations unless the pod has its own."""
    if plan.agent is None:
        return {}, {}
    marks: Dict[str, str] = {}
    if settings.agent.prometheus_annotations and not any(k in annotations for k in PROMETHEUS_KEYS):
        port = plan.agent["ports"][0]["containerPort"]
        marks = dict(zip(PROMETHEUS_KEYS, ("true", str(port), "/metrics")))
    return marks, {AGENT_KEY: "true"}


def _refused(why: str) -> Decision:
    """A pod left alone as a whole, with a warning that says why."""
    return Decision(f"not injected: {why}", warning=_bounded(
        f"primus-lens: pod not injected: {why}", MAX_WARNING))


def _selection(annotations: Mapping[str, Any], containers: List[Dict[str, Any]],
               settings: Settings) -> Tuple[set, Dict[str, str]]:
    """The containers to inject, and why names that select containers found none.

    Our containers annotation wins; without it, the main-container annotation (SaFE's) names the
    one container to inject; without either, every container is injected.
    """
    names = {c.get("name") for c in containers}
    source = CONTAINERS_KEY
    wanted = {part.strip() for part in str(annotations.get(CONTAINERS_KEY, "")).split(",")}
    wanted.discard("")
    if not wanted and settings.main_container_annotation:
        source = settings.main_container_annotation
        main = str(annotations.get(source, "")).strip()
        wanted = {main} if main else set()
    if not wanted:
        return names, {}
    return wanted & names, {name: f"named in {source} but not in the pod"
                            for name in sorted(wanted - names)}


def _our_names(spec: Dict[str, Any], settings: Settings) -> _Names:
    """Find what an earlier admission added, or pick names that nothing in the pod uses yet.

    Ours is recognised by what it does (an init container running our copy command into an
    emptyDir mounted at our target), not by its name: a user's volume or container may carry the
    configured name, and reusing it would make the API server refuse the pod (a duplicate
    container name) or make our init container write into the user's volume.
    """
    volumes = {v.get("name"): v for v in objects(spec.get("volumes"), "spec.volumes")}
    inits = objects(spec.get("initContainers"), "spec.initContainers")
    command = settings.init_container["command"]
    for init in inits:
        if init.get("command") != command:
            continue
        for mount in objects(init.get("volumeMounts"), "initContainers[].volumeMounts"):
            volume = volumes.get(mount.get("name"))
            if mount.get("mountPath") == _INIT_TARGET and isinstance(volume, dict) and (
                    "emptyDir" in volume):
                return _Names(mount["name"], str(init.get("name")), True)
    return _Names(free_name(settings.volume_name, set(volumes)),
                  free_name(settings.init_container_name, container_names(spec)), False)


def _container_state(container: Dict[str, Any], names: _Names, settings: Settings) -> str:
    """"injected", "" (to inject) or the reason the container is left alone."""
    mounts = objects(container.get("volumeMounts"), "volumeMounts")
    if names.present and any(m.get("name") == names.volume for m in mounts):
        return "injected"
    devices = objects(container.get("volumeDevices"), "volumeDevices")  # the same path is refused
    if any(str(m.get("mountPath", "")).rstrip("/") == settings.mount_dir for m in mounts) or any(
            str(d.get("devicePath", "")).rstrip("/") == settings.mount_dir for d in devices):
        return f"something else is mounted at {settings.mount_dir}"
    python_path = last_env(container, "PYTHONPATH")
    if python_path is not None and "valueFrom" in python_path[1]:
        return "PYTHONPATH comes from valueFrom; the webhook cannot prepend to it"
    return ""


def _image_python_path(annotations: Mapping[str, Any], container: str) -> str:
    value = annotations.get(f"{IMAGE_PYTHONPATH_KEY}.{container}",
                            annotations.get(IMAGE_PYTHONPATH_KEY, ""))
    return ":".join(p for p in str(value).strip().split(":") if p)


def _container_patch(index: int, container: Dict[str, Any], annotations: Mapping[str, Any],
                     names: _Names, settings: Settings,
                     plan: sidecar.Plan) -> List[Dict[str, Any]]:
    base = f"/spec/containers/{index}"
    ops: List[Dict[str, Any]] = []
    env = objects(container.get("env"), "env")
    defined = {entry.get("name") for entry in env}
    added: List[Dict[str, Any]] = []

    python_path = last_env(container, "PYTHONPATH")
    if python_path is not None:
        position, entry = python_path
        current = str(entry.get("value") or "")
        if settings.mount_dir not in current.split(":"):
            value = settings.mount_dir + (":" + current if current else "")
            ops.append({"op": "add", "path": f"{base}/env/{position}/value",
                        "value": value})
    else:
        # The image's own ENV PYTHONPATH is invisible here and is replaced by ours: a team
        # declares it with an annotation.  Behind envFrom a PYTHONPATH may hide; the kubelet
        # expands $(PYTHONPATH) to it (and leaves the harmless literal when there is none).
        parts = [settings.mount_dir]
        if container.get("envFrom"):
            parts.append("$(PYTHONPATH)")
        image_path = _image_python_path(annotations, container["name"])
        if image_path:
            parts.append(image_path)
        added.append({"name": "PYTHONPATH", "value": ":".join(parts)})

    agent_env = plan.trainer_env.get(container["name"], [])
    mine = {entry["name"] for entry in agent_env}
    added.extend(entry for entry in _standard_env(annotations, settings)
                 if entry["name"] not in defined and entry["name"] not in mine)
    added.extend(agent_env)

    if container.get("env") is None:
        ops.append({"op": "add", "path": f"{base}/env", "value": added})
    else:
        ops.extend({"op": "add", "path": f"{base}/env/-", "value": entry}
                   for entry in added)
    mounts = [{"name": names.volume, "mountPath": settings.mount_dir, "readOnly": True}]
    if container["name"] in plan.trainer_mounts:
        mounts.append(plan.trainer_mounts[container["name"]])
    ops.extend(append_all(container, base, "volumeMounts", mounts))
    return ops


def _standard_env(annotations: Mapping[str, Any], settings: Settings) -> List[Dict[str, Any]]:
    """Identity and reporting variables, for a container that sets none of them: the trainers
    get those they lack, the pod agent too."""
    env: List[Dict[str, Any]] = []
    if settings.downward_api:
        env.extend({"name": name, "valueFrom": {
            "fieldRef": {"apiVersion": "v1", "fieldPath": field_path}}}
            for name, field_path in DOWNWARD_API)
    workload_uid = str(annotations.get(WORKLOAD_UID_KEY, "")).strip()
    if settings.workload_uid_from_annotation and _UID.match(workload_uid):
        env.append({"name": "WORKLOAD_UID", "value": workload_uid})
    env.extend({"name": name, "value": value} for name, value in settings.env)
    # optional: a namespace without the Secret still starts its pods
    env.extend({"name": name, "valueFrom": {
        "secretKeyRef": {"name": secret, "key": key, "optional": True}}}
        for name, secret, key in settings.secret_env)
    return env


def _pod_additions(names: _Names,
                   settings: Settings) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
    """The volume and the init container, under the names ``_our_names`` found free."""
    volume = {"name": names.volume, "emptyDir": {"sizeLimit": settings.volume_size_limit}}
    init = settings.init_container
    if (names.init, names.volume) != (settings.init_container_name, settings.volume_name):
        init = {**init, "name": names.init,
                "volumeMounts": [{"name": names.volume, "mountPath": _INIT_TARGET}]}
    return [volume], [init]


def _metadata_patch(pod: Dict[str, Any], carrying: List[str], skipped: Dict[str, str],
                    marks: Tuple[Dict[str, str], Dict[str, str]]) -> List[Dict[str, Any]]:
    """Our annotations (and ``marks``: the agent's annotations and label), where they differ."""
    metadata = pod.get("metadata")
    annotations = (metadata or {}).get("annotations") or {}
    labels = (metadata or {}).get("labels") or {}
    wanted = dict(marks[0])
    if carrying:
        wanted[INJECTED_KEY] = _bounded(",".join(sorted(carrying)), MAX_ANNOTATION_VALUE)
    if skipped:
        wanted[SKIPPED_KEY] = _bounded(
            "; ".join(f"{name}: {why}" for name, why in sorted(skipped.items())),
            MAX_ANNOTATION_VALUE)
    changes = {"annotations": {key: value for key, value in wanted.items()
                               if annotations.get(key) != value},
               "labels": {key: value for key, value in marks[1].items()
                          if labels.get(key) != value}}
    changes = {kind: values for kind, values in changes.items() if values}
    if not changes:
        return []
    if metadata is None:  # absent or null: the API server fills it in, the patch must create it
        return [{"op": "add", "path": "/metadata", "value": changes}]
    ops = []
    for kind, values in changes.items():
        if metadata.get(kind) is None:
            ops.append({"op": "add", "path": f"/metadata/{kind}", "value": values})
        else:
            ops.extend({"op": "add", "path": f"/metadata/{kind}/" + escape(key), "value": value}
                       for key, value in sorted(values.items()))
    return ops


def _bounded(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, visibly."""
    return text if len(text) <= limit else text[:limit - 3] + "..."


# -- AdmissionReview in and out -------------------------------------------------------------------

class BadReview(ValueError):
    """Not an AdmissionReview v1 with a request uid: there is nothing to answer to."""


@dataclass
class Outcome:
    """One admission, for the webhook's log line."""

    uid: str
    pod: str
    decision: str
    injected: List[str] = field(default_factory=list)
    skipped: Dict[str, str] = field(default_factory=dict)
    error: str = ""
    agent: str = ""  # the pod agent: the form added, "present", or why there is none


def review(body: Union[bytes, bytearray], settings: Settings) -> Tuple[Dict[str, Any], Outcome]:
    """Answer one AdmissionReview.  Always ``allowed``; raises ``BadReview`` only without a uid."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep to parse
        raise BadReview(f"the body is not JSON ({exc})")
    request = document.get("request") if isinstance(document, dict) else None
    uid = request.get("uid") if isinstance(request, dict) else None
    if not isinstance(request, dict) or not isinstance(uid, str) or not uid:
        raise BadReview("no request.uid")
    if document.get("apiVersion") != REVIEW_API_VERSION or document.get("kind") != "AdmissionReview":
        raise BadReview(f"expected {REVIEW_API_VERSION} AdmissionReview, got "
                        f"{document.get('apiVersion')} {document.get('kind')}")
    pod = request.get("object")
    outcome = Outcome(uid, _pod_label(request, pod), "")
    response: Dict[str, Any] = {"uid": uid, "allowed": True}
    try:
        kind = mapping(request.get("kind"), "request.kind")
        if (kind.get("group", ""), kind.get("kind")) != ("", "Pod") or request.get("subResource"):
            outcome.decision = f"not a pod ({kind.get('kind')}); admitted unchanged"
        elif request.get("operation") != "CREATE":
            outcome.decision = f"operation {request.get('operation')}; admitted unchanged"
        else:
            decision = decide(pod, settings)
            patch = json.dumps(decision.patch, separators=(",", ":")).encode()
            if len(patch) > MAX_PATCH_BYTES:
                decision = _refused(f"its patch would take {len(patch)} bytes, more than "
                                    f"{MAX_PATCH_BYTES}")
            outcome.decision = decision.summary
            outcome.injected, outcome.skipped = decision.injected, decision.skipped
            outcome.agent = decision.agent
            if decision.patch:
                response["patchType"] = "JSONPatch"
                response["patch"] = base64.b64encode(patch).decode("ascii")
            if decision.skipped or decision.notes:
                response["warnings"] = _warnings(decision.skipped, decision.notes)
            if decision.warning:
                response["warnings"] = [decision.warning]
    except Exception as exc:  # never block a pod: admit it as it is and say why in the log
        outcome.decision = "admitted unchanged after an error"
        outcome.error = f"{type(exc).__name__}: {exc}"
        response = {"uid": uid, "allowed": True}
    return ({"apiVersion": REVIEW_API_VERSION, "kind": "AdmissionReview", "response": response},
            outcome)


def _warnings(skipped: Dict[str, str], notes: List[str]) -> List[str]:
    """One warning per container left alone, then the agent's, shown by kubectl; a few at
    most, each short."""
    lines = [_bounded(f"primus-lens: container {name} not injected: {why}", MAX_WARNING)
             for name, why in sorted(skipped.items())]
    lines.extend(_bounded(note, MAX_WARNING) for note in notes)
    if len(lines) <= MAX_WARNINGS:
        return lines
    rest = len(lines) - MAX_WARNINGS + 1
    return [*lines[:MAX_WARNINGS - 1],
            f"primus-lens: {rest} more containers not injected (annotation {SKIPPED_KEY})"]


def _pod_label(request: Dict[str, Any], pod: Any) -> str:
    """``namespace/name`` for logs; pods of controllers have only a generateName at admission."""
    metadata = pod.get("metadata") if isinstance(pod, dict) else None
    metadata = metadata if isinstance(metadata, dict) else {}
    name = metadata.get("name") or request.get("name") or (
        str(metadata.get("generateName", "")) + "*" if metadata.get("generateName") else "?")
    return f"{request.get('namespace') or metadata.get('namespace') or '?'}/{name}"
