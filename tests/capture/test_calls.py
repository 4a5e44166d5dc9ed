"""The queue between the training thread and the record writer (``capture.calls``), thread-free:
what it counts, and what a full queue does to a call when the writer is known to be stalled."""

from __future__ import annotations

import time

from primus_lens_inject.capture import calls
from primus_lens_inject.capture.calls import DROPPED, NO_SAMPLE, CallQueue, EndOfRun, control
from primus_lens_inject.capture.rows import RunRows


def call(rows: RunRows, data: dict, step: int) -> calls.Call:
    return (rows, data, step, None, time.time(), NO_SAMPLE)


def test_values_are_counted_in_and_out_and_control_items_carry_none():
    queue, rows = CallQueue(accepting=True), RunRows("r")
    queue.put(call(rows, {"a": 1, "b": 2}, 0))
    queue.put(control(rows, EndOfRun(12.5)))
    assert (len(queue), queue.values_in, queue.values_out) == (2, 2, 0)
    assert queue.take()[calls.CALL_DATA] == {"a": 1, "b": 2}
    assert queue.take()[calls.CALL_DATA] == EndOfRun(12.5)
    assert (len(queue), queue.values_in, queue.values_out, queue.lost) == (0, 2, 2, 0)


def test_a_queue_nobody_drains_takes_nothing():
    queue = CallQueue(accepting=False)
    queue.put(call(RunRows("r"), {"a": 1}, 0))
    assert len(queue) == 0 and queue.values_in == 0


def test_a_full_queue_of_a_stalled_writer_keeps_only_steps_then_nothing(monkeypatch):
    """No waiting: a writer that says why it is behind is not waited for."""
    monkeypatch.setattr(calls, "MAX_QUEUED", 2)
    monkeypatch.setattr(calls, "HARD_LIMIT", 3)
    queue, rows = CallQueue(accepting=True), RunRows("r")
    queue.stalled = "locked by another process"
    for step in range(5):
        queue.put(call(rows, {"v": step}, step))
    kept = [(item[calls.CALL_STEP], item[calls.CALL_DATA]) for item in queue.calls]
    assert kept == [(0, {"v": 0}), (1, {"v": 1}), (2, DROPPED)]  # steps 3, 4: past HARD_LIMIT
    assert queue.lost == 3 and queue.rows_waiting() == 2
