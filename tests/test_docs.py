"""The README documents every variable with its real default, and the two set-up commands; every
citation in the repository resolves inside it.

Code, tests and docs cite the server contract as ``spec §N`` (docs/server-contract.md) and other
pages by name (``reporting.md``, ``reliability.md §5``, markdown links with anchors). Material
that lives beside the repository (a spec folder, research notes) is not there for a reader of a
release, so no citation may point at it: each must name a file, a section or a heading that
exists here.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple

import pytest
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


def test_make_bench_runs_every_benchmark():
    """``make bench`` runs each ``bench/*.py`` (a new benchmark is not forgotten): what make would
    run, without running it (``make -n``)."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    planned = subprocess.run(["make", "-n", "bench"], cwd=ROOT, capture_output=True, text=True,
                             timeout=120)
    assert planned.returncode == 0, planned.stderr
    run = set(re.findall(r"\bbench/([a-z_]+\.py)\b", planned.stdout))
    benches = {path.name for path in (ROOT / "bench").glob("*.py") if not path.name.startswith("_")}
    assert run == benches, f"not run by make bench: {sorted(benches - run)}"


CONTRACT = ROOT / "docs" / "server-contract.md"
# Where citations may appear: everything of ours that a release or a checkout holds.
SCANNED_FILES = ("README.md", "Dockerfile", "Makefile", "MANIFEST.in", "pyproject.toml", "setup.py")
SCANNED_DIRS = ("primus_lens_inject", "sitecustomize", "tests", "bench", "examples", "docs",
                "charts", "mk")
SCANNED_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".tpl", ".txt", ".json", ".mk", ".toml", ".in",
                    ""}
_SECTION = r"§\d+(?:\.\d+)?"
_GAP = r"\s*(?:#\s*)?"  # a line break, also one inside a Python comment
# "spec §4", "spec §4, §10.1", "spec §1-§7", "Spec §1.4 and §3", "spec\n# §9.8"
SPEC_CITATION = re.compile(rf"\b[Ss]pec{_GAP}{_SECTION}(?:{_GAP}(?:,|-|–|and){_GAP}{_SECTION})*")
# "reliability.md §5", "[reliability.md](reliability.md) §5"
PAGE_SECTION = re.compile(r"([\w-]+\.md)(?:\]\([^)]*\)|\))?\s+§(\d+(?:\.\d+)?)")
MD_NAME = re.compile(r"(?<![\w/.-])((?:\.\./)*[\w./-]*[\w-]\.md)\b")
MD_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
NUMBERED_HEADING = re.compile(r"^#{2,4} (\d+(?:\.\d+)?)[. ]", re.MULTILINE)


def scanned() -> Iterator[Path]:
    """Our text files, this test excepted (its patterns name what they look for)."""
    paths = [ROOT / name for name in SCANNED_FILES]
    for directory in SCANNED_DIRS:
        paths += sorted(p for p in (ROOT / directory).rglob("*")
                        if p.is_file() and "__pycache__" not in p.parts
                        and p.suffix in SCANNED_SUFFIXES)
    return (p for p in paths if p.is_file() and p != Path(__file__).resolve())


def prose(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def headings(path: Path) -> List[str]:
    """The markdown headings of a page, code blocks left out."""
    found, fenced = [], False
    for line in prose(path).splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,6} ", line):
            found.append(line.lstrip("#").strip())
    return found


def anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def sections(path: Path) -> Set[str]:
    """The section numbers of a page whose headings are numbered ("## 8.", "### 8.1 ...")."""
    return {match.rstrip(".") for match in NUMBERED_HEADING.findall(
        "\n".join("## " + h for h in headings(path)))}


def resolve_page(name: str, cited_from: Path) -> Path:
    """Where a cited page is: beside the citing file, at the top of the repository, in docs/."""
    for base in (cited_from.parent, ROOT, ROOT / "docs"):
        candidate = (base / name).resolve()
        if candidate.is_file() and ROOT in candidate.parents:
            return candidate
    return ROOT / "missing" / name


def where(path: Path, text: str, offset: int) -> str:
    return f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, offset) + 1}"


def test_spec_citations_name_sections_of_the_server_contract():
    existing = sections(CONTRACT)
    assert {"1.1", "1.4", "2", "3", "8.1", "9.6", "10.1", "11"} <= existing
    dangling = []
    for path in scanned():
        text = prose(path)
        for match in SPEC_CITATION.finditer(text):
            for number in re.findall(r"§(\d+(?:\.\d+)?)", match.group()):
                if number not in existing:
                    dangling.append(f"{where(path, text, match.start())}: {match.group()!r}")
    assert dangling == [], "spec §N must name a section of docs/server-contract.md"


def test_cited_pages_and_their_sections_exist_in_the_repository():
    dangling = []
    for path in scanned():
        text = prose(path)
        for match in MD_NAME.finditer(text):
            if not resolve_page(match.group(1), path).is_file():
                dangling.append(f"{where(path, text, match.start())}: {match.group(1)}")
        for match in PAGE_SECTION.finditer(text):
            page = resolve_page(match.group(1), path)
            if page.is_file() and match.group(2) not in sections(page):
                dangling.append(f"{where(path, text, match.start())}: {match.group()!r}")
        for outside in re.finditer(r"\.\./shared/|\bshared/(?:spec|research)/|/work/shared", text):
            dangling.append(f"{where(path, text, outside.start())}: {outside.group()!r}")
    assert dangling == [], "citations must resolve inside the repository"


def test_markdown_links_resolve_to_files_and_headings():
    dangling = []
    for path in scanned():
        if path.suffix != ".md":
            continue
        text = prose(path)
        for match in MD_LINK.finditer(text):
            target = match.group(1)
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            file_part, _, fragment = target.partition("#")
            page = (path.parent / file_part).resolve() if file_part else path
            if not page.exists() or ROOT not in page.parents:
                dangling.append(f"{where(path, text, match.start())}: {target}")
            elif fragment and page.suffix == ".md" and fragment not in map(anchor, headings(page)):
                dangling.append(f"{where(path, text, match.start())}: {target} (no such heading)")
    assert dangling == []


def contract_examples() -> Iterator[Tuple[str, Dict]]:
    """(request type, body) of every JSON example in the contract's section 10."""
    types = {"detection": "DetectionRequest", "metrics": "MetricsRequest", "logs": "LogsRequest",
             "batch": "BatchRequest"}
    text = prose(CONTRACT)
    examples = text[text.index("## 10."):text.index("## 11.")]
    for part in re.split(r"^### ", examples, flags=re.MULTILINE)[1:]:
        endpoint = re.match(r"[\d.]+ `POST wandb/(\w+)`", part)
        for block in re.findall(r"```json\n(.*?)```", part, flags=re.DOTALL):
            assert endpoint, part[:60]
            yield types[endpoint.group(1)], json.loads(block)


def test_the_contracts_example_bodies_pass_the_schema():
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((ROOT / "tests" / "telemetry-api.schema.json").read_text())
    examples = list(contract_examples())
    assert [kind for kind, _ in examples] == ["DetectionRequest", "MetricsRequest", "LogsRequest"]
    for kind, body in examples:
        jsonschema.Draft202012Validator({**schema, "$ref": f"#/$defs/{kind}"}).validate(body)
