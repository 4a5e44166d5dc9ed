"""Start-up of the installed bootstrap: it imports nothing a bare interpreter has not imported,
and still finds the sitecustomize Python would have run without it, in every form Python finds
one (module, package, bytecode only, zip file). Its cost is measured in bench/startup.py."""

from __future__ import annotations

import compileall
import os
import subprocess
import zipfile
from pathlib import Path

import pytest
from conftest import BOOTSTRAP_DIR, TRAIN_PYTHON, training_env

MODULES = "import sys; print(' '.join(sorted(sys.modules)))"
CHAINED = "import sys; print(sys.modules['_primus_lens_bootstrap'].chained)"


def python(tmp: Path, code: str, pythonpath: str = "") -> str:
    env = training_env(tmp, {"PYTHONPATH": pythonpath} if pythonpath else None,
                       bootstrap=bool(pythonpath))
    proc = subprocess.run([TRAIN_PYTHON, "-c", code], cwd=tmp, env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    return proc.stdout.strip()


@pytest.mark.layouts
def test_the_bootstrap_imports_nothing_new_at_start_up(tmp_path):
    bare = set(python(tmp_path, MODULES).split())
    injected = set(python(tmp_path, MODULES, str(BOOTSTRAP_DIR)).split())
    assert injected - bare - {"sitecustomize"} == {"_primus_lens_bootstrap"}


@pytest.mark.layouts
def test_the_next_sitecustomize_is_found_in_every_form(tmp_path):
    package = tmp_path / "package"
    (package / "sitecustomize").mkdir(parents=True)
    (package / "sitecustomize" / "__init__.py").write_text("print('package ran')\n")

    bytecode = tmp_path / "bytecode"
    bytecode.mkdir()
    (bytecode / "sitecustomize.py").write_text("print('bytecode ran')\n")
    compileall.compile_file(str(bytecode / "sitecustomize.py"), legacy=True, quiet=1)
    os.remove(bytecode / "sitecustomize.py")

    archive = tmp_path / "image.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("sitecustomize.py", "print('zip ran')\n")

    namespace = tmp_path / "namespace"  # a directory without __init__: nothing to run
    (namespace / "sitecustomize").mkdir(parents=True)

    for entry, ran, origin in ((package, "package ran", package / "sitecustomize" / "__init__.py"),
                               (bytecode, "bytecode ran", bytecode / "sitecustomize.pyc"),
                               (archive, "zip ran", archive / "sitecustomize.py"),
                               (namespace, None, None)):
        out = python(tmp_path, CHAINED, f"{BOOTSTRAP_DIR}{os.pathsep}{entry}").splitlines()
        assert out == ([ran] if ran else []) + [str(origin)], entry
