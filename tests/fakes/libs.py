"""Put the fake ``pynvml`` and ``amdsmi`` in place of the real ones inside a test process.

``faked`` prepends this directory to ``sys.path``, points the fakes at a fresh state file, forgets
any copy of the libraries imported before (and the injector's memory of a failed amdsmi import and
of warnings already given), and yields a function that replaces the device state.  On the way out
it forgets the fakes again, so that no later test imports them by accident.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Iterator

from .fake_gpu_state import STATE_ENV, write

FAKES = os.path.dirname(os.path.abspath(__file__))
MODULES = ("pynvml", "amdsmi", "fake_gpu_state")
VISIBILITY = ("CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES")


def _forget_fakes() -> None:
    for name in MODULES:
        module = sys.modules.get(name)
        if module is not None and (getattr(module, "__file__", "") or "").startswith(FAKES + os.sep):
            del sys.modules[name]


@contextlib.contextmanager
def faked(tmp_path: Path, monkeypatch: Any) -> Iterator[Callable[[Dict[str, Any]], None]]:
    from primus_lens_inject import log
    from primus_lens_inject.metrics.gpu import amdsmi_backend

    path = str(tmp_path / "fake-gpu-state.json")
    write(path, {})
    monkeypatch.syspath_prepend(FAKES)
    monkeypatch.setenv(STATE_ENV, path)
    for name in MODULES:
        monkeypatch.delitem(sys.modules, name, raising=False)
    for name in VISIBILITY:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(amdsmi_backend, "_import_failure", None)
    monkeypatch.setattr(log, "_said", set())
    try:
        yield lambda state: write(path, state)
    finally:
        _forget_fakes()
