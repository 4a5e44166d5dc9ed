"""How the reporter answers the telemetry-processor's responses (docs/reporting.md, "Answers"):
the class of each answer, how long one failing answer is tolerated, and the backoff between
retries.

Retry with exponential backoff and jitter (5xx, timeouts, connection errors, ``no valid workload
found``), drop and count (other 400s), stop (missing identity, 401, 404, redirects).  A 2xx
acknowledges only when its body is the server's own envelope (``{"meta": {"code": 2000}}``,
with or without ``meta.message``): an HTML page from an ingress default backend or an auth proxy
is retried like a 5xx.  primus-robust's error texts are not public, so under its presets a 400
this module does not know is retried (``classify(robust=True)``), not dropped at once.

A retried answer is not retried for ever when the server keeps giving the very same one
(``Streak``): a robust-api on an empty database answers every write with the same 500 and will
never store a row, so after ``PRIMUS_LENS_API_GIVE_UP_AFTER`` seconds of it the sink stops for
the process; the record keeps every row for a later process.
"""

from __future__ import annotations

import json
import random
import time
from typing import Callable, Tuple

BACKOFF_MIN, BACKOFF_MAX = 1.0, 60.0

OK, RETRY, DROP, STOP = "ok", "retry", "drop", "stop"

NO_WORKLOAD = "no valid workload found"
_NO_IDENTITY = "either workload_uid or pod_name is required"
# Answers that say the server is away rather than what it thinks of our rows: like a connection
# error, they are retried for as long as they last (a gateway whose backend restarts, a limit).
_AWAY = frozenset((0, 408, 425, 429, 502, 503, 504))
_MIN_IDENTICAL = 3  # a streak ends a sink only after this many answers, however short the window
WORKER_HINT = "this is robust's worker, not its API: use preset robust (robust-api)"


def classify(status: int, message: str, enveloped: bool = True,
             robust: bool = False) -> Tuple[str, str]:
    """(action, reason) for a response; ``status`` 0 means no response (transport error);
    ``enveloped``: the body is the server's success envelope (see ``acknowledges``);
    ``robust``: the server is primus-robust, whose 400 texts are unknown (retried)."""
    if 200 <= status < 300:
        if not enveloped:
            return RETRY, (f"HTTP {status} whose body is not the telemetry-processor's answer "
                           "(a proxy or another service answers at this address?)")
        return OK, ""
    if status == 0:
        return RETRY, message or "connection failed"
    if status == 400:
        if message == NO_WORKLOAD:
            return RETRY, f"server does not know this pod yet ({NO_WORKLOAD})"
        if message == _NO_IDENTITY:
            return STOP, "server requires pod_name or workload_uid"
        if robust:
            return RETRY, (f"server refused the request ({message or 'HTTP 400'}), a text robust "
                           "is not known to send; retrying")
        return DROP, f"server rejected the request ({message or 'HTTP 400'})"
    if status in (401, 403):
        return STOP, f"server refused authentication (HTTP {status}); set PRIMUS_LENS_API_HEADERS"
    if status in (404, 405) or 300 <= status < 400:
        return STOP, f"wrong endpoint (HTTP {status}); check PRIMUS_LENS_API_BASE_URL"
    if status in (408, 425, 429) or status >= 500:
        return RETRY, f"server error (HTTP {status}{f': {message}' if message else ''})"
    return DROP, f"server rejected the request (HTTP {status})"


def acknowledges(status: int, body: bytes) -> bool:
    """Whether a 2xx ``body`` is the server's envelope saying OK: ``meta.code`` 2000 (or the
    HTTP status itself); ``meta.message``, when present, a string (robust's own client treats it
    as optional)."""
    try:
        meta = json.loads(body)["meta"]
        code, message = meta["code"], meta.get("message")
    except (ValueError, KeyError, TypeError, IndexError, AttributeError):
        return False
    return (message is None or isinstance(message, str)) and type(code) is int \
        and code in (2000, status)


def envelope_message(body: bytes) -> str:
    """The server's ``meta.message``, or "" for anything that is not its envelope."""
    try:
        meta = json.loads(body).get("meta") or {}
        message = meta.get("message")
    except (ValueError, AttributeError):
        return ""
    return message if isinstance(message, str) else ""


def answer_text(status: int, body: bytes, limit: int = 200) -> str:
    """What the server answered, for a person: its ``meta.message``, else the start of the body
    on one line."""
    message = envelope_message(body)
    if not message:
        message = " ".join(body[:limit].decode("utf-8", "replace").split())
    return f"HTTP {status}" + (f" {message[:limit]!r}" if message else "")


class Streak:
    """The run of identical retried answers from one endpoint: how long the server has been
    saying the same thing.  ``answer`` says so once the streak has lasted ``window`` seconds and
    at least ``_MIN_IDENTICAL`` answers (with a window of 0, only the count: tests drive it by
    requests, never by the clock).  Any other answer starts it over.  Answers that say the server
    is away (``_AWAY``) and ``no valid workload found`` never count: they are retried for as long
    as they last."""

    def __init__(self, window: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self.clock = clock
        self.key: Tuple[int, str] = (0, "")
        self.count = 0
        self.since = 0.0
        self.drops = 0  # batches dropped since this streak expired (400s only)

    def counts(self, status: int, message: str) -> bool:
        return status not in _AWAY and not (status == 400 and message == NO_WORKLOAD)

    def answer(self, action: str, status: int, message: str) -> bool:
        """Note one answer; True when it continues a streak that has lasted long enough."""
        if action != RETRY or not self.counts(status, message):
            if action == OK or (status, message) != self.key:
                self.key, self.count, self.drops = (0, ""), 0, 0
            return False
        if (status, message) != self.key:
            self.key, self.count, self.since, self.drops = (status, message), 0, self.clock(), 0
        self.count += 1
        return self.count >= _MIN_IDENTICAL and self.clock() - self.since >= self.window


def give_up(streak: Streak, status: int, text: str) -> Tuple[str, str]:
    """What an expired streak becomes: a 400 (a body robust refuses) drops its batch once, the
    next identical refusal, or any other answer, stops the sink."""
    minutes = streak.window / 60
    lasted = f"{minutes:g} min" if minutes >= 1 else f"{streak.window:g} s"
    if status == 400 and streak.drops == 0:
        streak.drops += 1
        return DROP, f"server refused this batch for {lasted} ({text})"
    return STOP, (f"the server has answered {text} to every request for {lasted} "
                  f"({streak.count} times); it will not store these rows")


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
