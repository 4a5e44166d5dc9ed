"""The detection report's evidence sections about the process's surroundings: allow-listed
environment variables, build information, interpreter and place in the job, torch, the GPUs and
installed packages.  Everything is read from the environment, loaded modules, package metadata and
the GPU inventory; nothing is imported or spawned.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from .. import credentials
from ..topology import Topology
from . import bounds, evidence
from .frameworks import LIGHTNING, global_of, imported_module, loaded, package_version, version_text
from .runfacts import plain_text

_ENV_LIMITS = evidence.Limits(max_str=128, max_items=128, max_depth=1, max_nodes=256,
                              max_bytes=64 * 1024)
MAX_LABEL, LABEL_BYTES = 256, 1024


def label(text: str) -> str:
    """A run's project, name or id, or a GPU name: free text, redacted and bounded."""
    return bounds.fit(evidence.label(text, MAX_LABEL), LABEL_BYTES)


# Framework variables ai-advisor reads or mines (spec §4), launcher ranks, and three families.
_ENV_NAMES = frozenset((
    "FRAMEWORK", "TRAINING_FRAMEWORK", "PRIMUS_CONFIG", "PRIMUS_VERSION", "PRIMUS_BACKEND",
    "PRIMUS_MODEL", "DEEPSPEED_CONFIG", "DS_CONFIG", "DEEPSPEED_VERSION", "DS_VERSION",
    "MEGATRON_CONFIG", "MEGATRON_LM_PATH", "JAX_BACKEND", "JAX_PLATFORMS", "JAX_VERSION",
    "PL_TRAINER_GPUS", "BUILDING_FRAMEWORK_VERSION", "MODEL_NAME", "MODEL_ID", "HF_MODEL_NAME",
    "PRETRAINED_MODEL", "TRAINING_MODE", "MODE", "TRAIN_MODE", "PRECISION", "DTYPE",
    "COMPUTE_DTYPE", "TORCH_DTYPE", "WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE",
    "NODE_RANK",
))
_ENV_PREFIXES = ("PRIMUS_", "MEGATRON_", "DEEPSPEED_")
_ENV_EXCLUDED_PREFIXES = ("PRIMUS_LENS_",)  # our own settings (API headers among them)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")


def _env_items(env: Mapping[str, str]) -> List[Tuple[str, str]]:
    try:
        return list(env.items())
    except Exception:  # os.environ changed under us: fall back to the exact names
        return [(name, env.get(name, "")) for name in sorted(_ENV_NAMES)]


def _env_name(name: Any) -> bool:
    return (isinstance(name, str) and (name in _ENV_NAMES or name.startswith(_ENV_PREFIXES))
            and not name.startswith(_ENV_EXCLUDED_PREFIXES) and _ENV_NAME.fullmatch(name) is not None
            and not credentials.looks_random(name))


def variables(env: Mapping[str, str]) -> Dict[str, str]:
    """Allow-listed variables with non-empty values (the server matches on key presence, so an
    empty value would be a false claim), sorted and bounded; a value of an unexpected shape, or
    under a secret-looking name, is ``WITHHELD`` with its name kept."""
    picked = sorted((k, v) for k, v in _env_items(env)
                    if _env_name(k) and isinstance(v, str) and v.strip())
    return evidence.sanitize(dict(picked), _ENV_LIMITS)


_BUILD_VARS = (
    ("build_url", ("BUILD_URL", "CI_BUILD_URL", "JENKINS_BUILD_URL", "GITHUB_RUN_URL")),
    ("dockerfile_url", ("DOCKERFILE_URL", "DOCKER_FILE_URL")),
    ("image_tag", ("IMAGE_TAG", "DOCKER_IMAGE", "CONTAINER_IMAGE", "DOCKER_TAG")),
    ("build_date", ("BUILD_DATE", "BUILD_TIMESTAMP", "BUILD_TIME")),
    ("git_commit", ("GIT_COMMIT", "GIT_SHA", "CI_COMMIT_SHA", "GITHUB_SHA")),
    ("git_branch", ("GIT_BRANCH", "CI_COMMIT_BRANCH", "GITHUB_REF_NAME")),
    ("git_repo", ("GIT_REPO", "GIT_REPOSITORY", "GITHUB_REPOSITORY")),
    ("ci_pipeline_id", ("CI_PIPELINE_ID", "GITHUB_RUN_ID", "BUILD_NUMBER")),
)


def _first_env(env: Mapping[str, str], names: Sequence[str]) -> str:
    for name in names:
        value = env.get(name)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return ""


_COMMIT = re.compile(r"[0-9a-fA-F]{7,64}")


def _build_value(key: str, value: str) -> str:
    """Allow-listed like any evidence; a commit hash is random-looking by nature and kept."""
    if key == "git_commit" and _COMMIT.fullmatch(value):
        return value
    return evidence.evidence_text(value)


def build(env: Mapping[str, str]) -> Dict[str, str]:
    found = {key: _first_env(env, names) for key, names in _BUILD_VARS}
    return {k: _build_value(k, v) for k, v in found.items() if v}


def system(topology: Topology) -> Dict[str, Any]:
    """Interpreter and place in the job; no executable path or host name (they leak layout)."""
    out: Dict[str, Any] = {
        "python_version": ".".join(str(n) for n in sys.version_info[:3]),
        "python_implementation": sys.implementation.name,
        "platform": sys.platform,
        "node_rank": topology.node_rank, "rank": topology.rank,
        "local_rank": topology.local_rank, "world_size": topology.world_size,
    }
    try:
        out["machine"] = os.uname().machine
    except (AttributeError, OSError):
        pass
    return out


def _torch_versions() -> Tuple[Optional[str], Optional[str]]:
    """(CUDA, HIP) versions torch was built with, if ``torch.version`` is already loaded."""
    module = loaded("torch.version")
    return version_text(global_of(module, "cuda")), version_text(global_of(module, "hip"))


def pytorch(gpu_count: int) -> Dict[str, Any]:
    """``evidence.pytorch`` from the loaded modules only; never touches ``torch.cuda``'s API.

    ``cuda_available`` means a CUDA/ROCm build of torch on a machine where the GPU module saw a
    device, or torch already initialised its GPU runtime itself.
    """
    torch = loaded("torch")
    cuda, hip = _torch_versions()
    gpu_ready = gpu_count > 0 or global_of(loaded("torch.cuda"), "_initialized") is True
    return {
        "available": torch is not None,
        "version": version_text(global_of(torch, "__version__")) or "",
        "cuda_available": torch is not None and bool(cuda or hip) and gpu_ready,
        "detected_modules": {
            "deepspeed": loaded("deepspeed") is not None,
            "megatron": loaded("megatron") is not None,
            "transformers": loaded("transformers") is not None,
            "lightning": imported_module(LIGHTNING) is not None,
        },
    }


# Product names in GPU names, longest first so that "MI300X" wins over "MI300" and "GH200"
# over "H200"; a match must not be part of a longer alphanumeric run.
GPU_ARCHES = tuple(sorted((
    "MI355X", "MI350X", "MI325X", "MI308X", "MI300X", "MI300A", "MI300", "MI250X", "MI250",
    "MI210", "MI100", "MI60", "MI50", "GB300", "GB200", "B300", "B200", "B100", "GH200", "H200",
    "H100", "H800", "H20", "L40S", "L40", "L4", "A100", "A800", "A40", "A30", "A10G", "A10",
    "V100", "T4",
), key=lambda name: (-len(name), name)))
_GPU_ARCH = re.compile(r"(?<![A-Z0-9])(" + "|".join(GPU_ARCHES) + r")(?![A-Z0-9])")
_ARCH_ENV = ("GPU_ARCH", "AMD_GPU_ARCH", "NVIDIA_GPU_ARCH")
_ARCH_TEXT = re.compile(r"[a-z0-9_.\-]{1,32}")


def gpu_arch(name: str) -> Optional[str]:
    found = _GPU_ARCH.search(name.upper())
    return found.group(1).lower() if found else None


def devices(gpu_inventory: Any) -> List[Tuple[str, Optional[int]]]:
    """(name, memory bytes) of each device in the GPU module's inventory, types checked."""
    devices = gpu_inventory.get("devices") if isinstance(gpu_inventory, dict) else None
    out = []
    for device in devices if isinstance(devices, list) else ():
        if isinstance(device, dict):
            memory = device.get("memory_total_bytes")
            valid = type(memory) is int and memory > 0
            out.append((plain_text(device.get("name"), 128), memory if valid else None))
    return out


def _env_version(env: Mapping[str, str], name: str) -> Optional[str]:
    """A version from the environment, unless it looks like something else (a key, a token)."""
    version = version_text(_first_env(env, (name,)))
    return version if version and evidence.safe_text(version) else None


def hardware(devices: Sequence[Tuple[str, Optional[int]]], env: Mapping[str, str]) -> Dict[str, Any]:
    """``evidence.hardware``; ``gpu_count`` is the number of GPUs this process uses, never a
    guess from WORLD_SIZE."""
    out: Dict[str, Any] = {}
    arch = _first_env(env, _ARCH_ENV).lower()
    if devices:
        name, memory = devices[0]
        out["gpu_count"] = len(devices)
        if name:
            out["gpu_name"] = label(name)
            arch = arch or gpu_arch(name) or ""
        if memory:
            out["gpu_memory_gb"] = round(memory / 2**30, 1)
    if _ARCH_TEXT.fullmatch(arch) and evidence.safe_text(arch):
        out["gpu_arch"] = arch
    cuda, hip = _torch_versions()
    rocm = _env_version(env, "ROCM_VERSION") or hip
    cuda = _env_version(env, "CUDA_VERSION") or cuda
    if rocm:
        out["rocm_version"] = rocm if rocm.lower().startswith("rocm") else "rocm" + rocm
    if cuda:
        out["cuda_version"] = cuda if cuda.lower().startswith("cuda") else "cuda" + cuda
    return out


# Bounded: each lookup scans sys.path once; no package is imported.
PACKAGES = (
    "torch", "wandb", "numpy", "transformers", "accelerate", "deepspeed", "megatron-core",
    "lightning", "pytorch-lightning", "jax", "jaxlib", "primus", "primus-turbo", "torchtitan",
    "transformer-engine", "flash-attn", "triton", "peft", "trl", "datasets",
)


def software(env: Mapping[str, str]) -> Dict[str, Any]:
    packages: Dict[str, str] = {}
    for dist in PACKAGES:
        version = package_version(dist)
        if version:
            packages[dist] = version
    out: Dict[str, Any] = {"packages": packages} if packages else {}
    rocm = _env_version(env, "ROCM_VERSION") or _torch_versions()[1]
    if rocm:
        out["rocm_version"] = rocm
    return out
