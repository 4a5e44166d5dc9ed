"""What the admission webhook decides for one pod, and the JSONPatch that carries it out.

Pure functions over plain dicts: AdmissionReview has no model in any Kubernetes client, and the
server (``webhook``) must stay stdlib-only.  The patch only ever *adds what is missing* (the
volume, the init container, a container's mount and each environment variable), so running it on
a pod it already produced yields an empty patch: a second admission, a reinvocation after another
webhook, or a replayed request changes nothing, while a container that another webhook added in
between is still injected.  Anything unexpected about a pod results in *no* patch; the caller
admits the pod unchanged, because a telemetry injector must never stop a training job.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Dict, List, Mapping, Optional, Tuple

from .config import VARIABLES

PREFIX = "primus-lens.amd.com/"
INJECT_KEY = PREFIX + "inject"  # label "enabled" opts in (webhook selectors); annotation "false" opts out
CONTAINERS_KEY = PREFIX + "containers"  # annotation: comma-separated container names (default: all)
IMAGE_PYTHONPATH_KEY = PREFIX + "image-pythonpath"  # annotation: the image's own ENV PYTHONPATH
WORKLOAD_UID_KEY = PREFIX + "workload-uid"  # annotation: the Lens workload UID, if an operator knows it
INJECTED_KEY = PREFIX + "injected"  # written: the containers that carry the injector
SKIPPED_KEY = PREFIX + "skipped"  # written: containers left alone, and why

OPT_OUT_VALUES = frozenset(("false", "disabled", "no", "off", "0"))
DOWNWARD_API = (("POD_NAME", "metadata.name"), ("POD_UID", "metadata.uid"),
                ("POD_NAMESPACE", "metadata.namespace"), ("NODE_NAME", "spec.nodeName"))
INIT_TARGET = "/mnt/primus-lens"  # where the init container sees the emptyDir
REVIEW_API_VERSION = "admission.k8s.io/v1"

_OUR_ENV_NAME = re.compile(r"^PRIMUS_LENS_[A-Z0-9_]+$")
_UID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E|m)?$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")

DEFAULT_SECURITY_CONTEXT: Dict[str, Any] = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "runAsUser": 65532,
    "runAsGroup": 65532,
    "seccompProfile": {"type": "RuntimeDefault"},
}
DEFAULT_RESOURCES: Dict[str, Any] = {
    "requests": {"cpu": "10m", "memory": "32Mi"},
    "limits": {"cpu": "500m", "memory": "128Mi"},
}


class SettingsError(ValueError):
    """The webhook's configuration file is unusable; the message names the offending key."""


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
    init_resources: Mapping[str, Any] = field(default_factory=lambda: DEFAULT_RESOURCES)
    init_security_context: Mapping[str, Any] = field(
        default_factory=lambda: DEFAULT_SECURITY_CONTEXT)
    env: Tuple[Tuple[str, str], ...] = ()  # reporting configuration, added where not set
    downward_api: bool = True
    workload_uid_from_annotation: bool = True

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Settings:
        """Validate the config file strictly: a typo must fail at start-up, not silently."""
        keys = {"image": "image", "imagePullPolicy": "image_pull_policy",
                "sourcePath": "source_path", "mountPath": "mount_path",
                "volumeName": "volume_name", "volumeSizeLimit": "volume_size_limit",
                "initContainerName": "init_container_name", "initResources": "init_resources",
                "initSecurityContext": "init_security_context", "env": "env",
                "downwardAPI": "downward_api",
                "workloadUidFromAnnotation": "workload_uid_from_annotation"}
        if not isinstance(data, Mapping):
            raise SettingsError("the configuration must be a JSON object")
        unknown = sorted(set(data) - set(keys))
        if unknown:
            raise SettingsError(f"unknown configuration keys: {', '.join(unknown)}")
        values = {keys[name]: value for name, value in data.items()}
        for name in ("image", "image_pull_policy", "source_path", "mount_path", "volume_name",
                     "volume_size_limit", "init_container_name"):
            if name in values and (not isinstance(values[name], str) or not values[name]):
                raise SettingsError(f"{name} must be a non-empty string")
        if not values.get("image"):
            raise SettingsError("image is required")
        for name in ("downward_api", "workload_uid_from_annotation"):
            if name in values and not isinstance(values[name], bool):
                raise SettingsError(f"{name} must be true or false")
        for name in ("init_resources", "init_security_context"):
            if name in values and not isinstance(values[name], Mapping):
                raise SettingsError(f"{name} must be an object")
        values["env"] = _settings_env(values.get("env", {}))
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
            if not _DNS_LABEL.match(getattr(self, name)):
                raise SettingsError(f"{name} must be a DNS label (lowercase, digits, '-')")
        if not _QUANTITY.match(self.volume_size_limit):
            raise SettingsError("volumeSizeLimit must be a quantity such as 64Mi")

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
            "command": ["cp", "-R", self.source_path.rstrip("/") + "/.", INIT_TARGET],
            "volumeMounts": [{"name": self.volume_name, "mountPath": INIT_TARGET}],
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
        if not isinstance(name, str) or not _OUR_ENV_NAME.match(name):
            raise SettingsError(f"env: {name!r} is not a PRIMUS_LENS_* variable name")
        if not isinstance(value, str):
            raise SettingsError(f"env: the value of {name} must be a string")
        pairs.append((name, value))
    return tuple(pairs)


def unknown_env_names(settings: Settings) -> List[str]:
    """Names the injector does not read (typos, or a newer chart): worth a start-up warning."""
    known = {var.name for var in VARIABLES}
    return [name for name, _ in settings.env if name not in known]


# -- the decision for one pod ---------------------------------------------------------------------

class MalformedPod(ValueError):
    """The object is not a pod we can reason about; it is admitted unchanged."""


@dataclass
class Decision:
    """The patch for one pod and, for the log and the user's warnings, why it looks like it does."""

    summary: str
    patch: List[Dict[str, Any]] = field(default_factory=list)
    injected: List[str] = field(default_factory=list)  # containers injected by this patch
    skipped: Dict[str, str] = field(default_factory=dict)  # container -> reason


def escape(key: str) -> str:
    """A key as one JSON Pointer segment (RFC 6901): annotation keys contain ``/``."""
    return key.replace("~", "~0").replace("/", "~1")


def _dict(value: Any, what: str) -> Dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise MalformedPod(f"{what} is not an object")
    return value


def _list(value: Any, what: str) -> List[Any]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise MalformedPod(f"{what} is not a list of objects")
    return value


def decide(pod: Any, settings: Settings) -> Decision:
    """Compute the patch that gives ``pod`` the injector, or say why it gets none."""
    if not isinstance(pod, dict):
        raise MalformedPod("the object is not a pod")
    metadata = _dict(pod.get("metadata"), "metadata")
    annotations = _dict(metadata.get("annotations"), "metadata.annotations")
    spec = _dict(pod.get("spec"), "spec")
    containers = _list(spec.get("containers"), "spec.containers")
    if not containers:
        raise MalformedPod("the pod has no containers")
    if str(annotations.get(INJECT_KEY, "")).strip().lower() in OPT_OUT_VALUES:
        return Decision(f"opted out by the annotation {INJECT_KEY}")
    if _dict(spec.get("os"), "spec.os").get("name") == "windows":
        return Decision("a Windows pod")

    selected, unknown = _selection(annotations, containers)
    decision = Decision("", skipped={name: f"named in {CONTAINERS_KEY} but not in the pod"
                                     for name in unknown})
    carrying: List[str] = []
    for index, container in enumerate(containers):
        name = container.get("name")
        if not isinstance(name, str) or not name:
            raise MalformedPod(f"spec.containers[{index}] has no name")
        if name not in selected:
            continue
        state = _container_state(container, settings)
        if state == "injected":
            carrying.append(name)
        elif state:
            decision.skipped[name] = state
        else:
            decision.patch.extend(_container_patch(index, container, annotations, settings))
            decision.injected.append(name)
            carrying.append(name)

    if decision.injected:
        decision.patch[:0] = _pod_patch(spec, settings)
    if carrying or decision.skipped:
        decision.patch.extend(_annotation_patch(metadata, annotations, carrying, decision.skipped))
    if decision.injected:
        decision.summary = "injected"
    elif carrying:
        decision.summary = "already injected"
    else:
        decision.summary = "no container to inject"
    return decision


def _selection(annotations: Mapping[str, Any],
               containers: List[Dict[str, Any]]) -> Tuple[set, List[str]]:
    """The containers to inject (all, or those the annotation names), and names not found."""
    names = {c.get("name") for c in containers}
    wanted = {part.strip() for part in str(annotations.get(CONTAINERS_KEY, "")).split(",")}
    wanted.discard("")
    if not wanted:
        return names, []
    return wanted & names, sorted(wanted - names)


def _container_state(container: Dict[str, Any], settings: Settings) -> str:
    """"injected", "" (to inject) or the reason the container is left alone."""
    mounts = _list(container.get("volumeMounts"), "volumeMounts")
    if any(m.get("name") == settings.volume_name for m in mounts):
        return "injected"
    if any(str(m.get("mountPath", "")).rstrip("/") == settings.mount_dir for m in mounts):
        return f"something else is mounted at {settings.mount_dir}"
    python_path = _last_env(container, "PYTHONPATH")
    if python_path is not None and "valueFrom" in python_path[1]:
        return "PYTHONPATH comes from valueFrom; the webhook cannot prepend to it"
    return ""


def _last_env(container: Dict[str, Any], name: str) -> Optional[Tuple[int, Dict[str, Any]]]:
    """The entry the kubelet uses for ``name``: with duplicates, the last one wins."""
    found = None
    for index, entry in enumerate(_list(container.get("env"), "env")):
        if entry.get("name") == name:
            found = (index, entry)
    return found


def _image_python_path(annotations: Mapping[str, Any], container: str) -> str:
    value = annotations.get(f"{IMAGE_PYTHONPATH_KEY}.{container}",
                            annotations.get(IMAGE_PYTHONPATH_KEY, ""))
    return ":".join(p for p in str(value).strip().split(":") if p)


def _container_patch(index: int, container: Dict[str, Any], annotations: Mapping[str, Any],
                     settings: Settings) -> List[Dict[str, Any]]:
    base = f"/spec/containers/{index}"
    ops: List[Dict[str, Any]] = []
    env = _list(container.get("env"), "env")
    defined = {entry.get("name") for entry in env}
    added: List[Dict[str, Any]] = []

    python_path = _last_env(container, "PYTHONPATH")
    if python_path is not None:
        position, entry = python_path
        current = str(entry.get("value", ""))
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

    if settings.downward_api:
        for name, field_path in DOWNWARD_API:
            if name not in defined:
                added.append({"name": name, "valueFrom": {
                    "fieldRef": {"apiVersion": "v1", "fieldPath": field_path}}})
    workload_uid = str(annotations.get(WORKLOAD_UID_KEY, "")).strip()
    if (settings.workload_uid_from_annotation and _UID.match(workload_uid)
            and "WORKLOAD_UID" not in defined):
        added.append({"name": "WORKLOAD_UID", "value": workload_uid})
    for name, value in settings.env:
        if name not in defined:
            added.append({"name": name, "value": value})

    if container.get("env") is None:
        ops.append({"op": "add", "path": f"{base}/env", "value": added})
    else:
        ops.extend({"op": "add", "path": f"{base}/env/-", "value": entry}
                   for entry in added)
    mount = {"name": settings.volume_name, "mountPath": settings.mount_dir, "readOnly": True}
    if container.get("volumeMounts") is None:
        ops.append({"op": "add", "path": f"{base}/volumeMounts", "value": [mount]})
    else:
        ops.append({"op": "add", "path": f"{base}/volumeMounts/-", "value": mount})
    return ops


def _pod_patch(spec: Dict[str, Any], settings: Settings) -> List[Dict[str, Any]]:
    ops: List[Dict[str, Any]] = []
    volumes = _list(spec.get("volumes"), "spec.volumes")
    if not any(v.get("name") == settings.volume_name for v in volumes):
        volume = {"name": settings.volume_name,
                  "emptyDir": {"sizeLimit": settings.volume_size_limit}}
        if spec.get("volumes") is None:
            ops.append({"op": "add", "path": "/spec/volumes", "value": [volume]})
        else:
            ops.append({"op": "add", "path": "/spec/volumes/-", "value": volume})
    inits = _list(spec.get("initContainers"), "spec.initContainers")
    if not any(c.get("name") == settings.init_container_name for c in inits):
        if spec.get("initContainers") is None:
            ops.append({"op": "add", "path": "/spec/initContainers",
                        "value": [settings.init_container]})
        else:
            ops.append({"op": "add", "path": "/spec/initContainers/-",
                        "value": settings.init_container})
    return ops


def _annotation_patch(metadata: Dict[str, Any], annotations: Dict[str, Any], carrying: List[str],
                      skipped: Dict[str, str]) -> List[Dict[str, Any]]:
    wanted = {}
    if carrying:
        wanted[INJECTED_KEY] = ",".join(sorted(carrying))
    if skipped:
        wanted[SKIPPED_KEY] = "; ".join(f"{name}: {why}" for name, why in sorted(skipped.items()))
    changes = {key: value for key, value in wanted.items() if annotations.get(key) != value}
    if not changes:
        return []
    if metadata.get("annotations") is None:
        return [{"op": "add", "path": "/metadata/annotations", "value": changes}]
    return [{"op": "add", "path": "/metadata/annotations/" + escape(key), "value": value}
            for key, value in sorted(changes.items())]


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


def review(body: bytes, settings: Settings) -> Tuple[Dict[str, Any], Outcome]:
    """Answer one AdmissionReview.  Always ``allowed``; raises ``BadReview`` only without a uid."""
    try:
        document = json.loads(body)
    except ValueError as exc:
        raise BadReview(f"the body is not JSON ({exc})")
    request = document.get("request") if isinstance(document, dict) else None
    uid = request.get("uid") if isinstance(request, dict) else None
    if not isinstance(uid, str) or not uid:
        raise BadReview("no request.uid")
    if document.get("apiVersion") != REVIEW_API_VERSION or document.get("kind") != "AdmissionReview":
        raise BadReview(f"expected {REVIEW_API_VERSION} AdmissionReview, got "
                        f"{document.get('apiVersion')} {document.get('kind')}")
    pod = request.get("object")
    outcome = Outcome(uid, _pod_label(request, pod), "")
    response: Dict[str, Any] = {"uid": uid, "allowed": True}
    try:
        kind = _dict(request.get("kind"), "request.kind")
        if (kind.get("group", ""), kind.get("kind")) != ("", "Pod") or request.get("subResource"):
            outcome.decision = f"not a pod ({kind.get('kind')}); admitted unchanged"
        elif request.get("operation") != "CREATE":
            outcome.decision = f"operation {request.get('operation')}; admitted unchanged"
        else:
            decision = decide(pod, settings)
            outcome.decision = decision.summary
            outcome.injected, outcome.skipped = decision.injected, decision.skipped
            if decision.patch:
                response["patchType"] = "JSONPatch"
                response["patch"] = base64.b64encode(
                    json.dumps(decision.patch, separators=(",", ":")).encode()).decode("ascii")
            if decision.skipped:
                response["warnings"] = [f"primus-lens: container {name} not injected: {why}"
                                        for name, why in sorted(decision.skipped.items())]
    except Exception as exc:  # never block a pod: admit it as it is and say why in the log
        outcome.decision = "admitted unchanged after an error"
        outcome.error = f"{type(exc).__name__}: {exc}"
        response = {"uid": uid, "allowed": True}
    return ({"apiVersion": REVIEW_API_VERSION, "kind": "AdmissionReview", "response": response},
            outcome)


def _pod_label(request: Dict[str, Any], pod: Any) -> str:
    """``namespace/name`` for logs; pods of controllers have only a generateName at admission."""
    metadata = pod.get("metadata") if isinstance(pod, dict) else None
    metadata = metadata if isinstance(metadata, dict) else {}
    name = metadata.get("name") or request.get("name") or (
        str(metadata.get("generateName", "")) + "*" if metadata.get("generateName") else "?")
    return f"{request.get('namespace') or metadata.get('namespace') or '?'}/{name}"
