"""Request bodies in our two small HTTP servers (the webhook and the receiver): framing read
strictly, and a refused body dropped so that the client still reads the answer.

Both servers refuse some bodies before reading them (too large, bad framing).  Closing a socket
while the client's bytes are still unread makes the kernel answer with a reset, and the client
then reports a broken connection instead of our 413 or 400: ``discard`` reads and drops what
keeps arriving, within bounds of bytes and time, so the answer gets through first.
"""

from __future__ import annotations

import re
import socket
import time
from io import BufferedIOBase
from typing import Optional, Union

DRAIN_LIMIT = 64 << 20  # bytes read and dropped at most
_DRAIN_SECONDS = 2.0  # for at most this long in all
_DRAIN_IDLE = 0.5  # and no longer than this waiting for the next bytes

_DIGITS = re.compile(rb"[0-9]+")


def content_length(value: Union[bytes, str]) -> Optional[int]:
    """The length a Content-Length header declares (more than 20 digits count as ``10**20``), or
    None when it is not plain ASCII digits: ``int()`` would also take "+1", "1_000" and other
    scripts' digits, and refuse more than 4300 of them."""
    raw = (value.encode("latin-1", "replace") if isinstance(value, str) else value).strip(b" \t")
    if not _DIGITS.fullmatch(raw):
        return None
    digits = raw.lstrip(b"0") or b"0"
    return int(digits) if len(digits) <= 20 else 10**20


def discard(connection: socket.socket, rfile: BufferedIOBase, limit: int = DRAIN_LIMIT) -> None:
    """Read and drop up to ``limit`` bytes from ``rfile`` (buffered over ``connection``) until
    the client stops sending; never raises (the connection is closed next either way)."""
    remaining = min(limit, DRAIN_LIMIT)
    deadline = time.monotonic() + _DRAIN_SECONDS
    try:
        while remaining > 0:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            connection.settimeout(min(left, _DRAIN_IDLE))
            chunk = rfile.read1(min(remaining, 1 << 16))
            if not chunk:
                return
            remaining -= len(chunk)
    except OSError:  # idle, reset, or a TLS error
        return
