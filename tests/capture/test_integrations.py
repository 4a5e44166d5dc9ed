"""Integrations whose rows never pass through ``Run.log``: the record is still wandb's history.

tensorboard sync (wandb-core reads the event files itself), ``wandb.watch`` (histograms through
``Run._log``) and ``define_metric``'s ``step_sync`` (wandb adds the step metric's value) put rows
or values into wandb's history that the injector never sees as a ``log`` call.  Each scenario is a
real training program under the injector (tests/scripts/), and its record is compared row by row
and step by step with wandb's own transaction log (tests/wandb_history.py), after the program has
ended: wandb-core writes that log about 10 s late, so rows may reach the record late too.

Where the record differs from wandb's history by design, the expected value is computed from
wandb's: a histogram becomes the compact descriptor (number of bins, lowest and highest edge,
number of values); floats match to a relative 1e-6 (tensorboard stores float32).  No row may carry
``_primus_step_approx``: in these scenarios wandb's step is always knowable.

The programs run concurrently, all started when the first test asks for one: most wait ~10 s for
wandb-core's tensorboard reader, and one after another they would take minutes.
"""

from __future__ import annotations

import functools
import math
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import pytest
import wandb_history
from conftest import TRAIN_PYTHON, Training, training_env

from primus_lens_inject.capture.reconcile import fold

SCRIPTS = Path(__file__).parents[1] / "scripts"
WANDB_OWN = ("_runtime", "_timestamp", "_step")  # history keys wandb adds to every row
RUNS_TIMEOUT = 300.0  # seconds for all the programs together (~26 s on 2 cores)
Rows = List[Dict[str, Any]]


def tensorboard_rows(truth: Rows) -> Rows:
    """The rows wandb made from tensorboard_run.py's event files."""
    return [row for row in truth if "train/loss" in row]


def user_rows(truth: Rows) -> Rows:
    """The rows tensorboard_run.py logged with ``run.log``."""
    return [row for row in truth if "user/i" in row]


def syncs_tensorboard(truth: Rows) -> None:
    """wandb turned every step's events into a row (newest wandb: histograms too, 0.12 drops them)."""
    assert len(tensorboard_rows(truth)) == len(truth) == 20


def interleaves(truth: Rows) -> None:
    """wandb-core read event files before training ended, so tensorboard rows took steps between
    user rows: without that the scenario proves nothing about later user rows' steps."""
    tensorboard = [row["_step"] for row in tensorboard_rows(truth)]
    user = [row["_step"] for row in user_rows(truth)]
    assert len(tensorboard) == len(user) == 40
    assert min(tensorboard) < max(user), "no tensorboard row before the last user row"


def ignores_explicit_steps(truth: Rows) -> None:
    """While tensorboard is patched wandb ignores ``step=``: the script asked for 0, 10, 20..."""
    steps = [row["_step"] for row in user_rows(truth)]
    assert len(steps) == 20 and steps != [10 * i for i in range(20)]
    assert max(steps) < len(truth)


def syncs_tensorboard_and_log(truth: Rows) -> None:
    """Both kinds of rows are in wandb's history, though the program never called finish."""
    assert len(tensorboard_rows(truth)) == len(user_rows(truth)) == 20


def lightning_syncs(truth: Rows) -> None:
    """Lightning's tensorboard rows arrived (global steps 0-11: 3 epochs of 4 batches) next to the
    rows WandbLogger logged (3 of them validation only).  Newest wandb also adds ``global_step``,
    which WandbLogger declares as every metric's step metric, to the logged rows."""
    assert set(range(12)) <= {row.get("global_step") for row in truth}
    assert len([row for row in truth if "val/loss" in row and "train/loss" not in row]) == 3


def watches(truth: Rows) -> None:
    """Every row holds watch's histograms of all 4 parameters and their gradients."""
    assert len(truth) == 5
    for row in truth:
        histograms = [key for key, value in row.items()
                      if isinstance(value, dict) and value.get("_type") == "histogram"]
        assert sorted(key.split("/")[0] for key in histograms) == ["gradients"] * 4 + ["parameters"] * 4


def keeps_small_arrays(truth: Rows) -> None:
    """wandb keeps arrays of up to 32 elements as (nested) lists, a 1-element tensor as a number,
    and a 33-element array as a histogram."""
    assert [row["np/matrix"] for row in truth] == [[[0, 1, 2], [3, 4, 5]], [[1, 2, 3], [4, 5, 6]],
                                                   [[2, 3, 4], [5, 6, 7]]]
    assert all(len(row["np/thirty_two"]) == 32 for row in truth)
    assert [row["torch/one"] for row in truth] == [0, 1, 2]
    assert all(row["np/thirty_three"]["_type"] == "histogram" for row in truth)


def fills_step_metric(truth: Rows) -> None:
    """The validation rows were logged without ``epoch``; wandb added it."""
    validation = [row for row in truth if "val/accuracy" in row]
    assert [row.get("epoch") for row in validation] == [0, 1, 2]


@dataclass(frozen=True)
class Scenario:
    """A program of tests/scripts/, its environment, what wandb must show it did, and the
    modules the training interpreter needs for it."""

    script: str
    proves: Callable[[Rows], None]
    env: Dict[str, str] = field(default_factory=dict)
    needs: Tuple[str, ...] = ()


TENSORBOARD = ("torch", "tensorboard")
INTEGRATIONS = {
    "tensorboard_only": Scenario("tensorboard_run.py", syncs_tensorboard, needs=TENSORBOARD),
    "tensorboard_with_log": Scenario(
        "tensorboard_run.py", interleaves, needs=TENSORBOARD,
        env={"LENS_TEST_LOG": "1", "LENS_TEST_STEPS": "40", "LENS_TEST_SECONDS": "16"}),
    "tensorboard_explicit_steps": Scenario(
        "tensorboard_run.py", ignores_explicit_steps, needs=TENSORBOARD,
        env={"LENS_TEST_LOG": "1", "LENS_TEST_EXPLICIT_STEP": "1"}),
    "tensorboard_exit_without_finish": Scenario(
        "tensorboard_run.py", syncs_tensorboard_and_log, needs=TENSORBOARD,
        env={"LENS_TEST_LOG": "1", "LENS_TEST_NO_FINISH": "1"}),
    "lightning": Scenario("lightning_tb.py", lightning_syncs,
                          needs=(*TENSORBOARD, "pytorch_lightning")),
    "watch": Scenario("watch_all.py", watches, needs=("torch",)),
    "step_sync": Scenario("step_sync.py", fills_step_metric),
}
PLAIN = {"small_arrays": Scenario("small_arrays.py", keeps_small_arrays, needs=("torch",))}
SCENARIOS = {**INTEGRATIONS, **PLAIN}


@functools.cache
def missing_modules(modules: Tuple[str, ...]) -> Tuple[str, ...]:
    """Which of ``modules`` the training interpreter cannot import (it may not be pytest's)."""
    probe = ("import importlib.util, sys\n"
             "print(*[m for m in sys.argv[1:] if importlib.util.find_spec(m) is None])")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    out = subprocess.run([TRAIN_PYTHON, "-c", probe, *modules], capture_output=True, text=True,
                         timeout=60, env=env, check=True)
    return tuple(out.stdout.split())


class Runs:
    """The scenarios' training programs, started together; each is waited for when a test asks."""

    def __init__(self, names: List[str], tmp_factory: pytest.TempPathFactory) -> None:
        self.deadline = time.monotonic() + RUNS_TIMEOUT
        self.started: Dict[str, Tuple[subprocess.Popen, Path]] = {}
        for name in names:
            scenario = SCENARIOS[name]
            if missing_modules(scenario.needs):
                continue
            tmp = tmp_factory.mktemp(name)
            with open(tmp / "stdout", "w") as out, open(tmp / "stderr", "w") as err:
                proc = subprocess.Popen([TRAIN_PYTHON, str(SCRIPTS / scenario.script)], cwd=tmp,
                                        stdout=out, stderr=err, env=training_env(tmp, scenario.env))
            self.started[name] = (proc, tmp)

    def result(self, name: str) -> Training:
        missing = missing_modules(SCENARIOS[name].needs)
        if missing:
            pytest.skip(f"{TRAIN_PYTHON} lacks {', '.join(missing)} (`make install` puts "
                        "tensorboard and pytorch-lightning next to the local torch wheel)")
        proc, tmp = self.started[name]
        try:
            proc.wait(timeout=max(1.0, self.deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
        done = subprocess.CompletedProcess(proc.args, proc.returncode, (tmp / "stdout").read_text(),
                                           (tmp / "stderr").read_text())
        assert done.returncode == 0, done.stderr[-4000:]
        return Training(done, tmp, tmp / "out")

    def close(self) -> None:
        for proc, _ in self.started.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)


@pytest.fixture(scope="module")
def runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """Starts the programs of the scenarios this session selected in this module, all at once."""
    names = sorted({item.callspec.params["scenario"] for item in request.session.items
                    if item.module is request.module and hasattr(item, "callspec")})
    started = Runs(names, tmp_path_factory)
    yield started
    started.close()


def histogram_descriptor(histogram: Dict[str, Any]) -> Dict[str, Any]:
    """The record's form of wandb's histogram JSON, in either of its forms (bin edges, or
    ``packedBins`` for equal-width bins)."""
    counts = histogram["values"]
    if "packedBins" in histogram:
        packed = histogram["packedBins"]
        low, high = packed["min"], packed["min"] + packed["size"] * packed["count"]
    else:
        low, high = histogram["bins"][0], histogram["bins"][-1]
    return {"_type": "histogram", "bins": len(counts), "min": low, "max": high,
            "count": sum(counts)}


def expected(value: Any) -> Any:
    """What the record holds for a value of wandb's history."""
    if isinstance(value, dict):
        if value.get("_type") == "histogram":
            return histogram_descriptor(value)
        return {key: expected(item) for key, item in value.items()}
    return value


def differences(got: Any, want: Any, where: str) -> List[str]:
    """Where ``got`` (the record) differs from ``want``; floats to a relative 1e-6."""
    if isinstance(want, dict) and isinstance(got, dict):
        out = [f"{where}/{key}: not in the record" for key in want if key not in got]
        out += [f"{where}/{key}: not in wandb's history ({got[key]!r})" for key in got
                if key not in want]
        for key in want.keys() & got.keys():
            out += differences(got[key], want[key], f"{where}/{key}")
        return out
    if isinstance(want, list) and isinstance(got, list) and len(got) == len(want):
        return [problem for index, (a, b) in enumerate(zip(got, want))
                for problem in differences(a, b, f"{where}[{index}]")]
    numbers = (int, float)
    if (isinstance(got, numbers) and isinstance(want, numbers) and not isinstance(got, bool)
            and not isinstance(want, bool)):
        return [] if math.isclose(got, want, rel_tol=1e-6) else [f"{where}: {got!r} != {want!r}"]
    return [] if got == want and type(got) is type(want) else [f"{where}: {got!r} != {want!r}"]


def compare(lines: List[dict], truth: Rows, timestamps: bool = True) -> List[str]:
    """Every difference between the record's rows and wandb's history, row by row."""
    problems = []
    if len(lines) != len(truth):
        problems.append(f"{len(lines)} rows in the record, {len(truth)} in wandb's history")
    for line, row in zip(lines, truth):
        where = f"wandb step {row['_step']}"
        if line["step"] != row["_step"]:
            problems.append(f"{where}: the record says step {line['step']}")
        if timestamps and not math.isclose(line["timestamp"], row["_timestamp"], abs_tol=1e-6):
            problems.append(f"{where}: timestamp {line['timestamp']} != {row['_timestamp']}")
        data = {k: v for k, v in line["data"].items() if k != "_primus_lens_enabled"}
        want = {k: expected(v) for k, v in row.items() if k not in WANDB_OWN}
        problems += differences(data, want, where)
    return problems


def finished(runs: Runs, scenario: str) -> Tuple[Training, Rows]:
    """The program's record and wandb's history of its one run, whose id it printed."""
    result = runs.result(scenario)
    (run_dir,) = wandb_history.run_dirs(str(result.tmp))
    run_id = wandb_history.run_id(run_dir)
    assert f"logged {run_id}" in result.proc.stdout.splitlines()
    lines = result.record()
    assert {line["run_id"] for line in lines} == {run_id}
    return result, wandb_history.history(run_dir)


# The scenarios that need nothing but wandb also run against the oldest supported wandb.
@pytest.mark.parametrize("scenario", [
    pytest.param(name, marks=[pytest.mark.wandb_compat] if not INTEGRATIONS[name].needs else [])
    for name in sorted(INTEGRATIONS)])
def test_record_is_wandb_history(runs: Runs, scenario: str) -> None:
    """The record, its amendment lines folded in, is wandb's history.  The rows of a run whose
    ``log`` calls carry wandb's steps (watch, step_sync) are written when ``log`` is called and
    keep that call's time, about 1 ms before wandb's own stamp; only tensorboard rows, written
    from wandb's log alone, carry wandb's timestamp."""
    result, truth = finished(runs, scenario)
    INTEGRATIONS[scenario].proves(truth)
    problems = compare(fold(result.record()), truth, timestamps=scenario.startswith(
        ("tensorboard", "lightning")))
    assert problems == [], "\n".join(problems[:30])


@pytest.mark.parametrize("scenario", ["small_arrays"])
def test_small_arrays_are_kept_as_wandb_keeps_them(runs: Runs, scenario: str) -> None:
    """Plain ``log``: arrays and tensors up to 32 elements are lists in wandb's history and in the
    record.  A 33-element array is a 32-bin histogram to wandb and a shape/dtype descriptor in
    the record.  (The record stamps a plain row when ``log`` is called, about 1 ms apart from
    wandb's own stamp, so timestamps are not compared here.)"""
    result, truth = finished(runs, scenario)
    PLAIN[scenario].proves(truth)
    lines = result.record()
    for line, row in zip(lines, truth):
        del row["np/thirty_three"]
        assert line["data"].pop("np/thirty_three") == {"_type": "numpy.ndarray", "shape": [33],
                                                       "dtype": "float64"}
    problems = compare(lines, truth, timestamps=False)
    assert problems == [], "\n".join(problems[:30])
