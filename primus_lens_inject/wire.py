"""From record rows to request bodies the telemetry-processor accepts (spec §9.1, §8.1).

The server's Go decoder rejects a whole request for one NaN token, one out-of-range number or a
string in a number field, and its read API shows every non-number as 0.  So ``data`` carries
finite numbers only: the record's ``"NaN"``/``"Infinity"`` markers, strings, bools, ``None``,
lists and media descriptors are left out; nested dicts are flattened to ``"outer.inner"`` keys
(wandb's own naming).  User keys that the server uses for its own metadata are renamed with a
``wandb/`` prefix so they cannot overwrite ``step``, ``run_id`` and the like.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Iterable, List, Optional, Tuple

from .values import STRICT_JSON

# Keys the server writes or hides in a training_performance row (spec §8.1).
RESERVED_KEYS = frozenset(("source", "run_id", "step", "created_at", "updated_at", "history",
                           "iteration", "target_iteration"))
RENAME_PREFIX = "wandb/"
MAX_STEP = 2_147_483_647  # the server stores int32 iterations; larger values wrap
_MAX_FLOAT = 1.7976931348623157e308


def _number(value: Any) -> Optional[float]:
    """``value`` as a JSON-safe number, or None when it must not be sent."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, int):
        if -(1 << 53) <= value <= (1 << 53):
            return value
        value = float(value) if abs(value) <= _MAX_FLOAT else math.inf
    return value if math.isfinite(value) else None


def _flatten(prefix: str, data: Dict[str, Any], out: Dict[str, Any], depth: int) -> None:
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            if depth < 8 and "_type" not in value:  # a descriptor is not a nested metric dict
                _flatten(name + ".", value, out, depth + 1)
            continue
        number = _number(value)
        if number is not None:
            out[name] = number


def sendable(data: Dict[str, Any], key_prefix: str = "") -> Dict[str, Any]:
    """The finite numeric part of one record row, keyed as the server should store it."""
    flat: Dict[str, Any] = {}
    _flatten("", data, flat, 0)
    out: Dict[str, Any] = {}
    for key, value in flat.items():
        if key in RESERVED_KEYS:
            key = RENAME_PREFIX + key
        out[key_prefix + key] = value
    return out


def log_entry(step: Any, timestamp: Any, data: Dict[str, Any],
              key_prefix: str = "") -> Tuple[Optional[Dict[str, Any]], str]:
    """One ``logs[]`` entry, or (None, reason) when the row has nothing the server can take."""
    if isinstance(step, bool) or not isinstance(step, int):
        return None, "step is not an integer"
    if not 0 <= step <= MAX_STEP:
        return None, "step outside 0..2147483647"
    if isinstance(timestamp, bool) or not isinstance(timestamp, (int, float)) \
            or not math.isfinite(timestamp) or timestamp <= 0:
        return None, "timestamp is not a positive number"
    values = sendable(data if isinstance(data, dict) else {}, key_prefix)
    if not values:
        return None, "no numeric values"
    return {"step": step, "timestamp": float(timestamp), "data": values}, ""


def identity(config: Any) -> Dict[str, str]:
    """Identity fields of every body (spec §9.2): pod name, and the workload UID only if given."""
    out = {"pod_name": config.pod_name}
    if config.workload_uid:
        out["workload_uid"] = config.workload_uid
    if config.pod_uid:
        out["pod_uid"] = config.pod_uid
    return out


def logs_body(ident: Dict[str, str], run_id: str, entries: List[Dict[str, Any]],
              now: float) -> Dict[str, Any]:
    return {"source": "wandb", **ident, "run_id": run_id, "logs": entries, "timestamp": now}


def encode(body: Dict[str, Any]) -> bytes:
    """Strict JSON: ``allow_nan=False`` so a bug can never put a NaN token on the wire."""
    return STRICT_JSON.encode(body).encode("ascii")


def merge_steps(rows: Iterable[Tuple[str, Dict[str, Any]]]) -> List[Tuple[str, Dict[str, Any]]]:
    """Merge consecutive entries of the same run and step into one (later keys win)."""
    merged: List[Tuple[str, Dict[str, Any]]] = []
    for run_id, entry in rows:
        if merged and merged[-1][0] == run_id and merged[-1][1]["step"] == entry["step"]:
            merged[-1][1]["data"].update(entry["data"])
            merged[-1][1]["timestamp"] = entry["timestamp"]
        else:
            merged.append((run_id, entry))
    return merged
