"""Delivery: the local record's rows and each run's detection report, sent to the enabled sinks.

What capture may use (it makes one ``Reporter`` per record and hands it each run):

- ``Reporter``: the supervisor of the sinks the configuration enables (``report.sinks``), a
  session part (``lifecycle.Part``);
- ``RunFacts`` and ``caller_modules``: what a run's detection report is built from, copied on the
  training thread and built into the report off it;
- ``Writer``, ``writer_for``, ``register`` and ``process_reports``: who sends what (``owner``),
  decided per process and per run, the writer's tag stored beside the record; ``Writers``: a
  record's writers by tag, for a reader of the record (the agent's ``/metrics``);
- ``write_status``: the status file beside the record (the session's own figures);
- ``Handover``: a trainer's reporter when the pod agent sends its record (it only stores the
  detection reports); ``Paces`` and ``PodDetections``: what the agent shares among the
  ``Reporter`` of every record it sends (a pod-wide pace per kind of sink, one detection
  sender); ``write_atomic``: a whole-file replace (the agent's own file);
- ``hold_imports_across_fork``: a fork waits for the senders' lazy imports (``transport``).

The record file is the only link between capture and delivery.  Nothing here imports ``metrics``
or ``capture``: what a sink needs from them (the GPU inventory) is passed in.  The sinks, in
``report.lens`` and ``report.otlp``, are peers that never import each other.  See
docs/architecture.md.
"""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # for type checkers; at run time each name loads from its module when first used
    from .handover import Handover
    from .lens import PodDetections
    from .owner import Writer, Writers, process_reports, register, writer_for
    from .pace import Paces
    from .reporter import Reporter
    from .runfacts import RunFacts, caller_modules
    from .spool import write_atomic
    from .status import write_status
    from .transport import hold_imports_across_fork

# Each name of the face and the module it lives in.  Loaded lazily: the training thread imports
# ``runfacts`` at ``wandb.init``, and that must not load the senders (or httpx, or sockets) with it.
_HOMES = {"Reporter": "reporter", "RunFacts": "runfacts", "caller_modules": "runfacts",
          "Writer": "owner", "Writers": "owner", "process_reports": "owner", "register": "owner",
          "writer_for": "owner",
          "write_status": "status", "hold_imports_across_fork": "transport",
          "Handover": "handover", "Paces": "pace", "PodDetections": "lens",
          "write_atomic": "spool"}

__all__ = ["Handover", "Paces", "PodDetections", "Reporter", "RunFacts", "Writer", "Writers",
           "caller_modules", "hold_imports_across_fork", "process_reports", "register",
           "write_atomic", "write_status", "writer_for"]


def __getattr__(name: str) -> Any:
    """A name of the face, imported from its module on first use and kept."""
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value
