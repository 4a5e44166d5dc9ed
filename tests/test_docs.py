"""The README documents every variable with its real default, and the two set-up commands."""

from __future__ import annotations

from conftest import ROOT

from primus_lens_inject.config import markdown_table


def test_readme_configuration_table_is_generated_from_the_code():
    readme = (ROOT / "README.md").read_text()
    assert markdown_table() in readme, (
        "README's configuration table is stale; regenerate it with: python -c "
        "'from primus_lens_inject.config import markdown_table; print(markdown_table())'")


def test_readme_and_ci_use_the_same_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == "exec make test"
