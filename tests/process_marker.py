"""The ``process`` marker, set automatically on every test that starts a subprocess.

``pytest -m "not process"`` then runs the in-process unit tests only: the inner loop of a change,
seconds instead of minutes.  A test is marked when its own code, one of its fixtures, or a helper
of the test suite that either calls (followed through functions and classes defined under
``tests/``) uses ``subprocess`` or ``multiprocessing``, or forks.  Looking at the code instead of
a hand-kept list means a new process test is marked without anyone remembering to.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from types import CodeType
from typing import Any, Callable, Dict, Iterable, Iterator, List, Set

import pytest

TESTS = Path(__file__).resolve().parent
PROCESS_MODULES = {"subprocess", "multiprocessing", "concurrent"}
FORKING = {"fork", "forkpty", "system", "posix_spawn", "posix_spawnp", "spawnv", "spawnve"}

_verdicts: Dict[Any, bool] = {}  # by code object


def _codes(code: CodeType) -> Iterator[CodeType]:
    """The code object and every function, lambda and comprehension nested in it."""
    yield code
    for const in code.co_consts:
        if isinstance(const, CodeType):
            yield from _codes(const)


def _ours(value: Any) -> bool:
    """A function or class defined in the test suite (the ones worth following)."""
    try:
        source = inspect.getsourcefile(value)
    except TypeError:
        return False
    return source is not None and Path(source).resolve().is_relative_to(TESTS)


def _callees(value: Any, names: Iterable[str]) -> Iterable[Callable[..., Any]]:
    """What using ``value`` may run: a function, a class's methods, or (a helper module) those of
    its attributes that the code names."""
    if inspect.ismodule(value):
        return [inspect.unwrap(member) for name in names
                for member in [getattr(value, name, None)] if inspect.isfunction(member)]
    if inspect.isclass(value):
        return [member for member in vars(value).values() if inspect.isfunction(member)]
    return [value] if inspect.isfunction(value) else []


def _spawns(function: Callable[..., Any], seen: Set[CodeType]) -> bool:
    code = getattr(function, "__code__", None)
    if code is None or code in seen:
        return False
    seen.add(code)
    names = function.__globals__
    for nested in _codes(code):
        for name in nested.co_names:
            value = names.get(name)
            if value is None:
                continue
            value = inspect.unwrap(value) if inspect.isfunction(value) else value
            module = value.__name__ if inspect.ismodule(value) else getattr(value, "__module__", "")
            if (module or "").split(".")[0] in PROCESS_MODULES:
                return True
            if value is os and FORKING.intersection(nested.co_names):
                return True
            if _ours(value) and any(_spawns(callee, seen)
                                    for callee in _callees(value, nested.co_names)):
                return True
    return False


def spawns(function: Callable[..., Any]) -> bool:
    """Whether calling ``function`` may start a process."""
    function = inspect.unwrap(function)
    code = getattr(function, "__code__", None)
    if code not in _verdicts:
        _verdicts[code] = _spawns(function, set())
    return _verdicts[code]


def _fixture_functions(item: pytest.Item) -> List[Callable[..., Any]]:
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return []
    return [definition.func for definitions in info.name2fixturedefs.values()
            for definition in definitions]


def mark(items: List[pytest.Item]) -> None:
    """Add ``process`` to every item whose test or fixtures start a process."""
    for item in items:
        function = getattr(item, "function", None)
        if function is None:
            continue
        if any(spawns(candidate) for candidate in [function, *_fixture_functions(item)]):
            item.add_marker(pytest.mark.process)
