"""The local record: one JSONL file per node and rank, written by a background thread.

The training thread only appends one tuple per ``log`` call to a deque (the frozen values, the
step and commit arguments, the time, the system sample of that moment).  The writer thread wakes
every ``FLUSH_SECONDS``, merges each call's sample into its values, replays the calls through each
run's ``RunRows`` (wandb's step rules), encodes the rows, and appends them with one ``write`` to a file opened
with ``O_APPEND`` under an exclusive ``flock``: lines of several processes sharing a file never
interleave, and a row reaches the kernel (and survives SIGKILL) well within a second.  Keeping
that work off the training thread matters more than its size suggests: right after a wandb call
every cache is cold, and each line of our code touched there costs several times its warm price.
``flush`` drains synchronously from any thread, for finish, exit and SIGTERM.
"""

from __future__ import annotations

import collections
import fcntl
import os
import tempfile
import threading
from typing import Any, Deque, Dict, Optional, Tuple

from . import log
from .rows import RunRows
from .values import STRICT_JSON, freeze

FILE_NAME = "wandb_metrics.jsonl"
ENABLED_KEY = "_primus_lens_enabled"  # in every row of the record, never sent to wandb
FLUSH_SECONDS = 0.5  # a row reaches the kernel within this (the promise is: within 1 s)
MAX_QUEUED = 2000  # beyond this the logging thread writes itself: memory stays bounded


def default_root(environ: Optional[Dict[str, str]] = None) -> str:
    """Beside wandb's own files: ``$WANDB_DIR/wandb/primus-lens`` or ``./wandb/primus-lens``."""
    env = os.environ if environ is None else environ
    base = env.get("WANDB_DIR") or os.getcwd()
    return os.path.join(os.path.abspath(base), "wandb", "primus-lens")


def fallback_root() -> str:
    return os.path.join(tempfile.gettempdir(), f"primus-lens-{os.getuid()}")


def record_path(root: str, node_rank: int, local_rank: int) -> str:
    return os.path.join(root, f"node_{int(node_rank)}", f"rank_{int(local_rank)}", FILE_NAME)


# A queued call: (run's rows, frozen data or None for "the run finished", step, commit, time,
# the system sample current at the call, to merge in).
Call = Tuple[RunRows, Optional[Dict[str, Any]], Optional[int], Any, float, Dict[str, Any]]


def encode(run_id: str, step: int, timestamp: float, data: Dict[str, Any]) -> bytes:
    """One line: ``{"timestamp", "step", "run_id", "data"}``, ``data`` marked as ours.  Rows of
    plain values arrive unfrozen (a NaN still a float): those get their strict-JSON spelling."""
    data[ENABLED_KEY] = True
    line = {"timestamp": timestamp, "step": step, "run_id": run_id, "data": data}
    try:
        text = STRICT_JSON.encode(line)
    except ValueError:  # a non-finite float
        line["data"] = freeze(data)
        text = STRICT_JSON.encode(line)
    return text.encode("ascii") + b"\n"


def close_quietly(fd: int) -> None:
    """Close a descriptor we own; closing can only fail for one that is gone already."""
    try:
        os.close(fd)
    except OSError:
        pass


def open_append(path: str) -> int:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)


class RecordWriter:
    """Appends rows to ``path``; if it cannot be opened, one warning and ``fallback`` is tried."""

    def __init__(self, path: str, fallback: Optional[str] = None) -> None:
        self.path = path
        self._fd = -1
        self._queue: Deque[Call] = collections.deque()
        self._lock = threading.Lock()  # one drainer at a time
        self._wake = threading.Event()
        self._stop = False
        self._thread: Optional[threading.Thread] = None
        self._open(fallback)

    @property
    def is_open(self) -> bool:
        return self._fd >= 0

    def _open(self, fallback: Optional[str]) -> None:
        for candidate in (self.path, fallback):
            if not candidate:
                continue
            try:
                self._fd = open_append(candidate)
            except OSError as exc:
                log.warn(f"cannot write the local record at {candidate} ({exc.strerror or exc})"
                         + ("; trying " + fallback if fallback and candidate != fallback else ""))
                continue
            self.path = candidate
            return
        log.warn("local record disabled: no writable location; training continues")

    def append(self, call: Call) -> None:
        """Queue one ``log`` call (or, with data None, the end of a run); training thread."""
        self._queue.append(call)
        if self._thread is None:
            self._start()
        elif len(self._queue) > MAX_QUEUED:  # logging faster than the writer encodes
            self.flush()

    def _start(self) -> None:
        with self._lock:
            if self._thread is None and self.is_open:
                self._thread = threading.Thread(target=self._run, name="primus-lens-record",
                                                daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            self._wake.wait(FLUSH_SECONDS)
            self._wake.clear()
            self.flush()

    def flush(self) -> None:
        """Write everything queued so far; returns when it is in the file."""
        if not self._queue:
            return
        with self._lock:
            chunks = []
            while self._queue:
                rows, data, step, commit, timestamp, sample = self._queue.popleft()
                if data is None:
                    done = rows.finish()
                else:  # the user's keys win over the system figures
                    done = rows.log({**sample, **data} if sample else data, step, commit, timestamp)
                for row_step, row_time, row in done:
                    chunks.append(encode(rows.run_id, row_step, row_time, row))
            if not chunks or self._fd < 0:
                return
            data = b"".join(chunks)
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX)
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(self._fd, view):]
                finally:
                    fcntl.flock(self._fd, fcntl.LOCK_UN)
            except OSError as exc:
                log.warn(f"writing the local record {self.path} failed ({exc}); rows are lost "
                         "from the record only")

    def close(self) -> None:
        self._stop = True
        self._wake.set()
        self.flush()
        if self._fd >= 0:
            try:
                os.fsync(self._fd)
            except OSError:
                pass

    def abandon_after_fork(self) -> None:
        """In a forked child: the queued rows are the parent's to write; drop them and the fd."""
        self._queue = collections.deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread = None
        if self._fd >= 0:
            close_quietly(self._fd)
            self._fd = -1
