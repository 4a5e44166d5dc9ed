"""Assembling ``wandb.log`` calls into the rows wandb records, with wandb's own step rules.

wandb commits a row when ``commit`` is true, or when it is omitted and no ``step`` was given;
``commit=False`` (and an explicit ``step`` without ``commit``) accumulate into the pending row;
a larger explicit ``step`` first commits what is pending; a smaller one is dropped (wandb warns
"Steps must be monotonically increasing").  ``RunRows`` replays exactly that, so the record has
one line per row wandb recorded, with the step wandb gave it.  Only the record writer's drainer
calls it (one at a time, in call order), so it needs no lock of its own.
"""

from __future__ import annotations

import time
from typing import Any, Dict, List, NamedTuple, Optional

APPROX_KEY = "_primus_step_approx"  # in a row whose step wandb may have given differently


class Row(NamedTuple):
    """One row wandb recorded, as the record keeps it."""

    step: int
    timestamp: float  # seconds since the epoch: the time of the call that completed the row
    data: Dict[str, Any]  # frozen values


class RunRows:
    """The step counter and pending row of one wandb run; safe to use from several threads."""

    def __init__(self, run_id: str, start_step: int = 0) -> None:
        self.run_id = run_id
        self.step = start_step
        self.finished = False  # the writer made the last row
        self.closed = False  # the run ended (set on the training thread; later calls are ignored)
        self.dropped = 0  # calls wandb itself discards (step below the current step)
        self.who = ""  # the writer's tag in every record line (``owner.Writer.tag``)
        # Set on the training thread when the run's rows start coming from wandb's transaction
        # log (``capture.history``): its ``log`` calls are no longer queued.
        self.followed = False
        self.queue_calls = True  # False once only wandb's log knows the steps (tensorboard),
        # True again when that log is lost (set by the writer, ``record.RecordWriter._unfollow``)
        self.follower: Any = None  # the writer thread's ``history.Follower``
        # The writer's ``reconcile.Reconciler`` of a followed run whose calls still make rows
        # (they carry wandb's steps): their rows are written at once, and wandb's log amends them.
        self.reconciler: Any = None
        self.approx = ""  # why this run's steps may differ from wandb's ("" when they do not)
        self.log_end_by = 0.0  # at the run's end, wait until this ``time.monotonic()`` for
        # wandb to write the rest of a followed run's log (its exit record)
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
        """For a forked child: same step, nothing pending (the parent owns that row)."""
        copy = RunRows(self.run_id, self.step)
        copy.finished = self.finished
        copy.closed = self.closed
        copy.who = self.who
        copy.followed = self.followed  # the parent's reader of wandb's log has those rows
        copy.queue_calls = self.queue_calls and not self.followed
        copy.approx = self.approx
        return copy
