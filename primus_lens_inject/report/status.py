"""The reporter's counters, and the status file beside the record that ``primus-lens doctor``
reads (credentials scrubbed: it is kept where people and tools read it)."""

from __future__ import annotations

import collections
import json
from typing import Any, Dict

from .. import credentials, log
from ..recordline import STATUS_SUFFIX, sibling
from . import spool


class Stats:
    """What doctor and the closing flush report; written beside the record as JSON."""

    def __init__(self) -> None:
        self.requests = 0
        self.rows_sent = 0
        self.detections_sent = 0
        self.retries = 0
        self.dropped: Dict[str, int] = collections.Counter()
        self.last_error = ""
        self.state = "starting"
        self.record: Dict[str, Any] = {}  # rows the record could not take (capture's count)

    def as_dict(self) -> Dict[str, Any]:
        status = {"requests": self.requests, "rows_sent": self.rows_sent,
                  "detections_sent": self.detections_sent, "retries": self.retries,
                  "dropped": dict(self.dropped), "last_error": self.last_error,
                  "state": self.state}
        if self.record:
            status["record"] = self.record
        return status


def write_status(record_path: str, status: Dict[str, Any]) -> None:
    """Replace the status file of ``record_path`` with ``status``; a failure is said once."""
    path = sibling(record_path, STATUS_SUFFIX)
    try:
        spool.write_atomic(path, json.dumps(credentials.scrub_tree(status), sort_keys=True))
    except OSError as exc:
        log.warn(f"cannot write the reporting status {path} ({exc.strerror or exc}); "
                 "primus-lens doctor will not show it, reporting continues",
                 key="status-unwritable")
