"""Reading what one ``node_<n>/rank_<r>`` directory holds, for the report: never raises.

A report is most wanted when something went wrong, so every file is read as it is: a torn or
foreign line is counted (``Skipped``) and passed over, a missing or unreadable side file is an
empty answer.  The record's rows come back as wandb's history (each amendment line folded into
the row it amends, ``recordline``'s rule); the pulse lines as ``pulseline.decode`` gives them.
"""

from __future__ import annotations

import collections
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from .. import pulseline, recordline
from ..paths import record_in
from ..recordline import DETECTIONS_SENT, DETECTIONS_SUFFIX, STATUS_SUFFIX, WRITERS_SUFFIX, sibling

# The pulse fields every reader computes with (``pulseline.decode`` lets a bare NaN token through)
_PULSE_NUMBERS = ("time", "pid", "rank", "local_rank", "node", "world_size")
Tick = Callable[[int], None]  # told how many bytes were read since it was last told


@dataclass
class Skipped:
    """Lines no reader can use, by file kind and reason (the page shows the counts)."""

    counts: Dict[str, int] = field(default_factory=lambda: collections.Counter())

    def add(self, reason: str, count: int = 1) -> None:
        self.counts[reason] += count

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass
class Row:
    """One row of a record as wandb's history has it (amendments folded in)."""

    run_id: str
    who: str
    step: float
    timestamp: float
    data: Dict[str, Any]


def _lines(path: str, tick: Optional[Tick]) -> Iterator[bytes]:
    """The lines of a file (without newlines), the last one too even if torn."""
    try:
        with open(path, "rb") as f:
            for raw in f:
                if tick is not None:
                    tick(len(raw))
                yield raw.rstrip(b"\n")
    except OSError:
        return  # gone, or unreadable: what was read stands


def number(value: Any) -> bool:
    """Whether a value can be drawn: a finite int or float (``json.loads`` takes bare
    NaN/Infinity tokens, which a strict record never holds)."""
    return type(value) is int or (type(value) is float and math.isfinite(value))


def read_rows(record_path: str, skipped: Skipped, tick: Optional[Tick] = None) -> List[Row]:
    """The record's rows in file order, amendments folded into the newest earlier row of their
    run, writer and step; lines without a usable run, step or time are counted in ``skipped``."""
    rows: List[Row] = []
    where: Dict[Tuple[str, str, float], int] = {}
    for raw in _lines(record_path, tick):
        if not raw.strip():
            continue
        line = recordline.decode(raw)
        if isinstance(line, recordline.Unreadable):
            skipped.add("record: " + line.reason)
            continue
        if type(line.run_id) is not str or not number(line.step) or not number(line.timestamp):
            skipped.add("record: a line without a run id, step or time")
            continue
        key = (line.run_id, line.who, line.step)
        if not line.amends:
            where[key] = len(rows)
            rows.append(Row(line.run_id, line.who, line.step, line.timestamp, line.data))
            continue
        index = where.get(key)
        if index is None:
            skipped.add("record: an amendment of a row not in the record")
            continue
        row = rows[index]
        rows[index] = Row(row.run_id, row.who, row.step, row.timestamp,
                          recordline.amended(row.data, line.data, line.unset))
    return rows


def read_pulse(rank_dir: str, skipped: Skipped, tick: Optional[Tick] = None) -> List[Dict[str, Any]]:
    """Every readable pulse line of a rank directory, oldest file first."""
    lines: List[Dict[str, Any]] = []
    for path in pulseline.pulse_files(rank_dir):
        for raw in _lines(path, tick):
            if not raw.strip():
                continue
            line = pulseline.decode(raw)
            if line is None or not all(number(line[name]) for name in _PULSE_NUMBERS):
                skipped.add("pulse: unreadable pulse line")
            else:
                lines.append(line)
    return lines


def _json_file(path: str) -> Any:
    try:
        with open(path, "rb") as f:
            return json.loads(f.read())
    except (OSError, ValueError):
        return None


def read_writers(record_path: str) -> Dict[str, Dict[str, Any]]:
    """tag -> the writer's stored JSON (``report.owner.register``: identity, rank, report,
    key_prefix, reason); writers that cannot be read are left out."""
    directory = sibling(record_path, WRITERS_SUFFIX)
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return {}
    found = {}
    for name in names:
        obj = _json_file(os.path.join(directory, name))
        if name.endswith(".json") and type(obj) is dict:
            found[name[:-len(".json")]] = obj
    return found


def read_status(record_path: str) -> Optional[Dict[str, Any]]:
    """The senders' status file beside the record (``report.status``), if any."""
    obj = _json_file(sibling(record_path, STATUS_SUFFIX))
    return obj if type(obj) is dict else None


def read_detections(record_path: str, sent: bool = False) -> List[Dict[str, Any]]:
    """The detection reports still waiting beside the record (``report.detection_queue``), or
    with ``sent`` the verdicts kept of the last acknowledged report of each job (an acknowledged
    report leaves the queue; ``DetectionQueue.keep_sent``)."""
    directory = sibling(record_path, DETECTIONS_SUFFIX)
    if sent:
        directory = os.path.join(directory, DETECTIONS_SENT)
    try:
        names = sorted(n for n in os.listdir(directory) if n.endswith(".json"))
    except OSError:
        return []
    bodies = (_json_file(os.path.join(directory, name)) for name in names)
    return [body for body in bodies if type(body) is dict]


def size_of(rank_dir: str) -> int:
    """The bytes ``read_rows`` and ``read_pulse`` will read there (for the progress line)."""
    total = 0
    for path in [record_in(rank_dir), *pulseline.pulse_files(rank_dir)]:
        try:
            total += os.path.getsize(path)
        except OSError:
            pass
    return total
