"""Every numeric key the owners logged, against wandb's step: the page's line charts.

One chart per key, one line per run that logged it (a key of more than ``MAX_RUNS`` runs, as in a
job whose every rank owns a run: three lines, the lowest, median and highest value of the runs
per column of steps), keys grouped by their prefix (the text before the first ``/``; the
injector's own ``_primus_*`` figures in a group of their own).  Each line is
cut to its share of a page-wide point budget with LTTB (``downsample``), so a job with thousands
of keys still makes a file a browser opens.  Non-finite values (the record's ``"NaN"``,
``"Infinity"`` strings) are counted per key, not drawn.  Values that are not numbers (media,
histograms, tables, strings) are listed by kind.
"""

from __future__ import annotations

import collections
import re
import statistics
from typing import Any, Dict, List, Sequence, Tuple

from ..recordline import ENABLED_KEY, OURS
from .downsample import lttb
from .records import Row, number

MAX_POINTS = 4000  # per line: more than a chart has pixels
MIN_POINTS = 300  # per line, however many keys share the budget
MAX_RUNS = 16  # runs of one key drawn line by line; more: their lowest, median and highest
TOTAL_POINTS = 1_500_000  # per page: ~15 bytes a point keeps the file near 20 MB at worst
_NON_FINITE = ("NaN", "Infinity", "-Infinity")
INJECTOR_GROUP = "injector figures (_primus_*)"
NO_PREFIX = "(no prefix)"


def group_of(key: str) -> str:
    """The prefix group a key is shown in."""
    if key.startswith(OURS):
        return INJECTOR_GROUP
    head, slash, _ = key.partition("/")
    return head if slash and head else NO_PREFIX


def natural(key: str) -> Tuple[Any, ...]:
    """A sort key that puts ``layer2`` before ``layer10``."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part)
                 for part in re.split(r"(\d+)", key))


def kind_of(value: Any) -> str:
    """What a non-numeric value is, as the record spells it (``values.freeze``'s descriptors)."""
    if type(value) is dict:
        kind = value.get("_type")
        return kind if type(kind) is str else "dict"
    return {str: "text", list: "list", bool: "bool", type(None): "null"}.get(type(value), "other")


class Collector:
    """Points per (key, run), gathered row by row."""

    def __init__(self) -> None:
        self.points: Dict[Tuple[str, str], Tuple[List[float], List[float]]] = {}
        self.non_finite: Dict[str, int] = collections.Counter()
        self.others: Dict[Tuple[str, str], int] = collections.Counter()

    def add(self, row: Row) -> None:
        for key, value in row.data.items():
            if key == ENABLED_KEY:
                continue
            if number(value):
                xs, ys = self.points.setdefault((key, row.run_id), ([], []))
                xs.append(row.step)
                ys.append(value)
            elif value in _NON_FINITE or type(value) is float:  # a bare NaN token too
                self.non_finite[key] += 1
            else:
                self.others[(key, kind_of(value))] += 1

    def charts(self) -> Dict[str, Any]:
        """The page's ``metrics`` section: groups of keys, and per key its runs' points."""
        runs: Dict[str, List[str]] = collections.defaultdict(list)
        for key, run in sorted(self.points):
            runs[key].append(run)
        lines = sum(3 if len(of_key) > MAX_RUNS else len(of_key) for of_key in runs.values())
        budget = max(MIN_POINTS, min(MAX_POINTS, TOTAL_POINTS // max(lines, 1)))
        by_key: Dict[str, List[Dict[str, Any]]] = {}
        for key, of_key in runs.items():
            ordered = [_sorted_by_step(*self.points[(key, run)]) for run in of_key]
            if len(of_key) > MAX_RUNS:
                by_key[key] = band(ordered, budget)
                continue
            by_key[key] = []
            for run, (xs, ys) in zip(of_key, ordered):
                shown_x, shown_y = lttb(xs, ys, budget)
                by_key[key].append({"run": run, "x": shown_x, "y": shown_y, "count": len(xs)})
        groups: Dict[str, List[str]] = collections.defaultdict(list)
        for key in sorted(by_key, key=natural):
            groups[group_of(key)].append(key)
        names = sorted(groups, key=lambda name: (name == INJECTOR_GROUP, name == NO_PREFIX, name))
        return {
            "groups": [{"name": name, "keys": groups[name]} for name in names],
            "series": by_key,
            "points_per_line": budget,
            "non_finite": dict(self.non_finite),
            "others": [{"key": key, "kind": kind, "count": count}
                       for (key, kind), count in sorted(self.others.items())],
        }


def band(lines: List[Tuple[List[float], List[float]]], columns: int) -> List[Dict[str, Any]]:
    """The lowest, median and highest value over many runs' lines, per column of equal step
    width: one chart with a line per run would be a smear, and its file huge."""
    low = min(xs[0] for xs, _ in lines)
    high = max(xs[-1] for xs, _ in lines)
    width = (high - low) / columns or 1.0
    cells: List[List[float]] = [[] for _ in range(columns)]
    for xs, ys in lines:
        for x, y in zip(xs, ys):
            cells[min(int((x - low) / width), columns - 1)].append(y)
    steps = [low + (i + 0.5) * width for i, cell in enumerate(cells) if cell]
    full = [sorted(cell) for cell in cells if cell]
    count = sum(len(xs) for xs, _ in lines)
    return [{"run": f"{name} of {len(lines)} runs", "label": True, "x": steps, "count": count,
             "y": [pick(cell) for cell in full]}
            for name, pick in (("lowest", lambda c: c[0]), ("median", statistics.median),
                               ("highest", lambda c: c[-1]))]


def _sorted_by_step(xs: Sequence[float], ys: Sequence[float]) -> Tuple[List[float], List[float]]:
    """The points in step order (a record is in step order per run, but a restarted run that
    resumed at an earlier step is not); for a step logged twice the later value stands."""
    if all(a < b for a, b in zip(xs, xs[1:])):
        return list(xs), list(ys)
    latest = dict(zip(xs, ys))
    steps = sorted(latest)
    return steps, [latest[step] for step in steps]
