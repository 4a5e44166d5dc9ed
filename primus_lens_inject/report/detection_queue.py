"""Detection reports waiting for the server: one JSON file each, in a directory beside the record.

A report is kept on disk from the moment it is built until the server acknowledged it, so a
process that ends (or a server that is away) loses none: whichever process sends the record later
sends the reports too.  Files are named by creation time, so they are sent in order.

A file's name also carries its job's key (``job_key``: a digest of what makes two runs one job's,
the frameworks, the configuration and the wandb group), so the pod agent sends one report of
identical ones without opening them all; a name without one (an older injector) is its own job.

An acknowledged report leaves the queue, but its verdict is what a person asks about afterwards
(``primus-lens report`` shows it): ``keep_sent`` keeps the last acknowledged one of each job in
``sent/`` inside the directory, one small file per job key (the frameworks, the indicators they
rest on, the run), replaced whole.  The queue never lists that subdirectory.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any, Dict, List, Optional, Tuple

from ..paths import make_side_dir
from ..recordline import DETECTIONS_SENT, DETECTIONS_SUFFIX, fallback, sibling
from . import spool

_JOB_MARK = "~"  # between a file name's run id and its job key


def job_key(body: Dict[str, Any], group: str) -> str:
    """What makes two runs' reports the same job's: their frameworks (``hints``, and the
    frameworks' evidence), their configuration and project, and their wandb group; not who
    sent them (pod, rank, run id and name differ between a job's runs)."""
    evidence = body.get("evidence") or {}
    wandb = evidence.get("wandb") or {}
    same = {"hints": body.get("hints"), "wrappers": evidence.get("wrapper_frameworks"),
            "bases": evidence.get("base_frameworks"), "config": wandb.get("config"),
            "project": wandb.get("project"), "group": group}
    text = json.dumps(same, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha1(text.encode("utf-8", "replace")).hexdigest()[:16]


class DetectionQueue:
    """The reports of one record, shared by every process that writes it."""

    def __init__(self, record_path: str) -> None:
        self.record_path = record_path
        self.directory = sibling(record_path, DETECTIONS_SUFFIX)  # or its fallback
        self._directory_checked = False

    def store(self, body: Dict[str, Any], job: str = "") -> None:
        """Add one report of the job ``job`` (``job_key``); raises ``OSError`` (a full disk) for
        the caller to retry."""
        if not self._directory_checked:  # a file in its place, a read-only volume
            self.directory = spool.usable_dir(
                self.directory, fallback(self.record_path, DETECTIONS_SUFFIX),
                "detection reports")
            self._directory_checked = True
        make_side_dir(self.directory)  # the pod agent removes what it sent from there
        run_id = str(body.get("evidence", {}).get("wandb", {}).get("id") or "run")
        name = f"{time.time():.6f}-{os.getpid()}-{''.join(c for c in run_id if c.isalnum())}"
        name += f"{_JOB_MARK}{job}.json" if job.isalnum() else ".json"
        spool.write_atomic(os.path.join(self.directory, name), json.dumps(body))

    def pending(self) -> List[str]:
        """The waiting reports' paths, oldest first (this and every other process's)."""
        try:
            names = sorted(n for n in os.listdir(self.directory) if n.endswith(".json"))
        except OSError:
            return []
        return [os.path.join(self.directory, n) for n in names]

    @staticmethod
    def job_of(path: str) -> str:
        """The job key in a report's file name ("" when it has none: its own job)."""
        stem = os.path.basename(path)[:-len(".json")]
        return stem.rpartition(_JOB_MARK)[2] if _JOB_MARK in stem else ""

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
    def keep_sent(path: str, body: Any, acknowledged: float) -> None:
        """Keep the verdict of the acknowledged report at ``path``: ``sent/<job key>.json`` (the
        last of its job replaces the one before; a report without a key is kept as
        ``unkeyed.json``).  Best effort: a full disk loses only what the page shows."""
        def mapping(value: Any) -> Dict[str, Any]:
            return value if isinstance(value, dict) else {}

        report = mapping(body)
        wandb = mapping(mapping(report.get("evidence")).get("wandb"))
        kept = {"hints": mapping(report.get("hints")),
                "evidence": {"wandb": {key: wandb.get(key) for key in ("id", "name", "project")
                                       if key in wandb}},
                "acknowledged": acknowledged, "report": os.path.basename(path)}
        directory = os.path.join(os.path.dirname(path), DETECTIONS_SENT)
        name = f"{DetectionQueue.job_of(path) or 'unkeyed'}.json"
        try:
            make_side_dir(directory)
            spool.write_atomic(os.path.join(directory, name), json.dumps(kept))
        except OSError:
            pass

    @staticmethod
    def remove(path: str) -> None:
        """Done with a report: acknowledged, or dropped."""
        try:
            os.remove(path)
        except OSError:
            pass
