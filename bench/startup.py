"""Interpreter start-up with the injector as users install it, against the same interpreter without.

    python -c pass            goal: ratio ≤ 1.05
    python -c "import wandb"  goal: ratio ≤ 1.03 (the post-import hook fires and patches)
    python -c "import torch"  goal: ratio ≤ 1.02 (torch imports torch.distributed: the rank
                              pulse's hook wraps init_process_group, importing nothing of ours;
                              measured for the two PYTHONPATH layouts, where torch is installed)

for each way in: the wheel (pip-installed into a fresh virtualenv) with its bootstrap on
PYTHONPATH, as ``primus-lens run`` does; the same wheel through the .pth route (``primus-lens
install``); the image tree the Dockerfile lays out, run by a virtualenv without our package (the
webhook's case); the training-base stage's virtualenv, whose .pth runs the tree's bootstrap, alone
(as under a launcher that replaced PYTHONPATH) and with the stage's PYTHONPATH too.
All are built from the working tree by tests/installs.py, never the editable checkout, whose
import hook already loads what the bootstrap would otherwise pay for. Runs alternate baseline
and injector so drift on a noisy machine hits both equally; figures are medians of paired runs.
Where even that is too noisy, ``--instructions`` adds the instructions each start executes
(valgrind), which load does not change.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

from _common import ROOT, child_env, median, report, scratch

sys.path.insert(0, str(ROOT / "tests"))
import installs  # tests/installs.py builds the layouts

Run = Tuple[str, Dict[str, str]]  # an interpreter and its environment
MODULES = "import sys; print(' '.join(sorted(sys.modules)))"


def layouts(tmp: Path) -> Dict[str, Tuple[Run, Run]]:
    """name -> (run without the injector, run with it), each layout built afresh."""
    _sdist, wheel = installs.build_dists(tmp / "dist")
    env = child_env(str(tmp), False)
    plain = installs.wheel_virtualenv(tmp / "wheel", sys.executable, wheel)
    bootstrap = str(installs.installed_bootstrap(plain))
    with_pth = installs.wheel_with_pth(tmp / "wheel-pth", sys.executable, wheel)
    tree = installs.image_tree(tmp / "primus-lens")
    image = installs.virtualenv(tmp / "image", sys.executable)
    base = installs.training_base(tree, tmp / "training-base", sys.executable)
    return {
        "wheel, PYTHONPATH": ((plain, env), (plain, dict(env, PYTHONPATH=bootstrap))),
        "wheel, .pth": ((plain, env), (with_pth, env)),  # two equal virtualenvs, one with the .pth
        "image tree, PYTHONPATH": ((image, env), (image, dict(env, PYTHONPATH=str(tree)))),
        "training-base, .pth": ((image, env), (base, env)),  # a launcher replaced PYTHONPATH
        "training-base, both routes": ((image, env), (base, dict(env, PYTHONPATH=str(tree)))),
    }


def timed(run: Run, code: str) -> float:
    started = time.perf_counter()
    subprocess.run([run[0], "-c", code], env=run[1], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def compare(code: str, runs: int, baseline: Run, injector: Run) -> Tuple[float, float]:
    for run in (baseline, injector):  # warm the page cache and write .pyc files
        timed(run, code)
    base: List[float] = []
    ours: List[float] = []
    for _ in range(runs):
        base.append(timed(baseline, code))
        ours.append(timed(injector, code))
    return median(base) * 1000, median(ours) * 1000


def instructions(run: Run, code: str) -> int:
    """Instructions the interpreter executes for ``code``, counted by valgrind's callgrind: unlike
    time, the same on a busy machine as on an idle one (a fixed hash seed keeps it exact)."""
    proc = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
                           run[0], "-c", code], env=dict(run[1], PYTHONHASHSEED="0"),
                          check=True, capture_output=True, text=True)
    return int(re.search(r"Collected : (\d+)", proc.stderr).group(1))


def added_modules(baseline: Run, injector: Run) -> List[str]:
    """Modules imported at start-up with the injector that the bare interpreter does not import."""
    seen = [set(subprocess.run([python, "-c", MODULES], env=env, check=True, text=True,
                               capture_output=True).stdout.split())
            for python, env in (baseline, injector)]
    return sorted(seen[1] - seen[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=41)
    parser.add_argument("--wandb-runs", type=int, default=15)
    parser.add_argument("--torch-runs", type=int, default=11)
    parser.add_argument("--instructions", action="store_true",
                        help="also count the instructions of python -c pass and of import "
                        "torch (needs valgrind)")
    args = parser.parse_args()
    if args.instructions and not shutil.which("valgrind"):
        parser.error("--instructions needs valgrind")
    with scratch() as tmp:
        measured = layouts(Path(tmp))
        for name, (baseline, injector) in measured.items():
            print(f"{name}: modules added at start-up: "
                  f"{', '.join(added_modules(baseline, injector)) or 'none'}")
        for name, (baseline, injector) in measured.items():
            base, ours = compare("pass", args.runs, baseline, injector)
            report(f"{name}: python -c pass (ms, median)", base, ours, "ms", "ratio <= 1.05")
        if args.instructions:
            for name, (baseline, injector) in measured.items():
                report(f"{name}: python -c pass (instructions, millions)",
                       instructions(baseline, "pass") / 1e6, instructions(injector, "pass") / 1e6,
                       "M", "ratio <= 1.05")
        for name, (baseline, injector) in measured.items():
            base, ours = compare("import wandb", args.wandb_runs, baseline, injector)
            report(f"{name}: import wandb (ms, median)", base, ours, "ms", "ratio <= 1.03")
        if not args.torch_runs or subprocess.run([sys.executable, "-c", "import torch"],
                                                 capture_output=True).returncode:
            return
        for name in ("wheel, PYTHONPATH", "image tree, PYTHONPATH"):
            baseline, injector = measured[name]
            base, ours = compare("import torch", args.torch_runs, baseline, injector)
            report(f"{name}: import torch (ms, median)", base, ours, "ms", "ratio <= 1.02")
            if args.instructions:  # torch's import is long and I/O-bound: time is noisy
                report(f"{name}: import torch (instructions, millions)",
                       instructions(baseline, "import torch") / 1e6,
                       instructions(injector, "import torch") / 1e6, "M", "ratio <= 1.02")


if __name__ == "__main__":
    main()
