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


def write_log(path: str, records: List[bytes]) -> None:
    """A transaction log holding ``records``, chunked as wandb-core chunks them (a record that
    does not fit a block's rest is split into first/middle/last chunks; a block's tail shorter
    than a header is zeros).  The checksums are zero: the injector's reader does not check them."""
    out = bytearray(b"\0" * 7)  # the file header; its content is not read either
    for body in records:
        first = True
        while True:
            left = BLOCK - len(out) % BLOCK
            if left < 7:
                out += b"\0" * left
                continue
            piece, body = body[:left - 7], body[left - 7:]
            kind = (FULL if first else LAST) if not body else (FIRST if first else MIDDLE)
            out += struct.pack("<IHB", 0, len(piece), kind) + piece
            first = False
            if not body:
                break
    with open(path, "wb") as f:
        f.write(out)


def typed_only(path: str, out_path: str) -> int:
    """Rewrite the log at ``path`` into ``out_path`` as a wandb that writes only the typed form
    of history values would: every item's ``value_json`` emptied, its typed ``value`` kept (set
    by wandb's own encoder where wandb-core wrote JSON only, as it does for ``_step``).  Returns
    the number of items rewritten."""
    from wandb.proto import wandb_internal_pb2 as pb
    from wandb.sdk.interface.history_value import set_history_value

    records, items = [], 0
    for body in _records(path):
        record = pb.Record()
        record.ParseFromString(body)
        if record.WhichOneof("record_type") == "history":
            for item in record.history.item:
                if item.WhichOneof("value") is None:
                    set_history_value(item, json.loads(item.value_json), json_form=False,
                                      typed_form=True)
                item.ClearField("value_json")
                items += 1
            body = record.SerializeToString()
        records.append(body)
    write_log(out_path, records)
    return items


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
