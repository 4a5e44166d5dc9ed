"""Size bounds for what we send: a plain JSON tree cut to a serialized size, every cut marked.

The detection report has a budget per section (docs/detection.md); ``fit`` makes a tree fit its
budget deterministically, keeping the small scalar settings that matter most (``framework``,
``model_name``) next to a huge sibling, and saying wherever and how much it cut.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List

TRUNCATED_KEY = "_primus_lens_truncated"
_MIN_PARTIAL = 64  # below this many bytes a partly kept value says nothing useful


def keys_dropped(dropped: int, count: int, why: str) -> str:
    return f"{dropped} of {count} keys dropped ({why})"


def items_dropped(dropped: int, count: int) -> str:
    return f"[TRUNCATED: {dropped} of {count} items dropped]"


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
    earlier = value.get(TRUNCATED_KEY)  # the marker a copy with item limits left: kept, and extended
    earlier = f"; {earlier}" if isinstance(earlier, str) else ""
    items = [(k, v) for k, v in value.items() if not (earlier and k == TRUNCATED_KEY)]
    count = len(items)

    def note(dropped: int) -> str:
        return keys_dropped(dropped, count, "too large") + earlier

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
    room = budget - 2 - json_size(items_dropped(count, count)) - 1
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
        out.append(items_dropped(count - len(out), count))
    return out
