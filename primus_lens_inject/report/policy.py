"""How the reporter answers the telemetry-processor's responses (spec §9.6): the class of each
answer, and the backoff between retries.

Retry with exponential backoff and jitter (5xx, timeouts, connection errors, ``no valid workload
found``), drop and count (other 400s), stop (missing identity, 401, 404, redirects).  A 2xx
acknowledges only when its body is the server's own envelope (``{"meta": {"code": 2000, ...}}``):
an HTML page from an ingress default backend or an auth proxy is retried like a 5xx.
"""

from __future__ import annotations

import json
import random
from typing import Tuple

BACKOFF_MIN, BACKOFF_MAX = 1.0, 60.0

OK, RETRY, DROP, STOP = "ok", "retry", "drop", "stop"


def classify(status: int, message: str, enveloped: bool = True) -> Tuple[str, str]:
    """(action, reason) for a response; ``status`` 0 means no response (transport error);
    ``enveloped``: the body is the server's success envelope (see ``acknowledges``)."""
    if 200 <= status < 300:
        if not enveloped:
            return RETRY, (f"HTTP {status} whose body is not the telemetry-processor's answer "
                           "(a proxy or another service answers at this address?)")
        return OK, ""
    if status == 0:
        return RETRY, message or "connection failed"
    if status == 400:
        if message == "no valid workload found":
            return RETRY, "server does not know this pod yet (no valid workload found)"
        if message == "either workload_uid or pod_name is required":
            return STOP, "server requires pod_name or workload_uid"
        return DROP, f"server rejected the request ({message or 'HTTP 400'})"
    if status in (401, 403):
        return STOP, f"server refused authentication (HTTP {status}); set PRIMUS_LENS_API_HEADERS"
    if status in (404, 405) or 300 <= status < 400:
        return STOP, f"wrong endpoint (HTTP {status}); check PRIMUS_LENS_API_BASE_URL"
    if status in (408, 425, 429) or status >= 500:
        return RETRY, f"server error (HTTP {status})"
    return DROP, f"server rejected the request (HTTP {status})"


def acknowledges(status: int, body: bytes) -> bool:
    """Whether a 2xx ``body`` is the server's envelope saying OK: ``meta.code`` 2000 (or the
    HTTP status itself) and a string ``meta.message``."""
    try:
        meta = json.loads(body)["meta"]
        code, message = meta["code"], meta["message"]
    except (ValueError, KeyError, TypeError, IndexError):
        return False
    return isinstance(message, str) and type(code) is int and code in (2000, status)


def envelope_message(body: bytes) -> str:
    """The server's ``meta.message``, or "" for anything that is not its envelope."""
    try:
        meta = json.loads(body).get("meta") or {}
        message = meta.get("message")
    except (ValueError, AttributeError):
        return ""
    return message if isinstance(message, str) else ""


class Backoff:
    """Full-jitter exponential backoff, so many pods that lost the server do not return at once."""

    def __init__(self) -> None:
        self.failures = 0

    def next_delay(self) -> float:
        self.failures += 1
        ceiling = min(BACKOFF_MAX, BACKOFF_MIN * (2 ** min(self.failures - 1, 10)))
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.failures = 0
