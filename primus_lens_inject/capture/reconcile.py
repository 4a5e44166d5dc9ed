"""One row per step from two views of a followed run: the ``log`` call's, early, and wandb's, late.

A run that uses ``wandb.watch`` or ``define_metric(..., step_metric=...)`` (Hugging Face Trainer,
Lightning and Keras all do) gets values that never pass through ``Run.log``: watch's histograms,
the step metric's last value.  Only wandb's transaction log has them, and wandb-core writes it
about every 15 s.  Waiting for it would make every row ~15 s late and lose the last ~15 s to a
SIGKILL.  But the ``log`` calls of such a run carry wandb's own step (``capture.rows``), so:

1. A call's row is written at once, as a normal line (``early_row``): durable within a second and
   sent within about two, like any plain run's row.
2. When the log shows that step (``log_row``), wandb's row is compared with it.  Equal (the common
   case: Trainer, Lightning and Keras put the step metric in every row themselves): nothing is
   written.  Different (wandb added a key, or its JSON form of a value differs from ours): one
   *amendment line* carries only the differences: the keys wandb added or changed, and
   ``unset``, the keys wandb's row lacks.
3. A step the log shows before any call made it (a row wandb-core writes before the call that
   completes it reached the writer, or the last pending row at the run's end) is written from
   the log as a normal line, and the call's row for that step is then dropped.  A step the log
   shows that no call made (a row only ``watch`` filled) is written from the log too.

Readers fold an amendment into the row of its run and step (``fold``): the record read that way
equals wandb's history.  The senders pass amendment lines over (``recordline.AMENDMENT``): the
server gets exactly one write per step, the early row, as for a plain run.  What it lacks is what
wandb added after the call: the step metric's value on rows that omitted it; watch's histograms
and media never go on the wire anyway.

Everything here runs on the record writer's thread (one ``Reconciler`` per followed run) and
holds no lock and no thread of its own.
"""

from __future__ import annotations

import collections
from typing import Any, Dict, Iterable, List, NamedTuple, OrderedDict, Set, Tuple, Union

from ..recordline import AMENDMENT, OURS, UNSET, amended
from ..values import freeze_value
from .rows import Row

EARLY_ROWS = 20_000  # rows written from calls kept until the log shows their steps


class Amendment(NamedTuple):
    """What wandb's row of ``step`` changes in the row already written for it."""

    step: int
    timestamp: float  # the early row's: the folded row keeps its time
    changes: Dict[str, Any]  # keys wandb added, or whose value it holds differently
    unset: List[str]  # keys of the early row that wandb's row does not have


def same(ours: Any, theirs: Any) -> bool:
    """Whether a value of a call's row (raw or frozen) is the one wandb's row holds (frozen).
    Numbers compare by value (wandb-core writes 1.0 as ``1``); everything else by its frozen
    form, so a NaN matches wandb's ``"NaN"``."""
    number = (int, float)
    if isinstance(ours, number) and isinstance(theirs, number) \
            and isinstance(ours, bool) == isinstance(theirs, bool):
        return ours == theirs
    if type(ours) is dict and type(theirs) is dict:
        return ours.keys() == theirs.keys() and all(same(ours[k], theirs[k]) for k in ours)
    if type(ours) is list and type(theirs) is list:
        return len(ours) == len(theirs) and all(map(same, ours, theirs))
    frozen = freeze_value(ours)
    if frozen is not ours:
        return same(frozen, theirs)
    return type(ours) is type(theirs) and ours == theirs


def difference(early: Dict[str, Any], late: Dict[str, Any]) -> Tuple[Dict[str, Any], List[str]]:
    """(keys ``late`` adds or holds differently, keys of ``early`` that ``late`` lacks); the
    injector's own keys are left alone either way."""
    changes = {key: value for key, value in late.items()
               if key not in early or not same(early[key], value)}
    unset = [key for key in early if key not in late and not key.startswith(OURS)]
    return changes, unset


class Reconciler:
    """The rows of one followed run whose ``log`` calls carry wandb's steps."""

    def __init__(self) -> None:
        # step -> the row written from a call, until the log shows that step
        self._early: OrderedDict[int, Row] = collections.OrderedDict()
        self._forgot_through = -1  # the newest step dropped from ``_early`` unconfirmed
        self._from_log: Set[int] = set()  # steps written from the log before any call made them

    def early_row(self, row: Row) -> bool:
        """A call made ``row``: True when it is to be written now (False: the log wrote it)."""
        if self._from_log:
            self._from_log = {step for step in self._from_log if step >= row.step}
            if row.step in self._from_log:
                self._from_log.discard(row.step)
                return False
        self._early[row.step] = row
        if len(self._early) > EARLY_ROWS:
            self._forgot_through = self._early.popitem(last=False)[0]
        return True

    def log_row(self, row: Row, calls_step: int) -> Union[Row, Amendment, None]:
        """wandb's ``row`` of a step, read from its log, while the run's calls are at
        ``calls_step`` (the step of their next row).  Returns what to write: the row itself
        (a normal line), an ``Amendment``, or None (the early row already says it all)."""
        early = self._early.pop(row.step, None)
        while self._early and next(iter(self._early)) < row.step:
            self._early.popitem(last=False)  # steps wandb did not record: the calls' rows stand
        if early is None:
            if row.step <= self._forgot_through:
                return None  # too old to compare: the early row stands
            if row.step >= calls_step:
                self._from_log.add(row.step)  # a call may still make this step's row: drop it
            return row
        changes, unset = difference(early.data, row.data)
        if not changes and not unset:
            return None
        return Amendment(row.step, early.timestamp, changes, unset)


def fold(lines: Iterable[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The record's rows as wandb's history: each amendment line folded into the row it amends
    (the newest earlier row of its run, writer and step), in file order, amendments removed.
    ``lines`` are parsed record lines; rows are copied, never changed in place."""
    rows: List[Dict[str, Any]] = []
    where: Dict[Tuple[Any, Any, Any], int] = {}
    for line in lines:
        key = (line.get("run_id"), line.get("who"), line.get("step"))
        if not line.get(AMENDMENT):
            where[key] = len(rows)
            rows.append(line)
            continue
        index = where.get(key)
        if index is None:
            continue  # the row it amends is not in these lines (a record cut at its start)
        row = dict(rows[index])
        row["data"] = amended(row["data"], line.get("data", {}), line.get(UNSET, ()))
        rows[index] = row
    return rows
