"""Following wandb's own history: the rows of a run read back from its transaction log.

Some integrations make rows, or values in rows, that never pass through ``Run.log``: wandb-core
reads tensorboard event files itself and inserts their rows into the history (moving every later
step); ``wandb.watch`` logs its histograms through ``Run._log``; ``define_metric`` with a
``step_metric`` has wandb add the step metric's last value to rows.  Replaying ``log`` calls
cannot see any of it.  wandb writes every history record it makes, with its step, into the run's
transaction log (``run-<id>.wandb`` in the run directory, online and offline); for a run that
uses one of these integrations the record takes its rows from there, which is exact by
construction and costs the training thread nothing.

The file is a LevelDB-style log: a 7-byte file header, then 32 KiB blocks, each holding chunks
with a 7-byte header (crc32, length, type: whole, first, middle, last) of one protobuf
``Record`` each.  wandb-core buffers its writes, so the end of the file may hold half a chunk;
``TransactionLog`` reads complete records only and picks up where it stopped.  Only the record
writer's thread uses these objects.
"""

from __future__ import annotations

import json
import os
import struct
import time
from typing import Any, Dict, List, Optional, Tuple

from ..paths import close_quietly
from ..values import freeze, histogram_summary
from .rows import Row

BLOCK = 32768
_HEADER = 7  # bytes, both the file's header and each chunk's
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4
READ_BYTES = 4 << 20  # the most one poll reads (the rest waits for the next poll)
_WANDB_KEYS = ("_step", "_runtime", "_timestamp")  # wandb's own, not the user's


def transaction_log(run: Any) -> Optional[str]:
    """The path of the run's transaction log; None when wandb writes none (disabled mode), ""
    when this wandb does not say where."""
    for name in ("_settings", "settings"):
        try:
            settings = getattr(run, name)
            if getattr(settings, "_noop", False) or getattr(settings, "mode", "") == "disabled":
                return None
            path = settings.sync_file
        except Exception:
            continue
        if isinstance(path, str) and path:
            return path
    return ""


def record_class() -> Any:
    """wandb's protobuf ``Record`` (already imported by wandb itself), or None."""
    try:
        from wandb.proto import wandb_internal_pb2
    except Exception:
        return None
    return getattr(wandb_internal_pb2, "Record", None)


class TransactionLog:
    """Complete records appended to a wandb transaction log since the last ``read``.

    The file is opened once and read through that descriptor: a log deleted while wandb-core
    writes it keeps growing (wandb-core writes to the same file), and the descriptor still reads
    it.  ``lost`` says why it cannot be followed any more: gone before it was opened, shrunk
    below what was read (truncated), unreadable."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.lost = ""  # why the log cannot be followed ("" while it can)
        self.grew_at = time.monotonic()  # when its size last changed (or reading began)
        self._fd = -1
        self._size = -1
        self._pos = _HEADER  # the next chunk's offset; always at a chunk boundary
        self._partial = b""  # a record's first and middle chunks, waiting for its last

    def close(self) -> None:
        if self._fd >= 0:
            close_quietly(self._fd)
            self._fd = -1

    def _new_bytes(self) -> bytes:
        """What the file holds after ``_pos`` (at most ``READ_BYTES``); sets ``lost``."""
        try:
            if self._fd < 0:
                self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            size = os.fstat(self._fd).st_size
            if size < self._size:  # wandb-core only appends
                self.lost = f"truncated from {self._size} to {size} bytes"
                return b""
            if size != self._size:
                self._size, self.grew_at = size, time.monotonic()
            return os.pread(self._fd, min(READ_BYTES, size - self._pos), self._pos) \
                if size > self._pos else b""
        except FileNotFoundError:
            self.lost = "deleted before it could be read"
        except OSError as exc:
            self.lost = exc.strerror or str(exc)
        return b""

    def read(self) -> List[bytes]:
        if self.lost:
            return []
        raw = self._new_bytes()
        records: List[bytes] = []
        at = 0  # into ``raw``; the file offset is ``self._pos + at``
        while True:
            left = BLOCK - (self._pos + at) % BLOCK
            if left < _HEADER:  # a block's tail too short for a header is padding
                if at + left > len(raw):
                    break
                at += left
                continue
            if at + _HEADER > len(raw):
                break
            _crc, length, kind = struct.unpack_from("<IHB", raw, at)
            if kind == 0 and length == 0:  # zeros: padding to the block's end, or not written yet
                if at + left > len(raw):
                    break
                at += left
                continue
            end = at + _HEADER + length
            if end > len(raw):
                break
            body = raw[at + _HEADER:end]
            at = end
            if kind == FULL:
                records.append(body)
            elif kind == FIRST:
                self._partial = body
            elif kind == MIDDLE:
                self._partial += body
            elif kind == LAST:
                records.append(self._partial + body)
                self._partial = b""
        self._pos += at
        return records


def _summarised(value: Any) -> Any:
    """Histograms (at any depth) as their summary numbers; everything else as it is."""
    if type(value) is not dict:
        return value
    if value.get("_type") == "histogram":
        return histogram_summary(value.get("values") or (),
                                 value.get("packedBins") or value.get("bins") or ())
    return {key: _summarised(item) for key, item in value.items()}


def _item_value(item: Any) -> Any:
    """The value of one ``HistoryItem``.

    Every wandb writes ``value_json``, the value as JSON text.  wandb 0.31 added beside it a
    typed ``oneof value`` (``none``, ``boolean``, ``integer``, ``number``, ``text``, or ``json``
    for what has no scalar case), written with ``x_history_value_encoding="json,typed"``; wandb
    plans to make it the default and to drop the JSON form.  An item with an empty
    ``value_json`` is read from the typed field (never empty: even a JSON empty string is
    ``""`` with its quotes)."""
    text = item.value_json
    if text:
        return json.loads(text)
    try:
        kind = item.WhichOneof("value")
    except ValueError:  # a wandb before 0.31: no typed field, and the JSON form is empty
        kind = None
    if kind is None:
        raise ValueError("a history item without a value")
    if kind == "none":
        return None
    if kind == "json":
        return json.loads(item.json)
    return getattr(item, kind)  # boolean, integer, number, text: the Python value itself


def history_row(history: Any) -> Tuple[int, float, Dict[str, Any]]:
    """(step, timestamp, data) of one ``HistoryRecord``: nested keys rebuilt (wandb-core stores
    a dict, a histogram's JSON too, one leaf per item), wandb's own keys taken out, histograms
    summarised, non-finite numbers spelt as the record spells them."""
    data: Dict[str, Any] = {}
    step: Optional[int] = None
    timestamp = 0.0
    for item in history.item:
        path = list(item.nested_key) or [item.key]
        try:
            value = _item_value(item)
        except ValueError:  # never seen from wandb; the row's other values still count
            value = {"_type": "unreadable"}
        if len(path) == 1 and path[0] in _WANDB_KEYS:
            if path[0] == "_step" and isinstance(value, int):
                step = value
            elif path[0] == "_timestamp" and isinstance(value, (int, float)):
                timestamp = float(value)
            continue
        target = data
        for part in path[:-1]:  # a nested dict arrives one leaf per item
            if type(target.get(part)) is not dict:
                target[part] = {}
            target = target[part]
        target[path[-1]] = value
    if step is None:
        step = history.step.num
    return step, timestamp, freeze(_summarised(data))


class Follower:
    """The rows of one run from its transaction log, from ``first_step`` on (the rows before it
    came from ``log`` calls).  ``ended`` once wandb wrote the run's exit record."""

    def __init__(self, path: str, record_class: Any, first_step: int) -> None:
        self.log = TransactionLog(path)
        self.record_class = record_class  # wandb's ``Record`` message class
        self.first_step = first_step
        self.last_step = first_step - 1  # the newest step read so far
        self.ended = False

    @property
    def lost(self) -> str:
        """Why the log cannot be followed any more ("" while it can)."""
        return self.log.lost

    def idle_since(self, start: float) -> float:
        """Seconds since the file last grew, counting from ``start`` at the earliest."""
        return time.monotonic() - max(start, self.log.grew_at)

    def close(self) -> None:
        self.log.close()

    def poll(self) -> List[Row]:
        rows: List[Row] = []
        for body in self.log.read():
            record = self.record_class()
            try:
                record.ParseFromString(body)
                kind = record.WhichOneof("record_type")
            except Exception:  # a damaged chunk: wandb's own reader skips it too
                continue
            if kind == "exit":
                self.ended = True
            elif kind == "history":
                step, timestamp, data = history_row(record.history)
                if step >= self.first_step and data:
                    rows.append(Row(step, timestamp or time.time(), data))
                    self.last_step = max(self.last_step, step)
        return rows
