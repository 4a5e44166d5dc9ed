"""``primus-lens report`` of real records, opened in real headless Chromium (tests/view/browser.py).

Each page must open with no console message (the page logs nothing itself: any message is an
error, a refused script included), draw every chart (painted pixels in its canvas, and more than
one colour inside its rectangle on a screenshot: not blank), show one heatmap row per rank, flag the stalled
rank and the odd one out, and show in each chart's legend, under the cursor, the record's value.
The hostile page is built from record files written by hand: nothing in them may run.
"""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path
from typing import Any, Dict, List

import pytest
from browser import Page, need_chromium, open_page
from conftest import TRAIN_PYTHON, run_cli, strict_json, training_env

from primus_lens_inject.capture.reconcile import fold
from primus_lens_inject.devserver.receiver import Receiver

HERE = Path(__file__).resolve().parent
SCRIPTS = HERE.parent / "scripts"
WORLD = 3
STALLED, HOT = 2, 1


def record_rows(out: Path, node: int = 0, rank: int = 0) -> List[Dict[str, Any]]:
    """A record as wandb's history (amendments folded), as the test reads it."""
    path = out / f"node_{node}" / f"rank_{rank}" / "wandb_metrics.jsonl"
    return fold(strict_json(line) for line in path.read_text().splitlines())


def report(roots: List[Path], page: Path, env: Dict[str, str]) -> List[str]:
    """Run the command as users do; its stdout lines (the path, then the summary)."""
    done = run_cli(["report", *map(str, roots), "-o", str(page)], env)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(str(page)) and len(lines) == 6, done.stdout
    return lines


def drawn_everything(page: Page) -> None:
    """No console message, no script error; every chart and heatmap painted."""
    assert page.console == [], page.console
    assert page.selfcheck["errors"] == []
    for chart in page.selfcheck["charts"] + page.selfcheck["heatmaps"]:
        name = chart.get("key") or chart["name"]
        assert chart["painted"] > 0, name
        assert page.pixels_in(chart["rect"]) > 1, f"{name} is blank on the screenshot"


def legends_match(page: Page, rows: List[Dict[str, Any]]) -> int:
    """Every chart of a key of ``rows`` shows, at its cursor's step, the record's value; the
    number of charts checked."""
    by_step = {(row["run_id"], row["step"]): row["data"] for row in rows}
    checked = 0
    for chart in page.selfcheck["charts"]:
        for run, shown in zip(chart["runs"], chart["legend"][1:]):
            data = by_step.get((run, chart["x"]))
            if data is None or chart["key"] not in data:
                continue
            assert float(shown) == data[chart["key"]], (chart["key"], shown)
            checked += 1
    return checked


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A three-process job: every rank's pulse (one stall), rank 0's run sent to a receiver."""
    tmp = tmp_path_factory.mktemp("job")
    with Receiver(port=0) as server:
        env = training_env(tmp, {
            "PRIMUS_LENS_WANDB_API_REPORTING": "true", "PRIMUS_LENS_API_BASE_URL": server.url,
            "POD_NAME": "trainer-0", "POD_UID": "0f4f6c1d-report", "WORLD_SIZE": str(WORLD),
            "PRIMUS_LENS_PULSE": "false", "PRIMUS_LENS_WANDB_FLUSH_INTERVAL": "0.2",
            "LENS_TEST_STALLED_RANK": str(STALLED), "LENS_TEST_HOT_RANK": str(HOT)})
        procs = [subprocess.Popen([TRAIN_PYTHON, str(HERE / "job_process.py")], cwd=tmp,
                                  env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for rank in range(WORLD)]
        for proc in procs:
            _out, err = proc.communicate(timeout=180)
            assert proc.returncode == 0, err[-3000:]
    return tmp


def test_a_job_with_a_stall_shows_every_rank_the_stall_and_the_odd_one(job: Path) -> None:
    need_chromium()
    lines = report([job / "out"], job / "page.html", training_env(job))
    assert lines[1].strip() == f"runs:     1 ({record_rows(job / 'out')[0]['run_id']}) over " \
        + lines[1].split(" over ")[1]
    assert "ranks:    3 on 1 node(s), 3 rank directories, pulse from 3" in lines[2]
    assert "rows:     60 (0 unreadable lines skipped)" in lines[3]
    assert "stalls:   1 (ranks 0, 1, 2)" in lines[4]
    assert "lens: 60 acknowledged, 0 pending, 0 dropped" in lines[5]

    page = open_page(job / "page.html", job)
    drawn_everything(page)
    heatmaps = page.selfcheck["heatmaps"]
    assert [h["name"] for h in heatmaps] == ["step_rate", "gpu_util", "gpu_power", "gpu_memory",
                                             "gpu_temperature", "host_cpu"]
    for heatmap in heatmaps:
        assert heatmap["rows"] == heatmap["drawn_rows"] == heatmap["ranks"] == WORLD
        assert heatmap["stalled_marked"] == [0, 1, 2]
    assert next(h for h in heatmaps if h["name"] == "gpu_temperature")["flagged"] == [HOT]
    assert all(h["flagged"] == [] for h in heatmaps if h["name"] != "gpu_temperature")
    assert page.selfcheck["stalls"] == [{"ranks": [0, 1, 2], "odd": [STALLED],
                                         "own_hidden": [True] * WORLD, "odd_marked": [STALLED]}]
    assert "in read_batch" in page.dom and "in wait_for_peers" in page.dom
    # each rank's column: the main thread first, the pulse thread that took the stacks last,
    # behind a closed toggle
    assert page.dom.count("1 primus-lens thread(s)") == WORLD
    for rank in range(WORLD):
        column = page.dom.split(f'data-rank="{rank}"', 1)[1]
        assert column.index("[MainThread]") < column.index("own-threads") \
            < column.index("[primus-lens-pulse]"), column[:3000]
    keys = {c["key"] for c in page.selfcheck["charts"]}
    assert {"train/loss", "train/lr", "eval/accuracy", "step_rate"} <= keys
    assert legends_match(page, record_rows(job / "out")) >= 3


def test_a_followed_tensorboard_run_and_a_run_with_media(tmp_path: Path) -> None:
    """wandb's own rows (tensorboard's, folded from amendments) and media, histograms and
    tables (listed, not charted), two roots in one page."""
    need_chromium()
    probe = subprocess.run([TRAIN_PYTHON, "-c", "import torch, tensorboard"], capture_output=True,
                           env=training_env(tmp_path, bootstrap=False), timeout=120)
    if probe.returncode:
        pytest.skip("torch and tensorboard are not installed for the training interpreter")
    media = textwrap.dedent("""
        import math, wandb
        run = wandb.init(project="lens-media")
        for i in range(12):
            run.log({"loss": 1.0 / (i + 1), "hist/weights": wandb.Histogram([i, i + 1, i + 2]),
                     "table/samples": wandb.Table(columns=["a"], data=[[i]]),
                     "media/page": wandb.Html("<b>step</b>"), "note": f"step {i}",
                     "odd/value": math.nan if i == 3 else float(i)})
        print("logged", run.id, flush=True)
        run.finish()
    """)
    runs = {"tb": [str(SCRIPTS / "tensorboard_run.py")], "media": ["-c", media]}
    quiet_pulse = {"PRIMUS_LENS_PULSE": "false"}  # the pulse's page is the job test's
    procs = {}
    for name, args in runs.items():
        (tmp_path / name).mkdir()
        procs[name] = subprocess.Popen([TRAIN_PYTHON, *args], cwd=tmp_path / name,
                                       env=training_env(tmp_path / name, quiet_pulse),
                                       stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True)
    for proc in procs.values():
        _out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err[-3000:]
    roots = [tmp_path / name / "out" for name in runs]
    lines = report(roots, tmp_path / "page.html", training_env(tmp_path))
    assert "runs:     2" in lines[1] and "rows:     32 (0 unreadable" in lines[3]

    page = open_page(tmp_path / "page.html", tmp_path)
    drawn_everything(page)
    keys = {c["key"] for c in page.selfcheck["charts"]}
    assert {"train/loss", "train/lr", "loss", "odd/value"} <= keys
    rows = record_rows(roots[0]) + record_rows(roots[1])
    assert legends_match(page, rows) >= 4
    for shown in ("hist/weights", "histogram", "table/samples", "media/page", "odd/value ×1"):
        assert shown in page.dom
    assert page.selfcheck["heatmaps"] == [] and page.selfcheck["stalls"] == []


HOSTILE_KEY = "<img src=x onerror=\"document.title='pwned'\">"
SCRIPT_KEY = "</script><script>document.title='pwned'</script><!--"


def _hostile_record(rank_dir: Path) -> int:
    """A record no writer of ours would write; the number of lines a reader must skip."""
    good = {"timestamp": 1.7e9, "run_id": "run\u2028</script>", "who": "<b>who</b>", "version": 2}
    lines = [json.dumps({**good, "step": step, "data": {
        HOSTILE_KEY: step, SCRIPT_KEY: -step, "x\u2028y": "NaN" if step == 2 else step * 0.5,
        "inf": "Infinity", "text": "<script>document.title='pwned'</script>"}})
        for step in range(5)]
    lines.append(json.dumps({**good, "step": 5, "version": 99, "future": {"a": 1},
                             "data": {HOSTILE_KEY: 5}}))  # a newer version: read for its fields
    skipped = [
        '{"timestamp": 1.7e9, "step": 6, "run_id": "r", "who": "", "version": "x", "data": {}}',
        "not json at all <script>document.title='pwned'</script>",
        '{"timestamp": NaN, "step": 7, "run_id": "r", "who": "", "data": {"a": 1}}',
        '["a list"]',
        '{"timestamp": 1.7e9, "step": 8, "run_id": "r", "who": "", "data": {"a"',  # torn
    ]
    rank_dir.mkdir(parents=True)
    (rank_dir / "wandb_metrics.jsonl").write_text("\n".join(lines + skipped))
    (rank_dir / "wandb_metrics.writers").mkdir()
    (rank_dir / "wandb_metrics.writers" / "aaaaaaaaaaaa.json").write_text(json.dumps(
        {"identity": {"pod_name": HOSTILE_KEY}, "rank": 0, "report": True,
         "key_prefix": SCRIPT_KEY, "reason": HOSTILE_KEY}))
    (rank_dir / "wandb_metrics.status.json").write_text(json.dumps(
        {"endpoint": SCRIPT_KEY, "requests": 3, "rows_sent": 2, "acked_offset": 10,
         "dropped": {HOSTILE_KEY: 1}, "last_error": SCRIPT_KEY, "state": HOSTILE_KEY}))
    (rank_dir / "wandb_metrics.detections").mkdir()
    (rank_dir / "wandb_metrics.detections" / "1.0-1-run1.json").write_text(json.dumps(
        {"hints": {"wrapper_frameworks": [HOSTILE_KEY], "base_frameworks": ["megatron"],
                   "confidence": "high", "primary_indicators": ["import:megatron.core"]},
         "evidence": {"wandb": {"id": SCRIPT_KEY}}}))
    pulse = [json.dumps({"kind": "pulse", "version": 1, "time": 1.7e9 + i, "pid": 1, "rank": 0,
                         "local_rank": 0, "node": 0, "world_size": 1, "steps": i,
                         "figures": {"_primus_gpu_util_percent": "NaN"}}) for i in range(3)]
    pulse += [json.dumps({"kind": "stall", "version": 7, "time": 1.7e9 + 3, "pid": 1, "rank": 0,
                          "local_rank": 0, "node": 0, "world_size": 1, "since": 1.7e9,
                          "threshold": 1, "steps": 2, "stacks": SCRIPT_KEY + HOSTILE_KEY}),
              '{"kind": "pulse", "version": 1, "time": "soon"}', '{"kind": "pul',
              '{"kind": "pulse", "version": 1, "time": 1, "pid": 1, "rank": NaN, "local_rank": 0,'
              ' "node": 0, "world_size": 1}']
    (rank_dir / "pulse.jsonl").write_text("\n".join(pulse))
    return len(skipped) + 3


def test_hostile_records_render_and_nothing_in_them_runs(tmp_path: Path) -> None:
    need_chromium()
    skipped = _hostile_record(tmp_path / "out" / "node_0" / "rank_0")
    # no root given: the configured one (PRIMUS_LENS_WANDB_OUTPUT_PATH=<tmp>/out), as doctor says
    lines = report([], tmp_path / "page.html", training_env(tmp_path))
    assert f"rows:     6 ({skipped} unreadable lines skipped)" in lines[3]
    text = (tmp_path / "page.html").read_text()
    assert text.count("</script>") == 3  # the JSON block, uPlot's, the page's: nothing else ends one
    assert "<!--" not in text and "\u2028" not in text and "<img" not in text

    page = open_page(tmp_path / "page.html", tmp_path)
    assert page.console == [] and page.selfcheck["errors"] == []
    assert "<title>primus-lens report</title>" in page.dom and "pwned</title>" not in page.dom
    assert "<img" not in page.dom  # the key is text on the page, never an element
    assert "&lt;img src=x onerror=" in page.dom
    assert page.selfcheck["skipped"] == skipped
    assert "import:megatron.core" in page.dom  # a waiting detection report's verdict and why
    assert f"{skipped} line(s) could not be read and were skipped" in page.dom
    keys = {c["key"] for c in page.selfcheck["charts"]}
    assert {HOSTILE_KEY, SCRIPT_KEY, "x\u2028y"} <= keys
    for chart in page.selfcheck["charts"]:
        assert chart["painted"] > 0, chart["key"]
    assert len(page.selfcheck["stalls"]) == 1
