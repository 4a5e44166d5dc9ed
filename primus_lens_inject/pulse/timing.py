"""Step times from two readings of the step counter, and the stall threshold they set.

The hook records only the stamps of the last two steps (``steps.StepCounter``); the pulse thread
turns consecutive readings into the figures of a pulse line: the last step's wall time (``last``
minus ``prev``), the interval's mean (the time from the last step of the previous reading to the
last step of this one, over the steps between) and the median of the recent means, which sets the
stall threshold: max(``PRIMUS_LENS_STALL_SECONDS``, ``PRIMUS_LENS_STALL_FACTOR`` x median).  A
mean is a step time too: with steps slower than the interval each mean spans one step.
"""

from __future__ import annotations

import collections
import statistics
from typing import Deque, Optional

RECENT = 64  # interval means kept for the median: minutes to hours of a job's recent pace


class StepTimes:
    """The pulse thread's view of the step times; ``update`` once per reading."""

    def __init__(self) -> None:
        self.last: Optional[float] = None  # seconds: the last step's wall time
        self.mean: Optional[float] = None  # seconds: this interval's mean, None without steps
        self._count = 0  # the previous reading's
        self._stamp = 0.0
        self._means: Deque[float] = collections.deque(maxlen=RECENT)

    def update(self, count: int, last: float, prev: float) -> None:
        """Take a reading: ``count`` steps so far, the last two at ``last`` and ``prev``
        (``time.monotonic()``; ``prev`` is meaningful from the second step on)."""
        self.last = last - prev if count >= 2 and last >= prev else self.last
        if count > self._count and self._count > 0 and last > self._stamp:
            self.mean = (last - self._stamp) / (count - self._count)
            self._means.append(self.mean)
        else:
            self.mean = None
        if count != self._count:
            self._count, self._stamp = count, last

    @property
    def median(self) -> Optional[float]:
        """The median of the recent interval means (None before the first)."""
        return statistics.median(self._means) if self._means else None

    def threshold(self, stall_seconds: float, factor: float) -> float:
        """Seconds without a step that make a stall."""
        median = self.median
        return max(stall_seconds, factor * median) if median is not None else stall_seconds
