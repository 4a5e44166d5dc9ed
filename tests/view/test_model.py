"""The report's model, in process: what the page is built from (no browser here).

Downsampling keeps the record's own points and its peaks; amendments fold as capture folds them;
steps missing at a run's stride; outliers and the odd stack against the majority; the JSON block
inert whatever the record holds; the progress line only on a terminal; the wheel carries uPlot.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path
from typing import Any, Dict, List

from primus_lens_inject import recordline
from primus_lens_inject.capture.reconcile import Amendment, fold
from primus_lens_inject.report.detection_queue import DetectionQueue
from primus_lens_inject.view import build_model, summary
from primus_lens_inject.view.downsample import lttb
from primus_lens_inject.view.job import missing_steps
from primus_lens_inject.view.page import VENDOR, embedded_json
from primus_lens_inject.view.progress import Progress
from primus_lens_inject.view.ranks import outliers
from primus_lens_inject.view.records import Row, Skipped, read_rows
from primus_lens_inject.view.series import MIN_POINTS, TOTAL_POINTS, Collector
from primus_lens_inject.view.stalls import odd_ones, ordered, signature


def test_lttb_keeps_the_ends_the_spike_and_only_points_of_the_record() -> None:
    xs = list(range(10_000))
    ys = [float(x % 7) for x in xs]
    ys[4321] = 1000.0
    shown_x, shown_y = lttb(xs, ys, 500)
    assert len(shown_x) == 500 and shown_x[0] == 0 and shown_x[-1] == 9999
    assert 4321 in shown_x and 1000.0 in shown_y
    assert all(ys[x] == y for x, y in zip(shown_x, shown_y))
    assert lttb([1, 2], [3, 4], 500) == ([1, 2], [3, 4])


def test_amendments_fold_into_their_rows_as_capture_folds_them(tmp_path: Path) -> None:
    record = tmp_path / "wandb_metrics.jsonl"
    lines = [recordline.encode("r1", 0, 1.0, {"a": 1, "b": 2}, "w"),
             recordline.encode("r1", 1, 2.0, {"a": 3}, "w"),
             recordline.encode_amendment("r1", Amendment(0, 1.0, {"c": 9}, ["b"]), "w"),
             recordline.encode_amendment("r9", Amendment(5, 1.0, {"c": 9}, []), "w")]
    record.write_bytes(b"".join(lines))
    skipped = Skipped()
    rows = read_rows(str(record), skipped)
    expected = fold(json.loads(line) for line in lines)
    assert [(r.run_id, r.step, r.data) for r in rows] == \
        [(e["run_id"], e["step"], e["data"]) for e in expected]
    assert rows[0].data["c"] == 9 and "b" not in rows[0].data
    assert skipped.counts == {"record: an amendment of a row not in the record": 1}


def test_the_verdict_of_an_acknowledged_report_stays_on_the_page(tmp_path: Path) -> None:
    """An acknowledged report leaves the queue; the kept verdict of its job is shown with its
    evidence beside the ones still waiting (``DetectionQueue.keep_sent``)."""
    record = tmp_path / "out" / "node_0" / "rank_0" / "wandb_metrics.jsonl"
    record.parent.mkdir(parents=True)
    record.write_bytes(recordline.encode("r1", 0, 1.0, {"a": 1}, ""))
    queue = DetectionQueue(str(record))
    hints = {"wrapper_frameworks": ["primus"], "base_frameworks": ["megatron"],
             "confidence": "high", "primary_indicators": ["import:primus", "import:megatron.core"]}
    for run_id in ("r1", "r2"):
        queue.store({"hints": hints, "evidence": {"wandb": {"id": run_id, "config": {}}}}, "k1")
    sent = queue.pending()[0]
    DetectionQueue.keep_sent(sent, DetectionQueue.load(sent)[0], 1.7e9)
    DetectionQueue.remove(sent)
    (record.parent / "wandb_metrics.detections" / "sent" / "old.json").write_text(
        '{"hints": {"base_frameworks": ["jax"]}, "acknowledged": NaN}')
    shown = build_model([str(tmp_path / "out")])["job"]["frameworks"]
    assert [(f["state"], f["run"], f["acknowledged"]) for f in shown] == [
        ("acknowledged", "r1", 1.7e9), ("acknowledged", "", None), ("waiting", "r2", None)]
    assert shown[0]["why"] == hints["primary_indicators"] and shown[0]["bases"] == ["megatron"]
    assert shown[0]["wrappers"] == ["primus"] and shown[0]["confidence"] == "high"
    assert shown[1]["bases"] == ["jax"]


def test_steps_missing_are_counted_at_the_runs_stride() -> None:
    assert missing_steps({0, 10, 20, 50, 60}) == {"stride": 10, "missing": 2, "ranges": [[30, 40]]}
    assert missing_steps(set(range(100))) == {"stride": 1, "missing": 0, "ranges": []}
    assert missing_steps({0, 1, 2, 7}) == {"stride": 1, "missing": 4, "ranges": [[3, 6]]}


def test_an_outlier_needs_a_majority_to_differ_from() -> None:
    assert outliers({0: 60.0, 1: 61.0, 2: 80.0, 3: 60.5}) == [
        {"rank": 2, "value": 80.0, "job_median": 60.75, "direction": "high"}]
    assert outliers({0: 60.0, 1: 80.0}) == []
    assert outliers({0: 1.0, 1: 1.0, 2: 1.0}) == []


def _stack(*frames: str, extra_thread: str = "") -> str:
    text = ""
    if extra_thread:
        text += ("Thread 0x00007f01 (most recent call first):\n"
                 f'  File "/x/{extra_thread}.py", line 3 in {extra_thread}\n'
                 '  File "/usr/lib/python3/threading.py", line 9 in _bootstrap\n\n')
    text += "Current thread 0x00007f02 (most recent call first):\n"
    text += "".join(f'  File "/job/train.py", line {n} in {f}\n' for n, f in enumerate(frames))
    return text + '  File "/job/train.py", line 99 in <module>\n'


def test_the_odd_one_out_is_the_rank_whose_main_thread_differs() -> None:
    waiting = ("all_reduce", "step", "train")
    stacks = {0: _stack(*waiting, extra_thread="wandb_sender"), 1: _stack(*waiting),
              2: _stack("read", "next_batch", "train"), 3: _stack(*waiting, extra_thread="log")}
    assert signature(stacks[0]) == ("/job/train.py:all_reduce", "/job/train.py:step",
                                    "/job/train.py:train")
    assert odd_ones({rank: signature(text) for rank, text in stacks.items()}) == [2]
    assert odd_ones({0: signature(stacks[0]), 2: signature(stacks[2])}) == []  # no majority


HOSTILE = ["</script><script>alert(1)</script>", "<!--", "<img src=x onerror=alert(1)>",
           "a\u2028b\u2029c", "&amp;", "\u00e9"]


def test_a_ranks_stacks_show_the_main_thread_first_and_ours_apart() -> None:
    """The pulse thread takes the stacks, so faulthandler prints it first ("Current thread");
    the page shows the main thread first, the process's other threads next, and the injector's
    own threads apart (by the names in the stall line, else by where the thread's target is)."""
    thread = ('Thread 0x{id:016x} (most recent call first):\n'
              '  File "{file}", line 3 in {func}\n'
              '  File "/usr/lib/python3.9/threading.py", line 9 in run\n'
              '  File "/usr/lib/python3.9/threading.py", line 9 in _bootstrap\n')
    pulse = thread.format(id=1, file="/site/primus_lens_inject/pulse/stacks.py",
                          func="thread_stacks").replace("Thread", "Current thread", 1)
    sender = thread.format(id=2, file="/site/primus_lens_inject/guard.py", func="run_guarded")
    loader = thread.format(id=3, file="/job/data.py", func="prefetch")
    main = ('Thread 0x0000000000000004 (most recent call first):\n'
            '  File "/job/train.py", line 7 in step\n'
            '  File "/job/train.py", line 99 in <module>\n')
    text = "\n".join([pulse, sender, loader, main])
    names = {"0x0000000000000001": "primus-lens-pulse", "0x0000000000000002": "primus-lens-rows",
             "0x0000000000000003": "Thread-3", "0x0000000000000004": "MainThread"}
    shown, own, count = ordered(text, names)
    assert count == 2
    assert [line for line in shown.splitlines() if "Thread 0x" in line or "thread 0x" in line] == [
        "Thread 0x0000000000000004 (most recent call first): [MainThread]",
        "Thread 0x0000000000000003 (most recent call first): [Thread-3]"]
    assert "in prefetch" in shown and "in step" in shown and "primus_lens_inject" not in shown
    assert own.splitlines()[0] == ("Current thread 0x0000000000000001 (most recent call first): "
                                   "[primus-lens-pulse]")
    assert "[primus-lens-rows]" in own and "in run_guarded" in own
    # a line without names: the main thread by its <module>, ours by the package of its target
    shown, own, count = ordered(text, None)
    assert count == 2 and shown.startswith("Thread 0x0000000000000004") and "prefetch" in shown
    assert "in thread_stacks" in own and "in run_guarded" in own
    # text before the first thread (the watchdog's "Timeout" line) stays on top
    assert ordered("Timeout (0:00:10)!\n" + main, {}) == ("Timeout (0:00:10)!\n\n" + main.rstrip("\n"), "", 0)


def test_the_embedded_json_is_inert_and_reads_back_equal() -> None:
    model: Dict[str, Any] = {key: [key, {key: 1.5}] for key in HOSTILE}
    model["nan"] = float("nan")
    text = embedded_json(model)
    for forbidden in ("<", ">", "&", "\u2028", "\u2029"):
        assert forbidden not in text
    assert text.isascii()
    back = json.loads(text)
    assert back["nan"] is None and {k: back[k] for k in HOSTILE} == {k: model[k] for k in HOSTILE}


def test_many_keys_share_a_page_wide_point_budget() -> None:
    collector = Collector()
    rows = [recordline.decode(recordline.encode("r", step, 0.0, {f"k{i}": step * i for i in range(400)})
                              .rstrip(b"\n")) for step in range(6000)]
    for line in rows:
        assert isinstance(line, recordline.Line)
        collector.add(Row(line.run_id, line.who, line.step, line.timestamp, line.data))
    charts = collector.charts()
    assert charts["points_per_line"] == max(MIN_POINTS, TOTAL_POINTS // 400)
    assert all(len(s[0]["x"]) <= charts["points_per_line"] for s in charts["series"].values())


def test_a_key_of_many_runs_is_drawn_as_its_lowest_median_and_highest() -> None:
    collector = Collector()
    for run in range(20):
        for step in range(100):
            collector.add(Row(f"r{run:02d}", "", step, 0.0, {"loss": float(run * 1000 + step)}))
    collector.add(Row("solo", "", 0, 0.0, {"other": 1.5}))
    charts = collector.charts()
    lowest, median, highest = charts["series"]["loss"]
    assert [line["run"] for line in (lowest, median, highest)] == [
        "lowest of 20 runs", "median of 20 runs", "highest of 20 runs"]
    assert lowest["count"] == 2000 and len(lowest["x"]) == 100
    assert lowest["y"][:2] == [0.0, 1.0] and highest["y"][:2] == [19000.0, 19001.0]
    assert median["y"][0] == 9500.0  # between runs 9 and 10
    assert charts["series"]["other"] == [{"run": "solo", "x": [0], "y": [1.5], "count": 1}]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_progress_line_is_drawn_on_a_terminal_only() -> None:
    for stream, shown in ((io.StringIO(), False), (_Terminal(), True)):
        progress = Progress(1000, 2, stream)
        progress.tick(500)
        progress.directory_done()
        progress.finish()
        text = stream.getvalue()
        assert bool(text) is shown
        if shown:
            assert text.startswith("\rprimus-lens report: reading") and text.endswith("\n")
            assert "100%" not in text and " 50% (1/2 rank directories" in text


def test_the_summary_never_prints_a_records_control_characters(tmp_path: Path) -> None:
    rank = tmp_path / "node_0" / "rank_0"
    rank.mkdir(parents=True)
    (rank / "wandb_metrics.jsonl").write_bytes(
        recordline.encode("run\x1b[31m\u2028x", 0, 1.0, {"a": 1}))
    lines: List[str] = summary(build_model([str(tmp_path)], io.StringIO()))
    assert len(lines) == 5 and "\x1b" not in "".join(lines) and "\u2028" not in "".join(lines)
    assert "run\\u001b[31m\\u2028x" in lines[0]


def test_the_wheel_carries_upLot_and_its_license(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    vendored = sorted(os.listdir(VENDOR))
    assert {"uPlot.iife.min.js", "uPlot.min.css", "LICENSE"} <= set(vendored)
    for name in [*(f"vendor/{n}" for n in vendored), "page.js", "page.css"]:
        assert f"primus_lens_inject/view/{name}" in names
