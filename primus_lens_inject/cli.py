"""The ``primus-lens`` command (also ``python -m primus_lens_inject``).

    primus-lens run -- CMD...      run CMD with the bootstrap first on PYTHONPATH
    primus-lens doctor [--json]    is the injector active here, and if not, why
    primus-lens install|uninstall|check
                                   the .pth route: activate in every process of this environment
    primus-lens receive ...        the built-in telemetry receiver (development, demo, tests)
    primus-lens webhook ...        the Kubernetes mutating admission webhook
"""

from __future__ import annotations

import argparse
import os
import sys
import sysconfig
from typing import List, Optional

PTH_NAME = "primus_lens_inject.pth"
# One line, executed by site.py for every interpreter start of this environment; honours the
# kill switch before importing anything of ours.
PTH_LINE = ("import os; os.environ.get('PRIMUS_LENS_WANDB_HOOK', '').strip().lower() in "
            "('0', 'false', 'no', 'off', 'n', 'f') or "
            "__import__('primus_lens_inject._bootstrap.sitecustomize')\n")


def bootstrap_dir() -> str:
    """The directory holding our ``sitecustomize.py``, the one to put on PYTHONPATH."""
    from . import _bootstrap

    return os.path.dirname(os.path.abspath(_bootstrap.__file__))


def pythonpath_with_bootstrap(existing: Optional[str]) -> str:
    """Our directory first, every existing entry kept in order (ours not repeated)."""
    ours = bootstrap_dir()
    rest = [p for p in (existing or "").split(os.pathsep) if p and os.path.abspath(p) != ours]
    return os.pathsep.join([ours, *rest])


def cmd_run(argv: List[str]) -> int:
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        print("usage: primus-lens run -- COMMAND [ARG...]", file=sys.stderr)
        return 2
    os.environ["PYTHONPATH"] = pythonpath_with_bootstrap(os.environ.get("PYTHONPATH"))
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        print(f"primus-lens run: cannot execute {argv[0]!r}: {exc.strerror or exc}",
              file=sys.stderr)
        return 127
    return 0  # not reached


def pth_path() -> str:
    return os.path.join(sysconfig.get_paths()["purelib"], PTH_NAME)


def cmd_install(argv: List[str]) -> int:
    path = pth_path()
    try:
        with open(path, "w") as f:
            f.write(PTH_LINE)
    except OSError as exc:
        print(f"primus-lens install: cannot write {path}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"installed {path}: every `{sys.executable}` process now loads the injector "
          "(PRIMUS_LENS_WANDB_HOOK=false turns it off)")
    return 0


def cmd_uninstall(argv: List[str]) -> int:
    path = pth_path()
    try:
        os.remove(path)
    except FileNotFoundError:
        print(f"not installed: {path} does not exist")
        return 0
    except OSError as exc:
        print(f"primus-lens uninstall: cannot remove {path}: {exc.strerror or exc}",
              file=sys.stderr)
        return 1
    print(f"removed {path}")
    return 0


def cmd_check(argv: List[str]) -> int:
    """Exit 0 when the .pth is installed and intact, 1 otherwise (for scripts and images)."""
    path = pth_path()
    try:
        with open(path) as f:
            intact = f.read() == PTH_LINE
    except OSError:
        print(f"not installed: {path} does not exist")
        return 1
    print(f"installed: {path}" if intact else f"modified: {path} differs from this version's line")
    return 0 if intact else 1


def _delegate(module: str, argv: List[str]) -> int:
    import importlib

    return int(importlib.import_module(f"primus_lens_inject.{module}").main(argv) or 0)


COMMANDS = {
    "run": (cmd_run, "run a command with the injector on PYTHONPATH"),
    "doctor": (lambda argv: _delegate("doctor", argv), "explain the injector's state here"),
    "install": (cmd_install, "activate through a .pth file in this environment"),
    "uninstall": (cmd_uninstall, "remove that .pth file"),
    "check": (cmd_check, "is the .pth file installed?"),
    "receive": (lambda argv: _delegate("receiver", argv), "run the built-in telemetry receiver"),
    "webhook": (lambda argv: _delegate("webhook", argv), "run the admission webhook"),
}


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        parser = argparse.ArgumentParser(prog="primus-lens", description=__doc__,
                                         formatter_class=argparse.RawDescriptionHelpFormatter)
        parser.add_argument("command", choices=sorted(COMMANDS))
        parser.add_argument("--version", action="version", version=_version())
        parser.parse_args(argv or ["--help"])
        return 2
    handler, _help = COMMANDS[argv[0]]
    return handler(argv[1:])


def _version() -> str:
    from . import __version__

    return f"primus-lens-inject {__version__}"
