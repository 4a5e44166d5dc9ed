"""What the training thread hands the record writer: the queue, and everything that travels in it.

The queue (``CallQueue``) is the only object the training thread and the record writer's thread
both touch.  Everything the writer must learn from the training thread travels inside a queued
item, in call order: a ``log`` call (``Call``), the switch of a run to wandb's transaction log
(``Follow``), a run whose steps may differ from wandb's (``Approximate``), the end of a run
(``EndOfRun``).  The ``RunRows`` in each item is the run's step rules, made on the training thread
before its first item and from then on read and changed by the writer only; the training thread
keeps what it needs to know about a run on its own side (``session.Tracked``).

The training thread's part takes no lock and does no I/O (a signal handler that interrupts it can
never wait on it); the few counters both sides read are each written by one side, except
``stalled``, which says why the writer is behind and which either side may set (see ``put``).
"""

from __future__ import annotations

import collections
import time
from typing import Any, Deque, Dict, Final, NamedTuple, Optional, Tuple, Union

from .. import guard
from .rows import RunRows

MAX_QUEUED = 10_000  # queued calls beyond which the logging thread waits or calls lose values,
MAX_QUEUED_VALUES = 1_000_000  # ... or top-level values in them (a row may hold 60,000 keys)
_BACKPRESSURE_MAX = 1.0  # the longest one ``log`` call waits for a writer that makes progress
HARD_LIMIT = 200_000  # queued calls (mostly bare steps) beyond which calls are not queued


class Follow(NamedTuple):
    """In place of a row: from here on, read the run's rows from wandb's transaction log."""

    path: str
    record_class: Any  # wandb's protobuf ``Record``
    calls_carry_steps: bool  # the run's calls still make rows (False: tensorboard moves steps)


class Approximate(NamedTuple):
    """In place of a row: the run's later rows carry steps wandb may have given differently."""

    why: str


class EndOfRun(NamedTuple):
    """In place of a row: the run ended; a followed run's log is read to its end, waiting for
    wandb's exit record until ``log_end_by`` (``time.monotonic()``) at most."""

    log_end_by: float


# A queued item: made on the training thread, read by the writer thread, never changed in
# between.  A plain tuple: it is built on every ``log`` call, where a NamedTuple costs measurably
# more (bench/log_overhead.py); its fields, by index (names of their own: ``session.Prepared``
# is another tuple, with other fields):
CALL_ROWS: Final = 0  # RunRows: the run's step rules (the writer's)
CALL_DATA: Final = 1  # the frozen row (a dict), or a control item: ``Follow``, ``Approximate``, ``EndOfRun``
CALL_STEP: Final = 2  # Optional[int], as given to ``log``
CALL_COMMIT: Final = 3  # as given to ``log``
CALL_TIME: Final = 4  # float: ``time.time()`` of the call
CALL_SAMPLE: Final = 5  # the system sample current at the call, merged in by the writer
Call = Tuple[RunRows, Union[Dict[str, Any], Follow, Approximate, EndOfRun], Optional[int], Any,
             float, Dict[str, Any]]
NO_SAMPLE: Dict[str, Any] = {}  # the sample of a call made while nothing samples (never mutated)
# A queued call whose values could not be kept (the writer was stalled): it still moves the run's
# step as wandb did, so the rows after it keep their true steps.  Never mutated (no row is made
# from an empty call).
DROPPED: Dict[str, Any] = {}


def control(rows: RunRows, item: Union[Follow, Approximate, EndOfRun]) -> Call:
    """A queued item that carries no row: what the writer must learn about ``rows``, in order."""
    return (rows, item, None, None, 0.0, NO_SAMPLE)


class CallQueue:
    """The calls on their way from the logging threads to the writer, and what bounds them.

    Who writes what: ``put`` (logging threads) appends calls and counts ``values_in`` and
    ``lost``; ``take`` (the writer) removes them and counts ``values_out``; the writer sets
    ``stalled`` after each write (its reason, or "" once a write succeeds), a logging thread that
    waited ``_BACKPRESSURE_MAX`` in vain sets it too; ``closing`` is set by the writer's close.
    """

    def __init__(self, accepting: bool) -> None:
        self.calls: Deque[Call] = collections.deque()
        self.accepting = accepting  # False: no writer will ever drain it (no record)
        self.values_in = 0  # top-level values queued by the logging threads ...
        self.values_out = 0  # ... and taken by the writer
        self.lost = 0  # calls queued without their values (or not queued) while it was full
        self.stalled = ""  # why the writer cannot write now ("" while it keeps up)
        self.closing = False  # the writer was asked to close: nobody waits for its progress

    def __len__(self) -> int:
        return len(self.calls)

    def put(self, call: Call) -> None:
        """Queue one call or control item.  Takes no lock and does no I/O: the writer notices a
        long queue by itself within its poll interval."""
        if not self.accepting:
            return
        data = call[CALL_DATA]
        if type(data) is dict:
            if len(self.calls) >= MAX_QUEUED or self.values_in - self.values_out >= MAX_QUEUED_VALUES:
                crowded = self._crowded(call)
                if crowded is None:
                    return
                call = crowded
                data = call[CALL_DATA]
            self.values_in += len(data)
        self.calls.append(call)

    def take(self) -> Call:
        """The oldest call (the writer's; there is one: only the writer takes)."""
        call = self.calls.popleft()
        data = call[CALL_DATA]
        if type(data) is dict:
            self.values_out += len(data)
        return call

    def full(self) -> bool:
        return len(self.calls) >= MAX_QUEUED or self.values_in - self.values_out >= MAX_QUEUED_VALUES

    def _crowded(self, call: Call) -> Optional[Call]:
        """The queue is full.  A writer that makes progress is waited for (logging faster than
        rows can be encoded: back-pressure, at most ``_BACKPRESSURE_MAX`` per call); a stalled
        one is not: the call keeps only its step, or is not queued past ``HARD_LIMIT``."""
        if not self.stalled and not self.closing:  # nobody drains a closed writer
            guard.wait_until(lambda: not self.full() or bool(self.stalled),
                             time.monotonic() + _BACKPRESSURE_MAX)
            if not self.full():
                return call
            self.stalled = self.stalled or "the writer makes no progress"
        self.lost += 1
        if len(self.calls) >= HARD_LIMIT:
            return None
        return (call[CALL_ROWS], DROPPED, call[CALL_STEP], call[CALL_COMMIT], call[CALL_TIME],
                DROPPED)

    def rows_waiting(self) -> int:
        """The queued calls that would have made rows (those that kept their values); read by a
        closer that gave up while the writer may still be taking calls."""
        for _ in range(3):
            try:
                calls = list(self.calls)
            except RuntimeError:  # the writer took one meanwhile: it is stopping, look again
                continue
            return sum(1 for call in calls
                       if type(call[CALL_DATA]) is dict and call[CALL_DATA] is not DROPPED)
        return len(self.calls)
