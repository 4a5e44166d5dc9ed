"""The reporter's view of the local record: what is acknowledged, what is next, who sends it.

The record file is the only queue.  Beside it, ``wandb_metrics.cursor`` holds the byte offset up
to which the server has acknowledged every line (written atomically after each acknowledged
request), so a restarted process on the same volume resumes exactly there; memory never holds
more than one batch, however long the server is away.  Several processes may append to one
record (a forked or spawned worker that inits wandb with the parent's rank); ``OwnerLock`` (an
``flock`` held for the process's life) makes exactly one of them the sender for that file.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from typing import List, Optional, Tuple

from .record import close_quietly

CURSOR_SUFFIX = ".cursor"
LOCK_SUFFIX = ".lock"
STATUS_SUFFIX = ".status.json"
HEAD_BYTES = 256


def sibling(record_path: str, suffix: str) -> str:
    base = record_path[:-len(".jsonl")] if record_path.endswith(".jsonl") else record_path
    return base + suffix


def write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _fingerprint(path: str, length: int) -> str:
    """A digest of the file's first ``length`` bytes.  Bytes before an acknowledged offset never
    change in an append-only file; a replaced file (even one that got the same inode number
    back) has other ones."""
    try:
        with open(path, "rb") as f:
            head = f.read(length)
    except OSError:
        return ""
    return hashlib.sha1(head).hexdigest() if len(head) == length else ""


class Cursor:
    """The acknowledged byte offset of one record file, tied to that file's first bytes."""

    def __init__(self, record_path: str) -> None:
        self.record_path = record_path
        self.path = sibling(record_path, CURSOR_SUFFIX)
        self.offset = 0
        self._head: Optional[Tuple[int, str]] = None
        try:
            with open(self.path) as f:
                saved = json.load(f)
            offset, length, head = int(saved["offset"]), int(saved["head_len"]), str(saved["head"])
        except (OSError, ValueError, KeyError, TypeError):
            return
        try:
            size = os.path.getsize(record_path)
        except OSError:
            size = -1
        if 0 < length <= offset <= size and _fingerprint(record_path, length) == head:
            self.offset = offset  # else: a replaced or truncated record starts over

    def advance(self, offset: int) -> None:
        if offset <= self.offset:
            return
        self.offset = offset
        if self._head is None or self._head[0] < min(HEAD_BYTES, offset):
            length = min(HEAD_BYTES, offset)
            self._head = (length, _fingerprint(self.record_path, length))
        write_atomic(self.path, json.dumps({"offset": offset, "head_len": self._head[0],
                                            "head": self._head[1]}))


def read_lines(record_path: str, offset: int, max_bytes: int) -> List[Tuple[int, bytes]]:
    """Complete lines from ``offset``, as (end offset, line) pairs; a partial last line waits."""
    try:
        with open(record_path, "rb") as f:
            f.seek(offset)
            chunk = f.read(max_bytes)
    except OSError:
        return []
    out: List[Tuple[int, bytes]] = []
    start = 0
    while True:
        end = chunk.find(b"\n", start)
        if end < 0:
            break
        out.append((offset + end + 1, chunk[start:end]))
        start = end + 1
    if not out and len(chunk) == max_bytes:  # one line longer than a read: skip it whole
        return read_lines(record_path, offset, max_bytes * 4) if max_bytes < (64 << 20) else []
    return out


class OwnerLock:
    """Held by the one process that sends a given record file; released when it exits."""

    def __init__(self, record_path: str) -> None:
        self.path = sibling(record_path, LOCK_SUFFIX)
        self._fd = -1

    @property
    def held(self) -> bool:
        return self._fd >= 0

    def try_acquire(self) -> bool:
        if self._fd >= 0:
            return True
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        """Close our descriptor.  In a forked child this leaves the parent's lock in place:
        an ``flock`` lives as long as any duplicate of the descriptor is open."""
        if self._fd >= 0:
            close_quietly(self._fd)
            self._fd = -1
