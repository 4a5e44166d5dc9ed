"""Attribution: every ``*_VISIBLE_DEVICES`` form, LOCAL_RANK, and the runtime's device order."""

from __future__ import annotations

import pytest
from fakes import amdgpu_sysfs

from primus_lens_inject.metrics.gpu import kfd
from primus_lens_inject.metrics.gpu.device import Device, normalize_bus_id
from primus_lens_inject.metrics.gpu.visible import apply, node, pick, visible

UUIDS = ["GPU-8932f937-d72c-4106-c12f-20bd9faed9f6", "GPU-8932aaaa-0000-1111-2222-333344445555",
         "GPU-1d3a5e6b-7c8d-4e9f-a0b1-c2d3e4f5a6b7", "GPU-ffee0011-2233-4455-6677-8899aabbccdd"]


def nvidia(n: int = 4):
    return [Device(i, "NVIDIA H100", UUIDS[i], f"0000:{0x1b + i:02x}:00.0", 80 << 30)
            for i in range(n)]


def names(devices):
    return [d.index for d in devices]


@pytest.mark.parametrize(("value", "expected"), [
    ("2", [2]),
    ("1,0", [1, 0]),
    ("3,1,2", [3, 1, 2]),
    (" 1 , 2 ", [1, 2]),
    ("", []),                    # CUDA: an empty list hides every GPU
    ("-1", []),                  # the usual way to hide all GPUs
    ("0,-1,1", [0]),             # everything after an invalid entry is dropped
    ("0,7,1", [0]),              # an index past the end is invalid
    ("1,1,0", [1, 0]),           # a repeat is ignored
    ("01", []),                  # not a canonical index
    ("foo,0", []),
    (UUIDS[2], [2]),
    (UUIDS[2].upper(), [2]),
    ("GPU-1d3a5e6b", [2]),       # a unique prefix is enough (as CUDA accepts)
    ("GPU-8932", []),            # an ambiguous prefix names no device
    ("GPU-8932f9", [0]),
    (f"GPU-ffee,{UUIDS[0]},2", [3, 0, 2]),
    ("GPU-deadbeef,0", []),      # an unknown UUID stops the list
])
def test_cuda_visible_devices_forms(value, expected):
    visibility = visible("nvidia", nvidia(), {"CUDA_VISIBLE_DEVICES": value})
    assert names(visibility.devices) == expected
    assert visibility.variables == {"CUDA_VISIBLE_DEVICES": value}


def test_unset_means_every_device_in_runtime_order():
    visibility = visible("nvidia", nvidia(), {"HIP_VISIBLE_DEVICES": "1"})
    assert names(visibility.devices) == [0, 1, 2, 3]  # NVIDIA ignores the HIP variable
    assert visibility.variables == {}


def test_mig_uuid_and_legacy_mig_form():
    gpu = Device(0, "NVIDIA A100", UUIDS[0], "0000:1b:00.0", 80 << 30)
    mig = [Device(i, "MIG 1g.10gb", f"MIG-{i}1a2b3c4-5d6e-7f80-9a0b-c1d2e3f4a5b6", gpu.bus_id,
                  10 << 30, parent=gpu, aliases=(f"MIG-{UUIDS[0]}/{i + 7}/0",)) for i in range(3)]
    assert names(apply("MIG-11a2b3c4-5d6e-7f80-9a0b-c1d2e3f4a5b6", mig)) == [1]
    assert names(apply("MIG-2", mig)) == [2]
    assert names(apply(f"MIG-{UUIDS[0]}/9/0,MIG-{UUIDS[0]}/7/0", mig)) == [2, 0]


def amd(n: int = 4):
    return [Device(i, "MI300X", f"GPU-5e8c1b3f1a2c3b{i:02x}", f"0000:{0x05 + 0x10 * i:02x}:00.0",
                   192 << 30) for i in range(n)]


@pytest.mark.parametrize(("env", "expected", "used"), [
    ({"ROCR_VISIBLE_DEVICES": "2,3"}, [2, 3], ["ROCR_VISIBLE_DEVICES"]),
    ({"ROCR_VISIBLE_DEVICES": "1,2,3", "HIP_VISIBLE_DEVICES": "2"}, [3],
     ["ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES"]),  # HIP indexes what ROCr left
    ({"ROCR_VISIBLE_DEVICES": "GPU-5e8c1b3f1a2c3b03,0"}, [3, 0], ["ROCR_VISIBLE_DEVICES"]),
    ({"HIP_VISIBLE_DEVICES": "1,0"}, [1, 0], ["HIP_VISIBLE_DEVICES"]),
    ({"CUDA_VISIBLE_DEVICES": "3"}, [3], ["CUDA_VISIBLE_DEVICES"]),  # HIP honours it too
    ({"HIP_VISIBLE_DEVICES": "2", "CUDA_VISIBLE_DEVICES": "1"}, [2], ["HIP_VISIBLE_DEVICES"]),
    ({"HIP_VISIBLE_DEVICES": "", "CUDA_VISIBLE_DEVICES": "1"}, [1], ["CUDA_VISIBLE_DEVICES"]),
    ({"ROCR_VISIBLE_DEVICES": ""}, [0, 1, 2, 3], []),  # for HIP an empty variable is unset
    ({"HIP_VISIBLE_DEVICES": "GPU-5e8c1b3f1a2c3b02"}, [2], ["HIP_VISIBLE_DEVICES"]),
    ({"ROCR_VISIBLE_DEVICES": "0,9"}, [0], ["ROCR_VISIBLE_DEVICES"]),
])
def test_amd_visible_devices_forms(env, expected, used):
    visibility = visible("amd", amd(), env)
    assert names(visibility.devices) == expected
    assert list(visibility.variables) == used


def test_local_rank_picks_among_visible_devices():
    devices = nvidia()
    attribution = pick(visible("nvidia", devices, {"CUDA_VISIBLE_DEVICES": "3,2,1"}), 1)
    assert [(k, d.index) for k, d in attribution.sampled] == [(None, 2)]
    assert "local rank 1" in attribution.reason


def test_single_visible_device_is_the_process_device_whatever_the_local_rank():
    attribution = pick(visible("nvidia", nvidia(), {"CUDA_VISIBLE_DEVICES": "2"}), 5)
    assert [(k, d.index) for k, d in attribution.sampled] == [(None, 2)]


def test_local_rank_beyond_visible_devices_samples_all_keyed_by_visible_index():
    attribution = pick(visible("nvidia", nvidia(), {"CUDA_VISIBLE_DEVICES": "3,1"}), 4)
    assert [(k, d.index) for k, d in attribution.sampled] == [(0, 3), (1, 1)]


def test_no_visible_device_samples_nothing():
    attribution = pick(visible("nvidia", nvidia(), {"CUDA_VISIBLE_DEVICES": "-1"}), 0)
    assert attribution.sampled == []
    assert attribution.describe()["variables"] == {"CUDA_VISIBLE_DEVICES": "-1"}


def test_node_scope_keys_every_device_by_node_index():
    attribution = node(nvidia(3))
    assert [(k, d.index) for k, d in attribution.sampled] == [(0, 0), (1, 1), (2, 2)]


@pytest.mark.parametrize(("raw", "expected"), [
    ("00000000:1B:00.0", "0000:1b:00.0"),
    (b"00000000:3B:00.0", "0000:3b:00.0"),
    ("0000:c1:00.0", "0000:c1:00.0"),
    ("c1:00.1", "0000:c1:00.1"),
    ("garbage", None),
    (None, None),
])
def test_bus_ids_from_every_library_compare_equal(raw, expected):
    assert normalize_bus_id(raw) == expected


# -- the AMD runtime's order: the KFD topology, not the card numbers or the bus order ------------

def test_kfd_order_decides_hip_indices(tmp_path):
    specs = [amdgpu_sysfs.gpu(0, kfd_node=3), amdgpu_sysfs.gpu(1, kfd_node=1),
             amdgpu_sysfs.gpu(2, kfd_node=2)]
    sysfs = amdgpu_sysfs.build(str(tmp_path), specs)
    devices = [Device(i, "MI300X", None, spec["bdf"], None) for i, spec in enumerate(specs)]
    ordered = kfd.order(devices, sysfs)
    assert [d.bus_id for d in ordered] == [specs[1]["bdf"], specs[2]["bdf"], specs[0]["bdf"]]
    # a device without a UUID of its own takes ROCr's, from the topology's unique_id
    assert ordered[0].uuid == f"GPU-{specs[1]['unique_id']:016x}"
    assert names(visible("amd", ordered, {"HIP_VISIBLE_DEVICES": "0"}).devices) == [1]


def test_kfd_skips_gpus_whose_render_node_the_container_lacks(tmp_path):
    specs = [amdgpu_sysfs.gpu(0, reachable=False), amdgpu_sysfs.gpu(1), amdgpu_sysfs.gpu(2)]
    sysfs = amdgpu_sysfs.build(str(tmp_path), specs)
    gpus = kfd.runtime_gpus(sysfs)
    assert [g.bus_id for g in gpus] == [specs[1]["bdf"], specs[2]["bdf"]]
    assert gpus[0].uuid == f"GPU-{specs[1]['unique_id']:016x}"


def test_without_kfd_topology_the_order_is_the_pci_bus_order(tmp_path):
    devices = [Device(0, "x", None, "0000:c1:00.0", None), Device(1, "y", None, "0000:05:00.0", None)]
    assert kfd.runtime_gpus(str(tmp_path / "sys")) is None
    assert names(kfd.order(devices, str(tmp_path / "sys"))) == [1, 0]
