"""The agent's delivery parts in process: the pod-wide pace (``report.pace``), the job key that
makes identical detection reports one (``report.detection_queue``), and the writing lock that
tells the agent a trainer lives (``liveness``).  No clock: every wait is on an event, bounded."""

from __future__ import annotations

import json
import os
import threading
import time

from primus_lens_inject import liveness
from primus_lens_inject.report.detection_queue import DetectionQueue, job_key
from primus_lens_inject.report.pace import Pace

WAIT = 30.0
NEVER = 3600.0  # an interval no test waits out


def _taker(pace: Pace, holder: object, full: bool = False) -> threading.Event:
    """``holder`` asks for its turn on a thread; the event is set once it has it."""
    got = threading.Event()
    threading.Thread(target=lambda: pace.take(holder, lambda: False, full) and got.set(),
                     daemon=True).start()
    return got


def test_one_request_at_a_time_and_small_batches_wait_for_the_interval():
    pace = Pace(NEVER)
    first, second, third = object(), object(), object()
    assert pace.take(first, lambda: False)  # nobody before it
    small = _taker(pace, second)
    full = _taker(pace, third, full=True)
    pace.give(first)
    # a small batch waits for the interval; a full one behind it waits for its turn (FIFO)
    assert not small.wait(0.5) and not full.is_set()
    pace.lift()  # the drain: everything goes
    assert small.wait(WAIT) and full.wait(WAIT)


def test_a_full_batch_goes_right_after_the_request_before_it():
    pace = Pace(NEVER)
    first, second = object(), object()
    assert pace.take(first, lambda: False)
    full = _taker(pace, second, full=True)
    assert not full.wait(0.2)  # one at a time: the first still holds the turn
    pace.give(first)
    assert full.wait(WAIT)  # no interval for a full batch
    assert pace.take(second, lambda: False)  # its own turn again: at once


def test_turns_go_in_the_order_they_were_asked_for():
    pace = Pace(NEVER)
    first = object()
    assert pace.take(first, lambda: False)
    waiters = [object() for _ in range(4)]
    order = []
    got = []
    for waiter in waiters:
        got.append(threading.Event())
        threading.Thread(target=lambda w=waiter, e=got[-1]: pace.take(w, lambda: False, True)
                         and (order.append(w), e.set()), daemon=True).start()
        for _ in range(3000):  # queued before the next one asks (bounded)
            if len(pace._queue) == len(got):
                break
            time.sleep(0.01)
    assert len(pace._queue) == 4
    holder = first
    for index, waiter in enumerate(waiters):
        pace.give(holder)  # wakes the next in line, which goes (a full batch: no interval)
        assert got[index].wait(WAIT)
        assert order == waiters[:index + 1]  # and no one behind it
        holder = waiter


def test_a_batch_that_fills_while_it_waits_for_the_interval_goes_at_once():
    pace = Pace(NEVER)
    first, second = object(), object()
    assert pace.take(first, lambda: False)
    filled = threading.Event()
    got = threading.Event()
    threading.Thread(target=lambda: pace.take(second, lambda: False, filled.is_set) and got.set(),
                     daemon=True).start()
    pace.give(first)
    assert not got.wait(0.5)  # small: it waits for the interval
    filled.set()  # its record now holds a full batch: asked again while it waits
    assert got.wait(WAIT)


def test_a_stopped_sink_stops_waiting():
    pace = Pace(NEVER)
    holder, waiter = object(), object()
    assert pace.take(holder, lambda: False)
    stop = threading.Event()
    answer = []
    thread = threading.Thread(target=lambda: answer.append(pace.take(waiter, stop.is_set)))
    thread.start()
    stop.set()
    thread.join(WAIT)
    assert answer == [False]


def _report(pod: str, run_id: str, config: dict) -> dict:
    return {"pod_name": pod, "hints": {"wrapper_frameworks": ["primus"], "base_frameworks": ["megatron"]},
            "evidence": {"wandb": {"id": run_id, "name": f"run-{run_id}", "project": "p",
                                   "config": config},
                         "wrapper_frameworks": {"primus": {"version": "1"}}}}


def test_job_key_is_the_job_not_the_sender(tmp_path):
    one = job_key(_report("pod-a", "r1", {"lr": 0.1}), "group-1")
    assert one == job_key(_report("pod-b", "r2", {"lr": 0.1}), "group-1")  # another rank
    assert one != job_key(_report("pod-a", "r1", {"lr": 0.2}), "group-1")  # another config
    assert one != job_key(_report("pod-a", "r1", {"lr": 0.1}), "group-2")  # another group
    queue = DetectionQueue(str(tmp_path / "wandb_metrics.jsonl"))
    queue.store(_report("pod-a", "r1", {"lr": 0.1}), one)
    queue.store(_report("pod-a", "r3", {}))  # an older injector's: no key, its own job
    keys = sorted(DetectionQueue.job_of(path) for path in queue.pending())
    assert keys == ["", one]


def test_the_last_acknowledged_report_of_each_job_is_kept_small(tmp_path):
    """``keep_sent``: one file per job key, the later report of a job replaces the earlier,
    only the verdict and the run are kept, and the queue never lists what is kept."""
    queue = DetectionQueue(str(tmp_path / "wandb_metrics.jsonl"))
    one = job_key(_report("pod-a", "r1", {"lr": 0.1}), "g")
    other = job_key(_report("pod-a", "r5", {"lr": 0.5}), "g")
    for run_id, config, key in (("r1", {"lr": 0.1}, one), ("r2", {"lr": 0.1}, one),
                                ("r5", {"lr": 0.5}, other), ("r6", {}, "")):
        queue.store(_report("pod-a", run_id, config), key)
    for at, path in enumerate(queue.pending()):
        DetectionQueue.keep_sent(path, DetectionQueue.load(path)[0], 1000.0 + at)
        DetectionQueue.remove(path)
    assert queue.pending() == []
    kept_dir = tmp_path / "wandb_metrics.detections" / "sent"
    assert sorted(p.name for p in kept_dir.iterdir()) == sorted(
        [f"{one}.json", f"{other}.json", "unkeyed.json"])
    kept = json.loads((kept_dir / f"{one}.json").read_text())
    assert kept["hints"] == _report("pod-a", "r2", {})["hints"]
    assert kept["evidence"] == {"wandb": {"id": "r2", "name": "run-r2", "project": "p"}}
    assert kept["acknowledged"] == 1001.0 and kept["report"].endswith(f"r2~{one}.json")
    assert "config" not in json.dumps(kept)  # the verdict, not the whole report


def test_the_writing_lock_says_whether_a_writer_lives(tmp_path):
    record = str(tmp_path / "wandb_metrics.jsonl")
    assert not liveness.writing(record)  # no writer ever
    fd = liveness.hold(record)
    assert fd >= 0 and liveness.writing(record)
    second = liveness.hold(record)  # another writer of the same record shares it
    assert second >= 0 and liveness.writing(record)
    os.close(fd)
    assert liveness.writing(record)
    os.close(second)
    assert not liveness.writing(record)
