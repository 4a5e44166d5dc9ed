"""The rank pulse's line format, in one place: what every rank writes and every reader parses.

Each process of a distributed job (every rank, not only the one that owns a wandb run) writes a
line every ``PRIMUS_LENS_PULSE_INTERVAL`` seconds to ``pulse.jsonl`` in its record's directory
(``node_<n>/rank_<r>/``, ``pulse_path``), and two kinds of events when it stops stepping and when
it steps again.  The pod agent exports the lines (``/metrics``, OTLP) and ``primus-lens report``
draws them; nothing sends them from the training process.  A line is one strict-JSON object:

``{"kind", "version", "time", "pid", "rank", "local_rank", "node", "world_size", ...}``

* ``kind`` ``pulse``: ``steps`` (optimizer steps this process completed), ``step_last`` and
  ``step_mean`` (seconds: the last step's wall time and the interval's mean, ``null`` before two
  steps), ``step_median`` (seconds, the median of recent steps), ``wandb_step`` and ``run_id``
  (the owner's wandb step and run, ``null`` in a process without a run), ``figures`` (the
  sampler's ``_primus_sys_*`` / ``_primus_gpu_*`` figures of this process), ``step_source``
  (``optimizer``, ``wandb`` or ``none``: what counts ``steps``), ``stalled`` (a stall is in
  progress).
* ``kind`` ``stall``: ``since`` (the time of the last step), ``threshold`` (seconds), ``steps``,
  ``stacks`` (every thread's Python stack, ``faulthandler``'s text), ``threads`` (thread names
  by the ids the text prints), ``source`` (how the stacks were taken: ``pulse``, or ``watchdog``
  while a thread held the GIL).
* ``kind`` ``recovery``: ``since`` (when the stall began), ``stalled`` (seconds), ``steps``.

A file is bounded: at ``MAX_BYTES`` the writer moves it to ``pulse.jsonl.1`` (one older file
kept); readers read that first (``pulse_files``).  ``decode`` gives a dict with the common fields
checked, or ``None`` (never raises), so every reader counts a bad line the same way.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional

from .values import STRICT_JSON

VERSION = 1
PULSE = "pulse"
STALL = "stall"
RECOVERY = "recovery"
KINDS = (PULSE, STALL, RECOVERY)
FILE_NAME = "pulse.jsonl"
ROTATED = FILE_NAME + ".1"
MAX_BYTES = 5 << 20  # per file: two files keep a rank's pulse under 10 MB
_COMMON = ("time", "pid", "rank", "local_rank", "node", "world_size")


def pulse_path(record_path: str) -> str:
    """The pulse file of the process whose record is ``record_path`` (the same directory)."""
    return os.path.join(os.path.dirname(record_path), FILE_NAME)


def pulse_files(rank_dir: str) -> List[str]:
    """The pulse files of one ``node_<n>/rank_<r>`` directory, oldest first, those that exist."""
    names = (os.path.join(rank_dir, ROTATED), os.path.join(rank_dir, FILE_NAME))
    return [name for name in names if os.path.isfile(name)]


def encode(kind: str, fields: Dict[str, Any]) -> bytes:
    """One line: ``fields`` must hold the common fields; non-finite numbers are refused by the
    strict encoder, so a writer passes figures through ``values.freeze`` first."""
    line = {"kind": kind, "version": VERSION, **fields}
    return STRICT_JSON.encode(line).encode("ascii") + b"\n"


def decode(raw: Optional[bytes]) -> Optional[Dict[str, Any]]:
    """A line's bytes (without its newline) as a dict whose ``kind`` is known and whose common
    fields are numbers, or ``None``.  A newer version's line is read for what its known fields
    say."""
    try:
        obj = json.loads(raw or b"")
    except (ValueError, TypeError):
        return None
    if type(obj) is not dict or obj.get("kind") not in KINDS \
            or type(obj.get("version")) is not int:
        return None
    for name in _COMMON:
        value = obj.get(name)
        if type(value) not in (int, float):
            return None
    return obj
