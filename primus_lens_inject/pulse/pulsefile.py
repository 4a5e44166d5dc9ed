"""Appending pulse lines to ``pulse.jsonl``, bounded by rotation, shared by every process of a rank.

Several processes of one node and local rank (a restarted trainer, a second job step) append to
the same file: each line is one ``os.write`` on an ``O_APPEND`` descriptor, so lines never
interleave.  At ``pulseline.MAX_BYTES`` the writer that notices moves the file to
``pulse.jsonl.1`` (replacing the older one): two files bound a rank's pulse on disk.  The move is
done under an exclusive ``flock`` of the file being moved, and every writer checks before each
line that its descriptor still is the file at the path (same inode), reopening it when another
process moved it: a moved file is never moved twice, and nobody keeps writing into the old one.
"""

from __future__ import annotations

import fcntl
import os
from typing import Optional

from .. import pulseline
from ..paths import close_quietly, make_dirs, share_file

_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)


class PulseFile:
    """One process's writer of a rank's ``pulse.jsonl`` (``path``)."""

    def __init__(self, path: str, max_bytes: int = pulseline.MAX_BYTES,
                 shared: bool = False) -> None:
        """``shared``: the directories it creates are the pod agent's too (``paths.make_dirs``:
        the pulse may create a rank's directory before its record does)."""
        self.path = path
        self.shared = shared
        self.rotated = os.path.join(os.path.dirname(path), pulseline.ROTATED)
        self.max_bytes = max_bytes
        self._fd: Optional[int] = None
        self._ino = -1

    def open(self) -> None:
        """Create the directory and the file; ``OSError`` when it cannot be written."""
        make_dirs(os.path.dirname(self.path), shared=self.shared)
        self._reopen()

    def _reopen(self) -> None:
        if self._fd is not None:
            close_quietly(self._fd)
            self._fd = None
        fd = os.open(self.path, _FLAGS, 0o644)
        if self.shared:
            share_file(fd)  # whatever the umask: the agent reads it
        self._fd, self._ino = fd, os.fstat(fd).st_ino

    def write(self, line: bytes) -> None:
        """Append one line (rotating first when it would cross ``max_bytes``); ``OSError``."""
        try:
            current = os.stat(self.path)
        except FileNotFoundError:  # moved by another writer, and nothing written since
            self._reopen()
            current = os.fstat(self._fd)  # type: ignore[arg-type]
        if self._fd is None or current.st_ino != self._ino:
            self._reopen()
        elif current.st_size and current.st_size + len(line) > self.max_bytes:
            self._rotate()
        os.write(self._fd, line)  # type: ignore[arg-type]

    def _rotate(self) -> None:
        fd = self._fd
        assert fd is not None
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            current = os.stat(self.path)
            if current.st_ino == self._ino:  # not moved by another writer meanwhile
                os.replace(self.path, self.rotated)  # the others see another inode, and reopen
        except FileNotFoundError:
            pass
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
        self._reopen()

    def close(self) -> None:
        if self._fd is not None:
            close_quietly(self._fd)
            self._fd = None

    def abandon_after_fork(self) -> None:
        """In a forked child: the descriptor is the parent's; never write through it (closed
        here: the child's copy only)."""
        self.close()
