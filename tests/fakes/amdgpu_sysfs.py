"""Builds a fake amdgpu sysfs tree (plus the ``/dev/dri`` render nodes beside it) as the kernel lays it out.

``<root>/sys`` holds, per GPU, the PCI device directory
``devices/pci0000:00/<bdf>/`` with the amdgpu attribute files, its ``drm/cardN`` and
``drm/renderD<minor>`` directories, the ``class/drm/cardN`` and ``class/drm/renderD<minor>``
symlinks (and a ``cardN-DP-1`` connector, which a reader must skip), the ``device`` link inside
each DRM directory, ``hwmon/hwmonM`` with power in µW and temperatures in m°C, and the KFD
topology (``class/kfd/kfd/topology/nodes/N/{gpu_id,properties}``, a CPU node first).
``<root>/dev/dri/renderD<minor>`` exist for the GPUs the "container" may use.

Values change with ``set_values``, which replaces files atomically like a rewrite by the kernel
would appear to a reader that opens the file afresh.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

# A GPU: bdf, card, render_minor, kfd_node, unique_id (int or None), name (product_name or None),
# vram_total, vram_used, busy, power_uw, power_file ("power1_average"/"power1_input"/None),
# temps {"edge"|"junction"|"mem": m°C} (labelled) or temps_unlabelled [m°C, ...], reachable.
DEFAULT_GPU: Dict[str, Any] = {
    "name": "AMD Instinct MI300X", "vram_total": 192 * 2**30, "vram_used": 5 * 2**30,
    "busy": 37, "power_uw": 350_000_000, "power_file": "power1_average",
    "temps": {"edge": 45_000, "junction": 61_000, "mem": 52_000}, "reachable": True,
}


def _write(path: str, value: Any) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(f"{value}\n")
    os.replace(tmp, path)


def _link(target: str, link: str) -> None:
    os.makedirs(os.path.dirname(link), exist_ok=True)
    os.symlink(os.path.relpath(target, os.path.dirname(link)), link)


def gpu(index: int, **overrides: Any) -> Dict[str, Any]:
    """A GPU spec with plausible defaults; ``index`` picks its bus, card, render minor, KFD node."""
    spec = dict(DEFAULT_GPU, bdf=f"0000:{0x05 + 0x10 * index:02x}:00.0", card=index,
                render_minor=128 + index, kfd_node=index + 1,
                unique_id=0x5E8C1B3F1A2C3B00 + index)
    spec.update(overrides)
    return spec


def device_dir(sysfs: str, spec: Dict[str, Any]) -> str:
    return os.path.join(sysfs, "devices", "pci0000:00", spec["bdf"])


def _hwmon(dev: str, spec: Dict[str, Any]) -> str:
    return os.path.join(dev, "hwmon", f"hwmon{spec['card'] + 2}")  # hwmon numbers are global


def build(root: str, gpus: List[Dict[str, Any]], driver_version: Optional[str] = "6.8.5") -> str:
    """Create the tree under ``root``; returns the sysfs root (``<root>/sys``)."""
    sysfs = os.path.join(root, "sys")
    nodes = os.path.join(sysfs, "class", "kfd", "kfd", "topology", "nodes")
    _write(os.path.join(nodes, "0", "gpu_id"), 0)
    _write(os.path.join(nodes, "0", "properties"), "cpu_cores_count 96\nsimd_count 0\n")
    os.makedirs(os.path.join(root, "dev", "dri"), exist_ok=True)
    for spec in gpus:
        dev = device_dir(sysfs, spec)
        bus, slot_fn = spec["bdf"].split(":")[1:]
        slot, function = slot_fn.split(".")
        _write(os.path.join(dev, "vendor"), "0x1002")
        _write(os.path.join(dev, "device"), "0x74a1")
        _write(os.path.join(dev, "uevent"),
               f"DRIVER=amdgpu\nPCI_CLASS=120000\nPCI_ID=1002:74A1\nPCI_SUBSYS_ID=1002:74A1\n"
               f"PCI_SLOT_NAME={spec['bdf']}\nMODALIAS=pci:v00001002d000074A1sv00001002")
        if spec.get("name"):
            _write(os.path.join(dev, "product_name"), spec["name"])
        if spec.get("unique_id"):
            _write(os.path.join(dev, "unique_id"), f"{spec['unique_id']:016x}")
        _write(os.path.join(dev, "mem_info_vram_total"), spec["vram_total"])
        for name, minor in ((f"card{spec['card']}", spec["card"]),
                            (f"renderD{spec['render_minor']}", spec["render_minor"])):
            drm_dir = os.path.join(dev, "drm", name)
            _write(os.path.join(drm_dir, "dev"), f"226:{minor}")
            _link(dev, os.path.join(drm_dir, "device"))
            _link(drm_dir, os.path.join(sysfs, "class", "drm", name))
        connector = os.path.join(dev, "drm", f"card{spec['card']}", f"card{spec['card']}-DP-1")
        _write(os.path.join(connector, "status"), "disconnected")
        _link(connector, os.path.join(sysfs, "class", "drm", f"card{spec['card']}-DP-1"))
        hwmon = _hwmon(dev, spec)
        _write(os.path.join(hwmon, "name"), "amdgpu")
        for number, label in enumerate(spec.get("temps", {}), start=1):
            _write(os.path.join(hwmon, f"temp{number}_label"), label)
        node = os.path.join(nodes, str(spec["kfd_node"]))
        _write(os.path.join(node, "gpu_id"), 40000 + spec["card"])
        location = int(bus, 16) << 8 | int(slot, 16) << 3 | int(function, 16)
        _write(os.path.join(node, "properties"),
               f"cpu_cores_count 0\nsimd_count 1216\nlocation_id {location}\n"
               f"domain {int(spec['bdf'].split(':')[0], 16)}\n"
               f"drm_render_minor {spec['render_minor']}\n"
               f"unique_id {spec.get('unique_id') or 0}\nvendor_id 4098\ndevice_id 29857\n")
        if spec.get("reachable", True):
            _write(os.path.join(root, "dev", "dri", f"renderD{spec['render_minor']}"), "")
        set_values(sysfs, spec)
    if driver_version:
        _write(os.path.join(sysfs, "module", "amdgpu", "version"), driver_version)
    return sysfs


def set_values(sysfs: str, spec: Dict[str, Any], **changes: Any) -> None:
    """Write the changing figures of one GPU (``spec`` updated with ``changes``)."""
    spec.update(changes)
    dev = device_dir(sysfs, spec)
    hwmon = _hwmon(dev, spec)
    if spec.get("busy") is not None:
        _write(os.path.join(dev, "gpu_busy_percent"), spec["busy"])
    _write(os.path.join(dev, "mem_info_vram_used"), spec["vram_used"])
    if spec.get("power_file"):
        _write(os.path.join(hwmon, spec["power_file"]), spec["power_uw"])
    for number, value in enumerate(spec.get("temps", {}).values(), start=1):
        _write(os.path.join(hwmon, f"temp{number}_input"), value)
    for number, value in enumerate(spec.get("temps_unlabelled", ()), start=1):
        _write(os.path.join(hwmon, f"temp{number}_input"), value)
