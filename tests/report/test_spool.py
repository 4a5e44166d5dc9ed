"""The reporter's cursor and tail over the record file."""

from __future__ import annotations

import json
import os
import threading

import pytest

from primus_lens_inject import log
from primus_lens_inject.report import spool


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


def test_a_line_over_the_ceiling_is_skipped_whole_never_held(tmp_path, monkeypatch):
    """Over ``max_line`` a line comes back as (its end, None); its end is found in pieces of
    ``SCAN_BYTES``, so the reader never holds it; a giant line still being written waits."""
    monkeypatch.setattr(spool, "SCAN_BYTES", 7)
    record = tmp_path / "r.jsonl"
    record.write_bytes(b"a\n" + b"y" * 100 + b"\nnext\n" + b"z" * 50)
    assert spool.read_lines(str(record), 0, 16, max_line=64) == [(2, b"a")]
    assert spool.read_lines(str(record), 2, 16, max_line=64) == [(103, None)]
    assert spool.read_lines(str(record), 103, 16, max_line=64) == [(108, b"next")]
    assert spool.read_lines(str(record), 108, 16, max_line=64) == []  # no newline yet: waits
    assert spool.read_lines(str(record), 2, 16, max_line=128) == [(103, b"y" * 100), (108, b"next")]


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


def test_owner_lock_asked_by_threads_at_once_is_ours_for_all(tmp_path):
    """The rows thread, the detection thread and a flush ask together: each of them is told
    this process sends (two descriptors of ours must not lock each other out)."""
    lock = spool.OwnerLock(str(tmp_path / "r.jsonl"))
    start = threading.Barrier(8)
    answers = []

    def ask() -> None:
        start.wait(timeout=10)
        answers.append(lock.try_acquire())

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert answers == [True] * 8 and lock.held
    lock.release()


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """The per-user fallback directory inside the test (``tempfile`` caches its answer), and
    warnings said afresh (each is said once per process)."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    monkeypatch.setattr(log, "_said", set())


def test_cursor_in_place_of_a_directory_falls_back_and_resumes(tmp_path, capsys):
    record = tmp_path / "wandb_metrics.jsonl"
    record.write_bytes(b'{"a":1}\n{"a":2}\n')
    (tmp_path / "wandb_metrics.cursor").mkdir()
    cursor = spool.Cursor(str(record))
    cursor.advance(8)
    assert not cursor.dirty
    assert spool.Cursor(str(record)).offset == 8  # a restart resumes: nothing resent
    (warning,) = capsys.readouterr().err.splitlines()
    assert "cannot save the reporter's position at" in warning and "instead" in warning
    assert not [p for p in tmp_path.rglob("*.tmp")]  # failed saves leave no temporary file


def test_cursor_that_cannot_be_saved_anywhere_stays_dirty_and_retries(tmp_path, capsys):
    (tmp_path / "tmp").write_text("a file where the fallback directory would go")
    record = tmp_path / "wandb_metrics.jsonl"
    record.write_bytes(b'{"a":1}\n{"a":2}\n')
    (tmp_path / "wandb_metrics.cursor").mkdir()
    cursor = spool.Cursor(str(record))
    cursor.advance(8)
    cursor.advance(16)  # never raises: reporting goes on
    assert cursor.offset == 16 and cursor.dirty
    assert len(capsys.readouterr().err.splitlines()) == 1  # said once
    (tmp_path / "wandb_metrics.cursor").rmdir()
    cursor.save()  # space is back: the retry succeeds
    assert not cursor.dirty and spool.Cursor(str(record)).offset == 16


def test_larger_valid_offset_of_the_two_places_wins(tmp_path):
    record = tmp_path / "wandb_metrics.jsonl"
    record.write_bytes(b'{"a":1}\n{"a":2}\n')
    spool.Cursor(str(record)).advance(8)
    alternative = spool.fallback(str(record), spool.CURSOR_SUFFIX)
    os.makedirs(os.path.dirname(alternative))
    saved = json.loads((tmp_path / "wandb_metrics.cursor").read_text())
    with open(alternative, "w") as f:
        json.dump({**saved, "offset": 16}, f)
    assert spool.Cursor(str(record)).offset == 16
    with open(alternative, "w") as f:
        json.dump({**saved, "offset": 17}, f)  # beyond the record: not valid
    assert spool.Cursor(str(record)).offset == 8


def test_owner_lock_in_place_of_a_directory_falls_back_and_stays_exclusive(tmp_path, capsys):
    record = str(tmp_path / "r.jsonl")
    os.mkdir(tmp_path / "r.lock")
    first = spool.OwnerLock(record)
    assert first.try_acquire()
    assert "cannot use the sender lock" in capsys.readouterr().err
    pid = os.fork()
    if pid == 0:
        first.release()
        os._exit(0 if not spool.OwnerLock(record).try_acquire() else 1)
    assert os.waitpid(pid, 0)[1] == 0
    first.release()


def test_owner_lock_unusable_everywhere_sends_anyway_and_says_so(tmp_path, capsys):
    (tmp_path / "tmp").write_text("not a directory")
    os.mkdir(tmp_path / "r.lock")
    lock = spool.OwnerLock(str(tmp_path / "r.jsonl"))
    assert lock.try_acquire() and lock.held
    assert "rows may arrive twice" in capsys.readouterr().err
    lock.release()
    assert not lock.held


def test_usable_dir_falls_back_for_a_file_in_its_place(tmp_path, capsys):
    (tmp_path / "d").write_text("x")
    assert spool.usable_dir(str(tmp_path / "d"), str(tmp_path / "alt"), "things") \
        == str(tmp_path / "alt")
    assert "cannot keep things in" in capsys.readouterr().err
    assert spool.usable_dir(str(tmp_path / "e"), str(tmp_path / "alt"), "things") \
        == str(tmp_path / "e")
