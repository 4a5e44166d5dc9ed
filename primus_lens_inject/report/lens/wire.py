"""The Lens telemetry-processor's request bodies (spec §9.1, §9.2): ``logs`` bodies of one run's
merged rows under their writer's identity (written by ``fastjson``: msgspec in the pod agent,
which writes every row of the pod), and strict JSON for every body.  A batch too large for one
body is split by steps, one step too large by keys, and the server merges the writes of a step
into one row.  The values in them follow ``sendable``.
"""

from __future__ import annotations

from typing import Any, Dict, List

from ... import fastjson
from ...values import STRICT_JSON
from ..sendable import MAX_BODY, storable


def encode(body: Dict[str, Any]) -> bytes:
    """Strict JSON: ``allow_nan=False`` so a bug can never put a NaN token on the wire."""
    return STRICT_JSON.encode(body).encode("ascii")


def logs_body(ident: Dict[str, str], run_id: str, entries: List[Dict[str, Any]],
              now: float) -> Dict[str, Any]:
    return {"source": "wandb", **ident, "run_id": storable(run_id), "logs": entries,
            "timestamp": now}


def logs_bodies(ident: Dict[str, str], run_id: str, entries: List[Dict[str, Any]], now: float,
                limit: int = MAX_BODY) -> List[bytes]:
    """``entries`` as encoded bodies of at most ``limit`` bytes each, in order: halved by steps
    while a body is too large, a single step halved by keys (only a lone key larger than the
    limit is sent as it is)."""
    body = fastjson.dumps(logs_body(ident, run_id, entries, now))  # finite numbers only (sendable)
    if len(body) <= limit:
        return [body]
    if len(entries) > 1:
        half = len(entries) // 2
        return logs_bodies(ident, run_id, entries[:half], now, limit) \
            + logs_bodies(ident, run_id, entries[half:], now, limit)
    entry = entries[0]
    keys = list(entry["data"])
    if len(keys) < 2:
        return [body]
    half = len(keys) // 2
    return [part for keep in (keys[:half], keys[half:])
            for part in logs_bodies(ident, run_id,
                                    [dict(entry, data={k: entry["data"][k] for k in keep})],
                                    now, limit)]
