"""The reporter's view of the local record: what is acknowledged, what is next, who sends it.

The record file is the only queue.  Beside it, ``wandb_metrics.cursor`` holds the byte offset up
to which the server has acknowledged every line (written atomically after each acknowledged
request), so a restarted process on the same volume resumes exactly there; memory never holds
more than one batch, however long the server is away.  Several processes may append to one
record (a forked or spawned worker that inits wandb with the parent's rank); ``OwnerLock`` (an
``flock`` held for the process's life) makes exactly one of them the sender for that file.

The senders read the record in pieces (``read_lines``); a line is read whole up to
``MAX_LINE`` bytes.  A longer one (a row of hundreds of MiB of text, a corrupted file) is never
held in memory: it is skipped by scanning for its end, and the sender counts it and says so once,
so the rows after it are still sent.

Each of these files may turn out unusable (a directory in its place, a read-only or full volume):
the cursor, the lock and the detection reports then live under the per-user fallback directory,
keyed by the record's path, and each such change is said once.  ``Cursor`` and ``OwnerLock``
never raise into the sender's loop.
"""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import json
import operator
import os
import threading
from typing import Any, BinaryIO, List, Optional, Tuple

from .. import log
from ..paths import close_quietly, is_shared, make_side_dir, share_file
from ..recordline import FIRST_SINK, LOCK_SUFFIX, cursor_suffix, fallback, sibling

CURSOR_SUFFIX = cursor_suffix(FIRST_SINK)
_HEAD_BYTES = 256
MAX_LINE = 64 << 20  # the reader's ceiling: a longer record line is skipped, not read
SCAN_BYTES = 1 << 20  # the piece read at a time while looking for the end of such a line


def write_atomic(path: str, text: str) -> None:
    """Replace ``path`` with ``text`` whole; on failure no temporary file is left behind.  In a
    shared directory (``paths.make_dirs``: a record of agent mode) the file is readable by every
    user whatever the umask: the pod agent and the trainers are different users."""
    tmp = f"{path}.{os.getpid()}-{threading.get_ident()}.tmp"
    data = text.encode("utf-8")
    try:  # the os calls alone: the pod agent saves a cursor per request and a status per record
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
        try:
            written = 0
            while written < len(data):
                written += os.write(fd, data[written:])
            if is_shared(os.path.dirname(path)):
                share_file(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise


def usable_dir(primary: str, alternative: str, what: str) -> str:
    """``primary`` as a directory, else ``alternative`` (said once); ``primary`` if neither.
    Made as a record's side directory (``paths.make_side_dir``: shared in agent mode)."""
    for path in (primary, alternative):
        try:
            make_side_dir(path)
        except OSError as exc:
            error = exc.strerror or str(exc)
            continue
        if path != primary:
            log.warn(f"cannot keep {what} in {primary} ({error}); using {path}",
                     key=f"fallback-{primary}")
        return path
    return primary


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
    """The acknowledged byte offset of one record file, tied to that file's first bytes.

    Saved beside the record, or in the fallback place when that fails; on load the larger valid
    offset of the two wins (an offset only grows, and each is checked against the record's
    head).  A save that fails everywhere (a full disk) is retried at the next move and by
    ``save``: until one succeeds, a restart would resend what was acknowledged since.
    """

    def __init__(self, record_path: str, suffix: str = CURSOR_SUFFIX) -> None:
        """``suffix`` names the sink whose position this is (each sink has its own)."""
        self.record_path = record_path
        self.path = sibling(record_path, suffix)
        self.paths = (self.path, fallback(record_path, suffix))
        self.offset = 0
        self.dirty = False  # the offset moved but is not saved anywhere yet
        self._head: Optional[Tuple[int, str]] = None
        for path in self.paths:
            self.offset = max(self.offset, _load(path, record_path))

    def advance(self, offset: int) -> None:
        if offset <= self.offset:
            return
        self.offset = offset
        if self._head is None or self._head[0] < min(_HEAD_BYTES, offset):
            length = min(_HEAD_BYTES, offset)
            self._head = (length, _fingerprint(self.record_path, length))
        self.dirty = True
        self.save()

    def save(self) -> None:
        if not self.dirty or self._head is None:
            return
        text = json.dumps({"offset": self.offset, "head_len": self._head[0],
                           "head": self._head[1]})
        errors = []
        for path in self.paths:
            try:
                try:
                    write_atomic(path, text)
                except FileNotFoundError:  # its directory is not there (yet, or any more)
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    write_atomic(path, text)
            except OSError as exc:
                errors.append(f"{path}: {exc.strerror or exc}")
                continue
            if path != self.path:
                log.warn(f"cannot save the reporter's position at {errors[0]}; saving it at "
                         f"{path} instead", key="cursor-fallback")
            self.dirty = False
            return
        log.warn(f"cannot save the reporter's position ({'; '.join(errors)}); retrying, "
                 "a restart before it succeeds resends rows already delivered",
                 key="cursor-unsaved")


def _load(path: str, record_path: str) -> int:
    """The offset saved in ``path`` if it is valid for the record as it is now, else 0."""
    try:
        with open(path) as f:
            saved = json.load(f)
        offset, length, head = int(saved["offset"]), int(saved["head_len"]), str(saved["head"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return 0
    try:
        size = os.path.getsize(record_path)
    except OSError:
        size = -1
    if 0 < length <= offset <= size and _fingerprint(record_path, length) == head:
        return offset
    return 0  # a replaced or truncated record starts over


def read_lines(record_path: str, offset: int, max_bytes: int,
               max_line: int = MAX_LINE) -> List[Tuple[int, Optional[bytes]]]:
    """Complete lines from ``offset``, as (end offset, line) pairs; a partial last line waits.
    A line longer than one read is read again with larger reads, up to ``max_line`` bytes; a
    longer one comes back as (its end offset, None), for the caller to skip and count."""
    try:
        with open(record_path, "rb") as f:
            f.seek(offset)
            chunk = f.read(max_bytes)
            if len(chunk) == max_bytes and b"\n" not in chunk and max_bytes >= max_line:
                end = _end_of_line(f)  # over the ceiling: find where it ends, keep nothing
                return [] if end < 0 else [(end, None)]
    except OSError:
        return []
    last = chunk.rfind(b"\n")
    if last < 0:
        if len(chunk) == max_bytes:  # one line longer than a read: read more of it
            return read_lines(record_path, offset, min(max_bytes * 4, max_line), max_line)
        return []
    lines: List[Any] = chunk[:last].split(b"\n")
    # where each line ends (after its newline): the lengths so far, one newline per line; summed
    # by the standard library's iterators, not a loop per line (the pod agent reads every row)
    ends = map(operator.add, itertools.accumulate(map(len, lines)),
               range(offset + 1, offset + 1 + len(lines)))
    return list(zip(ends, lines))


def _end_of_line(f: BinaryIO) -> int:
    """The offset after the next newline from ``f``'s position, or -1 at the end of the file
    (the line is still being written)."""
    while True:
        piece = f.read(SCAN_BYTES)
        if not piece:
            return -1
        newline = piece.find(b"\n")
        if newline >= 0:
            return f.tell() - len(piece) + newline + 1


class OwnerLock:
    """Held by the one process that sends a given record file; released when it exits.

    The lock file sits beside the record; if it cannot be opened or locked there, the fallback
    place is used (said once).  If neither can be used, this process sends anyway and says so
    loudly: rows may then arrive twice, but none is held back.
    """

    def __init__(self, record_path: str) -> None:
        self.path = sibling(record_path, LOCK_SUFFIX)
        self.paths = (self.path, fallback(record_path, LOCK_SUFFIX))
        self._fd = -1
        self._without_lock = False
        # The rows and detection threads and a flush ask at the same time; an ``flock`` belongs to
        # one open descriptor, so two of ours would lock each other out: one asks at a time.
        self._asking = threading.Lock()

    @property
    def held(self) -> bool:
        return self._fd >= 0 or self._without_lock

    def try_acquire(self) -> bool:
        """True if this process sends; False while another process holds the lock."""
        with self._asking:
            return self._try_acquire()

    def _try_acquire(self) -> bool:
        if self.held:
            return True
        errors = []
        for path in self.paths:
            try:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                # read-only: ``flock`` needs no write access, so the pod agent (another user)
                # locks a lock file a trainer created 0644, and the other way round
                fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                errors.append(f"{path}: {exc.strerror or exc}")
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False  # another process sends this record
            except OSError as exc:
                os.close(fd)
                errors.append(f"{path}: {exc.strerror or exc}")
                continue
            if path != self.path:
                log.warn(f"cannot use the sender lock {errors[0]}; using {path} instead",
                         key="lock-fallback")
            self._fd = fd
            return True
        log.warn(f"cannot use any sender lock ({'; '.join(errors)}); this process reports "
                 "without one, and rows may arrive twice if another process sends the same "
                 "record", key="lock-unusable")
        self._without_lock = True
        return True

    def release(self) -> None:
        """Close our descriptor.  In a forked child this leaves the parent's lock in place:
        an ``flock`` lives as long as any duplicate of the descriptor is open."""
        self._without_lock = False
        if self._fd >= 0:
            close_quietly(self._fd)
            self._fd = -1
