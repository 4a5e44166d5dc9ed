"""Which GPU(s) this process uses: ``*_VISIBLE_DEVICES`` and ``LOCAL_RANK`` against the runtime's order.

Management libraries (NVML, amdsmi, sysfs) enumerate every GPU in an order of their own and ignore
the visibility variables; the CUDA and HIP runtimes number only the visible devices, in theirs.
So the process's device is found in two steps, neither of which assumes that the two orders
match:

1. the runtime's order of all devices (``order``: given by the backend, from PCI bus ids or the
   KFD topology), filtered and reordered by the visibility variables exactly as the runtime parses
   them (``apply``): indices into the current list, ``GPU-…``/``MIG-…`` UUIDs or a unique prefix
   of one, parsing stops at the first entry that names no device, repeats are ignored;
2. ``LOCAL_RANK`` picks among the visible devices (``pick``).

NVIDIA honours ``CUDA_VISIBLE_DEVICES``.  AMD applies ``ROCR_VISIBLE_DEVICES`` first (the ROCm
runtime), then ``HIP_VISIBLE_DEVICES`` or, when that is unset or empty, ``CUDA_VISIBLE_DEVICES``
to what is left (HIP); for AMD an empty variable counts as unset, as in HIP.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from .device import Device


def _normal(identifier: str) -> str:
    return identifier.strip().lower()


def _matches(token: str, device: Device) -> bool:
    """A UUID or a prefix of one, as CUDA and HIP accept (the caller insists on one match)."""
    wanted = _normal(token)
    return any(_normal(x).startswith(wanted) for x in device.identifiers())


def _resolve(token: str, candidates: Sequence[Device]) -> Optional[Device]:
    token = token.strip()
    if token.isdigit() and token.isascii():
        index = int(token)
        if token != str(index):
            return None  # "01": HIP rejects it, CUDA leaves it unspecified
        return candidates[index] if index < len(candidates) else None
    if token[:4].upper() not in ("GPU-", "MIG-"):
        return None
    found = [d for d in candidates if _matches(token, d)]
    return found[0] if len(found) == 1 else None


def apply(value: str, candidates: Sequence[Device]) -> List[Device]:
    """The devices a runtime exposes for one visibility variable's value."""
    chosen: List[Device] = []
    for token in value.split(","):
        device = _resolve(token, candidates)
        if device is None:
            break  # CUDA and HIP both drop this entry and every one after it
        if device not in chosen:
            chosen.append(device)
    return chosen


@dataclass
class Visibility:
    """The visible devices, in the runtime's order, and the variables that made them so."""

    devices: List[Device]
    variables: Dict[str, str] = field(default_factory=dict)


def visible(vendor: str, ordered: Sequence[Device], env: Mapping[str, str]) -> Visibility:
    """Apply the vendor's visibility variables, in the runtime's precedence, to ``ordered``."""
    devices = list(ordered)
    used: Dict[str, str] = {}
    if vendor == "nvidia":
        value = env.get("CUDA_VISIBLE_DEVICES")
        if value is not None:
            used["CUDA_VISIBLE_DEVICES"] = value
            devices = apply(value, devices)
        return Visibility(devices, used)
    rocr = env.get("ROCR_VISIBLE_DEVICES", "")
    if rocr.strip():
        used["ROCR_VISIBLE_DEVICES"] = rocr
        devices = apply(rocr, devices)
    for name in ("HIP_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES"):
        value = env.get(name, "")
        if value.strip():
            used[name] = value
            devices = apply(value, devices)
            break
    return Visibility(devices, used)


@dataclass
class Attribution:
    """What this process samples: (key index or None, device) pairs, and why."""

    sampled: List[Tuple[Optional[int], Device]]
    reason: str
    visibility: Optional[Visibility] = None

    def describe(self) -> Dict[str, Any]:
        """For doctor: devices named by UUID and PCI bus id, never by an ambiguous index."""
        out: Dict[str, Any] = {"reason": self.reason,
                               "sampled": [{"key_index": key, "name": d.name, "uuid": d.uuid,
                                            "pci_bus_id": d.bus_id} for key, d in self.sampled]}
        if self.visibility is not None:
            out["variables"] = dict(self.visibility.variables)
            out["visible"] = [d.uuid or d.bus_id for d in self.visibility.devices]
        return out


def pick(visibility: Visibility, local_rank: int) -> Attribution:
    """Process scope: the local rank's device among the visible ones."""
    devices = visibility.devices
    if not devices:
        return Attribution([], "no GPU is visible to this process", visibility)
    if len(devices) == 1:
        return Attribution([(None, devices[0])], "the only visible GPU", visibility)
    if local_rank < len(devices):
        return Attribution([(None, devices[local_rank])],
                        f"local rank {local_rank} uses visible GPU {local_rank} "
                        f"of {len(devices)}", visibility)
    return Attribution(list(enumerate(devices)),
                    f"local rank {local_rank} but only {len(devices)} visible GPUs: "
                    "sampling all of them, keyed by visible index", visibility)


def node(ordered: Sequence[Device]) -> Attribution:
    """Node scope: every GPU of the node (as this container sees them), keyed by node index."""
    return Attribution(list(enumerate(ordered)),
                    "node scope: every GPU, keyed by its index in the runtime's order "
                    "without *_VISIBLE_DEVICES")
