"""Redaction and size bounds for everything the injector sends off the machine.

Training configs and environments routinely hold API keys, tokens and URLs with credentials in
them, and the Lens server persists what we send (ai-advisor stores ``environment`` and
``wandb.config`` in its database, spec §4).  The old exporter sent them verbatim.  Here every value
that leaves the process goes through this module first (the rules are in docs/detection.md):

* a value under a key that names a secret (``WANDB_API_KEY``, ``hf_token``, ``Authorization``,
  ``aws_secret_access_key``, ...) becomes ``REDACTED``, whatever its type, at any depth;
* inside every string: the userinfo of URLs (``scheme://user:pass@host``), the values of secret
  ``name=value`` / ``name: value`` / ``--name value`` pairs (query strings, command lines,
  connection strings, JSON text) and well-known token formats (Hugging Face, GitHub, GitLab,
  OpenAI-style ``sk-``, Stripe, AWS access key ids, Google API keys, Slack, npm, PyPI, JWTs,
  ``Bearer`` credentials, PEM private keys) become ``REDACTED``;
* sizes are bounded: strings, containers, nesting depth and node count while copying (``redact``),
  then the serialized size (``fit``), deterministically and with a marker wherever something was cut.

Nothing here raises or mutates its input; the result is a fresh tree of plain JSON values
(str keys; str, finite float, int, bool, None, dict, list) that ``json.dumps(allow_nan=False)``
accepts and Go's decoder reads as the same types.
"""

from __future__ import annotations

import functools
import json
import re
from collections import deque
from dataclasses import dataclass
from typing import Any, Deque, Dict, List, Mapping, Tuple

from . import values

REDACTED = "[REDACTED]"
UNREADABLE = "[UNREADABLE]"
TRUNCATED_KEY = "_primus_lens_truncated"

_INT64 = 2**63 - 1
_SCAN_LIMIT = 1 << 20  # longer strings are not inspected at all, only described
_MIN_PARTIAL = 64  # below this many bytes a partly kept value says nothing useful


@dataclass(frozen=True)
class Limits:
    """How much of a structure survives: per string, per container, depth, nodes, serialized bytes."""

    max_str: int = 4096
    max_items: int = 1000
    max_depth: int = 32
    max_nodes: int = 20000
    max_bytes: int = 256 * 1024


DEFAULT_LIMITS = Limits()

# --- secret key names ---------------------------------------------------------------------------

# A key is split into lower-case words at separators and camelCase humps: "WANDB_API_KEY" ->
# wandb/api/key, "xApiKey" -> x/api/key, "OAuth2Token" -> o/auth/2/token.
_WORDS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")
# Any of these words anywhere in the key.
_SECRET_WORDS = frozenset((
    "auth", "authorization", "authentication", "bearer", "cookie", "cookies", "credential",
    "credentials", "creds", "csrf", "jwt", "passphrase", "passwd", "password", "passwords",
    "private", "pwd", "secret", "secrets", "session", "sessionid", "sig", "signature", "xsrf",
))
# These as the key's last word: what the key names is a key or token ("api_key", "github_pat"),
# unlike "num_key_value_heads" or "max_tokens".
_SECRET_LAST_WORDS = frozenset(("key", "token", "pass", "pat"))
# Tokenizer settings are "tokens" of another kind: "pad_token", "eos_token", ...
_SPECIAL_TOKENS = frozenset(("pad", "bos", "eos", "unk", "sep", "cls", "mask"))
# Secret compounds written without separators ("apikey", "accessToken" is caught by words).
_SECRET_FRAGMENTS = (
    "accesskey", "accesstoken", "apikey", "authtoken", "credential", "passphrase", "passwd",
    "password", "privatekey", "refreshtoken", "secret", "secretkey", "sessiontoken", "signature",
)


@functools.lru_cache(maxsize=4096)
def is_secret_key(name: str) -> bool:
    """Whether a value stored under ``name`` must be treated as a secret (case-insensitive)."""
    words = [w.lower() for w in _WORDS.findall(name)]
    if not words:
        return False
    if any(w in _SECRET_WORDS for w in words):
        return True
    if words[-1] in _SECRET_LAST_WORDS:
        return not (words[-1] == "token" and len(words) > 1 and words[-2] in _SPECIAL_TOKENS)
    joined = "".join(words)
    return any(fragment in joined for fragment in _SECRET_FRAGMENTS)


# --- secrets inside strings ---------------------------------------------------------------------

# Well-known credential formats, each long enough not to match ordinary words, paths, hashes or
# numbers; a 40-hex wandb key or AWS secret key looks like a git SHA and is caught by its key only.
_TOKENS = re.compile("|".join((
    r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----(?s:.*?)(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)",
    r"(?<![A-Za-z0-9_])hf_[A-Za-z0-9]{30,}",  # Hugging Face
    r"(?<![A-Za-z0-9_])gh[pousr]_[A-Za-z0-9]{30,}",  # GitHub
    r"(?<![A-Za-z0-9_])github_pat_[A-Za-z0-9_]{30,}",
    r"(?<![A-Za-z0-9_])glpat-[A-Za-z0-9_\-]{20,}",  # GitLab
    r"(?<![A-Za-z0-9_\-])sk-[A-Za-z0-9_\-]{20,}",  # OpenAI, Anthropic and others
    r"(?<![A-Za-z0-9_])[rs]k_(?:live|test)_[A-Za-z0-9]{16,}",  # Stripe
    r"(?<![A-Za-z0-9])(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AIPA|ANPA|ANVA|APKA|AROA)[A-Z0-9]{16}"
    r"(?![A-Za-z0-9])",  # AWS access key id
    r"(?<![A-Za-z0-9_])AIza[0-9A-Za-z_\-]{35}",  # Google API key
    r"(?<![A-Za-z0-9_])xox[abeoprs]-[A-Za-z0-9\-]{10,}",  # Slack
    r"(?<![A-Za-z0-9_])npm_[A-Za-z0-9]{36}",
    r"(?<![A-Za-z0-9_])pypi-[A-Za-z0-9_\-]{50,}",
    r"(?<![A-Za-z0-9_\-])eyJ[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]*",  # JWT
    r"(?i:\bbearer\s+)[A-Za-z0-9\-._~+/]{8,}=*",
)))
# scheme://userinfo@host: the userinfo may itself be the token (https://TOKEN@github.com/...).
_USERINFO = re.compile(r"(?<![A-Za-z0-9+.\-])(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)[^/\s?#]+@")
# name=value, name: value, "name": "value", --name value, --name=value.  Names (and URL schemes)
# start only where a run of name characters starts, and a value is looked at only after its name
# proved secret: trying every position of a long run, or measuring every value, is quadratic.
_PAIR = re.compile(
    r"(?<![\w-])--?(?P<flag>[A-Za-z][\w\-]*)(?:\s*=\s*|\s+(?!-))"
    r"|(?<![\w.\-])(?P<name>[A-Za-z_][\w.\-]*)[\"']?\s*[=:]\s*"
)
# A value may already hold a marker from the token pass ("Authorization: Bearer x").
_VALUE = re.compile(r"\"[^\"]*\"|'[^']*'|(?:" + re.escape(REDACTED) + r"|[^\s&#;,\"'<>)}\]])+")


def _redact_pairs(text: str) -> str:
    pieces: List[str] = []
    pos = 0
    for match in _PAIR.finditer(text):
        if match.start() < pos or not is_secret_key(match.group("flag") or match.group("name")):
            continue  # inside a value already replaced, or not a secret
        value = _VALUE.match(text, match.end())
        if value is None:
            continue
        quote = value.group()[0] if value.group()[0] in "\"'" else ""
        pieces.append(text[pos:match.end()])
        pieces.append(quote + REDACTED + quote)
        pos = value.end()
    if not pieces:
        return text
    pieces.append(text[pos:])
    return "".join(pieces)


def redact_text(text: str) -> str:
    """``text`` with every credential this module recognises replaced by ``REDACTED``."""
    text = _TOKENS.sub(REDACTED, text)
    text = _USERINFO.sub(lambda m: m.group("scheme") + REDACTED + "@", text)
    return _redact_pairs(text)


# --- copying with redaction and structural bounds -----------------------------------------------


def _keys_dropped(dropped: int, count: int, why: str) -> str:
    return f"{dropped} of {count} keys dropped ({why})"


def _items_dropped(dropped: int, count: int) -> str:
    return f"[TRUNCATED: {dropped} of {count} items dropped]"


def _text(value: str, max_str: int) -> str:
    text = value if type(value) is str else str.__str__(value)  # str subclasses: their characters
    if len(text) > _SCAN_LIMIT:
        return f"[TRUNCATED: {len(text)} chars, not inspected]"
    if "\x00" in text:  # Postgres jsonb refuses NUL; the server stores what we send
        text = text.replace("\x00", "\ufffd")
    text = redact_text(text)
    if len(text) > max_str:
        text = f"{text[:max_str]}...[TRUNCATED: {len(text)} chars]"
    return text


def _number(value: Any) -> Any:
    if isinstance(value, int):
        if -_INT64 - 1 <= value <= _INT64:
            return int(value)
        bits = value.bit_length()
        return str(value) if bits <= 4096 else f"[TRUNCATED: integer of {bits} bits]"
    if value - value == 0.0:
        return float(value)
    return "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")


def _leaf(value: Any, limits: Limits) -> Any:
    """A non-container value as plain JSON: numbers kept, strings redacted, objects described."""
    if value is None or type(value) is bool:
        return value
    if isinstance(value, str):
        return _text(value, limits.max_str)
    if isinstance(value, (int, float)):
        return _number(value)
    # numpy/torch scalars -> numbers, other objects -> a {"_type": ...} descriptor (never repr).
    # Mappings, lists and tuples never get here, so freeze_value has nothing to descend into.
    frozen = values.freeze_value(value)
    if isinstance(frozen, (str, int, float)) and type(frozen) is not bool:
        return _leaf(frozen, limits)
    return frozen


@functools.lru_cache(maxsize=4096)
def _clean_key(key: str) -> Tuple[str, bool]:
    """(the key as sent, whether its value is secret); keys repeat, so this is cached."""
    return _text(key, 256), is_secret_key(key)


def _key(key: Any) -> Tuple[str, bool]:
    """A mapping key as a JSON object key, named the way ``json.dumps`` would name it."""
    if isinstance(key, str):
        return _clean_key(key if type(key) is str else str.__str__(key))
    if key is None or type(key) is bool:
        return _clean_key(json.dumps(key))
    if isinstance(key, (int, float)):
        number = _number(key)
        return _clean_key(number if isinstance(number, str) else repr(number))
    return f"<{type(key).__name__}>", False


def _secret_value_field(items: List[Tuple[Any, Any]]) -> bool:
    """``{"name": "HF_TOKEN", "value": ...}`` (Kubernetes env lists and the like)."""
    return any(k in ("name", "key") and isinstance(v, str) and is_secret_key(v) for k, v in items)


def redact(value: Any, limits: Limits = DEFAULT_LIMITS) -> Any:
    """A redacted plain-JSON copy of ``value`` within the structural limits (not ``max_bytes``).

    Containers are copied breadth first, so when ``max_nodes`` runs out it is the deepest parts
    that are cut.  Each container is read once with a single ``list(...)`` call, which for a
    ``dict`` or ``list`` happens under the GIL, so another thread changing it cannot break the copy.
    A value that fails to be read in a way not foreseen becomes ``UNREADABLE``.
    """
    root: List[Any] = [None]
    queue: Deque[Tuple[Any, Any, Any, int]] = deque([(value, root, 0, 0)])
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


def _node(source: Any, depth: int, limits: Limits, queue: Deque[Tuple[Any, Any, Any, int]]) -> Any:
    """One value's copy; its children, if any, are queued to fill in their slots later."""
    if not isinstance(source, (Mapping, list, tuple)):
        return _leaf(source, limits)
    if depth >= limits.max_depth:
        return f"[TRUNCATED: nested deeper than {limits.max_depth}]"
    if isinstance(source, Mapping):
        return _copy_mapping(source, depth, limits, queue)
    items = list(source)
    out: List[Any] = [None] * min(len(items), limits.max_items)
    for index, item in enumerate(items[:limits.max_items]):
        queue.append((item, out, index, depth + 1))
    if len(items) > limits.max_items:
        out.append(_items_dropped(len(items) - limits.max_items, len(items)))
    return out


def _copy_mapping(source: Mapping, depth: int, limits: Limits,
                  queue: Deque[Tuple[Any, Any, Any, int]]) -> Dict[str, Any]:
    try:
        items = list(source.items())
    except Exception:
        return {TRUNCATED_KEY: "unreadable mapping"}
    secret_value = _secret_value_field(items)
    out: Dict[str, Any] = {}
    for key, item in items[:limits.max_items]:
        try:
            name, secret = _key(key)
        except Exception:
            continue  # a key that cannot even be named is left out
        if secret or (secret_value and key in ("value", "val")):
            out[name] = REDACTED
        else:
            out[name] = None
            queue.append((item, out, name, depth + 1))
    if len(items) > limits.max_items:
        out[TRUNCATED_KEY] = _keys_dropped(len(items) - limits.max_items, len(items), "too many")
    return out


# --- serialized size ----------------------------------------------------------------------------


def json_size(value: Any) -> int:
    """Bytes of ``value`` as the reporter serializes it (compact, ASCII-escaped, spec §9.1)."""
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=True, allow_nan=False))


_NOTHING = object()


def _measure(value: Any, sizes: Dict[int, int]) -> int:
    if isinstance(value, dict):
        size = 1 + sum(json_size(k) + 2 + _measure(v, sizes) for k, v in value.items())
        size += value == {}  # "{}" without a comma to discount
    elif isinstance(value, list):
        size = 1 + sum(_measure(v, sizes) + 1 for v in value) + (value == [])
    else:
        return json_size(value)
    sizes[id(value)] = size
    return size


def fit(value: Any, max_bytes: int) -> Any:
    """``value`` (a plain JSON tree, e.g. from ``redact``) cut to at most ``max_bytes`` serialized.

    Deterministic: in an object the smallest entries are kept first (so scalar settings such as
    ``framework`` or ``model_name`` survive a huge nested section), the leftover space goes to
    the smallest entries that did not fit, cut down in turn, and the dropped count is recorded
    under ``TRUNCATED_KEY``; a list keeps a prefix and ends with a marker string; a string keeps a
    prefix and says how long it was.  Kept entries stay in their original order.  Budgets below
    64 bytes may yield an empty container.
    """
    try:
        sizes: Dict[int, int] = {}
        if _measure(value, sizes) <= max_bytes:
            return value
        fitted = _fit(value, max(max_bytes, 2), sizes)
    except (RecursionError, TypeError, ValueError):  # not a plain JSON tree after all
        fitted = _NOTHING
    if fitted is _NOTHING:
        return {} if isinstance(value, dict) else [] if isinstance(value, list) else None
    return fitted


def _size(value: Any, sizes: Dict[int, int]) -> int:
    known = sizes.get(id(value)) if isinstance(value, (dict, list)) else None
    return json_size(value) if known is None else known


def _fit(value: Any, budget: int, sizes: Dict[int, int]) -> Any:
    if _size(value, sizes) <= budget:
        return value
    if isinstance(value, str):
        return _fit_text(value, budget)
    if isinstance(value, dict):
        return _fit_dict(value, budget, sizes)
    if isinstance(value, list):
        return _fit_list(value, budget, sizes)
    return _NOTHING


def _fit_text(text: str, budget: int) -> Any:
    marker = f"...[TRUNCATED: {len(text)} chars]"
    if json_size(marker) > budget:
        return _NOTHING
    low, high = 0, len(text)  # the longest prefix that fits: escaping makes bytes != chars
    while low < high:
        middle = (low + high + 1) // 2
        if json_size(text[:middle] + marker) <= budget:
            low = middle
        else:
            high = middle - 1
    return text[:low] + marker


def _shrunk(value: Any, room: int, sizes: Dict[int, int]) -> Any:
    """``value`` cut to ``room`` bytes if that leaves something worth sending."""
    if room < _MIN_PARTIAL or not isinstance(value, (str, dict, list)):
        return _NOTHING
    return _fit(value, room, sizes)


def _fit_dict(value: Dict[str, Any], budget: int, sizes: Dict[int, int]) -> Any:
    earlier = value.get(TRUNCATED_KEY)  # the marker redact left: kept, and extended
    earlier = f"; {earlier}" if isinstance(earlier, str) else ""
    items = [(k, v) for k, v in value.items() if not (earlier and k == TRUNCATED_KEY)]
    count = len(items)

    def note(dropped: int) -> str:
        return _keys_dropped(dropped, count, "too large") + earlier

    reserve = json_size(TRUNCATED_KEY) + json_size(note(count)) + 2
    room = budget - 2 - reserve
    if room < 0:
        return {}
    costs = [json_size(k) + _size(v, sizes) + 2 for k, v in items]  # key, colon, value, comma
    kept: Dict[int, Any] = {}
    left_out: List[int] = []
    for index in sorted(range(count), key=lambda i: (costs[i], i)):
        if costs[index] <= room:
            kept[index] = items[index][1]
            room -= costs[index]
        else:
            left_out.append(index)
    dropped = 0
    for index in left_out:
        key, item = items[index]
        part = _shrunk(item, room - json_size(key) - 2, sizes)
        if part is _NOTHING:
            dropped += 1
            continue
        kept[index] = part
        room -= json_size(key) + json_size(part) + 2
    out = {key: kept[i] for i, (key, _) in enumerate(items) if i in kept}
    if dropped:
        out[TRUNCATED_KEY] = note(dropped)
    elif earlier:
        out[TRUNCATED_KEY] = earlier[2:]
    return out


def _fit_list(value: List[Any], budget: int, sizes: Dict[int, int]) -> Any:
    count = len(value)
    room = budget - 2 - json_size(_items_dropped(count, count)) - 1
    if room < 0:
        return []
    out: List[Any] = []
    for item in value:
        cost = _size(item, sizes) + 1
        if cost <= room:
            out.append(item)
            room -= cost
            continue
        part = _shrunk(item, room - 1, sizes)
        if part is not _NOTHING:
            out.append(part)
        break
    if len(out) < count:
        out.append(_items_dropped(count - len(out), count))
    return out


def sanitize(value: Any, limits: Limits = DEFAULT_LIMITS) -> Any:
    """``redact`` then ``fit``: what may be sent of ``value``, within every one of ``limits``."""
    return fit(redact(value, limits), limits.max_bytes)

