"""The pod agent in an injected pod: ``primus-lens agent`` beside the trainers, on their records.

The agent (docs/agent.md) is the pod's one sender: it reads every record under the trainers'
record root and serves ``/metrics``.  So the webhook puts the trainers' record root on a volume
that the agent mounts at the same path, gives the agent the trainers' sink settings and identity,
and tells the trainers (``PRIMUS_LENS_AGENT=true``) to record only.

Two forms (``AgentSettings.mode``): a native sidecar (an init container with ``restartPolicy:
Always``, Kubernetes 1.29 and later), which starts before the trainers, outlives them until the
pod ends and never keeps a Job's pod running; or a regular container for older clusters.

Where the records lie, per container to inject:

- the container sets ``PRIMUS_LENS_WANDB_OUTPUT_PATH`` itself: the volume mount holding that path
  is shared (the agent mounts the same volume at the same place); a path on no volume cannot be
  shared, and that container keeps sending by itself (a warning says so);
- otherwise the records go to the chart's path (``reporting.outputPath``, else ``recordsPath``),
  on the container's own volume where one holds that path, else on an emptyDir of ours.

One agent serves one root: the first container that can share decides it, and a container whose
records lie elsewhere keeps sending by itself.  Every trainer that shares the root gets
``PRIMUS_LENS_AGENT=true``, whatever its user: in agent mode a trainer makes the record's
directories writable by every user (docs/agent.md), so the agent, as the chart's non-root user,
keeps its cursors and locks beside records that a root trainer created.  The agent runs as the
trainer's user only where the pod spec names a non-root one; never as root unless the chart's
``agent.securityContext`` says so.

The agent is recognised by what it runs (our image with the ``agent`` argument), so a second
admission adds nothing, and a container another webhook added in between joins the existing
agent's root.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

from .podspec import (
    DNS_LABEL,
    QUANTITY,
    SettingsError,
    container_names,
    fields,
    free_name,
    holding_mount,
    last_env,
    mapping,
    objects,
)

MODES = ("off", "sidecar", "container")
OUTPUT_PATH = "PRIMUS_LENS_WANDB_OUTPUT_PATH"  # the trainers' record root (config.py)
SWITCH = "PRIMUS_LENS_AGENT"  # true in trainers: record only, the agent sends
PORT_VARIABLE = "PRIMUS_LENS_AGENT_PORT"
DRAIN_VARIABLE = "PRIMUS_LENS_AGENT_DRAIN_SECONDS"
PORT_NAME = "metrics"
ARGS = ["agent"]  # after the image's entry point, python3 -m primus_lens_inject
# A regular container must end by itself for a Job's pod to complete: it leaves once the
# trainers it saw are gone and their records are sent (docs/agent.md).  The kubelet stops a
# native sidecar after the trainers, so that form runs until SIGTERM.
EXIT_ARGS = ["--exit-when-done"]
DEFAULT_GRACE_SECONDS = 30  # the pod's terminationGracePeriodSeconds when it sets none
DRAIN_MARGIN_SECONDS = 5  # the agent stops sending this long before the kubelet's SIGKILL
# Variables of the trainer that the agent takes over as they are: the sender's identity and every
# setting of ours (sinks, budgets, the agent's own), so rows go where the trainer would send them.
_IDENTITY = ("POD_NAME", "POD_UID", "POD_NAMESPACE", "NODE_NAME", "WORKLOAD_UID")
_NOT_INHERITED = (SWITCH, OUTPUT_PATH)

_DEFAULT_RESOURCES: Dict[str, Any] = {
    "requests": {"cpu": "50m", "memory": "96Mi"},
    "limits": {"cpu": "1", "memory": "384Mi"},
}
# The "restricted" Pod Security Standard; the user is the trainer's where the pod names a non-root
# one, else the image's (65532).
_DEFAULT_SECURITY_CONTEXT: Dict[str, Any] = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "seccompProfile": {"type": "RuntimeDefault"},
}


@dataclass(frozen=True)
class AgentSettings:
    """The chart's ``agent`` object of the webhook's config.json (camelCase as in values)."""

    mode: str = "off"
    container_name: str = "primus-lens-agent"
    port: int = 9470
    records_path: str = "/var/lib/primus-lens/records"  # the record root, where the pod sets none
    records_volume_name: str = "primus-lens-records"
    records_size_limit: str = ""  # "": none (an emptyDir over its limit gets the pod evicted)
    resources: Mapping[str, Any] = field(default_factory=lambda: _DEFAULT_RESOURCES)
    security_context: Mapping[str, Any] = field(default_factory=lambda: _DEFAULT_SECURITY_CONTEXT)
    readiness_probe: bool = True
    prometheus_annotations: bool = True

    @classmethod
    def from_mapping(cls, data: Any) -> AgentSettings:
        keys = {"mode": "mode", "containerName": "container_name", "port": "port",
                "recordsPath": "records_path", "recordsVolumeName": "records_volume_name",
                "recordsSizeLimit": "records_size_limit", "resources": "resources",
                "securityContext": "security_context", "readinessProbe": "readiness_probe",
                "prometheusAnnotations": "prometheus_annotations"}
        values = fields(data, keys, "agent")
        for name in ("mode", "container_name", "records_path", "records_volume_name",
                     "records_size_limit"):
            if name in values and not isinstance(values[name], str):
                raise SettingsError(f"agent.{name} must be a string")
        for name in ("resources", "security_context"):
            if name in values and not isinstance(values[name], Mapping):
                raise SettingsError(f"agent.{name} must be an object")
        for name in ("readiness_probe", "prometheus_annotations"):
            if name in values and not isinstance(values[name], bool):
                raise SettingsError(f"agent.{name} must be true or false")
        settings = cls(**values)
        settings._check()
        return settings

    def _check(self) -> None:
        if self.mode not in MODES:
            raise SettingsError(f"agent.mode must be one of {', '.join(MODES)}")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not (
                1 <= self.port <= 65535):
            raise SettingsError("agent.port must be a port number (1-65535)")
        for name in ("container_name", "records_volume_name"):
            if not DNS_LABEL.match(getattr(self, name)):
                raise SettingsError(f"agent.{name} must be a DNS label (lowercase, digits, '-')")
        if not _absolute(self.records_path):
            raise SettingsError("agent.records_path must be an absolute path without ':' and not /")
        if self.records_size_limit and not QUANTITY.match(self.records_size_limit):
            raise SettingsError("agent.recordsSizeLimit must be empty or a quantity such as 4Gi")


def _absolute(path: str) -> bool:
    return path.startswith("/") and ":" not in path and path.rstrip("/") != ""


# -- where a container's records lie --------------------------------------------------------------

_VOLUME_KEYS = ("name", "mountPath", "subPath", "subPathExpr")


@dataclass(frozen=True)
class _Records:
    """A record root and the volume mount that holds it (None: ours, still to be added)."""

    path: str
    volume: Optional[Tuple[Any, ...]]  # what identifies the holding mount (_VOLUME_KEYS)
    mount: Optional[Dict[str, Any]] = field(default=None, compare=False)

    @classmethod
    def held(cls, path: str, mount: Optional[Dict[str, Any]]) -> _Records:
        volume = None if mount is None else tuple(mount.get(key) for key in _VOLUME_KEYS)
        return cls(path, volume, mount)


def _records_of(container: Dict[str, Any], default_path: str) -> Tuple[Optional[_Records], str]:
    """Where ``container`` writes its records, or why the agent cannot see them."""
    own = last_env(container, OUTPUT_PATH)
    if own is None:
        return _Records.held(default_path, holding_mount(container, default_path)), ""
    value = own[1].get("value")
    if "valueFrom" in own[1] or not isinstance(value, str) or not _absolute(value):
        return None, f"its {OUTPUT_PATH} is not an absolute path in the pod spec"
    path = posixpath.normpath(value)
    mount = holding_mount(container, path)
    if mount is None:
        return None, f"its records ({path}) are on no volume the agent could mount"
    return _Records.held(path, mount), ""


# -- the plan for one pod -------------------------------------------------------------------------

@dataclass
class Plan:
    """What the agent adds to one pod: to each trainer, to the pod, and what the user is told."""

    summary: str  # for the log: the form injected, "present", or why there is none
    trainer_env: Dict[str, List[Dict[str, Any]]] = field(default_factory=dict)  # by container
    trainer_mounts: Dict[str, Dict[str, Any]] = field(default_factory=dict)  # by container
    volumes: List[Dict[str, Any]] = field(default_factory=list)
    agent: Optional[Dict[str, Any]] = None  # the container to add
    list_key: str = "containers"  # where it goes: containers, or initContainers (sidecar)
    notes: List[str] = field(default_factory=list)  # warnings for the user


def find_agent(spec: Dict[str, Any], image: str) -> Optional[Dict[str, Any]]:
    """The agent an earlier admission added (our image running ``agent``), if any."""
    for key in ("initContainers", "containers"):
        for container in objects(spec.get(key), f"spec.{key}"):
            if container.get("image") == image and container.get("args") in (
                    ARGS, ARGS + EXIT_ARGS):
                return container
    return None


def plan(spec: Dict[str, Any], trainers: List[Dict[str, Any]], settings: AgentSettings,
         image: str, pull_policy: str, default_path: str,
         base_env: List[Dict[str, Any]]) -> Plan:
    """The agent for a pod whose containers ``trainers`` are being injected now.

    ``default_path``: the record root where a container sets none (the chart's); ``base_env``:
    the identity and sink variables the webhook gives a trainer that sets none of them.
    """
    existing = find_agent(spec, image)
    if existing is not None:
        return _join(existing, trainers, default_path)
    if settings.mode == "off":
        return Plan("off")
    if not trainers:
        return Plan("none: no container injected now")
    declared = {port.get("containerPort") for key in ("initContainers", "containers")
                for container in objects(spec.get(key), f"spec.{key}")
                for port in objects(container.get("ports"), "ports")}
    port = _trainer_port(trainers[0], settings.port)
    if port in declared:
        return Plan(f"none: port {port} is taken", notes=[
            f"primus-lens: no agent: a container of the pod already declares port {port} "
            f"(agent.port); every container sends by itself"])

    result = Plan(settings.mode)
    root: Optional[_Records] = None
    source: Optional[Dict[str, Any]] = None
    volume_name = free_name(settings.records_volume_name,
                            {v.get("name") for v in objects(spec.get("volumes"), "spec.volumes")})
    sharing: List[Dict[str, Any]] = []
    for container in trainers:
        records, why = _records_of(container, default_path)
        if records is not None and root is None:
            root, source = records, container
        if records is None or records != root:
            result.notes.append(_alone(container, why or "its records are not where the agent reads"))
            continue
        sharing.append(container)
        if records.mount is None:
            result.trainer_mounts[container["name"]] = {"name": volume_name,
                                                        "mountPath": records.path}
    if root is None or source is None:
        result.summary = "none: no container's records can be shared"
        return result
    context = _security_context(spec, source, settings)
    for container in sharing:
        result.trainer_env[container["name"]] = _trainer_env(container, root.path, port)

    if root.mount is None:
        limit = {"sizeLimit": settings.records_size_limit} if settings.records_size_limit else {}
        result.volumes.append({"name": volume_name, "emptyDir": limit})
        agent_mount: Dict[str, Any] = {"name": volume_name, "mountPath": root.path}
    else:
        agent_mount = {key: root.mount[key] for key in _VOLUME_KEYS if key in root.mount}
    name = free_name(settings.container_name, container_names(spec))
    result.agent = _agent_container(spec, source, settings, name, image, pull_policy, root.path,
                                    port, agent_mount, base_env, context)
    result.list_key = "initContainers" if settings.mode == "sidecar" else "containers"
    return result


def _join(agent: Dict[str, Any], trainers: List[Dict[str, Any]], default_path: str) -> Plan:
    """An agent is there already: containers added since then share its root where they can."""
    result = Plan("present")
    root_entry = last_env(agent, OUTPUT_PATH)
    root = root_entry[1].get("value") if root_entry else None
    port_entry = last_env(agent, PORT_VARIABLE)
    port = str(port_entry[1].get("value")) if port_entry else ""
    if not isinstance(root, str) or not port.isdigit():
        return result
    agents = _Records.held(root, holding_mount(agent, root))
    for container in trainers:
        records, why = _records_of(container, default_path)
        # on the agent's own emptyDir (mounted at the root): the new container mounts it too
        if records is not None and records.path == root and records.mount is None and (
                agents.mount is not None and agents.mount.get("mountPath") == root):
            result.trainer_mounts[container["name"]] = {"name": agents.mount["name"],
                                                        "mountPath": root}
        elif records is None or records != agents:
            result.notes.append(_alone(container, why or "its records are not where the agent reads"))
            continue
        result.trainer_env[container["name"]] = _trainer_env(container, root, int(port))
    return result


def _alone(container: Dict[str, Any], why: str) -> str:
    return f"primus-lens: container {container['name']} sends by itself: {why}"


def _trainer_port(container: Dict[str, Any], default: int) -> int:
    """The agent's port: the trainer's own PRIMUS_LENS_AGENT_PORT where it sets a valid one."""
    own = last_env(container, PORT_VARIABLE)
    value = str(own[1].get("value", "")) if own else ""
    return int(value) if value.isdigit() and 1 <= int(value) <= 65535 else default


def _trainer_env(container: Dict[str, Any], root: str, port: int) -> List[Dict[str, Any]]:
    """What a trainer that shares its records with the agent gets (where it sets none): the
    record root, the switch that leaves the sending to the agent, the agent's port."""
    defined = {entry.get("name") for entry in objects(container.get("env"), "env")}
    wanted = [{"name": OUTPUT_PATH, "value": root}, {"name": SWITCH, "value": "true"},
              {"name": PORT_VARIABLE, "value": str(port)}]
    return [entry for entry in wanted if entry["name"] not in defined]


def _user(spec: Dict[str, Any], container: Dict[str, Any]) -> Optional[int]:
    """The user a container runs as, where the pod spec says it (the container's, else the
    pod's); None: its image's, which the webhook cannot see."""
    for context in (mapping(container.get("securityContext"), "securityContext"),
                    mapping(spec.get("securityContext"), "spec.securityContext")):
        value = context.get("runAsUser")
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def drain_seconds(spec: Dict[str, Any]) -> int:
    """Below the pod's grace period (default 30 s -> 25 s): the agent has said what is left in
    the record before the kubelet kills it."""
    grace = spec.get("terminationGracePeriodSeconds")
    if isinstance(grace, bool) or not isinstance(grace, int) or grace < 0:
        grace = DEFAULT_GRACE_SECONDS
    return grace - DRAIN_MARGIN_SECONDS if grace >= 2 * DRAIN_MARGIN_SECONDS else grace // 2


def _agent_env(source: Dict[str, Any], base_env: List[Dict[str, Any]], root: str, port: int,
               drain: int) -> List[Dict[str, Any]]:
    """The trainer's identity and settings first (as the trainer has them), then what the webhook
    would give a trainer that sets none, then the agent's own."""
    env = [dict(entry) for entry in objects(source.get("env"), "env")
           if entry.get("name") in _IDENTITY or (
               str(entry.get("name", "")).startswith("PRIMUS_LENS_")
               and entry.get("name") not in _NOT_INHERITED)]
    by_name = {entry["name"]: entry for entry in env}  # the last one wins, as in the kubelet
    env = list(by_name.values())
    ours = [{"name": OUTPUT_PATH, "value": root}, {"name": PORT_VARIABLE, "value": str(port)},
            {"name": DRAIN_VARIABLE, "value": str(drain)}]
    for entry in [*(e for e in base_env if e["name"] not in _NOT_INHERITED), *ours]:
        if entry["name"] not in by_name:
            by_name[entry["name"]] = entry
            env.append(entry)
    return env


def _security_context(pod_spec: Dict[str, Any], source: Dict[str, Any],
                      settings: AgentSettings) -> Dict[str, Any]:
    """The chart's context, as the trainer's user where the pod names a non-root one (the files
    the agent makes beside the records are then the trainer's user's, and a namespace that
    allows only the pod's user allows the agent).  A trainer that runs as root does not make the
    agent root: in agent mode the trainers open the record's directories to every user."""
    context = dict(settings.security_context)
    own = mapping(source.get("securityContext"), "securityContext")
    pod = mapping(pod_spec.get("securityContext"), "spec.securityContext")
    user = _user(pod_spec, source)
    if not user:  # none named, or root
        return context
    context["runAsUser"] = user
    context["runAsNonRoot"] = True
    group = own.get("runAsGroup", pod.get("runAsGroup"))
    if isinstance(group, int) and not isinstance(group, bool):
        context["runAsGroup"] = group
    return context


def _agent_container(spec: Dict[str, Any], source: Dict[str, Any], settings: AgentSettings,
                     name: str, image: str, pull_policy: str, root: str, port: int,
                     mount: Dict[str, Any], base_env: List[Dict[str, Any]],
                     context: Dict[str, Any]) -> Dict[str, Any]:
    container: Dict[str, Any] = {
        "name": name,
        "image": image,
        "imagePullPolicy": pull_policy,
        "args": ARGS + (EXIT_ARGS if settings.mode == "container" else []),
        "env": _agent_env(source, base_env, root, port, drain_seconds(spec)),
        "ports": [{"name": PORT_NAME, "containerPort": port, "protocol": "TCP"}],
        # No startup probe: on a native sidecar it would hold the trainers back until the agent
        # answers, and they need nothing from it to start (they record on disk).
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": PORT_NAME},
                          "initialDelaySeconds": 10, "periodSeconds": 10, "timeoutSeconds": 5,
                          "failureThreshold": 6},
        "resources": dict(settings.resources),
        "securityContext": context,
        "volumeMounts": [mount],
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if settings.readiness_probe:
        container["readinessProbe"] = {"httpGet": {"path": "/readyz", "port": PORT_NAME},
                                       "periodSeconds": 10, "timeoutSeconds": 5,
                                       "failureThreshold": 3}
    if settings.mode == "sidecar":
        container["restartPolicy"] = "Always"
    return container
