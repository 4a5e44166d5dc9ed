"""The order in which the ROCm runtime numbers AMD GPUs, read from the KFD topology in sysfs.

HIP device ``i`` (before any visibility variable) is the ``i``-th GPU node of
``/sys/class/kfd/kfd/topology/nodes`` in node order whose DRM render node this process can reach:
the ROCm thunk skips a GPU whose ``/dev/dri/renderD<minor>`` cannot be opened, which is how a
container given two of eight GPUs sees devices 0 and 1 only.  Each node's ``properties`` names its
PCI address (``domain``, ``location_id`` = bus << 8 | device << 3 | function) and its ``unique_id``,
from which ROCr forms the ``GPU-<16 hex>`` UUID that ``ROCR_VISIBLE_DEVICES`` accepts.

Render nodes are looked up beside the sysfs mount: ``/dev`` for ``/sys``, ``<root>/dev`` for a test
tree at ``<root>/sys``.  We only check that the node exists and is readable and writable; we never
open it (opening one creates driver state).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

from .device import Device

_NODES = os.path.join("class", "kfd", "kfd", "topology", "nodes")


@dataclass(frozen=True)
class KfdGpu:
    node: int
    bus_id: str
    uuid: Optional[str]  # "GPU-<16 hex>" as ROCr forms it, None when the GPU has no unique id


def _dev_root(sysfs_root: str) -> str:
    return os.path.join(os.path.dirname(os.path.normpath(sysfs_root)), "dev")


def _properties(path: str) -> Dict[str, int]:
    out: Dict[str, int] = {}
    with open(path) as f:
        for line in f:
            name, _, value = line.partition(" ")
            try:
                out[name] = int(value)
            except ValueError:
                continue
    return out


def _reachable(dev: str, minor: Optional[int]) -> bool:
    if minor is None:
        return True  # kernels before render minors were exported: nothing to check
    path = os.path.join(dev, "dri", f"renderD{minor}")
    return os.path.exists(path) and os.access(path, os.R_OK | os.W_OK)


def runtime_gpus(sysfs_root: str) -> Optional[List[KfdGpu]]:
    """The GPUs HIP would number 0, 1, …, or None when the KFD topology cannot be read."""
    nodes_dir = os.path.join(sysfs_root, _NODES)
    try:
        names = sorted((n for n in os.listdir(nodes_dir) if n.isdigit()), key=int)
    except OSError:
        return None
    dev = _dev_root(sysfs_root)
    out: List[KfdGpu] = []
    for name in names:
        node = os.path.join(nodes_dir, name)
        try:
            with open(os.path.join(node, "gpu_id")) as f:
                if int(f.read().strip() or 0) == 0:
                    continue  # a CPU node
            props = _properties(os.path.join(node, "properties"))
        except (OSError, ValueError):
            continue
        if "location_id" not in props or not _reachable(dev, props.get("drm_render_minor")):
            continue
        location = props["location_id"]
        bus_id = (f"{props.get('domain', 0):04x}:{location >> 8 & 0xFF:02x}:"
                  f"{location >> 3 & 0x1F:02x}.{location & 0x7:x}")
        unique = props.get("unique_id", 0)
        out.append(KfdGpu(int(name), bus_id, f"GPU-{unique:016x}" if unique else None))
    return out


def order(devices: Sequence[Device], sysfs_root: str) -> List[Device]:
    """``devices`` in HIP's order, limited to the GPUs this process can reach.

    Without a readable KFD topology, PCI bus order (the kernel's probe order on common systems).
    A device with no UUID of its own takes the one ROCr derives from the topology.
    """
    gpus = runtime_gpus(sysfs_root)
    if gpus is None:
        return sorted(devices, key=lambda d: d.bus_id or "")
    by_bus = {d.bus_id: d for d in devices if d.bus_id}
    out: List[Device] = []
    for gpu in gpus:
        device = by_bus.get(gpu.bus_id)
        if device is None or device in out:
            continue
        if device.uuid is None and gpu.uuid is not None:
            device.uuid = gpu.uuid
        out.append(device)
    return out
