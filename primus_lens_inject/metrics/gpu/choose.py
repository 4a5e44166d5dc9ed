"""Which backend a process uses and which of its GPUs it samples: the decisions doctor explains.

``auto`` tries amdsmi, then amdgpu sysfs, then NVML, and takes the first that opens and sees at
least one GPU; each rejected backend keeps its reason.  An explicit ``PRIMUS_LENS_GPU_BACKEND``
tries that backend only.  AMD comes first because an NVIDIA node answers the AMD probes in a few
milliseconds (no ROCm library, no amdgpu device), and the probe runs once per process, off the
training thread.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Dict, Mapping, Optional

from ...config import Config
from ...topology import Topology
from . import visible
from .amdsmi_backend import AmdsmiBackend
from .device import Backend, Unavailable
from .nvml import NvmlBackend
from .sysfs import SysfsBackend

_AUTO_ORDER = ("amdsmi", "sysfs", "nvml")


@dataclass
class Choice:
    requested: str
    backend: Optional[Backend]
    reason: str
    rejected: Dict[str, str] = field(default_factory=dict)


def _open(name: str, config: Config) -> Backend:
    if name == "nvml":
        return NvmlBackend()
    if name == "amdsmi":
        return AmdsmiBackend(config.sysfs_root)
    return SysfsBackend(config.sysfs_root)


def choose(config: Config) -> Choice:
    """Open the backend the configuration asks for; never raises."""
    requested = config.gpu_backend
    if requested == "none":
        return Choice(requested, None, "PRIMUS_LENS_GPU_BACKEND=none")
    names = _AUTO_ORDER if requested == "auto" else (requested,)
    rejected: Dict[str, str] = {}
    for name in names:
        try:
            backend = _open(name, config)
        except Unavailable as exc:
            rejected[name] = str(exc)
            continue
        except Exception as exc:
            rejected[name] = f"{type(exc).__name__}: {exc}"
            continue
        reason = (f"auto: the first of {', '.join(_AUTO_ORDER)} that opened and sees a GPU"
                  if requested == "auto" else f"PRIMUS_LENS_GPU_BACKEND={name}")
        return Choice(requested, backend, reason, rejected)
    return Choice(requested, None, "no GPU backend is available", rejected)


def attribute(backend: Backend, config: Config, topology: Topology,
              environ: Optional[Mapping[str, str]] = None) -> visible.Attribution:
    """The devices this process samples, keyed as the record will key them."""
    if config.gpu_scope == "node":
        return visible.node(backend.node_devices())
    env = os.environ if environ is None else environ
    return visible.pick(visible.visible(backend.vendor, backend.runtime_order(), env),
                        topology.local_rank)
