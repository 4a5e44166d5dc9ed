"""Patching wandb, once, right after the program imports it.

Wrapped at class level, before any run exists:

* ``Run.log`` — ``wandb.log`` is a bound ``run.log``, so both reach this one wrapper exactly once;
* ``Run.finish`` and ``Run._finish`` — ``with wandb.init() as run`` exits through ``_finish`` only;
* ``wandb.init`` (one function object, also bound as ``wandb.sdk.wandb_init.init``);
* ``Run.watch`` and ``Run.define_metric`` (and the module-level ``wandb.watch`` of old versions):
  after either, the run's rows hold values that never pass through ``log``, and the session
  takes them from wandb's transaction log instead (``capture.history``).

Disabled mode never calls ``Run.log``: depending on the wandb version the run is a ``NoopRun``
subclass or carries instance-level lambdas.  ``patch_run`` wraps whatever ``log``/``finish`` the
run really has, and points ``wandb.log`` at the wrapped one.  Every wrapper calls the original
unchanged when the injector is off, and no exception of ours reaches the caller.
"""

from __future__ import annotations

import functools
import sys
import types
from typing import Any, Callable, Tuple

from .. import compat, log, state
from . import session
from .session import PREPARED_ARGS, PREPARED_KWARGS

_MARK = "_primus_lens_wrapped"


def wandb_version(module: Any) -> Tuple[int, ...]:
    """(major, minor, patch) of an imported wandb, from its ``__version__``."""
    return compat.parse_version(getattr(module, "__version__", "0"))


def _is_wrapped(fn: Any) -> bool:
    return bool(getattr(fn, _MARK, False))


def _mark(wrapper: Callable, original: Callable) -> Callable:
    try:
        functools.update_wrapper(wrapper, original)
    except (AttributeError, TypeError):
        wrapper.__wrapped__ = original  # type: ignore[attr-defined]
    setattr(wrapper, _MARK, True)
    return wrapper


def _call(original: Callable, run: Any, method: bool, args: tuple, kwargs: dict) -> Any:
    return original(run, *args, **kwargs) if method else original(*args, **kwargs)


def _log_through(run: Any, original: Callable, method: bool, args: tuple, kwargs: dict) -> Any:
    """The body of every log wrapper: capture around the real call, never in its way.

    ``method`` says whether ``original`` is a class function (takes the run first) or an
    instance attribute (already bound, or a plain lambda of an old disabled run).
    """
    s = state.session
    prepared = None
    if s is not None and s.enabled:
        try:
            prepared = s.begin_log(run, args, kwargs)
        except Exception as exc:
            s.fail(exc)
    if prepared is None or s is None:  # s is set whenever prepared is
        return _call(original, run, method, args, kwargs)
    result = _call(original, run, method, prepared[PREPARED_ARGS],
                   prepared[PREPARED_KWARGS])  # wandb's errors
    try:  # propagate, unrecorded
        s.end_log(run, prepared)
    except Exception as exc:
        s.fail(exc)
    return result


def _guarded(method: str, *args: Any) -> Any:
    """``session.<method>(*args)`` if the injector is on; an error of ours switches it off."""
    s = state.session
    if s is not None and s.enabled:
        try:
            return getattr(s, method)(*args)
        except Exception as exc:
            s.fail(exc)
    return None


def _finish_through(run: Any, original: Callable, method: bool, args: tuple, kwargs: dict) -> Any:
    following = _guarded("on_finish", run)
    try:
        return _call(original, run, method, args, kwargs)
    finally:
        if following:  # wandb has now written the run's whole log
            _guarded("after_finish", run)


def _watch_through(run: Any, original: Callable, method: bool, args: tuple, kwargs: dict) -> Any:
    result = _call(original, run, method, args, kwargs)
    _guarded("follow", run, session.WATCH)
    return result


def _define_metric_through(run: Any, original: Callable, method: bool, args: tuple,
                           kwargs: dict) -> Any:
    result = _call(original, run, method, args, kwargs)
    step_metric = args[1] if len(args) > 1 else kwargs.get("step_metric")
    step_sync = args[2] if len(args) > 2 else kwargs.get("step_sync")
    if step_metric and step_sync is not False:  # wandb's default: sync when a step metric is set
        _guarded("follow", run, session.STEP_SYNC)
    return result


# ``__exit__`` too: old disabled runs end a ``with`` block without calling any finish.
_THROUGH = {"log": _log_through, "finish": _finish_through, "_finish": _finish_through,
            "__exit__": _finish_through, "watch": _watch_through,
            "define_metric": _define_metric_through}


def _wrap_method(cls: type, name: str) -> None:
    """Wrap ``cls.<name>`` in place, where it is defined on ``cls`` itself."""
    original = cls.__dict__[name]
    if _is_wrapped(original) or not callable(original):
        return
    through = _THROUGH[name]

    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        return through(self, original, True, args, kwargs)

    setattr(cls, name, _mark(method, original))


def _wrap_instance(run: Any, name: str, original: Callable) -> Callable:
    through = _THROUGH[name]

    def method(*args: Any, **kwargs: Any) -> Any:
        return through(run, original, False, args, kwargs)

    return _mark(method, original)


def patch_run(run: Any) -> None:
    """Make sure the ``log``/``finish`` this run really has (class or instance level) are wrapped.

    Real runs resolve to the already wrapped ``Run`` methods; ``NoopRun`` (disabled mode, wandb
    ≥ 0.28) overrides them on its class; older disabled runs carry plain functions on the
    instance (0.17–0.25) or in a ``RunDisabled`` attribute store (0.12–0.15).
    """
    wandb: Any = sys.modules.get("wandb")  # its attributes are whatever this version has
    for name in _THROUGH:
        try:
            current = getattr(run, name)
        except Exception:
            continue
        func = getattr(current, "__func__", None)
        if _is_wrapped(func if func is not None else current) or not callable(current):
            continue
        if func is not None and getattr(current, "__self__", None) is run:
            for klass in type(run).__mro__:
                if klass.__dict__.get(name) is func:
                    _wrap_method(klass, name)
                    break
        elif not isinstance(current, type(run)):  # RunDisabled answers any name with itself
            wrapped = _wrap_instance(run, name, current)
            setattr(run, name, wrapped)
            if name == "log" and wandb is not None and getattr(wandb, "log", None) is current:
                wandb.log = wrapped
    # wandb.log is a bound method made at init time; if it was bound before we wrapped the
    # class, it still points at the old function.
    bound = getattr(wandb, "log", None) if wandb is not None else None
    bound_to_run = getattr(bound, "__self__", None) is run  # named: ``run`` keeps its own type
    if bound_to_run and not _is_wrapped(getattr(bound, "__func__", None)):
        wandb.log = run.log


def _wrap_init(wandb: Any) -> None:
    from wandb.sdk import wandb_init

    original = wandb_init.init
    if _is_wrapped(original):
        return

    def init(*args: Any, **kwargs: Any) -> Any:
        run = original(*args, **kwargs)
        _guarded("on_init", run)
        return run

    wrapped = _mark(init, original)
    wandb_init.init = wrapped
    module: Any  # wandb's modules: their attributes are whatever this version has
    for module in (wandb, sys.modules.get("wandb.sdk")):
        if module is not None and getattr(module, "init", None) is original:
            module.init = wrapped


def _wrap_module_watch(wandb: Any) -> None:
    """Old versions (< 0.13) define ``wandb.watch`` as a module function that ``Run.watch`` calls
    in turn; newer ones bind it to ``Run.watch`` at init, which is already wrapped."""
    original = getattr(wandb, "watch", None)
    if type(original) is not types.FunctionType or _is_wrapped(original):
        return

    def watch(*args: Any, **kwargs: Any) -> Any:
        return _watch_through(getattr(wandb, "run", None), original, False, args, kwargs)

    wrapped = _mark(watch, original)
    module: Any  # wandb's modules: their attributes are whatever this version has
    for module in (wandb, sys.modules.get("wandb.sdk"), sys.modules.get("wandb.sdk.wandb_watch")):
        if module is not None and getattr(module, "watch", None) is original:
            module.watch = wrapped


def install(wandb: Any) -> str:
    """Patch the freshly imported ``wandb``; returns the status line shown by doctor."""
    if getattr(wandb, "_primus_lens_patched", False):
        return "active: wandb already patched"
    if not state.get_config().hook:
        return "inactive: PRIMUS_LENS_WANDB_HOOK=false"
    version = wandb_version(wandb)
    if not compat.supported(version):
        log.warn(f"wandb {getattr(wandb, '__version__', '?')} is older than "
                 f"{compat.dotted(compat.MIN_WANDB)}; not patched")
        return "inactive: wandb too old"
    try:
        from wandb.sdk import wandb_run

        s = session.create(patch_run)
        for name in _THROUGH:
            if name in wandb_run.Run.__dict__:
                _wrap_method(wandb_run.Run, name)
        _wrap_init(wandb)
        _wrap_module_watch(wandb)
        wandb._primus_lens_patched = True
        if getattr(wandb, "run", None) is not None:  # patched late: a run already exists
            s.adopt(wandb.run)
    except Exception as exc:
        log.warn(f"injector off: wandb {getattr(wandb, '__version__', '?')} could not be patched "
                 f"({type(exc).__name__}: {exc})")
        return "inactive: patching failed"
    log.debug("wandb_patched", wandb_version=getattr(wandb, "__version__", "?"))
    return "active: wandb patched"
