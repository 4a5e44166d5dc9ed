"""A record of agent mode is open to the pod agent's user (docs/agent.md, "Who may write the
record's directories"): its directories 0777 whatever the umask, only those the trainer
creates; its files readable by all; nothing of it without agent mode.  In process; the real
processes of two users are in tests/agent/test_delivery_users.py."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path
from typing import Iterator

import pytest

from primus_lens_inject import liveness, paths
from primus_lens_inject.capture.record import RecordWriter
from primus_lens_inject.report.detection_queue import DetectionQueue
from primus_lens_inject.report.spool import OwnerLock, write_atomic


@pytest.fixture
def umask_077() -> Iterator[None]:
    """A umask that would shut every other user out (the trainers' own, in some images)."""
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_shared_directories_are_open_whatever_the_umask_and_only_those_created(
        tmp_path, umask_077):
    (tmp_path / "root").mkdir()
    (tmp_path / "root").chmod(0o750)  # there before: its mode is not ours to change
    paths.make_dirs(str(tmp_path / "root" / "node_0" / "rank_0"), shared=True)
    assert mode(tmp_path / "root") == 0o750
    assert mode(tmp_path / "root" / "node_0") == mode(tmp_path / "root" / "node_0" / "rank_0") \
        == 0o777
    paths.make_dirs(str(tmp_path / "root" / "node_0" / "rank_0"), shared=True)  # exists: fine
    assert paths.is_shared(str(tmp_path / "root" / "node_0" / "rank_0"))


def test_without_agent_mode_nothing_is_opened(tmp_path, umask_077):
    record = tmp_path / "node_0" / "rank_0" / "wandb_metrics.jsonl"
    writer = RecordWriter(str(record))
    writer.close(time.monotonic() + 10)
    assert (mode(record.parent), mode(record)) == (0o700, 0o600)
    DetectionQueue(str(record)).store({"evidence": {}}, "job")
    write_atomic(str(record.parent / "wandb_metrics.cursor"), "{}")
    assert mode(record.parent / "wandb_metrics.detections") == 0o700
    assert mode(record.parent / "wandb_metrics.cursor") == 0o600


def test_an_agent_mode_record_its_side_directories_and_files(tmp_path, umask_077):
    """The record writer's directories (shared), the side directories made inside them, and
    every file the agent reads: readable by all; the record writable by its owner only."""
    record = tmp_path / "node_0" / "rank_0" / "wandb_metrics.jsonl"
    writer = RecordWriter(str(record), shared=True)
    try:
        assert (mode(record.parent), mode(record)) == (0o777, 0o644)
        assert mode(record.parent / "wandb_metrics.writing") == 0o644
    finally:
        writer.close(time.monotonic() + 10)
    queue = DetectionQueue(str(record))
    queue.store({"evidence": {}}, "job")
    [report] = queue.pending()
    DetectionQueue.keep_sent(report, {}, time.time())
    detections = record.parent / "wandb_metrics.detections"
    assert (mode(detections), mode(detections / "sent"), mode(Path(report))) == (
        0o777, 0o777, 0o644)
    write_atomic(str(record.parent / "wandb_metrics.cursor"), "{}")
    assert mode(record.parent / "wandb_metrics.cursor") == 0o644


def test_lock_files_are_locked_read_only(tmp_path):
    """``flock`` needs no write access: a lock file another user created 0644 (here: 0444, which
    no open for writing would pass for a non-root user) is still locked, by the owner lock and
    by the writing lock's test."""
    record = tmp_path / "wandb_metrics.jsonl"
    record.write_text("")
    for name in ("wandb_metrics.lock", "wandb_metrics.writing"):
        (tmp_path / name).write_text("")
        (tmp_path / name).chmod(0o444)
    lock = OwnerLock(str(record))
    assert lock.try_acquire() and lock.path == str(tmp_path / "wandb_metrics.lock")
    assert os.fstat(lock._fd).st_ino == (tmp_path / "wandb_metrics.lock").stat().st_ino
    assert not OwnerLock(str(record)).try_acquire(), "held: a second one is refused"
    lock.release()
    fd = liveness.hold(str(record))
    try:
        assert fd >= 0 and liveness.writing(str(record))
    finally:
        os.close(fd)
    assert not liveness.writing(str(record))
