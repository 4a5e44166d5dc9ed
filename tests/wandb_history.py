"""Ground truth for tests: the history rows wandb itself wrote into an offline run's .wandb file.

The file is a LevelDB-style log (a 7-byte header, then 32 KiB blocks of records with a 7-byte
header each: crc32, length, type) of protobuf ``Record`` messages; wandb ≥0.26 ships no reader.
"""

from __future__ import annotations

import glob
import json
import os
import struct
from typing import Any, Dict, List

BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def _records(path: str) -> List[bytes]:
    with open(path, "rb") as f:
        raw = f.read()
    out: List[bytes] = []
    pos, partial = 7, b""
    while pos + 7 <= len(raw):
        left = BLOCK - (pos % BLOCK)
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        body = raw[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == FULL:
            out.append(body)
        elif kind == FIRST:
            partial = body
        elif kind == MIDDLE:
            partial += body
        elif kind == LAST:
            out.append(partial + body)
            partial = b""
    return out


def history(run_dir: str) -> List[Dict[str, Any]]:
    """Rows as {key: value...}: the logged keys and wandb's own (_step, _timestamp, _runtime)."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = glob.glob(os.path.join(run_dir, "*.wandb"))
    rows = []
    for body in _records(path):
        record = pb.Record()
        record.ParseFromString(body)
        if record.WhichOneof("record_type") != "history":
            continue
        row: Dict[str, Any] = {}
        for item in record.history.item:
            path = list(item.nested_key) or [item.key]
            target = row
            for part in path[:-1]:  # nested dicts arrive one leaf per item
                target = target.setdefault(part, {})
            target[path[-1]] = json.loads(item.value_json)
        rows.append(row)
    return rows


def run_dirs(wandb_dir: str) -> List[str]:
    return sorted(glob.glob(os.path.join(wandb_dir, "wandb", "offline-run-*")))


def run_id(run_dir: str) -> str:
    """The run's id, the last part of its directory's name (offline-run-<date>_<time>-<id>)."""
    return os.path.basename(run_dir).rsplit("-", 1)[1]
