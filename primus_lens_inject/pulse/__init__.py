"""The rank pulse: every training process's steps, figures and stalls, written beside its record.

Every rank of a distributed job (not only the one that owns a wandb run) writes a line to
``pulse.jsonl`` every ``PRIMUS_LENS_PULSE_INTERVAL`` seconds: the optimizer steps it completed
(a global optimizer step hook), its step times, the owner's wandb step, and its own GPU and host
figures; and, when it stops stepping, one ``stall`` line with every thread's stack (a C-level
watchdog catches a thread that holds the GIL), then a ``recovery`` line.  Nothing is sent from
the training process: the pod agent and ``primus-lens report`` read the files.  docs/pulse.md.

What other layers use:

- ``start(reason, sampler=None, wandb_step=None)``: start the process's pulse once (the
  bootstrap's ``torch.distributed``/``jax.distributed`` hooks and the session call it), or hand
  the running one the session's sampler and the owner's wandb step reader;
- ``describe()``: whether this process pulses, with which step source, where (for doctor);
- ``current()``: the running ``Pulse`` or None.

Imports leaves and the ``metrics`` face only.
"""

from .process import current, describe, start

__all__ = ["current", "describe", "start"]
