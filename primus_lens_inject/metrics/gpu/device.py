"""What every GPU backend shares: the device record, the figure vocabulary and per-figure reading.

A backend (NVML, amdsmi, amdgpu sysfs) enumerates ``Device`` records once and then reads
figures from them.  Libraries and drivers differ in what each GPU supports, so a figure is read
through ``_read_figures``: a group the device does not support (``Unsupported``) is never asked
for again, a momentary refusal (``Transient``) costs only this round, and any other exception is a
failure of the backend, which the sampler then switches off with one warning.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

from ... import log

# Figure names; the record key is ``_primus_gpu_<figure>`` or ``_primus_gpu_<i>_<figure>`` (source.py).
UTIL = "util_percent"
MEMORY_USED = "memory_used_bytes"
MEMORY_TOTAL = "memory_total_bytes"
POWER = "power_watts"
TEMPERATURE = "temperature_celsius"  # NVIDIA: the GPU die sensor; AMD: edge
TEMPERATURE_JUNCTION = "temperature_junction_celsius"  # AMD junction / hotspot
TEMPERATURE_MEMORY = "temperature_memory_celsius"  # AMD VRAM / HBM

FIGURES = (UTIL, MEMORY_USED, MEMORY_TOTAL, POWER, TEMPERATURE, TEMPERATURE_JUNCTION,
           TEMPERATURE_MEMORY)

Reading = Dict[str, Any]  # figure -> raw number; _read_figures keeps the finite ones
Reader = Callable[["Device"], Reading]


class Unavailable(Exception):
    """A backend cannot be used here (no library, no driver, no device); the text says why."""


class Unsupported(Exception):
    """This device does not offer this figure; it is not asked for again."""


class Transient(Exception):
    """The library asks to try again later (busy, retry, timeout); the figure skips one round."""


@dataclass(eq=False)  # a device is itself: equality and hashing by identity
class Device:
    """One GPU (or MIG instance) as a backend enumerates it.

    ``uuid`` is the identifier the GPU runtime accepts in ``*_VISIBLE_DEVICES`` (NVIDIA ``GPU-…`` /
    ``MIG-…``, ROCr ``GPU-<16 hex>``); ``aliases`` are further identifiers that select the same
    device there.  ``bus_id`` is the normalised PCI address (``0000:3b:00.0``), the key that ties
    a library's enumeration to the runtime's.
    """

    index: int  # the library's own enumeration index
    name: str
    uuid: Optional[str]
    bus_id: Optional[str]
    memory_total_bytes: Optional[int]
    handle: Any = field(default=None, repr=False)
    aliases: Tuple[str, ...] = ()
    parent: Optional[Device] = field(default=None, repr=False)  # a MIG instance's GPU
    children: List[Device] = field(default_factory=list, repr=False)  # a GPU's MIG instances

    def identifiers(self) -> Tuple[str, ...]:
        return tuple(x for x in (self.uuid, *self.aliases) if x)

    def describe(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"name": self.name, "uuid": self.uuid, "pci_bus_id": self.bus_id,
                               "memory_total_bytes": self.memory_total_bytes}
        if self.parent is not None:
            out["parent_uuid"] = self.parent.uuid
        return out


def normalize_bus_id(raw: Any) -> Optional[str]:
    """``00000000:3B:00.0`` (NVML), ``0000:3b:00.0`` (amdsmi, sysfs) -> ``0000:3b:00.0``."""
    if isinstance(raw, bytes):
        raw = raw.decode("ascii", "replace")
    if not isinstance(raw, str):
        return None
    text = raw.strip().lower()
    head, sep, function = text.rpartition(".")
    parts = head.split(":")
    if not sep or len(parts) not in (2, 3):
        return None
    try:
        if len(parts) == 2:
            parts.insert(0, "0")
        domain, bus, slot = (int(p, 16) for p in parts)
        return f"{domain:04x}:{bus:02x}:{slot:02x}.{int(function, 16):x}"
    except ValueError:
        return None


def text(raw: Any) -> str:
    """Library strings arrive as ``str`` or, from older bindings, ``bytes``."""
    if isinstance(raw, bytes):
        return raw.decode("utf-8", "replace").strip()
    return str(raw).strip()


def finite(value: Any) -> Optional[float]:
    """A plain finite float, or None for anything else (strings like "N/A", NaN, None)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    result = float(value)
    return result if math.isfinite(result) else None


def _read_figures(device: Device, readers: Sequence[Tuple[str, Reader]],
                  unsupported: Set[Tuple[Device, str]]) -> Dict[str, float]:
    """Run each reader group once; only finite values reach the result."""
    out: Dict[str, float] = {}
    for group, reader in readers:
        key = (device, group)
        if key in unsupported:
            continue
        try:
            values = reader(device)
        except Unsupported as exc:
            unsupported.add(key)
            log.debug("gpu_figure_unsupported", device=device.index, figure=group, error=str(exc))
            continue
        except Transient:
            continue
        for figure, value in values.items():
            number = finite(value)
            if number is not None:
                out[figure] = number
    return out


class Backend:
    """A management library opened for sampling; subclasses enumerate in ``__init__``.

    ``devices`` is the library's own enumeration; ``runtime_order`` is the order in which the GPU
    runtime (CUDA, HIP) numbers them without visibility variables, which is what
    ``*_VISIBLE_DEVICES`` indices refer to; ``node_devices`` are the GPUs node scope samples.
    """

    name = ""
    vendor = ""

    def __init__(self) -> None:
        self.devices: List[Device] = []
        self.driver_version: Optional[str] = None
        self.readers: Sequence[Tuple[str, Reader]] = ()
        self._unsupported: Set[Tuple[Device, str]] = set()

    def runtime_order(self) -> List[Device]:
        return sorted(self.devices, key=lambda d: d.bus_id or "")

    def node_devices(self) -> List[Device]:
        return self.runtime_order()

    def read(self, device: Device) -> Dict[str, float]:
        return _read_figures(device, self.readers, self._unsupported)

    def close(self) -> None:
        """Release the library (reference-counted by NVML and amdsmi, so other users keep theirs)."""
