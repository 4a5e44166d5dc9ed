"""Shared by the benchmarks: a clean environment for child interpreters and median helpers.

Every benchmark measures the baseline and the injector side by side in one invocation,
alternating runs, because this machine is noisy; the figures are medians.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parent.parent
BOOTSTRAP_DIR = ROOT / "sitecustomize"
PYTHON = sys.executable


def child_env(tmp: str, bootstrap: bool, extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    # PYTHONDONTWRITEBYTECODE too: an installed package has its .pyc files, measure that case
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PRIMUS_LENS_", "WANDB_", "PYTHONPATH", "PYTHONDONTWRITEBYTECODE"))}
    env.update({"WANDB_MODE": "offline", "WANDB_DIR": tmp, "WANDB_SILENT": "true",
                "WANDB__DISABLE_STATS": "true", "HOME": tmp,
                "PRIMUS_LENS_WANDB_OUTPUT_PATH": os.path.join(tmp, "out"),
                "PRIMUS_LENS_WANDB_API_REPORTING": "false"})
    if bootstrap:
        env["PYTHONPATH"] = str(BOOTSTRAP_DIR)
    env.update(extra or {})
    return env


def run_child(code: str, env: Dict[str, str], timeout: float = 300) -> str:
    proc = subprocess.run([PYTHON, "-c", code], env=env, capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        raise SystemExit(f"benchmark child failed:\n{proc.stderr[-3000:]}")
    return proc.stdout


def median(values: List[float]) -> float:
    return statistics.median(values)


def scratch() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="primus-lens-bench-")


def report(label: str, baseline: float, patched: float, unit: str, goal: str) -> None:
    ratio = patched / baseline if baseline else float("inf")
    print(f"{label:<44} baseline {baseline:10.2f} {unit}   injector {patched:10.2f} {unit}   "
          f"ratio {ratio:6.3f}   added {patched - baseline:+9.2f} {unit}   goal {goal}")
