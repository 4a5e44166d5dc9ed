"""AMD GPUs without any library: the files the amdgpu kernel driver exports in sysfs.

Per GPU, ``/sys/class/drm/cardN/device/`` (the PCI device) holds ``gpu_busy_percent`` (%),
``mem_info_vram_used`` / ``mem_info_vram_total`` (bytes), ``unique_id`` (16 hex digits, ROCr's
UUID body), ``uevent`` (``DRIVER=amdgpu``, ``PCI_SLOT_NAME=0000:03:00.0``) and ``hwmon/hwmonM/``
with ``power1_average`` or, on newer kernels and GPUs, ``power1_input`` (µW) and ``tempK_input``
(m°C) labelled by ``tempK_label`` (``edge``, ``junction``, ``mem``).  Every file is opened, read
and closed per sample (a few µs each): nothing is held open across a driver reload or GPU reset.
"""

from __future__ import annotations

import errno
import os
import re
from typing import Dict, List, Optional, Tuple

from .device import (
    MEMORY_TOTAL,
    MEMORY_USED,
    POWER,
    TEMPERATURE,
    TEMPERATURE_JUNCTION,
    TEMPERATURE_MEMORY,
    UTIL,
    Backend,
    Device,
    Reading,
    Transient,
    Unavailable,
    Unsupported,
    normalize_bus_id,
)
from .kfd import order

DRM = os.path.join("class", "drm")
_CARD = re.compile(r"card\d+$")
_TEMPERATURE_LABELS = {"edge": TEMPERATURE, "junction": TEMPERATURE_JUNCTION,
                       "mem": TEMPERATURE_MEMORY}
_TRANSIENT_ERRNOS = frozenset((errno.EBUSY, errno.EAGAIN, errno.EINTR, errno.ENODATA))
_UNSUPPORTED_ERRNOS = frozenset((errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM, errno.EACCES))


def read_text(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def _read_int(path: Optional[str]) -> int:
    """One integer file; errors say whether to retry, give up on the figure, or on the backend."""
    if path is None:
        raise Unsupported("not exported by this GPU/kernel")
    try:
        return int(read_text(path))
    except ValueError as exc:
        raise Transient(str(exc))
    except OSError as exc:
        if exc.errno in _TRANSIENT_ERRNOS:
            raise Transient(str(exc))
        if exc.errno in _UNSUPPORTED_ERRNOS:
            raise Unsupported(str(exc))
        raise  # ENODEV/ENOENT: the GPU went away; the backend is switched off


def _existing(path: str) -> Optional[str]:
    return path if os.path.isfile(path) else None


def _uevent(device_dir: str) -> Dict[str, str]:
    out = {}
    for line in read_text(os.path.join(device_dir, "uevent")).splitlines():
        name, _, value = line.partition("=")
        out[name] = value
    return out


class _Files:
    """The paths of one GPU's figure files (None: not exported)."""

    def __init__(self, device_dir: str) -> None:
        self.busy = _existing(os.path.join(device_dir, "gpu_busy_percent"))
        self.vram_used = _existing(os.path.join(device_dir, "mem_info_vram_used"))
        self.power: Optional[str] = None
        self.temperatures: List[Tuple[str, str]] = []
        hwmon = self._hwmon(device_dir)
        if hwmon is None:
            return
        for name in ("power1_average", "power1_input"):  # the first one that reads
            path = _existing(os.path.join(hwmon, name))
            try:
                _read_int(path)
            except (Unsupported, Transient, OSError):
                continue
            self.power = path
            break
        for entry in sorted(os.listdir(hwmon)):
            match = re.fullmatch(r"temp(\d+)_input", entry)
            if not match:
                continue
            label_path = os.path.join(hwmon, f"temp{match.group(1)}_label")
            try:
                label = read_text(label_path)
            except OSError:
                label = "edge" if match.group(1) == "1" else ""  # unlabelled: temp1 is edge
            figure = _TEMPERATURE_LABELS.get(label)
            if figure is not None and figure not in (f for f, _ in self.temperatures):
                self.temperatures.append((figure, os.path.join(hwmon, entry)))

    @staticmethod
    def _hwmon(device_dir: str) -> Optional[str]:
        base = os.path.join(device_dir, "hwmon")
        try:
            names = sorted(n for n in os.listdir(base) if n.startswith("hwmon"))
        except OSError:
            return None
        return os.path.join(base, names[0]) if names else None


class SysfsBackend(Backend):
    name = "sysfs"
    vendor = "amd"

    def __init__(self, sysfs_root: str) -> None:
        super().__init__()
        self._root = sysfs_root
        self._files: Dict[Device, _Files] = {}
        self.readers = (("util", self._util), ("memory", self._memory), ("power", self._power),
                        ("temperature", self._temperatures))
        self._enumerate()
        if not self.devices:
            raise Unavailable(f"no amdgpu device under {os.path.join(sysfs_root, DRM)}")
        version = _existing(os.path.join(sysfs_root, "module", "amdgpu", "version"))
        self.driver_version = read_text(version) if version else None

    def _enumerate(self) -> None:
        drm = os.path.join(self._root, DRM)
        try:
            cards = sorted((n for n in os.listdir(drm) if _CARD.match(n)), key=lambda n: int(n[4:]))
        except OSError:
            return
        seen = set()
        for card in cards:
            device_dir = os.path.join(drm, card, "device")
            try:
                uevent = _uevent(device_dir)
            except OSError:
                continue
            bus_id = normalize_bus_id(uevent.get("PCI_SLOT_NAME"))
            if uevent.get("DRIVER") != "amdgpu" or bus_id is None or bus_id in seen:
                continue
            seen.add(bus_id)
            device = Device(int(card[4:]), self._name(device_dir, uevent), self._uuid(device_dir),
                            bus_id, self._int(os.path.join(device_dir, "mem_info_vram_total")))
            self._files[device] = _Files(device_dir)
            self.devices.append(device)

    @staticmethod
    def _name(device_dir: str, uevent: Dict[str, str]) -> str:
        try:
            name = read_text(os.path.join(device_dir, "product_name"))
        except OSError:
            name = ""
        return name or f"AMD GPU [{uevent.get('PCI_ID', '?').lower()}]"

    @staticmethod
    def _uuid(device_dir: str) -> Optional[str]:
        try:
            number = int(read_text(os.path.join(device_dir, "unique_id")), 16)
        except (OSError, ValueError):
            return None
        return f"GPU-{number:016x}" if number else None

    @staticmethod
    def _int(path: str) -> Optional[int]:
        try:
            return int(read_text(path))
        except (OSError, ValueError):
            return None

    def runtime_order(self) -> List[Device]:
        return order(self.devices, self._root)

    def _util(self, device: Device) -> Reading:
        return {UTIL: _read_int(self._files[device].busy)}

    def _memory(self, device: Device) -> Reading:
        return {MEMORY_USED: _read_int(self._files[device].vram_used),
                MEMORY_TOTAL: device.memory_total_bytes}

    def _power(self, device: Device) -> Reading:
        return {POWER: _read_int(self._files[device].power) / 1e6}

    def _temperatures(self, device: Device) -> Reading:
        sensors = self._files[device].temperatures
        if not sensors:
            raise Unsupported("no temperature sensor")
        out: Reading = {}
        for figure, path in sensors:
            try:
                out[figure] = _read_int(path) / 1000.0
            except (Transient, Unsupported):
                continue  # one sensor's trouble does not hide the others
        return out
