"""The pulse of this process: started once, at the first of its activations, never in a child.

Three things start it (``start``): ``torch.distributed.init_process_group`` and
``jax.distributed.initialize`` (the bootstrap wraps both when their modules are imported, so a
process that never joins a distributed job starts nothing), and the first ``wandb.init`` (the
session of a run's owner).  The first successful one starts the pulse thread; the later ones only
hand over what they know (the session's sampler, the owner's wandb step).  A forked child
(a DataLoader worker, a tokenizer pool) never pulses: the fork callback abandons the parent's
pulse and switches activation off in the child; a spawned worker never calls any of the three.

``describe`` answers doctor's questions: whether this process pulses, with which step source,
and where its lines go (or why not).
"""

from __future__ import annotations

import atexit
import os
import sys
from typing import Any, Dict, Optional

from .. import log, state
from ..metrics import Sampler
from ..paths import record_location
from ..pulseline import pulse_path
from .beat import Pulse
from .pulsefile import PulseFile
from .stacks import watch_for_the_application
from .steps import StepReader

_pulse: Optional[Pulse] = None
_off = ""  # why this process never pulses ("" while it may)
_fork_hooked = False


def start(reason: str, sampler: Optional[Sampler] = None,
          wandb_step: Optional[StepReader] = None) -> Optional[Pulse]:
    """Start this process's pulse (once), or hand the running one ``sampler`` and
    ``wandb_step``; the pulse, or None where it is off (``describe`` says why).  Never raises:
    the pulse must not break the call that activates it."""
    global _off
    try:
        pulse = _pulse or (None if _off else _begin(reason, sampler))
        if pulse is not None:
            if sampler is not None:
                pulse.use_sampler(sampler)
            if wandb_step is not None:
                pulse.follow_wandb(wandb_step)
            if pulse is not _pulse:  # new: its thread starts with everything handed over
                _run(pulse)
        return pulse
    except Exception as exc:
        _off = f"failed to start ({type(exc).__name__}: {exc})"
        log.warn(f"rank pulse off for this process: {_off}", key="pulse-start")
        return None


def _begin(reason: str, sampler: Optional[Sampler]) -> Optional[Pulse]:
    """A new pulse writing beside the record, not running yet; None where it is off."""
    global _off
    config, topology = state.get_config(), state.get_topology()
    if not config.hook or not config.pulse:
        _off = "PRIMUS_LENS_WANDB_HOOK=false" if not config.hook else "PRIMUS_LENS_PULSE=false"
        return None
    where = record_location(config, topology, reporting=False)
    if not where.path:
        _off = "PRIMUS_LENS_WANDB_SAVE_LOCAL=false: no record directory to pulse beside"
        return None
    file = None
    for record in (where.path, where.fallback):
        if not record:
            continue
        file = PulseFile(pulse_path(record), shared=where.shared and record == where.path)
        try:
            file.open()
            break
        except OSError as exc:  # the record writer says so for the record's directory
            log.debug("pulse_not_writable", path=file.path, error=str(exc))
            file = None
    if file is None:
        _off = f"no writable record directory ({where.path}, {where.fallback or 'no fallback'})"
        log.warn(f"rank pulse off for this process: {_off}", key="pulse-start")
        return None
    return Pulse(config, topology, file, reason, sampler)


def _run(pulse: Pulse) -> None:
    global _pulse
    _pulse = pulse
    _hook_fork()
    atexit.register(pulse.stop)
    pulse.start()
    log.debug("pulse_started", reason=pulse.reason, path=pulse.path, step_source=pulse.source,
              interval=pulse.config.pulse_interval)


def _hook_fork() -> None:
    global _fork_hooked
    if not _fork_hooked:
        _fork_hooked = True
        state.at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                      after_in_child=_after_fork_in_child)


def _before_fork() -> None:
    if _pulse is not None:
        _pulse.before_fork()


def _after_fork_in_parent() -> None:
    if _pulse is not None:
        _pulse.after_fork_in_parent()


def _after_fork_in_child() -> None:
    """A forked child never pulses, whatever it calls later."""
    global _pulse, _off
    if _pulse is not None:
        _pulse.abandon_after_fork()
    _pulse = None
    _off = "a forked child (a DataLoader worker, a pool) never pulses"


def current() -> Optional[Pulse]:
    """The running pulse of this process, if any."""
    return _pulse


def describe() -> Dict[str, Any]:
    """For doctor: ``pulsing``, ``reason`` (what started it), ``step_source``, ``path``, and
    ``why_not`` where it does not pulse (yet)."""
    pulse = _pulse
    if pulse is not None:
        return {"pulsing": True, "reason": pulse.reason, "step_source": pulse.source,
                "path": pulse.path, "lines": pulse.lines, "stalls": pulse.stalls}
    return {"pulsing": False, "why_not": _off or "not activated: no init_process_group, "
            "jax.distributed.initialize or wandb.init in this process",
            "torch_imported": "torch" in sys.modules, "pid": os.getpid()}


watch_for_the_application()  # from the moment the package loads (docs/pulse.md)
