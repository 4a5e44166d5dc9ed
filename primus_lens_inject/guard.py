"""The one way the injector runs work off the training thread: guarded, restarted, bounded.

Every background thread (record writer, reporter senders, the hand-off that flushes at finish,
exit and SIGTERM) runs its body through ``run_guarded``: an exception is contained there, said
once on stderr with the thread's name, and the body is started again after a short pause that
grows while it keeps failing, because a dead writer silently stops the record and a dead sender
silently stops reporting.  ``wait_until`` is the only way a caller waits for such a thread: by
polling a flag with ``time.sleep``, so the waiting thread holds and takes no lock, which keeps
it safe inside a signal handler that may have interrupted the very code it waits for.
"""

from __future__ import annotations

import _thread
import threading
import time
from typing import Callable

from . import log

RESTART_FIRST = 0.1  # seconds before the first restart of a failed thread body
_RESTART_MAX = 30.0  # the pause stops growing here: a body that always fails costs nearly nothing
_POLL = 0.005  # how often a waiter looks at the flag it waits for


def run_guarded(name: str, body: Callable[[], None], restart: bool = True) -> None:
    """Run ``body`` until it returns; an exception is reported once and ``body`` runs again
    (unless ``restart`` is false: one-shot work just ends)."""
    pause = RESTART_FIRST
    while True:
        try:
            body()
            return
        except Exception as exc:
            log.warn(f"background {name} failed ({type(exc).__name__}: {exc}); "
                     + ("restarted" if restart else "skipped") + ", training continues",
                     key=f"thread-failed-{name}")
            if not restart:
                return
        time.sleep(pause)
        pause = min(pause * 2, _RESTART_MAX)


def start_thread(name: str, body: Callable[[], None], restart: bool = True) -> threading.Thread:
    """A daemon thread ``primus-lens-<name>`` running ``body`` under ``run_guarded``."""
    thread = threading.Thread(target=run_guarded, args=(name, body, restart),
                              name=f"primus-lens-{name}", daemon=True)
    thread.start()
    return thread


def wait_until(done: Callable[[], bool], deadline: float) -> bool:
    """Poll ``done`` until it is true (True) or ``time.monotonic()`` passes ``deadline``."""
    while not done():
        if time.monotonic() >= deadline:
            return done()
        time.sleep(_POLL)
    return True


def hand_off(name: str, work: Callable[[], None], deadline: float) -> bool:
    """Run ``work`` on a new guarded thread and wait for it until ``deadline``; True when it
    ended in time.  The caller (a signal handler, a ``finish`` possibly called from one) takes
    no lock while it waits.  The thread is started with ``_thread.start_new_thread``, not
    ``Thread.start``: the latter takes ``threading``'s internal lock and waits, unbounded, for
    the new thread to announce itself, and the code a signal interrupted may hold that lock.
    Where no thread can start (interpreter shutdown, from Python 3.12), ``work`` runs on the
    caller's thread, which is then an ordinary exit path."""
    finished: list = []

    def body() -> None:
        try:
            work()
        finally:
            finished.append(True)

    try:
        _thread.start_new_thread(run_guarded, (name, body, False))
    except RuntimeError:
        run_guarded(name, body, restart=False)
    return wait_until(lambda: bool(finished), deadline)
