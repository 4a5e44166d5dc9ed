"""Delivering the local record to its sinks: the supervisor of one record's senders.

The session makes one ``Reporter`` per record at the first ``wandb.init`` and hands it each run.
The reporter builds the sinks the configuration enables (``sinks.REGISTRY``: the Lens
telemetry-processor in ``lens/``, an OpenTelemetry endpoint in ``otlp/``), starts them, and at
``flush`` and ``close`` waits for every one to the same absolute ``time.monotonic()`` deadline.
Every sink runs daemon threads of its own (never the training thread, never at interpreter
start), each with its own httpx client created in the thread, under ``guard``: a failure is said
once and the loop starts again where it was.

The sinks share one ``sink.Control``: the owner lock (the process that owns the record sends it
everywhere), the flush under way and the stop.  A flush wakes them all at once, so they work in
parallel and one that keeps failing is given up on without holding back the others; the
reporter then waits for each in turn, which costs the slowest one's time.  The counters go to
the ``status`` file beside the record: the reporter's own figures, then each sink's part.
"""

from __future__ import annotations

import os
import shutil
import time
from typing import Any, Callable, Dict, List, Optional

from ..config import Config
from ..topology import Topology
from . import owner, sinks
from .identity import identity
from .pace import Paces
from .sink import Context, Control, Sink
from .status import Stats, write_status


def no_gpus() -> Dict[str, Any]:
    """The inventory of a process without GPUs (the shape ``metrics.gpu.inventory`` returns)."""
    return {"vendor": None, "backend": None, "devices": [], "driver_version": None}


class Reporter:
    """The sinks of one record (a ``lifecycle.Part``); the session starts it, hands it each run,
    and flushes and closes it."""

    name = "reporter"

    def __init__(self, config: Config, topology: Topology, record_path: str,
                 ephemeral: str = "", inventory: Callable[[], Dict[str, Any]] = no_gpus,
                 http_transport: Any = None, paces: Optional[Paces] = None,
                 detections: bool = True) -> None:
        """``inventory`` describes this process's GPUs for the detection report (capture passes
        ``metrics.gpu.inventory``; reporting does not import the metrics); it is called once, on
        the detection thread, and must not raise.  ``http_transport``: an httpx transport every
        sink's client uses instead of the network (tests).  The pod agent passes its ``paces``
        (one request at a time per kind of sink, pod-wide) and ``detections=False`` (its one
        ``PodDetections`` sends every record's reports)."""
        self.config = config
        self.record_path = record_path
        self.ephemeral = ephemeral  # this process's private spool (SAVE_LOCAL=false), if any:
        # the directory is removed once everything in it is delivered
        self.identity = identity(config)
        self.stats = Stats()  # the status file's top level; the session adds the record's count
        self.control = Control(record_path, write_status=self._write_status)
        self.sinks: List[Sink] = sinks.enabled(Context(
            config, topology, record_path, self.control, owner.Writers(record_path),
            owner.legacy_writer(config, topology), self.stats, inventory, http_transport, paces,
            detections))
        self._started = False
        self._status_written = 0.0

    def start(self) -> None:
        for sink in self.sinks:
            sink.start()
        self._started = bool(self.sinks)

    def add_run(self, facts: Any) -> None:
        """A new run (``runfacts.RunFacts``): each sink that reports runs keeps it."""
        for sink in self.sinks:
            sink.add_run(facts)

    def flush(self, deadline: float) -> bool:
        """Wait until every sink has delivered everything now in the record (True), or until
        ``deadline`` (``time.monotonic()``), or until each sink not done yet keeps failing (its
        destination is down: the data stays on disk for later)."""
        self.control.begin_flush()
        try:
            if not self._started:
                return False
            return all([sink.flush(deadline) for sink in self.sinks])  # each waited for
        finally:
            self.control.end_flush()

    def close(self, deadline: float) -> None:
        """Flush to ``deadline``, stop every sink, write the status file and let the record go."""
        delivered = self.flush(deadline)
        self.control.stop = True
        for sink in self.sinks:
            sink.close(deadline)
        self._write_status()
        if delivered and self.ephemeral and self.control.owner.held:
            shutil.rmtree(self.ephemeral, ignore_errors=True)
        self.control.owner.release()

    def abandon_after_fork(self) -> None:
        """In a forked child: the threads are gone and the parent keeps sending this record."""
        self.control.owner.release()
        for sink in self.sinks:
            sink.abandon_after_fork()
        self._started = False
        self.control.stop = True

    def _write_status(self, every: float = 0.0) -> None:
        """Counters beside the record, for doctor; at most once per ``every`` seconds."""
        now = time.monotonic()
        if not self.control.owner.held or now - self._status_written < every:
            return
        self._status_written = now
        try:
            size = os.path.getsize(self.record_path)
        except OSError:
            size = 0
        status: Dict[str, Any] = {
            "pid": os.getpid(), "updated": time.time(), "endpoint": "",
            "identity": self.identity, "acked_offset": 0, "backlog_bytes": 0,
            **self.stats.as_dict()}
        for sink in self.sinks:
            status.update(sink.status(size))
        write_status(self.record_path, status)
