"""The Lens detection reports: one per run, built off the training thread, kept on disk
(``detection_queue``) until the server acknowledged it, POSTed to ``{base}/wandb/detection``.

Three pieces.  ``ReportStore`` builds each run's report from its facts and stores it in the
record's queue (every trainer that owns a run, also one whose pod agent sends: ``handover``).
``DetectionSender`` sends one record's queue, in a trainer that sends its own record.
``PodDetections`` is the pod agent's: one thread for the queues of every record it sends, the
first report at a random moment within ``PRIMUS_LENS_AGENT_DETECTION_WINDOW`` (a thousand pods
starting together do not answer the server in one burst), and of identical reports of one job
(``detection_queue.job_key``) only the first.

The server answers slowly (it forwards synchronously), so a sender is a thread of its own with its
own client and timeout; a record's sender shares the ``LensEndpoint`` (classification, hints,
health) with that record's rows thread, so a flush gives up on Lens as a whole and a stop ends
both.
"""

from __future__ import annotations

import collections
import os
import random
import threading
import time
from typing import Any, Callable, Deque, Dict, List, Optional, Set, Tuple

from ... import guard, log
from ...config import Config
from ...topology import Topology
from .. import transport
from ..detection_queue import DetectionQueue, job_key
from ..policy import DROP, OK, RETRY, STOP, Backoff
from ..sendable import storable_body
from ..sink import OWNER_POLL, Context, Control, retry_later
from ..status import Stats
from . import wire
from .endpoint import LensEndpoint

_DETECTION_RETRY_WINDOW = 30 * 60.0  # spec asks ≥ 10 min for "no valid workload found"


class ReportStore:
    """Runs' facts waiting to become reports in one record's queue, built on the caller's
    (background) thread."""

    def __init__(self, config: Config, topology: Topology,
                 inventory: Callable[[], Dict[str, Any]], queue: DetectionQueue, stats: Stats,
                 notify: Callable[[], None]) -> None:
        """``notify``: called after each run's report is stored (a flush waits for that)."""
        self.config = config
        self.topology = topology
        self.queue = queue
        self.stats = stats
        self.facts: Deque[Any] = collections.deque()
        self._inventory_of = inventory
        self._inventory: Optional[Dict[str, Any]] = None
        self._notify = notify

    def add(self, facts: Any) -> None:
        self.facts.append(facts)

    def store_waiting(self) -> None:
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
            self._notify()

    def _store(self, facts: Any) -> None:
        # Building imports lazily (package metadata, GPU libraries): under the imports lock of
        # the moment, read from its module (a forked child has its own).
        with transport.IMPORTS:
            from ..detection import build_report

            if self._inventory is None:
                self._inventory = self._inventory_of()
            body = build_report(facts, self.config, self.topology, self._inventory)
        self.queue.store(body, job_key(body, getattr(facts, "group", "")))


def send_stored(endpoint: LensEndpoint, client: Any, path: str) -> Tuple[str, str]:
    """POST one stored report; the file goes once it is acknowledged or dropped."""
    stats = endpoint.stats
    stored = DetectionQueue.load(path)
    if stored is None:
        return DROP, "unreadable detection file"
    body, age = stored
    action, reason = endpoint.post(client, "detection", wire.encode(storable_body(body)))
    if action == RETRY and age > _DETECTION_RETRY_WINDOW:
        action, reason = DROP, "detection undeliverable for 30 minutes"
    if action == OK:
        stats.detections_sent += 1
        DetectionQueue.keep_sent(path, body, time.time())  # its verdict, for the report page
    elif action == DROP:
        stats.dropped[f"detection: {reason}"] += 1
    if action in (OK, DROP):
        DetectionQueue.remove(path)
    return action, reason


class DetectionSender:
    """The detection reports of one record: the runs' facts waiting to be built, the reports
    waiting on disk, the thread that sends them."""

    def __init__(self, context: Context, endpoint: LensEndpoint) -> None:
        self.context = context
        self.endpoint = endpoint
        self.queue = DetectionQueue(context.record_path)
        self.wake = threading.Event()
        self.store = ReportStore(context.config, context.topology, context.inventory, self.queue,
                                 endpoint.stats, context.control.notify)
        context.control.wake_on_flush(self.wake)

    def add(self, facts: Any) -> None:
        self.store.add(facts)
        self.wake.set()

    def waiting(self) -> bool:
        """Reports a flush waits for: runs not built yet, or built and not acknowledged."""
        return bool(self.store.facts) or bool(self.queue.pending())

    def run(self) -> None:
        client = None
        backoff = Backoff()
        control, health = self.context.control, self.endpoint.health
        while not control.stop and not health.stopped_reason:
            self.store.store_waiting()
            pending = self.queue.pending()
            if not pending or (not control.owner.held and not control.owner.try_acquire()):
                control.sleep(self.wake, OWNER_POLL)  # other processes add reports
                continue
            if client is None:
                client = self.endpoint.client(self.context.config.detection_timeout)
            action, reason = send_stored(self.endpoint, client, pending[0])
            if action == RETRY:
                retry_later(control, health, self.endpoint.stats, backoff, self.wake)
            else:
                backoff.reset()
                control.notify()
                if action == STOP:
                    self.endpoint.stop(reason)
        if client is not None:
            client.close()


class PodDetections:
    """The pod agent's detection reports: the queues of the records it sends, one thread."""

    name = "detection"

    def __init__(self, config: Config, root: str) -> None:
        """``root``: the pod's record root (the endpoint's shared state is named after it)."""
        self.config = config
        self.stats = Stats()
        self.control = Control(os.path.join(root, "agent-detection"))
        self.endpoint = LensEndpoint(config, self.control, self.stats)
        self.wake = threading.Event()
        self.control.wake_on_flush(self.wake)
        self.deduplicated = 0  # reports not sent: an identical one of the same job was
        self._queues: Dict[str, Tuple[DetectionQueue, Callable[[], bool]]] = {}
        self._sent_jobs: Set[str] = set()
        self._first_at: Optional[float] = None  # ``time.monotonic()`` of the first send
        self._lifted = False
        self._thread: Optional[threading.Thread] = None

    def add_record(self, record_path: str, sends: Callable[[], bool]) -> None:
        """A record of the pod; ``sends()``: whether the agent holds its owner lock now (a
        trainer without the agent may hold it, and then sends the record's reports itself)."""
        self._queues[record_path] = (DetectionQueue(record_path), sends)
        self.wake.set()

    def start(self) -> None:
        if self._thread is None:
            self._thread = guard.start_thread(self.name, self._run)

    def lift(self) -> None:
        """Drain: the window is over, every waiting report goes now."""
        self._lifted = True
        self.wake.set()

    def pending(self) -> List[str]:
        """The reports waiting in the queues the agent sends, oldest first (by name: time)."""
        paths = [path for queue, sends in list(self._queues.values()) if sends()
                 for path in queue.pending()]
        return sorted(paths, key=os.path.basename)

    def settled(self) -> bool:
        """Nothing more to send now: every report sent, or Lens stopped or keeps failing."""
        return self.endpoint.health.gave_up or not self.pending()

    def flush_round(self) -> None:
        """A drain round begins: failures count from here (``sink.Health``)."""
        self.control.begin_flush()

    def close(self) -> None:
        self.control.stop = True
        self.wake.set()

    def _run(self) -> None:
        client = None
        backoff = Backoff()
        control, health = self.control, self.endpoint.health
        while not control.stop and not health.stopped_reason:
            pending = self.pending()
            if not pending:
                control.sleep(self.wake, OWNER_POLL)
                continue
            job = DetectionQueue.job_of(pending[0])
            if job and job in self._sent_jobs:
                self.deduplicated += 1
                DetectionQueue.remove(pending[0])
                continue
            if self._first_at is None:
                self._first_at = time.monotonic() \
                    + random.random() * self.config.agent_detection_window
            wait = self._first_at - time.monotonic()
            if wait > 0 and not self._lifted:
                control.sleep(self.wake, wait)
                continue
            if client is None:
                client = self.endpoint.client(self.config.detection_timeout)
            action, reason = send_stored(self.endpoint, client, pending[0])
            if action == RETRY:
                retry_later(control, health, self.stats, backoff, self.wake)
                continue
            backoff.reset()
            if action == OK and job:
                self._sent_jobs.add(job)
            if action == STOP:
                self.endpoint.stop(reason)
        if client is not None:
            client.close()
