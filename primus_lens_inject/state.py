"""What the injector holds once per process, and the process events it answers: fork, exit, SIGTERM.

Everything process-wide lives here, so a reader finds it in one place:

* the configuration and topology, read from the environment on first use;
* the session (``capture.session.Session``), the object every wandb wrapper reads as ``session``:
  a plain module attribute, because the wrappers read it on every ``log`` call;
* the one ``os.register_at_fork`` registration.  Parts that must act around a fork register with
  ``at_fork``; the callbacks run in registration order after a fork (reverse order before it, as
  ``os.register_at_fork`` itself does), each guarded, so one failing cannot skip the others;
* the exit hooks: ``atexit``, a multiprocessing child's finalizers (it leaves through
  ``os._exit``) and SIGTERM, each handing the process end to the session; and a second
  ``atexit`` hook that runs after wandb's own teardown, for what only wandb finishes writing.
  Both exit hooks work to one deadline, the session's (set by the first): a process end has
  one budget, however many hooks it runs.

The session is held by type ``Ending`` only: capture builds it, this leaf just keeps it.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
from typing import Any, Callable, List, Optional, Protocol

from . import log
from .config import Config
from .topology import Topology, detect

Callback = Callable[[], object]  # what it returns is ignored (a lock's acquire says True)


class Ending(Protocol):
    """What the exit hooks need from the session."""

    def flush(self) -> None:
        """Write and send what is queued, within the process end's budget; the process goes on."""

    def shutdown(self, hand_off: bool = False, wandb_ends_later: bool = False) -> None:
        """Write, send and stop everything: the process ends.  ``wandb_ends_later``: wandb's
        teardown runs after this, and ``after_wandb_exit`` follows it."""

    def after_wandb_exit(self) -> None:
        """wandb's own teardown is over: finish what waited for it, within what is left of the
        deadline ``shutdown`` set (not a budget of its own)."""


# -- configuration and topology --------------------------------------------------------------

_config: Optional[Config] = None
_topology: Optional[Topology] = None


def get_config() -> Config:
    """The process's configuration, parsed on first use; problems are reported once, here."""
    global _config
    if _config is None:
        _config = Config.from_env()
        for problem in _config.problems:
            log.warn_inherited(problem.message())
    return _config


def get_topology() -> Topology:
    """The process's topology, read once; each rejected value gets one warning."""
    global _topology
    if _topology is None:
        _topology, problems = detect()
        for name, raw in problems:
            log.warn_inherited(f"ignoring {name}={raw[:40]!r}: not a valid rank; "
                               "trying the next source")
    return _topology


# -- the session -----------------------------------------------------------------------------

session: Optional[Any] = None  # the process's ``capture.session.Session``; read, never assigned,
# outside this module (``set_session``)


def set_session(value: Optional[Any]) -> None:
    """Make ``value`` the process's session (at the first wandb import, and in a forked child)."""
    global session
    session = value


# -- fork ------------------------------------------------------------------------------------

_before: List[Callback] = []
_after_in_parent: List[Callback] = []
_after_in_child: List[Callback] = []
_fork_hooked = False


def at_fork(before: Optional[Callback] = None, after_in_parent: Optional[Callback] = None,
            after_in_child: Optional[Callback] = None) -> None:
    """Run these around every later ``fork`` of this process (``os.register_at_fork`` once, for
    all).  The first registration also gives the log a fresh lock in the child, first of all:
    the parent's may have been held by another thread at fork time."""
    global _fork_hooked
    if not hasattr(os, "register_at_fork"):
        return
    if not _fork_hooked:
        _fork_hooked = True
        _after_in_child.append(log.reset_after_fork)
        os.register_at_fork(before=_run_before, after_in_parent=_run_after_in_parent,
                            after_in_child=_run_after_in_child)
    if before is not None:
        _before.append(before)
    if after_in_parent is not None:
        _after_in_parent.append(after_in_parent)
    if after_in_child is not None:
        _after_in_child.append(after_in_child)


def _run_all(callbacks: List[Callback]) -> None:
    for callback in callbacks:
        try:
            callback()
        except Exception as exc:
            log.warn(f"fork handling failed ({type(exc).__name__}: {exc}); training continues",
                     key="fork-callback")


def _run_before() -> None:
    _run_all(_before[::-1])


def _run_after_in_parent() -> None:
    _run_all(_after_in_parent)


def _run_after_in_child() -> None:
    _run_all(_after_in_child)


# -- exit and SIGTERM ------------------------------------------------------------------------

_exit_hooked = False
_previous_sigterm: Any = None
_child_finalizer_pid = 0


def _at_exit(wandb_ends_later: bool = False) -> None:
    """atexit (wandb's teardown follows), and a multiprocessing child's finalizers (it leaves
    through ``os._exit``: nothing follows)."""
    current: Optional[Ending] = session
    if current is not None:
        try:
            current.shutdown(wandb_ends_later=wandb_ends_later)
        except Exception as exc:
            log.warn(f"flush at exit failed: {type(exc).__name__}: {exc}")


def _after_wandb_exit() -> None:
    current: Optional[Ending] = session
    if current is not None:
        try:
            current.after_wandb_exit()
        except Exception as exc:
            log.warn(f"flush after wandb's exit failed: {type(exc).__name__}: {exc}")


_late_hooked = False


def install_late_exit_hook() -> None:
    """At the wandb import, before ``wandb.init`` registers wandb's teardown: atexit runs hooks
    in reverse order, so this one runs after that teardown has written wandb's last records."""
    global _late_hooked
    if not _late_hooked:
        _late_hooked = True
        atexit.register(_after_wandb_exit)


def _on_sigterm(signum: int, frame: Any) -> None:
    """Flush on a hand-off thread and wait for it within the budget, then do what the
    program would have done without us."""
    previous = _previous_sigterm
    current: Optional[Ending] = session
    if current is not None:
        try:
            if callable(previous) or previous == signal.SIG_IGN:
                current.flush()  # the program goes on (its own handler decides) and may log
            else:
                current.shutdown(hand_off=True)
        except Exception:
            pass
    if callable(previous):
        previous(signum, frame)
    elif previous != signal.SIG_IGN:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # die of SIGTERM, as without us
        os.kill(os.getpid(), signal.SIGTERM)


def _finalize_multiprocessing_child() -> None:
    """In a multiprocessing child, run ``_at_exit`` among its finalizers: a forked (or
    forkserver) child leaves through ``os._exit`` after them, and atexit never runs there.
    Registered once per process, when its first run starts (lazily: ``Process`` clears the
    registry it inherited right before the child's target runs)."""
    global _child_finalizer_pid
    mp = sys.modules.get("multiprocessing")
    if mp is None or _child_finalizer_pid == os.getpid():
        return
    try:
        if mp.parent_process() is None:
            return
        from multiprocessing import util

        util.Finalize(None, _at_exit, exitpriority=0)
        _child_finalizer_pid = os.getpid()
    except Exception as exc:
        log.debug("child_finalizer_not_registered", error=f"{type(exc).__name__}: {exc}")


def install_exit_hooks() -> None:
    """After wandb.init: atexit then runs before wandb's own teardown (LIFO)."""
    global _exit_hooked, _previous_sigterm
    _finalize_multiprocessing_child()
    if _exit_hooked:
        return
    _exit_hooked = True
    atexit.register(_at_exit, True)
    if threading.current_thread() is threading.main_thread():
        try:
            previous = signal.getsignal(signal.SIGTERM)
            if previous is not _on_sigterm:
                _previous_sigterm = previous
                signal.signal(signal.SIGTERM, _on_sigterm)
        except (ValueError, OSError) as exc:
            log.debug("sigterm_not_hooked", error=str(exc))
    else:
        log.debug("sigterm_not_hooked", reason="wandb.init ran outside the main thread")
