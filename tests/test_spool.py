"""The reporter's cursor and tail over the record file."""

from __future__ import annotations

import json
import os

from primus_lens_inject import spool


def test_cursor_persists_and_resets_for_a_replaced_record(tmp_path):
    record = tmp_path / "wandb_metrics.jsonl"
    record.write_bytes(b'{"a":1}\n{"a":2}\n')
    cursor = spool.Cursor(str(record))
    assert cursor.offset == 0
    cursor.advance(8)
    assert json.loads((tmp_path / "wandb_metrics.cursor").read_text())["offset"] == 8
    assert spool.Cursor(str(record)).offset == 8
    cursor.advance(4)  # never moves back
    assert spool.Cursor(str(record)).offset == 8
    os.remove(record)
    record.write_bytes(b'{"b":1}\n{"b":2}\n{"b":3}\n')  # a new file (new inode): start over
    assert spool.Cursor(str(record)).offset == 0


def test_read_lines_returns_complete_lines_with_end_offsets(tmp_path):
    record = tmp_path / "r.jsonl"
    record.write_bytes(b"one\ntwo\npart")
    assert spool.read_lines(str(record), 0, 1 << 20) == [(4, b"one"), (8, b"two")]
    assert spool.read_lines(str(record), 4, 1 << 20) == [(8, b"two")]
    assert spool.read_lines(str(record), 8, 1 << 20) == []
    record.write_bytes(b"x" * 100 + b"\nnext\n")  # a line longer than one read is still read
    assert spool.read_lines(str(record), 0, 16) == [(101, b"x" * 100), (106, b"next")]
    assert spool.read_lines(str(tmp_path / "missing"), 0, 16) == []


def test_owner_lock_is_exclusive_between_processes(tmp_path):
    record = str(tmp_path / "r.jsonl")
    first = spool.OwnerLock(record)
    assert first.try_acquire() and first.held
    pid = os.fork()
    if pid == 0:  # the child inherits the descriptor but must not count as owner
        first.release()
        other = spool.OwnerLock(record)
        os._exit(0 if not other.try_acquire() else 1)
    assert os.waitpid(pid, 0)[1] == 0
    assert first.held  # the child's close did not unlock the parent
    first.release()
    second = spool.OwnerLock(record)
    assert second.try_acquire()
    second.release()
