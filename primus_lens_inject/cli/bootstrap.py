"""Where this package's bootstrap is and how the .pth route names it: shared by the commands
(``run``, ``install``, ``check``) and ``doctor``, which must agree on every byte of it."""

from __future__ import annotations

import os
import sysconfig
from typing import Optional

PTH_NAME = "primus_lens_inject.pth"
# One line, executed by site.py at every interpreter start of this environment. It honours the
# kill switch before importing anything of ours, and stays silent once the package is gone (a
# `pip uninstall` that could not remove this file must not make every later `python` print a
# traceback).
PTH_LINE = ("import os; os.environ.get('PRIMUS_LENS_WANDB_HOOK', '').strip().lower() in "
            "('0', 'false', 'no', 'off', 'n', 'f') or exec('try:\\n import "
            "primus_lens_inject._bootstrap.sitecustomize\\nexcept ImportError:\\n pass')\n")

# A line only our bootstrap file holds: how a copy of it is told from any other sitecustomize.
BOOTSTRAP_MARKER = '_STATE = "_primus_lens_bootstrap"'


def is_bootstrap(path: Optional[str]) -> bool:
    """Is this file a copy of our bootstrap?"""
    try:
        with open(path or "", encoding="utf-8", errors="replace") as f:
            return BOOTSTRAP_MARKER in f.read(8192)
    except OSError:
        return False


def bootstrap_dir() -> str:
    """The directory holding our ``sitecustomize.py``, the one to put on PYTHONPATH: the image
    tree's top (where the bootstrap finds its deps/) when this package sits in one, otherwise the
    package's own ``_bootstrap``."""
    from .. import _bootstrap

    own = os.path.dirname(os.path.abspath(_bootstrap.__file__))
    tree = os.path.dirname(os.path.dirname(own))
    return tree if is_bootstrap(os.path.join(tree, "sitecustomize.py")) else own


def pth_path() -> str:
    return os.path.join(sysconfig.get_paths()["purelib"], PTH_NAME)
