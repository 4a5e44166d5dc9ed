"""The frameworks the detection report names, and how a process proves one in use.

Being imported is not being used: torchmetrics (under every Lightning job) imports
``transformers``, Megatron and DeepSpeed jobs import it for tokenizers.  So a framework counts
only if its module is already in ``sys.modules`` *and* the run shows it is used (``used``): its
code is on the run's call stack when wandb is started or first logged to (the training entry in
use: HF's ``Trainer`` calls ``wandb.init`` and ``log`` itself, Lightning's logger does, Megatron's
training loop does), or its state is initialised, or -- for the bases that no library imports on
the side (Megatron, DeepSpeed, JAX) -- it is imported at all.  Its version comes from a module
attribute or package metadata, its state from a module global.  Nothing is imported, called or
spawned (docs/detection.md).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from .runfacts import plain_text

WRAPPER = "wrapper"
BASE = "base"


@dataclass(frozen=True)
class Framework:
    """A framework as the server knows it, and where its traces are in a process."""

    name: str  # as the server knows it
    layer: str
    modules: Tuple[str, ...]  # exact sys.modules keys; the first one present proves use
    version_modules: Tuple[str, ...]  # whose __version__ to read, in order
    dists: Tuple[str, ...]  # distributions to ask importlib.metadata otherwise
    state: Tuple[Tuple[str, str], ...] = ()  # (module, global) set once the framework initialised
    callers: Tuple[str, ...] = ()  # packages whose code on the run's stack proves use; none:
    # imported counts as used (a base that no library imports on the side)
    model_module: str = ""  # loaded only with the framework's model classes: proves use too


PRIMUS = Framework("primus", WRAPPER, ("primus",), ("primus",), ("primus",),
                   (("primus.core.utils.global_vars", "_GLOBAL_PRIMUS_CFG"),), ("primus",))
LIGHTNING = Framework("lightning", WRAPPER, ("lightning", "pytorch_lightning"),
                      ("lightning", "pytorch_lightning"), ("lightning", "pytorch-lightning"),
                      callers=("lightning", "pytorch_lightning"))
HF_TRAINER = Framework("transformers_trainer", WRAPPER, ("transformers.trainer",),
                       ("transformers",), ("transformers",),
                       callers=("transformers.trainer", "transformers.trainer_seq2seq"))
MEGATRON = Framework("megatron", BASE, ("megatron",), ("megatron.core", "megatron"),
                     ("megatron-core", "megatron-lm"),
                     (("megatron.training.global_vars", "_GLOBAL_ARGS"),
                      ("megatron.global_vars", "_GLOBAL_ARGS")))
DEEPSPEED = Framework("deepspeed", BASE, ("deepspeed",), ("deepspeed",), ("deepspeed",),
                      (("deepspeed.comm.comm", "cdb"),))
JAX = Framework("jax", BASE, ("jax",), ("jax",), ("jax",), (("jax._src.xla_bridge", "_backends"),))
TRANSFORMERS = Framework("transformers", BASE, ("transformers",), ("transformers",),
                         ("transformers",), callers=("transformers",),
                         model_module="transformers.modeling_utils")

WRAPPERS = (PRIMUS, LIGHTNING, HF_TRAINER)
BASES = (MEGATRON, DEEPSPEED, JAX, TRANSFORMERS)  # the server's base priority order
_ORDER = {fw.name: i for i, fw in enumerate(WRAPPERS + BASES)}


def priority(name: str) -> Tuple[int, str]:
    """Sort key of a framework name: the server's order, unknown names last (by name)."""
    return _ORDER.get(name, len(_ORDER)), name

_WRAPPER_NAMES = frozenset(fw.name for fw in WRAPPERS) | {"pytorch_lightning"}

# Names people write in FRAMEWORK / config["framework"], mapped to the names above.
_ALIASES = {
    "pytorch_lightning": "lightning", "pl": "lightning", "megatron_lm": "megatron",
    "megatron_core": "megatron", "mcore": "megatron", "ds": "deepspeed", "hf": "transformers",
    "huggingface": "transformers", "hf_trainer": "transformers_trainer",
}
_NAME = re.compile(r"[a-z][a-z0-9_.]{0,31}")


def framework_name(raw: Any) -> Optional[str]:
    """A user-written framework name in canonical form, or None if it is not a plausible name."""
    if not isinstance(raw, str):
        return None
    name = raw.strip().lower().replace("-", "_").replace(" ", "_")
    if not _NAME.fullmatch(name):
        return None
    return _ALIASES.get(name, name)


def layer_of(name: str) -> str:
    return WRAPPER if name in _WRAPPER_NAMES else BASE


def loaded(name: str) -> Any:
    return sys.modules.get(name)  # a None entry (import blocked) counts as absent


# Megatron-LM (``megatron``; megatron-core and Megatron-Bridge live in it too) and Primus's
# Megatron backends: the frameworks that log on the last rank (docs/reporting.md).
MEGATRON_STYLE = ("megatron", "primus.backends.megatron", "primus.backends.megatron_bridge")


def megatron_style() -> Optional[str]:
    """The first Megatron-style module this process has imported, or None (O(1) look-ups)."""
    return next((name for name in MEGATRON_STYLE if loaded(name) is not None), None)


def global_of(module: Any, name: str) -> Any:
    """A global of a loaded module, read from its namespace: no module ``__getattr__`` (lazy
    loaders such as torch's or transformers' import submodules on demand) and no property runs."""
    try:
        return vars(module).get(name)
    except TypeError:  # None, or an object without a namespace
        return None


def imported_module(fw: Framework) -> Optional[str]:
    return next((m for m in fw.modules if loaded(m) is not None), None)


def on_stack(fw: Framework, callers: Sequence[str]) -> bool:
    """Whether a module of ``fw.callers`` (or one inside those packages) is among ``callers``."""
    return any(name == package or name.startswith(package + ".")
               for name in callers for package in fw.callers)


def used(imported: Mapping[str, str], callers: Sequence[str]) -> Dict[str, str]:
    """Of the imported frameworks (``{name: module}``), those the run shows it uses.

    ``callers`` are the module names of the frames on the run's stack when wandb was started and
    first logged to (``RunFacts.callers``).  A framework with ``callers`` is used when its code
    is among them, its state is initialised, or its ``model_module`` is loaded (the classes of
    a model were loaded: torchmetrics' lazy look-ups into ``transformers`` load none); one
    without ``callers`` is used when imported.  With no stack seen every import counts.
    """
    if not callers:
        return dict(imported)
    return {fw.name: imported[fw.name] for fw in WRAPPERS + BASES if fw.name in imported and (
        not fw.callers or on_stack(fw, callers) or _initialized(fw) is True
        or (fw.model_module and loaded(fw.model_module) is not None))}


def in_use(fw: Framework, imported: Mapping[str, str]) -> bool:
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


def version_text(value: Any) -> Optional[str]:
    text = plain_text(value)
    return text if _VERSION.fullmatch(text) else None


def package_version(dist: str) -> Optional[str]:
    """Installed version from package metadata (reads files, never imports the package)."""
    from importlib import metadata

    for name in dict.fromkeys((dist, dist.replace("-", "_"))):  # Python 3.9 does not normalise
        try:
            return version_text(metadata.version(name))
        except Exception:
            continue
    return None


def _version(fw: Framework) -> str:
    for module in fw.version_modules:
        found = version_text(global_of(loaded(module), "__version__"))
        if found:
            return found
    for dist in fw.dists:
        found = package_version(dist)
        if found:
            return found
    return "unknown"


def _initialized(fw: Framework) -> Optional[bool]:
    """Whether the framework's global state is set up, read from a module global (no call).

    Only the first of ``fw.state`` whose module is loaded decides; None when none is loaded.
    """
    for module_name, attribute in fw.state:
        module = loaded(module_name)
        if module is not None:
            value = global_of(module, attribute)
            return bool(value) if type(value) is dict else value is not None
    return None


def evidence_entry(fw: Framework, module: str) -> Dict[str, Any]:
    """The report's entry for a framework in use: its version, the module that proved it, and
    whether it initialised (where that can be read)."""
    entry: Dict[str, Any] = {"detected": True, "version": _version(fw), "module_name": module}
    initialized = _initialized(fw)
    if initialized is not None:
        entry["initialized"] = initialized
    return entry
