"""Delivering the local record to its sinks, and detection reports to the Lens telemetry-processor.

Daemon threads per process, started at the first ``wandb.init`` (never on the training thread,
never at interpreter start), each with its own httpx client created in the thread:

* the Lens rows sink (``LensRows``, a ``sink.RowsSink``) tails the record file from the
  acknowledged offset (``spool.Cursor``), merges rows per step, and POSTs ``{base}/wandb/logs``
  in batches of one run, in file order, one request at a time, moving the cursor only when the
  server acknowledged.  Memory holds one batch however long the server is away; a restarted
  process resumes from the cursor.
* the OTLP sink (``otlp_sink.OtlpRows``, only with ``PRIMUS_LENS_OTLP=true``, imported only
  then) does the same from its own cursor, to an OpenTelemetry endpoint (docs/otlp.md).
* the detection sender builds one report per run off the training thread, keeps it as a file
  beside the record until the server acknowledged it, and POSTs ``{base}/wandb/detection``; the
  server answers slowly (it forwards synchronously), so it gets its own thread and timeout.

The sinks share one owner lock (the process that owns the record sends it everywhere) and one
flush: ``flush`` and ``close`` wait for every sink within one deadline, and a sink that keeps
failing is given up on without holding back the others.  Lens responses are classified as spec
§9.6 says (``policy``); each class is logged once, never per request.  Every thread runs under
``guard``: a failure is said once and the loop starts again where it was.  The HTTP client is
built by ``transport``, the reports wait in a ``detection_queue``, and the counters go to the
``status`` file beside the record.
"""

from __future__ import annotations

import collections
import os
import shutil
import threading
import time
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

from .. import guard, log
from ..config import Config, endpoint_hint
from ..topology import Topology
from . import owner, transport, wire
from .detection_queue import DetectionQueue
from .policy import (
    DROP,
    OK,
    RETRY,
    STOP,
    WORKER_HINT,
    Backoff,
    Streak,
    acknowledges,
    answer_text,
    classify,
    envelope_message,
    give_up,
)
from .sink import OWNER_POLL, Batch, Control, RowsSink, answered
from .status import Stats, write_status

DETECTION_RETRY_WINDOW = 30 * 60.0  # spec asks ≥ 10 min for "no valid workload found"


def no_gpus() -> Dict[str, Any]:
    """The inventory of a process without GPUs (the shape ``metrics.gpu.inventory`` returns)."""
    return {"vendor": None, "backend": None, "devices": [], "driver_version": None}


class LensRows(RowsSink):
    """The rows sink of the Lens telemetry-processor: ``{base}/wandb/logs``."""

    name = "rows"

    def __init__(self, reporter: Reporter) -> None:
        super().__init__(reporter.control, reporter.config, reporter.record_path,
                         reporter.writers, reporter.untagged, reporter.stats)
        self._reporter = reporter

    def open_client(self) -> Any:
        return transport.http_client(self.config, self.config.read_timeout)

    def entry(self, row: Dict[str, Any], writer: owner.Writer) -> Tuple[Optional[Dict[str, Any]],
                                                                         str]:
        return wire.log_entry(row["step"], row["timestamp"], row["data"], writer.key_prefix)

    def encode(self, batch: Batch, now: float) -> List[bytes]:
        writer, run_id, entries = batch
        return wire.logs_bodies(writer.identity, run_id, entries, now)

    def post(self, client: Any, body: bytes) -> Tuple[str, str]:
        return self._reporter.post(client, "logs", body)

    def stopped(self, reason: str) -> None:
        super().stopped(reason)
        self._reporter.stopped(reason)


class Reporter:
    """The sink and detection threads of one record; the session starts it, hands it each run,
    and flushes and closes it."""

    def __init__(self, config: Config, topology: Topology, record_path: str,
                 ephemeral: str = "", inventory: Callable[[], Dict[str, Any]] = no_gpus) -> None:
        """``inventory`` describes this process's GPUs for the detection report (capture passes
        ``metrics.gpu.inventory``; reporting does not import the metrics); it is called once, on
        the detection thread, and must not raise."""
        self.config = config
        self.topology = topology
        self.record_path = record_path
        self.ephemeral = ephemeral  # this process's private spool (SAVE_LOCAL=false), if any:
        # the directory is removed once everything in it is delivered
        self.base_url = config.api_base_url.rstrip("/")
        self.identity = wire.identity(config)
        self.writers = owner.Writers(record_path)  # each line is sent under its writer's name
        self.untagged = owner.legacy_writer(config, topology)
        self.stats = Stats()
        self.detections = DetectionQueue(record_path)
        self.control = Control(record_path, on_sent=lambda: self._write_status(every=1.0))
        self.sinks: List[RowsSink] = []
        self.lens: Optional[LensRows] = None
        if owner.lens_reports(config):
            self.lens = LensRows(self)
            self.sinks.append(self.lens)
        self.otlp: Optional[RowsSink] = None
        if config.otlp:  # imported only when enabled: a training process without it loads none
            from .otlp_sink import OtlpRows

            self.otlp = OtlpRows(self.control, config, topology, record_path, self.writers,
                                 self.untagged)
            self.sinks.append(self.otlp)
        self._facts: Deque[Any] = collections.deque()
        self._wake_detection = threading.Event()
        self._stopped_reason = ""
        self._flush_target = 0
        self._threads: List[threading.Thread] = []
        self._describe_gpus = inventory
        self._inventory: Optional[Dict[str, Any]] = None
        self._status_written = 0.0
        self._streaks: Dict[str, Streak] = {}  # one per endpoint: each has its own thread
        self._probed_404 = False

    # -- the session's side -----------------------------------------------------------------

    def start(self) -> None:
        for sink in self.sinks:
            self._threads.append(guard.start_thread(sink.name, sink.run))
        if self.lens is not None:
            self._threads.append(guard.start_thread("detection", self._detection_loop))

    def add_run(self, facts: Any) -> None:
        """A new run: its detection report is built and sent in the background (Lens only)."""
        if self.lens is None:
            return
        self._facts.append(facts)
        self._wake_detection.set()

    def flush(self, timeout: float) -> bool:
        """Wait until every sink has acknowledged every row now in the record and the Lens
        server every pending detection report (True), or until ``timeout``, or until each sink
        not done yet keeps failing (its destination is down: the data stays on disk for
        later).  The sinks work in parallel; retries during a flush are quick."""
        try:
            target = os.path.getsize(self.record_path)
        except OSError:
            target = 0
        self._flush_target = target
        if not self._threads:
            return False
        deadline = time.monotonic() + timeout
        control = self.control
        with control.progress:
            control.flush_to = max(control.flush_to, target)
            control.flushing = True
            for sink in self.sinks:
                sink.flush_asked()
        self._wake_detection.set()
        try:
            with control.progress:
                while True:
                    if not self._facts and not control.owner.try_acquire():
                        return False  # our reports are on disk; the owning process sends them
                    settled, delivered = self._settled(target)
                    if delivered:
                        return True
                    if settled:
                        return False
                    if deadline - time.monotonic() <= 0:
                        self._unanswered(target)
                        return False
                    control.progress.wait(min(deadline - time.monotonic(), 0.1))
        finally:
            control.flushing = False

    def _unanswered(self, target: int) -> None:
        """The budget ran out while a sink still waited for an answer (a server that accepts
        and never answers fails nothing, so nothing else would say it): once per sink, and its
        ``last_error`` in the status file."""
        for sink in self.sinks:
            if sink.failures or sink.stats.last_error or self._sink_settled(sink, target)[1]:
                continue  # a failing sink has said why; a delivered one has nothing to say
            where = (f"reporting to {self.base_url}" if sink is self.lens
                     else f"OTLP export to {getattr(sink, 'endpoint', '')}")
            sink.stats.last_error = "no answer within the process end's budget"
            log.warn(f"{where}: the process end's budget ({self.config.shutdown_timeout:g} s) "
                     "ran out waiting for an answer; the rows not acknowledged stay in the local "
                     "record", key=f"unanswered-{sink.name}")

    def _settled(self, target: int) -> Tuple[bool, bool]:
        """(nothing more to wait for, everything delivered) over all sinks."""
        states = [self._sink_settled(sink, target) for sink in self.sinks]
        return all(s for s, _ in states), all(d for _, d in states)

    def _sink_settled(self, sink: RowsSink, target: int) -> Tuple[bool, bool]:
        settled, delivered = sink.settled(target)
        if sink is self.lens and delivered and (self._facts or self.detections.pending()):
            return sink.gave_up, False  # detection reports still wait
        return settled, delivered

    def close(self, timeout: float) -> None:
        delivered = self.flush(timeout)
        self.control.stop = True
        for sink in self.sinks:
            sink.wake.set()
        self._wake_detection.set()
        for sink in self.sinks:
            if not sink.stopped_reason:
                sink.stats.state = ("exited, all delivered" if delivered or
                                    self._sink_settled(sink, self._flush_target)[1]
                                    else "exited with a backlog")
            if sink.cursor is not None:
                sink.cursor.save()
        self._write_status()
        if delivered and self.ephemeral and self.control.owner.held:
            shutil.rmtree(self.ephemeral, ignore_errors=True)
        self.control.owner.release()

    def abandon_after_fork(self) -> None:
        """In a forked child: the threads are gone and the parent keeps sending this record."""
        self.control.owner.release()
        self._threads = []
        self.control.stop = True

    # -- threads ----------------------------------------------------------------------------

    def stopped(self, reason: str) -> None:
        """Lens refused us for good (identity, authentication, endpoint): rows and detection."""
        self._stopped_reason = reason
        self.stats.state = f"stopped: {reason}"
        log.warn(f"reporting to {self.base_url} stopped: {reason}; rows stay in the local record",
                 key="reporter-stopped")
        self.control.notify()
        self._write_status()

    def post(self, client: Any, endpoint: str, body: bytes) -> Tuple[str, str]:
        """POST one body to ``{base}/wandb/{endpoint}``: (``policy`` action, reason), the action
        made STOP (or DROP) once the server has given the same failing answer for the window."""
        content = b""
        said_as = ""  # the key of a line that said this answer already (one line per failure)
        try:
            response = client.post(f"{self.base_url}/wandb/{endpoint}", content=body)
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
        streak = self._streaks.setdefault(endpoint, Streak(self.config.api_give_up_after))
        if streak.answer(action, status, message):
            action, reason = give_up(streak, status, answer_text(status, content))
        answered(self.stats, action, reason, f"reporting to {self.base_url}",
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

    def _detection_loop(self) -> None:
        client = None
        backoff = Backoff()
        lens = self.lens
        assert lens is not None  # started only with the Lens sink
        control = self.control
        while not control.stop and not self._stopped_reason:
            while self._facts:
                try:
                    self._store_detection(self._facts[0])
                except OSError as exc:  # a full disk: keep the run's facts and try again
                    log.warn(f"detection report not stored in {self.detections.directory} "
                             f"({exc.strerror or exc}); retrying", key="detection-store")
                    break
                except Exception as exc:  # one odd run must not stop reporting
                    self.stats.dropped["detection could not be built"] += 1
                    log.warn(f"detection report not built: {type(exc).__name__}: {exc}",
                             key="detection-build")
                self._facts.popleft()  # only now: a flush waits until the report is on disk
                control.notify()
            pending = self.detections.pending()
            if not pending or (not control.owner.held and not control.owner.try_acquire()):
                control.sleep(self._wake_detection, OWNER_POLL)  # other processes add reports
                continue
            if client is None:
                client = transport.http_client(self.config, self.config.detection_timeout)
            path = pending[0]
            action, reason = self._send_detection(client, path)
            if action == RETRY:
                lens.failed(backoff, self._wake_detection)  # a flush gives up on Lens as a whole
            else:
                backoff.reset()
                control.notify()
                if action == STOP:
                    lens.stopped(reason)
        if client is not None:
            client.close()

    def _store_detection(self, facts: Any) -> None:
        # Building imports lazily (package metadata, GPU libraries): under the imports lock of
        # the moment, read from its module (a forked child has its own).
        with transport.IMPORTS:
            from .detection import build_report

            if self._inventory is None:
                self._inventory = self._describe_gpus()
            body = build_report(facts, self.config, self.topology, self._inventory)
        self.detections.store(body)

    def _send_detection(self, client: Any, path: str) -> Tuple[str, str]:
        stored = self.detections.load(path)
        if stored is None:
            return DROP, "unreadable detection file"
        body, age = stored
        action, reason = self.post(client, "detection", wire.encode(wire.storable_body(body)))
        if action == RETRY and age > DETECTION_RETRY_WINDOW:
            action, reason = DROP, "detection undeliverable for 30 minutes"
        if action == OK:
            self.stats.detections_sent += 1
        elif action == DROP:
            self.stats.dropped[f"detection: {reason}"] += 1
        if action in (OK, DROP):
            self.detections.remove(path)
        return action, reason

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
        acked = self.lens.acked if self.lens is not None else 0
        status: Dict[str, Any] = {
            "pid": os.getpid(), "updated": time.time(),
            "endpoint": self.base_url if self.lens is not None else "",
            "identity": self.identity, "acked_offset": acked,
            "backlog_bytes": max(0, size - acked) if self.lens is not None else 0,
            **self.stats.as_dict()}
        if self.otlp is not None:
            status["otlp"] = {"endpoint": getattr(self.otlp, "endpoint", ""),
                              "acked_offset": self.otlp.acked,
                              "backlog_bytes": max(0, size - self.otlp.acked),
                              **self.otlp.stats.as_dict()}
        write_status(self.record_path, status)
