"""The pulse thread of one process: a line every interval, the stall rule, and its events.

Every ``PRIMUS_LENS_PULSE_INTERVAL`` seconds ``Pulse.beat`` reads the step counter (and the
owner's wandb step), writes one ``pulse`` line (``pulseline``) with the step figures and the
sampler's figures of this process, and applies the stall rule: no step for longer than
``StepTimes.threshold`` makes one ``stall`` line with every thread's stack, once per stall, and
the next step one ``recovery`` line.  A process that has not stepped yet is starting, not
stalled: the rule applies from its first step.

Then it re-arms the C-level watchdog (``stacks.Watchdog``) for one interval past the moment the
stall would be due: when the pulse thread runs it moves that moment on; when a thread holding
the GIL keeps the pulse thread from running, the watchdog writes the stacks and the pulse thread
turns them into the ``stall`` line when it runs again (its ``time`` is when they were taken).

The figures come from a ``metrics.Sampler``: the session's when it runs one (a wandb owner with
enrichment on: ``use_sampler``), else the pulse's own, which runs no thread of its own: the pulse
thread samples it once per beat.  Nothing here sends anything: the pod agent and
``primus-lens report`` read the lines.
"""

from __future__ import annotations

import math
import os
import threading
import time
from typing import Any, Dict, Optional, Tuple

from .. import guard, log, pulseline
from ..config import Config
from ..metrics import Sampler, open_sampler
from ..topology import Topology
from . import stacks
from .pulsefile import PulseFile
from .steps import (
    NO_SOURCE,
    OPTIMIZER,
    OPTIMIZER_STEPS,
    WANDB,
    StepCounter,
    StepReader,
    WandbSteps,
    ensure_optimizer_hook,
)
from .timing import StepTimes

_FINAL_WAIT = 1.0  # seconds the exit line waits for a beat in progress


def _figures(snapshot: Dict[str, Any]) -> Dict[str, Any]:
    """The sampler's finite numbers (a line is strict JSON)."""
    return {key: value for key, value in snapshot.items()
            if type(value) is int or (type(value) is float and math.isfinite(value))}


class _Stall:
    """The stall in progress: the count it began at, and the last step's ``time.time()``."""

    __slots__ = ("count", "since")

    def __init__(self, count: int, since: float) -> None:
        self.count = count
        self.since = since


class Pulse:
    """One process's pulse: its thread, its file and its stall state."""

    name = "pulse"

    def __init__(self, config: Config, topology: Topology, file: PulseFile, reason: str,
                 sampler: Optional[Sampler]) -> None:
        self.config = config
        self.file = file
        self.path = file.path
        self.reason = reason  # what started it: torch.distributed, jax.distributed, wandb.init
        self.counter = OPTIMIZER_STEPS
        self.source = NO_SOURCE  # steps.OPTIMIZER, WANDB or NO_SOURCE: ``_choose_source``
        self.pid = os.getpid()
        self.watchdog = stacks.Watchdog()
        self.times = StepTimes()
        self.stalls = 0
        self.lines = 0
        self._common = {"pid": self.pid, "rank": topology.rank, "local_rank": topology.local_rank,
                        "node": topology.node, "world_size": topology.world_size}
        self._topology = topology
        self._sampler = sampler  # None: the pulse thread opens its own at its first beat
        self._own_sampler = sampler is None
        self._wandb_reader: Optional[StepReader] = None
        self._wandb = WandbSteps(StepCounter())
        self._stall: Optional[_Stall] = None
        self._armed_count = 0  # the steps, and the last one's stamp, when the watchdog was armed
        self._armed_last = 0.0
        self._lock = threading.Lock()  # one beat at a time: the thread's, or the exit's
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._choose_source()

    # -- what the session hands over --------------------------------------------------------

    def use_sampler(self, sampler: Sampler) -> None:
        """Read the session's sampler from now on; the pulse's own closes its sources."""
        if self._sampler is sampler:
            return
        own, self._sampler, self._own_sampler = self._sampler, sampler, False
        if own is not None:
            own.close(time.monotonic())

    def follow_wandb(self, reader: StepReader) -> None:
        """Read the owner's (run id, wandb step) with ``reader`` on every beat; without an
        optimizer step the wandb step is the step source."""
        self._wandb_reader = reader
        self._choose_source()

    def _choose_source(self) -> None:
        """The optimizer hook, unless the owner's wandb step moves while the optimizer has not
        stepped yet (then the wandb step, until the first optimizer step); without torch the
        wandb step, or none.  A change starts the step figures afresh, and ends a stall the old
        source saw: the new one has stepped."""
        hooked = ensure_optimizer_hook()
        if self.source == OPTIMIZER and self.counter.count:
            return
        source = (OPTIMIZER if hooked and (self.counter.count or not self._wandb.counter.count)
                  else WANDB if self._wandb_reader is not None else NO_SOURCE)
        if source == self.source:
            return
        self.source = source
        self.times = StepTimes()
        stall, self._stall = self._stall, None
        if stall is not None:
            wall = time.time()
            self._write(pulseline.RECOVERY, {"time": wall, "since": stall.since,
                                             "stalled": wall - stall.since,
                                             "steps": self._counter().count})

    def _counter(self) -> StepCounter:
        return self._wandb.counter if self.source == WANDB else self.counter

    # -- the thread -------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = guard.start_thread("pulse", self._run)

    def _run(self) -> None:
        while not self._stop.wait(self.config.pulse_interval):
            with self._lock:
                if self._stop.is_set():
                    return
                self.beat()

    def beat(self, final: bool = False) -> None:
        """One round: read, judge, write, re-arm (``final``: the exit's line, no judging)."""
        self._choose_source()
        run_id, wandb_step = self._read_wandb()
        count, last, prev = self._counter().read()
        now, wall = time.monotonic(), time.time()
        self.times.update(count, last, prev)
        if self.source != NO_SOURCE:
            self._judge(count, last, now, wall, final)
        self._write(pulseline.PULSE, {
            "time": wall, "steps": count, "step_source": self.source,
            "step_last": self.times.last, "step_mean": self.times.mean,
            "step_median": self.times.median, "wandb_step": wandb_step, "run_id": run_id,
            "stalled": self._stall is not None, "figures": self._sample()})
        if final:
            self.watchdog.cancel()
        elif self.source != NO_SOURCE and self._stall is None:  # before the first step too:
            # steps may begin and the GIL be taken before the next beat (the dump is judged then)
            due = (last if count else now) + self.times.threshold(self.config.stall_seconds,
                                                                  self.config.stall_factor)
            self._armed_count, self._armed_last = count, last
            self.watchdog.arm(max(due - now, 0.0) + self.config.pulse_interval)

    def _read_wandb(self) -> Tuple[Optional[str], Optional[int]]:
        reader = self._wandb_reader
        found = reader() if reader is not None else None
        if found is None:
            return None, None
        self._wandb.observe(found[1])  # always: the counts are ready if it becomes the source
        return found

    def _sample(self) -> Dict[str, Any]:
        """The figures: the session's sampler's latest, or a round of the pulse's own (opened
        here, on the pulse thread: the GPU libraries never load on the thread that activated
        the pulse)."""
        sampler = self._sampler
        if sampler is None:
            sampler = open_sampler(self.config, self._topology, self.config.pulse_interval)
            sampler.prime()
            if self._sampler is None:  # the session may have handed its own over meanwhile
                self._sampler = sampler
            else:
                sampler.close(time.monotonic())
                sampler = self._sampler
        if self._own_sampler and sampler is self._sampler:
            sampler.sample_once()
        return _figures(sampler.snapshot)

    # -- the stall rule ---------------------------------------------------------------------

    def _judge(self, count: int, last: float, now: float, wall: float, final: bool) -> None:
        """The stall rule on one reading (``final``: the exit's, which only ends a stall)."""
        stall = self._stall
        if stall is not None:
            if count > stall.count:
                last_wall = wall - (now - last)
                self._stall = None
                self._write(pulseline.RECOVERY, {"time": last_wall, "since": stall.since,
                                                 "stalled": last_wall - stall.since,
                                                 "steps": count})
            return
        if final:
            return
        fired = self.watchdog.take()  # read even before the first step: never judged stale later
        if not count:
            return
        threshold = self.times.threshold(self.config.stall_seconds, self.config.stall_factor)
        if fired is not None:
            seen = self._last_step_before(now - (wall - fired[0]), count, last)
            if seen is not None and now - (wall - fired[0]) - seen[1] >= threshold:
                self._begin(seen[0], wall - (now - seen[1]), threshold, fired[0], fired[1],
                            "watchdog")
                self._judge(count, last, now, wall, final)  # it may have stepped again since
                return
        if now - last > threshold:
            self.watchdog.cancel()
            self._begin(count, wall - (now - last), threshold, wall, stacks.thread_stacks(),
                        "pulse")

    def _last_step_before(self, moment: float, count: int,
                          last: float) -> Optional[Tuple[int, float]]:
        """(steps, ``time.monotonic()``) of the last step before ``moment`` (when the watchdog
        fired): the stamps keep the last two steps; older ones are those known when it was
        armed (nothing steps while the GIL is held, so the steps since came after it)."""
        prev = self._counter().prev
        if last <= moment:
            return count, last
        if count >= 2 and prev <= moment:
            return count - 1, prev
        return (self._armed_count, self._armed_last) if self._armed_count else None

    def _begin(self, count: int, since: float, threshold: float, when: float, text: str,
               source: str) -> None:
        self._stall = _Stall(count, since)
        self.stalls += 1
        self._write(pulseline.STALL, {"time": when, "since": since, "threshold": threshold,
                                      "steps": count, "stacks": text, "source": source,
                                      "threads": stacks.thread_names()})
        log.debug("pulse_stall", since=since, threshold=threshold, source=source)

    # -- the file ---------------------------------------------------------------------------

    def _write(self, kind: str, fields: Dict[str, Any]) -> None:
        try:
            self.file.write(pulseline.encode(kind, {**self._common, **fields}))
            self.lines += 1
        except (OSError, ValueError) as exc:
            log.warn(f"pulse line not written to {self.path} ({type(exc).__name__}: {exc})",
                     key="pulse-write")

    # -- the process's end and forks --------------------------------------------------------

    def stop(self) -> None:
        """At exit: one last line (the steps up to the end), then nothing more."""
        if os.getpid() != self.pid or self._stop.is_set():
            return
        self._stop.set()
        if self._lock.acquire(timeout=_FINAL_WAIT):
            try:
                self.beat(final=True)
            finally:
                self._lock.release()
        self.watchdog.close()

    def before_fork(self) -> None:
        self.watchdog.before_fork()

    def after_fork_in_parent(self) -> None:
        self.watchdog.after_fork_in_parent()

    def abandon_after_fork(self) -> None:
        """In a forked child (a DataLoader worker): no thread, no line, no watchdog, ever."""
        self._stop.set()
        self._thread = None
        self.watchdog.abandon_after_fork()
        self.file.abandon_after_fork()
        if self._own_sampler and self._sampler is not None:
            self._sampler.abandon_after_fork()


