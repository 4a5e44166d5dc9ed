"""What the injector runs inside one process, from the first ``wandb.init`` to exit.

The wrappers in ``patch`` call into the process's ``Session``: ``begin_log``/``end_log`` around
every ``log`` call (the only work on the training thread: copy or freeze the row, queue it for the
record writer), ``on_init`` and ``on_finish`` for the run's life.  Background parts (record writer,
sampler, reporter: each a ``lifecycle.Part``) start lazily at the first run, and flush and close
in one declared order (``_parts``); the first run also starts the process's rank pulse (``pulse``,
unless ``init_process_group`` did already), handing it the sampler and the owner's wandb step.
The training thread shares one object with the record writer, its queue (``calls.CallQueue``):
what it knows of a run stays in its ``Tracked``, and what the writer must learn travels in queued
items.  The process holds its session in ``state``,
which replaces it in a forked child (``forked``: nothing the parent owns, threads, locks, queued
rows, is used or written twice) and hands it the process end: it flushes at finish, at exit, on
SIGTERM and when a multiprocessing child ends through ``os._exit``.

A process end gets one budget, ``PRIMUS_LENS_SHUTDOWN_TIMEOUT``, shared by every flush it
triggers (``Run.finish`` runs ``Run._finish``, exit follows finish, a SIGTERM handler may finish
too): the first sets the deadline, the others wait only for what is left of it.  Where the end
stands (open, waiting for wandb's teardown, closing, closed) is one ``lifecycle.End``, moved
only through its transition table.  The waiting
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
from typing import Any, Callable, Dict, Final, List, Mapping, Optional, Tuple, Union

from .. import guard, log, pulse, state
from ..config import Config
from ..lifecycle import End, Event, Part, Phase
from ..metrics import Sampler, open_sampler
from ..paths import record_location
from ..report import (
    Handover,
    Reporter,
    RunFacts,
    Writer,
    caller_modules,
    hold_imports_across_fork,
    process_reports,
    register,
    write_status,
    writer_for,
)
from ..topology import Topology
from ..values import PLAIN_TYPES, freeze
from . import history
from .calls import NO_SAMPLE, Approximate, EndOfRun, Follow, control
from .record import RecordWriter
from .rows import RunRows

# ``begin_log``'s answer: how to call wandb, and what to queue once wandb accepted the call.  A
# plain tuple: it is built on every ``log`` call, where a NamedTuple costs measurably more
# (bench/log_overhead.py); its fields, by index (names of their own: ``calls.Call`` is another
# tuple, with other fields):
PREPARED_ARGS: Final = 0  # tuple, for wandb: the user's, or with the new sample merged into the row
PREPARED_KWARGS: Final = 1  # dict, likewise
PREPARED_DATA: Final = 2  # the user's row, copied or frozen before wandb saw it
PREPARED_SAMPLE: Final = 3  # the system sample current at the call (the writer merges it in)
PREPARED_STEP: Final = 4  # as given to ``log``
PREPARED_COMMIT: Final = 5  # as given to ``log``
Prepared = Tuple[tuple, dict, Dict[str, Any], Dict[str, Any], Any, Any]


class Tracked:
    """A run the session tracks, as the training thread (and the end paths) know it.  ``rows``
    (its step rules) goes to the record writer in every queued item and is the writer's alone
    from the first: this side reads only its ``run_id``, which never changes (and copies it in a
    forked child, where no writer thread exists)."""

    __slots__ = ("closed", "followed", "queue_calls", "rows", "run")

    def __init__(self, run: Any, rows: RunRows) -> None:
        self.run = run
        self.rows = rows
        self.closed = False  # the run ended: its later calls are not queued
        self.followed = False  # its rows come (also) from wandb's transaction log
        self.queue_calls = True  # False in a forked child for a followed run: the parent's
        # reader of wandb's log has its rows

    def forked(self) -> Tracked:
        """For a forked child: same run and step, nothing pending or followed of its own."""
        child = Tracked(self.run, self.rows.forked_copy())
        child.closed = self.closed
        child.followed = self.followed
        child.queue_calls = self.queue_calls and not self.followed
        return child


# Why a run's rows come from wandb's transaction log (``history``): each integration makes rows or
# values that never pass through ``Run.log``.
TENSORBOARD = "tensorboard sync"  # wandb-core inserts rows, moving every later step
WATCH = "wandb.watch"  # histograms logged through ``Run._log``
STEP_SYNC = "define_metric step_sync"  # wandb adds the step metric's last value to rows

_LOG_END_WAIT = 5.0  # seconds a finished followed run waits for wandb's exit record at most
RECORD_FLOOR = 1.0  # seconds a writer that keeps up may take at a process end even when the
# budget is spent (normally milliseconds): the record is the source of truth


def run_id_of(run: Any) -> str:
    try:
        value = run.id
    except Exception:
        value = None
    return value if isinstance(value, str) and value else f"unknown-{os.getpid()}-{id(run):x}"


def _starting_step_of(run: Any) -> int:
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
        self.reporter: Optional[Union[Reporter, Handover]] = None  # Handover: the agent sends
        self._sent_snapshot: Dict[int, Dict[str, Any]] = {}  # run -> last sample given to wandb
        self._lock = threading.RLock()
        self._end = End()  # where the process end stands, and its deadline
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
        if entry is None:
            entry = self.adopt(run)
        if self._undetected:  # a run's first row: its configuration is complete now
            self._detect(run)
        record = self.record
        if record is None or entry.closed or not entry.queue_calls:  # a disabled-mode run still
            return  # "logs" after finish; a forked child's followed run is its parent's
        step = call[PREPARED_STEP]
        if step is not None:
            try:
                step = _as_step(step)
            except ValueError as exc:
                log.debug("log_not_captured", reason=str(exc))
                return
        record.append((entry.rows, call[PREPARED_DATA], step, call[PREPARED_COMMIT], time.time(),
                       call[PREPARED_SAMPLE]))  # ``calls.Call``

    # -- run life ---------------------------------------------------------------------------

    def adopt(self, run: Any) -> Tracked:
        """Start tracking a run (at init, or at its first ``log`` if init was not seen)."""
        with self._lock:
            entry = self.runs.get(id(run))
            if entry is not None:
                return entry
            self.start()  # first: the run's writer is registered beside the record before
            writer = self._writer_of(run)  # any line names it
            start_step = _starting_step_of(run)
            rows = RunRows(run_id_of(run), start_step, writer.tag)
            entry = self.runs[id(run)] = Tracked(run, rows)
            self._end.new_run()  # its end gets a whole shutdown budget
        self._patch_run(run)
        if self.reporter is not None and writer.report:
            self._undetected[id(run)] = caller_modules()
        log.debug("run_adopted", run_id=rows.run_id, start_step=start_step,
                  run_class=type(run).__name__)
        return entry

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
        entry = self.runs.get(id(run)) or self.adopt(run)
        if entry.followed or entry.closed or self.record is None:
            return
        run_id = entry.rows.run_id
        path = history.transaction_log(run)
        if path is None:
            return
        record_class = history.record_class()
        if not path or record_class is None or not os.path.isfile(path):
            approx = why == TENSORBOARD
            if approx:
                self.record.append(control(entry.rows, Approximate(why)))
            log.warn(f"wandb's transaction log of run {run_id} is not readable "
                     f"({path or 'no path'}): rows that {why} adds are not in the record"
                     + ("; the steps of its rows are marked approximate" if approx else ""),
                     key=f"no-transaction-log-{why}")
            return
        entry.followed = True  # the calls of a run that is not tensorboard's carry wandb's steps
        self.record.append(control(entry.rows, Follow(path, record_class, why != TENSORBOARD)))
        log.debug("run_followed", run_id=run_id, reason=why, path=path)

    def on_finish(self, run: Any) -> bool:
        """Before wandb's ``finish``: True when the run is followed and ``after_finish`` must
        read the rest of wandb's log once wandb has written it."""
        with self._lock:
            entry = self.runs.get(id(run))
            self._sent_snapshot.pop(id(run), None)
        if entry is None or entry.closed:
            return False  # ``finish`` runs ``_finish``, a ``with`` block may finish twice
        entry.closed = True
        self._detect(run)  # a run that never logged
        if entry.followed:
            return True
        if self.record is not None:
            self.record.append(control(entry.rows, EndOfRun(0.0)))
        self.flush()
        return False

    def _detect(self, run: Any) -> None:
        """Hand the run's facts to the reporter, once: at its first row, else at its finish or
        the process end.  O(top-level config keys) on the calling thread; the report is built on
        the reporter's."""
        at_init = self._undetected.pop(id(run), None)
        if at_init is None or self.reporter is None:
            return
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
            log_end_by = min(self._end_deadline(), time.monotonic() + _LOG_END_WAIT)
            self.record.append(control(entry.rows, EndOfRun(log_end_by)))
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
                self.record = RecordWriter(where.path, fallback=where.fallback or None,
                                           shared=where.shared)
            if reporting and self.record is not None and self.record.is_open:
                inventory = functools.partial(_gpu_inventory, config, topo)
                if config.agent and not where.private:  # the pod agent sends the record (the
                    # agent cannot see a private spool: without SAVE_LOCAL this process sends)
                    self.reporter = Handover(config, topo, self.record.path, inventory)
                else:
                    self.reporter = Reporter(config, topo, self.record.path,
                                             ephemeral=where.private, inventory=inventory)
            if config.enhance_metrics:
                self.sampler = open_sampler(config, topo, config.sample_interval)
            for part in self._parts():
                part.start()
            pulse.start("wandb.init", self.sampler, self._wandb_step)  # once per process
            state.install_exit_hooks()
            log.debug("session_started", record=self.record.path if self.record else None,
                      enhance=config.enhance_metrics, topology=topo.__dict__)

    def _wandb_step(self) -> Optional[Tuple[str, int]]:
        """For the rank pulse, on its thread: the latest run's id and its step as the record
        writer made it (an int read: no lock needed; a finished run keeps its last), or None."""
        entries = list(self.runs.values())
        return (entries[-1].rows.run_id, entries[-1].rows.step) if entries else None

    def _reporting_wanted(self) -> bool:
        """Whether this process sends the runs it owns (``owner.process_reports``); each run
        may still opt out (``owner.writer_for``)."""
        wanted, why = process_reports(self.config, self.topology)
        log.debug("reporting_on" if wanted else "reporting_off", reason=why)
        return wanted

    def _writer_of(self, run: Any) -> Writer:
        """The run's ``Writer``, stored beside the record so a sender can name its lines."""
        writer = writer_for(self.config, self.topology, run)
        if self.record is not None and self.record.is_open:
            try:
                register(self.record.path, writer)
            except OSError as exc:
                log.warn(f"cannot store the writer identity beside {self.record.path} ({exc}); "
                         "its rows stay in the record unsent", key="writer-register")
        log.debug("run_writer", tag=writer.tag, report=writer.report,
                  key_prefix=writer.key_prefix, reason=writer.reason)
        return writer

    def _parts(self) -> List[Part]:
        """The background parts there are, in the one order they start, flush and close: the
        record first (it is the source of truth, and the reporter sends only what it holds, so
        a row is written before its sending is waited for), the reporter next, the sampler last
        (nothing waits for it: its figures are in the rows already, and a source stuck in a
        driver call then costs only what is left of the budget)."""
        parts: List[Part] = [part for part in (self.record, self.reporter, self.sampler)
                             if part is not None]
        return parts

    def _end_deadline(self) -> float:
        """The ``time.monotonic()`` by which the current process end must be done."""
        return self._end.deadline(self.config.shutdown_timeout)

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
        """Flush every part in order: the record until ``limit`` (its floor), the others until
        ``deadline``."""
        for part in self._parts():
            part.flush(limit if part is self.record else deadline)

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
        end = self._end
        if wandb_ends_later and end.allows(Event.DEFER_TO_WANDB) and self._following_open():
            end.move(Event.DEFER_TO_WANDB)
            self._detect_remaining()
            self._end_runs(followed=False)
            guard.run_guarded("flush", lambda: self._flush_until(deadline, limit), restart=False)
            return
        after_wandb = end.phase is Phase.WANDB_DONE
        if not end.move(Event.CLOSE):  # another end path is at work: wait for it, in the budget
            guard.wait_until(lambda: end.phase is Phase.CLOSED, limit)
            return

        def close() -> None:
            self._close_until(deadline, limit, after_wandb)

        if hand_off:
            guard.hand_off("shutdown", close, limit)
        else:
            guard.run_guarded("shutdown", close, restart=False)

    def after_wandb_exit(self) -> None:
        """wandb's teardown is over: the followed runs' logs are complete.  The same deadline as
        the atexit hook's: one budget for the whole process end (the record still gets its
        ``RECORD_FLOOR`` to read the logs to their end)."""
        if self._end.move(Event.WANDB_EXITED):
            self.shutdown()

    def _following_open(self) -> bool:
        """Whether a followed run has not ended: its last rows reach wandb's log only with
        wandb's teardown."""
        with self._lock:
            return any(entry.followed and not entry.closed for entry in self.runs.values())

    def _end_runs(self, followed: Optional[bool] = None, wait_for_log: float = 0.0) -> None:
        """Queue the end of every open run (only the followed or only the other ones, if asked):
        pending rows become rows; a followed run's log is read to its end, waiting for its exit
        record until ``wait_for_log`` (``time.monotonic()``)."""
        with self._lock:
            open_runs = [entry for entry in self.runs.values() if not entry.closed
                         and (followed is None or entry.followed == followed)]
        if self.record is None:
            return
        for entry in open_runs:
            entry.closed = True
            self.record.append(control(entry.rows, EndOfRun(wait_for_log)))

    def _close_until(self, deadline: float, limit: float, after_wandb: bool) -> None:
        """Close every part in order (``_parts``), the record until ``limit`` (its floor), the
        others until ``deadline``; the end is ``CLOSED`` whatever happens."""
        try:
            self._detect_remaining()
            if self.record is not None:
                # after wandb's teardown a followed run's exit record is written, or will not be
                self._end_runs(wait_for_log=min(limit, time.monotonic() + RECORD_FLOOR)
                               if after_wandb else 0.0)
            for part in self._parts():
                part.close(limit if part is self.record else deadline)
                if part is self.record:  # before the reporter's close writes the status file
                    self._note_record_exit(self.record)
        finally:
            self._end.move(Event.CLOSED)

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
        child.runs = {key: entry.forked() for key, entry in self.runs.items()}
        for part in self._parts():
            part.abandon_after_fork()
        return child


def current() -> Optional[Session]:
    """The process's session, if wandb was patched (benchmarks switch it off and on)."""
    return state.session


def create(patch_run: Callable[[Any], None]) -> Session:
    """The process's session, made at the first wandb import; a forked child gets its own."""
    session: Optional[Session] = state.session
    if session is None:
        session = Session(state.get_config(), state.get_topology(), patch_run)
        state.set_session(session)
        state.at_fork(after_in_child=_after_fork_in_child)
        state.install_late_exit_hook()
        hold_imports_across_fork()
    return session


def _after_fork_in_child() -> None:
    """Nothing the parent owns (threads, locks, queued rows) is used or written twice."""
    if state.session is not None:
        state.set_session(state.session.forked())
