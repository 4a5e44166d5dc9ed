"""A real training subprocess with enrichment on: every recorded row carries the GPU figures, and
they follow the (fake) device as the test changes it mid-run.

Real wandb in offline mode, only ``PYTHONPATH`` (the fakes, then the bootstrap) set, one backend
per run: the fake ``pynvml``, the fake ``amdsmi``, or the amdgpu sysfs backend over a fake tree.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import pytest
from conftest import BOOTSTRAP_DIR, TRAIN_PYTHON, training_env, wait_until
from fakes import amdgpu_sysfs
from fakes.fake_gpu_state import STATE_ENV, write
from fakes.libs import FAKES
from wandb_history import history, run_dirs

SCRIPT = """\
import os, sys, time, wandb

stop = sys.argv[1]
run = wandb.init(project="gpu-figures")
deadline = time.monotonic() + 90
step = 0
while not os.path.exists(stop) and time.monotonic() < deadline:
    run.log({"loss": 1.0 / (step + 1)})
    step += 1
    time.sleep(0.02)
run.finish()
"""

Phase = Tuple[Callable[[], None], Dict[str, float]]


def nvml_phases(state: str, sysfs: str) -> List[Phase]:
    def device(util, power_mw, temperature, used):
        return {"nvml": {"driver_version": "550.54.15", "devices": [{
            "name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-aaaa0000-1111-2222-3333-444455556666",
            "bus_id": "00000000:1B:00.0", "memory_total": 80 << 30, "memory_used": used,
            "util_gpu": util, "power_mw": power_mw, "temperature": temperature}]}}

    return [(lambda: write(state, device(11, 100_000, 40, 1 << 30)),
             {"util_percent": 11.0, "power_watts": 100.0, "temperature_celsius": 40.0,
              "memory_used_bytes": float(1 << 30), "memory_total_bytes": float(80 << 30)}),
            (lambda: write(state, device(77, 250_500, 66, 3 << 30)),
             {"util_percent": 77.0, "power_watts": 250.5, "temperature_celsius": 66.0,
              "memory_used_bytes": float(3 << 30), "memory_total_bytes": float(80 << 30)})]


def amdsmi_phases(state: str, sysfs: str) -> List[Phase]:
    def device(util, watts, junction, used):
        return {"amdsmi": {"library": True, "devices": [{
            "bdf": "0000:05:00.0", "market_name": "AMD Instinct MI300X",
            "asic_serial": "5E8C1B3F1A2C3B00", "vram_total": 192 << 30, "vram_used": used,
            "gfx_activity": util, "driver_version": "6.10.5",
            "power": {"current_socket_power": watts, "average_socket_power": 0xFFFF},
            "temperature": {"EDGE": junction - 10, "HOTSPOT": junction, "VRAM": junction - 5}}]}}

    def expected(util, watts, junction, used):
        return {"util_percent": util, "power_watts": watts, "temperature_celsius": junction - 10,
                "temperature_junction_celsius": junction,
                "temperature_memory_celsius": junction - 5, "memory_used_bytes": float(used),
                "memory_total_bytes": float(192 << 30)}

    return [(lambda: write(state, device(11, 100, 40, 1 << 30)), expected(11.0, 100.0, 40.0, 1 << 30)),
            (lambda: write(state, device(77, 731, 71, 9 << 30)), expected(77.0, 731.0, 71.0, 9 << 30))]


def sysfs_phases(state: str, sysfs: str) -> List[Phase]:
    spec = amdgpu_sysfs.gpu(0)
    amdgpu_sysfs.build(os.path.dirname(sysfs), [spec])

    def phase(util, watts, junction, used):
        return (lambda: amdgpu_sysfs.set_values(sysfs, spec, busy=util, power_uw=int(watts * 1e6),
                                                vram_used=used, temps={"edge": 45_000,
                                                                       "junction": junction * 1000,
                                                                       "mem": 52_000}),
                {"util_percent": float(util), "power_watts": watts, "temperature_celsius": 45.0,
                 "temperature_junction_celsius": float(junction), "temperature_memory_celsius": 52.0,
                 "memory_used_bytes": float(used), "memory_total_bytes": float(192 << 30)})

    return [phase(11, 100.0, 40, 1 << 30), phase(77, 250.5, 66, 3 << 30)]


PHASES = {"nvml": nvml_phases, "amdsmi": amdsmi_phases, "sysfs": sysfs_phases}


def read_rows(path: Path) -> List[dict]:
    """Complete lines only: the writer may be appending while we look."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines(keepends=True):
        if line.endswith("\n"):
            rows.append(json.loads(line))
    return rows


def gpu_figures(row: dict) -> Dict[str, float]:
    return {k[len("_primus_gpu_"):]: v for k, v in row["data"].items()
            if k.startswith("_primus_gpu_")}


@pytest.mark.parametrize("backend", sorted(PHASES))
def test_training_run_records_gpu_figures_that_follow_the_device(tmp_path, backend):
    state, sysfs = str(tmp_path / "gpu-state.json"), str(tmp_path / "root" / "sys")
    write(state, {})
    (first, expect_first), (second, expect_second) = PHASES[backend](state, sysfs)
    first()
    (tmp_path / "train.py").write_text(SCRIPT)
    stop = tmp_path / "stop"
    env = training_env(tmp_path, {
        "PYTHONPATH": f"{FAKES}{os.pathsep}{BOOTSTRAP_DIR}",
        "PRIMUS_LENS_WANDB_ENHANCE_METRICS": "true",
        "PRIMUS_LENS_GPU_BACKEND": backend,
        "PRIMUS_LENS_SYSFS_ROOT": sysfs,
        "PRIMUS_LENS_SAMPLE_INTERVAL": "0.1",
        STATE_ENV: state,
    })
    record = tmp_path / "out" / "node_0" / "rank_0" / "wandb_metrics.jsonl"
    proc = subprocess.Popen([TRAIN_PYTHON, str(tmp_path / "train.py"), str(stop)], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_until(lambda: len(read_rows(record)) >= 10, 90), "no rows recorded"
        second()

        def switched_and_settled() -> bool:
            utils = [gpu_figures(r).get("util_percent") for r in read_rows(record)]
            return expect_second["util_percent"] in utils and \
                len(utils) - utils.index(expect_second["util_percent"]) >= 10

        assert wait_until(switched_and_settled, 30), "the new device state never reached a row"
    finally:
        stop.touch()
        try:
            _, stderr = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, stderr = proc.communicate()
    assert proc.returncode == 0, stderr[-4000:]
    assert [line for line in stderr.splitlines() if line.startswith("primus-lens:")] == []

    rows = read_rows(record)
    figures = [gpu_figures(row) for row in rows]
    # every line carries every figure, exact; each figure switches once and never goes back (the
    # fake device's files are rewritten one by one, so one sample may catch half of the change)
    assert all(set(f) == set(expect_first) for f in figures), figures
    for key in expect_first:
        values = [f[key] for f in figures]
        first, second = expect_first[key], expect_second[key]
        switch = values.index(second) if second != first else len(values)
        assert switch >= 10 and values[:switch] == [first] * switch, (key, values)
        assert values[switch:] == [second] * (len(values) - switch), (key, values)
    switch = figures.index(expect_second)
    assert all(math.isfinite(v) for f in figures for v in f.values())
    assert [row["data"]["loss"] for row in rows] == [1.0 / (i + 1) for i in range(len(rows))]

    # wandb received the same figures with the same rows: each new sample once (the first row
    # after it), the rows in between without repeats of an unchanged sample
    (run_dir,) = run_dirs(str(tmp_path))
    logged = [row.get("_primus_gpu_util_percent") for row in history(run_dir)]
    assert len(logged) == len(figures) and logged[0] == figures[0]["util_percent"]
    assert all(got in (None, f["util_percent"]) for got, f in zip(logged, figures))
    assert expect_second["util_percent"] in logged
