"""The record's line format (``recordline``): what the writer encodes, every reader decodes."""

from __future__ import annotations

import json
import math
from typing import Any, Dict, List, NamedTuple

from primus_lens_inject import recordline
from primus_lens_inject.recordline import (
    AMENDMENT,
    ENABLED_KEY,
    UNREADABLE,
    VERSION,
    HeadCache,
    Line,
    Unreadable,
    decode,
    encode,
    encode_amendment,
)


class Change(NamedTuple):
    step: int
    timestamp: float
    changes: Dict[str, Any]
    unset: List[str]


def test_a_row_round_trips_with_its_version_and_mark() -> None:
    raw = encode("run-1", 7, 1.7e9, {"loss": 0.5, "nested": {"a": 1}}, who="abcdef012345")
    assert raw.endswith(b"\n") and raw.count(b"\n") == 1
    line = decode(raw[:-1])
    assert line == Line("run-1", 7, 1.7e9, "abcdef012345",
                        {"loss": 0.5, "nested": {"a": 1}, ENABLED_KEY: True}, False, (), VERSION)
    assert json.loads(raw)["version"] == VERSION == 2


def test_non_finite_numbers_get_their_strict_json_spelling() -> None:
    raw = encode("r", 1, 2.0, {"nan": math.nan, "inf": -math.inf})
    assert b"NaN" in raw and decode(raw).data["nan"] == "NaN"
    assert decode(raw).data["inf"] == "-Infinity"


def test_an_amendment_round_trips() -> None:
    raw = encode_amendment("r", Change(3, 4.5, {"epoch": 1}, ["x", "y"]), "w" * 12)
    line = decode(raw.strip())
    assert isinstance(line, Line) and line.amends
    assert (line.run_id, line.step, line.timestamp, line.who, line.data, line.unset) == \
        ("r", 3, 4.5, "w" * 12, {"epoch": 1}, ("x", "y"))
    assert json.loads(raw)[AMENDMENT] == 1
    assert decode(encode_amendment("r", Change(3, 4.5, {}, []))).unset == ()


def test_a_line_without_version_or_who_is_version_1_and_untagged() -> None:
    old = json.dumps({"timestamp": 1.0, "step": 2, "run_id": "r", "data": {"a": 1}}).encode()
    line = decode(old)
    assert line == Line("r", 2, 1.0, "", {"a": 1}, False, (), 1)


def test_unreadable_lines_say_why_and_never_raise() -> None:
    for raw in (b"", b"{", b"[1, 2]", b"null", None, b'{"step": 1}',
                b'{"run_id": "r", "step": 1, "timestamp": 1, "data": {}, "who": 5}',
                b'{"run_id": "r", "step": 1, "timestamp": 1, "data": {}, "version": "2"}'):
        found = decode(raw)
        assert isinstance(found, Unreadable) and found.reason == UNREADABLE.reason, raw


def test_the_names_beside_the_record() -> None:
    record = "/x/node_0/rank_1/wandb_metrics.jsonl"
    assert recordline.sibling(record, recordline.cursor_suffix("rows")) == \
        "/x/node_0/rank_1/wandb_metrics.cursor"
    assert recordline.sibling(record, recordline.cursor_suffix("otlp")) == \
        "/x/node_0/rank_1/wandb_metrics.otlp.cursor"
    assert recordline.sibling(record, recordline.STATUS_SUFFIX).endswith("wandb_metrics.status.json")
    assert recordline.fallback(record, recordline.LOCK_SUFFIX) != \
        recordline.fallback("/y/wandb_metrics.jsonl", recordline.LOCK_SUFFIX)


def test_the_head_cache_parses_a_line_once() -> None:
    cache = HeadCache()
    raw = encode("r", 1, 2.0, {"a": 1}).strip()
    first = cache.decode(100, raw)
    assert cache.decode(100, raw) is first  # the same object: not parsed again
    other = encode("r", 2, 3.0, {"a": 1}).strip()
    assert cache.decode(200, other).step == 2
    assert cache.decode(300, None) == UNREADABLE
