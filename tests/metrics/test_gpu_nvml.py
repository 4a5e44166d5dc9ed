"""The NVML backend against the fake ``pynvml``: attribution, units, fallbacks and mid-run failures."""

from __future__ import annotations

import copy
import json
import math
import sys
from typing import Optional

import pytest
from fakes import libs

from primus_lens_inject.config import Config
from primus_lens_inject.metrics.gpu import describe, inventory, open_gpu_sources
from primus_lens_inject.metrics.host import open_host_source
from primus_lens_inject.metrics.sampler import Sampler
from primus_lens_inject.topology import Topology

# NVML's own order (index 0, 1, 2) is deliberately not the PCI bus order (1b, 3b, 5e):
# CUDA device 0 is the GPU at 0000:1b:00.0, NVML's index 1.
GPUS = [
    {"name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-aaaa0000-1111-2222-3333-444455556666",
     "bus_id": "00000000:3B:00.0", "memory_total": 85520809984, "memory_used": 1 << 30,
     "util_gpu": 10, "util_memory": 3, "power_mw": 110500, "temperature": 31},
    {"name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-bbbb0000-1111-2222-3333-444455556666",
     "bus_id": "00000000:1B:00.0", "memory_total": 85520809984, "memory_used": 2 << 30,
     "util_gpu": 20, "util_memory": 5, "power_mw": 220250, "temperature": 42},
    {"name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-cccc0000-1111-2222-3333-444455556666",
     "bus_id": "00000000:5E:00.0", "memory_total": 85520809984, "memory_used": 3 << 30,
     "util_gpu": 30, "util_memory": 7, "power_mw": 330000, "temperature": 53},
]
NVML = {"driver_version": "550.54.15", "devices": GPUS}
KEYS = ("util_percent", "memory_used_bytes", "memory_total_bytes", "power_watts",
        "temperature_celsius")


@pytest.fixture
def set_state(tmp_path, monkeypatch):
    with libs.faked(tmp_path, monkeypatch) as setter:
        setter({"nvml": NVML})
        yield setter


def nvml_config(**kwargs) -> Config:
    return Config(gpu_backend="nvml", **kwargs)


def opened(config: Config, topology: Optional[Topology] = None):
    (source,) = open_gpu_sources(config, topology or Topology())
    assert source.prime() is True
    return source


def refcount() -> int:
    return sys.modules["pynvml"]._refcount


def test_process_gpu_found_by_bus_order_not_nvml_index(set_state):
    source = opened(nvml_config())
    assert source.name == "nvml"
    assert source.sample() == {
        "_primus_gpu_util_percent": 20.0,
        "_primus_gpu_memory_used_bytes": float(2 << 30),
        "_primus_gpu_memory_total_bytes": 85520809984.0,
        "_primus_gpu_power_watts": 220.25,  # mW -> W
        "_primus_gpu_temperature_celsius": 42.0,
    }
    source.close()
    assert refcount() == 0


@pytest.mark.parametrize(("visible", "local_rank", "util"), [
    ("GPU-cccc", 0, 30.0),  # UUID prefix: NVML index 2
    ("GPU-aaaa0000-1111-2222-3333-444455556666", 3, 10.0),  # the only visible GPU
    ("2,0", 1, 20.0),  # CUDA index 0 is bus 1b, NVML index 1
    ("1", 0, 10.0),  # CUDA index 1 is bus 3b, NVML index 0
])
def test_visible_devices_and_local_rank_choose_the_gpu(set_state, monkeypatch, visible, local_rank,
                                                        util):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    source = opened(nvml_config(), Topology(local_rank=local_rank, rank=local_rank))
    assert source.sample()["_primus_gpu_util_percent"] == util


def test_several_gpus_are_keyed_by_visible_index(set_state, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,0")
    sample = opened(nvml_config(), Topology(local_rank=5, rank=5)).sample()
    assert sample["_primus_gpu_0_util_percent"] == 30.0
    assert sample["_primus_gpu_1_util_percent"] == 20.0
    assert sample["_primus_gpu_1_power_watts"] == 220.25
    assert not any(k.startswith("_primus_gpu_util") for k in sample)


def test_no_visible_gpu_means_no_source(set_state, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    (source,) = open_gpu_sources(nvml_config(), Topology())
    assert source.prime() is False
    assert source.sample() == {}
    assert refcount() == 0


def test_node_scope_local_rank_zero_samples_every_gpu_by_node_index(set_state, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")  # irrelevant in node scope
    config = nvml_config(gpu_scope="node")
    assert open_gpu_sources(config, Topology(local_rank=1, rank=1)) == []
    sample = opened(config).sample()
    assert [sample[f"_primus_gpu_{i}_util_percent"] for i in range(3)] == [20.0, 10.0, 30.0]
    assert len(sample) == 3 * len(KEYS)


def test_memory_used_leaves_out_the_driver_reserve_unless_the_driver_is_too_old(set_state):
    gpus = copy.deepcopy(GPUS)
    gpus[1]["memory_reserved"] = 615 << 20  # what an idle H200 reserves
    set_state({"nvml": dict(NVML, devices=gpus)})
    source = opened(nvml_config())
    assert source.sample()["_primus_gpu_memory_used_bytes"] == float(2 << 30)
    set_state({"nvml": dict(NVML, devices=gpus, missing=["nvmlDeviceGetMemoryInfo_v2"])})
    sample = source.sample()
    assert sample["_primus_gpu_memory_used_bytes"] == float((2 << 30) + (615 << 20))
    assert sample["_primus_gpu_memory_total_bytes"] == 85520809984.0


def test_temperature_falls_back_when_the_driver_lacks_temperature_v(set_state):
    set_state({"nvml": dict(NVML, missing=["nvmlDeviceGetTemperatureV"])})
    source = opened(nvml_config())
    assert source.sample()["_primus_gpu_temperature_celsius"] == 42.0
    set_state({"nvml": dict(NVML, missing=["nvmlDeviceGetTemperatureV",
                                           "nvmlDeviceGetTemperature"])})
    sample = source.sample()
    assert "_primus_gpu_temperature_celsius" not in sample
    assert sample["_primus_gpu_power_watts"] == 220.25


def test_unsupported_figure_is_dropped_and_never_asked_again(set_state, capsys):
    gpus = copy.deepcopy(GPUS)
    gpus[1]["errors"] = {"nvmlDeviceGetPowerUsage": "NOT_SUPPORTED"}
    set_state({"nvml": dict(NVML, devices=gpus)})
    source = opened(nvml_config())
    assert "_primus_gpu_power_watts" not in source.sample()
    set_state({"nvml": NVML})  # it would answer now, but the device said it does not support it
    sample = source.sample()
    assert "_primus_gpu_power_watts" not in sample and sample["_primus_gpu_util_percent"] == 20.0
    assert capsys.readouterr().err == ""


def test_transient_error_skips_one_round_only(set_state, capsys):
    source = opened(nvml_config())
    set_state({"nvml": dict(NVML, errors={"nvmlDeviceGetUtilizationRates": "TIMEOUT"})})
    assert "_primus_gpu_util_percent" not in source.sample()
    set_state({"nvml": NVML})
    assert source.sample()["_primus_gpu_util_percent"] == 20.0
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("error", ["GPU_IS_LOST", "UNKNOWN", "DRIVER_NOT_LOADED"])
def test_library_failing_mid_run_switches_the_backend_off_once(set_state, capsys, error):
    sampler = Sampler([open_host_source(), *open_gpu_sources(nvml_config(), Topology())], 1.0)
    sampler.sources[1].prime()
    sampler.sample_once()
    assert sampler.snapshot["_primus_gpu_power_watts"] == 220.25
    set_state({"nvml": dict(NVML, errors={"nvmlDeviceGetMemoryInfo": error})})
    sampler.sample_once()
    sampler.sample_once()
    assert not any(k.startswith("_primus_gpu_") for k in sampler.snapshot)
    assert "_primus_sys_process_rss_bytes" in sampler.snapshot  # the host source goes on
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("primus-lens: nvml metrics switched off")
    assert refcount() == 0  # the backend was closed
    sampler.close(math.inf)  # no process end: STOP_WAIT at most


def test_mig_instance_has_its_memory_and_its_gpu_power_and_temperature(set_state, monkeypatch):
    gpus = copy.deepcopy(GPUS[:1])
    gpus[0]["mig_mode"] = 1
    gpus[0]["mig"] = [
        {"uuid": "MIG-11111111-2222-3333-4444-555555555555", "name": "NVIDIA H100 MIG 1g.10gb",
         "gi": 7, "ci": 0, "memory_total": 10 << 30, "memory_used": 1 << 29},
        {"uuid": "MIG-99999999-2222-3333-4444-555555555555", "name": "NVIDIA H100 MIG 3g.40gb",
         "gi": 2, "ci": 0, "memory_total": 40 << 30, "memory_used": 3 << 29},
    ]
    set_state({"nvml": dict(NVML, devices=gpus)})
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "MIG-9999")
    assert opened(nvml_config()).sample() == {
        "_primus_gpu_memory_used_bytes": float(3 << 29),
        "_primus_gpu_memory_total_bytes": float(40 << 30),
        "_primus_gpu_power_watts": 110.5,
        "_primus_gpu_temperature_celsius": 31.0,
    }
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", f"MIG-{GPUS[0]['uuid']}/7/0")
    assert opened(nvml_config()).sample()["_primus_gpu_memory_total_bytes"] == float(10 << 30)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")  # CUDA numbers the instances
    assert opened(nvml_config()).sample()["_primus_gpu_memory_total_bytes"] == float(40 << 30)


def test_describe_names_backend_devices_mapping_and_a_sample(set_state, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-cccc")
    report = describe(nvml_config(), Topology(local_rank=2, rank=2))
    json.dumps(report)
    assert report["backend"] == "nvml" and report["vendor"] == "nvidia"
    assert report["driver_version"] == "550.54.15"
    assert [(d["index"], d["runtime_index"], d["pci_bus_id"]) for d in report["devices"]] == [
        (0, 1, "0000:3b:00.0"), (1, 0, "0000:1b:00.0"), (2, 2, "0000:5e:00.0")]
    assert report["mapping"]["variables"] == {"CUDA_VISIBLE_DEVICES": "GPU-cccc"}
    assert [s["uuid"] for s in report["mapping"]["sampled"]] == [GPUS[2]["uuid"]]
    assert report["sample"]["_primus_gpu_util_percent"] == 30.0
    assert refcount() == 0


def test_inventory_lists_the_process_gpus(set_state, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert inventory(nvml_config(), Topology(local_rank=3, rank=3)) == {
        "vendor": "nvidia", "backend": "nvml", "driver_version": "550.54.15",
        "devices": [{"name": "NVIDIA H100 80GB HBM3", "memory_total_bytes": 85520809984}] * 2}
    assert inventory(nvml_config(gpu_scope="node"), Topology())["devices"] == [
        {"name": "NVIDIA H100 80GB HBM3", "memory_total_bytes": 85520809984}] * 3


def test_no_driver_is_silent_and_explained(set_state, capfd):
    set_state({})  # the fake answers like pynvml without libnvidia-ml.so.1
    report = describe(Config(), Topology())
    assert report["backend"] is None
    assert report["rejected"]["nvml"] == "nvmlInit failed: NVML Shared Library Not Found"
    assert inventory(Config(), Topology()) == {"vendor": None, "backend": None, "devices": [],
                                               "driver_version": None}
    (source,) = open_gpu_sources(Config(), Topology())
    assert source.prime() is False
    assert capfd.readouterr() == ("", "")


def test_explicitly_chosen_backend_that_is_unavailable_warns_once(set_state, capsys):
    set_state({"nvml": {"init_error": "DRIVER_NOT_LOADED"}})
    for _ in range(2):
        (source,) = open_gpu_sources(nvml_config(), Topology())
        assert source.prime() is False
    assert capsys.readouterr().err.splitlines() == [
        "primus-lens: PRIMUS_LENS_GPU_BACKEND=nvml is unavailable (nvmlInit failed: Driver Not "
        "Loaded); no GPU figures"]


def test_entry_points_never_raise(set_state):
    assert open_gpu_sources(None, None) == []  # type: ignore[arg-type]
    assert inventory(None, None)["devices"] == []  # type: ignore[arg-type]
    assert "error" in describe(nvml_config(), None)  # type: ignore[arg-type]
    assert open_gpu_sources(Config(gpu_backend="none"), Topology()) == []
