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

from primus_lens_inject.capture.history import BLOCK, Follower, TransactionLog, history_row
from primus_lens_inject.capture.record import NO_SAMPLE, RecordWriter, end_of_run
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


@pytest.fixture(scope="module")
def transaction_log(tmp_path_factory: pytest.TempPathFactory) -> str:
    wandb_dir = str(tmp_path_factory.mktemp("wandb"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "PRIMUS_LENS_"))}
    env.update(WANDB_MODE="offline", WANDB_DIR=wandb_dir, WANDB_SILENT="true")
    env.pop("PYTHONPATH", None)  # wandb alone: this file is the ground truth, not our output
    subprocess.run([sys.executable, "-c", SCRIPT], env=env, check=True, timeout=120)
    (run_dir,) = wandb_history.run_dirs(wandb_dir)
    (path,) = glob.glob(os.path.join(run_dir, "*.wandb"))
    assert os.path.getsize(path) > 4 * BLOCK  # records really cross blocks
    return path


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


def test_a_missing_file_reads_as_nothing_yet(tmp_path: Any) -> None:
    follower = Follower(str(tmp_path / "absent.wandb"), _record_class(), 0)
    assert follower.poll() == [] and not follower.ended


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
    exact, approximate = RunRows("exact"), RunRows("approx")
    approximate.approx = "tensorboard sync"
    for rows in (exact, approximate):
        for i in range(3):
            writer.append((rows, {"i": i}, None, None, time.time(), NO_SAMPLE))
        writer.append(end_of_run(rows))
    assert writer.close(time.monotonic() + 10)
    lines = [json.loads(line) for line in (tmp_path / "wandb_metrics.jsonl").read_text().splitlines()]
    marks = {(line["run_id"], line["step"]): line["data"].get(APPROX_KEY) for line in lines}
    assert marks == {("exact", 0): None, ("exact", 1): None, ("exact", 2): None,
                     ("approx", 0): 1, ("approx", 1): 1, ("approx", 2): 1}
