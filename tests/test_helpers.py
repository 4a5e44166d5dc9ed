"""The shared test helpers of tests/conftest.py that decide how a test ends: ``require`` (a
missing program skips a test, or fails it where the run demands the program: ``make test``
exports ``PRIMUS_LENS_REQUIRE_TOOLS``) and ``wait_until`` (bounded polling, its answer returned).
"""

from __future__ import annotations

import itertools

import pytest
from conftest import require, wait_until


def test_a_missing_tool_skips_unless_the_run_requires_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PRIMUS_LENS_REQUIRE_TOOLS", raising=False)
    require("chromium", True, "")  # usable: nothing happens
    with pytest.raises(pytest.skip.Exception, match="chromium unavailable: not installed"):
        require("chromium", False, "not installed")
    monkeypatch.setenv("PRIMUS_LENS_REQUIRE_TOOLS", "helm prometheus chromium")
    with pytest.raises(pytest.fail.Exception,
                       match=r"chromium is required by this run .* but not installed"):
        require("chromium", False, "not installed")
    with pytest.raises(pytest.skip.Exception):
        require("image", False, "needs root")  # not in the list: still a skip


def test_wait_until_returns_the_first_true_answer_or_the_last_one() -> None:
    calls = itertools.count(1)
    assert wait_until(lambda: [n for n in [next(calls)] if n >= 3], interval=0) == [3]
    assert wait_until(lambda: 0, timeout=0.05, interval=0.01) == 0
