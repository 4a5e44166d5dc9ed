"""The framework-detection report: one ``POST wandb/detection`` body per wandb run (spec §4).

Two halves, split by thread.  ``RunFacts.from_run`` (``runfacts``) runs on the training thread
at the run's first row (the configuration is complete by then) and only copies what the run
knows.  ``build_report`` runs later on the
reporter's thread and assembles the body from the frameworks in use (``frameworks``), the
``hints`` their signals give, and the evidence sections (``environment``).

The old exporter imported every framework it looked for, called ``torch.cuda``/``jax.devices()``
and shelled out to ``rocm-smi``/``nvidia-smi`` inside ``wandb.init``, reported "installed" as
"in use", sent empty environment values (which the server takes as a match) and the whole config
unredacted.  Here a framework is "in use" only if
its module is already in ``sys.modules`` and the run shows it uses it (``frameworks.used``: its
code drove ``wandb.init`` or the first log, or its state is set up); facts come from module
attributes, package metadata, the environment and the GPU module's inventory; nothing is
imported, called or spawned.  What
leaves is chosen by allow-list (``evidence``): framework variables only, values of expected shapes
only, the config's safe scalars only, labels redacted; ``PRIMUS_LENS_EVIDENCE`` can cut it down
to framework names and versions, or names only.  The rules are documented in docs/detection.md.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ..config import Config
from ..topology import Topology
from . import bounds, environment, evidence, frameworks
from .frameworks import BASE, BASES, PRIMUS, WRAPPER, WRAPPERS
from .hints import DETECTION_CONFIG_KEYS, hints, signals
from .identity import identity
from .runfacts import RunFacts

_SOURCE = "wandb"
_TYPE = "framework_detection_raw"
VERSION = "1.0"

# Section bounds.  Worst case: config 256 KiB + environment 64 KiB + tags 16 KiB + four 1 KiB
# labels + eight build values of at most 256 characters + a few KiB of fixed-shape fields, far
# below the 1 MiB per request we allow ourselves (spec §9.8).
_CONFIG_LIMITS = evidence.Limits(max_str=256, max_items=1000, max_depth=32, max_nodes=20000,
                                 max_bytes=256 * 1024)
MAX_TAGS, TAGS_BYTES = 64, 16 * 1024

# PRIMUS_LENS_EVIDENCE levels; with the third, "off", the report carries hints only.
STANDARD, MINIMAL = "standard", "minimal"


def _tag_list(tags: Sequence[str]) -> List[str]:
    labels = [evidence.label(tag, environment.MAX_LABEL) for tag in tags[:MAX_TAGS]]
    if len(tags) > MAX_TAGS:
        labels.append(bounds.items_dropped(len(tags) - MAX_TAGS, len(tags)))
    return bounds.fit(labels, TAGS_BYTES)


def _wandb_config(config: Mapping[str, Any]) -> Dict[str, Any]:
    """The config as sent: allow-listed and bounded, without empty detection keys.

    ai-advisor matches ``framework``, ``base_framework``, ``trainer`` and ``*_config`` on key
    presence, and an empty ``framework`` even stops its later rules, so empty ones are left out.
    """
    sent = evidence.sanitize(config, _CONFIG_LIMITS)
    if not isinstance(sent, dict):
        return {}
    for key in DETECTION_CONFIG_KEYS:
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
    env_evidence = environment.variables(env)
    imported = frameworks.used({fw.name: module for fw in WRAPPERS + BASES
                                for module in [frameworks.imported_module(fw)] if module},
                               facts.callers)
    in_use = [fw for fw in WRAPPERS + BASES if frameworks.in_use(fw, imported)]
    project = environment.label(facts.project)
    hint = hints(signals(imported, env_evidence, wandb_config, project))
    wrapper_evidence = {fw.name: frameworks.evidence_entry(fw, imported[fw.name])
                        for fw in in_use if fw.layer == WRAPPER}
    if PRIMUS.name in wrapper_evidence and hint["base_frameworks"]:
        wrapper_evidence[PRIMUS.name]["base_framework"] = hint["base_frameworks"][0]
    devices = environment.devices(gpu_inventory)
    evidence: Dict[str, Any] = {}
    if config.evidence == STANDARD:
        evidence.update(
            wandb={"project": project, "name": environment.label(facts.name),
                   "id": environment.label(facts.id),
                   "config": wandb_config, "tags": _tag_list(facts.tags)},
            environment=env_evidence)
    if config.evidence in (STANDARD, MINIMAL):
        evidence.update(
            pytorch=environment.pytorch(len(devices)), wrapper_frameworks=wrapper_evidence,
            base_frameworks={fw.name: frameworks.evidence_entry(fw, imported[fw.name])
                             for fw in in_use if fw.layer == BASE})
    if config.evidence == STANDARD:
        evidence["system"] = environment.system(topology)
        optional: Tuple[Tuple[str, Mapping[str, Any]], ...] = (
            ("hardware", environment.hardware(devices, env)),
            ("software", environment.software(env)), ("build", environment.build(env)))
    else:
        optional = (("software", environment.software(env)),) if config.evidence == MINIMAL else ()
    evidence.update((key, section) for key, section in optional if section)
    body: Dict[str, Any] = {"source": _SOURCE, "type": _TYPE, "version": VERSION}
    body.update((key, value) for key, value in identity(config).items() if value)
    if config.pod_namespace:
        body["namespace"] = config.pod_namespace
    body.update(evidence=evidence, hints=hint, timestamp=_timestamp(now))
    return body
