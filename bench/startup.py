"""Interpreter start-up with the bootstrap on PYTHONPATH, against the same interpreter without.

    python -c pass            goal: ratio ≤ 1.05
    python -c "import wandb"  goal: ratio ≤ 1.03 (the post-import hook fires and patches)

Runs alternate baseline/injector so drift on this noisy machine hits both equally.
"""

from __future__ import annotations

import argparse
import subprocess
import time

from _common import PYTHON, child_env, median, report, scratch


def timed(code: str, env: dict) -> float:
    started = time.perf_counter()
    subprocess.run([PYTHON, "-c", code], env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def compare(code: str, runs: int, tmp: str) -> tuple:
    plain, injected = child_env(tmp, False), child_env(tmp, True)
    for env in (plain, injected):  # warm the page cache and .pyc files
        timed(code, env)
    base, ours = [], []
    for _ in range(runs):
        base.append(timed(code, plain))
        ours.append(timed(code, injected))
    return median(base) * 1000, median(ours) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=41)
    parser.add_argument("--wandb-runs", type=int, default=15)
    args = parser.parse_args()
    with scratch() as tmp:
        base, ours = compare("pass", args.runs, tmp)
        report("python -c pass (ms, median)", base, ours, "ms", "ratio <= 1.05")
        base, ours = compare("import wandb", args.wandb_runs, tmp)
        report("python -c 'import wandb' (ms, median)", base, ours, "ms", "ratio <= 1.03")


if __name__ == "__main__":
    main()
