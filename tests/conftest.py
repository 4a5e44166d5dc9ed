"""Shared test helpers: training scripts run as real subprocesses with only PYTHONPATH set.

What those subprocesses run is the injector as users install it (``tests/installs.py``), built
from the working tree at the start of the session; ``PRIMUS_LENS_TEST_INSTALL`` picks the way:

    checkout  (default) the bootstrap in sitecustomize/, the interpreter running pytest (editable)
    wheel     the built wheel, pip-installed into a fresh virtualenv  (``make test``'s main pass)
    image     the tree the Dockerfile lays out, run by a virtualenv without our package

``PRIMUS_LENS_TEST_PYTHON`` picks the base interpreter (the wandb under test); ``make test`` runs
the ``wandb_compat`` and ``layouts`` tests a second time, with the virtualenv holding the oldest
supported wandb, in the image layout.
"""

from __future__ import annotations

import atexit
import itertools
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import installs
import process_marker
import pytest
import xdist_groups

ROOT = Path(__file__).resolve().parent.parent
BASE_PYTHON = os.environ.get("PRIMUS_LENS_TEST_PYTHON") or sys.executable
INSTALL_MODE = os.environ.get("PRIMUS_LENS_TEST_INSTALL") or "checkout"


# Under pytest-xdist the controller imports this module before it starts its workers, so it
# builds the layout once and hands it down in this variable; every worker uses that one (the
# wheel built once, and no two builds writing the checkout's egg-info at the same time).
_SHARED_LAYOUT = "PRIMUS_LENS_TEST_LAYOUT"


def _prepare() -> installs.Layout:
    shared = installs.Layout.from_json(os.environ.get(_SHARED_LAYOUT, ""))
    if shared is not None and shared.mode == INSTALL_MODE:
        return shared
    workdir = Path(tempfile.mkdtemp(prefix=f"primus-lens-{INSTALL_MODE}-"))
    workdir.chmod(0o755)  # another user runs the installed package too (tests/agent/*_users.py)
    atexit.register(shutil.rmtree, workdir, ignore_errors=True)  # the process that made it
    layout = installs.prepare(INSTALL_MODE, BASE_PYTHON, workdir)
    os.environ[_SHARED_LAYOUT] = layout.to_json()
    return layout


LAYOUT = _prepare()
BOOTSTRAP_DIR = LAYOUT.bootstrap_dir
TRAIN_PYTHON = LAYOUT.python

# Variables of the developer's shell that would change what a training subprocess does.
_SCRUB_PREFIXES = ("PRIMUS_LENS_", "WANDB_", "RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK",
                   "SLURM_", "OMPI_", "PET_", "GROUP_RANK", "POD_", "WORKLOAD_UID", "CUDA_",
                   "HIP_", "ROCR_", "PYTHON")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "wandb_compat: also run against the oldest supported wandb")
    config.addinivalue_line("markers", "layouts: also run against the image layout")
    config.addinivalue_line("markers", "process: starts a subprocess (set automatically; "
                                       "-m 'not process' runs the fast in-process tests only)")


def pytest_collection_modifyitems(items: List[pytest.Item]) -> None:
    process_marker.mark(items)
    xdist_groups.mark(items)


# pytest-xdist: tests that share a module-scoped fixture go to one worker (tests/xdist_groups.py)
@pytest.hookimpl(tryfirst=True)  # before the worker says it has collected
def pytest_collection_finish(session: pytest.Session) -> None:
    xdist_groups.record(session)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    xdist_groups.configure_node(node)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    return xdist_groups.scheduler(config, log)


def pytest_report_header(config: pytest.Config) -> str:
    return (f"primus-lens install under test: {LAYOUT.mode} (training python {TRAIN_PYTHON}, "
            f"bootstrap {BOOTSTRAP_DIR})")


def wait_until(predicate: Callable[[], Any], timeout: float = 120.0, interval: float = 0.1) -> Any:
    """Call ``predicate`` until it returns something true, and return that; after ``timeout``
    seconds its last answer (false: the caller's assertion fails).  Every wait of the tests is
    bounded and generous, and none is timed: on a loaded machine only the failures wait long."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()


_PORT_SLICE = 300  # loopback ports each xdist worker draws from (see free_port)
_ports = itertools.count(random.randrange(_PORT_SLICE))


def free_port() -> int:
    """A loopback port that nothing listens on now: for a server a test starts later, or for an
    address that must stay dead. It comes from below the kernel's ephemeral range, where neither
    a bind to port 0 nor an outgoing connection ever lands, and from a slice of that space of
    this xdist worker's own, so that no server of a test running beside this one (a receiver, an
    agent, wandb's service) can take it in the meantime. Without such room, the kernel's pick."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 0
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    first = 10000 + int(worker[2:] if worker[2:].isdigit() else 0) * _PORT_SLICE
    candidates = ([first + next(_ports) % _PORT_SLICE for _ in range(_PORT_SLICE)]
                  if first + _PORT_SLICE <= low else [0])
    for port in candidates:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue  # in use (or lingering): the next one
            return sock.getsockname()[1]
    raise RuntimeError(f"no free loopback port in {first}..{first + _PORT_SLICE - 1}")


def require(tool: str, usable: bool, why: str) -> None:
    """Skip when ``tool`` cannot run here, unless the run demands it: ``make test`` lists the
    programs it installed in ``PRIMUS_LENS_REQUIRE_TOOLS`` (the Makefile, mk/*.mk), and there a
    missing one fails the test instead of skipping it."""
    if usable:
        return
    required = os.environ.get("PRIMUS_LENS_REQUIRE_TOOLS", "").split()
    if tool in required:
        pytest.fail(f"{tool} is required by this run (PRIMUS_LENS_REQUIRE_TOOLS) but {why}")
    pytest.skip(f"{tool} unavailable: {why}")


def run_cli(args: List[str], env: Dict[str, str], **kwargs) -> subprocess.CompletedProcess:
    """``primus-lens ARGS`` the way a user of the layout under test runs it (by default in a
    directory of its own: ``python -m`` in the checkout would import the checkout's package)."""
    return subprocess.run([*LAYOUT.cli, *args], env=installs.cli_env(LAYOUT, env),
                          capture_output=True, text=True,
                          **{"timeout": 120, "cwd": tempfile.gettempdir(), **kwargs})


def strict_json(line: str) -> dict:
    """Parse like a strict consumer (jq, Go): NaN/Infinity tokens are errors."""
    def reject(token: str) -> None:
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(line, parse_constant=reject)


@dataclass
class Training:
    """One finished training subprocess and where it wrote."""

    proc: subprocess.CompletedProcess
    tmp: Path
    output: Path

    @property
    def stderr(self) -> str:
        return self.proc.stderr

    def record(self, node: int = 0, rank: int = 0) -> List[dict]:
        path = self.output / f"node_{node}" / f"rank_{rank}" / "wandb_metrics.jsonl"
        if not path.exists():
            return []
        return [strict_json(line) for line in path.read_text().splitlines()]

    def injector_lines(self) -> List[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("primus-lens:")]


def training_env(tmp: Path, extra: Optional[Dict[str, str]] = None,
                 bootstrap: bool = True) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUB_PREFIXES)}
    env.update({
        "HOME": str(tmp / "home"),
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(tmp),
        "WANDB_SILENT": "true",
        # wandb's console capture forwards the script's stdout/stderr through a pipe it can cut
        # at finish on a loaded machine (lines the tests read went missing): not what is tested
        "WANDB_CONSOLE": "off",
        "WANDB_DISABLE_GIT": "true",
        "WANDB__DISABLE_STATS": "true",
        "PRIMUS_LENS_WANDB_OUTPUT_PATH": str(tmp / "out"),
        "PRIMUS_LENS_WANDB_API_REPORTING": "false",
    })
    (tmp / "home").mkdir(exist_ok=True)
    if bootstrap:
        env["PYTHONPATH"] = str(BOOTSTRAP_DIR)
    env.update(extra or {})
    return {k: v for k, v in env.items() if v is not None}


def run_training(tmp: Path, script: str, env: Optional[Dict[str, str]] = None,
                 bootstrap: bool = True, timeout: float = 120, python: str = TRAIN_PYTHON,
                 args: Optional[List[str]] = None) -> Training:
    path = tmp / "train.py"
    path.write_text(textwrap.dedent(script))
    proc = subprocess.run([python, str(path), *(args or [])], cwd=tmp, capture_output=True,
                          text=True, timeout=timeout, env=training_env(tmp, env, bootstrap))
    return Training(proc, tmp, tmp / "out")


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel under test (built from this checkout when the session did not build one), for
    tests that install it into virtualenvs of their own."""
    return LAYOUT.wheel or installs.build_dists(tmp_path_factory.mktemp("dist"))[1]


@pytest.fixture
def train(tmp_path: Path):
    """``train(script, env=..., expect_rc=0)`` runs a script and checks its exit status."""
    def runner(script: str, env: Optional[Dict[str, str]] = None, expect_rc: Optional[int] = 0,
               **kwargs) -> Training:
        result = run_training(tmp_path, script, env, **kwargs)
        if expect_rc is not None:
            assert result.proc.returncode == expect_rc, result.stderr[-4000:]
        return result

    return runner


def wandb_version(python: str = TRAIN_PYTHON) -> tuple:
    out = subprocess.run([python, "-c", "import wandb; print(wandb.__version__)"],
                         capture_output=True, text=True, timeout=60,
                         env={k: v for k, v in os.environ.items() if not k.startswith("PYTHON")})
    return tuple(int(p) for p in out.stdout.strip().split(".")[:3])
