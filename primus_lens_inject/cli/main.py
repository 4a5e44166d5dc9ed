"""The ``primus-lens`` command (also ``python -m primus_lens_inject``).

    primus-lens run -- CMD...      run CMD with the bootstrap first on PYTHONPATH
    primus-lens doctor [--json]    is the injector active here, and if not, why
    primus-lens install|uninstall|check
                                   the .pth route: activate in every process of this environment
    primus-lens receive ...        the built-in telemetry receiver (development, demo, tests)
    primus-lens webhook ...        the Kubernetes mutating admission webhook
    primus-lens agent [--root DIR] the pod agent: the pod's single sender, /metrics
    primus-lens report [ROOT...]   one HTML page of a job's records and rank pulses
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
from typing import Callable, List, Optional

from .bootstrap import (
    PTH_LINE,
    PTH_NAME,
    SHIM_NAME,
    bootstrap_dir,
    current_shim_source,
    pth_path,
    pth_state,
    shim_path,
)

# Interpreter options that keep the bootstrap out: -E and -I ignore PYTHONPATH, -S skips site.
_ISOLATING = {"E": "-E ignores PYTHONPATH", "I": "-I ignores PYTHONPATH",
              "S": "-S never imports sitecustomize"}
_PYTHON_NAME = re.compile(r"^(python|pypy)[0-9.]*$")


def _pythonpath_with_bootstrap(existing: Optional[str]) -> str:
    """Our directory first, every existing entry kept in order (ours not repeated)."""
    ours = bootstrap_dir()
    rest = [p for p in (existing or "").split(os.pathsep) if p and os.path.abspath(p) != ours]
    return os.pathsep.join([ours, *rest])


def isolating_options(argv: List[str]) -> List[str]:
    """The options among a Python command line's own (before the script, -c or -m) that keep
    the bootstrap from loading, e.g. ``["-I ignores PYTHONPATH"]``; [] for other commands."""
    if not argv or not _PYTHON_NAME.match(os.path.basename(argv[0])):
        return []
    found: List[str] = []
    args = iter(argv[1:])
    for arg in args:
        if arg == "--check-hash-based-pycs":
            next(args, None)
            continue
        if arg in ("-", "--") or not arg.startswith("-"):
            break  # the script and its own arguments
        if arg.startswith("--"):
            continue
        letters = arg[1:]
        for position, letter in enumerate(letters):
            if letter in _ISOLATING and _ISOLATING[letter] not in found:
                found.append(_ISOLATING[letter])
            if letter in "cmXW":  # an option with a value: the rest of the word, or the next one
                if letter in "cm":
                    return found  # the program's own arguments follow
                if position == len(letters) - 1:
                    next(args, None)
                break
    return found


def _subparser(name: str, description: str, usage: Optional[str] = None) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=f"primus-lens {name}", description=description, usage=usage)


def _warn_isolating(argv: List[str]) -> None:
    """One line on stderr when the command is a Python whose options keep the bootstrap out."""
    options = isolating_options(argv)
    if not options:
        return
    skips_site = _ISOLATING["S"] in options
    found = shutil.which(argv[0])
    if not skips_site and found and os.path.abspath(found) == os.path.abspath(sys.executable) \
            and os.path.exists(pth_path()):
        return  # this environment's .pth loads it under -E/-I
    hint = "drop the option" if skips_site else \
        "drop the option, or use the .pth route: `primus-lens install`"
    print(f"primus-lens run: {argv[0]} {', '.join(options)}: the injector cannot load in that "
          f"process ({hint})", file=sys.stderr)


def _cmd_run(argv: List[str]) -> int:
    parser = _subparser("run", "Run COMMAND with the injector's bootstrap first on PYTHONPATH (the "
                        "entries already there are kept after it).",
                        usage="primus-lens run [--] COMMAND [ARG...]")
    if argv[:1] in (["-h"], ["--help"]):
        parser.print_help()
        return 0
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        parser.print_usage(sys.stderr)
        return 2
    _warn_isolating(argv)
    os.environ["PYTHONPATH"] = _pythonpath_with_bootstrap(os.environ.get("PYTHONPATH"))
    try:
        sys.stdout.flush()
        os.execvp(argv[0], argv)
    except OSError as exc:
        print(f"primus-lens run: cannot execute {argv[0]!r}: {exc.strerror or exc}",
              file=sys.stderr)
        return 127
    return 0  # not reached


def _installed_record() -> Optional[str]:
    """The RECORD file of the installed primus-lens-inject beside the .pth, if there is one.

    Listing the .pth there makes ``pip uninstall`` (and pip's upgrades, which uninstall first)
    remove it with the package. None where no such distribution sits in that site-packages
    (the image tree, a ``--target`` install elsewhere).
    """
    try:
        from importlib.metadata import PackageNotFoundError, distribution

        try:
            files = distribution("primus-lens-inject").files or []
        except PackageNotFoundError:
            return None
        record = next((f for f in files if f.name == "RECORD"), None)
        path = os.path.abspath(str(record.locate())) if record is not None else None
    except Exception:
        return None
    if path is None or os.path.dirname(os.path.dirname(path)) != os.path.dirname(pth_path()):
        return None
    return path


def _route_files() -> List[str]:
    """The files of the .pth route: the shim, its bytecode, the .pth (the order they are written
    in, so that no interpreter starting meanwhile imports a shim that is not there yet)."""
    import importlib.util

    shim = shim_path()
    return [shim, importlib.util.cache_from_source(shim), pth_path()]


def _set_recorded(record: Optional[str], recorded: bool) -> bool:
    """Add the route's files to (or drop them from) RECORD; True when RECORD now says so."""
    if record is None:
        return False
    site = os.path.dirname(pth_path())
    names = [os.path.relpath(path, site) for path in _route_files()]
    try:
        with open(record) as f:
            lines = [line for line in f.read().splitlines() if line.split(",")[0] not in names]
        if recorded:
            lines.extend(f"{name},," for name in names)
        with open(record, "w") as f:
            f.write("".join(line + "\n" for line in lines))
    except OSError:
        return False
    return True


def _cmd_install(argv: List[str]) -> int:
    _subparser("install", f"Write {PTH_NAME} (and {SHIM_NAME}, which it imports) into this "
               "interpreter's site-packages, so every process of this environment loads the "
               "injector without PYTHONPATH (also under python -I/-E, and under launchers that "
               "replace PYTHONPATH). `pip uninstall primus-lens-inject` removes them too."
               ).parse_args(argv)
    import py_compile

    shim, bytecode, path = _route_files()
    try:
        with open(shim, "w") as f:
            f.write(current_shim_source())
        py_compile.compile(shim, cfile=bytecode, doraise=True)  # every start loads it: cache it
        with open(path, "w") as f:
            f.write(PTH_LINE)
    except (OSError, py_compile.PyCompileError) as exc:
        print(f"primus-lens install: cannot write {os.path.dirname(path)}: "
              f"{getattr(exc, 'strerror', None) or exc}", file=sys.stderr)
        return 1
    removal = ("`pip uninstall primus-lens-inject` or `primus-lens uninstall` removes it"
               if _set_recorded(_installed_record(), True)
               else "remove it with `primus-lens uninstall` before removing the package")
    print(f"installed {path}: every `{sys.executable}` process now loads the injector "
          f"(PRIMUS_LENS_WANDB_HOOK=false turns it off; {removal})")
    return 0


def _cmd_uninstall(argv: List[str]) -> int:
    _subparser("uninstall", f"Remove {PTH_NAME} and {SHIM_NAME} from this interpreter's "
               "site-packages.").parse_args(argv)
    *shim_files, path = _route_files()
    _set_recorded(_installed_record(), False)
    try:
        os.remove(path)  # first: no start may import a shim that is gone
    except FileNotFoundError:
        print(f"not installed: {path} does not exist")
        return 0
    except OSError as exc:
        print(f"primus-lens uninstall: cannot remove {path}: {exc.strerror or exc}",
              file=sys.stderr)
        return 1
    for leftover in shim_files:
        try:
            os.remove(leftover)
        except OSError:
            pass  # already gone, or harmless without the .pth that imported it
    print(f"removed {path}")
    return 0


def _cmd_check(argv: List[str]) -> int:
    """Exit 0 when the .pth is installed and intact, 1 otherwise (for scripts and images)."""
    _subparser("check", f"Exit 0 when {PTH_NAME} is installed and current, 1 otherwise.").parse_args(argv)
    path = pth_path()
    intact = pth_state()
    if intact is None:
        print(f"not installed: {path} does not exist")
        return 1
    print(f"installed: {path}" if intact else f"modified: {path} or {shim_path()} differs from "
          "what this version writes (`primus-lens install` rewrites them)")
    return 0 if intact else 1


def _delegate(module: str) -> Callable[[List[str]], int]:
    def handler(argv: List[str]) -> int:
        import importlib

        name = f"primus_lens_inject.{module}"
        try:
            command = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is None or not name.startswith(exc.name):
                raise  # something the command itself needs is missing: show it as it is
            # The image leaves the development receiver out (.dockerignore): say so, no traceback.
            print(f"primus-lens: {name} is not in this installation (the image ships the injector "
                  "and the webhook only; the built-in receiver comes with the wheel)",
                  file=sys.stderr)
            return 2
        return int(command.main(argv) or 0)

    return handler


_COMMANDS = {
    "run": (_cmd_run, "run a command with the injector on PYTHONPATH"),
    "doctor": (_delegate("cli.doctor"), "explain the injector's state here"),
    "install": (_cmd_install, "activate through a .pth file in this environment"),
    "uninstall": (_cmd_uninstall, "remove that .pth file"),
    "check": (_cmd_check, "is the .pth file installed?"),
    "receive": (_delegate("devserver.cli"), "run the built-in telemetry receiver"),
    "webhook": (_delegate("cli.webhook"), "run the admission webhook"),
    "agent": (_delegate("cli.agent"), "run the pod agent (sender and /metrics)"),
    "report": (_delegate("cli.report"), "write the HTML report of a job's records"),
}


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        try:
            return _dispatch(argv)
        finally:  # also after argparse's SystemExit (--help, usage errors)
            sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`primus-lens doctor | head -1`): stop quietly. Python would
        # otherwise report the failed flush of stdout at exit, so point it at /dev/null.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


def _dispatch(argv: List[str]) -> int:
    if not argv or argv[0] not in _COMMANDS:
        parser = argparse.ArgumentParser(prog="primus-lens", description=__doc__,
                                         formatter_class=argparse.RawDescriptionHelpFormatter)
        parser.add_argument("command", choices=sorted(_COMMANDS))
        parser.add_argument("--version", action="version", version=_version())
        parser.parse_args(argv or ["--help"])
        return 2
    handler, _help = _COMMANDS[argv[0]]
    return handler(argv[1:])


def _version() -> str:
    from .. import __version__

    return f"primus-lens-inject {__version__}"
