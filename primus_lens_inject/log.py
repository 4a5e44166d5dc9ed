"""The injector's only voice: single lines on stderr, each warning at most once per process.

Training logs are read by people hunting for their own errors, so the injector stays quiet: a
warning is printed once however often its cause repeats, and debug lines (one JSON object each,
for machines) appear only with ``PRIMUS_LENS_WANDB_DEBUG=true``: the log reads that one setting
itself, once, with the configuration's own parser (``config.value_of``), so it never waits for
the whole configuration and the configuration never needs the log.

Logs are collected and kept by the cluster, so no line may carry a secret: every line passes
``credentials.scrub`` (our own API headers and base URL password by exact match, then the
credential rules), and a line that cannot be checked is not printed at all.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import zlib
from typing import Any, Optional, Set

from . import config, credentials

PREFIX = "primus-lens: "

_lock = threading.Lock()
_said: Set[str] = set()
_debugging: Optional[bool] = None  # PRIMUS_LENS_WANDB_DEBUG, read at the first debug line


def _write(line: str) -> None:
    try:
        line = credentials.scrub(line)
    except Exception:
        line = "(a message was left out: it could not be checked for secrets)"
    try:
        sys.stderr.write(PREFIX + line + "\n")
        sys.stderr.flush()
    except Exception:
        pass  # a closed or broken stderr must never become the training job's problem


def warn(message: str, key: str = "") -> None:
    """Print ``message`` unless a warning with the same key (default: the text) was printed."""
    key = key or message
    with _lock:
        if key in _said:
            return
        _said.add(key)
    _write(message)


# Children inherit the environment, so a bad value would be reported again by every
# DataLoader worker and by old wandb's own Python service process; the parent's warnings are
# remembered here (short digests, inherited by children) and not repeated below it.
_INHERITED_WARNINGS = "_PRIMUS_LENS_WARNED"


def warn_inherited(message: str) -> None:
    """``warn``, but once per process tree: for problems every child would see the same way."""
    digest = format(zlib.crc32(message.encode("utf-8", "replace")), "08x")
    said = os.environ.get(_INHERITED_WARNINGS, "")
    if digest in said.split(","):
        return
    os.environ[_INHERITED_WARNINGS] = f"{said},{digest}" if said else digest
    warn(message)


def debug(event: str, **fields: Any) -> None:
    """One JSON line describing a decision, only when debugging is on."""
    global _debugging
    if _debugging is None:
        _debugging = bool(config.value_of("debug"))
    if not _debugging:
        return
    record = {"event": event, "pid": os.getpid()}
    record.update(fields)
    _write(json.dumps(record, default=repr, sort_keys=True))


def reset_after_fork() -> None:
    """A forked child starts with a fresh lock (the parent's may have been held at fork time)."""
    global _lock
    _lock = threading.Lock()
