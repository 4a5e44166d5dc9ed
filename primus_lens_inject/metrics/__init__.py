"""System and GPU figures for enrichment, sampled off the training thread: what capture may use.

- ``Sampler``: the background thread that keeps ``Sampler.snapshot`` current from its sources
  (a session part: ``lifecycle.Part``);
- ``open_host_source``: the host source (CPU %, memory %, this process's RSS);
- ``open_sampler``: the process's sampler of its host and its own GPU(s), for the session and the
  rank pulse alike.

The GPU sources and the GPU inventory are the face of ``metrics.gpu`` (``open_gpu_sources``,
``inventory``, ``describe``): import them from there, inside the function that needs them, so
that the GPU modules load only when enrichment or the detection report asks for them, never at
wandb's import.  Nothing here imports ``report`` or ``capture``.  See docs/architecture.md.
"""

from .host import open_host_source
from .sampler import Sampler, open_sampler

__all__ = ["Sampler", "open_host_source", "open_sampler"]
