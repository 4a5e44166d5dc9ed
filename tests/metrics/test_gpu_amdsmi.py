"""The amdsmi backend against the fake ``amdsmi``: silent absence, quirky values, mid-run failures."""

from __future__ import annotations

import copy
import io
import json
import math
import sys
import threading
from typing import Optional

import pytest
from fakes import amdgpu_sysfs, libs

from primus_lens_inject.config import Config
from primus_lens_inject.metrics.gpu import amdsmi_backend, describe, inventory, open_gpu_sources
from primus_lens_inject.metrics.host import open_host_source
from primus_lens_inject.metrics.sampler import Sampler
from primus_lens_inject.topology import Topology

# Two MI300X (current_socket_power, no edge sensor) listed by amdsmi in reverse bus order.
MI300X = [
    {"bdf": "0000:15:00.0", "uuid": "a1ff74a1-0000-1000-8034-18f4c9ab8b79",
     "market_name": "AMD Instinct MI300X", "asic_serial": "5E8C1B3F1A2C3B01",
     "vram_total": 192 * 2**30, "vram_used": 9 * 2**30, "gfx_activity": 55,
     "power": {"socket_power": 741, "current_socket_power": 741, "average_socket_power": 0xFFFF},
     "temperature": {"HOTSPOT": 61, "VRAM": 52}, "driver_version": "6.10.5"},
    {"bdf": "0000:05:00.0", "uuid": "b2ff74a1-0000-1000-8034-18f4c9ab8b79",
     "market_name": "AMD Instinct MI300X", "asic_serial": "5E8C1B3F1A2C3B00",
     "vram_total": 192 * 2**30, "vram_used": 7 * 2**30, "gfx_activity": 44,
     "power": {"socket_power": 702, "current_socket_power": 702, "average_socket_power": 0xFFFF},
     "temperature": {"HOTSPOT": 58, "VRAM": 50}, "driver_version": "6.10.5"},
]
AMDSMI = {"library": True, "devices": MI300X}


@pytest.fixture
def set_state(tmp_path, monkeypatch):
    with libs.faked(tmp_path, monkeypatch) as setter:
        setter({"amdsmi": AMDSMI})
        yield setter


def config(**kwargs) -> Config:
    return Config(**{"gpu_backend": "amdsmi", "sysfs_root": "/nonexistent/sys", **kwargs})


def opened(cfg: Config, topology: Optional[Topology] = None):
    (source,) = open_gpu_sources(cfg, topology or Topology())
    assert source.prime() is True
    return source


def initialized() -> int:
    return sys.modules["amdsmi"]._initialized


def test_mi300x_figures_in_their_units(set_state):
    source = opened(config())  # HIP device 0 is the lower bus id: amdsmi's second handle
    assert source.name == "amdsmi"
    assert source.sample() == {
        "_primus_gpu_util_percent": 44.0,
        "_primus_gpu_memory_used_bytes": float(7 * 2**30),
        "_primus_gpu_memory_total_bytes": float(192 * 2**30),
        "_primus_gpu_power_watts": 702.0,
        "_primus_gpu_temperature_junction_celsius": 58.0,
        "_primus_gpu_temperature_memory_celsius": 50.0,
    }  # MI300X has no edge sensor: no _primus_gpu_temperature_celsius
    source.close()
    assert initialized() == 0


def test_older_gpu_average_power_millidegrees_and_na_values(set_state):
    gpus = copy.deepcopy(MI300X)
    gpus[1].update(power={"current_socket_power": 0xFFFF, "average_socket_power": 287,
                          "socket_power": 0xFFFF},
                   temperature={"EDGE": 45000, "HOTSPOT": 63000, "VRAM": 0xFFFFFFFF})
    set_state({"amdsmi": dict(AMDSMI, devices=gpus)})
    sample = opened(config()).sample()
    assert sample["_primus_gpu_power_watts"] == 287.0
    assert sample["_primus_gpu_temperature_celsius"] == 45.0  # m°C from old versions
    assert sample["_primus_gpu_temperature_junction_celsius"] == 63.0
    assert "_primus_gpu_temperature_memory_celsius" not in sample  # a sentinel, not 4 million °C
    gpus[1].update(gfx_activity=0xFFFF, power={})
    set_state({"amdsmi": dict(AMDSMI, devices=gpus)})
    sample = opened(config()).sample()
    assert "_primus_gpu_util_percent" not in sample and "_primus_gpu_power_watts" not in sample
    assert all(isinstance(v, float) for v in sample.values())


def test_rocr_uuid_from_the_asic_serial_selects_the_device(set_state, monkeypatch):
    monkeypatch.setenv("ROCR_VISIBLE_DEVICES", "GPU-5e8c1b3f1a2c3b01")
    assert opened(config()).sample()["_primus_gpu_util_percent"] == 55.0
    monkeypatch.setenv("ROCR_VISIBLE_DEVICES", "1,0")
    monkeypatch.setenv("HIP_VISIBLE_DEVICES", "1")
    assert opened(config()).sample()["_primus_gpu_util_percent"] == 44.0


def test_hip_index_follows_the_kfd_topology(set_state, tmp_path):
    # KFD numbers bus 15 first: HIP device 0 is amdsmi's first handle, whatever the bus order.
    specs = [amdgpu_sysfs.gpu(0, kfd_node=2), amdgpu_sysfs.gpu(1, kfd_node=1)]
    sysfs = amdgpu_sysfs.build(str(tmp_path / "root"), specs)
    assert opened(config(sysfs_root=sysfs)).sample()["_primus_gpu_util_percent"] == 55.0
    source = opened(config(sysfs_root=sysfs), Topology(local_rank=1, rank=1))
    assert source.sample()["_primus_gpu_util_percent"] == 44.0


def test_retry_costs_one_round_and_unsupported_is_not_asked_again(set_state, capsys):
    source = opened(config())
    set_state({"amdsmi": dict(AMDSMI, errors={"amdsmi_get_gpu_activity": "RETRY",
                                              "amdsmi_get_power_info": "NOT_SUPPORTED"})})
    sample = source.sample()
    assert "_primus_gpu_util_percent" not in sample and "_primus_gpu_power_watts" not in sample
    set_state({"amdsmi": AMDSMI})
    sample = source.sample()
    assert sample["_primus_gpu_util_percent"] == 44.0 and "_primus_gpu_power_watts" not in sample
    assert capsys.readouterr().err == ""


def test_library_failing_mid_run_switches_the_backend_off_once(set_state, capsys):
    sampler = Sampler([open_host_source(), *open_gpu_sources(config(), Topology())], 1.0)
    sampler.sources[1].prime()
    sampler.sample_once()
    assert sampler.snapshot["_primus_gpu_memory_used_bytes"] == float(7 * 2**30)
    set_state({"amdsmi": dict(AMDSMI, errors={"amdsmi_get_gpu_memory_usage": "DRM_ERROR"})})
    for _ in range(3):
        sampler.sample_once()
    assert not any(k.startswith("_primus_gpu_") for k in sampler.snapshot)
    assert "_primus_sys_memory_percent" in sampler.snapshot
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("primus-lens: amdsmi metrics switched off")
    assert initialized() == 0
    sampler.close(math.inf)  # no process end: STOP_WAIT at most


def test_without_rocm_the_import_is_silent_and_not_retried(set_state, capfd, tmp_path):
    set_state({})  # the fake prints and raises KeyError like amdsmi without libamd_smi.so
    sysfs = amdgpu_sysfs.build(str(tmp_path / "root"), [amdgpu_sysfs.gpu(0)])
    report = describe(Config(sysfs_root=sysfs), Topology())
    assert report["rejected"] == {
        "amdsmi": "amdsmi cannot load libamd_smi.so (KeyError: 'libamd_smi.so')"}
    assert report["backend"] == "sysfs"  # auto falls back to the library-free path
    assert capfd.readouterr() == ("", "")
    set_state({"amdsmi": AMDSMI})  # a later attempt in the same process does not import again
    assert describe(Config(sysfs_root=sysfs), Topology())["backend"] == "sysfs"


def test_init_failure_is_a_reason_not_an_error(set_state, capfd):
    set_state({"amdsmi": dict(AMDSMI, init_error="DRIVER_NOT_LOADED")})
    report = describe(config(), Topology())
    assert report["backend"] is None
    assert report["rejected"]["amdsmi"].startswith("amdsmi_init failed: Error code:")
    assert capfd.readouterr().out == ""


def test_muted_stdout_drops_only_the_importing_threads_output():
    target = io.StringIO()
    muted = amdsmi_backend._MutedForThisThread(target)
    muted.write("ours\n")
    other = threading.Thread(target=lambda: muted.write("theirs\n"))
    other.start()
    other.join()
    muted.flush()
    assert target.getvalue() == "theirs\n"


def test_describe_and_inventory(set_state):
    report = describe(config(), Topology())
    json.dumps(report)
    assert (report["backend"], report["vendor"], report["driver_version"]) == (
        "amdsmi", "amd", "6.10.5")
    assert [(d["index"], d["runtime_index"], d["uuid"]) for d in report["devices"]] == [
        (0, 1, "GPU-5e8c1b3f1a2c3b01"), (1, 0, "GPU-5e8c1b3f1a2c3b00")]
    assert report["sample"]["_primus_gpu_power_watts"] == 702.0
    assert inventory(config(gpu_scope="node"), Topology()) == {
        "vendor": "amd", "backend": "amdsmi", "driver_version": "6.10.5",
        "devices": [{"name": "AMD Instinct MI300X", "memory_total_bytes": 192 * 2**30}] * 2}
    assert initialized() == 0
