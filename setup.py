"""The package list, found by discovery; everything else is declared in pyproject.toml.

pyproject.toml can list packages or discover them, not both, and the bootstrap is a package no
directory search finds: it ships from sitecustomize/ as ``primus_lens_inject._bootstrap``
(``[tool.setuptools.package-dir]``), so a user's site-packages never holds a top-level
``sitecustomize`` that would shadow the system's. Every other package is discovered, so a new
subpackage can never be left out of the wheel.
"""

from setuptools import find_packages, setup

setup(packages=[*find_packages(include=["primus_lens_inject", "primus_lens_inject.*"]),
                "primus_lens_inject._bootstrap"])
