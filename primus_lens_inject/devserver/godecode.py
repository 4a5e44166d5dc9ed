"""Go ``encoding/json`` decoding into typed structs, emulated in Python.

The telemetry-processor binds every request body with gin's ``ShouldBindJSON``, which is Go's
``json.NewDecoder(body).Decode(&req)`` into a typed struct (spec §1.4).  A development receiver
that is more lenient than that lets client bugs through that production rejects with a 400 for the
whole request, so the receiver decodes with the same rules:

* syntax: one JSON value, NaN/Infinity tokens and leading zeros are syntax errors; bytes after
  the first value are ignored; invalid UTF-8 becomes U+FFFD (one per bad byte, like Go), and so
  does a lone UTF-16 surrogate written as a ``\\uXXXX`` escape;
* types: every value must fit the Go type of its field.  ``float64`` takes any number literal in
  range; ``int64`` only a plain integer literal in range (``3.0``, ``1e3``, ``"3"`` fail);
  ``interface{}`` turns numbers into float64, so an out-of-range literal fails there too;
* struct keys: unknown keys are skipped without looking at their values, known keys match
  exactly first and then case-insensitively (Go's ``foldName``);
* ``null`` sets maps, slices, pointers and interfaces to nil and leaves every other value as it
  was; a key given twice is decoded again *into* the value the first one produced, so scalars
  take the last value while structs and maps merge and slices are overwritten element by element.

* depth: Go's scanner refuses a document nested deeper than 10 000 arrays and objects with
  "exceeded max depth"; here the limit is ``MAX_DEPTH`` (500), so that parsing, decoding and
  storing a body stay far inside Python's recursion limit on every supported version.

Differences that remain: bodies nested 501 to 10 000 levels deep are refused here and accepted by
Go, and when a key repeats three or more times Go may reuse slice elements left beyond a shorter
intermediate slice, which is not modelled.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Dict, List, Optional, Tuple, Union

INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
MAX_DEPTH = 500  # arrays and objects nested in one another, counted as Go's scanner counts them

_SURROGATE = re.compile("[\ud800-\udfff]")
_INT_LITERAL = re.compile(r"-?(?:0|[1-9][0-9]*)")
_JSON_SPACE = " \t\n\r"


class GoDecodeError(ValueError):
    """The body would make Go's decoder fail, so the real server answers 400 for all of it."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        self.path: List[str] = []

    def within(self, segment: str) -> GoDecodeError:
        """Prefix the location while the error travels up, so the receiver can say where it was."""
        self.path.insert(0, segment)
        return self

    def __str__(self) -> str:
        where = "".join(self.path).lstrip(".")
        return f"{where}: {self.message}" if where else self.message


class _Scalar:
    """A Go scalar type, or ``interface{}``: the leaves of a type description."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


STRING = _Scalar("string")
FLOAT64 = _Scalar("float64")
INT64 = _Scalar("int64")
BOOL = _Scalar("bool")
ANY = _Scalar("interface {}")


class Map:
    """Go ``map[string]elem``."""

    def __init__(self, elem: GoType) -> None:
        self.elem = elem

    def __repr__(self) -> str:
        return f"map[string]{self.elem!r}"


class Slice:
    """Go ``[]elem``."""

    def __init__(self, elem: GoType) -> None:
        self.elem = elem

    def __repr__(self) -> str:
        return f"[]{self.elem!r}"


class Pointer:
    """Go ``*elem``: like ``elem`` except that ``null`` makes it nil (None)."""

    def __init__(self, elem: GoType) -> None:
        self.elem = elem

    def __repr__(self) -> str:
        return f"*{self.elem!r}"


class Struct:
    """A Go struct: JSON field name -> type, written as keyword arguments in declaration order."""

    def __init__(self, name: str, /, **fields: GoType) -> None:  # a field may be called "name"
        self.name = name
        self.fields = fields
        self._folded: Dict[str, str] = {}
        for field in fields:
            self._folded.setdefault(_fold_name(field), field)  # Go: the first declared one wins

    def field_for(self, key: str) -> Optional[str]:
        """The field a JSON key binds to: exact name first, then Go's case-insensitive match."""
        if key in self.fields:
            return key
        return self._folded.get(_fold_name(key))

    def __repr__(self) -> str:
        return self.name


GoType = Union[_Scalar, Map, Slice, Pointer, Struct]


def _fold_name(name: str) -> str:
    """Go's ``foldName``: every rune replaced by the smallest member of its simple case-fold set.

    Python has no SimpleFold table; the smallest single-character result among the rune and its
    case mappings gives the same answer for the runes that fold onto ASCII letters (long s U+017F
    -> S, Kelvin sign U+212A -> K), which are the only ones that can reach our all-ASCII field names.
    """
    folded = []
    for char in name:
        variants = (char, char.lower(), char.upper(), char.lower().upper(), char.upper().lower())
        folded.append(min(v for v in variants if len(v) == 1))
    return "".join(folded)


def zero(go_type: GoType) -> Any:
    """Go's zero value: what a missing field holds after decoding."""
    if go_type is STRING:
        return ""
    if go_type is FLOAT64:
        return 0.0
    if go_type is INT64:
        return 0
    if go_type is BOOL:
        return False
    if isinstance(go_type, Struct):
        return {name: zero(field) for name, field in go_type.fields.items()}
    return None  # interface, map, slice, pointer: nil


class _Number:
    """A JSON number literal kept as written: only the Go type it lands in decides its fate."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


class _Object:
    """A JSON object's members in document order, repeated keys kept (Go sees every one)."""

    __slots__ = ("pairs",)

    def __init__(self, pairs: List[Tuple[str, Any]]) -> None:
        self.pairs = pairs


def _reject_constant(token: str) -> Any:
    raise GoDecodeError(f"invalid character {token.lstrip('-')[0]!r} looking for beginning of value")


_PARSER = json.JSONDecoder(object_pairs_hook=_Object, parse_float=_Number, parse_int=_Number,
                           parse_constant=_reject_constant)


def parse(body: bytes) -> Any:
    """The first JSON value of ``body`` as Go's scanner would accept it; the rest is ignored."""
    text = _SURROGATE.sub("\ufffd", body.decode("utf-8", "surrogateescape"))
    start = len(text) - len(text.lstrip(_JSON_SPACE))
    try:
        value, _end = _PARSER.raw_decode(text, start)
    except GoDecodeError:
        raise
    except RecursionError:  # far deeper than MAX_DEPTH: the parser ran out of stack first
        raise GoDecodeError("exceeded max depth") from None
    except ValueError as exc:  # json.JSONDecodeError: the same bodies Go's scanner refuses
        raise GoDecodeError(f"syntax error: {exc}") from None
    return value


def decode_body(body: bytes, go_type: Struct) -> Dict[str, Any]:
    """``json.NewDecoder(body).Decode(&v)`` for a fresh ``v`` of ``go_type``; GoDecodeError if Go fails."""
    return decode(parse(body), go_type, zero(go_type))


def _deeper(node: Any, depth: int) -> int:
    """The depth of ``node``'s children; refuses ``node`` itself if it is a container too deep.

    ``depth`` counts the containers enclosing ``node``; every decoding step passes it on, so
    the check costs nothing beyond an integer per value.
    """
    if depth >= MAX_DEPTH and isinstance(node, (_Object, list)):
        raise GoDecodeError("exceeded max depth")
    return depth + 1


def _check_depth(node: Any, depth: int) -> None:
    """Depth check for a value that decoding skips (an unknown struct key); iterative, because
    nothing else walks it."""
    pending = [(node, depth)]
    while pending:
        node, depth = pending.pop()
        inner = _deeper(node, depth)
        if isinstance(node, _Object):
            pending.extend((value, inner) for _, value in node.pairs)
        elif isinstance(node, list):
            pending.extend((value, inner) for value in node)


def decode(node: Any, go_type: GoType, current: Any, depth: int = 0) -> Any:
    """Decode the parsed ``node`` into a Go value of ``go_type`` that currently holds ``current``;
    ``depth``: the number of arrays and objects around ``node``."""
    if node is None:
        nils = go_type is ANY or isinstance(go_type, (Map, Slice, Pointer))
        return None if nils else current
    if go_type is STRING and isinstance(node, str):
        return _go_string(node)
    if go_type is FLOAT64 and isinstance(node, _Number):
        return _float64(node)
    if go_type is INT64 and isinstance(node, _Number):
        return _int64(node)
    if go_type is BOOL and isinstance(node, bool):
        return node
    if go_type is ANY:
        return _interface(node, depth)
    if isinstance(go_type, Pointer):
        return decode(node, go_type.elem, zero(go_type.elem) if current is None else current, depth)
    if isinstance(go_type, Struct) and isinstance(node, _Object):
        return _struct(node, go_type, current, _deeper(node, depth))
    if isinstance(go_type, Map) and isinstance(node, _Object):
        return _map(node, go_type, current, _deeper(node, depth))
    if isinstance(go_type, Slice) and isinstance(node, list):
        return _slice(node, go_type, current, _deeper(node, depth))
    raise GoDecodeError(f"cannot unmarshal {_json_kind(node)} into Go value of type {go_type!r}")


def _go_string(text: str) -> str:
    """A decoded JSON string as Go holds it: lone surrogates from escapes become U+FFFD."""
    return _SURROGATE.sub("\ufffd", text)


def _float64(number: _Number) -> float:
    value = float(number.text)
    if math.isinf(value):  # Python rounds an out-of-range literal to infinity; Go's ParseFloat fails
        raise GoDecodeError(f"cannot unmarshal number {number.text} into Go value of type float64")
    return value


def _int64(number: _Number) -> int:
    text = number.text
    # The digit-count check keeps int() away from Python's limit on huge literals.
    if _INT_LITERAL.fullmatch(text) and len(text.lstrip("-")) <= 19:
        value = int(text)
        if INT64_MIN <= value <= _INT64_MAX:
            return value
    raise GoDecodeError(f"cannot unmarshal number {text} into Go value of type int64")


def _interface(node: Any, depth: int) -> Any:
    """``interface{}``: objects become maps (last key wins), numbers float64, strings as above.

    Plain loops, no comprehensions: on Python < 3.12 a comprehension is one more frame per level.
    """
    if isinstance(node, _Number):
        return _float64(node)
    if isinstance(node, str):
        return _go_string(node)
    if isinstance(node, _Object):
        inner = _deeper(node, depth)
        out = {}
        for key, value in node.pairs:
            try:
                out[_go_string(key)] = _interface(value, inner)
            except GoDecodeError as exc:
                raise exc.within(f"[{key!r}]") from None
        return out
    if isinstance(node, list):
        inner = _deeper(node, depth)
        items = []
        for index, item in enumerate(node):
            try:
                items.append(_interface(item, inner))
            except GoDecodeError as exc:
                raise exc.within(f"[{index}]") from None
        return items
    return node  # bool


def _struct(node: _Object, go_type: Struct, current: Dict[str, Any], depth: int) -> Dict[str, Any]:
    out = dict(current)
    for key, value in node.pairs:
        field = go_type.field_for(_go_string(key))
        if field is None:  # unknown key: Go skips the value without converting any number in it
            _check_depth(value, depth)
            continue
        try:
            out[field] = decode(value, go_type.fields[field], out[field], depth)
        except GoDecodeError as exc:
            raise exc.within(f".{field}") from None
    return out


def _map(node: _Object, go_type: Map, current: Optional[Dict[str, Any]],
         depth: int) -> Dict[str, Any]:
    out = {} if current is None else dict(current)  # Go reuses an existing map, keeping its keys
    for key, value in node.pairs:
        try:
            out[_go_string(key)] = decode(value, go_type.elem, zero(go_type.elem), depth)
        except GoDecodeError as exc:
            raise exc.within(f"[{key!r}]") from None
    return out


def _slice(node: List[Any], go_type: Slice, current: Optional[List[Any]],
           depth: int) -> List[Any]:
    existing = current or []
    out = []
    for index, value in enumerate(node):
        into = existing[index] if index < len(existing) else zero(go_type.elem)
        try:
            out.append(decode(value, go_type.elem, into, depth))
        except GoDecodeError as exc:
            raise exc.within(f"[{index}]") from None
    return out


def _json_kind(node: Any) -> str:
    if isinstance(node, _Object):
        return "object"
    if isinstance(node, list):
        return "array"
    if isinstance(node, bool):
        return "bool"
    if isinstance(node, _Number):
        return f"number {node.text}"
    return "string"
