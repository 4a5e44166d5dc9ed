"""The machinery every destination of a record's rows shares: its own cursor, batches read from
the record in file order, one request at a time, the answer classified, backoff, and its part in a
flush.

A ``RowsSink`` is one thread of a ``Reporter``.  It tails the record from its acknowledged offset
(a ``spool.Cursor`` whose file suffix names the sink), groups consecutive rows of one writer and
run into a batch (at most ``batch_size`` steps and ``BATCH_BYTES`` of record), turns the batch
into request bodies (the subclass: ``encode``), posts them (the subclass: ``post``, which returns
``policy``'s action) and moves its cursor only once every body of the batch was acknowledged or
dropped.  Memory holds one batch however long the destination is away; a restarted process
resumes from the cursor.  Rows of a writer that does not report (``owner``) are passed over, so
every sink exports each row once per job, not once per rank.

Sinks of one record share the ``Reporter``'s ``Control`` (the flush target and the stop flag)
and its owner lock, nothing else: each has its own thread, client, backoff and failure count, so
one destination being down never delays another.
"""

from __future__ import annotations

import collections
import json
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from .. import log
from ..config import Config
from . import owner, spool, wire
from .policy import DROP, OK, RETRY, STOP, Backoff
from .status import Stats

READ_BYTES = 2 << 20
BATCH_BYTES = 900 << 10  # record bytes per request: the encoded body stays under 1 MiB
OWNER_POLL = 2.0
FLUSH_RETRY = 0.5  # seconds between retries while finish/exit waits
FLUSH_GIVE_UP = 5  # consecutive failures while a flush waits: the destination is down

Batch = Tuple[owner.Writer, str, List[Dict[str, Any]]]  # writer, run id, merged entries
TOO_LONG = f"record line over the reader's {spool.MAX_LINE >> 20} MiB ceiling (skipped)"


def answered(stats: Stats, action: str, reason: str, where: str, key: str) -> None:
    """Count one request, and say once per kind of answer (``key``) what a failure means;
    a stop is said by the sink that stops."""
    stats.requests += 1
    if action != OK:
        stats.last_error = reason
    if action in (RETRY, DROP):
        log.warn(f"{where}: {reason}; " + ("retrying with backoff" if action == RETRY else
                                           "dropped (kept in the local record)"), key=key)


class Control:
    """What the reporter's sinks share: the flush that waits, the stop, the owner lock."""

    def __init__(self, record_path: str, on_sent: Callable[[], None] = lambda: None) -> None:
        """``on_sent``: called when a sink's cursor moved (the reporter writes its status)."""
        self.owner = spool.OwnerLock(record_path)
        self.on_sent = on_sent
        self.progress = threading.Condition()  # a sink moved, failed or stopped
        self.flush_to = 0  # a flush asks for everything up to this offset now
        self.flushing = False
        self.stop = False

    def notify(self) -> None:
        with self.progress:
            self.progress.notify_all()

    def sleep(self, event: threading.Event, seconds: float) -> None:
        event.wait(seconds)
        event.clear()

    def own(self, event: threading.Event, stats: Stats) -> bool:
        """Only one process sends a record (every sink of it); the others wait for it to exit."""
        while not self.stop:
            if self.owner.try_acquire():
                return True
            stats.state = "waiting: another process sends this record"
            self.sleep(event, OWNER_POLL)
        return False


class RowsSink:
    """One destination of the record's rows; subclasses say how a batch is encoded and posted."""

    name = "rows"  # the thread's name
    cursor_suffix = spool.CURSOR_SUFFIX

    def __init__(self, control: Control, config: Config, record_path: str,
                 writers: owner.Writers, untagged: owner.Writer,
                 stats: Optional[Stats] = None) -> None:
        self.control = control
        self.config = config
        self.record_path = record_path
        self.writers = writers
        self.untagged = untagged
        self.stats = stats if stats is not None else Stats()
        self.cursor: Optional[spool.Cursor] = None
        self.wake = threading.Event()
        self.failures = 0  # consecutive failed sends while a flush waits
        self.stopped_reason = ""

    # -- what a destination defines ----------------------------------------------------------

    def open_client(self) -> Any:
        raise NotImplementedError

    def entry(self, row: Dict[str, Any], writer: owner.Writer) -> Tuple[Optional[Dict[str, Any]],
                                                                         str]:
        """One record row as ``{"step", "timestamp", "data"}`` (``wire.log_entry``), or (None,
        why) when it has nothing to send."""
        raise NotImplementedError

    def encode(self, batch: Batch, now: float) -> List[bytes]:
        raise NotImplementedError

    def post(self, client: Any, body: bytes) -> Tuple[str, str]:
        """(``policy`` action, reason) for one body."""
        raise NotImplementedError

    def retry_after(self) -> Optional[float]:
        """Seconds the destination asked us to wait before the next try, if it did."""
        return None

    def stopped(self, reason: str) -> None:
        """Sending stops for good in this process (the subclass says so once)."""
        self.stopped_reason = reason
        self.stats.state = f"stopped: {reason}"
        self.control.notify()

    # -- the flush's view ----------------------------------------------------------------------

    @property
    def acked(self) -> int:
        return self.cursor.offset if self.cursor is not None else 0

    @property
    def gave_up(self) -> bool:
        """A flush stops waiting for this sink: it stopped, or keeps failing."""
        return bool(self.stopped_reason) or self.failures >= FLUSH_GIVE_UP

    def settled(self, target: int) -> Tuple[bool, bool]:
        """(done waiting, delivered) for a flush up to ``target``."""
        if self.acked >= target:
            return True, True
        return self.gave_up, False

    def flush_asked(self) -> None:
        self.failures = 0
        self.wake.set()

    def failed(self, backoff: Backoff, event: Optional[threading.Event] = None) -> None:
        """A send failed and will be retried: wait the backoff (briefly while a flush waits), or
        what the destination asked for (``retry_after``), on ``event`` (default: ours)."""
        self.stats.retries += 1
        with self.control.progress:
            self.failures += 1
            self.control.progress.notify_all()
        delay = backoff.next_delay()
        asked = self.retry_after()
        if asked is not None:
            delay = asked
        elif self.control.flushing:
            delay = min(delay, FLUSH_RETRY)
        self.control.sleep(event or self.wake, delay)

    # -- the thread --------------------------------------------------------------------------

    def run(self) -> None:
        if not self.control.own(self.wake, self.stats):
            return
        if self.cursor is None:  # a restarted loop keeps its position
            self.cursor = spool.Cursor(self.record_path, self.cursor_suffix)
        client = self.open_client()
        try:
            self._send(client, self.cursor)
        finally:
            client.close()

    def _send(self, client: Any, cursor: spool.Cursor) -> None:
        """Batches from the record, in file order; the cursor moves once every request of a
        batch (more than one only for a batch too large for one body) is answered."""
        backoff = Backoff()
        self.stats.state = "running"
        lines: List[Tuple[int, Optional[bytes]]] = []  # read ahead, not yet acknowledged
        # (≤ READ_BYTES; None: a line over spool.MAX_LINE, skipped)
        bodies: List[bytes] = []  # requests of the current batch not acknowledged yet
        used = rows = 0
        dropped_as = ""  # a request of the current batch was refused: its rows count as dropped
        while not self.control.stop and not self.stopped_reason:
            if not bodies:
                if len(lines) < self.config.batch_size:
                    lines += spool.read_lines(self.record_path,
                                              lines[-1][0] if lines else cursor.offset,
                                              READ_BYTES)
                if not lines or not self._due(lines, cursor):
                    cursor.save()  # a save that failed (disk full) is retried while idle
                    self.control.notify()
                    self.control.sleep(self.wake, 0.2)
                    continue
                batch, used, skipped = self._batch(lines)
                for reason, count in skipped.items():
                    self.stats.dropped[reason] += count
                rows, dropped_as = len(batch[2]), ""
                if batch[2]:
                    bodies = self.encode(batch, time.time())
            action, reason = self.post(client, bodies[0]) if bodies else (OK, "")
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
                self.control.on_sent()
            elif action == STOP:
                self.stopped(reason)
            elif action == RETRY:
                self.failed(backoff)

    def _due(self, lines: List[Tuple[int, Optional[bytes]]], cursor: spool.Cursor) -> bool:
        """Send now when a batch is full, a flush waits, or the oldest row waited long enough."""
        if len(lines) >= self.config.batch_size or self.control.flush_to > cursor.offset:
            return True
        try:
            oldest = json.loads(lines[0][1] or b"").get("timestamp", 0)
        except (ValueError, AttributeError):  # unreadable or skipped: pass it on now
            return True
        return not isinstance(oldest, (int, float)) \
            or time.time() - oldest >= self.config.flush_interval

    def _batch(self, lines: List[Tuple[int, Optional[bytes]]]) -> Tuple[Batch, int, Dict[str, int]]:
        """The next request: consecutive rows of one writer and run, at most batch_size steps
        and BATCH_BYTES; returns ((writer, run id, entries), lines used, skipped rows by reason).
        Rows of a writer that does not report (another rank sharing the file) are passed over."""
        writer = self.untagged
        run_id = ""
        rows: List[Tuple[str, Dict[str, Any]]] = []
        skipped: Dict[str, int] = collections.Counter()
        used = size = 0
        for end, line in lines:
            if line is None:
                skipped[TOO_LONG] += 1
                log.warn(f"skipped a line of the record {self.record_path} ending at byte {end}: "
                         f"longer than the reader's {spool.MAX_LINE >> 20} MiB ceiling; it is "
                         "never sent, the rows after it are (counted in the status file)",
                         key="record-line-too-long")
                used += 1
                continue
            try:
                row = json.loads(line)
                if row.get(spool.AMENDMENT):  # folded by readers of the record, never sent
                    used += 1
                    continue
                row_run, tag = row["run_id"], row.get("who") or ""
                row_writer = self.writers.get(tag) if tag else self.untagged
                if row_writer is None or not row_writer.report:  # its writer does not report
                    if row_writer is None:
                        skipped["record line of an unknown writer"] += 1
                    used += 1
                    continue
                entry, why = self.entry(row, row_writer)
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
        return (writer, run_id, [entry for _, entry in wire.merge_steps(rows)]), used, skipped
