"""The framework-detection report: one ``POST wandb/detection`` body per wandb run (spec §4).

Two halves, split by thread.  ``RunFacts.from_run`` runs on the training thread inside
``wandb.init`` and only copies what the run knows (project, name, id, tags, a shallow copy of the
config); it reads no module, file or environment and cannot raise.  ``build_report`` runs later on
the reporter's thread and assembles the evidence and hints.

The old exporter imported every framework it looked for, called ``torch.cuda``/``jax.devices()``
and shelled out to ``rocm-smi``/``nvidia-smi`` inside ``wandb.init``, reported "installed" as
"in use", sent empty environment values (which the server takes as a match) and the whole config
unredacted (research/upstream-exporter.md, defects 10-21).  Here a framework is "in use" only if
its module is already in ``sys.modules``; facts come from module attributes, package metadata,
the environment and the GPU module's inventory; nothing is imported, called or spawned.  What
leaves is chosen by allow-list (``redact``): framework variables only, values of expected shapes
only, the config's safe scalars only, labels redacted; ``PRIMUS_LENS_EVIDENCE`` can cut it down
to framework names and versions, or names only.  The rules are documented in docs/detection.md.
"""

from __future__ import annotations

import math
import os
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from . import bounds, credentials, redact
from .config import Config
from .topology import Topology

SOURCE = "wandb"
TYPE = "framework_detection_raw"
VERSION = "1.0"

# Section bounds.  Worst case: config 256 KiB + environment 64 KiB + tags 16 KiB + four 1 KiB
# labels + eight build values of at most 256 characters + a few KiB of fixed-shape fields, far
# below the 1 MiB per request we allow ourselves (spec §9.8).
CONFIG_LIMITS = redact.Limits(max_str=256, max_items=1000, max_depth=32, max_nodes=20000,
                              max_bytes=256 * 1024)
ENV_LIMITS = redact.Limits(max_str=128, max_items=128, max_depth=1, max_nodes=256,
                           max_bytes=64 * 1024)
MAX_TAGS, TAGS_BYTES = 64, 16 * 1024
MAX_LABEL, LABEL_BYTES = 256, 1024
MAX_INDICATORS = 16

# PRIMUS_LENS_EVIDENCE levels; with the third, "off", the report carries hints only.
STANDARD, MINIMAL = "standard", "minimal"

WRAPPER = "wrapper"
BASE = "base"

# --- what the training thread takes from the run -------------------------------------------------


def _plain_text(value: Any, limit: int = 1024) -> str:
    """A ``str`` (or str subclass such as TorchVersion or wandb's RunDisabled) as a plain str."""
    return str.__str__(value)[:limit] if isinstance(value, str) else ""


def _run_attr(run: Any, name: str) -> Any:
    try:
        return getattr(run, name, None)
    except Exception:  # properties of finished or disabled runs may raise
        return None


def _config_dict(config: Any) -> Dict[str, Any]:
    """wandb's ``run.config`` as a plain dict, across versions and the odd disabled-mode objects.

    ``_as_dict()`` (every version) returns the live item dict including ``_wandb`` and user keys
    that start with an underscore; ``as_dict()`` drops all underscore keys.  A disabled run of
    wandb 0.12-0.15 is a ``str`` whose every attribute is another such ``str``: no method result
    that is not a Mapping is believed.
    """
    for method in ("_as_dict", "as_dict"):
        try:
            getter = getattr(config, method, None)
            items = getter() if callable(getter) else None
            if isinstance(items, Mapping):
                return _shallow_copy(items)
        except Exception:
            continue
    return _shallow_copy(config) if isinstance(config, Mapping) else {}


def _shallow_copy(items: Mapping) -> Dict[str, Any]:
    """One C-level copy (atomic under the GIL for a dict) without wandb's internal ``_wandb`` key."""
    try:
        copy = dict(items) if type(items) is dict else dict(items.items())
    except Exception:
        return {}
    copy.pop("_wandb", None)
    return copy


def _tags(value: Any) -> Tuple[str, ...]:
    if not isinstance(value, (list, tuple)):
        return ()
    return tuple(_plain_text(tag) for tag in list(value) if isinstance(tag, str))


@dataclass(frozen=True)
class RunFacts:
    """What one wandb run says about itself, copied at ``wandb.init`` on the training thread."""

    project: str = ""
    name: str = ""
    id: str = ""
    tags: Tuple[str, ...] = ()
    config: Dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_run(cls, run: Any) -> RunFacts:
        """O(number of top-level config keys), no I/O, never raises.

        Nested config values are shared with the run, not copied: ``build_report`` reads each
        container with one atomic ``list(...)``, so concurrent updates cannot break it.
        """
        try:
            return cls(project=_plain_text(_run_attr(run, "project")),
                       name=_plain_text(_run_attr(run, "name")),
                       id=_plain_text(_run_attr(run, "id")),
                       tags=_tags(_run_attr(run, "tags")),
                       config=_config_dict(_run_attr(run, "config")))
        except Exception:
            return cls()


# --- frameworks and the modules that prove them in use --------------------------------------------


@dataclass(frozen=True)
class _Framework:
    name: str  # as the server knows it
    layer: str
    modules: Tuple[str, ...]  # exact sys.modules keys; the first one present proves use
    version_modules: Tuple[str, ...]  # whose __version__ to read, in order
    dists: Tuple[str, ...]  # distributions to ask importlib.metadata otherwise
    state: Tuple[Tuple[str, str], ...] = ()  # (module, global) set once the framework initialised


PRIMUS = _Framework("primus", WRAPPER, ("primus",), ("primus",), ("primus",),
                    (("primus.core.utils.global_vars", "_GLOBAL_PRIMUS_CFG"),))
LIGHTNING = _Framework("lightning", WRAPPER, ("lightning", "pytorch_lightning"),
                       ("lightning", "pytorch_lightning"), ("lightning", "pytorch-lightning"))
HF_TRAINER = _Framework("transformers_trainer", WRAPPER, ("transformers.trainer",),
                        ("transformers",), ("transformers",))
MEGATRON = _Framework("megatron", BASE, ("megatron",), ("megatron.core", "megatron"),
                      ("megatron-core", "megatron-lm"),
                      (("megatron.training.global_vars", "_GLOBAL_ARGS"),
                       ("megatron.global_vars", "_GLOBAL_ARGS")))
DEEPSPEED = _Framework("deepspeed", BASE, ("deepspeed",), ("deepspeed",), ("deepspeed",),
                       (("deepspeed.comm.comm", "cdb"),))
JAX = _Framework("jax", BASE, ("jax",), ("jax",), ("jax",), (("jax._src.xla_bridge", "_backends"),))
TRANSFORMERS = _Framework("transformers", BASE, ("transformers",), ("transformers",),
                          ("transformers",))

WRAPPERS = (PRIMUS, LIGHTNING, HF_TRAINER)
BASES = (MEGATRON, DEEPSPEED, JAX, TRANSFORMERS)  # the server's base priority order
_ORDER = {fw.name: i for i, fw in enumerate(WRAPPERS + BASES)}
_WRAPPER_NAMES = frozenset(fw.name for fw in WRAPPERS) | {"pytorch_lightning"}

# Names people write in FRAMEWORK / config["framework"], mapped to the names above.
_ALIASES = {
    "pytorch_lightning": "lightning", "pl": "lightning", "megatron_lm": "megatron",
    "megatron_core": "megatron", "mcore": "megatron", "ds": "deepspeed", "hf": "transformers",
    "huggingface": "transformers", "hf_trainer": "transformers_trainer",
}
_NAME = re.compile(r"[a-z][a-z0-9_.]{0,31}")


def _framework_name(raw: Any) -> Optional[str]:
    """A user-written framework name in canonical form, or None if it is not a plausible name."""
    if not isinstance(raw, str):
        return None
    name = raw.strip().lower().replace("-", "_").replace(" ", "_")
    if not _NAME.fullmatch(name):
        return None
    return _ALIASES.get(name, name)


def _layer(name: str) -> str:
    return WRAPPER if name in _WRAPPER_NAMES else BASE


def _module(name: str) -> Any:
    return sys.modules.get(name)  # a None entry (import blocked) counts as absent


def _attr(module: Any, name: str) -> Any:
    """A global of a loaded module, read from its namespace: no module ``__getattr__`` (lazy
    loaders such as torch's or transformers' import submodules on demand) and no property runs."""
    try:
        return vars(module).get(name)
    except TypeError:  # None, or an object without a namespace
        return None


def _imported(fw: _Framework) -> Optional[str]:
    return next((m for m in fw.modules if _module(m) is not None), None)


def _in_use(fw: _Framework, imported: Mapping[str, str]) -> bool:
    """Imported, and not merely incidental.

    ``transformers`` is imported for tokenizers by most Megatron/DeepSpeed/JAX jobs, so it is a
    base framework only when no other base is imported; HF's ``Trainer`` never drives Megatron, so
    ``transformers.trainer`` next to Megatron is incidental too.
    """
    if fw.name not in imported:
        return False
    if fw is TRANSFORMERS:
        return not any(b.name in imported for b in BASES if b is not TRANSFORMERS)
    if fw is HF_TRAINER:
        return MEGATRON.name not in imported
    return True


_VERSION = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+\-_]{0,63}")


def _version_text(value: Any) -> Optional[str]:
    text = _plain_text(value)
    return text if _VERSION.fullmatch(text) else None


def _package_version(dist: str) -> Optional[str]:
    """Installed version from package metadata (reads files, never imports the package)."""
    from importlib import metadata

    for name in dict.fromkeys((dist, dist.replace("-", "_"))):  # Python 3.9 does not normalise
        try:
            return _version_text(metadata.version(name))
        except Exception:
            continue
    return None


def _version(fw: _Framework) -> str:
    for module in fw.version_modules:
        found = _version_text(_attr(_module(module), "__version__"))
        if found:
            return found
    for dist in fw.dists:
        found = _package_version(dist)
        if found:
            return found
    return "unknown"


def _initialized(fw: _Framework) -> Optional[bool]:
    """Whether the framework's global state is set up, read from a module global (no call).

    Only the first of ``fw.state`` whose module is loaded decides; None when none is loaded.
    """
    for module_name, attribute in fw.state:
        module = _module(module_name)
        if module is not None:
            value = _attr(module, attribute)
            return bool(value) if type(value) is dict else value is not None
    return None


def _evidence_entry(fw: _Framework, module: str) -> Dict[str, Any]:
    entry: Dict[str, Any] = {"detected": True, "version": _version(fw), "module_name": module}
    initialized = _initialized(fw)
    if initialized is not None:
        entry["initialized"] = initialized
    return entry


# --- signals and hints ---------------------------------------------------------------------------

IMPORT, ENV, CONFIG, PROJECT = range(4)  # evidence tiers, strongest first


@dataclass(frozen=True)
class Signal:
    """One observation that points at a framework."""

    framework: str
    layer: str
    tier: int
    indicator: str


_ENV_SIGNALS = (
    ("PRIMUS_CONFIG", "primus"), ("PRIMUS_VERSION", "primus"), ("PRIMUS_BACKEND", "primus"),
    ("DEEPSPEED_CONFIG", "deepspeed"), ("DS_CONFIG", "deepspeed"), ("DEEPSPEED_VERSION", "deepspeed"),
    ("JAX_BACKEND", "jax"), ("JAX_PLATFORMS", "jax"),
)
_CONFIG_KEY_SIGNALS = (("primus_config", "primus"), ("deepspeed_config", "deepspeed"),
                       ("megatron_config", "megatron"))
_DETECTION_CONFIG_KEYS = ("framework", "base_framework", "trainer",
                          *(key for key, _ in _CONFIG_KEY_SIGNALS))
_TRAINER_BASES = ("deepspeed", "megatron")
_PROJECT_PATTERNS = (
    ("primus", ("primus",)), ("lightning", ("lightning", "pl-training")),
    ("deepspeed", ("deepspeed", "ds-training")), ("megatron", ("megatron",)), ("jax", ("jax",)),
    ("transformers", ("transformers", "hf-transformers")),
)


def _named(raw: Any, tier: int, indicator: str, layer: Optional[str] = None) -> List[Signal]:
    name = _framework_name(raw)
    if name is None:
        return []
    return [Signal(name, layer or _layer(name), tier, f"{indicator}={name}")]


def _import_signals(imported: Mapping[str, str]) -> List[Signal]:
    return [Signal(fw.name, fw.layer, IMPORT, f"import.{imported[fw.name]}")
            for fw in WRAPPERS + BASES if _in_use(fw, imported)]


def _env_signals(environment: Mapping[str, str]) -> List[Signal]:
    """From the (already filtered, non-empty, redacted) environment evidence."""
    out = [Signal(fw, _layer(fw), ENV, f"env.{var}") for var, fw in _ENV_SIGNALS
           if var in environment]
    out += [Signal("megatron", BASE, ENV, f"env.{var}") for var in environment
            if var.startswith("MEGATRON_")]
    out += _named(environment.get("PRIMUS_BACKEND"), ENV, "env.PRIMUS_BACKEND", BASE)
    for var in ("FRAMEWORK", "TRAINING_FRAMEWORK"):
        out += _named(environment.get(var), ENV, f"env.{var}")
    return out


def _config_signals(config: Mapping[str, Any]) -> List[Signal]:
    """From the top level of the (redacted) wandb config: the keys ai-advisor reads."""
    out = _named(config.get("framework"), CONFIG, "config.framework")
    out += _named(config.get("base_framework"), CONFIG, "config.base_framework", BASE)
    trainer = config.get("trainer")
    if isinstance(trainer, str):
        out += [Signal(base, BASE, CONFIG, f"config.trainer~{base}") for base in _TRAINER_BASES
                if base in trainer.lower()]
    out += [Signal(fw, _layer(fw), CONFIG, f"config.{key}") for key, fw in _CONFIG_KEY_SIGNALS
            if key in config]
    return out


def _project_signals(project: str) -> List[Signal]:
    """Substrings of the wandb project name, as ai-advisor matches them (the weakest evidence)."""
    lowered = project.lower()
    out = []
    for fw, patterns in _PROJECT_PATTERNS:
        hit = next((p for p in patterns if p in lowered), None)
        if hit:
            out.append(Signal(fw, _layer(fw), PROJECT, f"project~{hit}"))
    return out


def _rank(name: str) -> Tuple[int, str]:
    return _ORDER.get(name, len(_ORDER)), name


def _unique(names: Iterable[str]) -> List[str]:
    return list(dict.fromkeys(names))


def hints(signals: Sequence[Signal]) -> Dict[str, Any]:
    """The ``hints`` object: chosen frameworks per layer, candidates, confidence, indicators.

    Per layer the frameworks of the strongest tier that has any are chosen (imports > environment
    > wandb config); the project name counts only when nothing else points anywhere.
    """
    usable = [s for s in signals if s.tier < PROJECT] or list(signals)
    chosen: Dict[str, List[str]] = {}
    for layer in (WRAPPER, BASE):
        mine = [s for s in usable if s.layer == layer]
        best = min((s.tier for s in mine), default=None)
        chosen[layer] = sorted(_unique(s.framework for s in mine if s.tier == best), key=_rank)
    wrappers, bases = chosen[WRAPPER], chosen[BASE]
    picked = set(wrappers) | set(bases)
    ordered = sorted(signals, key=lambda s: (s.tier, s.layer != WRAPPER, _rank(s.framework)))
    return {
        "wrapper_frameworks": wrappers,
        "base_frameworks": bases,
        "possible_frameworks": _unique([*wrappers, *bases, *(s.framework for s in ordered)]),
        "confidence": _confidence(signals, picked),
        "primary_indicators": _unique(s.indicator for s in ordered
                                      if s.framework in picked)[:MAX_INDICATORS],
        "framework_layers": {
            **{w: {"layer": WRAPPER, "base_frameworks": list(bases)} for w in wrappers},
            **{b: {"layer": BASE, "wrapper_frameworks": list(wrappers)} for b in bases},
        },
    }


def _confidence(signals: Sequence[Signal], picked: Iterable[str]) -> str:
    """high: a chosen framework is imported (other than bare ``transformers``) or two kinds of
    evidence agree on it; medium: one kind of evidence (environment, config, or a bare
    ``transformers`` import); low: only the project name, or nothing."""
    tiers: Dict[str, set] = {}
    for s in signals:
        if s.tier < PROJECT and s.framework in picked:
            tiers.setdefault(s.framework, set()).add(s.tier)
    if any((IMPORT in found and fw != TRANSFORMERS.name) or len(found) > 1
           for fw, found in tiers.items()):
        return "high"
    return "medium" if tiers else "low"


# --- evidence sections -----------------------------------------------------------------------------

# Framework variables ai-advisor reads or mines (spec §4), launcher ranks, and three families.
ENV_NAMES = frozenset((
    "FRAMEWORK", "TRAINING_FRAMEWORK", "PRIMUS_CONFIG", "PRIMUS_VERSION", "PRIMUS_BACKEND",
    "PRIMUS_MODEL", "DEEPSPEED_CONFIG", "DS_CONFIG", "DEEPSPEED_VERSION", "DS_VERSION",
    "MEGATRON_CONFIG", "MEGATRON_LM_PATH", "JAX_BACKEND", "JAX_PLATFORMS", "JAX_VERSION",
    "PL_TRAINER_GPUS", "BUILDING_FRAMEWORK_VERSION", "MODEL_NAME", "MODEL_ID", "HF_MODEL_NAME",
    "PRETRAINED_MODEL", "TRAINING_MODE", "MODE", "TRAIN_MODE", "PRECISION", "DTYPE",
    "COMPUTE_DTYPE", "TORCH_DTYPE", "WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE",
    "NODE_RANK",
))
ENV_PREFIXES = ("PRIMUS_", "MEGATRON_", "DEEPSPEED_")
ENV_EXCLUDED_PREFIXES = ("PRIMUS_LENS_",)  # our own settings (API headers among them)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")


def _env_items(env: Mapping[str, str]) -> List[Tuple[str, str]]:
    try:
        return list(env.items())
    except Exception:  # os.environ changed under us: fall back to the exact names
        return [(name, env.get(name, "")) for name in sorted(ENV_NAMES)]


def _env_name(name: Any) -> bool:
    return (isinstance(name, str) and (name in ENV_NAMES or name.startswith(ENV_PREFIXES))
            and not name.startswith(ENV_EXCLUDED_PREFIXES) and _ENV_NAME.fullmatch(name) is not None
            and not credentials.looks_random(name))


def _environment(env: Mapping[str, str]) -> Dict[str, str]:
    """Allow-listed variables with non-empty values (the server matches on key presence, so an
    empty value would be a false claim), sorted and bounded; a value of an unexpected shape, or
    under a secret-looking name, is ``WITHHELD`` with its name kept."""
    picked = sorted((k, v) for k, v in _env_items(env)
                    if _env_name(k) and isinstance(v, str) and v.strip())
    return redact.sanitize(dict(picked), ENV_LIMITS)


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
    return redact.evidence_text(value)


def _build(env: Mapping[str, str]) -> Dict[str, str]:
    found = {key: _first_env(env, names) for key, names in _BUILD_VARS}
    return {k: _build_value(k, v) for k, v in found.items() if v}


def _system(topology: Topology) -> Dict[str, Any]:
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
    module = _module("torch.version")
    return _version_text(_attr(module, "cuda")), _version_text(_attr(module, "hip"))


def _pytorch(gpu_count: int) -> Dict[str, Any]:
    """``evidence.pytorch`` from the loaded modules only; never touches ``torch.cuda``'s API.

    ``cuda_available`` means a CUDA/ROCm build of torch on a machine where the GPU module saw a
    device, or torch already initialised its GPU runtime itself.
    """
    torch = _module("torch")
    cuda, hip = _torch_versions()
    gpu_ready = gpu_count > 0 or _attr(_module("torch.cuda"), "_initialized") is True
    return {
        "available": torch is not None,
        "version": _version_text(_attr(torch, "__version__")) or "",
        "cuda_available": torch is not None and bool(cuda or hip) and gpu_ready,
        "detected_modules": {
            "deepspeed": _module("deepspeed") is not None,
            "megatron": _module("megatron") is not None,
            "transformers": _module("transformers") is not None,
            "lightning": _imported(LIGHTNING) is not None,
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


def _devices(gpu_inventory: Any) -> List[Tuple[str, Optional[int]]]:
    """(name, memory bytes) of each device in the GPU module's inventory, types checked."""
    devices = gpu_inventory.get("devices") if isinstance(gpu_inventory, dict) else None
    out = []
    for device in devices if isinstance(devices, list) else ():
        if isinstance(device, dict):
            memory = device.get("memory_total_bytes")
            valid = type(memory) is int and memory > 0
            out.append((_plain_text(device.get("name"), 128), memory if valid else None))
    return out


def _env_version(env: Mapping[str, str], name: str) -> Optional[str]:
    """A version from the environment, unless it looks like something else (a key, a token)."""
    version = _version_text(_first_env(env, (name,)))
    return version if version and redact.safe_text(version) else None


def _hardware(devices: Sequence[Tuple[str, Optional[int]]], env: Mapping[str, str]) -> Dict[str, Any]:
    """``evidence.hardware``; ``gpu_count`` is the number of GPUs this process uses, never a
    guess from WORLD_SIZE."""
    out: Dict[str, Any] = {}
    arch = _first_env(env, _ARCH_ENV).lower()
    if devices:
        name, memory = devices[0]
        out["gpu_count"] = len(devices)
        if name:
            out["gpu_name"] = _label(name)
            arch = arch or gpu_arch(name) or ""
        if memory:
            out["gpu_memory_gb"] = round(memory / 2**30, 1)
    if _ARCH_TEXT.fullmatch(arch) and redact.safe_text(arch):
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


def _software(env: Mapping[str, str]) -> Dict[str, Any]:
    packages: Dict[str, str] = {}
    for dist in PACKAGES:
        version = _package_version(dist)
        if version:
            packages[dist] = version
    out: Dict[str, Any] = {"packages": packages} if packages else {}
    rocm = _env_version(env, "ROCM_VERSION") or _torch_versions()[1]
    if rocm:
        out["rocm_version"] = rocm
    return out


# --- the body ----------------------------------------------------------------------------------------


def _label(text: str) -> str:
    """A run's project, name or id, or a GPU name: free text, redacted and bounded."""
    return bounds.fit(redact.label(text, MAX_LABEL), LABEL_BYTES)


def _tag_list(tags: Sequence[str]) -> List[str]:
    labels = [redact.label(tag, MAX_LABEL) for tag in tags[:MAX_TAGS]]
    if len(tags) > MAX_TAGS:
        labels.append(bounds.items_dropped(len(tags) - MAX_TAGS, len(tags)))
    return bounds.fit(labels, TAGS_BYTES)


def _wandb_config(config: Mapping[str, Any]) -> Dict[str, Any]:
    """The config as sent: allow-listed and bounded, without empty detection keys.

    ai-advisor matches ``framework``, ``base_framework``, ``trainer`` and ``*_config`` on key
    presence, and an empty ``framework`` even stops its later rules, so empty ones are left out.
    """
    sent = redact.sanitize(config, CONFIG_LIMITS)
    if not isinstance(sent, dict):
        return {}
    for key in _DETECTION_CONFIG_KEYS:
        if key in sent and sent[key] in (None, "", [], {}):
            del sent[key]
    return sent


def _timestamp(now: Optional[float]) -> float:
    if isinstance(now, (int, float)) and not isinstance(now, bool) and math.isfinite(now):
        return float(now)
    return time.time()


def build_report(facts: RunFacts, config: Config, topology: Topology,
                 gpu_inventory: Optional[Mapping[str, Any]] = None, now: Optional[float] = None,
                 environ: Optional[Mapping[str, str]] = None) -> Dict[str, Any]:
    """The ``POST wandb/detection`` body for one run (spec §4, §10.1), on a background thread.

    ``environ`` defaults to ``os.environ``.  Reads ``sys.modules`` without importing anything.
    Hints are computed from the allow-listed evidence even where ``config.evidence`` leaves that
    evidence out, so they never say more than the evidence could have.
    """
    env = os.environ if environ is None else environ
    wandb_config = _wandb_config(facts.config)
    env_evidence = _environment(env)
    imported = {fw.name: module for fw in WRAPPERS + BASES for module in [_imported(fw)] if module}
    in_use = [fw for fw in WRAPPERS + BASES if _in_use(fw, imported)]
    project = _label(facts.project)
    hint = hints(_import_signals(imported) + _env_signals(env_evidence)
                 + _config_signals(wandb_config) + _project_signals(project))
    wrapper_evidence = {fw.name: _evidence_entry(fw, imported[fw.name])
                        for fw in in_use if fw.layer == WRAPPER}
    if PRIMUS.name in wrapper_evidence and hint["base_frameworks"]:
        wrapper_evidence[PRIMUS.name]["base_framework"] = hint["base_frameworks"][0]
    devices = _devices(gpu_inventory)
    evidence: Dict[str, Any] = {}
    if config.evidence == STANDARD:
        evidence.update(
            wandb={"project": project, "name": _label(facts.name), "id": _label(facts.id),
                   "config": wandb_config, "tags": _tag_list(facts.tags)},
            environment=env_evidence)
    if config.evidence in (STANDARD, MINIMAL):
        evidence.update(
            pytorch=_pytorch(len(devices)), wrapper_frameworks=wrapper_evidence,
            base_frameworks={fw.name: _evidence_entry(fw, imported[fw.name])
                             for fw in in_use if fw.layer == BASE})
    if config.evidence == STANDARD:
        evidence["system"] = _system(topology)
        optional = (("hardware", _hardware(devices, env)), ("software", _software(env)),
                    ("build", _build(env)))
    else:
        optional = (("software", _software(env)),) if config.evidence == MINIMAL else ()
    evidence.update((key, section) for key, section in optional if section)
    body: Dict[str, Any] = {"source": SOURCE, "type": TYPE, "version": VERSION}
    for key, value in (("workload_uid", config.workload_uid), ("pod_uid", config.pod_uid),
                       ("pod_name", config.pod_name), ("namespace", config.pod_namespace)):
        if value:
            body[key] = value
    body.update(evidence=evidence, hints=hint, timestamp=_timestamp(now))
    return body
