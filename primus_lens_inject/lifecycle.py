"""The life of the injector's background parts, and of the session's end, in one time unit.

Every background part (the record writer, the reporter and its sinks, the sampler) has the same
four moves, ``Part``: the session starts each at the first run, flushes them in a declared order
at ``finish`` and on a SIGTERM the program handles, closes them in that order at the process end,
and abandons them in a forked child.  Every deadline is an *absolute* ``time.monotonic()`` value,
never a duration: a process end has one budget (``PRIMUS_LENS_SHUTDOWN_TIMEOUT``), set once by
the first end path, and each part, each nested wait and each later hook (exit after finish,
wandb's teardown after exit) works to that same instant.  Durations passed down a chain each
restart the clock and add up; one deadline cannot.

The session's end itself is one ``End``: a ``Phase`` and that deadline, moved only by ``move``
through ``TRANSITIONS``.  It takes no lock: the end is reached from signal handlers, which may
interrupt the very code that holds one (``guard.hand_off`` does the waiting instead).
"""

from __future__ import annotations

import enum
import time
from typing import Dict, Optional, Protocol, Tuple


class Part(Protocol):
    """A background part of the session (record writer, reporter, sampler)."""

    name: str

    def start(self) -> None:
        """Start its thread(s); once, at the first run (never at import: the injector is lazy)."""

    def flush(self, deadline: float) -> bool:
        """Deliver what it holds now and go on; True when all of it is delivered, False when
        ``deadline`` (``time.monotonic()``) passed first.  Never waits past ``deadline``."""

    def close(self, deadline: float) -> None:
        """Deliver what it holds and stop, waiting until ``deadline`` (``time.monotonic()``) at
        most: a part stuck in I/O or a driver call must not extend the process end (its threads
        are daemons; the interpreter does not wait for them either)."""

    def abandon_after_fork(self) -> None:
        """In a forked child: its threads, locks, descriptors and queued work are the parent's;
        forget them without using, closing or sending any of it (the child starts its own)."""


class Phase(enum.Enum):
    """Where the session's end stands."""

    OPEN = "open"  # no process end began (a ``finish`` may have set the deadline)
    AWAITING_WANDB = "awaiting wandb"  # atexit wrote and sent; followed runs wait for wandb's
    # teardown, after which ``after_wandb_exit`` closes
    WANDB_DONE = "wandb done"  # wandb's teardown is over: its logs are complete, close now
    CLOSING = "closing"  # one end path closes the parts; any other only waits for it
    CLOSED = "closed"  # every part closed (or the budget ran out while closing)


class Event(enum.Enum):
    """What moves the session's end."""

    DEFER_TO_WANDB = "defer to wandb"  # atexit with a followed run open: wandb writes its end
    WANDB_EXITED = "wandb exited"  # the late exit hook, after wandb's teardown
    CLOSE = "close"  # exit, SIGTERM, a multiprocessing child's finalizer
    CLOSED = "closed"  # the closing work ended


# (phase, event) -> the next phase; a pair not listed leaves the phase as it is and ``move``
# answers False: the caller does not act (another end path owns the work).
TRANSITIONS: Dict[Tuple[Phase, Event], Phase] = {
    (Phase.OPEN, Event.DEFER_TO_WANDB): Phase.AWAITING_WANDB,
    (Phase.AWAITING_WANDB, Event.DEFER_TO_WANDB): Phase.AWAITING_WANDB,
    (Phase.AWAITING_WANDB, Event.WANDB_EXITED): Phase.WANDB_DONE,
    (Phase.CLOSING, Event.WANDB_EXITED): Phase.CLOSING,  # a signal closes meanwhile: wait for it
    (Phase.OPEN, Event.CLOSE): Phase.CLOSING,
    (Phase.AWAITING_WANDB, Event.CLOSE): Phase.CLOSING,
    (Phase.WANDB_DONE, Event.CLOSE): Phase.CLOSING,
    (Phase.CLOSING, Event.CLOSED): Phase.CLOSED,
}


class End:
    """The session's end: its ``phase`` and the process end's deadline.

    The deadline is set by the first flush or close of a process end and shared by every later
    one (``Run.finish`` runs ``Run._finish``, exit follows finish, a SIGTERM handler may finish
    too); a new run gets a whole budget again (``new_run``)."""

    def __init__(self) -> None:
        self.phase = Phase.OPEN
        self._deadline: Optional[float] = None

    def allows(self, event: Event) -> bool:
        """Whether ``event`` would move the end from where it stands now."""
        return (self.phase, event) in TRANSITIONS

    def move(self, event: Event) -> bool:
        """Apply ``event``; True when ``TRANSITIONS`` allows it from the current phase."""
        target = TRANSITIONS.get((self.phase, event))
        if target is None:
            return False
        self.phase = target
        return True

    def deadline(self, budget: float) -> float:
        """The ``time.monotonic()`` by which the current process end must be done: ``budget``
        seconds from the first call since the last run began."""
        if self._deadline is None:
            self._deadline = time.monotonic() + budget
        return self._deadline

    def new_run(self) -> None:
        """A run began: its own end gets a whole budget."""
        self._deadline = None
