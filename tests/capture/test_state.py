"""In-process tests of the process's one-of-a-kind parts: where the record lives (``paths``), the
fork registry (``state``), the session's path from a ``log`` call to the record line, and what
doctor reads back from the same places."""

from __future__ import annotations

import json
import os
import tempfile
import time
import types
from pathlib import Path

import pytest

from primus_lens_inject import log, paths, state
from primus_lens_inject.capture.session import Session
from primus_lens_inject.cli import doctor
from primus_lens_inject.config import Config
from primus_lens_inject.topology import detect

TOPOLOGY = {"NODE_RANK": "1", "RANK": "5", "LOCAL_RANK": "3", "WORLD_SIZE": "8"}


@pytest.fixture
def tmp_root(tmp_path, monkeypatch) -> Path:
    """The temporary directory (and so ``paths.fallback_root``) inside the test's own."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    return tmp_path


def test_record_location_for_each_setting(tmp_root):
    topology = detect(TOPOLOGY)[0]
    fallback = tmp_root / "tmp" / f"primus-lens-{os.getuid()}"
    kept = paths.record_location(Config.from_env(
        {"PRIMUS_LENS_WANDB_OUTPUT_PATH": str(tmp_root / "out"), "POD_NAME": "trainer/0"}),
        topology)
    assert kept == paths.RecordLocation(
        str(tmp_root / "out/node_1/rank_3/wandb_metrics.jsonl"),
        str(fallback / "job-trainer_0/node_1/rank_3/wandb_metrics.jsonl"), "", 1, 3)
    assert kept.candidates() == [kept.path, kept.fallback]
    # no job identity: the fallback carries the writer's pid, and doctor looks at every one
    anonymous = paths.record_location(
        Config.from_env({"PRIMUS_LENS_WANDB_OUTPUT_PATH": str(tmp_root / "out")}), topology)
    assert anonymous.fallback == str(fallback / f"job-pid-{os.getpid()}/node_1/rank_3/"
                                     "wandb_metrics.jsonl")
    assert not anonymous.fallback_known and anonymous.candidates() == [anonymous.path]
    others = [fallback / f"job-pid-{pid}/node_1/rank_3/wandb_metrics.jsonl" for pid in (7, 8)]
    for other in others:
        other.parent.mkdir(parents=True)
        other.touch()
    assert anonymous.candidates() == [anonymous.path, *map(str, others)]

    off = Config.from_env({"PRIMUS_LENS_WANDB_SAVE_LOCAL": "false"})
    assert paths.record_location(off, topology, reporting=False) \
        == paths.RecordLocation("", "", "", 1, 3)
    private = paths.record_location(off, topology, reporting=True)
    assert (Path(private.private).parent, private.fallback) == (fallback / "spool", "")
    assert Path(private.private).name.startswith(f"{os.getpid()}-")
    assert private.path == os.path.join(private.private, "node_1/rank_3/wandb_metrics.jsonl")
    assert private.candidates() == []  # named, not created: the record writer creates it
    others = [fallback / "spool" / name / "node_1/rank_3/wandb_metrics.jsonl" for name in "ab"]
    for other in [*others, fallback / "spool/c/node_0/rank_3/wandb_metrics.jsonl"]:
        other.parent.mkdir(parents=True)
        other.touch()
    assert private.candidates() == [str(path) for path in others]  # this node and rank only


def test_doctor_reads_the_status_where_the_record_went(tmp_root, monkeypatch):
    """A record that fell back to the temporary directory, and private spools: doctor finds the
    sender's status there (the newest one), not beside a record that was never written."""
    for name in [name for name in os.environ if name.startswith(("PRIMUS_LENS_", "WANDB_"))]:
        monkeypatch.delenv(name)
    for name, value in {**TOPOLOGY, "PRIMUS_LENS_WANDB_OUTPUT_PATH": str(tmp_root / "out"),
                        "POD_NAME": "pod", "PRIMUS_LENS_WANDB_API_REPORTING": "false"}.items():
        monkeypatch.setenv(name, value)
    where = paths.record_location(Config.from_env(), detect()[0])
    status = Path(where.fallback[:-len(".jsonl")] + ".status.json")
    status.parent.mkdir(parents=True)
    status.write_text(json.dumps({"pid": os.getpid(), "updated": 1.0}))
    report = doctor.collect()
    assert report["record"]["path"] == where.path
    assert report["record"]["candidates"] == [where.path, where.fallback]
    assert report["reporting"]["sender"] == {"pid": os.getpid(), "updated": 1.0,
                                             "process_alive": True}

    monkeypatch.setenv("PRIMUS_LENS_WANDB_SAVE_LOCAL", "false")
    monkeypatch.setenv("PRIMUS_LENS_WANDB_API_REPORTING", "true")
    monkeypatch.setenv("PRIMUS_LENS_API_BASE_URL", "http://127.0.0.1:9/v1")  # refused at once
    spools = Path(paths.fallback_root()) / "spool"
    for name, updated in (("1-aa", 5.0), ("2-bb", 9.0), ("3-cc", 2.0)):
        beside = spools / name / "node_1/rank_3/wandb_metrics.status.json"
        beside.parent.mkdir(parents=True)
        beside.write_text(json.dumps({"pid": int(name[0]), "updated": updated}))
        (beside.parent / "wandb_metrics.jsonl").touch()
    report = doctor.collect()
    assert (report["record"]["path"], report["record"]["private_spool"]) == (None, True)
    assert len(report["record"]["candidates"]) == 3
    sender = report["reporting"]["sender"]
    assert (sender["pid"], sender["updated"]) == (2, 9.0) and "process_alive" in sender


def test_fork_callbacks_run_in_order_and_one_failure_skips_none(monkeypatch, capsys):
    """With a real fork: before-callbacks in reverse order, after-callbacks in order, in parent
    and child, the log's fresh lock first in the child; a raising callback is said once."""
    if not hasattr(os, "register_at_fork"):
        pytest.skip("no os.register_at_fork")
    for name in ("_before", "_after_in_parent", "_after_in_child"):
        monkeypatch.setattr(state, name, [])
    monkeypatch.setattr(state, "_fork_hooked", False)  # this test's lists get the log reset too
    monkeypatch.setattr(log, "_said", set())
    seen = []
    read, write = os.pipe()

    def child_says(what: str):
        return lambda: os.write(write, what.encode() + b",")

    def broken() -> None:
        raise RuntimeError("boom")

    state.at_fork(before=lambda: seen.append("before-1"), after_in_parent=broken,
                  after_in_child=child_says("child-1"))
    state.at_fork(before=lambda: seen.append("before-2"),
                  after_in_parent=lambda: seen.append("parent-2"),
                  after_in_child=child_says("child-2"))
    assert state._after_in_child[0] is log.reset_after_fork
    lock = log._lock
    pid = os.fork()
    if pid == 0:  # the child: report whether the log's lock is a new one, then leave at once
        os.write(write, b"new-lock," if log._lock is not lock else b"same-lock,")
        os._exit(0)
    os.close(write)
    _, code = os.waitpid(pid, 0)
    with os.fdopen(read, "rb") as pipe:
        child = pipe.read().decode()
    assert code == 0
    assert child == "child-1,child-2,new-lock,"
    assert seen == ["before-2", "before-1", "parent-2"]
    assert capsys.readouterr().err == \
        "primus-lens: fork handling failed (RuntimeError: boom); training continues\n"


def test_session_from_log_call_to_record_line(tmp_path, monkeypatch):
    """begin_log/end_log as the wrapper calls them, with a real record writer: the row wandb
    gets, the line the record keeps, the end of the run; patch_run sees each adopted run."""
    monkeypatch.setattr(state, "_exit_hooked", True)  # no atexit/SIGTERM hook in pytest itself
    config = Config.from_env({"PRIMUS_LENS_WANDB_OUTPUT_PATH": str(tmp_path),
                              "PRIMUS_LENS_WANDB_API_REPORTING": "false"})
    # the session starts this process's rank pulse, which reads the process's configuration:
    # the test's, so that it writes beside this record, not under the working directory (the
    # checkout, where every pytest worker would append to one file for the rest of the run)
    monkeypatch.setattr(state, "_config", config)
    patched = []
    session = Session(config, detect({})[0], patched.append)
    run = types.SimpleNamespace(id="run-1", starting_step=4)
    row = {"loss": 0.5}
    prepared = session.begin_log(run, (row,), {"commit": True})
    assert prepared == ((row,), {"commit": True}, {"loss": 0.5}, {}, None, True)
    assert prepared[2] is not row  # a copy: later changes to the user's dict stay out
    row["loss"] = 9.0
    session.end_log(run, prepared)
    session.end_log(run, session.begin_log(run, (), {"data": {"acc": 1}, "step": 7,
                                                     "commit": False}))
    assert session.begin_log(run, ("not a mapping",), {}) is None
    assert patched == [run]
    session.on_finish(run)
    session.shutdown()
    lines = [json.loads(line) for line in (tmp_path / "node_0/rank_0/wandb_metrics.jsonl")
             .read_text().splitlines()]
    assert [(line["run_id"], line["step"], line["data"]) for line in lines] == [
        ("run-1", 4, {"loss": 0.5, "_primus_lens_enabled": True}),
        ("run-1", 7, {"acc": 1, "_primus_lens_enabled": True})]
    assert lines[0]["timestamp"] <= lines[1]["timestamp"] <= time.time()


class StuckSource:
    """A sampler source stuck for ever in its library (a hung GPU driver call): ``sample``
    blocks until the test lets it go."""

    name = "stuck"

    def __init__(self) -> None:
        import threading

        self.entered = threading.Event()
        self.release = threading.Event()

    def sample(self) -> dict:
        self.entered.set()
        self.release.wait()
        return {}

    def close(self) -> None:
        pass


def test_sampler_stuck_in_a_source_stops_within_the_budget(monkeypatch):
    """The sampler's stop waits inside the process end's budget: a source that never returns
    does not extend the exit (before: ``STOP_WAIT`` after the budget; made long here so the
    difference cannot be timing)."""
    from primus_lens_inject.metrics import sampler as sampler_module

    monkeypatch.setattr(state, "_exit_hooked", True)
    monkeypatch.setattr(sampler_module, "STOP_WAIT", 60.0)
    budget = 0.5
    config = Config.from_env({"PRIMUS_LENS_SHUTDOWN_TIMEOUT": str(budget),
                              "PRIMUS_LENS_WANDB_API_REPORTING": "false"})
    session = Session(config, detect({})[0], lambda run: None)
    source = StuckSource()
    session.sampler = sampler_module.Sampler([source], 0.1, first_sample_wait=0)
    session.sampler.start()
    assert source.entered.wait(30)
    began = time.monotonic()
    session.shutdown()
    elapsed = time.monotonic() - began
    source.release.set()
    assert elapsed < budget + 10, elapsed  # a generous margin for load, far below STOP_WAIT
