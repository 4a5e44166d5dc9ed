"""Every thread's Python stack, taken two ways: by the pulse thread, and by a C-level watchdog.

``thread_stacks`` asks ``faulthandler`` for the text of every thread's stack (the pulse thread
takes it when it finds a stall).  A thread that holds the GIL inside a C call (a busy extension,
a ctypes call of a ``PyDLL``) keeps the pulse thread from running at all, so the pulse also arms
``faulthandler.dump_traceback_later`` (``Watchdog``): a C thread of the interpreter that needs no
GIL and writes every stack into an anonymous file when the pulse thread fails to re-arm it in
time.  The pulse thread reads that file when it runs again (``Watchdog.take``).

``dump_traceback_later`` has one slot per process.  An application that uses it itself (a test
runner's timeout, its own hang detector) must keep it: the module's two functions are wrapped
(``watch_for_the_application``, when the pulse package loads) so that a call by anyone else makes
the watchdog stand aside for good, said once.  An arming made before the package loaded cannot be
seen (faulthandler has no query); docs/pulse.md says so.

A fork while the watchdog is armed would leave the child unable to cancel or re-arm it (the
interpreter waits for a watchdog thread that the child does not have, and that includes its own
exit): the pulse cancels it before every fork and re-arms it in the parent (``before_fork``,
``after_fork_in_parent``).
"""

from __future__ import annotations

import faulthandler
import os
import tempfile
import threading
import time
from typing import Any, Dict, Optional, Tuple

from .. import log

_original_later = faulthandler.dump_traceback_later
_original_cancel = faulthandler.cancel_dump_traceback_later
_slot = threading.Lock()  # orders our arming against the application's calls
_application_uses_it = False
_MAX_STACKS = 256 << 10  # bytes of stack text kept per event: a thousand threads stay bounded


def _read_all(f: Any) -> str:
    f.seek(0)
    text = f.read(_MAX_STACKS).decode("utf-8", "replace")
    f.seek(0)
    f.truncate()
    return text


def thread_stacks() -> str:
    """``faulthandler``'s text of every thread's stack (the caller's is marked current)."""
    with tempfile.TemporaryFile() as f:
        faulthandler.dump_traceback(file=f, all_threads=True)
        return _read_all(f)


def thread_names() -> Dict[str, str]:
    """Thread names by the id ``faulthandler`` prints for them (``0x`` and 16 hex digits), for
    the reader of the stacks: faulthandler names none."""
    return {f"0x{thread.ident:016x}": thread.name for thread in threading.enumerate()
            if thread.ident is not None}


def _application_later(*args: Any, **kwargs: Any) -> Any:
    global _application_uses_it
    with _slot:
        _application_uses_it = True
        return _original_later(*args, **kwargs)


def _application_cancel(*args: Any, **kwargs: Any) -> Any:
    global _application_uses_it
    with _slot:
        _application_uses_it = True
        return _original_cancel(*args, **kwargs)


def watch_for_the_application() -> None:
    """From now on, notice the application's own use of faulthandler's watchdog."""
    if faulthandler.dump_traceback_later is _original_later:
        faulthandler.dump_traceback_later = _application_later
    if faulthandler.cancel_dump_traceback_later is _original_cancel:
        faulthandler.cancel_dump_traceback_later = _application_cancel


class Watchdog:
    """The pulse's use of ``faulthandler.dump_traceback_later``: armed for a moment by which
    the pulse thread will have run again unless something holds the GIL."""

    def __init__(self) -> None:
        self._file: Optional[Any] = None
        self._deadline: Optional[float] = None  # time.monotonic() it is armed for, None: not armed
        self.aside = False
        self.fired_at = 0.0  # time.time() of the last dump taken (``take``)

    def arm(self, seconds: float) -> None:
        """Fire in ``seconds`` unless re-armed or cancelled first."""
        if self.aside or self._stand_aside_if_used():
            return
        with _slot:
            if _application_uses_it:
                return
            if self._file is None:
                self._file = tempfile.TemporaryFile()  # noqa: SIM115 (lives as long as we do)
            _original_later(seconds, repeat=False, file=self._file, exit=False)
            self._deadline = time.monotonic() + seconds

    def cancel(self) -> None:
        """Disarm, unless the application took the slot meanwhile (then it is theirs)."""
        with _slot:
            if self._deadline is not None and not _application_uses_it:
                _original_cancel()
            self._deadline = None

    def _stand_aside_if_used(self) -> bool:
        if _application_uses_it and not self.aside:
            self.aside = True
            self._deadline = None
            log.warn("the application uses faulthandler.dump_traceback_later itself: the pulse's "
                     "C-level watchdog stands aside (stalls with the GIL free are still caught)",
                     key="pulse-watchdog-aside")
        return self.aside

    def take(self) -> Optional[Tuple[float, str]]:
        """The stacks the watchdog wrote since the last call, with when it wrote them
        (``time.time()``), or None: it did not fire."""
        f = self._file
        if f is None:
            return None
        info = os.fstat(f.fileno())
        if info.st_size == 0:
            return None
        self._deadline = None  # it fired: it is no longer armed
        self.fired_at = info.st_mtime
        return info.st_mtime, _read_all(f)

    def before_fork(self) -> None:
        """Cancel before a fork (see the module's docstring); ``after_fork_in_parent`` re-arms."""
        deadline = self._deadline
        self.cancel()
        self._deadline = deadline

    def after_fork_in_parent(self) -> None:
        deadline = self._deadline
        if deadline is not None:
            self.arm(max(0.001, deadline - time.monotonic()))

    def abandon_after_fork(self) -> None:
        """In a forked child: never arm (the file is the parent's, the slot was cancelled)."""
        self.aside = True
        self._deadline = None
        self._file = None

    def close(self) -> None:
        self.cancel()
        if self._file is not None:
            self._file.close()
            self._file = None
