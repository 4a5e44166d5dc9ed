"""Whether the pod agent may keep a record's side files, and why not.

The agent runs as its own user (the chart's, not root), the trainers as theirs (often root in GPU
training images).  To send a record it must create and replace files beside it: the owner lock
(``wandb_metrics.lock``, opened read-only for ``flock`` once it exists), the cursor of each sink
(``wandb_metrics.cursor``, ``wandb_metrics.otlp.cursor``: written whole and renamed into place),
the status file, and ``wandb_metrics.detections/sent/``; and remove the detection reports it sent
from ``wandb_metrics.detections/``.  Renaming and removing need only the directory's write
permission, so a trainer in agent mode (``PRIMUS_LENS_AGENT=true``) makes those directories
writable by every user (``paths.make_dirs``), and the agent can send its record.

A record whose directories another user made without agent mode (a trainer that sends its own
record, or an injector older than the agent) is not the agent's: it says so once, names the
directory and its owner, and leaves the record to its trainer.  Without this check its sinks
would find the lock and cursor unusable, fall back to places of their own, and send the record
beside the trainer.
"""

from __future__ import annotations

import os

from ..recordline import (
    DETECTIONS_SENT,
    DETECTIONS_SUFFIX,
    FIRST_SINK,
    LOCK_SUFFIX,
    STATUS_SUFFIX,
    cursor_suffix,
    sibling,
)


def refusal(record: str) -> str:
    """Why the agent cannot keep ``record``'s side files ("" when it can): which file, where,
    whose directory."""
    rank_dir = os.path.dirname(record)
    detections = sibling(record, DETECTIONS_SUFFIX)
    beside = ", ".join(os.path.basename(sibling(record, suffix))
                       for suffix in (LOCK_SUFFIX, cursor_suffix(FIRST_SINK), STATUS_SUFFIX))
    places = ((rank_dir, beside),
              (detections, "the detection reports it sends (to remove them)"),
              (os.path.join(detections, DETECTIONS_SENT), "the verdicts it keeps"))
    for directory, files in places:
        if directory != rank_dir and not os.path.isdir(directory):
            continue  # made later by a trainer in agent mode, inside a directory the agent may use
        if not os.access(directory, os.W_OK | os.X_OK):
            return f"cannot create or replace {files} in {directory} ({_whose(directory)})"
    lock = sibling(record, LOCK_SUFFIX)
    if os.path.exists(lock) and not os.access(lock, os.R_OK):
        return f"cannot open the owner lock {lock} to lock it ({_whose(lock)})"
    return ""


def _whose(path: str) -> str:
    """Owner and mode of ``path`` against the agent's own user, for the warning."""
    try:
        info = os.stat(path)
    except OSError as exc:
        return exc.strerror or str(exc)
    return (f"permission denied: it belongs to uid {info.st_uid}, mode {info.st_mode & 0o7777:o}, "
            f"and this agent runs as uid {os.geteuid()}")
