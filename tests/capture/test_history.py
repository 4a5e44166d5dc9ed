"""Reading wandb's transaction log as wandb-core writes it: in pieces, across 32 KiB blocks.

The file comes from a real offline wandb run (rows large enough that records span blocks and
are split into first/middle/last chunks); the reader is checked against the tests' own,
independent reader (tests/wandb_history.py), whole and fed the file a few bytes at a time.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import textwrap
import time
from typing import Any, Dict, List

import pytest
import wandb_history

from primus_lens_inject.capture.calls import NO_SAMPLE, Approximate, EndOfRun, Follow, control
from primus_lens_inject.capture.history import BLOCK, Follower, TransactionLog, history_row
from primus_lens_inject.capture.record import RecordWriter
from primus_lens_inject.capture.rows import APPROX_KEY, RunRows

ROWS = 40

SCRIPT = textwrap.dedent(f"""
    import wandb
    run = wandb.init(project="history")
    for i in range({ROWS}):
        # every 7th row holds 50 kB: its record spans blocks (first, middle, last chunks)
        run.log({{"loss": 1.0 / (i + 1), "nested": {{"a": i}},
                 "text": "x" * (50_000 if i % 7 == 3 else 10),
                 "hist": wandb.Histogram([1, 2, 2, 3, i])}})
    run.finish()
""")


def wandb_log(tmp_path_factory: pytest.TempPathFactory, name: str, script: str) -> str:
    """The transaction log of ``script`` run by wandb alone, offline: the ground truth, not our
    output (no injector on the path)."""
    wandb_dir = str(tmp_path_factory.mktemp(name))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "PRIMUS_LENS_"))}
    env.update(WANDB_MODE="offline", WANDB_DIR=wandb_dir, WANDB_SILENT="true")
    env.pop("PYTHONPATH", None)
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=120)
    (run_dir,) = wandb_history.run_dirs(wandb_dir)
    (path,) = glob.glob(os.path.join(run_dir, "*.wandb"))
    return path


@pytest.fixture(scope="module")
def transaction_log(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = wandb_log(tmp_path_factory, "wandb", SCRIPT)
    assert os.path.getsize(path) > 4 * BLOCK  # records really cross blocks
    return path


TYPED_SCRIPT = textwrap.dedent("""
    import wandb
    settings = wandb.Settings(x_history_value_encoding="json,typed")
    run = wandb.init(project="history", settings=settings)
    run.define_metric("val/*", step_metric="epoch")  # wandb-core adds epoch to val rows
    for i in range(12):
        run.log({"loss": 1.0 / (i + 1), "whole": 2.0, "n": i, "flag": i % 2 == 0, "name": "x" * i,
                 "none": None, "gap": float("nan"), "inf": float("-inf"), "wide": 2 ** 70,
                 "list": [i, 0.5], "nested": {"a": i, "b": {"c": "d"}}, "epoch": i // 4,
                 "hist": wandb.Histogram([1, 2, 2, 3, i])})
        if i % 4 == 3:
            run.log({"val/acc": i / 12})
    run.finish()
""")


@pytest.fixture(scope="module")
def typed_log(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A real wandb 0.31 run's log with both forms of every logged value (``json,typed``)."""
    return wandb_log(tmp_path_factory, "typed", TYPED_SCRIPT)


def test_both_history_encodings_give_the_same_rows(typed_log: str, tmp_path: Any) -> None:
    """wandb 0.31's typed values: a log written with ``json,typed`` reads as wandb's JSON
    history, and the same log rewritten typed-only (no ``value_json`` at all) reads the same."""
    from wandb.proto import wandb_internal_pb2 as pb

    typed = [pb.Record.FromString(body) for body in TransactionLog(typed_log).read()]
    kinds = {item.WhichOneof("value") for record in typed if record.HasField("history")
             for item in record.history.item}
    assert kinds >= {"none", "boolean", "integer", "number", "text", "json"}  # wandb wrote both
    both = _rows(Follower(typed_log, _record_class(), 0))
    truth = wandb_history.history(os.path.dirname(typed_log))
    assert len(both) == len(truth) == 15
    for row, want in zip(both, truth):
        assert row["_step"] == want["_step"]
        want = {k: v for k, v in want.items() if k not in ("_step", "_runtime", "_timestamp")}
        assert row.keys() - {"_step"} == want.keys()
        for key in ("loss", "n", "flag", "name", "none", "list", "nested", "epoch", "val/acc"):
            assert row.get(key) == want.get(key), key
    assert [row.get("epoch") for row in both if "val/acc" in row] == [0, 1, 2]  # wandb-core's
    train = [row for row in both if "loss" in row]
    assert {row["gap"] for row in train} == {"NaN"} and {row["inf"] for row in train} == {"-Infinity"}

    rewritten = str(tmp_path / "typed-only.wandb")
    assert wandb_history.typed_only(typed_log, rewritten) > 15 * 10
    assert all(not item.value_json for body in TransactionLog(rewritten).read()
               for item in pb.Record.FromString(body).history.item)
    follower = Follower(rewritten, _record_class(), 0)
    only_typed = _rows(follower)
    assert follower.ended
    assert only_typed == both
    assert "unreadable" not in json.dumps(only_typed)
    # the typed form keeps a float a float where wandb-core's JSON text dropped the ".0"
    assert [type(row["whole"]) for row in only_typed if "loss" in row] == [float] * 12


def _rows(follower: Follower) -> List[Dict[str, Any]]:
    return [{"_step": row.step, **row.data} for row in follower.poll()]


def _record_class() -> Any:
    from wandb.proto import wandb_internal_pb2

    return wandb_internal_pb2.Record


def test_whole_file_gives_wandbs_history(transaction_log: str) -> None:
    follower = Follower(transaction_log, _record_class(), 0)
    rows = _rows(follower)
    expected = wandb_history.history(os.path.dirname(transaction_log))
    assert [row["_step"] for row in rows] == list(range(ROWS))
    assert [row["loss"] for row in rows] == [e["loss"] for e in expected]
    assert [row["nested"] for row in rows] == [{"a": i} for i in range(ROWS)]
    assert [len(row["text"]) for row in rows] == [len(e["text"]) for e in expected]
    # the histogram's JSON (one leaf per item in the file) is summarised once rebuilt
    assert rows[4]["hist"] == {"_type": "histogram", "bins": 64, "min": 1.0, "max": 4.0,
                               "count": 5}
    assert follower.ended  # the exit record was read


@pytest.mark.parametrize("piece", [1, 7, 997, BLOCK - 3])
def test_growing_file_read_in_pieces_loses_and_repeats_nothing(
        transaction_log: str, tmp_path: Any, piece: int) -> None:
    with open(transaction_log, "rb") as f:
        content = f.read()
    growing = tmp_path / "run.wandb"
    reader = TransactionLog(str(growing))
    got: List[bytes] = []
    # byte by byte is slow in Python; one-byte pieces cover the file's first blocks only
    end = min(len(content), 2 * BLOCK + 100) if piece == 1 else len(content)
    with open(growing, "wb", buffering=0) as out:
        for start in range(0, end, piece):
            out.write(content[start:min(start + piece, end)])
            got += reader.read()
    whole = TransactionLog(transaction_log).read()
    assert got == whole[:len(got)]
    if end == len(content):
        assert got == whole
    else:
        assert len(got) >= 3  # the first blocks hold the run's opening records


def test_rows_before_the_first_step_are_left_to_the_log_calls(transaction_log: str) -> None:
    rows = _rows(Follower(transaction_log, _record_class(), 25))
    assert [row["_step"] for row in rows] == list(range(25, ROWS))


def test_a_missing_file_cannot_be_followed(tmp_path: Any) -> None:
    """The session follows a log only once it exists: missing later, it was deleted."""
    follower = Follower(str(tmp_path / "absent.wandb"), _record_class(), 0)
    assert follower.poll() == [] and not follower.ended
    assert follower.lost == "deleted before it could be read"


def test_a_deleted_log_is_read_to_its_end_and_a_truncated_one_is_given_up(
        transaction_log: str, tmp_path: Any) -> None:
    with open(transaction_log, "rb") as f:
        content = f.read()
    whole = TransactionLog(transaction_log).read()
    path = tmp_path / "run.wandb"
    with open(path, "wb", buffering=0) as writer:  # wandb-core's descriptor
        writer.write(content[:len(content) // 2])
        reader = TransactionLog(str(path))
        got = reader.read()
        os.unlink(path)
        writer.write(content[len(content) // 2:])  # wandb-core goes on writing the deleted file
        got += reader.read()
    assert got == whole and not reader.lost
    reader.close()

    path.write_bytes(content)
    reader = TransactionLog(str(path))
    assert reader.read() == whole
    os.truncate(path, len(content) // 3)
    assert reader.read() == [] and reader.lost == (
        f"truncated from {len(content)} to {len(content) // 3} bytes")
    path.write_bytes(content)  # grown again: given up all the same
    assert reader.read() == []
    reader.close()


def test_history_row_rebuilds_nested_keys_and_spells_non_finite_numbers() -> None:
    from wandb.proto import wandb_internal_pb2 as pb

    history = pb.HistoryRecord()
    for path, value in ((["_step"], "5"), (["_timestamp"], "1700000000.5"), (["_runtime"], "3"),
                        (["train", "loss"], "0.25"), (["train", "gap"], "NaN"),
                        (["h", "_type"], '"histogram"'), (["h", "values"], "[2, 3]"),
                        (["h", "packedBins"], '{"min": -1.0, "size": 0.5, "count": 2}'),
                        (["bad"], "{not json")):
        item = history.item.add()
        if len(path) == 1:
            item.key = path[0]
        else:
            item.nested_key.extend(path)
        item.value_json = value
    step, timestamp, data = history_row(history)
    assert (step, timestamp) == (5, 1700000000.5)
    assert data == {"train": {"loss": 0.25, "gap": "NaN"},
                    "h": {"_type": "histogram", "bins": 2, "min": -1.0, "max": 0.0, "count": 5},
                    "bad": {"_type": "unreadable"}}


def test_rows_whose_step_wandb_may_have_given_differently_are_marked(tmp_path: Any) -> None:
    """A tensorboard run whose transaction log cannot be read (session.follow says so once):
    its rows come from the log calls, and each carries ``_primus_step_approx`` = 1, a number,
    so the wire sends the mark too."""
    writer = RecordWriter(str(tmp_path / "wandb_metrics.jsonl"))
    writer.start()
    exact, approximate = RunRows("exact"), RunRows("approx")
    writer.append(control(approximate, Approximate("tensorboard sync")))  # as session.follow
    for rows in (exact, approximate):
        for i in range(3):
            writer.append((rows, {"i": i}, None, None, time.time(), NO_SAMPLE))
        writer.append(control(rows, EndOfRun(0.0)))
    writer.close(time.monotonic() + 10)
    assert writer.closed
    lines = [json.loads(line) for line in (tmp_path / "wandb_metrics.jsonl").read_text().splitlines()]
    marks = {(line["run_id"], line["step"]): line["data"].get(APPROX_KEY) for line in lines}
    assert marks == {("exact", 0): None, ("exact", 1): None, ("exact", 2): None,
                     ("approx", 0): 1, ("approx", 1): 1, ("approx", 2): 1}


def test_a_tensorboard_run_whose_log_is_lost_goes_on_from_its_calls_marked(
        transaction_log: str, tmp_path: Any, capsys: pytest.CaptureFixture) -> None:
    """Its calls make no rows while the log is followed (they do not know wandb's steps); once
    the log is lost they do again, counted on from the last step the log showed, each row marked
    approximate."""
    with open(transaction_log, "rb") as f:
        content = f.read()
    log_path = tmp_path / "run.wandb"
    log_path.write_bytes(content)
    record = tmp_path / "wandb_metrics.jsonl"
    writer = RecordWriter(str(record))
    writer.start()
    rows = RunRows("tb")
    writer.append(control(rows, Follow(str(log_path), _record_class(), False)))  # tensorboard
    writer.append((rows, {"ignored": 1}, None, None, time.time(), NO_SAMPLE))  # the log has it
    assert writer.flush(time.monotonic() + 30)
    os.truncate(log_path, 100)
    assert writer.flush(time.monotonic() + 30)
    assert rows.follower is None  # lost: its calls make rows again
    for i in range(3):
        writer.append((rows, {"i": i}, None, None, time.time(), NO_SAMPLE))
    writer.append(control(rows, EndOfRun(0.0)))
    writer.close(time.monotonic() + 30)
    assert writer.closed
    lines = [json.loads(line) for line in record.read_text().splitlines()]
    assert [line["step"] for line in lines] == list(range(ROWS + 3))
    assert [line["data"].get(APPROX_KEY) for line in lines] == [None] * ROWS + [1] * 3
    said = [line for line in capsys.readouterr().err.splitlines() if "transaction log" in line]
    assert len(said) == 1 and "truncated" in said[0] and "marked approximate" in said[0], said


def test_a_log_that_stops_growing_is_not_waited_for_at_the_runs_end(
        transaction_log: str, tmp_path: Any) -> None:
    """wandb-core stuck before its exit record: the run's end may wait an hour for it, but stops
    once the file has not grown for ``LOG_IDLE`` (a close that waited would miss its minute)."""
    from wandb.proto import wandb_internal_pb2 as pb

    records = [body for body in TransactionLog(transaction_log).read()
               if pb.Record.FromString(body).WhichOneof("record_type") != "exit"]
    log_path = tmp_path / "run.wandb"
    wandb_history.write_log(str(log_path), records)
    record = tmp_path / "wandb_metrics.jsonl"
    writer = RecordWriter(str(record))
    writer.start()
    rows = RunRows("stuck")
    writer.append(control(rows, Follow(str(log_path), _record_class(), False)))
    writer.append(control(rows, EndOfRun(time.monotonic() + 3600)))
    writer.close(time.monotonic() + 60)
    assert writer.closed
    lines = [json.loads(line) for line in record.read_text().splitlines()]
    assert [line["step"] for line in lines] == list(range(ROWS))
