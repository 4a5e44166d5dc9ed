"""One background thread per process that samples system figures into a cached snapshot.

The training thread never calls a metrics library: it merges ``Sampler.snapshot``, a dict that
the sampler thread replaces (never mutates) after each round.  Each source (host, GPU backend)
is independent: one that raises is switched off with a single warning and the others go on.

A source has ``name``, ``sample() -> Dict[str, float]`` and ``close()``, and optionally
``prime()``, called once in the sampler thread before the first sample: that is where a source
opens a library that may be slow to start, and where it returns ``False`` when it has nothing to
sample in this process (no GPU, say), which drops it silently.  ``start`` waits for the first
sample for at most ``first_sample_wait`` seconds, so that rows logged right after ``wandb.init``
already carry figures without a slow library ever holding ``wandb.init`` up for long.

The sampler is one of the session's parts (``lifecycle.Part``): its ``flush`` has nothing to
deliver (its figures travel in the rows), its ``close`` waits within the process end's deadline.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Dict, List, Optional

from .. import guard, log
from ..config import Config
from ..topology import Topology

_FIRST_SAMPLE_WAIT = 1.0  # seconds start() waits for the first snapshot
STOP_WAIT = 2.0  # seconds close() waits for the thread to finish its round


def open_sampler(config: Config, topology: Topology, interval: float) -> Sampler:
    """This process's sampler: the host and the process's own GPU(s), every ``interval``
    seconds.  The GPU modules load here, never at wandb's import; none without a GPU."""
    from .gpu import open_gpu_sources  # never raises; [] without a GPU
    from .host import open_host_source

    return Sampler([open_host_source(), *open_gpu_sources(config, topology)], interval)


def _close(source: Any) -> None:
    try:
        source.close()
    except Exception:
        pass


class Sampler:
    """The sampler thread and its sources; ``snapshot`` is all the training thread reads."""

    name = "sampler"

    def __init__(self, sources: List[Any], interval: float,
                 first_sample_wait: float = _FIRST_SAMPLE_WAIT) -> None:
        self.sources = [s for s in sources if s is not None]
        self.interval = interval
        self.first_sample_wait = first_sample_wait
        self.snapshot: Dict[str, Any] = {}
        self.samples = 0
        self._stop = threading.Event()
        self._first = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        if self._thread is not None or not self.sources:
            return
        self._thread = guard.start_thread("sampler", self._run, restart=False)  # its sources
        # are closed when it ends: a failure is said once, not restarted
        self._first.wait(self.first_sample_wait)

    def _run(self) -> None:
        try:
            self.prime()
            self.sample_once()
            self._first.set()
            while not self._stop.wait(self.interval):
                self.sample_once()
        finally:
            self._first.set()
            for source in self.sources:  # closed by the thread that used them, after its last use
                _close(source)

    def prime(self) -> None:
        """Let each source open its library (``start``'s thread does this; a caller that drives
        ``sample_once`` itself calls it once first)."""
        for source in list(self.sources):
            prime = getattr(source, "prime", None)
            if prime is None:
                continue
            try:
                keep = prime()
            except Exception as exc:
                self._drop(source, exc)
                continue
            if keep is False:
                self.sources.remove(source)
                log.debug("sampler_source_idle", source=source.name)

    def _drop(self, source: Any, exc: Exception) -> None:
        self.sources.remove(source)
        detail = " ".join(str(exc).split())  # one line: amdsmi's messages span two
        log.warn(f"{source.name} metrics switched off after an error: "
                 f"{type(exc).__name__}: {detail}")
        _close(source)

    def sample_once(self) -> None:
        """One round over every source; in the sampler thread, or instead of ``start``."""
        merged: Dict[str, Any] = {}
        for source in list(self.sources):
            try:
                merged.update(source.sample())
            except Exception as exc:
                self._drop(source, exc)
        self.snapshot = merged
        self.samples += 1

    def flush(self, deadline: float) -> bool:
        """Nothing to deliver: each row took the snapshot current at its call."""
        return True

    def close(self, deadline: float) -> None:
        """Stop sampling; the thread closes its sources (now, or after a call it is stuck in).
        Waits for it ``STOP_WAIT`` at most, and never past ``deadline`` (``time.monotonic()``,
        the process end's): a source stuck in a driver call must not extend the exit (the
        thread is a daemon, the interpreter does not wait for it either)."""
        self._stop.set()
        thread = self._thread
        if thread is None:
            for source in self.sources:
                _close(source)
        elif thread is not threading.current_thread():
            wait = min(STOP_WAIT, deadline - time.monotonic())
            if wait > 0:
                thread.join(timeout=wait)

    def abandon_after_fork(self) -> None:
        """In a forked child: the thread is the parent's (it does not exist here) and so are the
        sources' library handles; forget both without closing them."""
        self._thread = None
        self.sources = []
