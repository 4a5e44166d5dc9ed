"""Host figures for enrichment: CPU %, memory % and this process's RSS.

psutil when it imports and works (it is our dependency, but a musl image or a broken wheel may
lack it); otherwise the same figures from ``/proc``; otherwise nothing.  Never raises on import.
"""

from __future__ import annotations

import os
from typing import Dict, Optional, Tuple

CPU_PERCENT = "_primus_sys_cpu_percent"
MEMORY_PERCENT = "_primus_sys_memory_percent"
PROCESS_RSS = "_primus_sys_process_rss_bytes"


class PsutilHost:
    name = "psutil"

    def __init__(self) -> None:
        import psutil

        self._psutil = psutil
        self._process = psutil.Process()
        self.prime()

    def prime(self) -> None:
        """psutil keeps the CPU % reference per thread: call once in each sampling thread."""
        self._psutil.cpu_percent(None)

    def sample(self) -> Dict[str, float]:
        psutil = self._psutil
        return {
            CPU_PERCENT: float(psutil.cpu_percent(None)),
            MEMORY_PERCENT: float(psutil.virtual_memory().percent),
            PROCESS_RSS: float(self._process.memory_info().rss),
        }

    def close(self) -> None:
        pass


def _cpu_times() -> Tuple[int, int]:
    with open("/proc/stat", "rb") as f:
        fields = f.readline().split()[1:]
    values = [int(v) for v in fields[:8]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return sum(values), idle


class ProcHost:
    """The psutil-free path: /proc/stat, /proc/meminfo and /proc/self/statm."""

    name = "proc"

    def __init__(self) -> None:
        self._last: Optional[Tuple[int, int]] = _cpu_times()
        self._page = os.sysconf("SC_PAGE_SIZE")

    def sample(self) -> Dict[str, float]:
        out: Dict[str, float] = {}
        total, idle = _cpu_times()
        if self._last is not None and total > self._last[0]:
            busy = (total - self._last[0]) - (idle - self._last[1])
            out[CPU_PERCENT] = round(100.0 * busy / (total - self._last[0]), 1)
        self._last = (total, idle)
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
    from . import log

    for cls in (PsutilHost, ProcHost):
        try:
            source = cls()
            source.sample()
            return source
        except Exception as exc:
            log.debug("host_source_unavailable", source=cls.name, error=repr(exc))
    return None
