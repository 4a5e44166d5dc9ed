"""``make demo`` end to end: ``examples/demo.py`` run as ``make demo`` runs it (by the Python that
has the injector installed, here the layout under test), on a shorter job.

What it prints is checked against what is on disk afterwards: each rank's record, the receiver's
SQLite file (both sinks' arrivals) and the report page.
"""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
from collections import Counter
from pathlib import Path
from typing import Dict, List

from conftest import ROOT, TRAIN_PYTHON, training_env

RANKS, STEPS = 4, 40
# "      rank  run       rows  host samples  Lens rows  OTLP rows", then one line per rank
_TABLE_ROW = re.compile(r"^ +(\d+)  (\w+) +(\d+) +(\d+) +(\d+) +(\d+)$", re.M)


def _record(out: Path, rank: int) -> List[dict]:
    path = out / "metrics" / "node_0" / f"rank_{rank}" / "wandb_metrics.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return [line for line in lines if not line.get("amends")]


def test_demo_job_reaches_both_sinks_per_rank_and_ends_with_the_report(tmp_path: Path) -> None:
    out = tmp_path / "demo-output"
    proc = subprocess.run(
        [TRAIN_PYTHON, str(ROOT / "examples" / "demo.py"), "--out", str(out), "--steps", str(STEPS),
         "--step-seconds", "0.075", "--stall-seconds", "4", "--timeout", "120"],
        cwd=tmp_path, env=training_env(tmp_path, bootstrap=False), capture_output=True, text=True,
        timeout=170)
    printed = proc.stdout
    assert proc.returncode == 0, printed[-4000:] + proc.stderr[-4000:]
    assert [line[:5] for line in printed.splitlines() if line.startswith("[")] == \
        ["[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]"]

    table: Dict[int, tuple] = {int(m[1]): (m[2], *map(int, m.groups()[2:]))
                               for m in _TABLE_ROW.finditer(printed)}
    assert sorted(table) == list(range(RANKS))
    db = sqlite3.connect(out / "receiver.db")
    lens_rows: Dict[str, Dict[int, dict]] = {}
    for run_id, step, data in db.execute("SELECT run_id, step, data FROM logs"):
        lens_rows.setdefault(run_id, {})[step] = json.loads(data)
    otlp_rows = Counter(json.loads(resource)["primus.rank"]
                        for (resource,) in db.execute("SELECT resource FROM otlp WHERE name = 'wandb.step'"))
    for rank in range(RANKS):
        run_id, rows, samples, lens, otlp = table[rank]
        record = _record(out, rank)
        assert {line["run_id"] for line in record} == {run_id}
        assert rows == len(record) == STEPS == lens == otlp == otlp_rows[rank]
        assert samples >= 2  # enrichment on: a new sample every second of a 3 s loop
        # The Lens rows are the record's, under the rank's label (per-rank runs in one group).
        assert {step: data[f"rank{rank}/train/loss"] for step, data in lens_rows[run_id].items()} == \
            {line["step"]: line["data"]["train/loss"] for line in record}
    total = RANKS * STEPS
    assert f"every recorded row reached both sinks ({total} Lens rows, {total} OTLP rows" in printed

    detections = [json.loads(data)["hints"] for (data,) in db.execute("SELECT data FROM detections")]
    assert len(detections) == RANKS
    assert {(tuple(h["wrapper_frameworks"]), tuple(h["base_frameworks"])) for h in detections} == {((), ())}
    assert f"{RANKS} reports (one per wandb run), all alike: wrapper [], base [], confidence low" in printed
    assert "the project name 'lens-demo' names none" in printed

    # The report's own lines (the page's path, then its summary) close the demo; the demo's paths
    # are relative to where it was started.
    html = out / "report.html"
    assert html.read_text().lstrip().lower().startswith("<!doctype html")
    report_lines = printed.split("[5/5]", 1)[1].splitlines()
    assert (tmp_path / report_lines[1].split()[0]).resolve() == html.resolve()
    assert printed.rstrip().endswith(f"done: open {html.relative_to(tmp_path)} in a browser")
