"""The sampler source for GPU figures, and the record keys they are stored under.

Keys: ``_primus_gpu_<figure>`` when the process samples one GPU (process scope, the usual case),
``_primus_gpu_<i>_<figure>`` otherwise, where ``i`` is the index the runtime gives the GPU: the
process-visible index (``cuda:i``) when a process samples several GPUs, the node index (in the
runtime's order without ``*_VISIBLE_DEVICES``) in node scope.

The source is created on the training thread at ``wandb.init`` but does nothing there: the backend
is chosen and opened in ``prime``, which the sampler calls in its own thread, because opening a
management library can take from milliseconds to seconds.
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Tuple

from ... import log
from ...config import Config
from ...topology import Topology
from .choose import attribute, choose
from .device import FIGURES, Backend, Device
from .visible import Attribution

PREFIX = "_primus_gpu_"


def key(figure: str, index: Optional[int] = None) -> str:
    return f"{PREFIX}{figure}" if index is None else f"{PREFIX}{index}_{figure}"


class GpuSource:
    """Samples this process's GPU(s) through the chosen backend; ``name`` becomes the backend's."""

    name = "gpu"

    def __init__(self, config: Config, topology: Topology,
                 environ: Optional[Mapping[str, str]] = None) -> None:
        self._config = config
        self._topology = topology
        self._environ = environ
        self._backend: Optional[Backend] = None
        self._sampled: List[Tuple[Device, Dict[str, str]]] = []
        self._primed = False

    def prime(self) -> bool:
        """Choose and open the backend; False when there is nothing to sample in this process."""
        if self._primed:
            return self._backend is not None
        self._primed = True
        config = self._config
        choice = choose(config)
        backend = choice.backend
        if backend is None:
            log.debug("gpu_source_off", reason=choice.reason, rejected=choice.rejected)
            if config.gpu_backend not in ("auto", "none"):
                log.warn(f"PRIMUS_LENS_GPU_BACKEND={config.gpu_backend} is unavailable "
                         f"({choice.rejected.get(config.gpu_backend)}); no GPU figures")
            return False
        try:
            attribution = attribute(backend, config, self._topology, self._environ)
        except BaseException:
            backend.close()
            raise
        log.debug("gpu_source", backend=backend.name, rejected=choice.rejected,
                  **attribution.describe())
        if not attribution.sampled:
            backend.close()
            return False
        self.attach(backend, attribution)
        return True

    def attach(self, backend: Backend, attribution: Attribution) -> None:
        """Sample ``attribution``'s devices through an open ``backend`` (which it now owns)."""
        self._primed = True
        self.name = backend.name
        self._sampled = [(device, {figure: key(figure, index) for figure in FIGURES})
                         for index, device in attribution.sampled]
        self._backend = backend

    def sample(self) -> Dict[str, float]:
        if not self._primed:
            self.prime()
        backend = self._backend
        out: Dict[str, float] = {}
        if backend is None:
            return out
        for device, keys in self._sampled:
            for figure, value in backend.read(device).items():
                out[keys[figure]] = value
        return out

    def close(self) -> None:
        backend, self._backend = self._backend, None
        if backend is not None:
            backend.close()
