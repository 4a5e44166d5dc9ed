"""A progress line on a terminal while the report reads a big record set; silent elsewhere.

Reading hundreds of ranks' records takes long enough that a silent command looks hung.  The line
is redrawn in place (carriage return) at most a few times a second, and only when stderr is a
terminal: a log file or a pipe gets no control characters.
"""

from __future__ import annotations

import sys
import time
from typing import Optional, TextIO

_EVERY = 0.25  # seconds between redraws


class Progress:
    """Bytes read of ``total`` across ``directories`` rank directories."""

    def __init__(self, total: int, directories: int, stream: Optional[TextIO] = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.shown = bool(getattr(self.stream, "isatty", lambda: False)())
        self.total = max(total, 1)
        self.directories = directories
        self.done_bytes = 0
        self.done_directories = 0
        self._drawn = 0.0

    def tick(self, count: int) -> None:
        """``count`` more bytes read."""
        self.done_bytes += count
        self._draw()

    def directory_done(self) -> None:
        self.done_directories += 1
        self._draw()

    def _draw(self, force: bool = False) -> None:
        if not self.shown:
            return
        now = time.monotonic()
        if not force and now - self._drawn < _EVERY:
            return
        self._drawn = now
        percent = min(100, 100 * self.done_bytes // self.total)
        self.stream.write(f"\rprimus-lens report: reading {percent:3d}% "
                          f"({self.done_directories}/{self.directories} rank directories, "
                          f"{self.done_bytes / 1e6:.1f} MB)")
        self.stream.flush()

    def finish(self) -> None:
        """The last state, then a new line, so what follows starts at the margin."""
        if self.shown:
            self._draw(force=True)
            self.stream.write("\n")
            self.stream.flush()
