"""NVIDIA GPUs through NVML (``import pynvml``, from the nvidia-ml-py package).

NVML reads the driver's counters without creating a CUDA context, so it is safe beside a training
job.  ``pynvml`` imports without a driver; ``nvmlInit`` then raises ``NVMLError_LibraryNotFound``
or ``NVMLError_DriverNotLoaded``, which makes this backend unavailable, silently.

Units: utilisation %, memory bytes, power mW (converted to W), temperature °C.  Memory uses the
version 2 structure, whose ``used`` leaves out the memory the driver reserves for itself (about
615 MiB on an idle H200, which version 1 counts as used), as ``nvidia-smi`` does; temperature uses
``nvmlDeviceGetTemperatureV``.  Each falls back to the older call where the driver or the
bindings lack the newer one.  A MIG instance has its own memory figures but no utilisation in
NVML; its power and temperature are its GPU's.
"""

from __future__ import annotations

from typing import Any, List, Optional

from ... import log
from .device import (
    MEMORY_TOTAL,
    MEMORY_USED,
    POWER,
    TEMPERATURE,
    UTIL,
    Backend,
    Device,
    Reading,
    Transient,
    Unavailable,
    Unsupported,
    normalize_bus_id,
    text,
)

# NVML return codes (stable across driver versions; older bindings lack some constants).
NOT_SUPPORTED, NO_PERMISSION, FUNCTION_NOT_FOUND = 3, 4, 13
TIMEOUT, NO_DATA, NOT_READY = 10, 21, 27
_ARGUMENT_VERSION_MISMATCH = 25
_TEMPERATURE_GPU = 0  # NVML_TEMPERATURE_GPU
_MIG_ENABLED = 1  # NVML_DEVICE_MIG_ENABLE

_UNSUPPORTED = frozenset((NOT_SUPPORTED, NO_PERMISSION, FUNCTION_NOT_FOUND))
_TRANSIENT = frozenset((TIMEOUT, NO_DATA, NOT_READY))


class NvmlBackend(Backend):
    name = "nvml"
    vendor = "nvidia"

    def __init__(self) -> None:
        super().__init__()
        try:
            import pynvml
        except ImportError:
            raise Unavailable("nvidia-ml-py (pynvml) is not installed")
        self._nvml = pynvml
        self._error = getattr(pynvml, "NVMLError", Exception)
        try:
            pynvml.nvmlInit()
        except self._error as exc:
            raise Unavailable(f"nvmlInit failed: {exc}")
        self._temperature_v = hasattr(pynvml, "nvmlDeviceGetTemperatureV")
        self._memory_v2 = getattr(pynvml, "nvmlMemory_v2", None)
        self.readers = (("util", self._util), ("memory", self._memory), ("power", self._power),
                        ("temperature", self._temperature))
        try:
            self._enumerate()
            self.driver_version = text(pynvml.nvmlSystemGetDriverVersion())
        except BaseException:
            self.close()
            raise
        if not self.devices:
            self.close()
            raise Unavailable("NVML sees no NVIDIA GPU")

    # -- enumeration --------------------------------------------------------------------------

    def _enumerate(self) -> None:
        nvml = self._nvml
        for index in range(nvml.nvmlDeviceGetCount()):
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
            except self._error as exc:  # e.g. a GPU this container may not use
                log.debug("nvml_device_skipped", index=index, error=str(exc))
                continue
            device = self._describe(index, handle)
            device.children = self._mig_instances(device)
            self.devices.append(device)

    def _describe(self, index: int, handle: Any, parent: Optional[Device] = None) -> Device:
        nvml = self._nvml
        memory = self._memory_info(handle)
        bus_id = parent.bus_id if parent else normalize_bus_id(nvml.nvmlDeviceGetPciInfo(handle).busId)
        return Device(index, text(nvml.nvmlDeviceGetName(handle)),
                      text(nvml.nvmlDeviceGetUUID(handle)), bus_id, int(memory.total),
                      handle=handle, parent=parent)

    def _mig_instances(self, gpu: Device) -> List[Device]:
        """The MIG instances of a GPU in MIG mode, in NVML's order; [] otherwise."""
        nvml = self._nvml
        try:
            if nvml.nvmlDeviceGetMigMode(gpu.handle)[0] != _MIG_ENABLED:
                return []
            slots = nvml.nvmlDeviceGetMaxMigDeviceCount(gpu.handle)
        except (self._error, AttributeError):  # not MIG-capable, or bindings/driver too old
            return []
        out: List[Device] = []
        for slot in range(slots):
            try:
                handle = nvml.nvmlDeviceGetMigDeviceHandleByIndex(gpu.handle, slot)
                instance = self._describe(slot, handle, parent=gpu)
                legacy = (f"MIG-{gpu.uuid}/{nvml.nvmlDeviceGetGpuInstanceId(handle)}/"
                          f"{nvml.nvmlDeviceGetComputeInstanceId(handle)}")
            except self._error:
                continue  # an empty slot answers NOT_FOUND
            instance.aliases = (legacy,)  # CUDA 11.0-11.x's form, MIG-GPU-<uuid>/<gi>/<ci>
            out.append(instance)
        return out

    def runtime_order(self) -> List[Device]:
        """CUDA's order: PCI bus order (CUDA_DEVICE_ORDER=PCI_BUS_ID, and FASTEST_FIRST among
        equal GPUs), a GPU in MIG mode standing for its instances."""
        out: List[Device] = []
        for gpu in self.node_devices():
            out.extend(gpu.children or [gpu])
        return out

    def node_devices(self) -> List[Device]:
        return sorted(self.devices, key=lambda d: d.bus_id or "")

    # -- figures ----------------------------------------------------------------------------

    def _call(self, function: Any, *args: Any) -> Any:
        try:
            return function(*args)
        except self._error as exc:
            code = getattr(exc, "value", None)
            if code in _UNSUPPORTED:
                raise Unsupported(str(exc))
            if code in _TRANSIENT:
                raise Transient(str(exc))
            raise

    def _util(self, device: Device) -> Reading:
        if device.parent is not None:
            raise Unsupported("NVML has no utilisation for a MIG instance")
        return {UTIL: self._call(self._nvml.nvmlDeviceGetUtilizationRates, device.handle).gpu}

    def _memory_info(self, handle: Any) -> Any:
        if self._memory_v2 is not None:
            try:
                return self._nvml.nvmlDeviceGetMemoryInfo(handle, version=self._memory_v2)
            except self._error as exc:
                if getattr(exc, "value", None) not in (FUNCTION_NOT_FOUND,
                                                       _ARGUMENT_VERSION_MISMATCH):
                    raise
                self._memory_v2 = None  # the driver predates it: version 1 from now on
        return self._nvml.nvmlDeviceGetMemoryInfo(handle)

    def _memory(self, device: Device) -> Reading:
        info = self._call(self._memory_info, device.handle)
        return {MEMORY_USED: info.used, MEMORY_TOTAL: info.total}

    def _power(self, device: Device) -> Reading:
        gpu = device.parent or device
        milliwatts = self._call(self._nvml.nvmlDeviceGetPowerUsage, gpu.handle)
        return {POWER: milliwatts / 1000.0}

    def _temperature(self, device: Device) -> Reading:
        gpu = device.parent or device
        if self._temperature_v:
            try:
                return {TEMPERATURE: self._call(self._nvml.nvmlDeviceGetTemperatureV, gpu.handle,
                                                _TEMPERATURE_GPU)}
            except Unsupported:
                self._temperature_v = False  # the driver predates it: use the old call from now on
            except self._error as exc:
                if getattr(exc, "value", None) != _ARGUMENT_VERSION_MISMATCH:
                    raise
                self._temperature_v = False
        return {TEMPERATURE: self._call(self._nvml.nvmlDeviceGetTemperature, gpu.handle,
                                        _TEMPERATURE_GPU)}

    def close(self) -> None:
        try:
            self._nvml.nvmlShutdown()
        except Exception:
            pass
