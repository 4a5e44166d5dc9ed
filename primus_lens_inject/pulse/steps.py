"""Counting optimizer steps: the one piece of the pulse that runs on the training thread.

PyTorch (>= 2.0) calls every global optimizer step post-hook after each ``Optimizer.step`` of
every optimizer, whatever wraps it (Megatron's, DeepSpeed's and Lightning's optimizers call a
torch optimizer's ``step`` in the end), and a gradient-accumulation loop calls ``step`` once per
optimizer step, not per micro-batch: so the hook counts exactly the optimizer steps.  The hook is
kept to three attribute writes (``StepCounter.tick``); everything derived from them (step times,
means, medians) is computed on the pulse thread from two consecutive readings.

Without an optimizer step (no torch, or torch imported but never stepping, as in a JAX job that
imports transformers), a process that owns a wandb run counts the changes of its wandb step
instead (``WandbSteps``), read on the pulse thread: coarser (one reading per pulse interval), but
the only progress such a process shows.  The first optimizer step makes the optimizer the source
for good (``Pulse`` chooses at every beat).
"""

from __future__ import annotations

import importlib
import sys
import time
from typing import Any, Callable, Optional, Tuple

OPTIMIZER = "optimizer"  # step source: torch's global optimizer step post-hook
WANDB = "wandb"  # step source: the owner's wandb step
NO_SOURCE = "none"  # neither: the pulse still writes figures, never a stall

_now = time.monotonic


class StepCounter:
    """Steps completed and the ``time.monotonic()`` of the last two, written by the hook only."""

    __slots__ = ("count", "last", "prev")

    def __init__(self) -> None:
        self.count = 0
        self.last = 0.0
        self.prev = 0.0

    def read(self) -> Tuple[int, float, float]:
        """(count, last, prev) as the pulse thread sees them.  The hook may run between two of
        these reads; the count is read first, so a step that lands meanwhile shows up in the
        stamps a reading early, never the other way round."""
        return self.count, self.last, self.prev


def make_hook(counter: StepCounter) -> Callable[[Any, Any, Any], None]:
    """The post-hook torch calls after every optimizer step: a few attribute writes and a clock
    read, nothing else (bench/pulse_hook.py measures it)."""

    def hook(optimizer: Any, args: Any, kwargs: Any, c: StepCounter = counter,
             now: Callable[[], float] = _now) -> None:
        c.prev = c.last
        c.last = now()
        c.count += 1

    return hook


OPTIMIZER_STEPS = StepCounter()  # the process's one counter of optimizer steps
_handle: Optional[Any] = None  # torch's handle of the hook, once registered


def ensure_optimizer_hook() -> bool:
    """Register the hook with torch (>= 2.0) once it is imported; whether it is registered.
    Cheap to call on every beat: torch may be imported after the pulse started."""
    global _handle
    if _handle is not None:
        return True
    if "torch" not in sys.modules:
        return False
    try:  # by name: the type checker need not read torch
        register = importlib.import_module("torch.optim.optimizer").register_optimizer_step_post_hook
        _handle = register(make_hook(OPTIMIZER_STEPS))
    except Exception:  # torch < 2.0, or a torch that fails to import its optimizers
        return False
    return True


StepReader = Callable[[], Optional[Tuple[str, int]]]  # the owner's (run id, wandb step), or None


class WandbSteps:
    """The owner's wandb step as a step source: each change adds what it moved by (wandb's step
    grows by one per committed row), stamped when the pulse thread sees it."""

    def __init__(self, counter: StepCounter) -> None:
        self.counter = counter
        self._seen: Optional[int] = None

    def observe(self, step: Optional[int]) -> None:
        if step is None:
            return
        if self._seen is not None and step > self._seen:
            c = self.counter
            c.prev = c.last
            c.last = _now()
            c.count += step - self._seen
        if self._seen is None or step > self._seen:
            self._seen = step
