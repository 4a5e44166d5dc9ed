"""The job as the report shows it: every rank directory of the record roots read into one model.

The model is plain JSON (it is embedded in the page as is): the job's facts (runs, owners, ranks,
nodes, duration, frameworks, delivery per sink), the numeric keys' charts (``series``), the
ranks' heatmaps (``ranks``), the stalls (``stalls``), the gaps, and the lines no reader could
use.  Everything comes from what is on disk; nothing is asked of a server.
"""

from __future__ import annotations

import collections
import math
import os
import time
from functools import reduce
from typing import Any, Dict, List, Sequence, Set, Tuple

from .. import pulseline
from ..paths import rank_dirs, record_in
from ..recordline import APPROX_KEY
from . import ranks, stalls
from .progress import Progress
from .records import Row, Skipped, read_detections, read_pulse, read_rows, read_status, read_writers, size_of
from .series import Collector

MAX_GAP_RANGES = 50  # missing step ranges listed per run (the count is always complete)
MAX_APPROX_STEPS = 50


def find_rank_dirs(roots: Sequence[str]) -> List[Tuple[str, str]]:
    """(label, directory) of every rank directory under the roots; a root that is itself a rank
    directory (it holds a record or a pulse) counts as one."""
    found: List[Tuple[str, str]] = []
    for root in roots:
        prefix = f"{root}: " if len(roots) > 1 else ""
        if os.path.isfile(record_in(root)) or pulseline.pulse_files(root):
            found.append((prefix + os.path.basename(os.path.abspath(root)), root))
            continue
        for directory in rank_dirs(root):
            node, rank = directory.split(os.sep)[-2:]
            found.append((f"{prefix}{node}/{rank}", directory))
    return found


def _node_of(rank_dir: str) -> int:
    """The node number of a ``node_<n>/rank_<r>`` directory (-1 for another name)."""
    name = os.path.basename(os.path.dirname(os.path.abspath(rank_dir)))
    number = name[len("node_"):]
    return int(number) if name.startswith("node_") and number.isdigit() else -1


class _Run:
    """What the page says about one run: its rows, owners and steps."""

    def __init__(self) -> None:
        self.rows = 0
        self.steps: Set[float] = set()
        self.approx: List[float] = []
        self.first = math.inf
        self.last = -math.inf
        self.owners: Set[str] = set()
        self.where: Set[str] = set()

    def add(self, row: Row, where: str) -> None:
        self.rows += 1
        self.steps.add(row.step)
        self.first = min(self.first, row.timestamp)
        self.last = max(self.last, row.timestamp)
        self.owners.add(row.who)
        self.where.add(where)
        if row.data.get(APPROX_KEY) is True:
            self.approx.append(row.step)


def missing_steps(steps: Set[float]) -> Dict[str, Any]:
    """The steps a run skipped between its first and last, at the stride its steps keep (a run
    that logs every 10th step misses nothing)."""
    ordered = sorted(int(s) for s in steps if float(s).is_integer())
    diffs = [b - a for a, b in zip(ordered, ordered[1:])]
    stride = reduce(math.gcd, diffs, 0) or 1
    gaps = [(a + stride, b - stride) for a, b in zip(ordered, ordered[1:]) if b - a > stride]
    return {"stride": stride, "missing": sum((b - a) // stride + 1 for a, b in gaps),
            "ranges": [list(gap) for gap in gaps[:MAX_GAP_RANGES]]}


def _sinks(status: Dict[str, Any]) -> List[Tuple[str, Dict[str, Any]]]:
    """(sink name, its counters) in a status file: the Lens sink at the top level (where doctor
    has always read it), every other sink under its own name."""
    found = []
    if status.get("endpoint") or status.get("requests"):
        found.append(("lens", status))
    found.extend((name, value) for name, value in sorted(status.items())
                 if type(value) is dict and "acked_offset" in value)
    return found


def pending_lines(record_path: str, offset: Any) -> int:
    """Rows of the record after a sink's acknowledged offset (amendment lines are never sent)."""
    if type(offset) is not int or offset < 0:
        offset = 0
    try:
        with open(record_path, "rb") as f:
            f.seek(offset)
            return sum(1 for raw in f if raw.strip() and b'"amends":1' not in raw)
    except OSError:
        return 0


def delivery(where: str, record_path: str, status: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The page's delivery rows of one record: per sink, acknowledged, pending, dropped."""
    out = []
    for name, sink in _sinks(status):
        dropped = _mapping(sink.get("dropped"))
        out.append({"where": where, "sink": name, "endpoint": str(sink.get("endpoint", "")),
                    "acknowledged": sink.get("rows_sent", 0),
                    "pending": pending_lines(record_path, sink.get("acked_offset")),
                    "dropped": dropped, "last_error": str(sink.get("last_error", "")),
                    "state": str(sink.get("state", "")), "updated": status.get("updated")})
    record = status.get("record")
    if type(record) is dict and record:  # rows capture could not write to the record at all
        out.append({"where": where, "sink": "record", "endpoint": record_path, "acknowledged": None,
                    "pending": None, "dropped": record, "last_error": "", "state": "",
                    "updated": status.get("updated")})
    return out


def _mapping(value: Any) -> Dict[str, Any]:
    """``value`` when it is a JSON object, else an empty one (a file of another shape)."""
    return value if type(value) is dict else {}


def frameworks(where: str, body: Dict[str, Any], sent: bool = False) -> Dict[str, Any]:
    """A detection report's verdict and the indicators it rests on: one still waiting, or with
    ``sent`` the kept verdict of one the server acknowledged (``acknowledged``: when)."""
    hints = _mapping(body.get("hints"))
    wandb = _mapping(_mapping(body.get("evidence")).get("wandb"))
    acknowledged: Any = body.get("acknowledged") if sent else None
    return {"where": where, "run": str(wandb.get("id", "")),
            "wrappers": hints.get("wrapper_frameworks", []), "bases": hints.get("base_frameworks", []),
            "confidence": hints.get("confidence", ""), "why": hints.get("primary_indicators", []),
            "state": "acknowledged" if sent else "waiting",
            "acknowledged": acknowledged if type(acknowledged) in (int, float)
            and math.isfinite(acknowledged) else None}


def build(roots: Sequence[str], progress_stream: Any = None) -> Dict[str, Any]:
    """The page's model of every rank directory under ``roots``."""
    found = find_rank_dirs(roots)
    progress = Progress(sum(size_of(d) for _, d in found), len(found), progress_stream)
    skipped = Skipped()
    collector = Collector()
    runs: Dict[str, _Run] = collections.defaultdict(_Run)
    owners: List[Dict[str, Any]] = []
    sinks: List[Dict[str, Any]] = []
    detected: List[Dict[str, Any]] = []
    detections_sent = 0
    pulse: List[Dict[str, Any]] = []
    times: List[float] = []
    for where, directory in found:
        record = record_in(directory)
        rows = read_rows(record, skipped, progress.tick)
        for row in rows:
            collector.add(row)
            runs[row.run_id].add(row, where)
        if rows:
            times.extend((min(r.timestamp for r in rows), max(r.timestamp for r in rows)))
        for tag, writer in read_writers(record).items():
            owners.append({"where": where, "tag": tag, **writer,
                           "runs": sorted({r.run_id for r in rows if r.who == tag})})
        status = read_status(record)
        if status:
            sinks.extend(delivery(where, record, status))
            sent = status.get("detections_sent")
            detections_sent += sent if type(sent) is int else 0
        detected.extend(frameworks(where, body, sent=True)
                        for body in read_detections(record, sent=True))
        detected.extend(frameworks(where, body) for body in read_detections(record))
        lines = read_pulse(directory, skipped, progress.tick)
        times.extend(line["time"] for line in lines)
        pulse.extend(lines)
        progress.directory_done()
    progress.finish()
    labels = {int(x["rank"]): f"rank {int(x['rank'])} (node {x['node']}, local {x['local_rank']})"
              for x in pulse}
    global_ranks = set(labels) | {o["rank"] for o in owners if type(o.get("rank")) is int}
    nodes = {int(x["node"]) for x in pulse} | {_node_of(directory) for _, directory in found}
    nodes.discard(-1)
    run_list = [{"id": run_id, "rows": run.rows, "first": run.first, "last": run.last,
                 "steps": [min(run.steps), max(run.steps)], "owners": sorted(run.owners),
                 "where": sorted(run.where)} for run_id, run in sorted(runs.items())]
    gaps = [{"run": run_id, **missing_steps(run.steps), "approx": len(run.approx),
             "approx_steps": sorted(run.approx)[:MAX_APPROX_STEPS]}
            for run_id, run in sorted(runs.items())]
    return {
        "generated": time.time(),
        "roots": [os.path.abspath(root) for root in roots],
        "job": {"runs": run_list, "owners": owners, "rank_dirs": [w for w, _ in found],
                "ranks": len(global_ranks) or len(found), "nodes": len(nodes),
                "start": min(times) if times else None, "end": max(times) if times else None,
                "frameworks": detected, "detections_sent": detections_sent, "delivery": sinks},
        "metrics": collector.charts(),
        "ranks": ranks.heatmaps(pulse, labels),
        "stalls": stalls.events(pulse),
        "gaps": gaps,
        "skipped": {"total": skipped.total, "reasons": dict(skipped.counts)},
    }


def printable(text: str) -> str:
    """A record's text for a terminal: control characters, escape sequences and line
    separators (a run id is whatever the script passed) shown as ``\\uXXXX``."""
    return "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in text)


def summary(model: Dict[str, Any]) -> List[str]:
    """The five lines ``primus-lens report`` prints: runs, ranks, rows, stalls, delivery."""
    job = model["job"]
    rows = sum(run["rows"] for run in job["runs"])
    stalled = sorted({r["rank"] for event in model["stalls"] for r in event["ranks"]})
    sinks: Dict[str, List[int]] = {}
    for sink in job["delivery"]:
        if sink["sink"] != "record":
            figures = sinks.setdefault(sink["sink"], [0, 0, 0])
            figures[0] += sink["acknowledged"] if type(sink["acknowledged"]) is int else 0
            figures[1] += sink["pending"] or 0
            figures[2] += sum(v for v in sink["dropped"].values() if type(v) is int)
    lost = sum(sum(v for v in s["dropped"].values() if type(v) is int)
               for s in job["delivery"] if s["sink"] == "record")
    seconds = (job["end"] - job["start"]) if job["start"] is not None else 0.0
    return [
        f"runs:     {len(job['runs'])} ({', '.join(printable(r['id']) for r in job['runs'][:5])}"
        f"{', ...' if len(job['runs']) > 5 else ''}) over {seconds:.1f} s",
        f"ranks:    {job['ranks']} on {job['nodes']} node(s), {len(job['rank_dirs'])} rank "
        f"directories, pulse from {len(model['ranks']['ranks']) if model['ranks'] else 0}",
        f"rows:     {rows} ({model['skipped']['total']} unreadable lines skipped)",
        f"stalls:   {len(model['stalls'])}" + (f" (ranks {', '.join(map(str, stalled))})"
                                               if stalled else ""),
        "delivery: " + ("; ".join(f"{name}: {a} acknowledged, {p} pending, {d} dropped"
                                  for name, (a, p, d) in sorted(sinks.items()))
                        or "no sink status (nothing was sent from these records)")
        + (f"; {lost} rows the record could not take" if lost else ""),
    ]

