"""What of a value may leave the machine as detection evidence: chosen by allow-list, bounded.

Training configs and environments routinely hold API keys, tokens and URLs with credentials, and
the Lens server persists what we send (ai-advisor stores ``environment`` and ``wandb.config``,
spec §4).  A deny-list of secret shapes always misses the next one, so evidence is chosen by what
is known to be safe (rules in docs/detection.md):

* numbers, bools and ``None`` pass;
* a string passes only if it has an expected shape (``safe_text``): a number, an identifier, a
  path or URL without userinfo, query or fragment, or a comma list of those, at most 256
  characters, with nothing random-looking and nothing ``credentials.redact_text`` would change;
  anything else (free text, JSON text, command lines, URLs with credentials) becomes ``WITHHELD``;
* whatever sits under a secret-looking key (``credentials.is_secret_key``) becomes ``WITHHELD``,
  whatever its type; so does the value after a secret-looking flag or name in a list or tuple
  (``["--api-key", X]``, ``("HF_TOKEN", X)``), a credential argument of a common client in a
  list (``["mysql", "-pX"]``, ``["curl", "-u", X]``) and the ``value`` beside such a ``name``;
* keys and labels (run name, tags) are free text that must pass: they are redacted
  (``label``), with random-looking words replaced too.

``allow`` copies breadth first and iteratively (no recursion limit), never mutates its input and
never raises; the result is plain JSON (str keys; str, finite float, int, bool, None, dict,
list) that ``json.dumps(allow_nan=False)`` accepts and Go's decoder reads as the same types.
``sanitize`` then bounds the serialized size (``bounds.fit``).
"""

from __future__ import annotations

import functools
import json
import re
from collections import deque
from dataclasses import dataclass
from typing import Any, Deque, Dict, List, Mapping, Optional, Tuple

from .. import credentials, values
from . import bounds

WITHHELD = "[WITHHELD]"
UNREADABLE = "[UNREADABLE]"
TRUNCATED_KEY = bounds.TRUNCATED_KEY
_MAX_SAFE = 256  # longest string that passes as evidence

_INT64 = 2**63 - 1


@dataclass(frozen=True)
class Limits:
    """How much of a structure survives: per key, per container, depth, nodes, serialized bytes."""

    max_str: int = 4096
    max_items: int = 1000
    max_depth: int = 32
    max_nodes: int = 20000
    max_bytes: int = 256 * 1024


_DEFAULT_LIMITS = Limits()

# --- strings of an expected shape -----------------------------------------------------------------

_NUMBER = r"[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?"
_IDENTIFIER = r"-{0,2}[A-Za-z0-9_][A-Za-z0-9_.+\-]*"
# host:port and device names ("cuda:0"); URLs without userinfo, query or fragment; paths with an
# optional ":tag" (image references).
_HOST_PORT = r"[A-Za-z0-9_.\-]+:[0-9]+"
_SEGMENT = r"[A-Za-z0-9_.+\-~]*"
_URL = rf"[A-Za-z][A-Za-z0-9+.\-]*://[A-Za-z0-9.\-]+(?::[0-9]+)?(?:/{_SEGMENT})*"
_PATH = rf"{_SEGMENT}(?:/{_SEGMENT})+(?::[A-Za-z0-9_.+\-]+)?"
_ITEM = f"(?:{_NUMBER}|{_IDENTIFIER}|{_HOST_PORT}|{_URL}|{_PATH})"
_SHAPE = re.compile(f"{_ITEM}(?:,[ ]?{_ITEM})*")


@functools.lru_cache(maxsize=4096)
def safe_text(text: str) -> bool:
    """Whether ``text`` has a shape that cannot hold a credential we would not recognise:
    numbers, bools, identifiers, paths and URLs without userinfo, query or fragment, comma lists
    of those; nothing random-looking (keys, tokens, hashes) and no known token format."""
    if text == "":
        return True  # empty says nothing (and empty detection keys are dropped later)
    return (len(text) <= _MAX_SAFE and _SHAPE.fullmatch(text) is not None
            and not credentials.looks_random(text) and credentials.redact_text(text) == text)


def evidence_text(text: str) -> str:
    """``text`` as evidence: itself if safe, else ``WITHHELD``; ``name=value`` (a flag with its
    value) is judged by both halves."""
    if safe_text(text):
        return text
    flag, sep, value = text.partition("=")
    if sep and safe_text(flag) and not credentials.is_secret_key(flag) \
            and (value == "" or safe_text(value)):
        return text
    return WITHHELD


def label(text: str, max_str: int = 256) -> str:
    """Free text that must pass (run name, tags, keys): redacted, random words too, bounded."""
    text = text if type(text) is str else str.__str__(text)  # str subclasses: their characters
    if len(text) > credentials.SCAN_LIMIT:
        return f"[TRUNCATED: {len(text)} chars, not inspected]"
    if "\x00" in text:  # Postgres jsonb refuses NUL; the server stores what we send
        text = text.replace("\x00", "\ufffd")
    text = credentials.redact_label(text)
    if len(text) > max_str:
        text = f"{text[:max_str]}...[TRUNCATED: {len(text)} chars]"
    return text


def _names_secret(item: Any) -> bool:
    """A list item that names a secret, so that the next item is its value (``--api-key``,
    ``HF_TOKEN``, ``Authorization``); ``--api-key=X`` carries its own value instead."""
    if not isinstance(item, str) or len(item) > 128:
        return False
    name, _sep, value = item.partition("=")
    return value == "" and credentials.is_secret_key(name)


# --- copying ----------------------------------------------------------------------------------------


def _number(value: Any) -> Any:
    if isinstance(value, int):
        if -_INT64 - 1 <= value <= _INT64:
            return int(value)
        bits = value.bit_length()
        return str(value) if bits <= 4096 else f"[TRUNCATED: integer of {bits} bits]"
    if value - value == 0.0:
        return float(value)
    return "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")


def _leaf(value: Any) -> Any:
    """A non-container value as plain JSON: numbers kept, strings allow-listed, objects described."""
    if value is None or type(value) is bool:
        return value
    if isinstance(value, str):
        return evidence_text(value if type(value) is str else str.__str__(value))
    if isinstance(value, (int, float)):
        return _number(value)
    # numpy/torch scalars -> numbers, other objects -> a {"_type": ...} descriptor (never repr).
    # Mappings, lists and tuples never get here, so freeze_value has nothing to descend into.
    frozen = values.freeze_value(value)
    if isinstance(frozen, (str, int, float)) and type(frozen) is not bool:
        return _leaf(frozen)
    return frozen


@functools.lru_cache(maxsize=4096)
def _clean_key(key: str, max_str: int) -> Tuple[str, bool]:
    """(the key as sent, whether its value is secret); keys repeat, so this is cached."""
    return label(key, max_str), credentials.is_secret_key(key)


def _key(key: Any, max_str: int) -> Tuple[str, bool]:
    """A mapping key as a JSON object key, named the way ``json.dumps`` would name it."""
    if isinstance(key, str):
        return _clean_key(key if type(key) is str else str.__str__(key), max_str)
    if key is None or type(key) is bool:
        return json.dumps(key), False
    if isinstance(key, (int, float)):
        number = _number(key)
        return (number if isinstance(number, str) else repr(number)), False
    return f"<{type(key).__name__}>", False


_NAME_FIELDS = ("name", "key", "header", "flag", "variable")
_VALUE_FIELDS = ("value", "val", "default")


def _secret_value_field(items: List[Tuple[Any, Any]]) -> bool:
    """``{"name": "HF_TOKEN", "value": ...}`` (Kubernetes env lists, header lists, ...)."""
    return any(k in _NAME_FIELDS and _names_secret(v) for k, v in items)


Slot = Tuple[Any, Any, Any, int]


def allow(value: Any, limits: Limits = _DEFAULT_LIMITS) -> Any:
    """An allow-listed plain-JSON copy of ``value`` within the structural limits (not ``max_bytes``).

    Containers are copied breadth first, so when ``max_nodes`` runs out it is the deepest parts
    that are cut.  Each container is read once with a single ``list(...)`` call, which for a
    ``dict`` or ``list`` happens under the GIL, so another thread changing it cannot break the copy.
    A value that fails to be read in a way not foreseen becomes ``UNREADABLE``.
    """
    root: List[Any] = [None]
    queue: Deque[Slot] = deque([(value, root, 0, 0)])
    nodes = 0
    while queue:
        source, target, slot, depth = queue.popleft()
        nodes += 1
        if nodes > limits.max_nodes:
            target[slot] = "[TRUNCATED: too many values]"
            continue
        try:
            target[slot] = _node(source, depth, limits, queue)
        except Exception:  # a foreign object misbehaved (a raising __class__, __str__, ...)
            target[slot] = UNREADABLE
    return root[0]


def _node(source: Any, depth: int, limits: Limits, queue: Deque[Slot]) -> Any:
    """One value's copy; its children, if any, are queued to fill in their slots later."""
    if not isinstance(source, (Mapping, list, tuple)):
        return _leaf(source)
    if depth >= limits.max_depth:
        return f"[TRUNCATED: nested deeper than {limits.max_depth}]"
    if isinstance(source, Mapping):
        return _copy_mapping(source, depth, limits, queue)
    items = list(source)
    kept = items[:limits.max_items]
    out: List[Any] = [None] * len(kept)
    arguments = credentials.client_secrets(kept)  # ["mysql", "-pX"], ["curl", "-u", X]
    previous: Optional[Any] = None
    for index, item in enumerate(kept):
        if _names_secret(previous) or index in arguments:  # ["--api-key", X], ("HF_TOKEN", X)
            out[index] = WITHHELD
        else:
            queue.append((item, out, index, depth + 1))
        previous = item
    if len(items) > limits.max_items:
        out.append(bounds.items_dropped(len(items) - limits.max_items, len(items)))
    return out


def _copy_mapping(source: Mapping, depth: int, limits: Limits, queue: Deque[Slot]) -> Dict[str, Any]:
    try:
        items = list(source.items())
    except Exception:
        return {TRUNCATED_KEY: "unreadable mapping"}
    secret_value = _secret_value_field(items)
    out: Dict[str, Any] = {}
    for key, item in items[:limits.max_items]:
        try:
            name, secret = _key(key, limits.max_str)
        except Exception:
            continue  # a key that cannot even be named is left out
        if secret or (secret_value and key in _VALUE_FIELDS):
            out[name] = WITHHELD
        else:
            out[name] = None
            queue.append((item, out, name, depth + 1))
    if len(items) > limits.max_items:
        out[TRUNCATED_KEY] = bounds.keys_dropped(len(items) - limits.max_items, len(items),
                                                 "too many")
    return out


def sanitize(value: Any, limits: Limits = _DEFAULT_LIMITS) -> Any:
    """``allow`` then ``bounds.fit``: what may be sent of ``value``, within every one of ``limits``."""
    return bounds.fit(allow(value, limits), limits.max_bytes)
