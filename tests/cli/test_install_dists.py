"""The sdist and the wheel hold exactly the sources: every module of the package (found by
walking the tree, so a new subpackage cannot be forgotten), the bootstrap as
``primus_lens_inject._bootstrap``, and nothing else (no top-level ``sitecustomize``, no tests)."""

from __future__ import annotations

import tarfile
import zipfile
from pathlib import Path
from typing import Set

import installs
from conftest import ROOT

VERSION = "0.1.0"


def source_files(directory: str) -> Set[str]:
    """Files under ``directory`` of the checkout as a build sees them (no bytecode caches)."""
    base = ROOT / directory
    return {path.relative_to(base).as_posix() for path in base.rglob("*")
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"}


def test_wheel_and_sdist_hold_exactly_the_sources(tmp_path: Path) -> None:
    sdist, wheel = installs.build_dists(tmp_path)
    package = {f"primus_lens_inject/{name}" for name in source_files("primus_lens_inject")}
    bootstrap = source_files("sitecustomize")
    assert bootstrap == {"__init__.py", "sitecustomize.py"}
    assert "primus_lens_inject/metrics/gpu/__init__.py" in package

    dist_info = f"primus_lens_inject-{VERSION}.dist-info"
    with zipfile.ZipFile(wheel) as whl:
        in_wheel = set(whl.namelist())
        assert whl.read(f"{dist_info}/top_level.txt").decode().split() == ["primus_lens_inject"]
        assert whl.read(f"{dist_info}/entry_points.txt").decode().split() == [
            "[console_scripts]", "primus-lens", "=", "primus_lens_inject.cli.main:main"]
    assert in_wheel == (package | {f"primus_lens_inject/_bootstrap/{name}" for name in bootstrap}
                        | {f"{dist_info}/{name}" for name in ("METADATA", "WHEEL", "RECORD",
                                                              "entry_points.txt", "top_level.txt")})

    top = f"primus_lens_inject-{VERSION}"
    egg_info = "primus_lens_inject.egg-info/{}"
    with tarfile.open(sdist) as tar:
        in_sdist = {member.name[len(top) + 1:] for member in tar.getmembers() if member.isfile()}
    assert in_sdist == (package | {f"sitecustomize/{name}" for name in bootstrap}
                        | {"README.md", "pyproject.toml", "setup.py", "setup.cfg", "MANIFEST.in",
                           "PKG-INFO"}
                        | {egg_info.format(name) for name in (
                            "PKG-INFO", "SOURCES.txt", "dependency_links.txt", "entry_points.txt",
                            "requires.txt", "top_level.txt")})
