"""Turning whatever a user passes to ``wandb.log`` into plain JSON values, on the training thread.

A row is frozen right after wandb has taken it, so later in-place changes to a tensor or list do
not change what was recorded, and the background writer only has to ``json.dumps`` primitives.
The rules, all documented in the README:

* ``bool``, ``int``, ``str``, ``None`` and finite ``float`` stay as they are, except an ``int``
  beyond ``_MAX_INT_BITS`` (Python refuses to print ints of more than 4300 digits by default, and
  wandb accepts them): it becomes ``{"_type": "int", "bits": n}``;
* non-finite floats become the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"`` (the protobuf
  JSON convention), so every line is strict JSON yet a NaN stays distinguishable from a missing value;
* numpy and torch scalars and one-element tensors/arrays become numbers (``.item()``), and
  arrays/tensors of up to ``_MAX_ARRAY`` elements become (nested) lists of numbers, as wandb
  keeps them itself (larger ones become a histogram in wandb's history);
* a histogram (``wandb.Histogram``, or wandb's JSON form of one read back from its history)
  becomes ``{"_type": "histogram", "bins", "min", "max", "count"}`` (``histogram_summary``);
* larger arrays and tensors, other media objects (Image, Table, ...) and unknown objects become
  a small descriptor ``{"_type": ..., ...}``; ``repr`` is never called;
* nested dicts are frozen recursively (wandb keeps them nested); lists and tuples up to
  ``MAX_LIST`` items are kept, longer ones become a descriptor.

Nothing here raises: a value whose inspection fails becomes ``{"_type": "unreadable"}``.
"""

from __future__ import annotations

import json
import math
from typing import Any, Dict, Mapping

# Strict JSON for the record and the wire: a NaN token here would be a bug, so it raises.  One
# instance: ``json.dumps`` with non-default options builds a new encoder on every call.
STRICT_JSON = json.JSONEncoder(allow_nan=False, separators=(",", ":"))

MAX_LIST = 64
_MAX_ARRAY = 32  # wandb keeps arrays of up to this many elements as lists (``util.json_friendly``)
MAX_DEPTH = 8
_MAX_STR = 65536
_MAX_INT_BITS = 10_000  # about 3000 decimal digits, inside ``sys.get_int_max_str_digits()``

_NON_FINITE = {math.inf: "Infinity", -math.inf: "-Infinity"}
_PLAIN = (bool, int, str, type(None))
# Values a row may keep unfrozen on the training thread: immutable, small, already JSON but for
# NaN/Infinity (which the writer spells out).  Strings are left out: a huge one must be capped.
PLAIN_TYPES = frozenset((float, int, bool, type(None)))


def _float(value: float) -> Any:
    if value - value == 0.0:  # finite; cheaper than math.isfinite for the common case
        return value
    return _NON_FINITE.get(value, "NaN")


def _int(value: int) -> Any:
    bits = value.bit_length()
    return value if bits <= _MAX_INT_BITS else {"_type": "int", "bits": bits}


def _class_name(value: Any) -> str:
    cls = type(value)
    module = getattr(cls, "__module__", "") or ""
    return (module.split(".", 1)[0] + "." if module and module != "builtins" else "") + cls.__name__


def _scalar_like(value: Any) -> Any:
    """numpy/torch scalars and single-element arrays/tensors -> Python numbers, else a descriptor."""
    shape = getattr(value, "shape", None)
    size = getattr(value, "size", None)
    if callable(size):  # torch.Tensor.size() is a method; numel() gives the count
        numel = getattr(value, "numel", None)
        size = numel() if callable(numel) else None
    if size == 1 and callable(getattr(value, "item", None)):
        return freeze_value(value.item(), MAX_DEPTH)
    if isinstance(size, int) and size <= _MAX_ARRAY and callable(getattr(value, "tolist", None)):
        return freeze_value(value.tolist(), 1)
    described: Dict[str, Any] = {"_type": _class_name(value)}
    if shape is not None:
        try:
            described["shape"] = [int(n) for n in shape]
        except (TypeError, ValueError):
            pass
    dtype = getattr(value, "dtype", None)
    if dtype is not None:
        described["dtype"] = str(dtype)
    return described


def histogram_summary(counts: Any, bins: Any) -> Dict[str, Any]:
    """A histogram's summary numbers: how many bins, the lowest and highest edge, the total count.

    ``bins`` is the list of edges (``len(counts) + 1`` of them), or wandb's packed form
    ``{"min", "size", "count"}`` (equal bins).  The bin counts themselves are left out: they are
    what a histogram panel draws, not what a dashboard of numbers needs.
    """
    try:
        if isinstance(bins, Mapping):
            low, width, n = float(bins["min"]), float(bins["size"]), int(bins["count"])
            high = low + width * n
        else:
            n, low, high = len(bins) - 1, float(bins[0]), float(bins[-1])
        return {"_type": "histogram", "bins": n, "min": _float(low), "max": _float(high),
                "count": freeze_value(sum(counts))}
    except Exception:
        return {"_type": "histogram"}


def _media(value: Any) -> Dict[str, Any]:
    """A wandb media or custom object: its kind, and its size where wandb keeps one cheaply."""
    log_type = getattr(type(value), "_log_type", None)
    if log_type == "histogram":
        return histogram_summary(getattr(value, "histogram", ()), getattr(value, "bins", ()))
    described: Dict[str, Any] = {"_type": _class_name(value)}
    if isinstance(log_type, str):
        described["log_type"] = log_type
    for attr, key in (("_width", "width"), ("_height", "height"), ("columns", "columns")):
        got = getattr(value, attr, None)
        if isinstance(got, int) and not isinstance(got, bool):
            described[key] = got
        elif key == "columns" and isinstance(got, (list, tuple)):
            described[key] = len(got)
    data = getattr(value, "data", None)
    if isinstance(data, (list, tuple)):
        described["rows"] = len(data)
    return described


def freeze_value(value: Any, depth: int = 0) -> Any:
    cls = type(value)
    if cls is float:
        return _float(value)
    if cls is int:
        return _int(value)
    if cls in _PLAIN:
        if cls is str and len(value) > _MAX_STR:
            return {"_type": "str", "length": len(value)}
        return value
    try:
        if isinstance(value, float):  # float subclasses, numpy.float64
            return _float(float(value))
        if isinstance(value, (bool, int)):  # int subclasses, IntEnum
            return _int(int(value))
        if isinstance(value, str):
            return str(value)[:_MAX_STR]
        if depth >= MAX_DEPTH:
            return {"_type": "nested", "depth": depth}
        if isinstance(value, Mapping):
            return {str(k): freeze_value(v, depth + 1) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            if len(value) > MAX_LIST:
                return {"_type": cls.__name__, "length": len(value)}
            return [freeze_value(v, depth + 1) for v in value]
        if isinstance(value, (bytes, bytearray)):
            return {"_type": "bytes", "length": len(value)}
        if hasattr(value, "dtype") and callable(getattr(value, "item", None)):
            return _scalar_like(value)  # numpy scalar/array, torch tensor, jax array
        return _media(value)
    except Exception:
        return {"_type": "unreadable", "class": _class_name(value)}


def freeze(data: Mapping[str, Any]) -> Dict[str, Any]:
    """A frozen copy of one ``wandb.log`` dict; the user's dict is only read."""
    out: Dict[str, Any] = {}
    for key, value in data.items():
        cls = type(value)
        if cls is float:
            out[key] = value if value - value == 0.0 else _NON_FINITE.get(value, "NaN")
        elif cls is bool or value is None:
            out[key] = value
        elif cls is int:
            out[key] = _int(value)
        else:
            out[key] = freeze_value(value)
    return out
