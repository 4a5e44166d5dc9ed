"""Every destination of a record's rows is a ``Sink``; this module holds the shape and the
machinery they share.

``Sink`` is ``lifecycle.Part`` (start, flush and close to absolute ``time.monotonic()``
deadlines, abandon after fork) plus ``status`` (its part of the status file) and ``add_run``.
A sink is built by its registry entry (``report.sinks``) from a ``Context``: what the record
gives every sink.  The ``Reporter`` only starts, flushes and closes the sinks it was given.

``RowsSink`` is the shared body of a sink that sends rows: one thread tails the record from its
acknowledged offset (a ``spool.Cursor`` named after the sink: ``recordline.cursor_suffix``),
groups consecutive rows of one writer and run into a batch (at most ``batch_size`` steps, in the
pod agent ``pace.GROWN_BATCH``, and ``_BATCH_BYTES`` of record), turns the batch into request
bodies (the subclass: ``encode``), posts them (the subclass: ``post``, which returns
``policy``'s action) and moves its cursor only once every body of the batch was acknowledged or
dropped.  Memory holds one batch however long
the destination is away; a restarted process resumes from the cursor.  Rows of a writer that
does not report (``owner``) are passed over, so every sink exports each row once per job, not
once per rank.  Lines are parsed by ``recordline`` (the oldest unsent one once, however often an
idle sink looks at it, and each line once for all the readers of the record in the process:
``recordline.shared_lines``).

Sinks of one record share a ``Control`` (the flush under way, the stop flag, the owner lock, the
decoded lines) and nothing else: each has its own thread, client (in the pod agent, the sinks of
one kind share one: ``pace``), backoff and ``Health``, so one destination being down never
delays another.
"""

from __future__ import annotations

import collections
import os
import threading
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Protocol, Tuple

from .. import guard, log, recordline
from ..config import Config
from ..lifecycle import Part
from ..recordline import UNREADABLE, Decoded, HeadCache, Line, Unreadable, cursor_suffix, shared_lines
from ..topology import Topology
from . import owner, sendable, spool
from .pace import GROWN_BATCH, LOOK, Paces
from .policy import DROP, OK, RETRY, STOP, Backoff
from .status import Stats

READ_BYTES = 2 << 20
_BATCH_BYTES = 900 << 10  # record bytes per request: the encoded body stays under 1 MiB
OWNER_POLL = 2.0
_FLUSH_RETRY = 0.5  # seconds between retries while finish/exit waits
_FLUSH_GIVE_UP = 5  # consecutive failures while a flush waits: the destination is down
_FLUSH_POLL = 0.1  # seconds a flush sleeps between looks (it is woken on progress anyway)
_LOOK = 0.2  # seconds between a sink's looks for new rows (a paced one: ``pace.LOOK``)
_STATUS_EVERY = 1.0  # seconds between two writes of the status file while rows go out
_AGENT_STATUS_EVERY = 5.0  # ... in the pod agent (a file per record: it sends every record)
_PIECE_BYTES = 64 << 10  # the pod agent reads a batch's lines in pieces of this (a longer line whole)
_SHARED_BATCH_BYTES = 256 << 10  # ... and keeps this much of a record's decoded lines for its
# other readers (``recordline.SharedLines``): a 500-step batch of 10 keys a row, and some

Batch = Tuple[owner.Writer, str, List[Dict[str, Any]]]  # writer, run id, merged entries
TOO_LONG = f"record line over the reader's {spool.MAX_LINE >> 20} MiB ceiling (skipped)"


class Sink(Part, Protocol):
    """One destination of a record (``lifecycle.Part``, plus what the reporter reports)."""

    def status(self, record_size: int) -> Dict[str, Any]:
        """Its entries of the status file (``record_size``: the record's size now)."""

    def add_run(self, facts: Any) -> None:
        """A new run began (``report.runfacts.RunFacts``): a sink that reports runs keeps it."""


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
    """What the sinks of one record share: the flush under way, the stop, the owner lock, the
    lines decoded by one of them (``recordline.SharedLines``)."""

    def __init__(self, record_path: str,
                 write_status: Callable[[float], None] = lambda every: None) -> None:
        """``write_status(every)``: the reporter writes its status file, at most once per
        ``every`` seconds (0: now); sinks call it when their cursor moved or they stopped."""
        self.owner = spool.OwnerLock(record_path)
        self.record_path = record_path
        self.write_status = write_status
        self.progress = threading.Condition()  # a sink moved, failed or stopped
        self.flush_to = 0  # a flush asks for everything up to this offset now
        self.flushing = False
        self.round = 0  # flushes begun: a sink's failures count within one
        self.stop = False
        self._woken: List[threading.Event] = []  # every sink's wake-up, set when a flush begins
        self.lines = shared_lines(record_path)

    def notify(self) -> None:
        with self.progress:
            self.progress.notify_all()

    def wake_on_flush(self, event: threading.Event) -> None:
        self._woken.append(event)

    def begin_flush(self) -> int:
        """A flush of everything in the record now: its target offset.  Every sink is woken;
        their failures count from here."""
        try:
            target = os.path.getsize(self.record_path)
        except OSError:
            target = 0
        with self.progress:
            self.flush_to = max(self.flush_to, target)
            self.flushing = True
            self.round += 1
        for event in self._woken:
            event.set()
        return target

    def end_flush(self) -> None:
        self.flushing = False

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


class Health:
    """Whether a destination answers: its consecutive failures within the current flush (a
    flush stops waiting after ``_FLUSH_GIVE_UP``) and the stop that ends sending for the process.
    One per destination: the threads that send to one endpoint share it."""

    def __init__(self, control: Control) -> None:
        self.control = control
        self.stopped_reason = ""
        self._failures = 0
        self._round = 0

    @property
    def failures(self) -> int:
        """Consecutive failures since the current flush began (0 before any)."""
        return self._failures if self._round == self.control.round else 0

    def failed(self) -> None:
        with self.control.progress:
            self._failures = self.failures + 1
            self._round = self.control.round
            self.control.progress.notify_all()

    @property
    def gave_up(self) -> bool:
        """A flush stops waiting for this destination: it stopped, or keeps failing."""
        return bool(self.stopped_reason) or self.failures >= _FLUSH_GIVE_UP


def retry_later(control: Control, health: Health, stats: Stats, backoff: Backoff,
                event: threading.Event, asked: Optional[float] = None) -> None:
    """A send failed and will be retried: wait the backoff (briefly while a flush waits), or
    ``asked``, what the destination asked for, on ``event``."""
    stats.retries += 1
    health.failed()
    delay = backoff.next_delay()
    if asked is not None:
        delay = asked
    elif control.flushing:
        delay = min(delay, _FLUSH_RETRY)
    control.sleep(event, delay)


class Context(NamedTuple):
    """What a record gives each of its sinks (a registry factory's argument)."""

    config: Config
    topology: Topology
    record_path: str
    control: Control
    writers: owner.Writers  # each line is sent under its writer's name
    untagged: owner.Writer  # ... or, untagged, under this process's (``recordline``)
    stats: Stats  # the status file's top-level counters (the sink that reports there uses them)
    inventory: Callable[[], Dict[str, Any]]  # this process's GPUs (``metrics.gpu.inventory``)
    http_transport: Any = None  # an httpx transport for every client (tests inject one)
    paces: Optional[Paces] = None  # the pod agent's pace per kind of sink (``pace``); None: none
    detections: bool = True  # the Lens sink sends the detection queue (the agent: ``PodDetections``)


class RowsSink:
    """One destination of the record's rows (a ``Sink``); subclasses say how a batch is encoded
    and posted."""

    name = "rows"  # the thread's name; the cursor's (``recordline.cursor_suffix``)

    def __init__(self, context: Context, stats: Optional[Stats] = None,
                 health: Optional[Health] = None) -> None:
        self.context = context
        self.control = context.control
        self.config = context.config
        self.record_path = context.record_path
        self.writers = context.writers
        self.untagged = context.untagged
        self.stats = stats if stats is not None else Stats()
        self.health = health if health is not None else Health(self.control)
        self.cursor: Optional[spool.Cursor] = None
        self.wake = threading.Event()
        self.control.wake_on_flush(self.wake)
        self._threads: List[threading.Thread] = []
        self.control.lines.readers += 1
        self._head = HeadCache(self._decode)  # the last line decoded: the oldest unsent one
        # (or the first of the next batch) is parsed once, however often an idle sink looks
        self.pace = context.paces.get(self.name) if context.paces is not None else None
        self.batch_limit = self.config.batch_size if self.pace is None else GROWN_BATCH
        # steps per request: a paced sink's batch grows while it waits for its turn (``pace``)
        if self.pace is not None:  # its batch is read seconds after /metrics read the lines
            self.control.lines.keep(_SHARED_BATCH_BYTES)

    # -- what a destination defines ----------------------------------------------------------

    @property
    def where(self) -> str:
        """The destination in words, for what is said about it ("reporting to ...")."""
        raise NotImplementedError

    @property
    def address(self) -> str:
        """The destination's URL, for the status file."""
        raise NotImplementedError

    def open_client(self) -> Any:
        raise NotImplementedError

    def entry(self, row: Line, writer: owner.Writer) -> Tuple[Optional[Dict[str, Any]], str]:
        """One record row as ``{"step", "timestamp", "data"}`` (``sendable.log_entry``), or
        (None, why) when it has nothing to send."""
        raise NotImplementedError

    def encode(self, batch: Batch, now: float) -> List[bytes]:
        raise NotImplementedError

    def read_line(self, raw: Optional[bytes]) -> Decoded:
        """One line of the file this sink tails: a record line (``recordline.decode``); a sink
        of another line format (the agent's pulse export, ``otlp.pulse``) reads its own."""
        return recordline.decode(raw)

    def _decode(self, raw: Optional[bytes]) -> Decoded:
        """``read_line``, once for all the readers of the record (``recordline.SharedLines``)."""
        return self.control.lines.decode(raw, self.read_line)

    def post(self, client: Any, body: bytes) -> Tuple[str, str]:
        """(``policy`` action, reason) for one body."""
        raise NotImplementedError

    def retry_after(self) -> Optional[float]:
        """Seconds the destination asked us to wait before the next try, if it did."""
        return None

    def status(self, record_size: int) -> Dict[str, Any]:
        """Under the sink's name: endpoint, acknowledged offset, backlog, counters."""
        return {self.name: {"endpoint": self.address, "acked_offset": self.acked,
                            "backlog_bytes": max(0, record_size - self.acked),
                            **self.stats.as_dict()}}

    def stopped(self, reason: str) -> None:
        """Sending stops for good in this process (the subclass says so once)."""
        self.health.stopped_reason = reason
        self.stats.state = f"stopped: {reason}"
        self.control.notify()

    def add_run(self, facts: Any) -> None:
        """Rows sinks send rows only."""

    # -- the lifecycle (``lifecycle.Part``) ----------------------------------------------------

    def start(self) -> None:
        self._threads.append(guard.start_thread(self.name, self.run))

    @property
    def started(self) -> bool:
        return bool(self._threads)

    def flush(self, deadline: float) -> bool:
        """Wait until every row now in the record is acknowledged (True), or until ``deadline``,
        or until the destination keeps failing (the rows stay on disk for later).  Within a
        reporter's flush (``Control.begin_flush``) it waits for that flush's target."""
        control = self.control
        alone = not control.flushing
        if alone:
            control.begin_flush()
        try:
            return self.started and self._wait(control.flush_to, deadline)
        finally:
            if alone:
                control.end_flush()

    def _wait(self, target: int, deadline: float) -> bool:
        control = self.control
        with control.progress:
            while True:
                if not self.busy_without_lock() and not control.owner.try_acquire():
                    return False  # our rows are on disk; the owning process sends them
                settled, delivered = self.settled(target)
                if delivered:
                    return True
                if settled:
                    return False
                if deadline - time.monotonic() <= 0:
                    self._unanswered(target)
                    return False
                control.progress.wait(min(deadline - time.monotonic(), _FLUSH_POLL))

    def busy_without_lock(self) -> bool:
        """Work a flush waits for even in a process that does not send the record."""
        return False

    def _unanswered(self, target: int) -> None:
        """The budget ran out while the sink still waited for an answer (a server that accepts
        and never answers fails nothing, so nothing else would say it): once, and its
        ``last_error`` in the status file."""
        if self.health.failures or self.stats.last_error or self.settled(target)[1]:
            return  # a failing sink has said why; a delivered one has nothing to say
        self.stats.last_error = "no answer within the process end's budget"
        log.warn(f"{self.where}: the process end's budget ({self.config.shutdown_timeout:g} s) "
                 "ran out waiting for an answer; the rows not acknowledged stay in the local "
                 "record", key=f"unanswered-{self.name}")

    def close(self, deadline: float) -> None:
        """Stop the thread and keep the position (the reporter flushed first, to ``deadline``)."""
        self.wake.set()
        if not self.health.stopped_reason:
            self.stats.state = ("exited, all delivered" if self.settled(self.control.flush_to)[1]
                                else "exited with a backlog")
        if self.cursor is not None:
            self.cursor.save()

    def abandon_after_fork(self) -> None:
        """In a forked child: the thread is gone and the parent keeps sending this record."""
        self._threads = []

    # -- the flush's view ----------------------------------------------------------------------

    @property
    def acked(self) -> int:
        return self.cursor.offset if self.cursor is not None else 0

    def settled(self, target: int) -> Tuple[bool, bool]:
        """(done waiting, delivered) for a flush up to ``target``."""
        if self.acked >= target:
            return True, True
        return self.health.gave_up, False

    def failed(self, backoff: Backoff) -> None:
        """A send failed and will be retried (``retry_later``)."""
        retry_later(self.control, self.health, self.stats, backoff, self.wake, self.retry_after())

    # -- the thread --------------------------------------------------------------------------

    def run(self) -> None:
        if not self.control.own(self.wake, self.stats):
            return
        if self.cursor is None:  # a restarted loop keeps its position
            self.cursor = spool.Cursor(self.record_path, cursor_suffix(self.name))
        if self.pace is not None:  # the agent: one client for the sinks of this kind
            self._send(self.pace.client(self.open_client), self.cursor)
            return
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
        while not self.control.stop and not self.health.stopped_reason:
            if not bodies:
                if len(lines) < self.batch_limit:
                    lines += self._read_ahead(lines[-1][0] if lines else cursor.offset, len(lines))
                if not lines or not self._due(lines, cursor):
                    cursor.save()  # a save that failed (disk full) is retried while idle
                    self.control.notify()
                    self.control.sleep(self.wake, _LOOK if self.pace is None else LOOK)
                    continue
                if not self._turn(lines):
                    continue  # stopping
                if self.pace is not None and len(lines) < self.batch_limit:
                    lines += self._read_ahead(lines[-1][0], len(lines))
                    # what arrived while it waited for its turn: the batch grows
                batch, used, skipped = self._batch(lines)
                for reason, count in skipped.items():
                    self.stats.dropped[reason] += count
                rows, dropped_as = len(batch[2]), ""
                if batch[2]:
                    bodies = self.encode(batch, time.time())
            if bodies and not self._turn(lines):
                continue  # stopping
            action, reason = self.post(client, bodies[0]) if bodies else (OK, "")
            if self.pace is not None:
                self.pace.give(self)
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
                self.control.write_status(_STATUS_EVERY if self.pace is None else _AGENT_STATUS_EVERY)
            elif action == STOP:
                self.stopped(reason)
            elif action == RETRY:
                self.failed(backoff)

    def _read_ahead(self, offset: int, have: int) -> List[Tuple[int, Optional[bytes]]]:
        """The record's next complete lines from ``offset``: up to ``READ_BYTES`` in a trainer;
        in the pod agent, whose sinks are many (one per record and destination), one batch at
        most, so its memory is one batch per sink whatever the backlog."""
        try:
            if os.stat(self.record_path).st_size <= offset:
                return []  # nothing new: an idle sink's look costs one stat, not a read
        except OSError:
            return []
        if self.pace is None:
            return spool.read_lines(self.record_path, offset, READ_BYTES)
        want, start = self.batch_limit - have, offset
        more: List[Tuple[int, Optional[bytes]]] = []
        while len(more) < want and offset - start < _BATCH_BYTES:  # in pieces: no more is read
            piece = spool.read_lines(self.record_path, offset, _PIECE_BYTES)  # than is kept
            if not piece:
                break
            more += piece[:want - len(more)]
            offset = more[-1][0]
        return more

    def _turn(self, lines: List[Tuple[int, Optional[bytes]]]) -> bool:
        """Wait for this sink's turn under the pod's pace (the agent's sinks; others go at
        once); False when sending stops meanwhile."""
        return self.pace is None or self.pace.take(
            self, lambda: self.control.stop or bool(self.health.stopped_reason),
            full=lambda: self._full(lines))

    def _full(self, lines: List[Tuple[int, Optional[bytes]]]) -> bool:
        """A full batch (``batch_limit`` lines) in hand or, estimated from the length of the
        lines in hand, waiting in the record: a paced sink reads the rest only at its turn, and a
        batch that filled while it waited must not wait for the interval too."""
        if len(lines) >= self.batch_limit:
            return True
        if not lines or self.cursor is None:
            return False
        try:
            unread = os.stat(self.record_path).st_size - lines[-1][0]
        except OSError:
            return False
        mean = max(1.0, (lines[-1][0] - self.cursor.offset) / len(lines))
        return len(lines) + unread / mean >= self.batch_limit

    def _due(self, lines: List[Tuple[int, Optional[bytes]]], cursor: spool.Cursor) -> bool:
        """Send now when a batch is full, a flush waits, or the oldest row waited long enough."""
        if len(lines) >= self.config.batch_size or self.control.flush_to > cursor.offset:
            return True
        head = self._head.decode(*lines[0])  # parsed once however often an idle sink looks
        if isinstance(head, Unreadable):  # unreadable or skipped: pass it on now
            return True
        oldest = head.timestamp
        return not isinstance(oldest, (int, float)) \
            or time.time() - oldest >= self.config.flush_interval

    def _batch(self, lines: List[Tuple[int, Optional[bytes]]]) -> Tuple[Batch, int, Dict[str, int]]:
        """The next request: consecutive rows of one writer and run, at most ``batch_limit``
        steps and _BATCH_BYTES; returns ((writer, run id, entries), lines used, skipped rows by reason).
        Rows of a writer that does not report (another rank sharing the file) are passed over."""
        writer = self.untagged
        run_id = ""
        rows: List[Tuple[str, Dict[str, Any]]] = []
        skipped: Dict[str, int] = collections.Counter()
        used = size = 0
        decode, writers, entry_of = self._decode, self.writers, self.entry
        who: Optional[str] = None  # the last line's tag, and its writer:
        row_writer: Optional[owner.Writer] = self.untagged
        for end, line in lines:
            if line is None:
                skipped[TOO_LONG] += 1
                log.warn(f"skipped a line of the record {self.record_path} ending at byte {end}: "
                         f"longer than the reader's {spool.MAX_LINE >> 20} MiB ceiling; it is "
                         "never sent, the rows after it are (counted in the status file)",
                         key="record-line-too-long")
                used += 1
                continue
            # the first line was parsed by ``_due`` (the head); the others once each, here
            row = self._head.decode(end, line) if not used else decode(line)
            if isinstance(row, Unreadable):
                skipped[row.reason] += 1
                used += 1
                continue
            if row.amends:  # folded by readers of the record, never sent
                used += 1
                continue
            row_run = row.run_id
            if row.who != who:
                who = row.who
                row_writer = writers.get(who) if who else self.untagged
            if row_writer is None or not row_writer.report:  # its writer does not report
                if row_writer is None:
                    skipped["record line of an unknown writer"] += 1
                used += 1
                continue
            try:
                entry, why = entry_of(row, row_writer)
            except (ValueError, TypeError, AttributeError):
                skipped[UNREADABLE.reason] += 1
                used += 1
                continue
            if run_id and (row_run != run_id or row_writer is not writer):
                self._head.keep(end, line, row)  # the line it stops at: the next head
                break
            if entry is not None:
                if rows and (len(rows) >= self.batch_limit or size + len(line) > _BATCH_BYTES) \
                        and not (rows[-1][0] == row_run and rows[-1][1]["step"] == entry["step"]):
                    self._head.keep(end, line, row)
                    break
                writer, run_id = row_writer, row_run
                rows.append((row_run, entry))
                size += len(line)
            else:
                skipped[f"row not sendable: {why}"] += 1
            used += 1
        return (writer, run_id, [entry for _, entry in sendable.merge_steps(rows)]), used, skipped
