"""Which frameworks the evidence points at: signals by strength, and the report's ``hints``.

Imports are the strongest evidence, then the environment, then the wandb config; the project name
counts only when nothing else points anywhere (docs/detection.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

from .frameworks import (
    BASE,
    BASES,
    TRANSFORMERS,
    WRAPPER,
    WRAPPERS,
    framework_name,
    in_use,
    layer_of,
    priority,
)

_MAX_INDICATORS = 16

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
DETECTION_CONFIG_KEYS = ("framework", "base_framework", "trainer",
                          *(key for key, _ in _CONFIG_KEY_SIGNALS))
_TRAINER_BASES = ("deepspeed", "megatron")
_PROJECT_PATTERNS = (
    ("primus", ("primus",)), ("lightning", ("lightning", "pl-training")),
    ("deepspeed", ("deepspeed", "ds-training")), ("megatron", ("megatron",)), ("jax", ("jax",)),
    ("transformers", ("transformers", "hf-transformers")),
)


def _named(raw: Any, tier: int, indicator: str, layer: Optional[str] = None) -> List[Signal]:
    name = framework_name(raw)
    if name is None:
        return []
    return [Signal(name, layer or layer_of(name), tier, f"{indicator}={name}")]


def _import_signals(imported: Mapping[str, str]) -> List[Signal]:
    return [Signal(fw.name, fw.layer, IMPORT, f"import.{imported[fw.name]}")
            for fw in WRAPPERS + BASES if in_use(fw, imported)]


def _env_signals(environment: Mapping[str, str]) -> List[Signal]:
    """From the (already filtered, non-empty, redacted) environment evidence."""
    out = [Signal(fw, layer_of(fw), ENV, f"env.{var}") for var, fw in _ENV_SIGNALS
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
    out += [Signal(fw, layer_of(fw), CONFIG, f"config.{key}") for key, fw in _CONFIG_KEY_SIGNALS
            if key in config]
    return out


def _project_signals(project: str) -> List[Signal]:
    """Substrings of the wandb project name, as ai-advisor matches them (the weakest evidence)."""
    lowered = project.lower()
    out = []
    for fw, patterns in _PROJECT_PATTERNS:
        hit = next((p for p in patterns if p in lowered), None)
        if hit:
            out.append(Signal(fw, layer_of(fw), PROJECT, f"project~{hit}"))
    return out



def signals(imported: Mapping[str, str], environment: Mapping[str, str],
            config: Mapping[str, Any], project: str) -> List[Signal]:
    """Every signal of one run: its framework imports (``{framework: module}``), the environment
    and wandb config as sent (allow-listed), and its project name."""
    return (_import_signals(imported) + _env_signals(environment) + _config_signals(config)
            + _project_signals(project))


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
        chosen[layer] = sorted(_unique(s.framework for s in mine if s.tier == best), key=priority)
    wrappers, bases = chosen[WRAPPER], chosen[BASE]
    picked = set(wrappers) | set(bases)
    ordered = sorted(signals, key=lambda s: (s.tier, s.layer != WRAPPER, priority(s.framework)))
    return {
        "wrapper_frameworks": wrappers,
        "base_frameworks": bases,
        "possible_frameworks": _unique([*wrappers, *bases, *(s.framework for s in ordered)]),
        "confidence": _confidence(signals, picked),
        "primary_indicators": _unique(s.indicator for s in ordered
                                      if s.framework in picked)[:_MAX_INDICATORS],
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
