"""Host figures for enrichment: CPU %, memory % and this process's RSS.

psutil when it imports and works (it is our dependency, but a musl image or a broken wheel may
lack it); otherwise the same figures from ``/proc``; otherwise nothing.  Never raises on import.

CPU % is the machine's busy share between two readings, computed here from cumulative CPU times
rather than with ``psutil.cpu_percent``, whose reference point is kept per calling thread (its
first call in a thread returns a meaningless 0.0).  A window shorter than ``MIN_CPU_WINDOW``
measures nothing but timer ticks, so until the first full window has passed (the first sample
after start) the figure is the busy share since boot; every row carries the key.
"""

from __future__ import annotations

import os
import time
from typing import Callable, Dict, Tuple

CPU_PERCENT = "_primus_sys_cpu_percent"
MEMORY_PERCENT = "_primus_sys_memory_percent"
PROCESS_RSS = "_primus_sys_process_rss_bytes"

MIN_CPU_WINDOW = 0.05  # seconds

_CpuTimes = Tuple[float, float]  # (all time, idle time), any unit


class CpuPercent:
    """Busy % of all CPUs over the last window of at least ``MIN_CPU_WINDOW`` seconds."""

    def __init__(self, read: Callable[[], _CpuTimes]) -> None:
        self._read = read
        self._last = read()
        self._at = time.monotonic()
        total, idle = self._last
        self.value = self._share(total, total - idle)  # since boot, until a window has passed

    @staticmethod
    def _share(total: float, busy: float) -> float:
        return round(min(100.0, max(0.0, 100.0 * busy / total)), 1) if total > 0 else 0.0

    def update(self) -> float:
        now = time.monotonic()
        if now - self._at >= MIN_CPU_WINDOW:
            total, idle = self._read()
            last_total, last_idle = self._last
            if total > last_total:  # otherwise keep the window open until the counters move
                self.value = self._share(total - last_total,
                                         (total - last_total) - (idle - last_idle))
                self._last, self._at = (total, idle), now
        return self.value


class PsutilHost:
    name = "psutil"

    def __init__(self) -> None:
        import psutil

        self._psutil = psutil
        self._process = psutil.Process()
        self._cpu = CpuPercent(self._cpu_times)

    def _cpu_times(self) -> _CpuTimes:
        times = self._psutil.cpu_times()
        # As psutil.cpu_percent does: guest time is already inside user/nice; iowait is idle.
        total = sum(times) - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)
        return total, times.idle + getattr(times, "iowait", 0.0)

    def sample(self) -> Dict[str, float]:
        return {CPU_PERCENT: self._cpu.update(),
                MEMORY_PERCENT: float(self._psutil.virtual_memory().percent),
                PROCESS_RSS: float(self._process.memory_info().rss)}

    def close(self) -> None:
        pass


def _proc_cpu_times() -> _CpuTimes:
    with open("/proc/stat", "rb") as f:
        fields = f.readline().split()[1:]
    values = [int(v) for v in fields[:8]]  # user … steal; guest is already inside user
    return float(sum(values)), float(values[3] + (values[4] if len(values) > 4 else 0))


class ProcHost:
    """The psutil-free path: /proc/stat, /proc/meminfo and /proc/self/statm."""

    name = "proc"

    def __init__(self) -> None:
        self._cpu = CpuPercent(_proc_cpu_times)
        self._page = os.sysconf("SC_PAGE_SIZE")

    def sample(self) -> Dict[str, float]:
        out = {CPU_PERCENT: self._cpu.update()}
        meminfo = {}
        with open("/proc/meminfo", "rb") as f:
            for line in f:
                key, _, rest = line.partition(b":")
                meminfo[key] = int(rest.split()[0])
        if meminfo.get(b"MemTotal") and b"MemAvailable" in meminfo:
            used = meminfo[b"MemTotal"] - meminfo[b"MemAvailable"]
            out[MEMORY_PERCENT] = round(100.0 * used / meminfo[b"MemTotal"], 1)
        with open("/proc/self/statm", "rb") as f:
            out[PROCESS_RSS] = float(int(f.read().split()[1]) * self._page)
        return out

    def close(self) -> None:
        pass


def open_host_source():
    """The best working host source, or None; the reason for a fallback goes to debug output."""
    from .. import log

    for cls in (PsutilHost, ProcHost):
        try:
            source = cls()
            source.sample()
            return source
        except Exception as exc:
            log.debug("host_source_unavailable", source=cls.name, error=repr(exc))
    return None
