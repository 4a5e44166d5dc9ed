"""A launcher that replaces PYTHONPATH with a directory holding its own ``sitecustomize.py``, one
that does not chain (Primus's ODC launcher does this): the PYTHONPATH route is lost there, the
.pth route is not. Shown for the training-base image (the tree and the .pth its Dockerfile stage
installs, ``installs.training_base``) and for the wheel (``primus-lens install``), each with both
routes present as they are in practice: activation happens once, rows are recorded once.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Dict, Tuple

import installs
import pytest
from conftest import BASE_PYTHON, training_env

from primus_lens_inject.cli.doctor import NOT_ACTIVE

# What the launcher does, reduced to the part that matters: a new PYTHONPATH, then the trainer.
LAUNCHER = """#!/bin/sh
export PYTHONPATH="$LAUNCHER_DIR"
exec "$@"
"""
LAUNCHER_SITECUSTOMIZE = "import sys\nsys.stdout.write('launcher sitecustomize ran\\n')\n"
TRAIN = """
import json, sys, wandb
run = wandb.init(project="launcher")
for step in range(3):
    run.log({"x": step})
run.finish()
first = sys.modules["_primus_lens_bootstrap"]
site = sys.modules.get("sitecustomize")
print(json.dumps({"active": [first.__name__, first.status],
                  "sitecustomize": [getattr(site, "__file__", None), getattr(site, "status", None)],
                  "path": sys.path}))
"""


def install(kind: str, tmp: Path, wheel: Path) -> Tuple[str, Path]:
    """(training python, the directory its image or user puts on PYTHONPATH) with the .pth
    route installed the way ``kind`` installs it."""
    if kind == "training-base":
        tree = installs.image_tree(tmp / "primus-lens")
        return installs.training_base(tree, tmp / "venv", BASE_PYTHON), tree
    python = installs.wheel_with_pth(tmp / "venv", BASE_PYTHON, wheel)
    return python, installs.installed_bootstrap(python)


def train(tmp: Path, python: str, env: Dict[str, str], launcher: bool) -> dict:
    """Run TRAIN (under the launcher or directly); its report, with the record's x values."""
    (tmp / "train.py").write_text(TRAIN)
    command = [python, "train.py"]
    if launcher:
        own = tmp / "launcher"
        own.mkdir(exist_ok=True)
        (own / "sitecustomize.py").write_text(LAUNCHER_SITECUSTOMIZE)
        (tmp / "launch.sh").write_text(LAUNCHER)
        command = ["sh", str(tmp / "launch.sh"), *command]
        env = dict(env, LAUNCHER_DIR=str(own))
    record = tmp / "out" / "node_0" / "rank_0" / "wandb_metrics.jsonl"
    record.unlink(missing_ok=True)
    proc = subprocess.run(command, cwd=tmp, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert [line for line in proc.stderr.splitlines() if line.startswith("primus-lens")] == []
    lines = proc.stdout.splitlines()
    report = json.loads(lines[-1])
    report["launcher_ran"] = "launcher sitecustomize ran" in lines
    report["xs"] = [json.loads(line)["data"]["x"] for line in record.read_text().splitlines()]
    return report


@pytest.mark.layouts  # also with the oldest wandb
@pytest.mark.parametrize("kind", ["training-base", "wheel"])
def test_the_pth_route_survives_a_launcher_that_replaces_pythonpath(tmp_path, wheel, kind):
    python, bootstrap = install(kind, tmp_path, wheel)
    env = training_env(tmp_path, {"PYTHONPATH": str(bootstrap)})  # the image's ENV, `run`'s

    # under the launcher: its sitecustomize wins and never runs ours; the .pth one is active
    report = train(tmp_path, python, env, launcher=True)
    assert report["launcher_ran"] is True
    assert report["sitecustomize"] == [str(tmp_path / "launcher" / "sitecustomize.py"), None]
    assert report["active"] == ["_primus_lens_pth", "active: wandb patched"]
    assert report["xs"] == [0, 1, 2]
    if kind == "training-base":  # the package beside the bootstrap was put last, at wandb import
        assert report["path"][-1] == str(bootstrap)

    # both routes present: the .pth copy activates, the sitecustomize copy stands aside (and
    # still chains the image's own); every row once
    report = train(tmp_path, python, env, launcher=False)
    assert report["launcher_ran"] is False
    assert report["active"] == ["_primus_lens_pth", "active: wandb patched"]
    assert report["sitecustomize"] == [
        str(bootstrap / "sitecustomize.py"),
        "inactive: another copy of the bootstrap is already active"]
    assert report["xs"] == [0, 1, 2]

    # the kill switch still turns the .pth route off: its shim reads the switch and stops there
    proc = subprocess.run([python, "-c", "import sys; print(sorted(m for m in sys.modules "
                                         "if 'primus_lens' in m))"],
                          env=dict(env, PYTHONPATH="", PRIMUS_LENS_WANDB_HOOK="off"),
                          capture_output=True, text=True, timeout=60)
    assert (proc.stdout, proc.stderr) == ("['_primus_lens_inject_pth']\n", "")


@pytest.mark.parametrize("kind", ["training-base", "wheel"])
def test_the_pth_route_imports_nothing_new_at_start_up(tmp_path, wheel, kind):
    # the .pth imports its shim, which runs the bootstrap file by path: no package, no importlib
    # (bench/startup.py measures what that costs); the kill switch gives the bare interpreter
    python, _bootstrap = install(kind, tmp_path, wheel)

    def modules(**extra: str) -> set:
        proc = subprocess.run([python, "-c", "import sys; print(' '.join(sys.modules))"],
                              env=training_env(tmp_path, extra, bootstrap=False),
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr
        return set(proc.stdout.split())

    assert modules() - modules(PRIMUS_LENS_WANDB_HOOK="false") == {"_primus_lens_pth",
                                                                    "_primus_lens_bootstrap"}


def test_doctor_names_the_launchers_sitecustomize_and_the_cure(tmp_path, wheel):
    python = installs.wheel_virtualenv(tmp_path / "venv", BASE_PYTHON, wheel)
    launcher = tmp_path / "launcher"
    launcher.mkdir()
    (launcher / "sitecustomize.py").write_text(LAUNCHER_SITECUSTOMIZE)
    env = training_env(tmp_path, {"PYTHONPATH": str(launcher)})

    def doctor() -> dict:
        proc = subprocess.run([python, "-m", "primus_lens_inject", "doctor", "--json"], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=120)
        boot = json.loads(proc.stdout[proc.stdout.index("{"):])["bootstrap"]
        assert proc.returncode == (0 if boot["active"] else NOT_ACTIVE), proc.stderr
        return boot

    boot = doctor()
    foreign = str(launcher / "sitecustomize.py")
    assert (boot["active"], boot["route"], boot["shadowed_by"]) == (False, None, foreign)
    assert boot["why_not"] == [
        f"a sitecustomize that is not ours comes first on sys.path and never runs ours: {foreign} "
        "(a launcher that sets its own PYTHONPATH does this); the cure is the .pth route, which "
        "survives that: `primus-lens install` (the training-base image installs it)"]

    proc = subprocess.run([str(Path(python).parent / "primus-lens"), "install"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    boot = doctor()
    assert (boot["active"], boot["route"], boot["why_not"]) == (True, ".pth", [])
    assert boot["first_sitecustomize"] == foreign
