"""The reporter of a trainer whose pod agent sends its record (``PRIMUS_LENS_AGENT=true``).

Such a trainer only records: it starts no sink, opens no connection and never takes the record's
owner lock (``spool.OwnerLock``), so the agent, which takes that lock, is the record's one
sender and no line can be sent twice.  What the agent cannot make itself it still gets from the
trainer, on disk: each run's writer (``owner.register``, by the session) and each run's detection
report, built here off the training thread from the run's facts (``lens.detections.ReportStore``)
and stored in the record's detection queue.  Its end waits only for those reports to be on disk.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Dict, Optional

from .. import guard
from ..config import Config
from ..topology import Topology
from .detection_queue import DetectionQueue
from .owner import lens_reports
from .status import Stats

_IDLE = 1.0  # seconds the thread sleeps when no run waits


class Handover:
    """A ``lifecycle.Part`` in the reporter's place: runs' detection reports to the record's
    queue, for the pod agent to send."""

    name = "reporter"

    def __init__(self, config: Config, topology: Topology, record_path: str,
                 inventory: Callable[[], Dict[str, Any]]) -> None:
        from .lens import ReportStore

        self.stats = Stats()  # the session notes the record's own losses here; nobody sends it
        self.record_path = record_path
        self._wanted = lens_reports(config)  # the reports Lens would get from this trainer
        self._wake = threading.Event()
        self.store = ReportStore(config, topology, inventory, DetectionQueue(record_path),
                                 self.stats, lambda: None)  # a flush polls ``store.facts``
        self._thread: Optional[threading.Thread] = None
        self._stop = False

    def start(self) -> None:
        if self._thread is None and self._wanted:
            self._thread = guard.start_thread("detection", self._run)

    def add_run(self, facts: Any) -> None:
        if self._wanted:
            self.store.add(facts)
            self._wake.set()

    def flush(self, deadline: float) -> bool:
        """True once every run's report is on disk (the agent sends it), or False at
        ``deadline``."""
        self._wake.set()
        return self._thread is None or guard.wait_until(lambda: not self.store.facts, deadline)

    def close(self, deadline: float) -> None:
        self.flush(deadline)
        self._stop = True
        self._wake.set()

    def abandon_after_fork(self) -> None:
        """In a forked child: the parent's thread and its waiting runs stay the parent's."""
        self._thread = None
        self._stop = True
        self.store.facts.clear()

    def _run(self) -> None:
        while not self._stop:
            self.store.store_waiting()
            self._wake.wait(_IDLE)
            self._wake.clear()
