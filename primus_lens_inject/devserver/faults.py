"""What the receiver does wrong on purpose: the validated fault settings and their state
(clock and random source) shared by the request threads."""

from __future__ import annotations

import dataclasses
import http
import math
import random
import threading
import time
from typing import Any, Dict, Mapping, Optional, Tuple

from .schema import ENDPOINTS

OTLP = "otlp"  # the OTLP/HTTP route, as a name in fail_endpoints
_ALL_PARTS = (*ENDPOINTS, OTLP)
_GARBAGE_STATUSES = {int(status) for status in http.HTTPStatus if status >= 200}
_FAIL_STATUSES = {status for status in _GARBAGE_STATUSES if status >= 400}


@dataclasses.dataclass(frozen=True)
class Faults:
    """What the receiver does wrong on purpose; all off by default.  Setting faults replaces all
    of them (``{}`` clears) and restarts the no-workload window, the counts of the next requests
    to fail (``no_workload_requests``, ``fail_requests``: faults by count, for tests that must not
    depend on a clock) and the random sequence."""

    delay: float = 0.0  # seconds before each /v1/wandb/ (and OTLP) request is answered
    delay_max: float = 0.0  # above ``delay``: a uniformly random delay in [delay, delay_max]
    fail_rate: float = 0.0  # chance that processing fails: 500 "failed to process ..." (nothing stored)
    fail_endpoints: Tuple[str, ...] = _ALL_PARTS  # which bodies (also as batch parts, and OTLP) can fail
    garbage_rate: float = 0.0  # chance of a non-JSON HTML answer instead of processing
    garbage_status: int = 502  # the HTTP status of that answer (200 is allowed)
    no_workload_for: float = 0.0  # seconds of "no valid workload found" for pod names; -1: until reset
    no_workload_requests: int = 0  # the next N pod-name lookups find no workload (by count: no clock)
    fail_requests: int = 0  # the next N bodies of fail_endpoints fail with 500, before fail_rate draws
    otlp_fail_status: int = 503  # what a failing OTLP request gets (with a google.rpc.Status)
    otlp_retry_after: Optional[int] = None  # seconds in a Retry-After header on that answer
    otlp_reject_rate: float = 0.0  # chance that each good OTLP point is refused (partial success)
    otlp_html_for: int = 0  # the next N OTLP requests get 200 + an HTML page (a proxy's), unread
    otlp_max_body: int = 0  # OTLP bodies over this many bytes get 413, as behind a proxy; 0: none
    seed: Optional[int] = None  # seeds the random choices; None: different every time

    @classmethod
    def from_mapping(cls, settings: Mapping[str, Any]) -> Faults:
        """Validated faults from JSON, command-line options or keyword arguments."""
        unknown = set(settings) - {field.name for field in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown fault setting(s): {', '.join(sorted(unknown))}")
        values = dict(settings)
        for name, low, high in (("delay", 0, None), ("delay_max", 0, None), ("fail_rate", 0, 1),
                                ("garbage_rate", 0, 1), ("no_workload_for", -1, None),
                                ("otlp_reject_rate", 0, 1)):
            if name in values:
                values[name] = _number(name, values[name], low, high)
        if "fail_endpoints" in values:
            values["fail_endpoints"] = _endpoint_names(values["fail_endpoints"])
        if "garbage_status" in values and not (_is_int(values["garbage_status"])
                                               and values["garbage_status"] in _GARBAGE_STATUSES):
            raise ValueError(f"garbage_status must be an HTTP status from 200 to 599, "
                             f"not {values['garbage_status']!r}")
        if "otlp_fail_status" in values and not (_is_int(values["otlp_fail_status"])
                                                 and values["otlp_fail_status"] in _FAIL_STATUSES):
            raise ValueError(f"otlp_fail_status must be an HTTP status from 400 to 599, "
                             f"not {values['otlp_fail_status']!r}")
        for name in ("otlp_html_for", "otlp_max_body", "no_workload_requests", "fail_requests"):
            if name in values and not (_is_int(values[name]) and values[name] >= 0):
                raise ValueError(f"{name} must be a whole number, not {values[name]!r}")
        retry_after = values.get("otlp_retry_after")
        if retry_after is not None and not (_is_int(retry_after) and retry_after >= 0):
            raise ValueError(f"otlp_retry_after must be a whole number of seconds, not {retry_after!r}")
        if values.get("seed") is not None and not _is_int(values["seed"]):
            raise ValueError(f"seed must be an integer, not {values['seed']!r}")
        return cls(**values)

    def to_json(self) -> Dict[str, Any]:
        return {**dataclasses.asdict(self), "fail_endpoints": list(self.fail_endpoints)}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(name: str, value: Any, low: float, high: Optional[float]) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, not {value!r}")
    if value < low or (high is not None and value > high):
        raise ValueError(f"{name} must be between {low} and {'any' if high is None else high}, not {value}")
    return float(value)


def _endpoint_names(value: Any) -> Tuple[str, ...]:
    names = value.split(",") if isinstance(value, str) else value
    if not isinstance(names, (list, tuple)) or not all(name in _ALL_PARTS for name in names):
        raise ValueError(f"fail_endpoints must list some of {', '.join(_ALL_PARTS)}, not {value!r}")
    return tuple(names)


class FaultState:
    """The faults in effect with their clock and random source, shared by all request threads."""

    def __init__(self, faults: Faults) -> None:
        self._lock = threading.Lock()
        self.set(faults)

    def set(self, faults: Faults) -> None:
        with self._lock:
            self.faults = faults
            self._since = time.monotonic()
            self._random = random.Random(faults.seed)
            self._html_left = faults.otlp_html_for
            self._no_workload_left = faults.no_workload_requests
            self._fail_left = faults.fail_requests

    def delay(self) -> float:
        with self._lock:
            low, high = self.faults.delay, self.faults.delay_max
            return self._random.uniform(low, high) if high > low else low

    def garbage(self) -> bool:
        with self._lock:
            return self._chance(self.faults.garbage_rate)

    def fails(self, endpoint: str) -> bool:
        with self._lock:
            if endpoint not in self.faults.fail_endpoints:
                return False
            if self._fail_left > 0:
                self._fail_left -= 1
                return True
            return self._chance(self.faults.fail_rate)

    def rejects_point(self) -> bool:
        with self._lock:
            return self._chance(self.faults.otlp_reject_rate)

    def otlp_html(self) -> bool:
        """Whether this OTLP request is one of the ``otlp_html_for`` answered with HTML."""
        with self._lock:
            if self._html_left <= 0:
                return False
            self._html_left -= 1
            return True

    def too_large(self, size: int) -> bool:
        """Whether an OTLP body of ``size`` bytes is over the ``otlp_max_body`` limit."""
        with self._lock:
            return 0 < self.faults.otlp_max_body < size

    def hides_workloads(self) -> bool:
        with self._lock:
            if self._no_workload_left > 0:
                self._no_workload_left -= 1
                return True
            window = self.faults.no_workload_for
            return window < 0 or time.monotonic() - self._since < window

    def _chance(self, rate: float) -> bool:
        return rate > 0 and self._random.random() < rate  # no draw when off: sequences stay seeded
