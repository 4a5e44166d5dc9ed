"""A fake ``pynvml`` (nvidia-ml-py 13.615.71) for tests: the real module's names, shapes and errors.

Copied from the real bindings, not invented: return types (``str`` from the string getters,
structures with ``.total/.free/.used`` bytes, ``.gpu/.memory`` %, ``.busId`` as
``"00000000:1B:00.0"``), units (power in mW, temperature in °C), the error hierarchy
(``NVMLError`` whose constructor returns the subclass for the code, ``.value``, ``str()`` texts,
one ``NVMLError_<Name>`` per ``NVML_ERROR_*``), ``nvmlInit`` raising ``NVMLError_LibraryNotFound``
without a driver, ``NVMLError_Uninitialized`` before init or after the last shutdown,
``NVMLError_FunctionNotFound`` for a symbol the driver lacks.  Device state comes from
``fake_gpu_state`` and may change between calls.
"""

from __future__ import annotations

import string
import sys
from typing import Any, Dict, Optional

import fake_gpu_state

NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_ALREADY_INITIALIZED = 5
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_INSUFFICIENT_SIZE = 7
NVML_ERROR_INSUFFICIENT_POWER = 8
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_TIMEOUT = 10
NVML_ERROR_IRQ_ISSUE = 11
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_CORRUPTED_INFOROM = 14
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_RESET_REQUIRED = 16
NVML_ERROR_OPERATING_SYSTEM = 17
NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18
NVML_ERROR_IN_USE = 19
NVML_ERROR_MEMORY = 20
NVML_ERROR_NO_DATA = 21
NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25
NVML_ERROR_NOT_READY = 27
NVML_ERROR_UNKNOWN = 999

NVML_TEMPERATURE_GPU = 0
NVML_DEVICE_MIG_DISABLE = 0
NVML_DEVICE_MIG_ENABLE = 1
nvmlTemperature_v1 = 0x100000C
nvmlMemory_v2 = 0x02000028


class NVMLError(Exception):
    _valClassMapping: Dict[int, type] = {}
    _errcode_to_string = {
        NVML_ERROR_UNINITIALIZED: "Uninitialized",
        NVML_ERROR_INVALID_ARGUMENT: "Invalid Argument",
        NVML_ERROR_NOT_SUPPORTED: "Not Supported",
        NVML_ERROR_NO_PERMISSION: "Insufficient Permissions",
        NVML_ERROR_ALREADY_INITIALIZED: "Already Initialized",
        NVML_ERROR_NOT_FOUND: "Not Found",
        NVML_ERROR_INSUFFICIENT_SIZE: "Insufficient Size",
        NVML_ERROR_INSUFFICIENT_POWER: "Insufficient External Power",
        NVML_ERROR_DRIVER_NOT_LOADED: "Driver Not Loaded",
        NVML_ERROR_TIMEOUT: "Timeout",
        NVML_ERROR_IRQ_ISSUE: "Interrupt Request Issue",
        NVML_ERROR_LIBRARY_NOT_FOUND: "NVML Shared Library Not Found",
        NVML_ERROR_FUNCTION_NOT_FOUND: "Function Not Found",
        NVML_ERROR_CORRUPTED_INFOROM: "Corrupted infoROM",
        NVML_ERROR_GPU_IS_LOST: "GPU is lost",
        NVML_ERROR_RESET_REQUIRED: "GPU requires restart",
        NVML_ERROR_OPERATING_SYSTEM: "The operating system has blocked the request.",
        NVML_ERROR_LIB_RM_VERSION_MISMATCH: "RM has detected an NVML/RM version mismatch.",
        NVML_ERROR_MEMORY: "Insufficient Memory",
        NVML_ERROR_UNKNOWN: "Unknown Error",
    }

    def __new__(cls, value):
        if cls is NVMLError:
            cls = NVMLError._valClassMapping.get(value, cls)
        obj = Exception.__new__(cls)
        obj.value = value
        return obj

    def __str__(self):
        return self._errcode_to_string.get(self.value, f"NVML Error with code {self.value}")

    def __eq__(self, other):
        return self.value == other.value

    __hash__ = Exception.__hash__


def _make_error_classes() -> None:
    module = sys.modules[__name__]
    for name in [n for n in dir(module) if n.startswith("NVML_ERROR_")]:
        class_name = "NVMLError_" + string.capwords(name.replace("NVML_ERROR_", ""),
                                                    "_").replace("_", "")
        value = getattr(module, name)

        def new(cls, *args, _value=value):
            return NVMLError.__new__(cls, _value)

        cls = type(class_name, (NVMLError,), {"__new__": new})
        cls.__module__ = __name__
        setattr(module, class_name, cls)
        NVMLError._valClassMapping[value] = cls


_make_error_classes()


class _Struct:
    """Stands in for the ctypes structures; only the fields are real."""

    def __init__(self, **fields: Any) -> None:
        self.__dict__.update(fields)


class c_nvmlMemory_t(_Struct):  # total, free, used: bytes (used includes reserved)
    pass


class c_nvmlMemory_v2_t(_Struct):  # version, total, reserved, free, used: bytes
    pass


class c_nvmlUtilization_t(_Struct):  # gpu, memory: %
    pass


class nvmlPciInfo_t(_Struct):  # busId "00000000:1B:00.0", domain, bus, device, pciDeviceId
    pass


class c_nvmlDevice_t:
    """An opaque handle: a GPU index, and a MIG slot for a MIG instance."""

    def __init__(self, index: int, slot: Optional[int] = None) -> None:
        self.index = index
        self.slot = slot


_refcount = 0


def _code(value: Any) -> int:
    return value if isinstance(value, int) else globals()["NVML_ERROR_" + str(value)]


def _state() -> Dict[str, Any]:
    return fake_gpu_state.load("nvml")


def _check(function: str, record: Optional[Dict[str, Any]] = None,
           symbol: Optional[str] = None) -> Dict[str, Any]:
    """Raise what the driver would answer for ``function`` (C entry point ``symbol``) right now."""
    if _refcount == 0:
        raise NVMLError(NVML_ERROR_UNINITIALIZED)
    state = _state()
    if (symbol or function) in state.get("missing", ()):
        raise NVMLError(NVML_ERROR_FUNCTION_NOT_FOUND)
    for errors in (state.get("errors", {}), (record or {}).get("errors", {})):
        if function in errors:
            raise NVMLError(_code(errors[function]))
    return state


def _record(handle: c_nvmlDevice_t, function: str, symbol: Optional[str] = None) -> Dict[str, Any]:
    devices = _check(function, symbol=symbol).get("devices", [])
    if not isinstance(handle, c_nvmlDevice_t) or handle.index >= len(devices):
        raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
    record = devices[handle.index]
    if handle.slot is not None:
        record = record.get("mig", [])[handle.slot]
    _check(function, record, symbol)
    return record


def nvmlInit():
    global _refcount
    state = _state()
    if not state:
        raise NVMLError(NVML_ERROR_LIBRARY_NOT_FOUND)
    if state.get("init_error"):
        raise NVMLError(_code(state["init_error"]))
    _refcount += 1


def nvmlShutdown():
    global _refcount
    _check("nvmlShutdown")
    _refcount -= 1


def nvmlSystemGetDriverVersion():
    return _check("nvmlSystemGetDriverVersion").get("driver_version", "550.54.15")


def nvmlDeviceGetCount():
    return len(_check("nvmlDeviceGetCount").get("devices", []))


def nvmlDeviceGetHandleByIndex(index):
    devices = _check("nvmlDeviceGetHandleByIndex").get("devices", [])
    if index >= len(devices):
        raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
    _check("nvmlDeviceGetHandleByIndex", devices[index])
    return c_nvmlDevice_t(index)


def nvmlDeviceGetName(handle):
    return _record(handle, "nvmlDeviceGetName").get("name", "NVIDIA H100 80GB HBM3")


def nvmlDeviceGetUUID(handle):
    return _record(handle, "nvmlDeviceGetUUID")["uuid"]


def nvmlDeviceGetPciInfo(handle):
    record = _record(handle, "nvmlDeviceGetPciInfo")
    bus_id = record["bus_id"]
    domain, bus, rest = bus_id.split(":")
    return nvmlPciInfo_t(busId=bus_id, busIdLegacy=bus_id[4:], domain=int(domain, 16),
                         bus=int(bus, 16), device=int(rest.split(".")[0], 16),
                         pciDeviceId=0x233010DE)


def nvmlDeviceGetMemoryInfo(handle, version=None):
    """Version 1 counts the driver's reserved memory as used; version 2 reports it apart."""
    if not version:
        record = _record(handle, "nvmlDeviceGetMemoryInfo")
        total, used = record["memory_total"], record["memory_used"]
        used += record.get("memory_reserved", 0)
        return c_nvmlMemory_t(total=total, free=total - used, used=used)
    record = _record(handle, "nvmlDeviceGetMemoryInfo", "nvmlDeviceGetMemoryInfo_v2")
    if version != nvmlMemory_v2:
        raise NVMLError(NVML_ERROR_ARGUMENT_VERSION_MISMATCH)
    total, used, reserved = (record["memory_total"], record["memory_used"],
                             record.get("memory_reserved", 0))
    return c_nvmlMemory_v2_t(version=version, total=total, reserved=reserved,
                             free=total - used - reserved, used=used)


def nvmlDeviceGetUtilizationRates(handle):
    record = _record(handle, "nvmlDeviceGetUtilizationRates")
    if handle.slot is not None:
        raise NVMLError(NVML_ERROR_NOT_SUPPORTED)  # as NVML answers for a MIG instance
    return c_nvmlUtilization_t(gpu=record["util_gpu"], memory=record.get("util_memory", 0))


def nvmlDeviceGetPowerUsage(handle):
    return int(_record(handle, "nvmlDeviceGetPowerUsage")["power_mw"])


def nvmlDeviceGetTemperatureV(handle, sensor, version=nvmlTemperature_v1):
    if version != nvmlTemperature_v1:
        raise NVMLError(NVML_ERROR_ARGUMENT_VERSION_MISMATCH)
    return _temperature(handle, sensor, "nvmlDeviceGetTemperatureV")


def nvmlDeviceGetTemperature(handle, sensor):
    return _temperature(handle, sensor, "nvmlDeviceGetTemperature")


def _temperature(handle, sensor, function):
    record = _record(handle, function)
    if sensor != NVML_TEMPERATURE_GPU:
        raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
    return int(record["temperature"])


def nvmlDeviceGetMigMode(device):
    record = _record(device, "nvmlDeviceGetMigMode")
    if "mig_mode" not in record:
        raise NVMLError(NVML_ERROR_NOT_SUPPORTED)  # a GPU without MIG
    return [record["mig_mode"], record["mig_mode"]]


def nvmlDeviceGetMaxMigDeviceCount(device):
    _record(device, "nvmlDeviceGetMaxMigDeviceCount")
    return 7


def nvmlDeviceGetMigDeviceHandleByIndex(device, index):
    record = _record(device, "nvmlDeviceGetMigDeviceHandleByIndex")
    if record.get("mig_mode") != NVML_DEVICE_MIG_ENABLE:
        raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
    if index >= len(record.get("mig", [])):
        raise NVMLError(NVML_ERROR_NOT_FOUND)
    return c_nvmlDevice_t(device.index, index)


def nvmlDeviceGetGpuInstanceId(device):
    return _record(device, "nvmlDeviceGetGpuInstanceId")["gi"]


def nvmlDeviceGetComputeInstanceId(device):
    return _record(device, "nvmlDeviceGetComputeInstanceId")["ci"]
