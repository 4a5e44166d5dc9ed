"""Tests that share a module-scoped fixture run on one pytest-xdist worker, one after another.

``make test`` runs the suite in parallel workers (``-n``, ``--dist loadgroup``). A worker sets a
module-scoped fixture up (a built image, a 4-rank torchrun job, a rendered chart) for each run of
that module's tests it is given, so the tests of a module that use one form a group: the group
goes to one worker as a whole and its fixture is set up once, as in a serial run. Every other
test is handed to whichever worker is free, a few at a time. Nobody marks a test by hand: a test
is grouped when its fixtures include one of module scope (``mark``); an ``xdist_group`` mark
written in a test module counts as well.

pytest-xdist's own ``loadgroup`` tells its controller about a group by renaming the test's node
id, which pytest 9.2 no longer lets a plugin do (the tests would be spread, each worker setting
the fixture up again). So each worker writes the groups it collected to a file in a directory the
controller names (``configure_node``, ``record``), and the controller's scheduler, pytest-xdist's
``LoadScopeScheduling`` with every test its own scope except the grouped ones, reads them
(``scheduler``). Without pytest-xdist, or run serially (``-n 0``), none of this does anything.
"""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

_WORKER_INPUT = "primus_lens_groups"  # where a worker writes its groups
_DIRECTORY = pytest.StashKey[str]()


def mark(items: List[pytest.Item]) -> None:
    """An ``xdist_group`` mark named after its module on each test that uses a module-scoped
    fixture."""
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        if info is not None and any(definition.scope == "module"
                                    for name in info.names_closure
                                    for definition in info.name2fixturedefs.get(name, ())):
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))


def _group(item: pytest.Item) -> Optional[str]:
    names = {str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
             for mark in item.iter_markers("xdist_group")}
    return "_".join(sorted(names)) or None


def configure_node(node: Any) -> None:
    """On the controller, for each worker it starts: the directory to write the groups to."""
    config = node.config
    if _DIRECTORY not in config.stash:
        directory = tempfile.mkdtemp(prefix="primus-lens-xdist-")
        atexit.register(shutil.rmtree, directory, ignore_errors=True)
        config.stash[_DIRECTORY] = directory
    node.workerinput[_WORKER_INPUT] = config.stash[_DIRECTORY]


def record(session: pytest.Session) -> None:
    """On a worker, once it has collected: {node id: group} of its grouped tests, into that
    directory (before the worker tells the controller it has collected)."""
    given = getattr(session.config, "workerinput", {})
    if _WORKER_INPUT not in given:
        return
    groups = {item.nodeid: group for item in session.items if (group := _group(item))}
    path = Path(given[_WORKER_INPUT]) / f"{given['workerid']}.json"
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(groups))
    partial.replace(path)


def scheduler(config: pytest.Config, log: Any) -> Any:
    """For ``--dist loadgroup``: the scheduler that keeps each group on one worker."""
    if config.getoption("dist") != "loadgroup" or _DIRECTORY not in config.stash:
        return None
    from xdist.scheduler import LoadScopeScheduling

    directory = Path(config.stash[_DIRECTORY])

    class GroupScheduling(LoadScopeScheduling):  # type: ignore[misc]
        _groups: Optional[Dict[str, str]] = None

        def _split_scope(self, nodeid: str) -> str:
            if self._groups is None:  # asked only once every worker has collected
                self._groups = {}
                for path in sorted(directory.glob("*.json")):
                    self._groups.update(json.loads(path.read_text()))
            return self._groups.get(nodeid, nodeid)

    return GroupScheduling(config, log)
