"""The local record's line format, in one place: what capture writes and every reader parses.

The record (``node_<n>/rank_<r>/wandb_metrics.jsonl``) is the only link between capture and
delivery, so its line is a contract between processes of different versions sharing one file
(an older injector's lines, a newer one's, on one volume).  A line is one strict-JSON object:

``{"timestamp", "step", "run_id", "who", "version", "data"}``

* ``who``: the tag of the writer (``report.owner.Writer``) whose rows these are, so whichever
  process sends a shared record sends each line under its own writer's identity.  A line
  without it (``""``: written before writers were tagged) belongs to the reading process's own
  identity, as the versions that wrote such lines sent them (``report.owner.legacy_writer``).
* ``version``: ``VERSION`` in lines written now; a line without it is version 1 (the same
  fields).  A reader takes a newer line for what its known fields say.
* ``data``: the row, marked as ours (``ENABLED_KEY``); non-finite numbers in their strict-JSON
  spelling (``"NaN"``, ``"Infinity"``: ``values.freeze``).
* An *amendment* line (``AMENDMENT``: 1) carries wandb's later view of a step whose row is
  already in the record (``capture.reconcile``): the keys wandb added or changed in ``data``,
  the keys its row lacks in ``UNSET``.  Readers fold it into that row; senders pass it over.

``decode`` gives a ``Line`` or an ``Unreadable`` with its reason (never raises), so every reader
counts a bad line the same way.  The files kept beside the record are named here too (``sibling``
and ``fallback`` say where), as are the markers the injector puts into rows' data.
"""

from __future__ import annotations

import hashlib
import os
import threading
from typing import Any, Callable, Dict, Iterable, List, NamedTuple, Optional, Tuple, Union

from . import fastjson
from .paths import fallback_root
from .values import STRICT_JSON, freeze

VERSION = 2  # version 1: the same line without the field
VERSION_KEY = "version"
AMENDMENT = "amends"  # the top-level key of an amendment line
UNSET = "unset"  # an amendment's list of keys wandb's row does not have

# Markers in a row's data (never sent as metrics by a sink that drops them; the OTLP sink maps
# the ``_primus_sys_*``/``_primus_gpu_*`` figures, docs/otlp.md).
OURS = "_primus_"  # the prefix of every key the injector adds to a row
ENABLED_KEY = "_primus_lens_enabled"  # in every row of the record, never sent to wandb
APPROX_KEY = "_primus_step_approx"  # in a row whose step wandb may have given differently

# The files kept beside ``wandb_metrics.jsonl`` (``sibling``), each with a per-user fallback
# (``fallback``) when the record's directory cannot hold it.
LOCK_SUFFIX = ".lock"  # the flock of the one process that sends the record
STATUS_SUFFIX = ".status.json"  # the senders' counters, for doctor
WRITERS_SUFFIX = ".writers"  # one JSON file per writer tag (``who``)
DETECTIONS_SUFFIX = ".detections"  # detection reports waiting for the Lens server
DETECTIONS_SENT = "sent"  # in that directory: the last acknowledged report of each job, kept
WRITING_SUFFIX = ".writing"  # shared flocks of the live processes writing the record (liveness)
FIRST_SINK = "rows"  # the Lens rows sink: its cursor keeps the name it always had


def cursor_suffix(sink: str) -> str:
    """The suffix of a sink's acknowledged offset: ``.cursor`` for the Lens rows sink (the
    name older versions wrote), ``.<sink>.cursor`` for every other (``.otlp.cursor``)."""
    return ".cursor" if sink == FIRST_SINK else f".{sink}.cursor"


def sibling(record_path: str, suffix: str) -> str:
    """The file named ``suffix`` kept beside the record."""
    base = record_path[:-len(".jsonl")] if record_path.endswith(".jsonl") else record_path
    return base + suffix


def fallback(record_path: str, suffix: str) -> str:
    """Where a file that belongs beside ``record_path`` goes when it cannot be kept there."""
    key = hashlib.sha1(os.path.abspath(record_path).encode("utf-8", "replace")).hexdigest()[:16]
    return os.path.join(fallback_root(), "reporter", key + suffix)


class Line(NamedTuple):
    """One parsed record line.  Field types are the writer's promise, not checked here beyond
    what every reader needs (a sink checks ``step`` and ``timestamp`` before sending)."""

    run_id: Any
    step: Any
    timestamp: Any
    who: str  # "": an untagged line (the reading process's own identity)
    data: Dict[str, Any]
    amends: bool = False
    unset: Tuple[str, ...] = ()
    version: int = 1


class Unreadable(NamedTuple):
    """A line no reader can use, and why (counted, never sent)."""

    reason: str


Decoded = Union[Line, Unreadable]
UNREADABLE = Unreadable("unreadable record line")


def _marked(data: Dict[str, Any]) -> Dict[str, Any]:
    data[ENABLED_KEY] = True
    return data


def encode(run_id: str, step: int, timestamp: float, data: Dict[str, Any], who: str = "") -> bytes:
    """One row's line, ``data`` marked as ours (in place: the writer owns it).  Rows of plain
    values arrive unfrozen (a NaN still a float): those get their strict-JSON spelling."""
    line = {"timestamp": timestamp, "step": step, "run_id": run_id, "who": who,
            VERSION_KEY: VERSION, "data": _marked(data)}
    try:
        text = STRICT_JSON.encode(line)
    except ValueError:  # a non-finite float
        line["data"] = freeze(data)
        text = STRICT_JSON.encode(line)
    return text.encode("ascii") + b"\n"


def encode_amendment(run_id: str, change: Any, who: str = "") -> bytes:
    """One amendment line; ``change`` has ``step``, ``timestamp`` (the early row's),
    ``changes`` and ``unset`` (``capture.reconcile.Amendment``)."""
    line: Dict[str, Any] = {"timestamp": change.timestamp, "step": change.step, "run_id": run_id,
                            "who": who, VERSION_KEY: VERSION, AMENDMENT: 1,
                            "data": change.changes}
    if change.unset:
        line[UNSET] = change.unset
    return STRICT_JSON.encode(line).encode("ascii") + b"\n"


def amended(data: Dict[str, Any], changes: Dict[str, Any], unset: Iterable[str]) -> Dict[str, Any]:
    """A row's ``data`` with one amendment line folded in (a new dict): the keys wandb added or
    changed (``changes``) over it, the keys its row lacks (``unset``) removed.  The one folding
    rule every reader of the record applies."""
    data = {**data, **changes}
    for name in unset:
        data.pop(name, None)
    return data


def decode(raw: Optional[bytes]) -> Decoded:
    """A line's bytes (without its newline) as a ``Line``, or ``Unreadable``; never raises."""
    try:
        obj = fastjson.loads(raw or b"")
    except (ValueError, TypeError, RecursionError):  # RecursionError: nesting beyond the parser's
        return UNREADABLE
    if type(obj) is not dict:
        return UNREADABLE
    who = obj.get("who") or ""
    version = obj.get(VERSION_KEY, 1)
    if type(who) is not str or type(version) is not int:
        return UNREADABLE
    if obj.get(AMENDMENT):
        unset = obj.get(UNSET) or ()
        data = obj.get("data")
        return Line(obj.get("run_id"), obj.get("step"), obj.get("timestamp"), who,
                    data if type(data) is dict else {}, True,
                    tuple(unset) if type(unset) is list else (), version)
    try:
        data = obj["data"]
        return Line(obj["run_id"], obj["step"], obj["timestamp"], who,
                    data if type(data) is dict else {}, False, (), version)
    except KeyError:
        return UNREADABLE


class HeadCache:
    """The last line decoded by offset: a sink waiting for a batch to fill looks at its oldest
    unsent line on every pass, and an idle sink must not parse the same bytes each time."""

    def __init__(self, decoder: Optional[Callable[[Optional[bytes]], Decoded]] = None) -> None:
        """``decoder``: how a line is read (a sink of another line format passes its own;
        ``decode`` by default)."""
        self._decoder = decoder
        self._key: Tuple[int, int] = (-1, -1)
        self._value: Decoded = UNREADABLE

    def decode(self, end: int, raw: Optional[bytes]) -> Decoded:
        """``decoder(raw)`` for the line ending at ``end`` (the same line: the same result)."""
        key = (end, len(raw) if raw is not None else -1)
        if key != self._key:
            self._value = (self._decoder or decode)(raw)
            self._key = key
        return self._value

    def keep(self, end: int, raw: bytes, value: Decoded) -> None:
        """What the line ending at ``end`` was decoded to elsewhere (a batch that stopped at it:
        the next head), so it is not decoded again."""
        self._key, self._value = (end, len(raw)), value


_SHARED_BYTES = 64 << 10  # bytes of lines one reader decoded kept for the others, per record


class SharedLines:
    """Lines of one record that one of its readers in this process decoded and the others have
    not yet: each line is parsed once for all of them (the Lens and OTLP sinks read the same
    lines about one batch apart, the pod agent's ``/metrics`` within a second or two).  Kept by
    the line's bytes (the same bytes decode the same), each until every other reader took it; at
    most ``limit`` bytes of lines (``_SHARED_BYTES``; the pod agent, whose sinks read a record
    several seconds after its ``/metrics``, keeps one of its batches: ``keep``), the oldest let
    go first (a reader far behind, or stopped, decodes its own).  A decoded line is shared:
    readers never change it."""

    def __init__(self) -> None:
        self.readers = 0  # the readers that decode the record's lines here
        self._lock = threading.Lock()
        self._kept: Dict[bytes, List[Any]] = {}  # line -> [decoded, readers yet to take it]
        self._bytes = 0
        self.limit = _SHARED_BYTES

    def keep(self, limit: int) -> None:
        """Keep at least ``limit`` bytes of lines for the other readers."""
        self.limit = max(self.limit, limit)

    def decode(self, raw: Optional[bytes], decoder: Callable[[Optional[bytes]], Decoded]
               ) -> Decoded:
        """``decoder(raw)``, or what another reader's call made of the same bytes."""
        others = self.readers - 1
        if others < 1 or raw is None:
            return decoder(raw)
        kept = self._kept
        with self._lock:
            found = kept.get(raw)
            if found is not None:
                found[1] -= 1
                if found[1] <= 0:
                    del kept[raw]
                    self._bytes -= len(raw)
                return found[0]  # type: ignore[no-any-return]
        value = decoder(raw)
        with self._lock:
            found = kept.get(raw)
            if found is not None:  # another reader decoded it meanwhile
                found[1] += others
                return value
            kept[raw] = [value, others]
            self._bytes += len(raw)
            while self._bytes > self.limit:
                oldest = next(iter(kept))
                del kept[oldest]
                self._bytes -= len(oldest)
        return value


_SHARED: Dict[str, SharedLines] = {}  # by the record's absolute path
_SHARED_LOCK = threading.Lock()


def shared_lines(record_path: str) -> SharedLines:
    """The ``SharedLines`` of ``record_path`` in this process: a reader adds itself to its
    ``readers`` and decodes through it."""
    key = os.path.abspath(record_path)
    with _SHARED_LOCK:
        found = _SHARED.get(key)
        if found is None:
            found = _SHARED[key] = SharedLines()
        return found


def _forget_shared() -> None:
    """In a forked child: the parent's readers are not there (and a lock may be held)."""
    global _SHARED_LOCK
    _SHARED.clear()
    _SHARED_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_forget_shared)
