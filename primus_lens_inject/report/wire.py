"""From record rows to request bodies the telemetry-processor accepts (spec §9.1, §8.1).

The server's Go decoder rejects a whole request for one NaN token, one out-of-range number or a
string in a number field, and its read API shows every non-number as 0.  So ``data`` carries
finite numbers only: the record's ``"NaN"``/``"Infinity"`` markers, strings, bools, ``None``,
lists and media descriptors are left out; nested dicts are flattened to ``"outer.inner"`` keys
(wandb's own naming).  User keys that the server uses for its own metadata are renamed with a
``wandb/`` prefix so they cannot overwrite ``step``, ``run_id`` and the like.  The server stores
into Postgres ``jsonb``, which refuses a NUL character and lone surrogates in any string (one such
key would fail its whole batch, and every retry after it): those become U+FFFD.  A body never
exceeds ``MAX_BODY`` (the README promises requests under 1 MiB): a batch too large is split by
steps, one step too large by keys, and the server merges the writes of a step into one row.
"""

from __future__ import annotations

import math
import re
from typing import Any, Dict, Iterable, List, Optional, Tuple

from .. import credentials
from ..values import STRICT_JSON

# Keys the server writes or hides in a training_performance row (spec §8.1).
RESERVED_KEYS = frozenset(("source", "run_id", "step", "created_at", "updated_at", "history",
                           "iteration", "target_iteration"))
RENAME_PREFIX = "wandb/"
MAX_STEP = 2_147_483_647  # the server stores int32 iterations; larger values wrap
_MAX_FLOAT = 1.7976931348623157e308
MAX_BODY = (1 << 20) - 1  # bytes; requests stay under 1 MiB
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")  # NUL and surrogates: jsonb refuses them


def storable(text: str) -> str:
    """``text`` with what Postgres ``jsonb`` refuses (NUL, lone surrogates) replaced by U+FFFD."""
    if text.isascii() and "\x00" not in text:
        return text
    return _UNSTORABLE.sub("\ufffd", text)


def storable_body(value: Any) -> Any:
    """A JSON value with every string in it, keys included, made ``storable``."""
    if isinstance(value, str):
        return storable(value)
    if isinstance(value, dict):
        return {storable(str(k)): storable_body(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [storable_body(v) for v in value]
    return value


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
        key = credentials.redact_key(storable(key))  # the record keeps the user's key
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
    """Identity fields of every body (spec §9.2): pod name, and the workload and pod UIDs only if
    given.  The one definition: rows bodies, detection reports (which leave out an empty pod
    name) and each writer's record of who it is (``owner.Writer``) all take it from here."""
    out = {"pod_name": config.pod_name}
    if config.workload_uid:
        out["workload_uid"] = config.workload_uid
    if config.pod_uid:
        out["pod_uid"] = config.pod_uid
    return out


def logs_body(ident: Dict[str, str], run_id: str, entries: List[Dict[str, Any]],
              now: float) -> Dict[str, Any]:
    return {"source": "wandb", **ident, "run_id": storable(run_id), "logs": entries,
            "timestamp": now}


def logs_bodies(ident: Dict[str, str], run_id: str, entries: List[Dict[str, Any]], now: float,
                limit: int = MAX_BODY) -> List[bytes]:
    """``entries`` as encoded bodies of at most ``limit`` bytes each, in order: halved by steps
    while a body is too large, a single step halved by keys (only a lone key larger than the
    limit is sent as it is)."""
    body = encode(logs_body(ident, run_id, entries, now))
    if len(body) <= limit:
        return [body]
    if len(entries) > 1:
        half = len(entries) // 2
        return logs_bodies(ident, run_id, entries[:half], now, limit) \
            + logs_bodies(ident, run_id, entries[half:], now, limit)
    entry = entries[0]
    keys = list(entry["data"])
    if len(keys) < 2:
        return [body]
    half = len(keys) // 2
    return [part for keep in (keys[:half], keys[half:])
            for part in logs_bodies(ident, run_id,
                                    [dict(entry, data={k: entry["data"][k] for k in keep})],
                                    now, limit)]


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
