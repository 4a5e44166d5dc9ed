"""Host figures: psutil, the /proc fallback, nothing at all, and CPU % from cumulative times."""

from __future__ import annotations

import math
import sys
import threading
import time

import pytest

from primus_lens_inject.metrics import host as hostmetrics
from primus_lens_inject.metrics.host import (
    CPU_PERCENT,
    MEMORY_PERCENT,
    PROCESS_RSS,
    CpuPercent,
    ProcHost,
    PsutilHost,
    open_host_source,
)


@pytest.mark.parametrize("cls", [PsutilHost, ProcHost])
def test_figures_are_finite_and_plausible(cls):
    source = cls()
    assert set(source.sample()) == {CPU_PERCENT, MEMORY_PERCENT, PROCESS_RSS}  # from the start
    time.sleep(hostmetrics.MIN_CPU_WINDOW + 0.02)
    sample = source.sample()
    assert set(sample) == {CPU_PERCENT, MEMORY_PERCENT, PROCESS_RSS}
    assert all(isinstance(v, float) and math.isfinite(v) for v in sample.values())
    assert 0.0 <= sample[CPU_PERCENT] <= 100.0 and 0.0 < sample[MEMORY_PERCENT] < 100.0
    assert 10 * 2**20 < sample[PROCESS_RSS] < 64 * 2**30


def test_psutil_and_proc_agree_on_rss():
    psutil_rss = PsutilHost().sample()[PROCESS_RSS]
    proc_rss = ProcHost().sample()[PROCESS_RSS]
    assert abs(psutil_rss - proc_rss) < 16 * 2**20


def test_cpu_percent_from_cumulative_times(monkeypatch):
    clock = [100.0]
    times = iter([(1000.0, 600.0), (1400.0, 700.0), (1400.0, 700.0), (1600.0, 900.0)])
    monkeypatch.setattr(hostmetrics.time, "monotonic", lambda: clock[0])
    cpu = CpuPercent(lambda: next(times))
    assert cpu.update() == 40.0  # no window yet: the share since boot, 400 busy of 1000
    clock[0] += 1.0
    assert cpu.update() == 75.0  # 400 ticks, 100 idle
    clock[0] += 1.0
    assert cpu.update() == 75.0  # the counters did not move: the last value stands
    clock[0] += 1.0
    assert cpu.update() == 0.0  # 200 ticks since the last window, all idle


def test_cpu_percent_does_not_depend_on_the_calling_thread():
    source = PsutilHost()  # created here, sampled in another thread, as the sampler does
    began = time.monotonic()
    while time.monotonic() - began < 0.2:  # keep one CPU busy for the whole window
        pass
    out = {}
    worker = threading.Thread(target=lambda: out.update(source.sample()))
    worker.start()
    worker.join()
    assert out[CPU_PERCENT] > 0.0  # psutil.cpu_percent's first call in a thread says 0.0


def test_without_psutil_the_proc_source_is_used(monkeypatch):
    monkeypatch.setitem(sys.modules, "psutil", None)  # import psutil -> ImportError
    assert isinstance(open_host_source(), ProcHost)


def test_without_psutil_or_proc_there_is_no_host_source(monkeypatch):
    monkeypatch.setitem(sys.modules, "psutil", None)

    def broken(self):
        raise FileNotFoundError("/proc/stat")

    monkeypatch.setattr(ProcHost, "__init__", broken)
    assert open_host_source() is None
