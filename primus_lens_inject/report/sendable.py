"""What of a record row may go on the wire, for every sink: the value rules (spec §9.1, §8.1).

A receiver's decoder may reject a whole request for one NaN token, one out-of-range number or a
string in a number field (the telemetry-processor's Go decoder does, and its read API shows
every non-number as 0).  So a row's values go out as finite numbers only: the record's
``"NaN"``/``"Infinity"`` markers, strings, bools, ``None``, lists and media descriptors are left
out; nested dicts are flattened to ``"outer.inner"`` keys (wandb's own naming).  Keys are
redacted where they carry a credential (``credentials.redact_key``); keys the Lens server uses
for its own metadata are renamed with a ``wandb/`` prefix so they cannot overwrite ``step``,
``run_id`` and the like.  Postgres ``jsonb`` refuses a NUL character and lone surrogates in any
string (one such key would fail its whole batch, and every retry after it): those become U+FFFD.
A request body never exceeds ``MAX_BODY`` (the README promises requests under 1 MiB); each sink
splits its own bodies.  Rows of one run and step are merged into one entry (``merge_steps``).
"""

from __future__ import annotations

import math
import re
from typing import Any, Dict, Iterable, List, Optional, Tuple

from .. import credentials

# Keys the server writes or hides in a training_performance row (spec §8.1).
_RESERVED_KEYS = frozenset(("source", "run_id", "step", "created_at", "updated_at", "history",
                           "iteration", "target_iteration"))
_RENAME_PREFIX = "wandb/"
_MAX_STEP = 2_147_483_647  # the server stores int32 iterations; larger values wrap
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


def _wire_name(key: str, key_prefix: str) -> str:
    """The name a row's (flattened) key is sent under."""
    key = credentials.redact_key(storable(key))  # the record keeps the user's key
    if key in _RESERVED_KEYS:
        key = _RENAME_PREFIX + key
    return key_prefix + key


# key prefix -> (key -> its wire name): the rows of a run repeat their keys, so the rules above
# run once per key, not once per row (the pod agent sends every row of the pod); bounded.
_NAMES: Dict[str, Dict[str, str]] = {}
_NAMES_KEPT = 1 << 15


def _names(key_prefix: str) -> Dict[str, str]:
    names = _NAMES.get(key_prefix)
    if names is None or len(names) >= _NAMES_KEPT:
        if len(_NAMES) >= 64:
            _NAMES.clear()
        names = _NAMES[key_prefix] = {}
    return names


def sendable(data: Dict[str, Any], key_prefix: str = "") -> Dict[str, Any]:
    """The finite numeric part of one record row, keyed as the server should store it."""
    names = _names(key_prefix)
    out: Dict[str, Any] = {}
    for key, value in data.items():
        kind = type(value)
        if kind is float:  # the common case first: a plain finite float needs no more
            if not math.isfinite(value):
                continue
        elif kind is dict:
            flat: Dict[str, Any] = {}
            _flatten("", {key: value}, flat, 0)
            for inner, number in flat.items():
                name = names.get(inner)
                if name is None:
                    name = names[inner] = _wire_name(inner, key_prefix)
                out[name] = number
            continue
        else:
            value = _number(value)
            if value is None:
                continue
        name = names.get(key)
        if name is None:
            name = names[key] = _wire_name(key, key_prefix)
        out[name] = value
    return out


def log_entry(step: Any, timestamp: Any, data: Dict[str, Any],
              key_prefix: str = "") -> Tuple[Optional[Dict[str, Any]], str]:
    """One ``logs[]`` entry, or (None, reason) when the row has nothing the server can take."""
    if isinstance(step, bool) or not isinstance(step, int):
        return None, "step is not an integer"
    if not 0 <= step <= _MAX_STEP:
        return None, "step outside 0..2147483647"
    if isinstance(timestamp, bool) or not isinstance(timestamp, (int, float)) \
            or not math.isfinite(timestamp) or timestamp <= 0:
        return None, "timestamp is not a positive number"
    values = sendable(data if isinstance(data, dict) else {}, key_prefix)
    if not values:
        return None, "no numeric values"
    return {"step": step, "timestamp": float(timestamp), "data": values}, ""


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
