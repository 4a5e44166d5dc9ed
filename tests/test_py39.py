"""The package must import on CPython 3.9, the oldest interpreter we support in training images.

ruff checks syntax for 3.9 (target-version in pyproject.toml); this runs a real 3.9 when one is
installed: every module compiles, and every module imports with nothing but the standard library
(third-party packages are imported lazily, where they are used).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT

PACKAGE = ROOT / "primus_lens_inject"


def _python39():
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    for candidate in sorted(root.glob("versions/3.9.*/bin/python3.9")):
        return str(candidate)
    return None


def test_every_module_imports_on_python39():
    python = _python39()
    if python is None:
        pytest.skip("no CPython 3.9 installed here")
    modules = sorted("primus_lens_inject." + ".".join(p.relative_to(PACKAGE).with_suffix("").parts)
                     for p in PACKAGE.rglob("*.py") if p.name != "__main__.py")
    modules = [m.removesuffix(".__init__") for m in modules]
    code = "import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module(m)\nprint('ok')"
    proc = subprocess.run([python, "-c", code, *modules], cwd=ROOT, capture_output=True,
                          text=True, timeout=120,
                          env={"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]
    proc = subprocess.run([python, "-c", "import runpy; runpy.run_path('sitecustomize/sitecustomize.py')"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={"PATH": os.environ["PATH"]})
    assert proc.returncode == 0 and proc.stderr == ""
