"""Whether a process still writes a record: a shared ``flock`` on ``wandb_metrics.writing``.

The pod agent must know when the trainers of its pod are gone (it drains until then), without
asking them and without trusting pids (a pid in another container's namespace means nothing,
and a SIGKILLed process writes no goodbye).  Every record writer holds a shared lock
(``LOCK_SH``) on the sibling file while its process lives; the kernel drops it when the last
descriptor closes, at exit or SIGKILL alike.  Whoever can take the lock exclusively
(``LOCK_EX | LOCK_NB``) knows that no writer is alive.  Taking it exclusively only tests: it is
released at once, and a writer that opens meanwhile retries for a moment (``hold``).
"""

from __future__ import annotations

import fcntl
import os
import time

from .paths import close_quietly, is_shared, share_file
from .recordline import WRITING_SUFFIX, sibling

_HOLD_TRIES = 50  # a writer's tries while a tester holds the lock for an instant
_HOLD_PAUSE = 0.01


def hold(record_path: str) -> int:
    """Take the shared lock for this process's life: the descriptor (``-1`` when the file cannot
    be used: an agent then sees no live writer of this record, and drains without waiting)."""
    try:
        # read-only: ``flock`` needs no write access, so writers of other users (and the agent)
        # share a file that one of them created 0644
        fd = os.open(sibling(record_path, WRITING_SUFFIX),
                     os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError:
        return -1
    if is_shared(os.path.dirname(record_path)):
        share_file(fd)  # a record of agent mode: the agent opens it to test the lock
    for _ in range(_HOLD_TRIES):
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            time.sleep(_HOLD_PAUSE)  # an agent tests the lock this instant
        except OSError:
            break
    close_quietly(fd)
    return -1


def writing(record_path: str) -> bool:
    """Whether a live process holds the record's writing lock (False for a record whose writers
    are older than this lock: nothing to wait for)."""
    try:
        fd = os.open(sibling(record_path, WRITING_SUFFIX), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        close_quietly(fd)  # closing releases an exclusive lock we got
    return False
