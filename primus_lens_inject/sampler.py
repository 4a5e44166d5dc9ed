"""One background thread per process that samples system figures into a cached snapshot.

The training thread never calls a metrics library: it merges ``Sampler.snapshot``, a dict that
the sampler thread replaces (never mutates) after each round.  Each source (host, GPU backend)
is independent: one that raises is switched off with a single warning and the others go on.
"""

from __future__ import annotations

import threading
from typing import Any, Dict, List, Optional

from . import log


class Sampler:
    def __init__(self, sources: List[Any], interval: float) -> None:
        self.sources = [s for s in sources if s is not None]
        self.interval = interval
        self.snapshot: Dict[str, Any] = {}
        self.samples = 0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        if self._thread is not None or not self.sources:
            return
        self.sample_once()  # rows logged right after init already carry figures
        self._thread = threading.Thread(target=self._run, name="primus-lens-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for source in self.sources:
            prime = getattr(source, "prime", None)  # e.g. psutil's CPU % is kept per thread
            if prime is not None:
                try:
                    prime()
                except Exception:
                    pass
        while not self._stop.wait(self.interval):
            self.sample_once()

    def sample_once(self) -> None:
        merged: Dict[str, Any] = {}
        for source in list(self.sources):
            try:
                merged.update(source.sample())
            except Exception as exc:
                self.sources.remove(source)
                log.warn(f"{source.name} metrics switched off after an error: "
                         f"{type(exc).__name__}: {exc}")
                try:
                    source.close()
                except Exception:
                    pass
        self.snapshot = merged
        self.samples += 1

    def stop(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2.0)
        for source in self.sources:
            try:
                source.close()
            except Exception:
                pass
