"""A fake ``amdsmi`` (PyPI 7.0.2) for tests: the real package's names, shapes and failure modes.

Copied from ``amdsmi_interface.py`` / ``amdsmi_exception.py``: without the library, import prints
the same two lines to stdout and raises ``KeyError('libamd_smi.so')``; functions check their
argument types like the real ones (``AmdSmiParameterException`` for a plain int where an enum is
expected); a non-success status raises ``AmdSmiLibraryException`` (``AmdSmiRetryException`` /
``AmdSmiTimeoutException`` for RETRY / TIMEOUT); activity and power fields equal to 0xFFFF become
``"N/A"``; ``asic_serial`` is formatted ``0x%016X``; VRAM is in bytes, power in W, temperatures as
the library returns them (°C, or m°C from old versions).  Device state comes from
``fake_gpu_state`` and may change between calls.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any, Dict

import fake_gpu_state

__version__ = "7.0.2"

if not fake_gpu_state.load("amdsmi").get("library"):
    print("/opt/rocm/lib/libamd_smi.so: cannot open shared object file: No such file or directory")
    print("Unable to find libamd_smi.so library try installing amd-smi-lib from your package manager")
    raise KeyError("libamd_smi.so")

STATUS = {"SUCCESS": 0, "INVAL": 1, "NOT_SUPPORTED": 2, "NOT_YET_IMPLEMENTED": 3,
          "FAIL_LOAD_MODULE": 4, "DRM_ERROR": 6, "API_FAILED": 7, "TIMEOUT": 8, "RETRY": 9,
          "NO_PERM": 10, "INTERRUPT": 11, "IO": 12, "FILE_ERROR": 14, "INIT_ERROR": 18,
          "BUSY": 30, "NOT_FOUND": 31, "NOT_INIT": 32, "DRIVER_NOT_LOADED": 34, "NO_DATA": 40,
          "FILE_NOT_FOUND": 52, "UNKNOWN_ERROR": 0xFFFFFFFF}


class AmdSmiException(Exception):
    """Base smi exception class"""


class AmdSmiLibraryException(AmdSmiException):
    def __init__(self, err_code):
        err_code = abs(err_code)
        super().__init__(err_code)
        self.err_code = err_code
        names = {v: k for k, v in STATUS.items()}
        self.err_info = f"AMDSMI_STATUS_{names.get(err_code, 'UNKNOWN_ERROR')}"

    def __str__(self):
        return f"Error code:\n\t{self.err_code} | {self.err_info}"

    def get_error_info(self, detailed=True):
        return self.err_info

    def get_error_code(self):
        return self.err_code


class AmdSmiRetryException(AmdSmiLibraryException):
    def __init__(self):
        super().__init__(STATUS["RETRY"])


class AmdSmiTimeoutException(AmdSmiLibraryException):
    def __init__(self):
        super().__init__(STATUS["TIMEOUT"])


class AmdSmiParameterException(AmdSmiException):
    def __init__(self, receivedValue, expectedType, msg=None):
        super().__init__(msg)
        self.err_code = None
        self.err_msg = msg or (f"Invalid parameter:\nActual type: {type(receivedValue)}\n"
                               f"Expected type: {expectedType}")

    def __str__(self):
        return self.err_msg


class AmdSmiInitFlags(IntEnum):
    INIT_ALL_PROCESSORS = 0xFFFFFFFF
    INIT_AMD_CPUS = 1
    INIT_AMD_GPUS = 2
    INIT_NON_AMD_CPUS = 4
    INIT_NON_AMD_GPUS = 8
    INIT_AMD_APUS = 3


class AmdSmiMemoryType(IntEnum):
    VRAM = 0
    VIS_VRAM = 1
    GTT = 2


class AmdSmiTemperatureType(IntEnum):
    EDGE = 0
    HOTSPOT = 1
    JUNCTION = 1
    VRAM = 2
    HBM_0 = 3
    HBM_1 = 4
    HBM_2 = 5
    HBM_3 = 6
    PLX = 7


class AmdSmiTemperatureMetric(IntEnum):
    CURRENT = 0
    MAX = 1
    MIN = 2
    CRITICAL = 5


class amdsmi_processor_handle:
    """Stands in for ``amdsmi_wrapper.amdsmi_processor_handle`` (a ctypes void pointer)."""

    def __init__(self, index: int) -> None:
        self.index = index


_initialized = 0


def _raise(code: Any) -> None:
    code = code if isinstance(code, int) else STATUS[code]
    if code == STATUS["RETRY"]:
        raise AmdSmiRetryException()
    if code == STATUS["TIMEOUT"]:
        raise AmdSmiTimeoutException()
    raise AmdSmiLibraryException(code)


def _device(handle: Any, function: str) -> Dict[str, Any]:
    if not isinstance(handle, amdsmi_processor_handle):
        raise AmdSmiParameterException(handle, amdsmi_processor_handle)
    if not _initialized:
        _raise("NOT_INIT")
    state = fake_gpu_state.load("amdsmi")
    devices = state.get("devices", [])
    if handle.index >= len(devices):
        _raise("NOT_FOUND")
    record = devices[handle.index]
    for errors in (state.get("errors", {}), record.get("errors", {})):
        if function in errors:
            _raise(errors[function])
    return record


def _check_enum(value: Any, kind: type) -> None:
    if not isinstance(value, kind):
        raise AmdSmiParameterException(value, kind)


def _na(value: Any) -> Any:
    return "N/A" if value == 0xFFFF else value


def amdsmi_init(flag=AmdSmiInitFlags.INIT_AMD_GPUS):
    global _initialized
    _check_enum(flag, AmdSmiInitFlags)
    error = fake_gpu_state.load("amdsmi").get("init_error")
    if error:
        _raise(error)
    _initialized += 1


def amdsmi_shut_down():
    global _initialized
    if not _initialized:
        _raise("NOT_INIT")
    _initialized -= 1


def amdsmi_get_processor_handles():
    if not _initialized:
        _raise("NOT_INIT")
    count = len(fake_gpu_state.load("amdsmi").get("devices", []))
    return [amdsmi_processor_handle(i) for i in range(count)]


def amdsmi_get_gpu_device_bdf(processor_handle):
    return _device(processor_handle, "amdsmi_get_gpu_device_bdf")["bdf"]


def amdsmi_get_gpu_device_uuid(processor_handle):
    return _device(processor_handle, "amdsmi_get_gpu_device_uuid").get("uuid", "")


def amdsmi_get_gpu_asic_info(processor_handle):
    record = _device(processor_handle, "amdsmi_get_gpu_asic_info")
    serial = record.get("asic_serial", "")
    return {"market_name": record.get("market_name") or "N/A", "vendor_id": "0x1002",
            "vendor_name": "Advanced Micro Devices Inc. [AMD/ATI]", "subvendor_id": "0x1002",
            "device_id": "0x74a1", "rev_id": "0x00",
            "asic_serial": f"0x{int(serial, 16):016X}" if serial else "N/A",
            "oam_id": 0, "num_compute_units": 304, "target_graphics_version": "gfx942",
            "subsystem_id": "0x74a1"}


def amdsmi_get_gpu_driver_info(processor_handle):
    record = _device(processor_handle, "amdsmi_get_gpu_driver_info")
    return {"driver_name": "amdgpu", "driver_version": record.get("driver_version") or "N/A",
            "driver_date": "2015/01/01 00:00"}


def amdsmi_get_gpu_activity(processor_handle):
    record = _device(processor_handle, "amdsmi_get_gpu_activity")
    return {name: _na(record.get(name, 0xFFFF))
            for name in ("gfx_activity", "umc_activity", "mm_activity")}


def amdsmi_get_gpu_memory_total(processor_handle, mem_type):
    _check_enum(mem_type, AmdSmiMemoryType)
    return int(_device(processor_handle, "amdsmi_get_gpu_memory_total")["vram_total"])


def amdsmi_get_gpu_memory_usage(processor_handle, mem_type):
    _check_enum(mem_type, AmdSmiMemoryType)
    return int(_device(processor_handle, "amdsmi_get_gpu_memory_usage")["vram_used"])


def amdsmi_get_gpu_vram_usage(processor_handle):
    record = _device(processor_handle, "amdsmi_get_gpu_vram_usage")
    return {"vram_total": record["vram_total"] // 2**20, "vram_used": record["vram_used"] // 2**20}


def amdsmi_get_power_info(processor_handle):
    power = _device(processor_handle, "amdsmi_get_power_info").get("power", {})
    fields = ("socket_power", "current_socket_power", "average_socket_power", "gfx_voltage",
              "soc_voltage", "mem_voltage", "power_limit")
    return {name: _na(power.get(name, 0xFFFF)) for name in fields}


def amdsmi_get_temp_metric(processor_handle, sensor_type, metric):
    _check_enum(sensor_type, AmdSmiTemperatureType)
    _check_enum(metric, AmdSmiTemperatureMetric)
    record = _device(processor_handle, "amdsmi_get_temp_metric")
    value = record.get("temperature", {}).get(sensor_type.name)
    if value is None or metric != AmdSmiTemperatureMetric.CURRENT:
        _raise("NOT_SUPPORTED")
    return int(value)
