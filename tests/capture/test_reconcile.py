"""The early row and wandb's later view of one step, reconciled (``capture.reconcile``).

Thread-free: the rows are given in the orders the record writer can meet them in.
"""

from __future__ import annotations

import json

from primus_lens_inject.capture import reconcile
from primus_lens_inject.capture.reconcile import Amendment, Reconciler, fold, same
from primus_lens_inject.capture.record import encode, encode_amendment
from primus_lens_inject.capture.rows import Row


def test_an_equal_log_row_adds_nothing() -> None:
    rec = Reconciler()
    assert rec.early_row(Row(0, 1.0, {"loss": 1.0, "n": 2, "gap": float("nan"),
                                      "_primus_sys_cpu_percent": 3.0}))
    # wandb-core writes 1.0 as 1, a NaN as "NaN"; our enrichment keys are not wandb's business
    assert rec.log_row(Row(0, 1.001, {"loss": 1, "n": 2, "gap": "NaN"}), calls_step=1) is None


def test_what_wandb_adds_or_holds_differently_is_one_amendment() -> None:
    rec = Reconciler()
    rec.early_row(Row(3, 5.0, {"val/acc": 0.5, "big": {"_type": "numpy.ndarray", "shape": [40]},
                               "flag": True, "odd": 1}))
    wandb_row = {"val/acc": 0.5, "epoch": 0, "flag": 1,
                 "big": {"_type": "histogram", "bins": 32, "min": 0.0, "max": 1.0, "count": 40}}
    assert rec.log_row(Row(3, 5.1, wandb_row), calls_step=4) == Amendment(
        3, 5.0, {"epoch": 0, "flag": 1, "big": wandb_row["big"]}, ["odd"])


def test_a_step_the_log_shows_first_is_written_from_it_and_the_calls_row_dropped() -> None:
    rec = Reconciler()
    wandb_row = Row(7, 9.0, {"loss": 0.1, "epoch": 1})
    assert rec.log_row(wandb_row, calls_step=7) is wandb_row  # the call's row may still come
    assert rec.early_row(Row(7, 9.1, {"loss": 0.1})) is False
    assert rec.early_row(Row(8, 9.2, {"loss": 0.2})) is True


def test_a_row_only_wandb_made_is_written_and_skipped_steps_leave_the_calls_rows() -> None:
    rec = Reconciler()
    for step in (0, 1, 2):
        rec.early_row(Row(step, float(step), {"i": step}))
    watch_only = Row(5, 5.0, {"gradients/w": {"_type": "histogram"}})
    # steps 0-2 never reached wandb's history (as the calls say): their rows stand as written
    assert rec.log_row(watch_only, calls_step=6) is watch_only
    assert rec.early_row(Row(6, 6.0, {"i": 6}))  # nothing of the log's stands in its way
    assert rec.log_row(Row(6, 6.0, {"i": 6}), calls_step=7) is None


def test_rows_too_old_to_compare_are_left_as_written(monkeypatch) -> None:
    monkeypatch.setattr(reconcile, "EARLY_ROWS", 3)
    rec = Reconciler()
    for step in range(5):
        rec.early_row(Row(step, 0.0, {"i": step}))
    assert rec.log_row(Row(1, 0.0, {"i": 1, "epoch": 0}), calls_step=5) is None
    assert rec.log_row(Row(4, 0.0, {"i": 4, "epoch": 0}), calls_step=5) == Amendment(
        4, 0.0, {"epoch": 0}, [])


def test_same_compares_numbers_by_value_and_the_rest_by_frozen_form() -> None:
    assert same(1.0, 1) and same({"a": [1.0, float("inf")]}, {"a": [1, "Infinity"]})
    assert not same(True, 1) and not same("1", 1) and not same([1], [1, 2])
    assert not same({"a": 1}, {"a": 1, "b": 2})


def test_fold_gives_wandbs_rows_and_senders_see_one_line_per_step() -> None:
    lines = [encode("r", 0, 1.0, {"loss": 1.0}, "w"), encode("r", 1, 2.0, {"acc": 0.5, "x": 1}, "w"),
             encode("other", 1, 2.0, {"acc": 0.9}, "w"),
             encode_amendment("r", Amendment(1, 2.0, {"epoch": 0}, ["x"]), "w"),
             encode_amendment("r", Amendment(9, 3.0, {"epoch": 0}, []), "w")]  # its row: cut off
    parsed = [json.loads(line) for line in lines]
    assert parsed[3]["amends"] == 1 and parsed[3]["unset"] == ["x"]
    assert [(row["run_id"], row["step"], row["data"]) for row in fold(parsed)] == [
        ("r", 0, {"loss": 1.0, "_primus_lens_enabled": True}),
        ("r", 1, {"acc": 0.5, "_primus_lens_enabled": True, "epoch": 0}),
        ("other", 1, {"acc": 0.9, "_primus_lens_enabled": True})]
    assert parsed[1]["data"] == {"acc": 0.5, "x": 1, "_primus_lens_enabled": True}  # not changed
