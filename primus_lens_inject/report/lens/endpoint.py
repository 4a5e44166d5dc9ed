"""The Lens telemetry-processor as one stateful object: every request to it, rows and detection
reports alike, goes through ``LensEndpoint.post``.

It holds what belongs to the server rather than to one kind of request: the base URL, how an
answer is classified (``policy``: retry, drop, stop, spec §9.6), the hints a wrong endpoint earns
(a host that does not resolve, a 404, and at the first 404 a ``/healthz`` probe that tells
robust's worker from its API), the give-up streak of each path (``policy.Streak``: the same
failing answer for ``PRIMUS_LENS_API_GIVE_UP_AFTER``), and the ``Health`` shared by the rows and
detection threads: a flush gives up on Lens as a whole, and a stop ends both.
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

from ... import log
from ...config import Config, endpoint_hint
from .. import transport
from ..policy import WORKER_HINT, Streak, acknowledges, answer_text, classify, envelope_message
from ..policy import give_up as streak_verdict
from ..sink import Control, Health, answered
from ..status import Stats


class LensEndpoint:
    """``{base}/wandb/*`` of one record's sender: its answers, its hints, its health."""

    def __init__(self, config: Config, control: Control, stats: Stats,
                 http_transport: Any = None) -> None:
        self.config = config
        self.control = control
        self.stats = stats
        self.base_url = config.api_base_url.rstrip("/")
        self.health = Health(control)
        self._transport = http_transport
        self._streaks: Dict[str, Streak] = {}  # one per path: each has its own thread
        self._probed_404 = False

    @property
    def where(self) -> str:
        return f"reporting to {self.base_url}"

    def client(self, read_timeout: float) -> Any:
        """An httpx client for this server (one per thread, built in it)."""
        return transport.http_client(self.config, read_timeout, self._transport)

    def post(self, client: Any, path: str, body: bytes) -> Tuple[str, str]:
        """POST one body to ``{base}/wandb/{path}``: (``policy`` action, reason), the action
        made STOP (or DROP) once the server has given the same failing answer for the window."""
        content = b""
        said_as = ""  # the key of a line that said this answer already (one line per failure)
        try:
            response = client.post(f"{self.base_url}/wandb/{path}", content=body)
            status, content = response.status_code, response.content
            message = envelope_message(content)
            enveloped = not 200 <= status < 300 or acknowledges(status, content)
        except Exception as exc:  # httpx.TransportError and anything below it
            status, message, enveloped = 0, f"{type(exc).__name__}: {exc}", True
            if transport.unresolved(exc):
                said_as = "endpoint-hint"
                log.warn(endpoint_hint(self.config, "does not resolve"), key=said_as)
        if status == 404:
            log.warn(endpoint_hint(self.config, "answers HTTP 404"), key="endpoint-hint")
            self._diagnose_404(client)
        action, reason = classify(status, message, enveloped, self.config.robust)
        streak = self._streaks.setdefault(path, Streak(self.config.api_give_up_after))
        if streak.answer(action, status, message):
            action, reason = streak_verdict(streak, status, answer_text(status, content))
        answered(self.stats, action, reason, self.where,
                 said_as or f"reporter-{action}-{status}-{message[:40]}-{enveloped}")
        return action, reason

    def _diagnose_404(self, client: Any) -> None:
        """At the first 404: a host whose ``/healthz`` answers 200 is a service without the API
        (robust 1.0.6's robust-analyzer worker); said once, for the process."""
        if self._probed_404:
            return
        self._probed_404 = True
        if transport.healthy_host(client, self.base_url):
            log.warn(f"{self.base_url} answers HTTP 404 but its host's /healthz answers 200: "
                     f"{WORKER_HINT}", key="robust-worker")

    def stop(self, reason: str) -> None:
        """Lens refused us for good (identity, authentication, endpoint): rows and detection."""
        self.health.stopped_reason = reason
        self.stats.state = f"stopped: {reason}"
        log.warn(f"reporting to {self.base_url} stopped: {reason}; rows stay in the local record",
                 key="reporter-stopped")
        self.control.notify()
        self.control.write_status(0.0)
