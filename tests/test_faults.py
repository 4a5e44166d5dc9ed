"""The fault suite: each situation of docs/reliability.md, as an operator would meet it.

Every case is a real training process (real wandb, offline or disabled) running one of the
scripts in ``tests/scripts/``, with real signals, a real second process holding a lock, a real
full filesystem (a small tmpfs, where this user may mount one) and the built-in receiver's fault
injection on loopback.  Each asserts exact counts (rows logged = rows in the record = rows
received), that the process ended within its bound (the subprocess timeout: "did not hang"), and
that stderr holds nothing but warnings documented in docs/reliability.md, each at most once.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional

import pytest
from conftest import TRAIN_PYTHON, training_env, wait_until
from test_reporting import assert_bodies_valid, exactly_once, reporting_env

from primus_lens_inject.devserver.receiver import Receiver
from primus_lens_inject.report.sendable import MAX_BODY

SCRIPTS = Path(__file__).parent / "scripts"
DOCS = Path(__file__).parent.parent / "docs" / "reliability.md"
RANK_DIR = ("node_0", "rank_0")


def documented_warnings() -> List[re.Pattern]:
    """The warning lines docs/reliability.md lists (placeholders in <angle brackets>)."""
    patterns = []
    for text in re.findall(r"`(primus-lens: [^`]+)`", DOCS.read_text()):
        parts = re.split(r"<[^>]+>", text)
        patterns.append(re.compile(".+".join(re.escape(part) for part in parts) + "$"))
    return patterns


WARNINGS = documented_warnings()


def check_stderr(stderr: str, *expected: str) -> None:
    """Nothing but documented warnings, none twice, and each ``expected`` text among them."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    for line in lines:
        assert any(p.match(line) for p in WARNINGS), f"undocumented stderr line: {line!r}"
    assert len(lines) == len(set(lines)), lines
    for text in expected:
        assert any(text in line for line in lines), (text, lines)


class Proc:
    """One script of tests/scripts as a training process, driven line by line."""

    def __init__(self, tmp: Path, script: str, *args: str, env: Optional[Dict[str, str]] = None):
        self.tmp = tmp
        (tmp / "tmp").mkdir(exist_ok=True)  # TMPDIR: the fallback files stay in the test
        self.popen = subprocess.Popen(
            [TRAIN_PYTHON, str(SCRIPTS / script), *args], cwd=tmp, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=training_env(tmp, {"TMPDIR": str(tmp / "tmp"), **(env or {})}))

    def expect(self, word: str, timeout: float = 60) -> List[str]:
        """The next stdout line, which must start with ``word``; bounded by ``timeout``."""
        deadline = time.monotonic() + timeout
        line = ""
        while time.monotonic() < deadline:
            line = self.popen.stdout.readline()
            if line or self.popen.poll() is not None:
                break
        if not line.startswith(word):
            self.popen.kill()
            raise AssertionError(f"expected {word!r}, got {line!r}; "
                                 f"stderr: {self.popen.stderr.read()[-3000:]}")
        return line.split()

    def send(self, text: str = "go") -> None:
        self.popen.stdin.write(text + "\n")
        self.popen.stdin.flush()

    def end(self, timeout: float) -> tuple:
        """Wait for the exit within ``timeout`` (the bound under test): (status, stdout, stderr)."""
        try:
            out, err = self.popen.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            out, err = self.popen.communicate()
            raise AssertionError(f"did not exit within {timeout} s; stderr: {err[-3000:]}")
        return self.popen.returncode, out, err


def record_path(tmp: Path, root: str = "out") -> Path:
    return tmp.joinpath(root, *RANK_DIR, "wandb_metrics.jsonl")


def record_rows(path: Path) -> List[dict]:
    """Every line must be a whole JSON row (no torn or glued lines)."""
    return [json.loads(line) for line in path.read_bytes().decode().splitlines()]


def status_of(tmp: Path) -> dict:
    return json.loads(record_path(tmp).with_suffix(".status.json").read_text())


# -- 1. SIGTERM while logging fast ---------------------------------------------------------------

# ``follow``: a step metric is defined first, so the rows come from wandb's transaction log
# (docs/capture.md); without a handler of the program's own, wandb's teardown never runs, and
# the rows wandb-core had not written by the SIGTERM come from the log calls.
@pytest.mark.parametrize("mode,handler,follow", [
    ("disabled", "none", ""), ("disabled", "none", ""), ("disabled", "own", ""),
    ("offline", "own", ""), ("offline", "own", "follow"), ("offline", "none", "follow")])
def test_sigterm_while_logging_fast_never_hangs(tmp_path, mode, handler, follow):
    proc = Proc(tmp_path, "log_until_sigterm.py", mode, handler, *([follow] if follow else []))
    proc.expect("logging")
    time.sleep(0.2)
    proc.popen.send_signal(signal.SIGTERM)
    status, out, err = proc.end(timeout=30)
    check_stderr(err)
    rows = record_rows(record_path(tmp_path))
    assert [row["data"]["i"] for row in rows] == list(range(len(rows)))
    assert [row["step"] for row in rows] == list(range(len(rows)))
    if handler == "own":  # the program stopped itself: every row it logged is in the record
        assert status == 0 and len(rows) == int(out.split()[-1]) >= 2000
    else:
        assert status == -signal.SIGTERM and len(rows) >= 2000


# -- 2. finish, then exit, against a server that never answers in time -----------------------

def test_finish_and_exit_share_one_shutdown_budget(tmp_path):
    with Receiver(port=0, faults={"delay": 60}) as server:
        proc = Proc(tmp_path, "train_steps.py", "disabled", "20", "sleep:0.5", env=reporting_env(
            server.url, PRIMUS_LENS_SHUTDOWN_TIMEOUT="3", PRIMUS_LENS_API_READ_TIMEOUT="120"))
        proc.expect("phase")
        proc.expect("done")
        # Budget 3 s for finish and exit together; flushing twice at finish and again at exit
        # took 9 s.  The bound leaves 3 s for the interpreter to start its teardown.
        status, _out, err = proc.end(timeout=6)
    assert status == 0
    check_stderr(err)
    assert [row["data"]["i"] for row in record_rows(record_path(tmp_path))] == list(range(20))
    assert status_of(tmp_path)["state"] == "exited with a backlog"


# -- 3. the record's lock held by another process -----------------------------------------------

def test_record_locked_by_another_process_never_blocks_logging(tmp_path):
    holder = Proc(tmp_path, "hold_lock.py", str(record_path(tmp_path)))
    holder.expect("locked")
    proc = Proc(tmp_path, "train_steps.py", "disabled", "25000", "wait", "sleep:0.5", "10")
    # All 25,000 calls return while the lock is still held: the holder lets go only after this.
    proc.expect("phase")
    time.sleep(1.5)  # the writer meets the lock a few times
    holder.send()
    assert holder.end(timeout=30)[0] == 0
    path = record_path(tmp_path)
    assert wait_until(lambda: path.read_bytes().count(b"\n") >= 10_000)  # the writer caught up
    proc.send()
    status, _out, err = proc.end(timeout=60)
    assert status == 0
    check_stderr(err, "is locked by another process", "fell behind (locked by another process)")
    dropped = int(re.search(r"; (\d+) logged rows are not in it", err).group(1))
    rows = record_rows(record_path(tmp_path))
    kept = len(rows) - 10
    # Memory holds what the writer had encoded when it met the lock and 10,000 queued calls;
    # later calls keep only their step, so the rows after the stall still carry wandb's steps.
    assert 10_000 <= kept <= 25_000 - dropped
    assert [(row["step"], row["data"]["i"]) for row in rows] \
        == [(i, i) for i in range(kept)] + [(i, i) for i in range(25_000, 25_010)]


# -- 4, 10, 11. values the writer, the wire or the server's database could choke on ----------

def test_hostile_values_huge_int_nul_keys_and_a_3_mb_row(tmp_path):
    with Receiver(port=0) as server:
        # a budget that a loaded machine cannot spend on a 3.5 MB row: this test is about values
        proc = Proc(tmp_path, "hostile_values.py", "offline",
                    env=reporting_env(server.url, PRIMUS_LENS_SHUTDOWN_TIMEOUT="60"))
        run_id = proc.expect("logged")[1]
        # The writer survived the 5000-digit int: every row reaches the file while the
        # process lives (before, they arrived only at exit and SIGKILL lost them).
        path = record_path(tmp_path)
        assert wait_until(lambda: path.exists() and path.read_bytes().count(b"\n") == 10)
        proc.send()
        status, _out, err = proc.end(timeout=60)
        assert status == 0
        check_stderr(err)
        rows = record_rows(path)
        assert [row["step"] for row in rows] == list(range(10))
        assert rows[3]["data"]["huge"] == {"_type": "int", "bits": 16610}
        assert rows[5]["data"]["nul\x00key"] == 1.5
        # every step once, but step 7 (about 3.5 MB) as several parts with disjoint keys
        got = Counter(row["step"] for row in server.logs(run_id=run_id))
        assert sorted(got) == list(range(10)) and got[7] > 1
        assert all(got[step] == 1 for step in range(10) if step != 7), got
        steps = {row["iteration"]: row["data"] for row in server.steps()}
        assert steps[5]["nul\ufffdkey"] == 1.5 and steps[5]["nested.lone\ufffdkey"] == 2.5
        assert len([key for key in steps[7] if key.startswith("layer")]) == 60_000
        bodies = server.raw_bodies()
        assert all(len(body) <= MAX_BODY for body in bodies)
        assert not any(b"\\u0000" in body or b"\\ud800" in body for body in bodies)
        logs = [json.loads(body) for body, request in zip(bodies, server.requests())
                if request["path"].endswith("/logs")]
        step7 = Counter(key for body in logs for entry in body["logs"] if entry["step"] == 7
                        for key in entry["data"])
        assert len(step7) == 60_001 and set(step7.values()) == {1}  # + "i": each key once
        parts = [entry for body in logs for entry in body["logs"] if entry["step"] == 7]
        assert len(parts) == got[7]
        assert_bodies_valid(server)


# -- 5. a 200 that is not the server's answer ---------------------------------------------------

def test_html_200_is_retried_not_counted_as_delivered(tmp_path):
    with Receiver(port=0, faults={"garbage_rate": 0.3, "garbage_status": 200, "seed": 5}) \
            as server:
        proc = Proc(tmp_path, "train_steps.py", "offline", "3010", env=reporting_env(
            server.url, PRIMUS_LENS_WANDB_BATCH_SIZE="500", PRIMUS_LENS_SHUTDOWN_TIMEOUT="60"))
        proc.expect("phase")
        run_id = proc.expect("done")[1]
        status, _out, err = proc.end(timeout=90)
        assert status == 0
        check_stderr(err, "HTTP 200 whose body is not the telemetry-processor's answer")
        exactly_once(server, run_id, range(3010))
        garbage = [r for r in server.requests() if r["message"] == "garbage 200 (fault)"]
        assert garbage and all(r["status"] == 200 for r in garbage)
    report = status_of(tmp_path)
    assert report["rows_sent"] == 3010 and report["state"] == "exited, all delivered"


# -- 6. disk full, then space freed --------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs, if this user may mount one."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                          capture_output=True, text=True, timeout=30)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({made.stderr.strip()}): disk-full case not run")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=30)


def fill(disk: Path, leave_pages: int) -> Path:
    """Fill ``disk`` completely, then free ``leave_pages`` pages of it."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    os.truncate(filler, max(0, (filler.stat().st_size // 4096 - leave_pages) * 4096))
    return filler


def test_disk_full_then_freed_loses_nothing(tmp_path, small_disk):
    with Receiver(port=0) as server:
        proc = Proc(tmp_path, "train_steps.py", "offline", "100", "wait", "200", "wait", "100",
                    env=reporting_env(server.url, PRIMUS_LENS_WANDB_OUTPUT_PATH=str(small_disk)))
        proc.expect("phase")
        filler = fill(small_disk, leave_pages=3)  # a write of the queued rows fails part-way
        proc.send()
        proc.expect("phase")
        time.sleep(1.5)  # the writer and the sender meet the full disk a few times
        filler.unlink()
        proc.send()
        proc.expect("phase")
        run_id = proc.expect("done")[1]
        status, _out, err = proc.end(timeout=60)
        assert status == 0
        check_stderr(err, "No space left on device")
        rows = record_rows(record_path(tmp_path, root="disk"))
        assert [row["data"]["i"] for row in rows] == list(range(400))
        exactly_once(server, run_id, range(400))


# -- 7. a torn last line left by a killed process -----------------------------------------------

def test_torn_last_line_is_ended_not_glued(tmp_path):
    path = record_path(tmp_path)
    path.parent.mkdir(parents=True)
    old = [{"timestamp": time.time(), "step": step, "run_id": "old-run",
            "data": {"x": step, "_primus_lens_enabled": True}} for step in range(2)]
    torn = b'{"timestamp": 1, "step": 2, "run_id": "old-r'
    path.write_bytes(b"".join(json.dumps(row).encode() + b"\n" for row in old) + torn)
    with Receiver(port=0) as server:
        proc = Proc(tmp_path, "train_steps.py", "offline", "10", env=reporting_env(server.url))
        proc.expect("phase")
        run_id = proc.expect("done")[1]
        status, _out, err = proc.end(timeout=60)
        assert status == 0
        check_stderr(err)
        lines = path.read_bytes().split(b"\n")
        assert lines[2] == torn and lines[-1] == b""
        assert [json.loads(line)["data"]["i"] for line in lines[3:-1]] == list(range(10))
        exactly_once(server, "old-run", range(2))
        exactly_once(server, run_id, range(10))
    assert status_of(tmp_path)["dropped"] == {"unreadable record line": 1}


# -- 8. the reporter's files unusable -----------------------------------------------------------

def test_reporters_files_unusable_fall_back_and_say_so(tmp_path):
    path = record_path(tmp_path)
    path.parent.mkdir(parents=True)
    for suffix in (".cursor", ".lock", ".status.json"):
        path.with_suffix(suffix).mkdir()  # e.g. a volume mount or a stray mkdir
    path.with_suffix(".detections").write_text("not a directory")
    with Receiver(port=0) as server:
        runs = []
        for rows in ("30", "20"):  # a restart must resume, not resend the first batches
            proc = Proc(tmp_path, "train_steps.py", "offline", rows, env=reporting_env(server.url))
            proc.expect("phase")
            runs.append(proc.expect("done")[1])
            status, _out, err = proc.end(timeout=60)
            assert status == 0
            check_stderr(err, "cannot save the reporter's position", "cannot use the sender lock",
                         "cannot keep detection reports", "cannot write the reporting status")
        exactly_once(server, runs[0], range(30))
        exactly_once(server, runs[1], range(20))
        assert len(server.detections()) == 2
    assert [row["data"]["i"] for row in record_rows(path)] == list(range(30)) + list(range(20))


# -- 9. multiprocessing fork children that never call finish ------------------------------------

def test_fork_children_without_finish_are_recorded_and_sent(tmp_path):
    with Receiver(port=0) as server:
        proc = Proc(tmp_path, "fork_children.py", "offline", env=reporting_env(server.url))
        status, out, err = proc.end(timeout=120)
        assert status == 0, err
        check_stderr(err)
        assert "exit codes [0, 0]" in out
        ids = [line.split()[1] for line in out.splitlines() if line.startswith(("child", "parent"))]
        rows = record_rows(record_path(tmp_path))
        for run_id in ids[:2]:
            assert [r["data"]["i"] for r in rows if r["run_id"] == run_id] == list(range(50))
            exactly_once(server, run_id, range(50))
        assert [r["data"]["parent"] for r in rows if r["run_id"] == ids[2]] == list(range(10))
        exactly_once(server, ids[2], range(10))


# -- every background thread: contained, said once, restarted -----------------------------------

def test_guard_contains_a_failure_says_it_once_and_restarts(monkeypatch, capsys):
    from primus_lens_inject import guard, log

    monkeypatch.setattr(log, "_said", set())
    monkeypatch.setattr(guard, "RESTART_FIRST", 0.001)
    calls = []

    def body() -> None:
        calls.append(len(calls))
        if len(calls) < 4:
            raise ValueError(f"boom {len(calls)}")

    thread = guard.start_thread("test", body)
    thread.join(30)
    assert not thread.is_alive() and calls == [0, 1, 2, 3]
    (line,) = capsys.readouterr().err.splitlines()
    assert line == "primus-lens: background test failed (ValueError: boom 1); restarted, " \
                   "training continues"
    assert any(p.match(line) for p in WARNINGS)
    assert guard.hand_off("once", lambda: None, time.monotonic() + 30)


def test_stalled_writer_bounds_memory_by_values_and_keeps_steps(tmp_path, monkeypatch, capsys):
    """In-process, with a real file and a real lock: wide rows meet the values bound long
    before the calls bound, and the calls beyond it keep their steps."""
    import fcntl

    from primus_lens_inject import log
    from primus_lens_inject.capture import calls, record
    from primus_lens_inject.capture.rows import RunRows

    monkeypatch.setattr(log, "_said", set())
    path = tmp_path / "r.jsonl"
    path.touch()
    rows = RunRows("run")
    wide = {f"key{j}": 0.5 for j in range(2000)}
    with open(path) as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)  # another open file: our writer cannot take it
        writer = record.RecordWriter(str(path))
        writer.start()
        for i in range(3000):  # 6,000,000 values: six times the bound, in 3,000 calls
            writer.append((rows, dict(wide, i=i), None, None, time.time(), {}))
        assert writer.stalled and writer.dropped > 0
    assert writer.flush(time.monotonic() + 30)  # the lock is gone: what was kept is written
    writer.append((rows, {"i": 3000}, None, None, time.time(), {}))
    writer.close(time.monotonic() + 30)
    assert writer.closed
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    kept = len(lines) - 1
    assert kept + writer.dropped == 3000 and kept <= 2 * calls.MAX_QUEUED_VALUES // 2000 + 1
    assert [(line["step"], line["data"]["i"]) for line in lines] \
        == [(i, i) for i in range(kept)] + [(3000, 3000)]
    err = capsys.readouterr().err
    assert "is locked by another process" in err and "logged rows are not in it" in err


# -- 12. rows the record cannot take at the process end: spilled, or counted ---------------------

def spilled_record(tmp: Path) -> Path:
    """The one fallback record of the test's TMPDIR (per job: here the writer's pid)."""
    (path,) = (tmp / "tmp").glob("primus-lens-*/job-*/node_0/rank_0/wandb_metrics.jsonl")
    return path


def test_record_locked_past_the_process_end_spills_to_the_fallback(tmp_path):
    """Reporting on: the count is in the reporter's status file (with it off, the record writes
    one of its own: the next two tests)."""
    holder = Proc(tmp_path, "hold_lock.py", str(record_path(tmp_path)))
    holder.expect("locked")
    with Receiver(port=0) as server:
        proc = Proc(tmp_path, "train_steps.py", "disabled", "4001",
                    env=reporting_env(server.url, PRIMUS_LENS_SHUTDOWN_TIMEOUT="2"))
        proc.expect("phase")
        proc.expect("done")
        status, _out, err = proc.end(timeout=60)  # the lock is still held when the process ends
    holder.send()
    assert holder.end(timeout=30)[0] == 0
    assert status == 0
    check_stderr(err, "is locked by another process",
                 "could not take its last 4001 rows at exit (locked by another process); "
                 "they are in ")
    spill = spilled_record(tmp_path)
    assert [row["data"]["i"] for row in record_rows(spill)] == list(range(4001))
    assert record_path(tmp_path).read_bytes() == b""
    assert status_of(tmp_path)["record"] == {
        "path": str(record_path(tmp_path)), "rows_left_out": 0, "rows_spilled_at_exit": 4001,
        "rows_lost_at_exit": 0, "spill_path": str(spill), "reason": "locked by another process"}


def test_record_locked_and_no_fallback_counts_every_row_lost(tmp_path):
    # the job's fallback record cannot be made: a file where its directory belongs
    blocked = tmp_path / "tmp" / f"primus-lens-{os.getuid()}" / "job-trainer-7" / "node_0"
    blocked.parent.mkdir(parents=True)
    blocked.write_text("not a directory")
    holder = Proc(tmp_path, "hold_lock.py", str(record_path(tmp_path)))
    holder.expect("locked")
    proc = Proc(tmp_path, "train_steps.py", "disabled", "4001",
                env={"PRIMUS_LENS_SHUTDOWN_TIMEOUT": "2", "POD_NAME": "trainer-7"})
    proc.expect("phase")
    proc.expect("done")
    status, _out, err = proc.end(timeout=60)
    holder.send()
    assert holder.end(timeout=30)[0] == 0
    assert status == 0
    check_stderr(err, "4001 logged rows are not in the local record")
    record = status_of(tmp_path)["record"]
    assert (record["rows_lost_at_exit"], record["rows_spilled_at_exit"]) == (4001, 0)
    assert record["reason"].startswith("locked by another process; ")


def test_disk_that_never_frees_spills_the_rest_to_the_fallback(tmp_path, small_disk):
    proc = Proc(tmp_path, "train_steps.py", "disabled", "100", "wait", "3900",
                env={"PRIMUS_LENS_WANDB_OUTPUT_PATH": str(small_disk),
                     "PRIMUS_LENS_SHUTDOWN_TIMEOUT": "2"})
    proc.expect("phase")
    path = record_path(tmp_path, root="disk")
    assert wait_until(lambda: path.exists() and path.read_bytes().count(b"\n") == 100)
    fill(small_disk, leave_pages=0)  # and never freed
    proc.send()
    proc.expect("phase")
    proc.expect("done")
    status, _out, err = proc.end(timeout=60)
    assert status == 0
    check_stderr(err, "No space left on device", "could not take its last 3900 rows at exit",
                 "cannot write the reporting status")  # beside the full record: beside the spill
    spill = spilled_record(tmp_path)
    assert [row["data"]["i"] for row in record_rows(path)] == list(range(100))
    assert [row["data"]["i"] for row in record_rows(spill)] == list(range(100, 4000))
    status = json.loads(spill.with_suffix(".status.json").read_text())
    assert (status["record"]["rows_spilled_at_exit"], status["record"]["rows_lost_at_exit"]) \
        == (3900, 0)


# -- 13. one budget for the whole process end -----------------------------------------------------

class BlackHole:
    """A server that accepts connections (the kernel does, up to the backlog) and never answers."""

    def __enter__(self) -> str:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"

    def __exit__(self, *exc) -> None:
        self.sock.close()


BUDGET = 3.0  # PRIMUS_LENS_SHUTDOWN_TIMEOUT in these tests
SLACK = 1.0  # scheduling on a loaded machine, between two steps that follow each other


class DeadServer:
    """An address where nothing listens: every connection is refused at once."""

    def __enter__(self) -> str:
        from test_reporting import free_port

        return f"http://127.0.0.1:{free_port()}/v1"

    def __exit__(self, *exc) -> None:
        pass


@pytest.mark.parametrize("server", [BlackHole, DeadServer])
def test_followed_run_without_finish_keeps_one_budget_for_both_exit_hooks(tmp_path, server):
    """A followed run that exits without ``finish()`` against a server that never answers or
    is not there: the late hook (after wandb's teardown) gets only what is left of the atexit
    hook's budget (before: a budget of its own, 10.4-11.1 s for a 5 s budget).  The times come
    from the process itself (``time.monotonic()`` printed by atexit hooks around ours)."""
    with server() as url:
        proc = Proc(tmp_path, "exit_without_finish.py", "30", "offline", "follow",
                    env=reporting_env(url, PRIMUS_LENS_SHUTDOWN_TIMEOUT=str(BUDGET),
                                      PRIMUS_LENS_API_TIMEOUT="120"))
        proc.expect("done")
        # read line by line: ``communicate`` would miss what ``readline`` has buffered already
        exiting = float(proc.expect("exiting", timeout=120)[1])
        torn = float(proc.expect("torn down", timeout=120)[2])
        ended = float(proc.expect("ended", timeout=120)[1])
        status, _out, err = proc.end(timeout=120)
    assert status == 0, err
    stamps = {"exiting": exiting, "torn down": torn, "ended": ended}
    from primus_lens_inject.capture.session import RECORD_FLOOR

    # the late hook: what is left of the one budget, or the record's floor to read the log
    assert ended - torn <= max(BUDGET - (torn - exiting), RECORD_FLOOR) + SLACK, stamps
    # the whole process end: one budget, the record's floor, and wandb's own teardown (which is
    # not ours: a generous margin for it on a loaded machine)
    assert ended - exiting < BUDGET + RECORD_FLOOR + 15
    # wandb itself prints "socket.send() raised exception." when such a run exits (without the
    # injector too): only our lines are checked
    ours = "\n".join(line for line in err.splitlines() if line.startswith("primus-lens:"))
    silent = server is BlackHole  # it fails nothing: only the budget's end can say it
    check_stderr(ours, "the process end's budget (3 s) ran out waiting for an answer" if silent
                 else "ConnectError")
    assert [row["data"]["i"] for row in record_rows(record_path(tmp_path))] == list(range(30))
    report = status_of(tmp_path)
    assert report["last_error"] == "no answer within the process end's budget" if silent \
        else "ConnectError" in report["last_error"]
    assert report["state"] == "exited with a backlog"


# -- 14. what a newcomer met: doctor, the base URL, a name that does not resolve -----------------

OTLP_SCRIPT = (SCRIPTS / "otlp_run.py").read_text()


def test_doctor_speaks_of_every_sink_and_knows_a_dead_sender(tmp_path):
    """Lens off, OTLP on and delivering: doctor does not say "nothing is sent", shows no Lens
    sender "starting"; a sender killed mid-run is not shown as running; exit status 0 (active)."""
    from conftest import run_cli, run_training
    from test_otlp import otlp_env

    with Receiver(port=0, otlp=True) as receiver:
        env = otlp_env(receiver.otlp_endpoint, OTLP_TEST_ROWS="20")
        result = run_training(tmp_path, OTLP_SCRIPT, env=env)
        assert result.proc.returncode == 0, result.stderr
        doctor = run_cli(["doctor"], training_env(tmp_path, env), cwd=tmp_path)
    assert doctor.returncode == 0, doctor.stderr
    lines = doctor.stdout.splitlines()
    assert "nothing is sent" not in doctor.stdout
    assert "reporting: off (PRIMUS_LENS_WANDB_API_REPORTING=false); the OTLP sink sends the rows " \
           "(otlp below)" in lines
    assert not any(line.startswith("  sender (pid") for line in lines)  # Lens never ran
    assert any(line.startswith("  sender: exited, all delivered; 20 rows sent") for line in lines)

    killed = tmp_path / "killed"
    killed.mkdir()
    with Receiver(port=0) as server:
        env = reporting_env(server.url)
        proc = Proc(killed, "train_steps.py", "offline", "50", "wait", env=env)
        proc.expect("phase")
        assert wait_until(lambda: record_path(killed).with_suffix(".status.json").exists()
                          and status_of(killed)["rows_sent"] == 50)
        assert status_of(killed)["state"] == "running"
        proc.popen.kill()
        proc.end(timeout=30)
        doctor = run_cli(["doctor"], training_env(killed, env), cwd=killed)
    assert doctor.returncode == 0, doctor.stderr
    (sender,) = [line for line in doctor.stdout.splitlines() if line.startswith("  sender (pid")]
    assert f"(pid {proc.popen.pid}): not running (process {proc.popen.pid} ended without " \
           "closing; last: running); 50 rows sent" in sender


def test_doctor_exits_non_zero_when_not_active(tmp_path):
    from conftest import run_cli

    doctor = run_cli(["doctor"], training_env(tmp_path, bootstrap=False), cwd=tmp_path)
    assert doctor.stdout.startswith("injector: NOT ACTIVE")
    assert doctor.returncode == 3, doctor.stderr


def test_invalid_base_url_and_a_name_that_does_not_resolve_are_one_line_each(tmp_path):
    """Port 99999 is refused; the line names what is used instead (the default preset, which
    nobody chose, is called that); the in-cluster name does not resolve here: one line, not a
    retry line besides it."""
    from conftest import run_training

    from primus_lens_inject.config import DEFAULT_API_BASE_URL

    result = run_training(tmp_path, (SCRIPTS / "train_steps.py").read_text(), args=[
        "offline", "5"], env=reporting_env("http://127.0.0.1:99999/v1",
                                            PRIMUS_LENS_SHUTDOWN_TIMEOUT="2"))
    assert result.proc.returncode == 0, result.stderr
    lines = result.injector_lines()
    assert lines[0] == (
        "primus-lens: ignoring PRIMUS_LENS_API_BASE_URL='http://127.0.0.1:99999/v1': port "
        f"'99999' is not a number from 1 to 65535; using {DEFAULT_API_BASE_URL} (the default "
        "preset lens) instead")
    assert lines[1].startswith(f"primus-lens: NO TELEMETRY ENDPOINT: {DEFAULT_API_BASE_URL} (the "
                               "default preset lens, PRIMUS_LENS_API_BASE_URL being invalid) "
                               "does not resolve.")
    assert len(lines) == 2, lines


def test_gpu_source_stuck_at_exit_does_not_extend_it(tmp_path):
    """A GPU file that blocks every reader for ever (a FIFO nobody writes, in place of the
    amdgpu sysfs file; a hung driver does the same): the sampler's stop waits only inside the
    budget (before: 2 s more, whatever the budget).  Times from the process's own atexit hooks;
    disabled mode: wandb's teardown adds nothing."""
    from conftest import BOOTSTRAP_DIR
    from fakes import amdgpu_sysfs

    spec = amdgpu_sysfs.gpu(0)
    sysfs = amdgpu_sysfs.build(str(tmp_path / "root"), [spec])
    budget = 0.2
    proc = Proc(tmp_path, "exit_without_finish.py", "5", "disabled", "wait", env={
        "PYTHONPATH": str(BOOTSTRAP_DIR), "PRIMUS_LENS_WANDB_ENHANCE_METRICS": "true",
        "PRIMUS_LENS_GPU_BACKEND": "sysfs", "PRIMUS_LENS_SYSFS_ROOT": sysfs,
        "PRIMUS_LENS_SAMPLE_INTERVAL": "0.1", "PRIMUS_LENS_SHUTDOWN_TIMEOUT": str(budget)})
    proc.expect("done")
    busy = Path(amdgpu_sysfs.device_dir(sysfs, spec)) / "gpu_busy_percent"
    busy.unlink()
    os.mkfifo(busy)
    time.sleep(1.0)  # ten sampling intervals: the sampler thread is stuck opening it
    proc.send()
    exiting = float(proc.expect("exiting", timeout=120)[1])
    proc.expect("torn down", timeout=120)
    ended = float(proc.expect("ended", timeout=120)[1])
    status, _out, err = proc.end(timeout=120)
    assert status == 0, err
    from primus_lens_inject.metrics.sampler import STOP_WAIT

    # the budget, with a generous margin for load, and still short of the old STOP_WAIT
    assert ended - exiting < budget + 1.3 < STOP_WAIT, (exiting, ended)
    assert [line for line in err.splitlines() if line.startswith("primus-lens:")] == []
