"""Reading a pod spec defensively, and the JSONPatch operations that add to it.

Shared by the injector's patch (``admission``) and the pod agent's (``sidecar``).  A review's pod
is untrusted JSON: every field read here is checked for its type, and anything unexpected raises
``MalformedPod`` (the pod is then admitted unchanged).  Operations only ever *add*, and create a
list that is missing or null instead of indexing it.
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E|m)?$")


class SettingsError(ValueError):
    """The webhook's configuration file is unusable; the message names the offending key."""


class MalformedPod(ValueError):
    """The object is not a pod we can reason about; it is admitted unchanged."""


def fields(data: Any, keys: Mapping[str, str], what: str) -> Dict[str, Any]:
    """A settings object of the config file, its camelCase keys renamed (``keys``): an unknown
    key is refused, so that a typo fails at start-up instead of being ignored."""
    if not isinstance(data, Mapping):
        raise SettingsError(f"the {what} must be a JSON object")
    unknown = sorted(set(data) - set(keys))
    if unknown:
        raise SettingsError(f"unknown {what} keys: {', '.join(unknown)}")
    return {keys[name]: value for name, value in data.items()}


def mapping(value: Any, what: str) -> Dict[str, Any]:
    """``value`` as an object ({} when absent or null)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise MalformedPod(f"{what} is not an object")
    return value


def objects(value: Any, what: str) -> List[Any]:
    """``value`` as a list of objects ([] when absent or null)."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise MalformedPod(f"{what} is not a list of objects")
    return value


def last_env(container: Dict[str, Any], name: str) -> Optional[Tuple[int, Dict[str, Any]]]:
    """The entry the kubelet uses for ``name``: with duplicates, the last one wins."""
    found = None
    for index, entry in enumerate(objects(container.get("env"), "env")):
        if entry.get("name") == name:
            found = (index, entry)
    return found


def free_name(base: str, taken: set) -> str:
    """``base``, or ``base-2``, ``base-3``... (still a DNS label): the first one not in ``taken``."""
    candidate, number = base, 1
    while candidate in taken:  # ends: ``taken`` is finite
        number += 1
        suffix = f"-{number}"
        candidate = base[:63 - len(suffix)].rstrip("-") + suffix
    return candidate


def container_names(spec: Dict[str, Any]) -> set:
    """Every container name of the pod: init, app and ephemeral containers share one namespace."""
    return {c.get("name") for key in ("initContainers", "containers", "ephemeralContainers")
            for c in objects(spec.get(key), f"spec.{key}")}


def append(parent: Dict[str, Any], path: str, key: str, item: Any) -> Dict[str, Any]:
    """Add ``item`` to the list ``parent[key]``, creating the list when it is missing or null."""
    if parent.get(key) is None:
        return {"op": "add", "path": f"{path}/{key}", "value": [item]}
    return {"op": "add", "path": f"{path}/{key}/-", "value": item}


def append_all(parent: Dict[str, Any], path: str, key: str,
               items: Sequence[Any]) -> List[Dict[str, Any]]:
    """Add ``items`` to the list ``parent[key]``: one operation that creates a missing list with
    all of them, or one append each."""
    if not items:
        return []
    if parent.get(key) is None:
        return [{"op": "add", "path": f"{path}/{key}", "value": list(items)}]
    return [{"op": "add", "path": f"{path}/{key}/-", "value": item} for item in items]


def holding_mount(container: Dict[str, Any], path: str) -> Optional[Dict[str, Any]]:
    """The container's volume mount that ``path`` lies in (the deepest one), or None."""
    best: Optional[Dict[str, Any]] = None
    for mount in objects(container.get("volumeMounts"), "volumeMounts"):
        where = str(mount.get("mountPath", "")).rstrip("/") or "/"
        inside = path == where or path.startswith(where if where == "/" else where + "/")
        if inside and (best is None or len(where) > len(str(best.get("mountPath", "")).rstrip("/"))):
            best = mount
    return best
