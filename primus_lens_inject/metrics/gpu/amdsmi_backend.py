"""AMD GPUs through ``amdsmi``, ROCm's management library (the PyPI package binds ``libamd_smi.so``).

Without ROCm, ``import amdsmi`` prints two lines to stdout and raises ``KeyError('libamd_smi.so')``;
with a mismatched library it raises ``AttributeError``.  The import therefore runs with this
thread's stdout muted (other threads' output passes through untouched, so the training program's
prints are never swallowed) and any exception makes the backend unavailable.  A failed import is
remembered for the process: it is not retried.

Units and quirks handled here: activity % (``"N/A"`` when unsupported), VRAM bytes, power in W from
``current_socket_power`` (MI300 and newer) or ``average_socket_power`` (older), ``"N/A"`` or
sentinel values skipped, temperatures in °C except from versions that return m°C (a value above
1000 is read as m°C).  The ROCr UUID (``GPU-<16 hex>``) comes from the ASIC serial, which is the
unique id ROCr uses.
"""

from __future__ import annotations

import sys
import threading
from typing import Any, Dict, List, Optional

from ... import log
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
    finite,
    normalize_bus_id,
    text,
)
from .kfd import order

# amdsmi status codes (amdsmi_wrapper.AMDSMI_STATUS_*).
_UNSUPPORTED = frozenset((2, 3, 10, 40, 52, 55))  # NOT_SUPPORTED, NOT_YET_IMPLEMENTED, NO_PERM,
#                                                  NO_DATA, FILE_NOT_FOUND, SETTING_UNAVAILABLE
_TRANSIENT = frozenset((8, 9, 11, 30))  # TIMEOUT, RETRY, INTERRUPT, BUSY
_MAX_WATTS = 10_000.0  # no single GPU draws more; larger values are sentinels or other units
_POWER_FIELDS = ("current_socket_power", "average_socket_power", "socket_power")

_import_failure: Optional[str] = None


class _MutedForThisThread:
    """Stands in for ``sys.stdout``: drops what the importing thread writes, passes the rest."""

    def __init__(self, target: Any) -> None:
        self._target = target
        self._thread = threading.get_ident()

    def write(self, data: str) -> int:
        if threading.get_ident() == self._thread:
            return len(data)
        return self._target.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)


def _import() -> Any:
    global _import_failure
    if _import_failure is not None:
        raise Unavailable(_import_failure)
    stdout = sys.stdout
    sys.stdout = _MutedForThisThread(stdout)
    try:
        import amdsmi

        return amdsmi
    except ModuleNotFoundError as exc:
        _import_failure = ("amdsmi is not installed" if exc.name == "amdsmi"
                           else f"amdsmi import failed: {exc}")
    except Exception as exc:  # KeyError: no libamd_smi.so; AttributeError: library/binding skew
        _import_failure = f"amdsmi cannot load libamd_smi.so ({type(exc).__name__}: {exc})"
    finally:
        if isinstance(sys.stdout, _MutedForThisThread):
            sys.stdout = stdout
    raise Unavailable(_import_failure)


def _rocr_uuid(serial: Any) -> Optional[str]:
    """``GPU-<16 hex>`` from amdsmi's ``asic_serial`` (``0x…``, or ``"N/A"``)."""
    try:
        number = int(str(serial), 16)
    except ValueError:
        return None
    return f"GPU-{number:016x}" if number else None


def _celsius(value: Any) -> Optional[float]:
    """°C from amdsmi, whose older versions returned m°C."""
    number = finite(value)
    if number is None:
        return None
    if number > 1000:
        number /= 1000.0
    return number if -60.0 < number < 200.0 else None


def watts(info: Dict[str, Any]) -> Optional[float]:
    """The first valid socket power field (the newer one first)."""
    for name in _POWER_FIELDS:
        value = finite(info.get(name))
        if value is not None and 0.0 < value <= _MAX_WATTS:
            return value
    return None


class AmdsmiBackend(Backend):
    name = "amdsmi"
    vendor = "amd"

    def __init__(self, sysfs_root: str) -> None:
        super().__init__()
        amdsmi = _import()
        self._smi = amdsmi
        self._error = amdsmi.AmdSmiLibraryException
        self._sysfs_root = sysfs_root
        try:
            amdsmi.amdsmi_init(amdsmi.AmdSmiInitFlags.INIT_AMD_GPUS)
        except amdsmi.AmdSmiException as exc:
            raise Unavailable(f"amdsmi_init failed: {exc}")
        self._vram = amdsmi.AmdSmiMemoryType.VRAM
        kinds, current = amdsmi.AmdSmiTemperatureType, amdsmi.AmdSmiTemperatureMetric.CURRENT
        self.readers = (("util", self._util), ("memory", self._memory), ("power", self._power),
                        *((figure, self._temperature(figure, sensor, current)) for figure, sensor in
                          ((TEMPERATURE, kinds.EDGE), (TEMPERATURE_JUNCTION, kinds.HOTSPOT),
                           (TEMPERATURE_MEMORY, kinds.VRAM))))
        try:
            self._enumerate()
        except BaseException:
            self.close()
            raise
        if not self.devices:
            self.close()
            raise Unavailable("amdsmi sees no AMD GPU")

    def _optional(self, function: Any, *args: Any) -> Any:
        try:
            return function(*args)
        except self._smi.AmdSmiException as exc:
            log.debug("amdsmi_call_failed", call=function.__name__, error=str(exc))
            return None

    def _enumerate(self) -> None:
        smi = self._smi
        for index, handle in enumerate(smi.amdsmi_get_processor_handles()):
            asic = self._optional(smi.amdsmi_get_gpu_asic_info, handle) or {}
            library_uuid = self._optional(smi.amdsmi_get_gpu_device_uuid, handle)
            total = self._optional(smi.amdsmi_get_gpu_memory_total, handle, self._vram)
            self.devices.append(Device(
                index, text(asic.get("market_name") or "AMD GPU"), _rocr_uuid(asic.get("asic_serial")),
                normalize_bus_id(self._optional(smi.amdsmi_get_gpu_device_bdf, handle)),
                int(total) if total else None, handle=handle,
                aliases=(text(library_uuid),) if library_uuid else ()))
        if self.devices:
            info = self._optional(smi.amdsmi_get_gpu_driver_info, self.devices[0].handle) or {}
            version = text(info.get("driver_version", ""))
            self.driver_version = version if version and version != "N/A" else None

    def runtime_order(self) -> List[Device]:
        return order(self.devices, self._sysfs_root)

    def _call(self, function: Any, *args: Any) -> Any:
        try:
            return function(*args)
        except self._error as exc:
            code = exc.get_error_code()
            if code in _UNSUPPORTED:
                raise Unsupported(str(exc))
            if code in _TRANSIENT:
                raise Transient(str(exc))
            raise

    def _util(self, device: Device) -> Reading:
        value = finite(self._call(self._smi.amdsmi_get_gpu_activity, device.handle)["gfx_activity"])
        return {UTIL: value if value is not None and value <= 100 else None}

    def _memory(self, device: Device) -> Reading:
        used = self._call(self._smi.amdsmi_get_gpu_memory_usage, device.handle, self._vram)
        return {MEMORY_USED: used, MEMORY_TOTAL: device.memory_total_bytes}

    def _power(self, device: Device) -> Reading:
        return {POWER: watts(self._call(self._smi.amdsmi_get_power_info, device.handle))}

    def _temperature(self, figure: str, sensor: Any, metric: Any) -> Any:
        def read(device: Device) -> Reading:
            value = self._call(self._smi.amdsmi_get_temp_metric, device.handle, sensor, metric)
            return {figure: _celsius(value)}

        return read

    def close(self) -> None:
        try:
            self._smi.amdsmi_shut_down()
        except Exception:
            pass
