"""The local record: one JSONL file per node and rank, written by a background thread.

The training thread only puts one tuple (``calls.Call``) per ``log`` call on the writer's queue
(``calls.CallQueue``: the frozen values, the step and commit arguments, the time, the system
sample of that moment): no lock, no I/O, so a signal handler that interrupts it can never wait on
it.  The queue is the only object the two threads share; the rest of ``RecordWriter`` is the
writer thread's, or its closer's (``flush``/``close``, which wait for it by polling, and read
what it counted only once it ended or they gave up).  The writer thread looks at the queue
every ``_POLL_SECONDS`` and drains it every ``_FLUSH_SECONDS`` (sooner when it is long or a flush
asks): it merges each call's sample into its values, replays the calls through each run's
``RunRows`` (wandb's step rules), encodes the rows, and appends them with one ``write`` to a file
opened with ``O_APPEND`` under an exclusive ``flock`` taken without waiting: lines of several
processes sharing a file never interleave, a process holding the lock never blocks training, and
a row reaches the kernel (and survives SIGKILL) well within a second.  Keeping that work off the
training thread matters more than its size suggests: right after a wandb call every cache is
cold, and each line of our code touched there costs several times its warm price.  ``flush`` and
``close`` (finish, exit, SIGTERM) ask the writer and wait for it within a deadline: the writer
is one of the session's parts (``lifecycle.Part``).

For a followed run (``capture.history``) the writer also reads wandb's transaction log, after
the queued calls of each round, and writes what it shows: a tensorboard run's rows, or the
amendments of rows already written from calls (``capture.reconcile``).
"""

from __future__ import annotations

import fcntl
import math
import os
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

from .. import guard, liveness, log
from ..paths import close_quietly, make_dirs, share_file
from ..recordline import APPROX_KEY, encode, encode_amendment
from .calls import MAX_QUEUED, Approximate, CallQueue, EndOfRun, Follow
from .history import Follower
from .reconcile import Amendment, Reconciler
from .rows import Row, RunRows

_FLUSH_SECONDS = 0.5  # a row reaches the kernel within this (the promise is: within 1 s)
_POLL_SECONDS = 0.05  # how often the writer looks at the queue and at flush requests
_WAKE_AT = 1000  # queued calls that make the writer drain before _FLUSH_SECONDS is up
_ROUND_BYTES = 16 << 20  # encoded bytes the writer takes from the queue in one round
LOG_IDLE = 1.0  # seconds a run's end waits for wandb's log to grow before it stops waiting
_SPILL_AFTER = 0.5  # seconds a closing writer retries a record that cannot take its rows (locked,
# disk full) before it writes them to the fallback record instead


def _open_append(path: str, shared: bool = False) -> int:
    """Read-write, so that a writer can look at the last byte before appending (a torn line).
    ``shared``: the directories it creates are the pod agent's too (``paths.make_dirs``); the
    file itself stays 0644, only trainers append to it."""
    make_dirs(os.path.dirname(path), shared=shared)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    if shared:
        share_file(fd)  # whatever the umask: the agent reads it
    return fd


class _ExitCount:
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
    process, the disk full) is kept and retried; meanwhile the queue grows up to
    ``calls.MAX_QUEUED`` calls (or ``calls.MAX_QUEUED_VALUES`` values), after which calls keep only
    their step (``dropped`` counts them, one warning says so) and, past ``calls.HARD_LIMIT``, are
    not queued at all.
    """

    name = "record"

    def __init__(self, path: str, fallback: Optional[str] = None, shared: bool = False) -> None:
        """``shared``: ``path``'s directories are made for the pod agent too (never the
        fallback's: it is this user's own)."""
        self.path = path
        self.exit = _ExitCount()  # what a closing writer could not put in the record
        self._unencodable = 0  # calls whose row could not be encoded (the writer's count)
        self._spill_to = ""  # where rows go that the record cannot take at close ("": nowhere)
        self._spill_at = math.inf  # ``time.monotonic()`` from which a closing writer spills
        self._spilling = False  # the writer writes to ``exit.spill_path`` now
        self._given_up = False  # ``close`` stopped waiting: the writer must write nothing more
        self._fd = -1
        self._writing = -1  # the shared lock that tells the pod agent we live (``liveness``)
        self._unwritten = b""  # encoded lines a write could not place yet
        self._said_dropped = 0
        self._asked = 0  # flush requests issued ...
        self._done = 0  # ... and the newest one whose calls are all in the file
        self._tickets = threading.Lock()  # flush callers only, never the logging thread
        self._wake = threading.Event()
        self._closed = False  # the writer thread wrote everything after ``close`` and ended
        self._thread: Optional[threading.Thread] = None
        self._followed: List[RunRows] = []  # runs whose rows come from wandb's log (writer's)
        self._open(fallback, shared)
        self.queue = CallQueue(accepting=self.is_open)
        # The logging threads' one entry, the queue's ``put``: bound here, so that a ``log`` call
        # costs one method call and touches nothing else of the writer.
        self.append = self.queue.put

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
        return self.queue.stalled

    @property
    def dropped(self) -> int:
        """Logged calls whose values are not in the record: left out while the queue was full,
        or unencodable."""
        return self.queue.lost + self._unencodable

    @property
    def closed(self) -> bool:
        """Whether the writer wrote everything after ``close`` and ended."""
        return self._closed

    def _open(self, fallback: Optional[str], shared: bool) -> None:
        for candidate in (self.path, fallback):
            if not candidate:
                continue
            try:
                self._fd = _open_append(candidate, shared and candidate == self.path)
            except OSError as exc:
                log.warn(f"cannot write the local record at {candidate} ({exc.strerror or exc})"
                         + ("; trying " + fallback if fallback and candidate != fallback else ""))
                continue
            self.path = candidate
            self._spill_to = fallback if fallback and candidate != fallback else ""
            self._writing = liveness.hold(candidate)
            return
        log.warn("local record disabled: no writable location; training continues")

    # -- the part's life: start, and flush and close from finish, exit and SIGTERM -----------

    def start(self) -> None:
        """Start the writer thread (once; a record that could not be opened has none)."""
        if self.is_open and self._thread is None:
            self._thread = guard.start_thread("record", self._run)

    def flush(self, deadline: float) -> bool:
        """Ask the writer for everything queued so far; True once it is in the file, False if
        ``deadline`` (``time.monotonic()``) passed first."""
        if self._thread is None:
            return not self.queue.calls
        with self._tickets:
            self._asked += 1
            ticket = self._asked
        self._wake.set()
        return guard.wait_until(lambda: self._done >= ticket, deadline)

    def close(self, deadline: float) -> None:
        """Write everything, sync the file and stop the writer, waiting until ``deadline``
        (``closed`` says whether it ended in time).

        A record that cannot take the rows (locked past our end, a disk that does not free) is
        retried for ``_SPILL_AFTER`` (at most a third of the time left); then the rows go to the
        fallback record.  What neither took by ``deadline`` is counted in ``exit``, and one
        line says what happened."""
        self.queue.closing = True
        if self._thread is None:
            return
        now = time.monotonic()
        self._spill_at = now + min(_SPILL_AFTER, max(0.0, deadline - now) / 3)
        self._wake.set()
        if not guard.wait_until(lambda: self._closed, deadline):
            self._given_up = True
            self.exit.lost = self._unwritten.count(b"\n") + self.queue.rows_waiting()
            self.exit.reason = self.exit.reason or self.stalled or "the writer did not finish"
        self._release_writing()  # nothing more is written: an agent need not wait for us
        self.exit.say(self.path)

    def _release_writing(self) -> None:
        if self._writing >= 0:
            close_quietly(self._writing)
            self._writing = -1

    def abandon_after_fork(self) -> None:
        """In a forked child: the queued rows are the parent's to write; drop them and the fd."""
        self.queue = CallQueue(accepting=False)
        self.append = self.queue.put
        self._unwritten = b""
        for rows in self._followed:
            rows.follower.close()
        self._followed = []
        self._tickets = threading.Lock()
        self._wake = threading.Event()
        self._thread = None
        self._release_writing()  # the parent's descriptor keeps its lock; ours would outlive it
        if self._fd >= 0:
            close_quietly(self._fd)
            self._fd = -1

    # -- the writer thread -------------------------------------------------------------------

    def _run(self) -> None:
        last = time.monotonic()
        while not self._closed and not self._given_up:
            self._wake.wait(_POLL_SECONDS)
            self._wake.clear()
            ticket, now, stop = self._asked, time.monotonic(), self.queue.closing
            if (self._unwritten or self._done < ticket or stop
                    or len(self.queue) >= _WAKE_AT or now - last >= _FLUSH_SECONDS):
                last = now
                if self._write_queued():
                    self._done = max(self._done, ticket)
                    if stop and not self.queue.calls:
                        self._sync()
                        self._closed = True
                elif stop and time.monotonic() >= self._spill_at:
                    self._spill()
            dropped = self.dropped
            if dropped > self._said_dropped:
                self._said_dropped = dropped
                log.warn(f"the local record {self.path} fell behind ({self.stalled or 'stalled'});"
                         f" {dropped} logged rows are not in it (wandb has them)",
                         key="record-dropped")

    def _write_queued(self) -> bool:
        """Write what an earlier write could not, then the calls queued now, in rounds of at
        most ``MAX_QUEUED`` calls and about ``_ROUND_BYTES`` (memory holds one round's lines at
        most); True when all is written.  Calls queued meanwhile wait for the next time."""
        if self._unwritten and not self._write():
            return False
        left = len(self.queue)
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
        from the queue), stopping after ``_ROUND_BYTES``; returns them and the calls taken."""
        chunks = []
        size = taken = 0
        take = self.queue.take
        while taken < most and size < _ROUND_BYTES:
            rows, data, step, commit, timestamp, sample = take()  # ``calls.Call``'s order
            taken += 1
            try:
                if type(data) is dict:
                    if rows.follower is not None and rows.reconciler is None:
                        continue  # a tensorboard run's call: only wandb's log knows its step
                    # the user's keys win over the system figures
                    done = rows.log({**sample, **data} if sample else data, step, commit, timestamp)
                    chunk = self._call_lines(rows, done)
                elif type(data) is EndOfRun:
                    chunk = self._last_lines(rows, data.log_end_by)
                else:
                    self._learn(rows, data)
                    continue
                chunks.append(chunk)
                size += len(chunk)
            except Exception as exc:  # one odd row must not cost the others
                self._unencodable += 1
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

    def _learn(self, rows: RunRows, item: Any) -> None:
        """A control item (``calls.Follow``, ``calls.Approximate``): what the training thread
        found out about the run, in call order."""
        if type(item) is Approximate:
            rows.approx = item.why
        elif type(item) is Follow:
            self._follow(rows, item)

    def _follow(self, rows: RunRows, request: Follow) -> None:
        """The calls before this one made the run's rows so far; wandb's log has the rest.  A run
        whose calls still carry wandb's steps keeps making rows from them, written at once, and
        the log amends them (``reconcile``); a tensorboard run's calls are passed over from here
        on (``_encode_queued``)."""
        if rows.follower is None and not rows.finished:
            rows.follow(Follower(request.path, request.record_class, rows.step),
                        Reconciler() if request.calls_carry_steps else None)
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
        (queued all along) make rows again, with steps from the last one the log showed, marked
        approximate."""
        follower, tensorboard = rows.follower, rows.reconciler is None
        follower.close()
        rows.follower = rows.reconciler = None
        self._followed.remove(rows)
        if tensorboard:
            rows.step = max(rows.step, follower.last_step + 1)
            rows.approx = "its transaction log was lost"
        log.warn(f"cannot follow wandb's transaction log {follower.log.path} of run "
                 f"{rows.run_id} ({follower.lost}); from here on its rows come from its log "
                 + ("calls, with wandb's steps but without what wandb adds (a step metric's "
                    "value, watch's histograms)" if not rows.approx else
                    "calls, their steps marked approximate (_primus_step_approx)"),
                 key=f"follow-{rows.run_id}")

    def _last_lines(self, rows: RunRows, log_end_by: float) -> bytes:
        """The run ended: its pending row, and for a followed run what is left in wandb's log.
        The log is waited for until its exit record, ``log_end_by`` (``time.monotonic()``) or
        ``LOG_IDLE`` without growth, whichever comes first: a log that is lost or stopped growing
        is not waited for, and the calls' rows are in the record already."""
        chunks = []
        if rows.followed and not rows.finished:
            start, polls = time.monotonic(), 0
            if rows.follower is not None:
                chunks.append(self._read_log(rows))
            while rows.follower is not None and not rows.follower.ended \
                    and time.monotonic() < log_end_by \
                    and rows.follower.idle_since(start) < LOG_IDLE:
                time.sleep(_POLL_SECONDS)  # wandb-core writes its last records a moment later
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
        self.exit.reason = self.stalled
        if not self._spill_to:
            return
        try:
            fd = _open_append(self._spill_to)
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
        self.queue.stalled = ""
        return True

    def _stall(self, reason: str, message: str) -> None:
        self.queue.stalled = reason
        log.warn(message, key=f"record-stalled-{reason}")

    def _sync(self) -> None:
        try:
            os.fsync(self._fd)
        except OSError:
            pass
