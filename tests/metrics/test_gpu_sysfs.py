"""The library-free amdgpu sysfs backend, driven end to end by a fake sysfs tree."""

from __future__ import annotations

import json
import os
from typing import Optional

import pytest
from fakes import amdgpu_sysfs, libs

from primus_lens_inject.config import Config
from primus_lens_inject.metrics.gpu import describe, inventory, open_gpu_sources
from primus_lens_inject.metrics.gpu.device import Unavailable
from primus_lens_inject.metrics.gpu.sysfs import SysfsBackend
from primus_lens_inject.metrics.host import open_host_source
from primus_lens_inject.metrics.sampler import Sampler
from primus_lens_inject.topology import Topology


@pytest.fixture(autouse=True)
def no_libraries(tmp_path, monkeypatch):
    """No amdsmi, no NVML: auto must land on sysfs."""
    with libs.faked(tmp_path, monkeypatch):
        yield


def tree(tmp_path, *specs):
    specs = list(specs) or [amdgpu_sysfs.gpu(0)]
    return amdgpu_sysfs.build(str(tmp_path / "root"), specs), specs


def opened(sysfs: str, topology: Optional[Topology] = None, **kwargs):
    (source,) = open_gpu_sources(Config(sysfs_root=sysfs, **kwargs), topology or Topology())
    assert source.prime() is True
    return source


def test_every_figure_in_record_units(tmp_path):
    sysfs, _ = tree(tmp_path)
    source = opened(sysfs)
    assert source.name == "sysfs"  # chosen by auto: amdsmi and NVML are absent
    assert source.sample() == {
        "_primus_gpu_util_percent": 37.0,
        "_primus_gpu_memory_used_bytes": float(5 * 2**30),
        "_primus_gpu_memory_total_bytes": float(192 * 2**30),
        "_primus_gpu_power_watts": 350.0,  # µW -> W
        "_primus_gpu_temperature_celsius": 45.0,  # m°C -> °C, label "edge"
        "_primus_gpu_temperature_junction_celsius": 61.0,
        "_primus_gpu_temperature_memory_celsius": 52.0,
    }


def test_values_follow_the_files(tmp_path):
    sysfs, specs = tree(tmp_path)
    source = opened(sysfs)
    seen = []
    for busy, watts in ((0, 90.5), (64, 512.25), (100, 749.0)):
        amdgpu_sysfs.set_values(sysfs, specs[0], busy=busy, power_uw=int(watts * 1e6),
                                vram_used=busy * 2**28)
        sample = source.sample()
        seen.append((sample["_primus_gpu_util_percent"], sample["_primus_gpu_power_watts"],
                     sample["_primus_gpu_memory_used_bytes"]))
    assert seen == [(0.0, 90.5, 0.0), (64.0, 512.25, float(64 * 2**28)),
                    (100.0, 749.0, float(100 * 2**28))]


def test_power_input_and_unlabelled_temperature_of_other_kernels(tmp_path):
    spec = amdgpu_sysfs.gpu(0, power_file="power1_input", power_uw=123_456_789, temps={},
                            temps_unlabelled=[47_500], busy=None, name=None)
    sysfs, _ = tree(tmp_path, spec)
    sample = opened(sysfs).sample()
    assert sample["_primus_gpu_power_watts"] == 123.456789
    assert sample["_primus_gpu_temperature_celsius"] == 47.5  # temp1 without a label is edge
    assert "_primus_gpu_util_percent" not in sample  # no gpu_busy_percent on this GPU
    assert describe(Config(sysfs_root=sysfs), Topology())["devices"][0]["name"] == \
        "AMD GPU [1002:74a1]"


def test_gpu_gone_mid_run_switches_the_backend_off_once(tmp_path, capsys):
    sysfs, specs = tree(tmp_path)
    sampler = Sampler([open_host_source(), *open_gpu_sources(Config(sysfs_root=sysfs),
                                                             Topology())], 1.0)
    sampler.sources[1].prime()
    sampler.sample_once()
    assert sampler.snapshot["_primus_gpu_util_percent"] == 37.0
    os.remove(os.path.join(amdgpu_sysfs.device_dir(sysfs, specs[0]), "gpu_busy_percent"))
    for _ in range(3):
        sampler.sample_once()
    assert not any(k.startswith("_primus_gpu_") for k in sampler.snapshot)
    assert "_primus_sys_process_rss_bytes" in sampler.snapshot
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "primus-lens: sysfs metrics switched off after an error: FileNotFoundError")


def test_attribution_by_bus_id_through_the_kfd_order(tmp_path, monkeypatch):
    # Cards 0..3 at increasing bus ids; the KFD (and so HIP) order is 2, 0, 3, 1.
    specs = [amdgpu_sysfs.gpu(i, kfd_node=node, busy=10 * (i + 1))
             for i, node in enumerate((2, 4, 1, 3))]
    sysfs, _ = tree(tmp_path, *specs)
    util = [opened(sysfs, Topology(local_rank=r, rank=r)).sample()["_primus_gpu_util_percent"]
            for r in range(4)]
    assert util == [30.0, 10.0, 40.0, 20.0]
    monkeypatch.setenv("HIP_VISIBLE_DEVICES", "3")
    assert opened(sysfs).sample()["_primus_gpu_util_percent"] == 20.0
    monkeypatch.setenv("ROCR_VISIBLE_DEVICES", f"GPU-{specs[3]['unique_id']:016x},0")
    monkeypatch.setenv("HIP_VISIBLE_DEVICES", "1")
    assert opened(sysfs).sample()["_primus_gpu_util_percent"] == 30.0


def test_node_scope_keys_the_reachable_gpus_by_runtime_index(tmp_path):
    specs = [amdgpu_sysfs.gpu(0, busy=5, reachable=False), amdgpu_sysfs.gpu(1, busy=15),
             amdgpu_sysfs.gpu(2, busy=25)]
    sysfs, _ = tree(tmp_path, *specs)
    assert open_gpu_sources(Config(sysfs_root=sysfs, gpu_scope="node"),
                            Topology(local_rank=1, rank=1)) == []
    sample = opened(sysfs, gpu_scope="node").sample()
    assert {k: v for k, v in sample.items() if k.endswith("util_percent")} == {
        "_primus_gpu_0_util_percent": 15.0, "_primus_gpu_1_util_percent": 25.0}
    assert inventory(Config(sysfs_root=sysfs, gpu_scope="node"), Topology())["devices"] == [
        {"name": "AMD Instinct MI300X", "memory_total_bytes": 192 * 2**30}] * 2


def test_describe_explains_the_choice_and_the_mapping(tmp_path, monkeypatch):
    sysfs, specs = tree(tmp_path, amdgpu_sysfs.gpu(0), amdgpu_sysfs.gpu(1))
    monkeypatch.setenv("ROCR_VISIBLE_DEVICES", "1")
    report = describe(Config(sysfs_root=sysfs), Topology())
    json.dumps(report)
    assert report["backend"] == "sysfs" and report["driver_version"] == "6.8.5"
    assert set(report["rejected"]) == {"amdsmi"}  # nvml was never tried: sysfs came first
    assert report["mapping"]["variables"] == {"ROCR_VISIBLE_DEVICES": "1"}
    assert report["mapping"]["sampled"][0]["pci_bus_id"] == specs[1]["bdf"]
    assert report["sample"]["_primus_gpu_temperature_junction_celsius"] == 61.0


def test_no_amdgpu_device_is_unavailable(tmp_path):
    sysfs, specs = tree(tmp_path)
    uevent = os.path.join(amdgpu_sysfs.device_dir(sysfs, specs[0]), "uevent")
    with open(uevent) as f:
        text = f.read().replace("DRIVER=amdgpu", "DRIVER=i915")
    with open(uevent, "w") as f:
        f.write(text)
    with pytest.raises(Unavailable, match="no amdgpu device"):
        SysfsBackend(sysfs)
    assert describe(Config(sysfs_root=sysfs), Topology())["backend"] is None
