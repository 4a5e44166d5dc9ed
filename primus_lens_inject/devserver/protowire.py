"""The protobuf wire format, read and written by hand.

The receiver may import only the standard library, so it cannot use the protobuf package to read
OTLP bodies.  The wire format is small: a message is a sequence of (field number, wire type,
value) records, and the four wire types in use today are varint, 64-bit, length-delimited and
32-bit.  This module reads those records and the scalar types built on them; which field numbers
mean what is the business of the message descriptions in :mod:`otlp`.
"""

from __future__ import annotations

import struct
from typing import Iterator, Tuple, Union

VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5
_MAX_VARINT_BYTES = 10
_DOUBLE = struct.Struct("<d")
_UINT64 = struct.Struct("<Q")


class WireError(ValueError):
    """The bytes are not a well-formed protobuf message."""


def _varint(data: bytes, at: int) -> Tuple[int, int]:
    """The unsigned varint at ``at`` and the offset after it."""
    if at < len(data) and data[at] < 0x80:  # most keys and lengths: one byte
        return data[at], at + 1
    result = shift = 0
    for index in range(at, min(at + _MAX_VARINT_BYTES, len(data))):
        byte = data[index]
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result & 0xFFFFFFFFFFFFFFFF, index + 1
        shift += 7
    raise WireError("truncated or overlong varint")


def fields(data: bytes) -> Iterator[Tuple[int, int, Union[int, bytes]]]:
    """Every record of one message, in order: (field number, wire type, value).  The value is
    the raw unsigned integer for varint, 64-bit and 32-bit records, and the bytes of a
    length-delimited one.  Groups (wire types 3 and 4, long deprecated) are refused."""
    at, end = 0, len(data)
    while at < end:
        key, at = _varint(data, at)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise WireError("field number 0")
        if wire == VARINT:
            value, at = _varint(data, at)
            yield number, wire, value
        elif wire in (FIXED64, FIXED32):
            size = 8 if wire == FIXED64 else 4
            if at + size > end:
                raise WireError(f"truncated {size * 8}-bit field {number}")
            yield number, wire, int.from_bytes(data[at:at + size], "little")
            at += size
        elif wire == LENGTH:
            size, at = _varint(data, at)
            if at + size > end:
                raise WireError(f"field {number} is longer than the message")
            yield number, wire, bytes(data[at:at + size])
            at += size
        else:
            raise WireError(f"wire type {wire} of field {number}")


def signed64(raw: int) -> int:
    """A 64-bit two's-complement value (int64 varint, sfixed64) as a Python int."""
    return raw - (1 << 64) if raw >= 1 << 63 else raw


def double(raw: int) -> float:
    """The IEEE 754 double whose bits a 64-bit record carries."""
    return _DOUBLE.unpack(_UINT64.pack(raw))[0]


def _encode_varint(value: int) -> bytes:
    """``value`` (negative ones as 64-bit two's complement) as a varint."""
    value &= 0xFFFFFFFFFFFFFFFF
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_field(number: int, value: Union[int, bytes]) -> bytes:
    """One record: an int as a varint, bytes as a length-delimited value."""
    if isinstance(value, int):
        return _encode_varint(number << 3 | VARINT) + _encode_varint(value)
    return _encode_varint(number << 3 | LENGTH) + _encode_varint(len(value)) + value

