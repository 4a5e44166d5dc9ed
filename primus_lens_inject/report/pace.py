"""A pod-wide pace per kind of sink: how the pod agent keeps one pod's requests to about one per
second per destination, whatever the number of records it sends.

In a trainer every record has its own sender and each sends when its oldest row has waited
``PRIMUS_LENS_WANDB_FLUSH_INTERVAL``: eight per-rank runs make eight requests a second.  The
agent sends all of them, and its sinks of one kind (Lens rows, OTLP) share one ``Pace``: one
request at a time, a new one at most every ``interval`` seconds, turns taken in the order they
were asked for.  A sink asks for its turn before it builds its batch (once its oldest row waited
``PRIMUS_LENS_WANDB_FLUSH_INTERVAL`` or it holds ``PRIMUS_LENS_WANDB_BATCH_SIZE`` steps), so
while it waits its batch grows, up to ``GROWN_BATCH`` steps whatever the batch size: the rows per
request grow with the number of records and with the rate, the requests per second do not.  A
full batch (``GROWN_BATCH`` steps: a backlog, or a rate above what spaced requests carry) waits
only for the request before it, never for the interval: the pace spaces small requests, it never
caps the rows per second.  While the agent drains (SIGTERM) the pace is lifted: every sink
sends as fast as its destination answers.  A paced sink looks for new rows once a second
(``LOOK``), not five times as a trainer's does: its turn comes about once a second anyway.

The sinks of one kind also share one HTTP client (``client``): one at a time, each of the
pod's records sends every few seconds, longer than a connection is kept alive idle, so a client
per sink would connect anew (a TLS handshake) for nearly every request; one client keeps its
connection busy.

A sink without a pace (every trainer) never waits here, and has its own client.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Any, Callable, Deque, Dict, Optional, Tuple, Union

INTERVAL = 1.0  # seconds between the starts of two requests of one kind, per pod
_WAIT_SLICE = 1.0  # a waiting sink looks at its stop this often (a turn given, the interval's
# end and the drain's lift wake it at once)
LOOK = 1.0  # seconds between a paced sink's looks for new rows (a trainer's sink: 0.2): its
# requests go about a second apart anyway, and the agent has a sink per record and destination
GROWN_BATCH = 500  # steps a paced sink's batch holds at most: the most entries one logs request
# may carry (docs/server-contract.md); a trainer's batches stay at PRIMUS_LENS_WANDB_BATCH_SIZE


class Pace:
    """The turns of one kind of sink (``take``/``give``), first asked, first served.  Each waiter
    has its own condition on the pace's lock, so a turn given wakes the next in line alone, not
    every sink of the kind."""

    def __init__(self, interval: float = INTERVAL) -> None:
        self.interval = interval
        self._lock = threading.Lock()
        # holders waiting, oldest first, each with the condition it waits on
        self._queue: Deque[Tuple[object, threading.Condition]] = collections.deque()
        self._holder: Optional[object] = None
        self._next = 0.0  # ``time.monotonic()`` before which no new turn starts
        self._lifted = False
        self._client: Any = None

    def client(self, make: Callable[[], Any]) -> Any:
        """The HTTP client of every sink of this kind, ``make()`` by the first that asks (sinks
        of one kind have the same settings; an httpx client serves threads at once, as while
        draining).  It lives as long as the process."""
        with self._lock:
            if self._client is None:
                self._client = make()
            return self._client

    def lift(self) -> None:
        """Drain: no spacing, no waiting from now on."""
        with self._lock:
            self._lifted = True
            for _, turn in self._queue:
                turn.notify()

    def take(self, holder: object, stopped: Callable[[], bool],
             full: Union[bool, Callable[[], bool]] = False) -> bool:
        """Wait for ``holder``'s turn (at once if it holds it, or the pace is lifted; without the
        interval for a ``full`` batch: ``full()`` is asked again while the interval runs, so a
        batch that filled while it waited goes at once); False when ``stopped()`` turned true
        meanwhile."""
        with self._lock:
            if self._holder is holder or self._lifted:
                return True
            waiting = (holder, threading.Condition(self._lock))
            self._queue.append(waiting)
            try:
                while True:
                    if stopped():
                        return False
                    if self._lifted:
                        return True
                    now = time.monotonic()
                    first = self._queue[0] is waiting
                    if self._holder is None and first \
                            and (now >= self._next or (full() if callable(full) else full)):
                        self._holder = holder
                        self._next = now + self.interval
                        return True
                    wait = _WAIT_SLICE if self._holder is not None or not first \
                        else min(_WAIT_SLICE, self._next - now)
                    waiting[1].wait(max(wait, 0.001))
            finally:
                self._queue.remove(waiting)
                self._wake_next()

    def give(self, holder: object) -> None:
        """``holder``'s request is answered (or it has none to make): the next may go."""
        with self._lock:
            if self._holder is holder:
                self._holder = None
                self._wake_next()

    def _wake_next(self) -> None:
        """The first in line, when no one holds the turn (called with the lock held)."""
        if self._holder is None and self._queue:
            self._queue[0][1].notify()


class Paces:
    """One ``Pace`` per kind of sink (by the sink's name), made on first use."""

    def __init__(self, interval: float = INTERVAL) -> None:
        self.interval = interval
        self._paces: Dict[str, Pace] = {}
        self._lock = threading.Lock()
        self._lifted = False

    def get(self, kind: str) -> Pace:
        with self._lock:
            pace = self._paces.get(kind)
            if pace is None:
                pace = self._paces[kind] = Pace(self.interval)
                if self._lifted:
                    pace.lift()
            return pace

    def lift(self) -> None:
        with self._lock:
            self._lifted = True
            paces = list(self._paces.values())
        for pace in paces:
            pace.lift()
