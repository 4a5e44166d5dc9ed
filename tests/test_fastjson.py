"""The pod agent's JSON (``fastjson``): msgspec where it can be imported gives exactly what the
standard library gives, line by line and body by body; without it, the standard library."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from primus_lens_inject import fastjson, recordline

ROOT = Path(__file__).resolve().parents[1]

# Record lines and what a hostile or broken file may hold instead (each read by both parsers).
LINES = [
    recordline.encode("run-1", 7, 1_700_000_000.25, {"loss": 0.1, "n": {"x": 1}, "s": "é",
                                                     "big": 2 ** 70, "neg": -(2 ** 63) - 1,
                                                     "nan": float("nan"), "t": True})[:-1],
    b'{"a": NaN, "b": Infinity, "c": -Infinity}',
    b'{"a": 1e400, "b": -1e400, "c": 1e-400}',
    b'{"a": "\\ud800", "b": "\\udfff\\ud800"}',
    b'{"a": "\xff\xfe"}',
    b'\xef\xbb\xbf{"a": 1}',
    b'{"a": 1, "a": 2}',
    b' {"a": -0, "b": 1E2, "c": 1.0} \r',
    b'[' * 3000 + b']' * 3000,
    b'{"a": "\\u0000", "b": "\\u2028"}',
    b'{"truncated": ',
    b'',
    b'12345678901234567890123456789',
]


def outcome(load: Any, raw: bytes) -> str:
    """What a parser makes of ``raw``: its value spelled out (NaN compares equal), or that it
    refused it."""
    try:
        return repr(load(raw))
    except (ValueError, RecursionError) as exc:
        return f"refused ({type(exc).__name__})"


@pytest.fixture
def accelerated(monkeypatch: pytest.MonkeyPatch) -> str:
    """msgspec on for this test only."""
    monkeypatch.setattr(fastjson, "_decode", None)
    monkeypatch.setattr(fastjson, "_encode", None)
    found = fastjson.accelerate()
    if not found:
        pytest.skip("msgspec is not installed here")
    return found


def test_msgspec_reads_every_line_as_the_standard_library(accelerated: str) -> None:
    assert accelerated.startswith("msgspec ")
    for raw in LINES:
        assert outcome(fastjson.loads, raw) == outcome(json.loads, raw), raw[:60]
    # and the record's own reader, which turns refusals into an unreadable line
    for raw in LINES:
        line = recordline.decode(raw)
        assert repr(line) == repr(_stdlib_decode(raw)), raw[:60]


def _stdlib_decode(raw: bytes) -> Any:
    saved = fastjson._decode
    fastjson._decode = None
    try:
        return recordline.decode(raw)
    finally:
        fastjson._decode = saved


def test_msgspec_writes_the_same_values(accelerated: str) -> None:
    body = {"source": "wandb", "run_id": "é-\u2028", "logs": [
        {"step": 3, "timestamp": 1_700_000_000.125, "data": {
            "loss": 1e-05, "big": 1e16, "int": 2 ** 62, "huge": 2 ** 70, "neg": -0.0,
            "tiny": 5e-324, "k\x00": 1.5}}]}
    written = fastjson.dumps(body)
    assert json.loads(written) == body
    assert b"NaN" not in written and b"Infinity" not in written
    # a string msgspec cannot write (a lone surrogate) goes through the standard library
    odd = {"k": "\ud800"}
    assert json.loads(fastjson.dumps(odd)) == odd


def test_without_msgspec_the_standard_library(tmp_path: Path) -> None:
    """A process where msgspec cannot be imported (absent, or built for another Python) keeps
    the standard library, and says so."""
    (tmp_path / "msgspec.py").write_text("raise ImportError('built for another Python')\n")
    code = ("from primus_lens_inject import fastjson\n"
            "print(repr(fastjson.accelerate()))\n"
            "print(fastjson.loads(b'{\"a\": NaN}'), fastjson.dumps({'a': 1.5}))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["''", "{'a': nan} b'{\"a\":1.5}'"]


def test_a_training_process_never_loads_msgspec(tmp_path: Path) -> None:
    """Only the agent turns msgspec on: reading and sending records elsewhere imports none."""
    code = ("import sys\n"
            "from primus_lens_inject import recordline\n"
            "from primus_lens_inject.report.lens import wire\n"
            "recordline.decode(b'{\"a\": 1}')\n"
            "wire.logs_bodies({}, 'r', [{'step': 1, 'timestamp': 1.0, 'data': {'a': 1.0}}], 1.0)\n"
            "print('msgspec' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_a_line_nested_beyond_the_parser_is_unreadable_not_an_error() -> None:
    """``recordline.decode`` never raises: a line nested deeper than any parser goes (a hostile
    or corrupt record) is one unreadable line, as a torn one is."""
    deep = b'{"data": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert recordline.decode(deep) is recordline.UNREADABLE
