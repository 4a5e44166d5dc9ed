"""What the injector runs inside one process, from the first ``wandb.init`` to exit.

The wrappers in ``patch`` call into the process's ``Session``: ``begin_log``/``end_log`` around
every ``log`` call (the only work on the training thread: copy or freeze the row, queue it for the
record writer), ``on_init`` and ``on_finish`` for the run's life.  Background parts (record writer,
sampler, reporter) start lazily at the first run.  The process holds its session in ``state``,
which replaces it in a forked child (``forked``: nothing the parent owns, threads, locks, queued
rows, is used or written twice) and hands it the process end: it flushes at finish, at exit, on
SIGTERM and when a multiprocessing child ends through ``os._exit``.

A process end gets one budget, ``PRIMUS_LENS_SHUTDOWN_TIMEOUT``, shared by every flush it
triggers (``Run.finish`` runs ``Run._finish``, exit follows finish, a SIGTERM handler may finish
too): the first sets the deadline, the others wait only for what is left of it.  The waiting
thread never does the work itself: writing is the record writer's, sending the reporter's, and a
flush from a signal handler (or from a ``finish`` that a program's own handler calls) runs on a
hand-off thread that the caller waits for by polling, so it can take no lock that the code it
interrupted may hold.
"""

from __future__ import annotations

import functools
import operator
import os
import sys
import threading
import time
from typing import Any, Callable, Dict, Mapping, NamedTuple, Optional, Tuple

from .. import guard, log, state
from ..config import Config
from ..metrics.sampler import Sampler
from ..paths import record_location
from ..report import owner
from ..report.reporter import Reporter
from ..report.status import write_status
from ..topology import Topology
from ..values import PLAIN_TYPES, freeze
from . import history
from .record import NO_SAMPLE, RecordWriter, end_of_run, follow_log
from .rows import RunRows

# ``begin_log``'s answer: how to call wandb, and what to queue once wandb accepted the call.  A
# plain tuple: it is built on every ``log`` call, where a NamedTuple costs measurably more
# (bench/log_overhead.py); its fields, by index:
ARGS = 0  # tuple, for wandb: the user's, or with the new sample merged into the row
KWARGS = 1  # dict, likewise
DATA = 2  # the user's row, copied or frozen before wandb saw it
SAMPLE = 3  # the system sample current at the call (the writer merges it in)
STEP = 4  # as given to ``log``
COMMIT = 5  # as given to ``log``
Prepared = Tuple[tuple, dict, Dict[str, Any], Dict[str, Any], Any, Any]


class Tracked(NamedTuple):
    """A run the session follows, and its step rules."""

    run: Any
    rows: RunRows


# Why a run's rows come from wandb's transaction log (``history``): each integration makes rows or
# values that never pass through ``Run.log``.
TENSORBOARD = "tensorboard sync"  # wandb-core inserts rows, moving every later step
WATCH = "wandb.watch"  # histograms logged through ``Run._log``
STEP_SYNC = "define_metric step_sync"  # wandb adds the step metric's last value to rows

LOG_END_WAIT = 5.0  # seconds a finished followed run waits for wandb's exit record at most
RECORD_FLOOR = 1.0  # seconds a writer that keeps up may take at a process end even when the
# budget is spent (normally milliseconds): the record is the source of truth


def run_id_of(run: Any) -> str:
    try:
        value = run.id
    except Exception:
        value = None
    return value if isinstance(value, str) and value else f"unknown-{os.getpid()}-{id(run):x}"


def starting_step_of(run: Any) -> int:
    try:
        value = run.starting_step
    except Exception:
        return 0
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _gpu_inventory(config: Config, topology: Topology) -> Dict[str, Any]:
    """This process's GPUs for the detection report.  Called on the reporter's detection thread,
    which imports under its fork-safe lock: the GPU libraries load there, never at init."""
    from ..metrics.gpu import inventory  # never raises; no vendor and no devices without a GPU

    return inventory(config, topology)


def _as_step(step: Any) -> Optional[int]:
    """wandb's step as an int; ``ValueError`` for a value we cannot interpret."""
    if step is None:
        return None
    try:
        return operator.index(step)
    except TypeError:
        if isinstance(step, float) and step.is_integer():
            return int(step)
        raise ValueError(f"step {type(step).__name__}")


class Session:
    """The injector's work in this process.  ``patch_run`` (from ``patch``, which owns the
    wrappers) makes sure an adopted run's own ``log``/``finish`` are wrapped."""

    def __init__(self, config: Config, topology: Topology,
                 patch_run: Callable[[Any], None]) -> None:
        self.config = config
        self.topology = topology
        self._patch_run = patch_run
        self.enabled = True
        self.started = False
        self.runs: Dict[int, Tracked] = {}  # by ``id(run)``
        self.record: Optional[RecordWriter] = None
        self.sampler: Optional[Sampler] = None
        self.reporter: Optional[Reporter] = None
        self._sent_snapshot: Dict[int, Dict[str, Any]] = {}  # run -> last sample given to wandb
        self._lock = threading.RLock()
        self._deadline: Optional[float] = None  # the current process end's, once one began
        self._closing = False  # shutdown began (exit, SIGTERM, a child's finalizer) ...
        self._closed = False  # ... and ended
        self._awaiting_wandb = False  # atexit left followed runs to ``after_wandb_exit``
        self._wandb_done = False  # ... which runs after wandb wrote its last records
        # runs whose detection report waits for their first row (HF's Trainer and Lightning fill
        # wandb.config after init): id(run) -> the modules on the stack at init
        self._undetected: Dict[int, Tuple[str, ...]] = {}

    # -- the training thread's path -------------------------------------------------------

    def begin_log(self, run: Any, args: tuple, kwargs: dict) -> Optional[Prepared]:
        """Inspect a ``log`` call: a ``Prepared`` (how to call wandb, what to record), or None
        (nothing to capture: the data is not a mapping).

        The row is copied or frozen before wandb sees it: some versions add ``_timestamp``/``_runtime``
        to the dict they are given, and later in-place changes must not reach the record.

        With enrichment on, the writer merges the latest sample into every row of the record,
        and wandb gets it on the run's first row after each new sample (so once per sample
        interval at most): wandb's cost grows with every key of every row, and repeating an
        unchanged sample on thousands of rows per second would cost training time and tell
        nothing new.
        """
        data = args[0] if args else kwargs.get("data")
        if type(data) is not dict and not isinstance(data, Mapping):  # ABC check only if needed
            return None  # wandb raises TypeError itself; nothing to capture
        step = args[1] if len(args) > 1 else kwargs.get("step")
        commit = args[2] if len(args) > 2 else kwargs.get("commit")
        # Plain values (the usual row of numbers) cannot change after the call: a C-level copy
        # keeps them, and the writer thread does the rest; anything else is frozen right here.
        frozen = dict(data) if set(map(type, data.values())) <= PLAIN_TYPES else freeze(data)
        sampler = self.sampler
        snapshot = sampler.snapshot if sampler is not None else NO_SAMPLE
        if snapshot and self._sent_snapshot.get(id(run)) is not snapshot:
            self._sent_snapshot[id(run)] = snapshot
            data = {**snapshot, **data}  # a new dict: the user's stays untouched
            if args:
                args = (data, *args[1:])
            else:
                kwargs = dict(kwargs, data=data)
        return args, kwargs, frozen, snapshot, step, commit  # ``Prepared``

    def end_log(self, run: Any, call: Prepared) -> None:
        """wandb accepted the call: queue it for the writer thread, which makes the rows."""
        entry = self.runs.get(id(run))
        rows = entry.rows if entry is not None else self.adopt(run)
        if self._undetected:  # a run's first row: its configuration is complete now
            self._detect(run)
        record = self.record
        if record is None or rows.closed or not rows.queue_calls:  # a disabled-mode run still
            return  # "logs" after finish; a tensorboard run's steps are only in wandb's log
        step = call[STEP]
        if step is not None:
            try:
                step = _as_step(step)
            except ValueError as exc:
                log.debug("log_not_captured", reason=str(exc))
                return
        record.append((rows, call[DATA], step, call[COMMIT], time.time(), call[SAMPLE]))  # Call

    # -- run life ---------------------------------------------------------------------------

    def adopt(self, run: Any) -> RunRows:
        """Start tracking a run (at init, or at its first ``log`` if init was not seen)."""
        with self._lock:
            entry = self.runs.get(id(run))
            if entry is not None:
                return entry.rows
            self.start()  # first: the run's writer is registered beside the record before
            rows = RunRows(run_id_of(run), starting_step_of(run))  # any line names it
            writer = self._writer_of(run)
            rows.who = writer.tag
            self.runs[id(run)] = Tracked(run, rows)
            self._deadline = None  # a new run: its end gets a whole shutdown budget
        self._patch_run(run)
        if self.reporter is not None and writer.report:
            from ..report.runfacts import caller_modules

            self._undetected[id(run)] = caller_modules()
        log.debug("run_adopted", run_id=rows.run_id, start_step=rows.step,
                  run_class=type(run).__name__)
        return rows

    def on_init(self, run: Any) -> None:
        if run is None:
            return
        self.adopt(run)
        patched = getattr(sys.modules.get("wandb"), "patched", None)  # wandb.tensorboard.patch
        if isinstance(patched, dict) and patched.get("tensorboard"):  # (sync_tensorboard=True)
            self.follow(run, TENSORBOARD)

    def follow(self, run: Any, why: str) -> None:
        """From now on read wandb's view of the run's rows from its transaction log
        (``history``), because of ``why``: a tensorboard run's rows come from there alone; the
        other integrations' calls still carry wandb's steps, so their rows are written at once
        and the log amends them (``reconcile``).  Where wandb writes no log (disabled mode) it
        records nothing beyond ``log`` either; where it should but the log cannot be found,
        tensorboard rows would move the steps: the run's rows are marked approximate
        (``rows.APPROX_KEY``), said once."""
        if run is None:
            return
        entry = self.runs.get(id(run))
        rows = entry.rows if entry is not None else self.adopt(run)
        if rows.followed or rows.closed or self.record is None:
            return
        path = history.transaction_log(run)
        if path is None:
            return
        record_class = history.record_class()
        if not path or record_class is None or not os.path.isfile(path):
            if why == TENSORBOARD:
                rows.approx = why
            log.warn(f"wandb's transaction log of run {rows.run_id} is not readable "
                     f"({path or 'no path'}): rows that {why} adds are not in the record"
                     + ("; the steps of its rows are marked approximate" if rows.approx else ""),
                     key=f"no-transaction-log-{why}")
            return
        rows.followed = True
        rows.queue_calls = why != TENSORBOARD  # other runs' calls still carry wandb's steps
        self.record.append(follow_log(rows, path, record_class))
        log.debug("run_followed", run_id=rows.run_id, reason=why, path=path)

    def on_finish(self, run: Any) -> bool:
        """Before wandb's ``finish``: True when the run is followed and ``after_finish`` must
        read the rest of wandb's log once wandb has written it."""
        with self._lock:
            entry = self.runs.get(id(run))
            self._sent_snapshot.pop(id(run), None)
        if entry is None or entry.rows.closed:
            return False  # ``finish`` runs ``_finish``, a ``with`` block may finish twice
        entry.rows.closed = True
        self._detect(run)  # a run that never logged
        if entry.rows.followed:
            return True
        if self.record is not None:
            self.record.append(end_of_run(entry.rows))
        self.flush()
        return False

    def _detect(self, run: Any) -> None:
        """Hand the run's facts to the reporter, once: at its first row, else at its finish or
        the process end.  O(top-level config keys) on the calling thread; the report is built on
        the reporter's."""
        at_init = self._undetected.pop(id(run), None)
        if at_init is None or self.reporter is None:
            return
        from ..report.runfacts import RunFacts, caller_modules

        callers = tuple(dict.fromkeys(at_init + caller_modules()))
        self.reporter.add_run(RunFacts.from_run(run, callers))

    def _detect_remaining(self) -> None:
        """The process ends: runs that never logged and were not finished are reported now."""
        for key in list(self._undetected):
            entry = self.runs.get(key)
            if entry is not None:
                self._detect(entry.run)

    def after_finish(self, run: Any) -> None:
        """After wandb's ``finish`` of a followed run: its log is complete; read it to the end."""
        entry = self.runs.get(id(run))
        if entry is not None and self.record is not None:
            entry.rows.log_end_by = min(self._end_deadline(), time.monotonic() + LOG_END_WAIT)
            self.record.append(end_of_run(entry.rows))
        self.flush()

    # -- background parts -------------------------------------------------------------------

    def start(self) -> None:
        """Start the background parts once per process, at the first run."""
        with self._lock:
            if self.started:
                return
            self.started = True
            config, topo = self.config, self.topology
            reporting = self._reporting_wanted()
            where = record_location(config, topo, reporting)
            if where.path:
                self.record = RecordWriter(where.path, fallback=where.fallback or None)
            if reporting and self.record is not None and self.record.is_open:
                self.reporter = Reporter(config, topo, self.record.path, ephemeral=where.private,
                                         inventory=functools.partial(_gpu_inventory, config, topo))
                self.reporter.start()
            if config.enhance_metrics:
                from ..metrics.gpu import open_gpu_sources  # never raises; [] without a GPU
                from ..metrics.host import open_host_source

                self.sampler = Sampler([open_host_source(), *open_gpu_sources(config, topo)],
                                       config.sample_interval)
                self.sampler.start()
            state.install_exit_hooks()
            log.debug("session_started", record=self.record.path if self.record else None,
                      enhance=config.enhance_metrics, topology=topo.__dict__)

    def _reporting_wanted(self) -> bool:
        """Whether this process sends the runs it owns (``owner.process_reports``); each run
        may still opt out (``owner.writer_for``)."""
        wanted, why = owner.process_reports(self.config, self.topology)
        log.debug("reporting_on" if wanted else "reporting_off", reason=why)
        return wanted

    def _writer_of(self, run: Any) -> owner.Writer:
        """The run's ``Writer``, stored beside the record so a sender can name its lines."""
        writer = owner.writer_for(self.config, self.topology, run)
        if self.record is not None and self.record.is_open:
            try:
                owner.register(self.record.path, writer)
            except OSError as exc:
                log.warn(f"cannot store the writer identity beside {self.record.path} ({exc}); "
                         "its rows stay in the record unsent", key="writer-register")
        log.debug("run_writer", tag=writer.tag, report=writer.report,
                  key_prefix=writer.key_prefix, reason=writer.reason)
        return writer

    def _end_deadline(self) -> float:
        """The ``time.monotonic()`` by which the current process end must be done."""
        if self._deadline is None:
            self._deadline = time.monotonic() + self.config.shutdown_timeout
        return self._deadline

    def _record_deadline(self, deadline: float) -> float:
        """A writer that keeps up, or that can spill to its fallback record at close, gets at
        least ``RECORD_FLOOR``; a stalled one with nowhere to go only the budget."""
        record = self.record
        if record is None or (record.stalled and not record.can_spill):
            return deadline
        return max(deadline, time.monotonic() + RECORD_FLOOR)

    def flush(self) -> None:
        """``finish``, or a SIGTERM the program handles itself: the record gets what is queued
        (committed rows) and the server acknowledges it, within the process end's budget;
        pending rows stay pending.  Runs on a hand-off thread (see the module's docstring)."""
        if self.record is None and self.reporter is None:
            return
        deadline = self._end_deadline()
        limit = self._record_deadline(deadline)
        guard.hand_off("flush", lambda: self._flush_until(deadline, limit), limit)

    def _flush_until(self, deadline: float, limit: float) -> None:
        if self.record is not None:
            self.record.flush(limit)
        if self.reporter is not None:
            self.reporter.flush(max(0.0, deadline - time.monotonic()))

    def shutdown(self, hand_off: bool = False, wandb_ends_later: bool = False) -> None:
        """The process ends: commit every pending row, write everything, stop the threads,
        once, within the process end's budget.  ``hand_off`` from a signal handler; at exit
        the work runs on the calling thread (no thread may start during interpreter shutdown).

        ``wandb_ends_later`` (atexit): wandb's own teardown comes next and finishes the runs
        it was not asked to finish; a followed run's last rows reach its log only then.  With
        such a run open, this commits the other runs' pending rows, writes and sends what is
        there, and ``after_wandb_exit`` does the rest."""
        deadline = self._end_deadline()
        limit = self._record_deadline(deadline)
        if wandb_ends_later and not self._closing and self._following_open():
            self._awaiting_wandb = True
            self._detect_remaining()
            self._end_runs(followed=False)
            guard.run_guarded("flush", lambda: self._flush_until(deadline, limit), restart=False)
            return
        if self._closing:  # another end path is at work: wait for it, within the budget
            guard.wait_until(lambda: self._closed, limit)
            return
        self._closing = True
        if hand_off:
            guard.hand_off("shutdown", lambda: self._close_until(deadline, limit), limit)
        else:
            guard.run_guarded("shutdown", lambda: self._close_until(deadline, limit),
                              restart=False)

    def after_wandb_exit(self) -> None:
        """wandb's teardown is over: the followed runs' logs are complete.  The same deadline as
        the atexit hook's: one budget for the whole process end (the record still gets its
        ``RECORD_FLOOR`` to read the logs to their end)."""
        if self._awaiting_wandb:
            self._awaiting_wandb = False
            self._wandb_done = True
            self.shutdown()

    def _following_open(self) -> bool:
        with self._lock:
            return any(entry.rows.followed and not entry.rows.finished
                       for entry in self.runs.values())

    def _end_runs(self, followed: Optional[bool] = None, wait_for_log: float = 0.0) -> None:
        """Queue the end of every open run (only the followed or only the other ones, if asked):
        pending rows become rows; a followed run's log is read to its end, waiting for its exit
        record until ``wait_for_log`` (``time.monotonic()``)."""
        with self._lock:
            open_rows = [entry.rows for entry in self.runs.values() if not entry.rows.closed
                         and (followed is None or entry.rows.followed == followed)]
        if self.record is None:
            return
        for rows in open_rows:
            rows.closed = True
            rows.log_end_by = wait_for_log
            self.record.append(end_of_run(rows))

    def _close_until(self, deadline: float, limit: float) -> None:
        try:
            self._detect_remaining()
            if self.record is not None:
                # after wandb's teardown a followed run's exit record is written, or will not be
                self._end_runs(wait_for_log=min(limit, time.monotonic() + RECORD_FLOOR)
                               if self._wandb_done else 0.0)
                self.record.close(limit)
                self._note_record_exit(self.record)
            if self.reporter is not None:
                self.reporter.close(max(0.0, deadline - time.monotonic()))
            if self.sampler is not None:
                self.sampler.stop(deadline)
        finally:
            self._closed = True

    def _note_record_exit(self, record: RecordWriter) -> None:
        """Rows the record could not take (spilled to its fallback, lost at exit, left out while
        it was stalled) go into the status file: the reporter's, written at its close, or one
        of the record's own where nothing reports."""
        if not (record.exit.spilled or record.exit.lost or record.dropped):
            return
        facts = {"path": record.path, "rows_left_out": record.dropped, **record.exit.as_dict()}
        if self.reporter is not None:
            self.reporter.stats.record = facts
            return
        status = {"pid": os.getpid(), "updated": time.time(), "state": "exited", "record": facts}
        for path in dict.fromkeys((record.path, record.exit.spill_path)):
            if path:
                write_status(path, status)

    def fail(self, exc: BaseException) -> None:
        """An internal error: the injector steps aside for the rest of this process."""
        self.enabled = False
        log.warn(f"injector off for this process after an internal error: "
                 f"{type(exc).__name__}: {exc}", key="internal-error")

    def forked(self) -> Session:
        """The child's session after ``fork``: same runs and steps, nothing else inherited."""
        child = Session(self.config, self.topology, self._patch_run)
        child.enabled = self.enabled
        child.runs = {key: Tracked(entry.run, entry.rows.forked_copy())
                      for key, entry in self.runs.items()}
        if self.record is not None:
            self.record.abandon_after_fork()
        if self.reporter is not None:
            self.reporter.abandon_after_fork()
        return child


def current() -> Optional[Session]:
    """The process's session, if wandb was patched (benchmarks switch it off and on)."""
    return state.session


def create(patch_run: Callable[[Any], None]) -> Session:
    """The process's session, made at the first wandb import; a forked child gets its own."""
    if state.session is None:
        state.set_session(Session(state.get_config(), state.get_topology(), patch_run))
        state.at_fork(after_in_child=_after_fork_in_child)
        state.install_late_exit_hook()
        from ..report.transport import hold_imports_across_fork

        hold_imports_across_fork()
    return state.session


def _after_fork_in_child() -> None:
    """Nothing the parent owns (threads, locks, queued rows) is used or written twice."""
    if state.session is not None:
        state.set_session(state.session.forked())
