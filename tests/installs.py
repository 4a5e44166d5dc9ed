"""The injector laid out as users get it, built from this checkout: for the process-level tests
(``tests/conftest.py``) and the start-up benchmark (``bench/startup.py``).

    wheel   ``python -m build`` makes the sdist and, from it, the wheel; pip installs the wheel
            (no dependencies) into a fresh virtualenv, with its ``primus-lens`` console script
    image   the tree ``Dockerfile`` lays out under /opt/primus-lens, its COPY lines replayed, and
            a fresh virtualenv without our package to run it, as a training image has (the
            webhook's case; ``training_base`` adds the .pth route the training-base stage installs)

Both virtualenvs take wandb and every other dependency from a base interpreter's site-packages,
named in a path file: a plain sys.path entry, whose own .pth files are never processed, so the
base's editable install of this checkout (a .pth there) cannot leak in, and nothing is
downloaded. Everything is rebuilt from the working tree on every call (a few seconds), so a test
run always sees the current sources.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

ROOT = Path(__file__).resolve().parent.parent
MODES = ("checkout", "wheel", "image")
IMAGE_ROOT = "/opt/primus-lens"  # where Dockerfile puts the tree
# The Dockerfile's inputs that are not this checkout's sources: the dependency wheels. The test
# tree takes its dependencies from the base interpreter instead (deps/ stays absent), which the
# bootstrap tolerates; tests/test_image.py builds the real image with them.
_NOT_SOURCES = ("build/",)


@dataclass
class Layout:
    """Where one way of installing puts things, as the tests and benchmarks need them."""

    mode: str
    python: str  # the interpreter a training job runs
    bootstrap_dir: Path  # the directory to put first on PYTHONPATH
    cli: List[str]  # the ``primus-lens`` command as a user of this layout runs it
    cli_pythonpath: Optional[str] = None  # what that command needs on PYTHONPATH (image: the tree)
    wheel: Optional[Path] = None  # the wheel installed (wheel mode)

    def to_json(self) -> str:
        return json.dumps({"mode": self.mode, "python": self.python,
                           "bootstrap_dir": str(self.bootstrap_dir), "cli": self.cli,
                           "cli_pythonpath": self.cli_pythonpath,
                           "wheel": str(self.wheel) if self.wheel else None})

    @classmethod
    def from_json(cls, text: str) -> Optional[Layout]:
        """The layout ``to_json`` wrote, or None when there is none or it is gone from disk."""
        if not text:
            return None
        fields = json.loads(text)
        layout = cls(fields["mode"], fields["python"], Path(fields["bootstrap_dir"]),
                     fields["cli"], fields["cli_pythonpath"],
                     Path(fields["wheel"]) if fields["wheel"] else None)
        return layout if Path(layout.python).exists() and layout.bootstrap_dir.is_dir() else None


def _run(command: List[str], timeout: float = 300, env: Optional[Dict[str, str]] = None) -> str:
    # Not in the checkout: `python -c` would import its primus_lens_inject from the directory.
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                          cwd=tempfile.gettempdir(), env={**clean, **(env or {})})
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(command)} failed ({proc.returncode}):\n"
                           f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return proc.stdout


def build_dists(out: Path) -> Tuple[Path, Path]:
    """(sdist, wheel) of the working tree, the wheel built from the sdist as a release is.
    Making the sdist writes the checkout's egg-info, so one build of a checkout runs at a time
    (test workers, a benchmark beside them): a lock file named after the checkout says whose turn."""
    out.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(str(ROOT).encode()).hexdigest()[:16]
    with open(Path(tempfile.gettempdir()) / f"primus-lens-build-{key}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)])
    return next(out.glob("*.tar.gz")), next(out.glob("*.whl"))


def purelib(python: str) -> Path:
    return Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
                .strip())


def virtualenv(path: Path, base_python: str, dependencies: bool = True) -> str:
    """A new virtualenv of ``base_python``'s interpreter, without pip; with ``dependencies``
    it sees the base's site-packages (after its own) through a path file."""
    _run([base_python, "-m", "venv", "--without-pip", str(path)])
    python = str(path / "bin" / "python")
    if dependencies:
        (purelib(python) / "_primus_lens_test_dependencies.pth").write_text(
            f"{purelib(base_python)}\n")
    return python


def pip(python: str, *args: str) -> str:
    """pip (the test environment's own) acting on another interpreter's environment."""
    return _run([sys.executable, "-m", "pip", "--python", python, "--disable-pip-version-check",
                 *args])


def wheel_virtualenv(path: Path, base_python: str, wheel: Path) -> str:
    """A fresh virtualenv with the wheel installed as a user installs it (dependencies from
    the base, see above); its python."""
    python = virtualenv(path, base_python)
    pip(python, "install", "-q", "--no-deps", "--force-reinstall", str(wheel))
    return python


def wheel_with_pth(path: Path, base_python: str, wheel: Path) -> str:
    """``wheel_virtualenv`` plus the .pth route, written by its own ``primus-lens install``."""
    python = wheel_virtualenv(path, base_python, wheel)
    _run([str(Path(python).parent / "primus-lens"), "install"])
    return python


def installed_bootstrap(python: str) -> Path:
    """Where pip put the bootstrap for this interpreter."""
    return Path(_run([python, "-c", "import primus_lens_inject._bootstrap as b; "
                                    "print(b.__path__[0])"]).strip())


def _dockerfile_instructions(dockerfile: Path, stage: str, name: str) -> Iterator[str]:
    """The arguments of each ``name`` instruction (COPY, RUN) in one stage, continuations joined."""
    text = dockerfile.read_text().replace("\\\n", " ")
    current = None
    for line in text.splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if words[0].upper() == "FROM":
            current = words[-1] if len(words) >= 4 and words[-2].upper() == "AS" else None
        elif words[0].upper() == name and current == stage:
            yield line.strip()[len(words[0]):].strip()


def _dockerfile_copies(dockerfile: Path, stage: str) -> Iterator[Tuple[List[str], str]]:
    """(sources, destination) of each ``COPY`` from the build context in one stage."""
    for arguments in _dockerfile_instructions(dockerfile, stage, "COPY"):
        words = arguments.split()
        args = [w for w in words if not w.startswith("--")]
        if len(words) == len(args):  # --from=... copies from another stage
            yield args[:-1], args[-1]


def image_tree(dest: Path, dockerfile: Path = ROOT / "Dockerfile") -> Path:
    """Lay out under ``dest`` what the Dockerfile's ``tree`` stage copies to /opt/primus-lens."""
    for sources, target in _dockerfile_copies(dockerfile, "tree"):
        if not target.startswith(IMAGE_ROOT) or all(s.startswith(_NOT_SOURCES) for s in sources):
            continue
        where = dest / target[len(IMAGE_ROOT):].lstrip("/")
        into_directory = target.endswith("/") or len(sources) > 1
        for source in sources:
            origin = ROOT / source
            if origin.is_dir():  # Docker copies a directory's contents
                shutil.copytree(origin, where, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                folder = where if into_directory else where.parent
                folder.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, folder / origin.name if into_directory else where)
    return dest


def training_base(tree: Path, path: Path, base_python: str,
                  dockerfile: Path = ROOT / "Dockerfile") -> str:
    """A virtualenv (see ``virtualenv``) set up as the Dockerfile's ``training-base`` stage sets
    up a training image: the stage's RUN line that installs the .pth route, replayed with this
    virtualenv's python as TRAINING_PYTHON and ``tree`` (from ``image_tree``) for
    /opt/primus-lens; its python. PYTHONPATH is the caller's to set, as the stage's ENV does."""
    python = virtualenv(path, base_python)
    commands = [command for command in _dockerfile_instructions(dockerfile, "training-base", "RUN")
                if "primus_lens_inject install" in command]
    if not commands:
        raise RuntimeError(f"{dockerfile}: the training-base stage installs no .pth route")
    for command in commands:
        _run(["sh", "-c", command.replace(IMAGE_ROOT, shlex.quote(str(tree)))],
             env={"TRAINING_PYTHON": python})
    return python


def prepare(mode: str, base_python: str, workdir: Path) -> Layout:
    """Build ``mode``'s layout under ``workdir`` from the working tree."""
    if mode == "wheel":
        _sdist, wheel = build_dists(workdir / "dist")
        python = wheel_virtualenv(workdir / "venv", base_python, wheel)
        return Layout(mode, python, installed_bootstrap(python),
                      [str(Path(python).parent / "primus-lens")], wheel=wheel)
    if mode == "image":
        tree = image_tree(workdir / "primus-lens")
        python = virtualenv(workdir / "venv", base_python)
        return Layout(mode, python, tree, [python, "-m", "primus_lens_inject"], str(tree))
    if mode == "checkout":
        return Layout(mode, base_python, ROOT / "sitecustomize",
                      [base_python, "-m", "primus_lens_inject"])
    raise ValueError(f"unknown install mode {mode!r}; one of {', '.join(MODES)}")


def cli_env(layout: Layout, env: Dict[str, str]) -> Dict[str, str]:
    """``env`` with what the layout's CLI needs on PYTHONPATH put first (the image's ENV line)."""
    if not layout.cli_pythonpath:
        return env
    rest = [p for p in env.get("PYTHONPATH", "").split(os.pathsep)
            if p and p != layout.cli_pythonpath]
    return dict(env, PYTHONPATH=os.pathsep.join([layout.cli_pythonpath, *rest]))
