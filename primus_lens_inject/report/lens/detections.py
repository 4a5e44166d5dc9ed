"""The Lens detection sender: one report per run, built off the training thread, kept on disk
(``detection_queue``) until the server acknowledged it, POSTed to ``{base}/wandb/detection``.

The server answers slowly (it forwards synchronously), so this is a thread of its own with its
own client and timeout; it shares the ``LensEndpoint`` (classification, hints, health) with the
rows thread, so a flush gives up on Lens as a whole and a stop ends both.
"""

from __future__ import annotations

import collections
import threading
from typing import Any, Deque, Dict, Optional, Tuple

from ... import log
from .. import transport
from ..detection_queue import DetectionQueue
from ..policy import DROP, OK, RETRY, STOP, Backoff
from ..sendable import storable_body
from ..sink import OWNER_POLL, Context, retry_later
from . import wire
from .endpoint import LensEndpoint

_DETECTION_RETRY_WINDOW = 30 * 60.0  # spec asks ≥ 10 min for "no valid workload found"


class DetectionSender:
    """The detection reports of one record: the runs' facts waiting to be built, the reports
    waiting on disk, the thread that sends them."""

    def __init__(self, context: Context, endpoint: LensEndpoint) -> None:
        self.context = context
        self.endpoint = endpoint
        self.stats = endpoint.stats
        self.queue = DetectionQueue(context.record_path)
        self.facts: Deque[Any] = collections.deque()
        self.wake = threading.Event()
        context.control.wake_on_flush(self.wake)
        self._inventory: Optional[Dict[str, Any]] = None

    def add(self, facts: Any) -> None:
        self.facts.append(facts)
        self.wake.set()

    def waiting(self) -> bool:
        """Reports a flush waits for: runs not built yet, or built and not acknowledged."""
        return bool(self.facts) or bool(self.queue.pending())

    def run(self) -> None:
        client = None
        backoff = Backoff()
        control, health = self.context.control, self.endpoint.health
        while not control.stop and not health.stopped_reason:
            self._store_waiting()
            pending = self.queue.pending()
            if not pending or (not control.owner.held and not control.owner.try_acquire()):
                control.sleep(self.wake, OWNER_POLL)  # other processes add reports
                continue
            if client is None:
                client = self.endpoint.client(self.context.config.detection_timeout)
            action, reason = self._send(client, pending[0])
            if action == RETRY:
                retry_later(control, health, self.stats, backoff, self.wake)
            else:
                backoff.reset()
                control.notify()
                if action == STOP:
                    self.endpoint.stop(reason)
        if client is not None:
            client.close()

    def _store_waiting(self) -> None:
        """Build and store the report of every run waiting (a full disk: tried again later)."""
        while self.facts:
            try:
                self._store(self.facts[0])
            except OSError as exc:  # a full disk: keep the run's facts and try again
                log.warn(f"detection report not stored in {self.queue.directory} "
                         f"({exc.strerror or exc}); retrying", key="detection-store")
                return
            except Exception as exc:  # one odd run must not stop reporting
                self.stats.dropped["detection could not be built"] += 1
                log.warn(f"detection report not built: {type(exc).__name__}: {exc}",
                         key="detection-build")
            self.facts.popleft()  # only now: a flush waits until the report is on disk
            self.context.control.notify()

    def _store(self, facts: Any) -> None:
        # Building imports lazily (package metadata, GPU libraries): under the imports lock of
        # the moment, read from its module (a forked child has its own).
        with transport.IMPORTS:
            from ..detection import build_report

            if self._inventory is None:
                self._inventory = self.context.inventory()
            body = build_report(facts, self.context.config, self.context.topology,
                                self._inventory)
        self.queue.store(body)

    def _send(self, client: Any, path: str) -> Tuple[str, str]:
        stored = self.queue.load(path)
        if stored is None:
            return DROP, "unreadable detection file"
        body, age = stored
        action, reason = self.endpoint.post(client, "detection", wire.encode(storable_body(body)))
        if action == RETRY and age > _DETECTION_RETRY_WINDOW:
            action, reason = DROP, "detection undeliverable for 30 minutes"
        if action == OK:
            self.stats.detections_sent += 1
        elif action == DROP:
            self.stats.dropped[f"detection: {reason}"] += 1
        if action in (OK, DROP):
            self.queue.remove(path)
        return action, reason
