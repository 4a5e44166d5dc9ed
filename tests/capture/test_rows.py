"""wandb's step rules as RunRows replays them (the subprocess tests check them against wandb)."""

from __future__ import annotations

from primus_lens_inject.capture.rows import RunRows


def test_commit_rules():
    rows = RunRows("r", start_step=0)
    assert rows.log({"a": 1}, None, None, now=1.0) == [(0, 1.0, {"a": 1})]
    assert rows.log({}, None, None, now=2.0) == []          # an empty commit still advances
    assert rows.step == 2
    assert rows.log({"b": 1}, None, False, now=3.0) == []
    assert rows.log({"c": 1}, 5, None, now=4.0) == [(2, 3.0, {"b": 1})]
    assert rows.log({"d": 1}, 5, True, now=5.0) == [(5, 5.0, {"c": 1, "d": 1})]
    assert rows.log({"e": 1}, 4, True, now=6.0) == [] and rows.dropped == 1
    assert rows.log({"f": 1}, None, False, now=7.0) == []
    assert rows.finish() == [(6, 7.0, {"f": 1})]
    assert rows.log({"g": 1}, None, None) == [] and rows.finish() == []


def test_resumed_run_starts_at_its_starting_step_and_fork_copy_drops_pending():
    rows = RunRows("r", start_step=100)
    rows.log({"a": 1}, None, False, now=1.0)
    child = rows.forked_copy()
    assert child.step == 100 and child.finish() == []
    assert rows.finish() == [(100, 1.0, {"a": 1})]
