"""What the training thread takes from a wandb run for its detection report (``RunFacts``).

Hugging Face's ``Trainer`` and Lightning fill ``wandb.config`` after ``wandb.init``, so the facts
are taken when the run's first row is logged (or when it finishes, or the process ends, if it
never logs): ``RunFacts.from_run`` runs on the training thread then and only copies what the run
knows (project, name, id, tags, a shallow copy of the config), together with the modules on the
call stack at ``wandb.init`` and at that moment (``caller_modules``: which training entry drives
the run); it reads no module, file or environment and cannot raise.  The report itself is built
later, on the reporter's thread (``detection.build_report``).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Sequence, Tuple

_MAX_FRAMES = 256  # deeper stacks are cut: the training entry sits near the top of the walk


def plain_text(value: Any, limit: int = 1024) -> str:
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


def caller_modules(limit: int = _MAX_FRAMES) -> Tuple[str, ...]:
    """The distinct module names (``__name__`` of each frame's globals) on the calling thread's
    stack, innermost first, at most ``limit`` frames: one dict look-up per frame, never raises."""
    names: Dict[str, None] = {}
    try:
        frame: Any = sys._getframe(1)
        for _ in range(limit):
            if frame is None:
                break
            name = frame.f_globals.get("__name__")
            if type(name) is str:
                names[name] = None
            frame = frame.f_back
    except Exception:  # an interpreter without frames
        pass
    return tuple(names)


def _tags(value: Any) -> Tuple[str, ...]:
    if not isinstance(value, (list, tuple)):
        return ()
    return tuple(plain_text(tag) for tag in list(value) if isinstance(tag, str))


@dataclass(frozen=True)
class RunFacts:
    """What one wandb run says about itself, copied on the training thread at its first row."""

    project: str = ""
    name: str = ""
    id: str = ""
    tags: Tuple[str, ...] = ()
    config: Dict[str, Any] = field(default_factory=dict)
    callers: Tuple[str, ...] = ()  # ``caller_modules`` at init and now; empty: not seen
    group: str = ""  # the run's wandb group: one job's runs share it (the agent sends one report)

    @classmethod
    def from_run(cls, run: Any, callers: Sequence[str] = ()) -> RunFacts:
        """O(number of top-level config keys), no I/O, never raises.

        Nested config values are shared with the run, not copied: ``build_report`` reads each
        container with one atomic ``list(...)``, so concurrent updates cannot break it.
        """
        try:
            return cls(project=plain_text(_run_attr(run, "project")),
                       name=plain_text(_run_attr(run, "name")),
                       id=plain_text(_run_attr(run, "id")),
                       tags=_tags(_run_attr(run, "tags")),
                       config=_config_dict(_run_attr(run, "config")),
                       callers=tuple(callers),
                       group=plain_text(_run_attr(run, "group"))
                       or os.environ.get("WANDB_RUN_GROUP", ""))
        except Exception:
            return cls(callers=tuple(callers))
