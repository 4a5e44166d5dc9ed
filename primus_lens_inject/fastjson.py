"""JSON on the row path: the standard library's, or msgspec's where the pod agent has it.

The pod agent reads every row of its pod once and writes most of them again (Lens bodies), so
its CPU per row is mostly JSON: on a 2-core VM the standard library spends about 7 µs parsing a
record line of ten figures and 4 µs writing them back, msgspec about 1.2 µs and 0.6 µs
(docs/agent.md, "Measured").  The agent turns msgspec on (``accelerate``) when it can import it;
a training process never does: it sends a few rows a second, and must not load a compiled
module that its application may have in another version.

What either gives is the same: a line msgspec refuses (a NaN token, a number beyond a double, a
lone surrogate escape, invalid UTF-8, deep nesting) is read again by ``json.loads``, which decides
as it always has.  ``dumps`` is for bodies of finite numbers (the row rules, ``report.sendable``,
leave no other): both write the same values, and neither ever writes a NaN token.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Optional

from .values import STRICT_JSON

_decode: Optional[Callable[[bytes], Any]] = None  # msgspec's, once ``accelerate`` found it
_encode: Optional[Callable[[Any], bytes]] = None


def loads(raw: bytes) -> Any:
    """``json.loads(raw)``'s value; ValueError (or RecursionError) where it raises."""
    if _decode is not None:
        try:
            return _decode(raw)
        except Exception:  # anything msgspec refuses: the standard library decides
            pass
    return json.loads(raw)


def dumps(value: Any) -> bytes:
    """``value`` as JSON, UTF-8; its numbers finite (the standard library refuses a NaN,
    msgspec would write it as ``null``)."""
    if _encode is not None:
        try:
            return _encode(value)
        except Exception:  # a str msgspec cannot write (a lone surrogate): as before
            pass
    return STRICT_JSON.encode(value).encode("ascii")


def accelerate() -> str:
    """Use msgspec from now on in this process, if it can be imported: its name and version, or
    "" (the standard library stays)."""
    global _decode, _encode
    try:
        import msgspec  # type: ignore[import-not-found,unused-ignore]

        decoder, encoder = msgspec.json.Decoder(), msgspec.json.Encoder()
        version = str(getattr(msgspec, "__version__", "?"))
    except Exception:  # absent, or built for another Python
        return ""
    _decode, _encode = decoder.decode, encoder.encode
    return f"msgspec {version}"
