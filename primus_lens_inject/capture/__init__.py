"""Capture: wandb's rows, as wandb itself records them, written to the local record.

What others may use: ``install``, which patches the wandb module a program just imported; the
bootstrap's wandb post-import hook calls it (and nothing else of the package) when the program
itself imports wandb.  Everything else happens behind the patched ``wandb.init``/``Run.log``:
the ``session`` copies and queues each call on the training thread, the record writer turns the
calls into rows (``rows``, ``history``, ``reconcile``) and appends them to the record file, the
only link with delivery (``report``).  capture is the one layer that wires leaves, ``metrics``
and ``report`` together.  See docs/architecture.md and docs/capture.md.
"""

from .patch import install

__all__ = ["install"]
