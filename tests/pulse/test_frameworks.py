"""Optimizer steps counted right under the trainers users run (docs/pulse.md, "Step source").

A Lightning fit (tests/scripts/lightning_tb.py: one epoch of 32 samples in batches of 8, so 4
optimizer steps, the optimizer wrapped in Lightning's ``LightningOptimizer`` and stepped with a
closure) and a Hugging Face ``Trainer`` run (tests/scripts/hf_trainer.py: 8 optimizer steps, the
optimizer wrapped in accelerate's ``AcceleratedOptimizer``), started together.  Neither joins a
distributed job: their pulse starts at the ``wandb.init`` the framework makes, and the global
optimizer hook counts each optimizer step exactly once, whatever wraps the optimizer.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import TRAIN_PYTHON, training_env

from primus_lens_inject import pulseline

SCRIPTS = Path(__file__).parents[1] / "scripts"
NEEDS = ("torch", "transformers", "accelerate", "pytorch_lightning", "tensorboard")
JOBS = {"lightning": ("lightning_tb.py", {"LENS_TEST_EPOCHS": "1"}, 4),
        "trainer": ("hf_trainer.py", {"LENS_TEST_STEPS": "8", "HF_HUB_OFFLINE": "1",
                                      "TRANSFORMERS_OFFLINE": "1"}, 8)}


def missing() -> str:
    probe = ("import importlib.util, sys\n"
             "print(*[m for m in sys.argv[1:] if importlib.util.find_spec(m) is None])")
    return subprocess.run([TRAIN_PYTHON, "-c", probe, *NEEDS], capture_output=True, text=True,
                          timeout=60, check=True).stdout.strip()


def test_lightning_and_the_trainer_count_each_optimizer_step_once(tmp_path) -> None:
    absent = missing()
    if absent:
        pytest.skip(f"{TRAIN_PYTHON} lacks {absent}")
    started = {}
    for name, (script, extra, _) in JOBS.items():
        tmp = tmp_path / name
        tmp.mkdir()
        env = training_env(tmp, {"PRIMUS_LENS_PULSE_INTERVAL": "0.5", **extra})
        started[name] = (tmp, subprocess.Popen([TRAIN_PYTHON, str(SCRIPTS / script)], cwd=tmp,
                                               env=env, stdout=subprocess.PIPE,
                                               stderr=subprocess.PIPE, text=True))
    try:
        for name, (_, proc) in started.items():
            _, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, f"{name}: {err[-4000:]}"
    finally:
        for _, proc in started.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
    for name, (tmp, _) in started.items():
        rank_dir = tmp / "out" / "node_0" / "rank_0"
        lines = [pulseline.decode(raw) for path in pulseline.pulse_files(str(rank_dir))
                 for raw in Path(path).read_bytes().splitlines()]
        beats = [line for line in lines if line and line["kind"] == pulseline.PULSE]
        assert beats, name
        assert beats[-1]["steps"] == JOBS[name][2], (name, [b["steps"] for b in beats])
        assert {b["step_source"] for b in beats} == {"optimizer"}
        assert beats[-1]["run_id"]  # the owner's run
