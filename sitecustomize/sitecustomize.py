# -*- coding: utf-8 -*-
"""primus-lens bootstrap: the only file of the injector that every Python process runs.

It is found first on PYTHONPATH, so Python runs it instead of the image's own sitecustomize; it
therefore runs that one too (``_chain``), exactly once, as if we were not there.  Otherwise it only
registers post-import hooks for ``wandb``, ``torch.distributed`` and ``jax.distributed``: nothing
of the package is imported, no thread or socket is started until the program itself imports wandb
or joins a distributed job (the rank pulse starts after the first successful
``init_process_group`` / ``initialize``; ``PRIMUS_LENS_PULSE=false`` leaves those two alone).
Written for every CPython 3 (and parseable by 2.7): standard library only, no f-strings, and it never raises.

The .pth route (``primus-lens install``, the training-base image) runs this same file by path
under another module name, before site.py imports any sitecustomize: it then does not chain, and
a sitecustomize copy of it that runs afterwards finds the first one active and stays inactive.
"""

import sys

_SWITCH = "PRIMUS_LENS_WANDB_HOOK"
_PULSE_SWITCH = "PRIMUS_LENS_PULSE"
_OFF = ("0", "false", "no", "off", "n", "f")
_STATE = "_primus_lens_bootstrap"  # sys.modules key under which doctor finds this module
# ``os`` is imported inside each function, never held as a global: the hook keeps this module
# alive to the interpreter's very end (until wandb is imported), and with it whatever its globals
# hold.  Holding os would keep os and the modules it imported alive into the interpreter's
# teardown, which then clears them the slow way: a third of what we add to `python -c pass`.


def _here():
    import os

    return os.path.dirname(os.path.abspath(__file__))


_HERE = _here()

chained = None  # path of the sitecustomize run after us, for doctor
status = "inactive"  # why the injector is (not) active in this process, for doctor


def _say(message):
    try:
        sys.stderr.write("primus-lens: " + message + "\n")
    except Exception:
        pass


class _Loader(object):
    """Stands in for a hooked module's loader for one call: runs it, then fires the hook."""

    def __init__(self, loader, hook):
        self._loader = loader
        self._hook = hook

    def __getattr__(self, name):
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        # Give wandb its own loader back before its code runs (importlib.resources, pkgutil).
        module.__loader__ = self._loader
        if getattr(module, "__spec__", None) is not None:
            module.__spec__.loader = self._loader
        self._loader.exec_module(module)
        self._hook.fire(module)


class _PostImportHook(object):
    """A meta-path finder that answers for the module names it waits for only, and never
    changes what is found.

    Every other import pays one dict lookup.  For a hooked name it asks the remaining finders
    for the real spec, wraps its loader, and after the module's ``__init__`` has run calls back
    once; it leaves ``sys.meta_path`` when no name is left.
    """

    _primus_lens = True

    def __init__(self):
        self.callbacks = {}  # module name -> (callback, what a failure switches off)
        self._busy = None

    def add(self, name, callback, failure):
        self.callbacks[name] = (callback, failure)

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in self.callbacks or self._busy == fullname:
            return None
        self._busy = fullname
        try:
            for finder in list(sys.meta_path):
                find = getattr(finder, "find_spec", None)
                if finder is self or find is None:
                    continue
                spec = find(fullname, path, target)
                if spec is not None:
                    if getattr(spec.loader, "exec_module", None) is not None:
                        spec.loader = _Loader(spec.loader, self)
                    return spec
            return None
        finally:
            self._busy = None

    def fire(self, module):
        callback, failure = self.callbacks.pop(getattr(module, "__name__", None), (None, ""))
        if not self.callbacks:
            try:
                sys.meta_path.remove(self)
            except ValueError:
                pass
        if callback is None:
            return
        try:
            callback(module)
        except Exception as exc:
            _say("%s (%s: %s)" % (failure, type(exc).__name__, exc))


def _package_on_path():
    import os

    if _HERE not in sys.path and os.path.isdir(os.path.join(_HERE, "primus_lens_inject")):
        # The image tree reached by the .pth route, under a launcher that replaced PYTHONPATH:
        # the package is beside us but not on sys.path.  Last, as deps/: the app's copies win.
        sys.path.append(_HERE)


def _patch_wandb(module):
    global status

    _package_on_path()
    from primus_lens_inject.capture import patch  # the package: beside us (image) or installed

    status = patch.install(module)


def _start_pulse(reason):
    """A process joined a distributed job: start its rank pulse (once; later calls do nothing)."""
    try:
        _package_on_path()
        from primus_lens_inject.pulse import start

        start(reason)
    except Exception as exc:
        _say("rank pulse off: starting it failed (%s: %s)" % (type(exc).__name__, exc))


def _wrap_join(module, name, reason, holders):
    """Wrap ``module.<name>`` (and the same function where ``holders`` modules hold it) so that
    its first successful call starts the pulse; the function's own behaviour is untouched."""
    original = getattr(module, name, None)
    if not callable(original) or getattr(original, "_primus_lens_wrapped", False):
        return
    import functools

    @functools.wraps(original)
    def join(*args, **kwargs):
        result = original(*args, **kwargs)
        _start_pulse(reason)
        return result

    join._primus_lens_wrapped = True
    for holder in [module] + [sys.modules.get(other) for other in holders]:
        if holder is not None and getattr(holder, name, None) is original:
            setattr(holder, name, join)


def _hook_torch(module):
    _wrap_join(module, "init_process_group", "torch.distributed",
               ("torch.distributed.distributed_c10d",))


def _hook_jax(module):
    _wrap_join(module, "initialize", "jax.distributed", ())


def _activate():
    global status
    import os

    if _STATE in sys.modules:  # the .pth route, or a baked and a mounted copy on PYTHONPATH
        status = "inactive: another copy of the bootstrap is already active"
        return
    sys.modules[_STATE] = sys.modules[__name__]
    deps = os.path.join(_HERE, "deps")
    if os.path.isdir(deps) and deps not in sys.path:
        sys.path.append(deps)  # last: the application's own packages always win
    status = "active: waiting for wandb"
    hook = _PostImportHook()
    hook.add("wandb", _patch_wandb, "injector off: patching wandb failed")
    if os.environ.get(_PULSE_SWITCH, "").strip().lower() not in _OFF:
        hook.add("torch.distributed", _hook_torch, "rank pulse off: hooking torch failed")
        hook.add("jax.distributed", _hook_jax, "rank pulse off: hooking jax failed")
    for name in list(hook.callbacks):
        module = sys.modules.get(name)
        if module is not None:
            hook.fire(module)
    if hook.callbacks:
        sys.meta_path.insert(0, hook)


def _may_hold_sitecustomize(entries):
    """Could any of these sys.path entries provide a sitecustomize?  Plain os.stat calls only.

    Most interpreters have none, and importing the import machinery to learn that would cost
    more than everything else we do at start-up, so only a hit (or an entry that is not a plain
    directory, such as a zip file, which only the machinery can read) goes on to ``_chain``.
    """
    import os

    suffixes = [".py", ".pyc"]
    try:
        import _imp  # built in and already imported by every CPython 3

        suffixes.extend(_imp.extension_suffixes())
    except Exception:
        pass
    names = ["sitecustomize" + suffix for suffix in suffixes]
    names += [os.path.join("sitecustomize", "__init__" + suffix) for suffix in suffixes]
    for entry in entries:
        if not os.path.isdir(entry):
            if os.path.exists(entry):
                return True
            continue
        for name in names:
            if os.path.exists(os.path.join(entry, name)):
                return True
    return False


def _chain():
    """Run the sitecustomize that Python would have run without us: the next one on sys.path."""
    global chained
    import os

    entries = [os.path.abspath(entry or os.curdir) for entry in sys.path]
    later = entries[entries.index(_HERE) + 1:] if _HERE in entries else entries
    later = [entry for entry in later if entry != _HERE]
    try:
        if not _may_hold_sitecustomize(later):
            return
        if sys.version_info >= (3, 4):
            import importlib.machinery
            import importlib.util

            spec = importlib.machinery.PathFinder.find_spec("sitecustomize", later)
            if spec is None or spec.loader is None:
                return
            chained = spec.origin
            module = importlib.util.module_from_spec(spec)
            sys.modules["sitecustomize"] = module
            spec.loader.exec_module(module)
        else:  # Python 2.7 and 3.0-3.3: never our target, but never shadow the image's file
            import imp

            try:
                found = imp.find_module("sitecustomize", later)
            except ImportError:
                return
            chained = found[1]
            try:
                imp.load_module("sitecustomize", *found)
            finally:
                if found[0] is not None:
                    found[0].close()
    except Exception as exc:  # report it the way site.py does for a broken sitecustomize
        if sys.flags.verbose:
            sys.excepthook(*sys.exc_info())
        else:
            sys.stderr.write("Error in sitecustomize; set PYTHONVERBOSE for traceback:\n"
                             "%s: %s\n" % (exc.__class__.__name__, exc))


def _main():
    global status
    import os

    on = os.environ.get(_SWITCH, "").strip().lower() not in _OFF
    if on and sys.version_info >= (3, 9):
        try:
            _activate()
        except Exception as exc:
            status = "inactive: bootstrap failed"
            sys.modules.pop(_STATE, None)
            for finder in list(sys.meta_path):
                if getattr(finder, "_primus_lens", False):
                    sys.meta_path.remove(finder)
            _say("injector off: bootstrap failed (%s: %s)" % (type(exc).__name__, exc))
    if __name__ == "sitecustomize":
        _chain()


_main()
