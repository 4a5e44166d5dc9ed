"""Detection reports waiting for the server: one JSON file each, in a directory beside the record.

A report is kept on disk from the moment it is built until the server acknowledged it, so a
process that ends (or a server that is away) loses none: whichever process sends the record later
sends the reports too.  Files are named by creation time, so they are sent in order.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Dict, List, Optional, Tuple

from ..recordline import DETECTIONS_SUFFIX, fallback, sibling
from . import spool


class DetectionQueue:
    """The reports of one record, shared by every process that writes it."""

    def __init__(self, record_path: str) -> None:
        self.record_path = record_path
        self.directory = sibling(record_path, DETECTIONS_SUFFIX)  # or its fallback
        self._directory_checked = False

    def store(self, body: Dict[str, Any]) -> None:
        """Add one report; raises ``OSError`` (a full disk) for the caller to retry."""
        if not self._directory_checked:  # a file in its place, a read-only volume
            self.directory = spool.usable_dir(
                self.directory, fallback(self.record_path, DETECTIONS_SUFFIX),
                "detection reports")
            self._directory_checked = True
        os.makedirs(self.directory, exist_ok=True)
        run_id = str(body.get("evidence", {}).get("wandb", {}).get("id") or "run")
        name = f"{time.time():.6f}-{os.getpid()}-{''.join(c for c in run_id if c.isalnum())}.json"
        spool.write_atomic(os.path.join(self.directory, name), json.dumps(body))

    def pending(self) -> List[str]:
        """The waiting reports' paths, oldest first (this and every other process's)."""
        try:
            names = sorted(n for n in os.listdir(self.directory) if n.endswith(".json"))
        except OSError:
            return []
        return [os.path.join(self.directory, n) for n in names]

    @staticmethod
    def load(path: str) -> Optional[Tuple[Any, float]]:
        """(body, seconds since it was stored), or None for a file that cannot be read (removed:
        it would never become readable)."""
        try:
            with open(path, "rb") as f:
                body = json.loads(f.read())
            return body, time.time() - os.path.getmtime(path)
        except (OSError, ValueError):
            DetectionQueue.remove(path)
            return None

    @staticmethod
    def remove(path: str) -> None:
        """Done with a report: acknowledged, or dropped."""
        try:
            os.remove(path)
        except OSError:
            pass
