"""Every row a training script logs reaches the local record exactly once, as wandb recorded it.

Ground truth is wandb's own offline run file (tests/wandb_history.py), not our expectations.
"""

from __future__ import annotations

import math

import pytest
import wandb_history
from conftest import wandb_version

pytestmark = pytest.mark.wandb_compat

STEP_SEMANTICS = """
    import wandb
    run = wandb.init(project="capture")
    for i in range(5):
        wandb.log({"loss": 1.0 / (i + 1), "i": i})          # module-level log
    run.log({"a": 1}, commit=False)                          # accumulates...
    run.log({"b": 2})                                        # ...into one row
    run.log(data={"c": 3}, step=10)                          # explicit step, keyword data
    run.log({"d": 4}, step=10)                               # same step: merged
    run.log({"e": 5}, step=3)                                # lower step: wandb drops it
    run.log({"f": 6}, 11, True)                              # positional step and commit
    run.log({"g": 7})
    wandb.log({"h": 8}, commit=False)                        # pending at finish
    run.finish()
"""


def user_keys(row: dict) -> dict:
    return {k: v for k, v in row.items() if not k.startswith("_")}


def test_rows_and_steps_match_wandb_history(train):
    result = train(STEP_SEMANTICS)
    lines = result.record()
    (run_dir,) = wandb_history.run_dirs(str(result.tmp))
    truth = wandb_history.history(run_dir)

    assert [line["step"] for line in lines] == [row["_step"] for row in truth]
    assert [user_keys(line["data"]) for line in lines] == [user_keys(row) for row in truth]
    assert [line["step"] for line in lines] == [0, 1, 2, 3, 4, 5, 10, 11, 12, 13]
    assert lines[5]["data"] == {"a": 1, "b": 2, "_primus_lens_enabled": True}
    assert lines[-1]["data"] == {"h": 8, "_primus_lens_enabled": True}
    run_id = run_dir.rsplit("-", 1)[1]
    assert {line["run_id"] for line in lines} == {run_id}
    stamps = [line["timestamp"] for line in lines]
    assert stamps == sorted(stamps) and all(1.7e9 < t < 4e9 for t in stamps)


def test_with_block_sequential_runs_and_exit_without_finish(train):
    result = train("""
        import wandb
        with wandb.init(project="a") as run:
            run.log({"x": 1})
            wandb.log({"x": 2})
        run2 = wandb.init(project="b", reinit=True)
        run2.log({"y": 1})
        wandb.log({"y": 2}, commit=False)     # never finished: committed at exit
    """)
    lines = result.record()
    runs = wandb_history.run_dirs(str(result.tmp))
    assert len(runs) == 2
    ids = [d.rsplit("-", 1)[1] for d in runs]
    by_run = {rid: [(line["step"], user_keys(line["data"])) for line in lines if line["run_id"] == rid]
              for rid in ids}
    first = next(r for r in ids if by_run[r][0][1] == {"x": 1})
    second = next(r for r in ids if r != first)
    assert by_run[first] == [(0, {"x": 1}), (1, {"x": 2})]
    assert by_run[second] == [(0, {"y": 1}), (1, {"y": 2})]
    assert len(lines) == 4


def test_threads_each_row_exactly_once(train):
    result = train("""
        import threading, wandb
        run = wandb.init(project="threads")
        def work(t):
            for i in range(250):
                run.log({"thread": t, "i": i})
        threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        run.finish()
    """)
    lines = result.record()
    assert len(lines) == 1000
    seen = sorted((line["data"]["thread"], line["data"]["i"]) for line in lines)
    assert seen == sorted((t, i) for t in range(4) for i in range(250))
    assert sorted(line["step"] for line in lines) == list(range(1000))


def test_user_dict_reaches_wandb_unchanged(train):
    result = train("""
        import wandb
        run = wandb.init(project="unchanged")
        row = {"loss": 0.5, "nested": {"a": 1}}
        before = repr(row)
        run.log(row)
        assert repr(row) == before and list(row) == ["loss", "nested"], row
        run.finish()
        print("ok")
    """, env={"PRIMUS_LENS_WANDB_ENHANCE_METRICS": "true"})
    assert "ok" in result.proc.stdout
    (run_dir,) = wandb_history.run_dirs(str(result.tmp))
    (row,) = wandb_history.history(run_dir)
    assert row["loss"] == 0.5 and row["nested"] == {"a": 1}
    assert 0 <= row["_primus_sys_memory_percent"] <= 100
    (line,) = result.record()
    assert line["data"]["loss"] == 0.5
    assert line["data"]["_primus_sys_memory_percent"] == row["_primus_sys_memory_percent"]


def test_disabled_mode_is_captured(train):
    result = train(STEP_SEMANTICS, env={"WANDB_MODE": "disabled"})
    lines = result.record()
    assert [line["step"] for line in lines] == [0, 1, 2, 3, 4, 5, 10, 11, 12, 13]
    assert [user_keys(line["data"]) for line in lines][5:8] == [{"a": 1, "b": 2}, {"c": 3, "d": 4},
                                                                 {"f": 6}]
    assert wandb_history.run_dirs(str(result.tmp)) == []


def test_disabled_mode_with_block_and_enhancement(train):
    result = train("""
        import wandb
        with wandb.init(mode="disabled") as run:
            run.log({"x": 1}, commit=False)
        wandb.init(mode="disabled")
        wandb.log({"y": 2})
        wandb.finish()
    """, env={"PRIMUS_LENS_WANDB_ENHANCE_METRICS": "true"})
    lines = result.record()
    assert [user_keys(line["data"]) for line in lines] == [{"x": 1}, {"y": 2}]
    assert all(line["data"]["_primus_sys_cpu_percent"] >= 0 for line in lines)


def test_concurrent_runs(train):
    if wandb_version() < (0, 19, 0):
        pytest.skip("reinit='create_new' exists from wandb 0.19")
    result = train("""
        import threading, wandb
        runs = [wandb.init(project="c", reinit="create_new") for _ in range(2)]
        def work(run, tag):
            for i in range(100):
                run.log({"tag": tag, "i": i})
        threads = [threading.Thread(target=work, args=(r, n)) for n, r in enumerate(runs)
                   for _ in range(2)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        [r.finish() for r in runs]
    """)
    lines = result.record()
    assert len(lines) == 400
    per_run = {}
    for line in lines:
        per_run.setdefault(line["run_id"], []).append(line)
    assert len(per_run) == 2
    for rows in per_run.values():
        assert len({row["data"]["tag"] for row in rows}) == 1  # never attributed to the other run
        assert sorted(row["step"] for row in rows) == list(range(200))


def test_values_are_strict_json_and_distinguishable(train):
    result = train("""
        import math, numpy as np, wandb
        class Weird:
            def __getattr__(self, name):
                raise RuntimeError("no attributes here")
        run = wandb.init(project="values")
        run.log({"nan": math.nan, "inf": math.inf, "ninf": -math.inf, "big": 2 ** 53 + 1,
                 "f32": np.float32(0.25), "i64": np.int64(7), "b": np.bool_(True),
                 "zero_d": np.array(3.5), "one": np.array([2.0]), "arr": np.zeros((40, 3)),
                 "npnan": np.float64("nan"), "s": "text", "none": None, "flag": True,
                 "nested": {"deep": {"x": math.inf}}, "lst": [1, 2.5, math.nan],
                 "bytes": b"abc", "hist": wandb.Histogram([1, 2, 3]),
                 "table": wandb.Table(columns=["a"], data=[[1], [2]])})
        run.finish()
        with wandb.init(mode="disabled") as quiet:   # wandb serialises nothing here
            quiet.log({"weird": Weird()})
    """)
    line, disabled = result.record()
    data = line["data"]
    assert data["nan"] == "NaN" and data["inf"] == "Infinity" and data["ninf"] == "-Infinity"
    assert data["npnan"] == "NaN"
    assert data["big"] == 2 ** 53 + 1
    assert data["f32"] == 0.25 and isinstance(data["f32"], float)
    assert data["i64"] == 7 and data["b"] is True and data["flag"] is True
    assert data["zero_d"] == 3.5 and data["one"] == 2.0
    assert data["arr"] == {"_type": "numpy.ndarray", "shape": [40, 3], "dtype": "float64"}
    assert data["s"] == "text" and data["none"] is None
    assert data["nested"] == {"deep": {"x": "Infinity"}}
    assert data["lst"] == [1, 2.5, "NaN"]
    assert data["bytes"] == {"_type": "bytes", "length": 3}
    # wandb.Histogram([1, 2, 3]): 64 equal bins from 1 to 3 holding 3 values
    assert data["hist"] == {"_type": "histogram", "bins": 64, "min": 1.0, "max": 3.0, "count": 3}
    assert data["table"]["_type"] == "wandb.Table" and data["table"]["rows"] == 2
    assert data["table"]["columns"] == 1
    assert disabled["data"]["weird"] == {"_type": "unreadable", "class": "__main__.Weird"}
    assert not any(isinstance(v, float) and not math.isfinite(v) for v in data.values())


def test_log_errors_are_wandbs_own(train):
    result = train("""
        import wandb
        run = wandb.init(project="errors")
        for bad in (["not", "a", "dict"], {1: "int key"}):
            try:
                run.log(bad)
            except (TypeError, ValueError) as exc:
                print("raised", type(exc).__name__)
        run.log({"ok": 1})
        run.finish()
        try:
            run.log({"after": 1})
        except Exception as exc:
            print("raised after finish", type(exc).__name__)
    """)
    assert result.proc.stdout.count("raised TypeError") + result.proc.stdout.count("raised ValueError") == 2
    assert [user_keys(line["data"]) for line in result.record()] == [{"ok": 1}]
    assert result.injector_lines() == []
