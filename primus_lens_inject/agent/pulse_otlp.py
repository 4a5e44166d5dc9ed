"""Every rank's pulse over OTLP, from the pod agent (``PRIMUS_LENS_OTLP=true``; docs/otlp.md).

The sending itself is the OTLP sink's (``report.otlp.pulse_sink``: one sink per pulse file, its
own cursor beside it, the sink's guarantees and answers).  This part finds the pulse files under
the record root (every ``_DISCOVER`` seconds, new ranks included), starts a sink for each once
its first line says which rank it is, and follows rotation: when ``pulse.jsonl`` is a new file
(the writer moved the old one to ``pulse.jsonl.1``), that rank's sink is stopped and a new one
reads the new file from its start (the cursor is tied to the file's first bytes).  Lines the
writer appended to the old file after the sink's last read are not sent over OTLP (the sink
reads within ``PRIMUS_LENS_WANDB_FLUSH_INTERVAL``; a file rotates at 5 MB); they stay on disk
for ``/metrics`` and ``primus-lens report``.  The pulse sinks share one pace: one request at a
time, whatever the number of ranks.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Dict, Optional, Tuple

from .. import guard, paths, pulseline
from ..config import Config
from ..report import Paces
from ..report.otlp import PulseSink, pulse_sink

_DISCOVER = 2.0  # seconds between two looks for new or rotated pulse files
_RETIRE = 5.0  # seconds a rotated file's sink gets to stop
_FIRST_LINE = 4 << 20  # bytes read for a file's first line (a stall line holds stacks)


class PulseExport:
    """A ``lifecycle.Part``: the pulse files of ``root`` sent over OTLP while it runs."""

    name = "pulse-otlp"

    def __init__(self, config: Config, root: str) -> None:
        self.config = config
        self.root = root
        self.paces = Paces()
        self._sinks: Dict[str, Tuple[int, PulseSink]] = {}  # rank dir -> (inode, sink)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._started = False

    def start(self) -> None:
        """Watch the root (only with ``PRIMUS_LENS_OTLP=true``: otherwise there is nothing to do)."""
        if self.config.otlp and not self._started:
            self._started = True
            guard.start_thread(self.name, self._watch)

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.discover()
            self._stop.wait(_DISCOVER)

    def discover(self) -> None:
        """One look: a sink for every pulse file that has none, a new one for a rotated file
        (nothing without ``PRIMUS_LENS_OTLP=true``)."""
        if not self.config.otlp:
            return
        for rank_dir in paths.rank_dirs(self.root):
            path = os.path.join(rank_dir, pulseline.FILE_NAME)
            try:
                inode = os.stat(path).st_ino
            except OSError:
                continue
            known = self._sinks.get(rank_dir)
            if known is not None and known[0] == inode:
                continue
            first = _first_line(path)
            if first is None:
                continue  # empty, or its first line not written whole yet: next look
            with self._lock:
                if self._stop.is_set():
                    return
                if known is not None:
                    known[1].stop(_RETIRE)
                sink = pulse_sink(self.config, path, first, self.paces)
                sink.start()
                self._sinks[rank_dir] = (inode, sink)

    def flush(self, deadline: float) -> bool:
        """Every pulse line now on disk sent (True), or ``deadline`` came first."""
        with self._lock:
            sinks = [sink for _, sink in self._sinks.values()]
        return all([sink.flush(deadline) for sink in sinks])

    def close(self, deadline: float) -> None:
        """Send what is on disk until ``deadline``, then stop watching and sending; each sink
        keeps its cursor."""
        self._stop.set()
        self.flush(deadline)
        with self._lock:
            for _, sink in self._sinks.values():
                sink.stop(max(0.0, deadline - time.monotonic()))

    def abandon_after_fork(self) -> None:
        """In a forked child: the sinks and their threads are the parent's."""
        for _, sink in self._sinks.values():
            sink.abandon_after_fork()
        self._sinks = {}
        self._lock = threading.Lock()


def _first_line(path: str) -> Optional[Dict[str, object]]:
    """The first whole line of a pulse file, decoded (None until there is one)."""
    try:
        with open(path, "rb") as f:
            head = f.read(_FIRST_LINE)
    except OSError:
        return None
    end = head.find(b"\n")
    return pulseline.decode(head[:end]) if end >= 0 else None

