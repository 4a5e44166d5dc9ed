"""Assembling ``wandb.log`` calls into the rows wandb records, with wandb's own step rules.

wandb commits a row when ``commit`` is true, or when it is omitted and no ``step`` was given;
``commit=False`` (and an explicit ``step`` without ``commit``) accumulate into the pending row;
a larger explicit ``step`` first commits what is pending; a smaller one is dropped (wandb warns
"Steps must be monotonically increasing").  ``RunRows`` replays exactly that, so the record has
one line per row wandb recorded, with the step wandb gave it.  Made on the training thread before
the run's first queued item, it is from then on read and changed only by the record writer's
thread (one call at a time, in call order), so it needs no lock of its own; what the training
thread knows of a run lives on its side (``session.Tracked``).
"""

from __future__ import annotations

import time
from typing import Any, Dict, List, NamedTuple, Optional

from ..recordline import APPROX_KEY as APPROX_KEY  # the mark's home is the line format's


class Row(NamedTuple):
    """One row wandb recorded, as the record keeps it."""

    step: int
    timestamp: float  # seconds since the epoch: the time of the call that completed the row
    data: Dict[str, Any]  # frozen values


class RunRows:
    """The step counter and pending row of one wandb run, as the record writer replays them."""

    def __init__(self, run_id: str, start_step: int = 0, who: str = "") -> None:
        self.run_id = run_id
        self.who = who  # the writer's tag in every record line (``owner.Writer.tag``)
        self.step = start_step
        self.finished = False  # the writer made the last row
        self.dropped = 0  # calls wandb itself discards (step below the current step)
        # The ``history.Follower`` of a run whose rows come (also) from wandb's transaction log
        self.follower: Any = None
        # The ``reconcile.Reconciler`` of a followed run whose calls still make rows (they carry
        # wandb's steps): their rows are written at once, and wandb's log amends them.  A followed
        # run without one (tensorboard) takes its rows from the log alone.
        self.reconciler: Any = None
        self.followed = False  # ever followed: its end is said (``followed_run_end``) even when
        # its log was lost on the way
        self.approx = ""  # why this run's steps may differ from wandb's ("" when they do not)
        self._pending: Dict[str, Any] = {}
        self._pending_ts = 0.0

    def log(self, data: Dict[str, Any], step: Optional[int], commit: Optional[bool],
            now: Optional[float] = None) -> List[Row]:
        """Account for one successful ``log`` call; return the rows it completed (0, 1 or 2)."""
        done: List[Row] = []
        if self.finished:
            return done
        if step is not None:
            if step < self.step:
                self.dropped += 1
                return done
            if step > self.step:
                self._take(done)
                self.step = step
        now = time.time() if now is None else now
        if commit is None:
            commit = step is None
        if commit and not self._pending:  # the common case: one call, one row
            if data:
                done.append(Row(self.step, now, data))
            self.step += 1
            return done
        self._pending.update(data)
        self._pending_ts = now
        if commit:
            self._take(done)
            self.step += 1
        return done

    def follow(self, follower: Any, reconciler: Any) -> None:
        """From here on wandb's log (``follower``, ``capture.history``) has the run's rows.  With
        a ``reconciler`` the calls' rows are still made, and compared with the log's; without
        one (tensorboard: the calls do not know wandb's steps) only the log makes rows, and what
        is pending is wandb's pending row too, which it will record at ``self.step``."""
        self.follower = follower
        self.reconciler = reconciler
        self.followed = True
        if reconciler is None:
            self._pending = {}

    def finish(self) -> List[Row]:
        """The run ends: what is pending becomes the last row, and later calls are ignored."""
        done: List[Row] = []
        if not self.finished:
            self.finished = True
            self._take(done)
        return done

    def _take(self, done: List[Row]) -> None:
        if self._pending:
            done.append(Row(self.step, self._pending_ts, self._pending))
            self._pending = {}

    def forked_copy(self) -> RunRows:
        """For a forked child (where the parent's writer thread does not exist, so nothing else
        reads this): same step, nothing pending (the parent owns that row)."""
        copy = RunRows(self.run_id, self.step, self.who)
        copy.finished = self.finished
        copy.approx = self.approx
        return copy
