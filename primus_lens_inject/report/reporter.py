"""Delivering the local record and detection reports to the Lens telemetry-processor.

Two daemon threads per process, started at the first ``wandb.init`` (never on the training
thread, never at interpreter start), each with its own httpx client created in the thread:

* the rows sender tails the record file from the acknowledged offset (``spool.Cursor``), merges
  rows per step, and POSTs ``{base}/wandb/logs`` in batches of one run, in file order, one request
  at a time, moving the cursor only when the server acknowledged.  Memory holds one batch however
  long the server is away; a restarted process resumes from the cursor.
* the detection sender builds one report per run off the training thread, keeps it as a file
  beside the record until the server acknowledged it, and POSTs ``{base}/wandb/detection``; the
  server answers slowly (it forwards synchronously), so it gets its own thread and timeout.

Responses are classified as spec §9.6 says (``policy``); each class is logged once, never per
request.  Both threads run under ``guard``: a failure is said once and the loop starts again
where it was.  The HTTP client is built by ``transport``, the reports wait in a
``detection_queue``, and the counters go to the ``status`` file beside the record.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import threading
import time
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

from .. import guard, log
from ..config import Config, endpoint_hint
from ..topology import Topology
from . import owner, spool, transport, wire
from .detection_queue import DetectionQueue
from .policy import DROP, OK, RETRY, STOP, Backoff, acknowledges, classify, envelope_message
from .status import Stats, write_status

READ_BYTES = 2 << 20
BATCH_BYTES = 900 << 10  # record bytes per request: the encoded body stays under 1 MiB
DETECTION_RETRY_WINDOW = 30 * 60.0  # spec asks ≥ 10 min for "no valid workload found"
OWNER_POLL = 2.0
FLUSH_RETRY = 0.5  # seconds between retries while finish/exit waits
FLUSH_GIVE_UP = 5  # consecutive failures while a flush waits: the server is down, stop waiting


def no_gpus() -> Dict[str, Any]:
    """The inventory of a process without GPUs (the shape ``metrics.gpu.inventory`` returns)."""
    return {"vendor": None, "backend": None, "devices": [], "driver_version": None}


class Reporter:
    """The two sender threads of one record; the session starts it, hands it each run, and
    flushes and closes it."""

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
        self._owner = spool.OwnerLock(record_path)
        self._cursor: Optional[spool.Cursor] = None
        self._facts: Deque[Any] = collections.deque()
        self._wake_rows = threading.Event()
        self._wake_detection = threading.Event()
        self._progress = threading.Condition()
        self._flush_to = 0  # a flush asks for everything up to this offset now
        self._flushing = False
        self._flush_failures = 0  # consecutive failed sends while a flush waits
        self._stop = False
        self._stopped_reason = ""
        self._threads: List[threading.Thread] = []
        self._describe_gpus = inventory
        self._inventory: Optional[Dict[str, Any]] = None
        self._status_written = 0.0

    # -- the session's side -----------------------------------------------------------------

    def start(self) -> None:
        for name, target in (("rows", self._rows_loop), ("detection", self._detection_loop)):
            self._threads.append(guard.start_thread(name, target))

    def add_run(self, facts: Any) -> None:
        """A new run: its detection report is built and sent in the background."""
        self._facts.append(facts)
        self._wake_detection.set()

    def flush(self, timeout: float) -> bool:
        """Wait until the server acknowledged every row now in the record and every pending
        detection report (True), or until ``timeout``, or until sends keep failing (the server
        is down: the data stays on disk for later).  Retries during a flush are quick."""
        if self._stopped_reason or not self._threads:
            return False
        try:
            target = os.path.getsize(self.record_path)
        except OSError:
            target = 0
        deadline = time.monotonic() + timeout
        with self._progress:
            self._flush_to = max(self._flush_to, target)
            self._flushing = True
            self._flush_failures = 0
        self._wake_rows.set()
        self._wake_detection.set()
        try:
            with self._progress:
                while True:
                    if not self._facts and not self._owner.try_acquire():
                        return False  # our reports are on disk; the owning process sends them
                    if not self._facts and self._acked() >= target \
                            and not self.detections.pending():
                        return True
                    left = deadline - time.monotonic()
                    if left <= 0 or self._flush_failures >= FLUSH_GIVE_UP or self._stopped_reason:
                        return False
                    self._progress.wait(min(left, 0.1))
        finally:
            self._flushing = False

    def _failed(self, backoff: Backoff, event: threading.Event) -> None:
        """A send failed and will be retried: wait the backoff (briefly while a flush waits)."""
        self.stats.retries += 1
        with self._progress:
            self._flush_failures += 1
            self._progress.notify_all()
        delay = backoff.next_delay()
        self._sleep(event, min(delay, FLUSH_RETRY) if self._flushing else delay)

    def close(self, timeout: float) -> None:
        delivered = self.flush(timeout)
        self._stop = True
        self._wake_rows.set()
        self._wake_detection.set()
        if not self._stopped_reason:
            self.stats.state = "exited, all delivered" if delivered else "exited with a backlog"
        if self._cursor is not None:
            self._cursor.save()
        self._write_status()
        if delivered and self.ephemeral and self._owner.held:
            shutil.rmtree(self.ephemeral, ignore_errors=True)
        self._owner.release()

    def abandon_after_fork(self) -> None:
        """In a forked child: the threads are gone and the parent keeps sending this record."""
        self._owner.release()
        self._threads = []
        self._stop = True

    # -- threads ----------------------------------------------------------------------------

    def _stopped(self, reason: str) -> None:
        self._stopped_reason = reason
        self.stats.state = f"stopped: {reason}"
        log.warn(f"reporting to {self.base_url} stopped: {reason}; rows stay in the local record",
                 key="reporter-stopped")
        with self._progress:
            self._progress.notify_all()
        self._write_status()

    def _client(self, read_timeout: float) -> Any:
        return transport.http_client(self.config, read_timeout)

    def _post(self, client: Any, endpoint: str, body: bytes) -> Tuple[str, str]:
        try:
            response = client.post(f"{self.base_url}/wandb/{endpoint}", content=body)
            status, content = response.status_code, response.content
            message = envelope_message(content)
            enveloped = not 200 <= status < 300 or acknowledges(status, content)
        except Exception as exc:  # httpx.TransportError and anything below it
            status, message, enveloped = 0, f"{type(exc).__name__}: {exc}", True
            if transport.unresolved(exc):
                log.warn(endpoint_hint(self.config, "does not resolve"), key="endpoint-hint")
        if status == 404:
            log.warn(endpoint_hint(self.config, "answers HTTP 404"), key="endpoint-hint")
        self.stats.requests += 1
        action, reason = classify(status, message, enveloped)
        if action != OK:
            self.stats.last_error = reason
        if action in (RETRY, DROP):  # STOP says so once, in _stopped
            log.warn(f"reporting to {self.base_url}: {reason}; "
                     + ("retrying with backoff" if action == RETRY else
                        "dropped (kept in the local record)"),
                     key=f"reporter-{action}-{status}-{message[:40]}-{enveloped}")
        return action, reason

    def _sleep(self, event: threading.Event, seconds: float) -> None:
        event.wait(seconds)
        event.clear()

    def _acked(self) -> int:
        return self._cursor.offset if self._cursor is not None else 0

    def _own(self, event: threading.Event) -> bool:
        """Only one process sends a record; the others wait for it to exit."""
        while not self._stop:
            if self._owner.try_acquire():
                return True
            self.stats.state = "waiting: another process sends this record"
            self._sleep(event, OWNER_POLL)
        return False

    def _rows_loop(self) -> None:
        if not self._own(self._wake_rows):
            return
        if self._cursor is None:  # a restarted loop keeps its position
            self._cursor = spool.Cursor(self.record_path)
        client = self._client(self.config.read_timeout)
        try:
            self._send_rows(client, self._cursor)
        finally:
            client.close()

    def _send_rows(self, client: Any, cursor: spool.Cursor) -> None:
        """Batches from the record, in file order; the cursor moves once every request of a
        batch (more than one only for a batch over ``wire.MAX_BODY``) is acknowledged."""
        backoff = Backoff()
        self.stats.state = "running"
        lines: List[Tuple[int, bytes]] = []  # read ahead, not yet acknowledged (≤ READ_BYTES)
        bodies: List[bytes] = []  # requests of the current batch not acknowledged yet
        used = rows = 0
        dropped_as = ""  # a request of the current batch was refused: its rows count as dropped
        while not self._stop and not self._stopped_reason:
            if not bodies:
                if len(lines) < self.config.batch_size:
                    lines += spool.read_lines(self.record_path,
                                              lines[-1][0] if lines else cursor.offset,
                                              READ_BYTES)
                if not lines or not self._batch_due(lines):
                    cursor.save()  # a save that failed (disk full) is retried while idle
                    with self._progress:
                        self._progress.notify_all()
                    self._sleep(self._wake_rows, 0.2)
                    continue
                writer, run_id, entries, used, skipped = self._batch(lines)
                for reason, count in skipped.items():
                    self.stats.dropped[reason] += count
                rows, dropped_as = len(entries), ""
                if entries:
                    bodies = wire.logs_bodies(writer.identity, run_id, entries, time.time())
            action, reason = self._post(client, "logs", bodies[0]) if bodies else (OK, "")
            if action in (OK, DROP):
                del bodies[:1]
                dropped_as = reason if action == DROP else dropped_as
                backoff.reset()
                if bodies:
                    continue
                if dropped_as:
                    self.stats.dropped[dropped_as] += rows
                else:
                    self.stats.rows_sent += rows
                cursor.advance(lines[used - 1][0])
                del lines[:used]
                self._write_status(every=1.0)
            elif action == STOP:
                self._stopped(reason)
            else:
                self._failed(backoff, self._wake_rows)

    def _batch_due(self, lines: List[Tuple[int, bytes]]) -> bool:
        """Send now when a batch is full, a flush waits, or the oldest row waited long enough."""
        if len(lines) >= self.config.batch_size or self._flush_to > self._cursor.offset:
            return True
        try:
            oldest = json.loads(lines[0][1]).get("timestamp", 0)
        except (ValueError, AttributeError):
            return True
        return not isinstance(oldest, (int, float)) \
            or time.time() - oldest >= self.config.flush_interval

    def _batch(self, lines: List[Tuple[int, bytes]]) -> Tuple[owner.Writer, str,
                                                               List[Dict[str, Any]], int,
                                                               Dict[str, int]]:
        """The next request: consecutive rows of one writer and run, at most batch_size steps
        and BATCH_BYTES; returns (writer, run id, entries, lines used, skipped rows by reason).
        Rows of a writer that does not report (another rank sharing the file) are passed over."""
        writer = self.untagged
        run_id = ""
        rows: List[Tuple[str, Dict[str, Any]]] = []
        skipped: Dict[str, int] = collections.Counter()
        used = size = 0
        for _end, line in lines:
            try:
                row = json.loads(line)
                row_run, tag = row["run_id"], row.get("who") or ""
                row_writer = self.writers.get(tag) if tag else self.untagged
                if row_writer is None or not row_writer.report:  # its writer does not report
                    if row_writer is None:
                        skipped["record line of an unknown writer"] += 1
                    used += 1
                    continue
                entry, why = wire.log_entry(row["step"], row["timestamp"], row["data"],
                                            row_writer.key_prefix)
            except (ValueError, KeyError, TypeError, AttributeError):
                skipped["unreadable record line"] += 1
                used += 1
                continue
            if run_id and (row_run != run_id or row_writer is not writer):
                break
            if entry is not None:
                if rows and (len(rows) >= self.config.batch_size or size + len(line) > BATCH_BYTES) \
                        and not (rows[-1][0] == row_run and rows[-1][1]["step"] == entry["step"]):
                    break
                writer, run_id = row_writer, row_run
                rows.append((row_run, entry))
                size += len(line)
            else:
                skipped[f"row not sendable: {why}"] += 1
            used += 1
        return writer, run_id, [entry for _, entry in wire.merge_steps(rows)], used, skipped

    def _detection_loop(self) -> None:
        client = None
        backoff = Backoff()
        while not self._stop and not self._stopped_reason:
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
                with self._progress:
                    self._progress.notify_all()
            pending = self.detections.pending()
            if not pending or (not self._owner.held and not self._owner.try_acquire()):
                self._sleep(self._wake_detection, OWNER_POLL)  # other processes may add reports
                continue
            if client is None:
                client = self._client(self.config.detection_timeout)
            path = pending[0]
            action, reason = self._send_detection(client, path)
            if action == RETRY:
                self._failed(backoff, self._wake_detection)
            else:
                backoff.reset()
                with self._progress:
                    self._progress.notify_all()
                if action == STOP:
                    self._stopped(reason)
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
        action, reason = self._post(client, "detection", wire.encode(wire.storable_body(body)))
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
        if not self._owner.held or now - self._status_written < every:
            return
        self._status_written = now
        try:
            size = os.path.getsize(self.record_path)
        except OSError:
            size = 0
        write_status(self.record_path, {
            "pid": os.getpid(), "updated": time.time(), "endpoint": self.base_url,
            "identity": self.identity, "acked_offset": self._acked(),
            "backlog_bytes": max(0, size - self._acked()), **self.stats.as_dict()})
