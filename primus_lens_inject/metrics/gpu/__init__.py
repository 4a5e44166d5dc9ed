"""GPU figures for enrichment, doctor and the detection report: AMD (amdsmi, amdgpu sysfs), NVIDIA (NVML).

Three entry points, none of which ever raises, or prints when a machine has no GPU library or
driver:

- ``open_gpu_sources`` gives the sampler its GPU source (opened lazily in the sampler thread);
- ``describe`` says which backend was chosen and why, what devices it sees and which of them this
  process samples (``primus-lens doctor``);
- ``inventory`` names the GPUs this process uses for the framework-detection report.

Nothing here creates a CUDA/HIP context, calls ``torch.cuda``, reads profiling counters (DCGM,
CUPTI) or starts a subprocess.  See docs/gpu.md.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional

from ... import log
from ...config import Config
from ...topology import Topology
from .choose import attribute, choose
from .device import Backend
from .source import GpuSource

__all__ = ["describe", "inventory", "open_gpu_sources"]


def open_gpu_sources(config: Config, topology: Topology,
                     environ: Optional[Mapping[str, str]] = None) -> List[Any]:
    """The GPU sources for this process's sampler: [] or one source, opened in the sampler thread.

    In node scope only local rank 0 samples, so every other process gets none.
    """
    try:
        if config.gpu_backend == "none":
            return []
        if config.gpu_scope == "node" and topology.local_rank != 0:
            log.debug("gpu_source_off", reason="node scope: local rank 0 samples the node")
            return []
        return [GpuSource(config, topology, environ)]
    except Exception as exc:
        log.debug("gpu_source_failed", error=repr(exc))
        return []


def _devices(backend: Backend) -> List[Dict[str, Any]]:
    """Every device the library enumerates, with the index the GPU runtime gives it (if any)."""
    runtime = {d: i for i, d in enumerate(backend.runtime_order())}
    out = []
    for device in backend.devices:
        for entry in (device, *device.children):
            out.append(dict(index=entry.index, runtime_index=runtime.get(entry),
                            **entry.describe()))
    return out


def describe(config: Config, topology: Topology,
             environ: Optional[Mapping[str, str]] = None) -> Dict[str, Any]:
    """Everything doctor shows about GPUs, JSON-serialisable; opens, reads once and closes."""
    out: Dict[str, Any] = {"backend": None, "vendor": None}
    try:
        out.update(requested=config.gpu_backend, scope=config.gpu_scope,
                   local_rank=topology.local_rank)
        choice = choose(config)
        out.update(reason=choice.reason, rejected=choice.rejected)
        backend = choice.backend
        if backend is None:
            return out
        source = GpuSource(config, topology, environ)
        try:
            out.update(backend=backend.name, vendor=backend.vendor,
                       driver_version=backend.driver_version, devices=_devices(backend))
            attribution = attribute(backend, config, topology, environ)
            out["mapping"] = attribution.describe()
            out["samples_here"] = config.gpu_scope == "process" or topology.local_rank == 0
            source.attach(backend, attribution)
            out["sample"] = source.sample()
        finally:
            backend.close()
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
    return out


def inventory(config: Config, topology: Topology,
              environ: Optional[Mapping[str, str]] = None) -> Dict[str, Any]:
    """The GPUs this process uses (all of them in node scope), for the detection report."""
    out: Dict[str, Any] = {"vendor": None, "backend": None, "devices": [], "driver_version": None}
    try:
        backend = choose(config).backend
        if backend is None:
            return out
        try:
            attribution = attribute(backend, config, topology, environ)
            out.update(vendor=backend.vendor, backend=backend.name,
                       driver_version=backend.driver_version,
                       devices=[{"name": d.name, "memory_total_bytes": d.memory_total_bytes}
                                for _, d in attribution.sampled])
        finally:
            backend.close()
    except Exception as exc:
        log.debug("gpu_inventory_failed", error=repr(exc))
    return out
