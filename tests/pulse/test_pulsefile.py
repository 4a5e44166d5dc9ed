"""The pulse file's bound and the step figures, in-process (docs/pulse.md, "Cost").

Two writers of one rank's ``pulse.jsonl`` (two processes of one node and local rank, here two
``PulseFile`` objects) append lines past the size limit: the file moves to ``pulse.jsonl.1``
once per crossing, each writer follows the move (no line lands in the moved file after it
moved), every line stays whole, and the two files stay within twice the limit.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from primus_lens_inject import pulseline
from primus_lens_inject.pulse.pulsefile import PulseFile
from primus_lens_inject.pulse.timing import StepTimes

LIMIT = 4096


def line(writer: int, number: int) -> bytes:
    return pulseline.encode(pulseline.PULSE, {
        "time": 1.0, "pid": writer, "rank": 0, "local_rank": 0, "node": 0, "world_size": 1,
        "steps": number, "pad": "x" * 100})


def test_two_writers_rotate_once_per_crossing_and_follow_the_move(tmp_path: Path) -> None:
    path = str(tmp_path / "node_0" / "rank_0" / pulseline.FILE_NAME)
    writers = [PulseFile(path, LIMIT), PulseFile(path, LIMIT)]
    for writer in writers:
        writer.open()
    rotated = os.path.join(os.path.dirname(path), pulseline.ROTATED)
    moves, previous = 0, None
    for number in range(200):
        for index, writer in enumerate(writers):
            writer.write(line(index, number))
        inode = os.stat(rotated).st_ino if os.path.exists(rotated) else None
        moves += inode != previous
        previous = inode
    kept = [pulseline.decode(raw) for name in pulseline.pulse_files(str(Path(path).parent))
            for raw in Path(name).read_bytes().splitlines()]
    assert None not in kept
    assert os.path.getsize(path) <= LIMIT and os.path.getsize(rotated) <= LIMIT
    size = len(line(0, 100))
    assert moves == pytest.approx(200 * 2 * size / LIMIT, abs=2)
    numbers = [(entry["pid"], entry["steps"]) for entry in kept]
    assert numbers[-2:] == [(0, 199), (1, 199)]  # the newest of both writers, in order
    assert numbers == sorted(numbers, key=lambda pair: (pair[1], pair[0]))  # nothing out of order


def test_step_times_and_the_stall_threshold() -> None:
    times = StepTimes()
    times.update(0, 0.0, 0.0)
    assert (times.last, times.mean, times.median) == (None, None, None)
    assert times.threshold(300.0, 10.0) == 300.0
    times.update(1, 10.0, 0.0)  # the first step: nothing to measure yet
    assert (times.last, times.mean) == (None, None)
    times.update(5, 14.0, 13.0)  # four steps of one second each
    assert (times.last, times.mean, times.median) == (1.0, 1.0, 1.0)
    times.update(5, 14.0, 13.0)  # no step in this interval
    assert times.mean is None and times.median == 1.0
    times.update(6, 74.0, 14.0)  # one slow step of a minute: the median moves, and the threshold
    assert (times.last, times.mean, times.median) == (60.0, 60.0, 30.5)
    assert times.threshold(60.0, 10.0) == 305.0
