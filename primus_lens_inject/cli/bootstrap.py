"""Where this package's bootstrap is and how the .pth route runs it: shared by the commands
(``run``, ``install``, ``check``) and ``doctor``, which must agree on every byte of its files."""

from __future__ import annotations

import os
import sysconfig
from typing import Optional

PTH_NAME = "primus_lens_inject.pth"
# The .pth route is two files in site-packages: the .pth, whose one line site.py executes at every
# start of the interpreter, and a module beside it (the shim) that does the work, the kill switch
# included. The line stays a bare import because site.py compiles it at every start (twice in a
# virtualenv: CPython processes a venv's site-packages twice), and compiling even one short
# condition there costs as much as the bootstrap itself; the shim's bytecode is cached.
_SHIM_MODULE = "_primus_lens_inject_pth"
SHIM_NAME = _SHIM_MODULE + ".py"
PTH_LINE = f"import {_SHIM_MODULE}\n"
# The bootstrap's own module name on the .pth route: not "sitecustomize", so it does not chain
# (site.py imports the real sitecustomize right after the .pth files), and doctor tells the
# routes apart by it.
_PTH_MODULE = "_primus_lens_pth"
BOOTSTRAP_STATE = "_primus_lens_bootstrap"  # the bootstrap's sys.modules key once it is active
_OFF = ("0", "false", "no", "off", "n", "f")  # the bootstrap's own spelling of the kill switch
# The shim runs the bootstrap file itself, by absolute path (the route must not depend on
# sys.path, which a launcher may have replaced), through the loader site.py already holds:
# ``_frozen_importlib_external`` is importlib.machinery's implementation, always loaded, where
# importing importlib would cost more than the bootstrap. No package is imported, nothing is
# searched. A bootstrap that is gone (the package removed by other means than pip) is skipped
# silently: no traceback at every later start.
_SHIM = '''"""Runs the primus-lens-inject bootstrap {path}
at every start of this interpreter: {pth}, written beside this file by `primus-lens install`,
imports it. `primus-lens uninstall` and `pip uninstall primus-lens-inject` remove both files."""
import os
import sys

if os.environ.get("PRIMUS_LENS_WANDB_HOOK", "").strip().lower() in {off!r}:
    pass  # the kill switch: this module is all of ours that is read
elif {state!r} not in sys.modules:  # active already: a second pass over site-packages
    _machinery = sys.modules.get("_frozen_importlib_external")
    _bootstrap = sys.modules.get("_frozen_importlib")
    if _machinery is None or _bootstrap is None:  # not CPython: the public names
        import importlib.util as _machinery
        _bootstrap = _machinery
    try:
        _spec = _machinery.spec_from_file_location({module!r}, {path!r})
        _module = _bootstrap.module_from_spec(_spec)
        sys.modules[_spec.name] = _module
        _spec.loader.exec_module(_module)
    except (ImportError, OSError):
        sys.modules.pop({module!r}, None)
'''


def _shim_source(bootstrap_file: str) -> str:
    """The module the .pth line imports, running ``bootstrap_file``."""
    return _SHIM.format(pth=PTH_NAME, path=os.path.abspath(bootstrap_file), off=_OFF,
                        state=BOOTSTRAP_STATE, module=_PTH_MODULE)


# A line only our bootstrap file holds: how a copy of it is told from any other sitecustomize.
_BOOTSTRAP_MARKER = f'_STATE = "{BOOTSTRAP_STATE}"'


def is_bootstrap(path: Optional[str]) -> bool:
    """Is this file a copy of our bootstrap?"""
    try:
        with open(path or "", encoding="utf-8", errors="replace") as f:
            return _BOOTSTRAP_MARKER in f.read(8192)
    except OSError:
        return False


def bootstrap_dir() -> str:
    """The directory holding our ``sitecustomize.py``, the one to put on PYTHONPATH: the image
    tree's top (where the bootstrap finds its deps/) when this package sits in one, otherwise the
    package's own ``_bootstrap``."""
    from .. import _bootstrap  # type: ignore[attr-defined]  # an installed copy's: setup.py maps it

    own = os.path.dirname(os.path.abspath(_bootstrap.__file__))
    tree = os.path.dirname(os.path.dirname(own))
    return tree if is_bootstrap(os.path.join(tree, "sitecustomize.py")) else own


def pth_path() -> str:
    return os.path.join(sysconfig.get_paths()["purelib"], PTH_NAME)


def shim_path() -> str:
    return os.path.join(sysconfig.get_paths()["purelib"], SHIM_NAME)


def current_shim_source() -> str:
    """The shim this installation writes: it runs the bootstrap ``bootstrap_dir`` holds."""
    return _shim_source(os.path.join(bootstrap_dir(), "sitecustomize.py"))


def pth_state() -> Optional[bool]:
    """None when this interpreter has no .pth of ours; True when the .pth and its shim hold what
    this version writes; False when either differs or the shim is missing."""
    try:
        with open(pth_path()) as f:
            line = f.read()
    except OSError:
        return None
    try:
        with open(shim_path()) as f:
            return line == PTH_LINE and f.read() == current_shim_source()
    except OSError:
        return False
