"""The local record: one JSONL file per node and rank, written by a background thread.

The training thread only appends one tuple (``Call``) per ``log`` call to a deque (the frozen values, the
step and commit arguments, the time, the system sample of that moment): no lock, no I/O, so a
signal handler that interrupts it can never wait on it.  The writer thread looks at the queue
every ``POLL_SECONDS`` and drains it every ``FLUSH_SECONDS`` (sooner when it is long or a flush
asks): it merges each call's sample into its values, replays the calls through each run's
``RunRows`` (wandb's step rules), encodes the rows, and appends them with one ``write`` to a file
opened with ``O_APPEND`` under an exclusive ``flock`` taken without waiting: lines of several
processes sharing a file never interleave, a process holding the lock never blocks training, and
a row reaches the kernel (and survives SIGKILL) well within a second.  Keeping that work off the
training thread matters more than its size suggests: right after a wandb call every cache is
cold, and each line of our code touched there costs several times its warm price.  ``flush`` and
``close`` (finish, exit, SIGTERM) ask the writer and wait for it within a deadline.

For a followed run (``capture.history``) the writer also reads wandb's transaction log, after
the queued calls of each round, and writes what it shows: a tensorboard run's rows, or the
amendments of rows already written from calls (``capture.reconcile``).
"""

from __future__ import annotations

import collections
import fcntl
import math
import os
import threading
import time
from typing import Any, Deque, Dict, List, NamedTuple, Optional, Tuple, Union

from .. import guard, log
from ..paths import close_quietly
from ..report.spool import AMENDMENT
from ..values import STRICT_JSON, freeze
from .history import Follower
from .reconcile import UNSET, Amendment, Reconciler
from .rows import APPROX_KEY, Row, RunRows

ENABLED_KEY = "_primus_lens_enabled"  # in every row of the record, never sent to wandb
FLUSH_SECONDS = 0.5  # a row reaches the kernel within this (the promise is: within 1 s)
POLL_SECONDS = 0.05  # how often the writer looks at the queue and at flush requests
WAKE_AT = 1000  # queued calls that make the writer drain before FLUSH_SECONDS is up
MAX_QUEUED = 10_000  # queued calls beyond which the logging thread waits or calls lose values,
MAX_QUEUED_VALUES = 1_000_000  # ... or top-level values in them (a row may hold 60,000 keys)
ROUND_BYTES = 16 << 20  # encoded bytes the writer takes from the queue in one round
BACKPRESSURE_MAX = 1.0  # the longest one ``log`` call waits for a writer that makes progress
HARD_LIMIT = 200_000  # queued calls (mostly bare steps) beyond which calls are not queued
LOG_IDLE = 1.0  # seconds a run's end waits for wandb's log to grow before it stops waiting
SPILL_AFTER = 0.5  # seconds a closing writer retries a record that cannot take its rows (locked,
# disk full) before it writes them to the fallback record instead


class Follow(NamedTuple):
    """In place of a row: from here on, read the run's rows from wandb's transaction log."""

    path: str
    record_class: Any  # wandb's protobuf ``Record``


# A queued ``log`` call, the end of a run, or the switch to wandb's transaction log: made on the
# training thread, read by the writer thread, never changed in between.  A plain tuple: it is
# built on every ``log`` call, where a NamedTuple costs measurably more
# (bench/log_overhead.py); its fields, by index:
ROWS = 0  # RunRows: the run's step rules
DATA = 1  # the frozen row (a dict); None: the run finished; a ``Follow``
STEP = 2  # Optional[int], as given to ``log``
COMMIT = 3  # as given to ``log``
TIMESTAMP = 4  # float: ``time.time()`` of the call
SAMPLE = 5  # the system sample current at the call, merged in by the writer
Call = Tuple[RunRows, Union[Dict[str, Any], Follow, None], Optional[int], Any, float,
             Dict[str, Any]]
NO_SAMPLE: Dict[str, Any] = {}  # the sample of a call made while nothing samples (never mutated)


def end_of_run(rows: RunRows) -> Call:
    """The call that makes the writer turn a run's pending row into its last one (or, for a
    followed run, read wandb's transaction log to its end)."""
    return (rows, None, None, None, 0.0, NO_SAMPLE)


def follow_log(rows: RunRows, path: str, record_class: Any) -> Call:
    """The call after which the writer takes the run's rows from wandb's transaction log."""
    return (rows, Follow(path, record_class), None, None, 0.0, NO_SAMPLE)


def encode(run_id: str, step: int, timestamp: float, data: Dict[str, Any], who: str = "") -> bytes:
    """One line: ``{"timestamp", "step", "run_id", "who", "data"}``, ``data`` marked as ours;
    ``who`` names the writer (``owner.Writer``), so a sender never relabels another's rows.  Rows
    of plain values arrive unfrozen (a NaN still a float): those get their strict-JSON spelling."""
    data[ENABLED_KEY] = True
    line = {"timestamp": timestamp, "step": step, "run_id": run_id, "who": who, "data": data}
    try:
        text = STRICT_JSON.encode(line)
    except ValueError:  # a non-finite float
        line["data"] = freeze(data)
        text = STRICT_JSON.encode(line)
    return text.encode("ascii") + b"\n"


def encode_amendment(run_id: str, change: Amendment, who: str = "") -> bytes:
    """One amendment line (``capture.reconcile``): wandb's changes to the row of its step."""
    line: Dict[str, Any] = {"timestamp": change.timestamp, "step": change.step, "run_id": run_id,
                            "who": who, AMENDMENT: 1, "data": change.changes}
    if change.unset:
        line[UNSET] = change.unset
    return STRICT_JSON.encode(line).encode("ascii") + b"\n"


def open_append(path: str) -> int:
    """Read-write, so that a writer can look at the last byte before appending (a torn line)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)


# A queued call whose values could not be kept (the writer was stalled): it still moves the run's
# step as wandb did, so the rows after it keep their true steps.  Never mutated (no row is made
# from an empty call).
DROPPED: Dict[str, Any] = {}


class ExitCount:
    """The rows a closing writer could not put in its record: ``spilled`` went to the fallback
    record ``spill_path`` instead, ``lost`` went nowhere (wandb has them); ``reason`` is why the
    record could not take them.  ``say`` prints it once; the session copies it into the status
    file (``as_dict``)."""

    def __init__(self) -> None:
        self.spilled = 0
        self.lost = 0
        self.spill_path = ""
        self.reason = ""

    def as_dict(self) -> Dict[str, Any]:
        return {"rows_spilled_at_exit": self.spilled, "rows_lost_at_exit": self.lost,
                "spill_path": self.spill_path, "reason": self.reason}

    def say(self, path: str) -> None:
        if self.spilled:
            log.warn(f"the local record {path} could not take its last {self.spilled} rows at "
                     f"exit ({self.reason}); they are in {self.spill_path} instead",
                     key="record-spilled")
        if self.lost:
            log.warn(f"{self.lost} logged rows are not in the local record {path} at exit "
                     f"({self.reason}) and no fallback took them; wandb has them",
                     key="record-lost-at-exit")


class RecordWriter:
    """Appends rows to ``path``; if it cannot be opened, one warning and ``fallback`` is tried.

    Only the writer thread drains the queue, encodes and writes; ``flush`` and ``close`` ask it to
    and wait for it within a deadline.  A write that cannot happen now (the file locked by another
    process, the disk full) is kept and retried; meanwhile the queue grows up to ``MAX_QUEUED``
    calls (or ``MAX_QUEUED_VALUES`` values), after which calls keep only their step (``dropped``
    counts them, one warning says so) and, past ``HARD_LIMIT``, are not queued at all.
    """

    def __init__(self, path: str, fallback: Optional[str] = None) -> None:
        self.path = path
        self.dropped = 0  # logged calls whose values are not in the record
        self.exit = ExitCount()  # what a closing writer could not put in the record
        self._spill_to = ""  # where rows go that the record cannot take at close ("": nowhere)
        self._spill_at = math.inf  # ``time.monotonic()`` from which a closing writer spills
        self._spilling = False  # the writer writes to ``exit.spill_path`` now
        self._given_up = False  # ``close`` stopped waiting: the writer must write nothing more
        self._fd = -1
        self._queue: Deque[Call] = collections.deque()
        self._unwritten = b""  # encoded lines a write could not place yet
        self._values_in = 0  # top-level values queued by the logging threads ...
        self._values_out = 0  # ... and taken by the writer
        self._stalled = ""  # why the last write failed ("" while writes succeed)
        self._said_dropped = 0
        self._asked = 0  # flush requests issued ...
        self._done = 0  # ... and the newest one whose calls are all in the file
        self._tickets = threading.Lock()  # flush callers only, never the logging thread
        self._wake = threading.Event()
        self._stop = False
        self._closed = False  # the writer thread wrote everything after ``close`` and ended
        self._thread: Optional[threading.Thread] = None
        self._followed: List[RunRows] = []  # runs whose rows come from wandb's log (writer's)
        self._open(fallback)
        if self.is_open:
            self._thread = guard.start_thread("record", self._run)

    @property
    def is_open(self) -> bool:
        return self._fd >= 0

    @property
    def can_spill(self) -> bool:
        """Whether rows the record cannot take at close have another place to go."""
        return bool(self._spill_to)

    @property
    def stalled(self) -> str:
        """Why rows cannot reach the file right now; "" when the writer keeps up."""
        return self._stalled

    def _open(self, fallback: Optional[str]) -> None:
        for candidate in (self.path, fallback):
            if not candidate:
                continue
            try:
                self._fd = open_append(candidate)
            except OSError as exc:
                log.warn(f"cannot write the local record at {candidate} ({exc.strerror or exc})"
                         + ("; trying " + fallback if fallback and candidate != fallback else ""))
                continue
            self.path = candidate
            self._spill_to = fallback if fallback and candidate != fallback else ""
            return
        log.warn("local record disabled: no writable location; training continues")

    # -- the logging thread ------------------------------------------------------------------

    def append(self, call: Call) -> None:
        """Queue one ``log`` call (or, with data None, the end of a run).  Takes no lock and does
        no I/O: the writer thread notices a long queue by itself within ``POLL_SECONDS``."""
        if self._fd < 0:
            return
        data = call[DATA]
        if type(data) is dict:
            if len(self._queue) >= MAX_QUEUED \
                    or self._values_in - self._values_out >= MAX_QUEUED_VALUES:
                crowded = self._crowded(call)
                if crowded is None:
                    return
                call = crowded
                data = call[DATA]
            self._values_in += len(data)
        self._queue.append(call)

    def _full(self) -> bool:
        return len(self._queue) >= MAX_QUEUED \
            or self._values_in - self._values_out >= MAX_QUEUED_VALUES

    def _crowded(self, call: Call) -> Optional[Call]:
        """The queue is full.  A writer that makes progress is waited for (logging faster than
        rows can be encoded: back-pressure, at most ``BACKPRESSURE_MAX`` per call); a stalled
        one is not: the call keeps only its step, or is not queued past ``HARD_LIMIT``."""
        if not self._stalled and not self._stop:  # nobody drains a closed writer
            guard.wait_until(lambda: not self._full() or bool(self._stalled),
                             time.monotonic() + BACKPRESSURE_MAX)
            if not self._full():
                return call
            self._stalled = self._stalled or "the writer makes no progress"
        self.dropped += 1
        if len(self._queue) >= HARD_LIMIT:
            return None
        return (call[ROWS], DROPPED, call[STEP], call[COMMIT], call[TIMESTAMP], DROPPED)

    # -- flush and close, from finish, exit and SIGTERM (never from the logging thread) ------

    def flush(self, deadline: float) -> bool:
        """Ask the writer for everything queued so far; True once it is in the file, False if
        ``deadline`` (``time.monotonic()``) passed first."""
        if self._thread is None:
            return not self._queue
        with self._tickets:
            self._asked += 1
            ticket = self._asked
        self._wake.set()
        return guard.wait_until(lambda: self._done >= ticket, deadline)

    def close(self, deadline: float) -> bool:
        """Write everything, sync the file and stop the writer, waiting until ``deadline``.

        A record that cannot take the rows (locked past our end, a disk that does not free) is
        retried for ``SPILL_AFTER`` (at most a third of the time left); then the rows go to the
        fallback record.  What neither took by ``deadline`` is counted in ``exit``, and one
        line says what happened."""
        self._stop = True
        if self._thread is None:
            return not self._queue
        now = time.monotonic()
        self._spill_at = now + min(SPILL_AFTER, max(0.0, deadline - now) / 3)
        self._wake.set()
        closed = guard.wait_until(lambda: self._closed, deadline)
        if not closed:
            self._given_up = True
            self.exit.lost = self._unwritten.count(b"\n") + self._queued_rows()
            self.exit.reason = self.exit.reason or self._stalled or "the writer did not finish"
        self.exit.say(self.path)
        return closed

    def _queued_rows(self) -> int:
        """The queued calls that would have made rows (those that kept their values)."""
        for _ in range(3):
            try:
                calls = list(self._queue)
            except RuntimeError:  # the writer took one meanwhile: it is stopping, look again
                continue
            return sum(1 for call in calls
                       if type(call[DATA]) is dict and call[DATA] is not DROPPED)
        return len(self._queue)

    def abandon_after_fork(self) -> None:
        """In a forked child: the queued rows are the parent's to write; drop them and the fd."""
        self._queue = collections.deque()
        self._unwritten = b""
        self._values_in = self._values_out = 0
        for rows in self._followed:
            rows.follower.close()
        self._followed = []
        self._tickets = threading.Lock()
        self._wake = threading.Event()
        self._thread = None
        if self._fd >= 0:
            close_quietly(self._fd)
            self._fd = -1

    # -- the writer thread -------------------------------------------------------------------

    def _run(self) -> None:
        last = time.monotonic()
        while not self._closed and not self._given_up:
            self._wake.wait(POLL_SECONDS)
            self._wake.clear()
            ticket, now = self._asked, time.monotonic()
            if (self._unwritten or self._done < ticket or self._stop
                    or len(self._queue) >= WAKE_AT or now - last >= FLUSH_SECONDS):
                last = now
                if self._write_queued():
                    self._done = max(self._done, ticket)
                    if self._stop and not self._queue:
                        self._sync()
                        self._closed = True
                elif self._stop and time.monotonic() >= self._spill_at:
                    self._spill()
            if self.dropped > self._said_dropped:
                self._said_dropped = self.dropped
                log.warn(f"the local record {self.path} fell behind ({self._stalled or 'stalled'});"
                         f" {self.dropped} logged rows are not in it (wandb has them)",
                         key="record-dropped")

    def _write_queued(self) -> bool:
        """Write what an earlier write could not, then the calls queued now, in rounds of at
        most ``MAX_QUEUED`` calls and about ``ROUND_BYTES`` (memory holds one round's lines at
        most); True when all is written.  Calls queued meanwhile wait for the next time."""
        if self._unwritten and not self._write():
            return False
        left = len(self._queue)
        while left > 0:
            self._unwritten, taken = self._encode_queued(min(left, MAX_QUEUED))
            left -= taken
            if self._unwritten and not self._write():
                return False
        if self._followed:  # after the calls: a step the log shows has its call's row already
            self._unwritten = b"".join([self._read_log(rows) for rows in list(self._followed)])
            if self._unwritten and not self._write():
                return False
        return True

    def _encode_queued(self, most: int) -> Tuple[bytes, int]:
        """Record lines of up to ``most`` queued calls (they are there: only this thread takes
        from the queue), stopping after ``ROUND_BYTES``; returns them and the calls taken."""
        chunks = []
        size = taken = 0
        queue = self._queue
        while taken < most and size < ROUND_BYTES:
            rows, data, step, commit, timestamp, sample = queue.popleft()  # ``Call``'s order
            taken += 1
            try:
                if data is None:
                    chunks.append(self._last_lines(rows))
                elif type(data) is Follow:
                    self._follow(rows, data)
                    continue
                else:  # the user's keys win over the system figures
                    self._values_out += len(data)
                    done = rows.log({**sample, **data} if sample else data, step, commit, timestamp)
                    chunks.append(self._call_lines(rows, done))
                size += len(chunks[-1])
            except Exception as exc:  # one odd row must not cost the others
                self.dropped += 1
                log.warn(f"a logged row could not be written to the local record "
                         f"({type(exc).__name__}: {exc}); it is left out", key="record-unencodable")
        return b"".join(chunks), taken

    def _line(self, rows: RunRows, row: Row) -> bytes:
        if rows.approx:
            row.data[APPROX_KEY] = 1
        return encode(rows.run_id, row.step, row.timestamp, row.data, rows.who)

    def _call_lines(self, rows: RunRows, done: List[Row]) -> bytes:
        """Lines of the rows a run's calls made; a followed run's are checked against what its
        log already wrote (``reconcile``)."""
        reconciler = rows.reconciler
        return b"".join([self._line(rows, row) for row in done
                         if reconciler is None or reconciler.early_row(row)])

    def _follow(self, rows: RunRows, request: Follow) -> None:
        """The calls before this one made the run's rows so far; wandb's log has the rest.  A run
        whose calls still carry wandb's steps keeps making rows from them, written at once, and
        the log amends them (``reconcile``)."""
        if rows.follower is None and not rows.finished:
            rows.follow(Follower(request.path, request.record_class, rows.step),
                        Reconciler() if rows.queue_calls else None)
            self._followed.append(rows)

    def _read_log(self, rows: RunRows) -> bytes:
        """Lines of a followed run from what its log shows now: rows and amendments."""
        follower = rows.follower
        try:
            done = follower.poll()
        except Exception as exc:  # never seen: the log is given up, as a lost one
            done = []
            follower.log.lost = f"{type(exc).__name__}: {exc}"
        reconciler, chunks = rows.reconciler, []
        for row in done:
            out = row if reconciler is None else reconciler.log_row(row, rows.step)
            if type(out) is Amendment:
                chunks.append(encode_amendment(rows.run_id, out, rows.who))
            elif out is not None:
                chunks.append(self._line(rows, out))
        if follower.lost:
            self._unfollow(rows)
        return b"".join(chunks)

    def _unfollow(self, rows: RunRows) -> None:
        """The run's log cannot be followed: its rows come from its calls from here on.  A run
        whose calls carry wandb's steps loses only what wandb adds; a tensorboard run's calls
        are queued again, with steps from the last one the log showed, marked approximate."""
        follower = rows.follower
        follower.close()
        rows.follower = rows.reconciler = None
        self._followed.remove(rows)
        if not rows.queue_calls:
            rows.step = max(rows.step, follower.last_step + 1)
            rows.approx = "its transaction log was lost"
            rows.queue_calls = True  # read by the training thread's next call
        log.warn(f"cannot follow wandb's transaction log {follower.log.path} of run "
                 f"{rows.run_id} ({follower.lost}); from here on its rows come from its log "
                 + ("calls, with wandb's steps but without what wandb adds (a step metric's "
                    "value, watch's histograms)" if not rows.approx else
                    "calls, their steps marked approximate (_primus_step_approx)"),
                 key=f"follow-{rows.run_id}")

    def _last_lines(self, rows: RunRows) -> bytes:
        """The run ended: its pending row, and for a followed run what is left in wandb's log.
        The log is waited for until its exit record, ``rows.log_end_by`` or ``LOG_IDLE``
        without growth, whichever comes first: a log that is lost or stopped growing is not
        waited for, and the calls' rows are in the record already."""
        chunks = []
        if rows.followed and not rows.finished:
            start, polls = time.monotonic(), 0
            if rows.follower is not None:
                chunks.append(self._read_log(rows))
            while rows.follower is not None and not rows.follower.ended \
                    and time.monotonic() < rows.log_end_by \
                    and rows.follower.idle_since(start) < LOG_IDLE:
                time.sleep(POLL_SECONDS)  # wandb-core writes its last records a moment later
                polls += 1
                chunks.append(self._read_log(rows))
            follower = rows.follower
            log.debug("followed_run_end", run_id=rows.run_id, polls=polls,
                      ended=follower is not None and follower.ended)
            if follower is not None:
                follower.close()
                self._followed.remove(rows)
                rows.follower = None
        chunks.append(self._call_lines(rows, rows.finish()))
        rows.reconciler = None
        return b"".join(chunks)

    def _spill(self) -> None:
        """The process ends and the record cannot take its last rows: from now on they go to the
        fallback record (once; the next rounds write them there)."""
        self._spill_at = math.inf
        self.exit.reason = self._stalled
        if not self._spill_to:
            return
        try:
            fd = open_append(self._spill_to)
        except OSError as exc:
            self.exit.reason += f"; {self._spill_to}: {exc.strerror or exc}"
            return
        close_quietly(self._fd)
        self._fd = fd
        self._spilling = True
        self.exit.spill_path = self._spill_to

    def _write(self) -> bool:
        """Append ``_unwritten`` as whole lines under the file's lock, never waiting for it.

        Under the lock the file's last byte is checked: a line torn by a process that died
        mid-write (or by a full disk) is ended first, so no row is ever glued onto it.  A write
        that fails part-way is cut back to where it began, so it leaves no torn line itself.
        """
        fd, data = self._fd, self._unwritten
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            locked = True
        except BlockingIOError:
            self._stall("locked by another process",
                        f"the local record {self.path} is locked by another process; rows wait "
                        f"in memory (up to {MAX_QUEUED} calls) until it is free, training continues")
            return False
        except OSError as exc:  # a filesystem without locks: whole-line appends still hold
            log.warn(f"cannot lock the local record {self.path} ({exc.strerror or exc}); "
                     "writing without a lock", key="record-no-lock")
            locked = False
        start = -1
        try:
            start = os.fstat(fd).st_size
            if start and os.pread(fd, 1, start - 1) != b"\n":
                data = b"\n" + data
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        except OSError as exc:
            if start >= 0:
                try:
                    os.ftruncate(fd, start)
                except OSError:
                    pass  # the next write ends the torn line instead
            self._stall(exc.strerror or str(exc),
                        f"cannot write the local record {self.path} ({exc.strerror or exc}); "
                        "retrying, rows wait in memory, training continues")
            return False
        finally:
            if locked:
                try:
                    fcntl.flock(fd, fcntl.LOCK_UN)
                except OSError:
                    pass
        if self._spilling:
            self.exit.spilled += data.count(b"\n")
        self._unwritten = b""
        self._stalled = ""
        return True

    def _stall(self, reason: str, message: str) -> None:
        self._stalled = reason
        log.warn(message, key=f"record-stalled-{reason}")

    def _sync(self) -> None:
        try:
            os.fsync(self._fd)
        except OSError:
            pass
