"""The device state behind the fake ``pynvml`` and ``amdsmi``: one JSON file a test rewrites at will.

``PRIMUS_LENS_FAKE_GPU_STATE`` names the file.  The fakes re-read it whenever its modification
time or size changes, so a test can change utilisation, power or errors while a subprocess is
sampling.  Unset, or a missing file, means "no GPU library on this machine": the fakes then fail
the way the real modules fail without a driver.

Shape (every key optional)::

    {"nvml": {"init_error": "LIBRARY_NOT_FOUND", "driver_version": "550.54.15",
              "missing": ["nvmlDeviceGetMemoryInfo_v2"],  # C symbols: FUNCTION_NOT_FOUND
              "errors": {"nvmlDeviceGetPowerUsage": "GPU_IS_LOST"},  # by pynvml function
              "devices": [{"name", "uuid", "bus_id", "memory_total", "memory_used",
                           "memory_reserved", "util_gpu",
                           "util_memory", "power_mw", "temperature", "mig_mode",
                           "errors": {...}, "mig": [{"uuid", "name", "gi", "ci",
                                                     "memory_total", "memory_used"}]}]},
     "amdsmi": {"library": true, "init_error": "DRIVER_NOT_LOADED",
                "errors": {"amdsmi_get_power_info": "NOT_SUPPORTED"},
                "devices": [{"bdf", "uuid", "market_name", "asic_serial", "vram_total", "vram_used",
                             "gfx_activity", "power": {"current_socket_power", ...},
                             "temperature": {"EDGE": 45, "HOTSPOT": 60, "VRAM": 50},
                             "driver_version", "errors": {...}}]}}

Error values are the library's status names without prefix (``"NOT_SUPPORTED"``) or numbers.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Dict, Tuple

STATE_ENV = "PRIMUS_LENS_FAKE_GPU_STATE"

_cache: Dict[str, Tuple[Tuple[int, int, int], Dict[str, Any]]] = {}


def load(section: str) -> Dict[str, Any]:
    """The current state of one fake library; {} when no state file is configured."""
    path = os.environ.get(STATE_ENV)
    if not path:
        return {}
    try:
        st = os.stat(path)
    except OSError:
        return {}
    stamp = (st.st_ino, st.st_mtime_ns, st.st_size)  # write() replaces the inode
    cached = _cache.get(path)
    if cached is None or cached[0] != stamp:
        with open(path) as f:
            cached = (stamp, json.load(f))
        _cache[path] = cached
    return cached[1].get(section) or {}


def write(path: str, state: Dict[str, Any]) -> None:
    """Replace the state atomically, so a reader never sees half a file."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(state, f)
    os.replace(tmp, path)
