"""The pod agent as the pod's single sender (docs/agent.md): real trainer processes writing one
pod's record root with ``PRIMUS_LENS_AGENT=true``, a real ``primus-lens agent`` process beside
them, and the built-in receiver on loopback.

Every assertion is on what arrived (each row once, under its writer's identity and key prefix)
or on what the processes said; every wait is bounded and generous, none is timed.
"""

from __future__ import annotations

import fcntl
import json
import signal
import subprocess
import textwrap
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional

import installs
import pytest
from conftest import LAYOUT, TRAIN_PYTHON, strict_json, training_env, wait_until

from primus_lens_inject.devserver.receiver import Receiver

POD = "trainer-master-0"
WAIT = 120.0  # seconds any one wait may take on a loaded machine (never a timing assertion)

# One trainer: a run in a wandb group (so each rank's keys get its ``rank{R}/`` label), ROWS
# rows, then "logged <run id>"; with HOLD=1 it waits for a line on stdin, logs ROWS more rows and
# prints "more"; with NO_END=1 it then sleeps until it is killed.
TRAINER = textwrap.dedent("""
    import os, sys, time, wandb
    rows = int(os.environ.get("ROWS", "20"))
    run = wandb.init(project="agent", group="job-1", config={"lr": 0.25, "framework": "megatron"})
    for i in range(rows):
        run.log({"loss": i + 0.5})
    print("logged", run.id, flush=True)
    if os.environ.get("HOLD") == "1":
        sys.stdin.readline()
        for i in range(rows, 2 * rows):
            run.log({"loss": i + 0.5})
        print("more", flush=True)
    if os.environ.get("NO_END") == "1":
        time.sleep(600)
    run.finish()
""")


def pod_env(tmp: Path, receiver_url: str, **extra: str) -> Dict[str, str]:
    """What the chart gives the trainers and the agent of one pod: one record root, one
    identity, reporting on; the agent's port chosen by the system, no detection window."""
    return training_env(tmp, {
        "PRIMUS_LENS_WANDB_API_REPORTING": "true", "PRIMUS_LENS_API_BASE_URL": receiver_url,
        "POD_NAME": POD, "POD_UID": "uid-" + POD, "POD_NAMESPACE": "team-a",
        "PRIMUS_LENS_WANDB_FLUSH_INTERVAL": "0.2", "PRIMUS_LENS_AGENT_PORT": "0",
        "PRIMUS_LENS_AGENT_ADDRESS": "127.0.0.1", "PRIMUS_LENS_AGENT_DETECTION_WINDOW": "0",
        "PRIMUS_LENS_AGENT_DRAIN_SECONDS": "60", "PRIMUS_LENS_SHUTDOWN_TIMEOUT": "20", **extra})


class Agent:
    """``primus-lens agent`` as a process: its first line read, its last line kept."""

    def __init__(self, tmp: Path, env: Dict[str, str], *args: str, user: Optional[int] = None,
                 cli: Optional[List[str]] = None) -> None:
        """``user``: the uid (and gid) it runs as, for a pod whose agent is not its trainers'
        user, with ``cli``, a command that user can run (``test_delivery_users.py``); None:
        this process's, and the layout's command."""
        self.root = tmp / "out"
        self.proc = subprocess.Popen([*(cli or LAYOUT.cli), "agent", "--root", str(self.root),
                                      *args],
                                     env=installs.cli_env(LAYOUT, env), cwd=tmp, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     user=user, group=user)
        self.first = self.proc.stdout.readline()
        assert self.first.startswith("primus-lens agent: sending the records under"), \
            self.first + self.proc.stderr.read()
        self.out = self.err = ""

    def info(self) -> dict:
        return json.loads((self.root / "agent.json").read_text())

    def stop(self, timeout: float = WAIT) -> str:
        """SIGTERM, then the exit status must be 0; the last line on stdout."""
        self.proc.send_signal(signal.SIGTERM)
        out, self.err = self.proc.communicate(timeout=timeout)
        assert self.proc.returncode == 0, self.err[-3000:]
        self.out = out
        return out.strip().splitlines()[-1]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate(timeout=30)


class Trainer:
    """One trainer process of the pod (a rank), started in the background."""

    def __init__(self, tmp: Path, env: Dict[str, str], rank: int, world: int,
                 launcher: Optional[List[str]] = None, script: str = TRAINER, **extra: str) -> None:
        path = tmp / f"trainer-{rank}.py"
        path.write_text(script)
        rank_env = {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world)} \
            if launcher is None else {}
        self.proc = subprocess.Popen([*(launcher or [TRAIN_PYTHON]), str(path)], cwd=tmp,
                                     env={**env, **rank_env, **extra}, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)

    def line(self) -> str:
        text = self.proc.stdout.readline()
        assert text, self.proc.stderr.read()[-3000:] if self.proc.poll() is not None else "EOF"
        return text.strip()

    def finish(self) -> str:
        out, err = self.proc.communicate(timeout=WAIT)
        assert self.proc.returncode == 0, err[-3000:]
        return out


def record(root: Path, rank: int) -> List[dict]:
    path = root / "node_0" / f"rank_{rank}" / "wandb_metrics.jsonl"
    return [strict_json(line) for line in path.read_text().splitlines()] if path.exists() else []


def steps_of(receiver: Receiver, run_id: str) -> Counter:
    return Counter(row["step"] for row in receiver.logs(run_id=run_id))


def exactly_once(receiver: Receiver, run_id: str, steps) -> bool:
    got = steps_of(receiver, run_id)
    return sorted(got) == sorted(steps) and set(got.values()) == {1}


def sender_pid(root: Path, rank: int) -> int:
    """The pid in the record's status file (written by its sender), 0 before there is one."""
    status = root / "node_0" / f"rank_{rank}" / "wandb_metrics.status.json"
    try:
        return json.loads(status.read_text())["pid"]
    except (OSError, ValueError):
        return 0


@pytest.fixture
def receiver():
    with Receiver(port=0) as server:
        yield server


@pytest.fixture
def agents():
    started: List[Agent] = []
    yield started
    for agent in started:
        agent.kill()


def test_every_row_once_under_its_writer_with_one_detection(tmp_path, receiver, agents):
    env = pod_env(tmp_path, receiver.url)
    agent = Agent(tmp_path, env)  # before any record exists: it finds them as they appear
    agents.append(agent)
    trainers = [Trainer(tmp_path, {**env, "PRIMUS_LENS_AGENT": "true"}, rank, 3)
                for rank in range(3)]
    ids = {rank: trainer.line().split()[1] for rank, trainer in enumerate(trainers)}
    for trainer in trainers:
        trainer.finish()
    for rank, run_id in ids.items():
        assert wait_until(lambda run_id=run_id: exactly_once(receiver, run_id, range(20))), \
            (rank, steps_of(receiver, run_id))
        rows = receiver.logs(run_id=run_id)
        assert {(row["pod"], row["pod_uid"]) for row in rows} == {(POD, "uid-" + POD)}
        assert [row["data"] for row in rows] == [{f"rank{rank}/loss": i + 0.5} for i in range(20)]
        assert wait_until(lambda rank=rank: sender_pid(agent.root, rank) == agent.proc.pid)
    # three owners of one job (same frameworks, configuration, group): one report
    assert wait_until(lambda: receiver.detections())
    doctor = subprocess.run([*LAYOUT.cli, "doctor", "--json"], capture_output=True, text=True,
                            timeout=WAIT, cwd=tmp_path,
                            env=installs.cli_env(LAYOUT, {**env, "PRIMUS_LENS_AGENT": "true"}))
    section = json.loads(doctor.stdout)["agent"]
    assert section["serving"] and section["port"] == agent.info()["port"] > 0, section
    assert section["healthz"] == "HTTP 200" and section["pid"] == agent.proc.pid
    last = agent.stop()
    assert last == (f"primus-lens agent: ended: delivered 60 rows to Lens from 3 record(s) and 1 "
                    f"detection report(s) (2 identical ones not sent); nothing left in the "
                    f"records under {agent.root}"), agent.out + agent.err
    assert len(receiver.detections()) == 1
    detection = receiver.detections()[0]["data"]
    assert detection["evidence"]["wandb"]["id"] in ids.values()
    # its verdict is kept beside the record it came from (the identical ones were not sent)
    kept = [json.loads(path.read_text())
            for path in agent.root.glob("node_0/rank_*/wandb_metrics.detections/sent/*.json")]
    assert [(k["hints"], k["evidence"]["wandb"]["id"]) for k in kept] == [
        (detection["hints"], detection["evidence"]["wandb"]["id"])]
    assert not list(agent.root.glob("node_0/rank_*/wandb_metrics.detections/*.json"))
    assert agent.info()["ended"] >= agent.info()["started"]
    assert sum(len(receiver.logs(run_id=run_id)) for run_id in ids.values()) == 60


def test_torchrun_gloo_ranks_each_delivered_once(tmp_path, receiver, agents):
    pytest.importorskip("torch")
    env = pod_env(tmp_path, receiver.url, PRIMUS_LENS_AGENT="true", ROWS="15")
    agent = Agent(tmp_path, env)
    agents.append(agent)
    script = textwrap.dedent("""
        import os, torch.distributed as dist, wandb
        dist.init_process_group("gloo")
        rank = dist.get_rank()
        run = wandb.init(project="agent", group="torchrun-job")
        for i in range(int(os.environ["ROWS"])):
            run.log({"loss": rank * 100 + i})
        run.finish()
        print("run", rank, run.id, flush=True)
        dist.barrier()
        dist.destroy_process_group()
    """)
    launcher = Trainer(tmp_path, env, 0, 2, launcher=[
        TRAIN_PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"],
        script=script)
    out = launcher.finish()
    ids = {int(rank): run_id for tag, rank, run_id in
           (line.split() for line in out.splitlines() if line.startswith("run "))}
    assert sorted(ids) == [0, 1], out
    for rank, run_id in ids.items():
        assert wait_until(lambda run_id=run_id: exactly_once(receiver, run_id, range(15))), \
            steps_of(receiver, run_id)
        assert [row["data"] for row in receiver.logs(run_id=run_id)] == \
            [{f"rank{rank}/loss": rank * 100 + i} for i in range(15)]
    assert "nothing left" in agent.stop()


def test_agent_mode_trainer_only_records(tmp_path, receiver):
    """No agent runs: a trainer with PRIMUS_LENS_AGENT=true sends nothing, never takes the
    owner lock, and leaves its rows and its detection report on disk for the agent."""
    env = pod_env(tmp_path, receiver.url, PRIMUS_LENS_AGENT="true", HOLD="1")
    trainer = Trainer(tmp_path, env, 0, 1)
    trainer.line()
    root = tmp_path / "out"
    assert wait_until(lambda: len(record(root, 0)) == 20)
    lock = root / "node_0" / "rank_0" / "wandb_metrics.lock"
    with open(lock, "a") as f:  # the trainer is alive and does not hold it
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(f, fcntl.LOCK_UN)
    trainer.proc.stdin.write("go\n")
    trainer.proc.stdin.flush()
    trainer.finish()
    assert receiver.requests() == []
    assert len(record(root, 0)) == 40
    reports = list((root / "node_0" / "rank_0" / "wandb_metrics.detections").glob("*~*.json"))
    assert len(reports) == 1  # stored with its job key, for the agent


def test_a_trainer_without_the_agent_keeps_its_record_the_agent_waits(tmp_path, receiver, agents):
    """The lock decides: a trainer that sends its own record (no PRIMUS_LENS_AGENT) holds it,
    and the agent sends none of it; once that trainer is gone the agent takes the record over
    from the trainer's cursor."""
    env = pod_env(tmp_path, receiver.url)
    agent = Agent(tmp_path, env)
    agents.append(agent)
    trainer = Trainer(tmp_path, env, 0, 1, HOLD="1", NO_END="1")
    run_id = trainer.line().split()[1]
    root = agent.root
    assert wait_until(lambda: exactly_once(receiver, run_id, range(20)))
    assert wait_until(lambda: agent.info()["records"] == 1)  # the agent knows the record
    assert wait_until(lambda: sender_pid(root, 0) == trainer.proc.pid)
    receiver.set_faults(fail_rate=1.0)  # from now on nothing is accepted while the trainer lives
    trainer.proc.stdin.write("go\n")
    trainer.proc.stdin.flush()
    assert trainer.line() == "more"
    assert wait_until(lambda: len(record(root, 0)) == 40)
    with open(root / "node_0" / "rank_0" / "wandb_metrics.lock", "a") as f, \
            pytest.raises(BlockingIOError):  # the trainer holds it (the agent cannot either)
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    trainer.proc.kill()  # its lock goes with it; its rows stay in the record
    trainer.proc.communicate(timeout=30)
    receiver.set_faults()
    assert wait_until(lambda: exactly_once(receiver, run_id, range(40))), steps_of(receiver, run_id)
    assert wait_until(lambda: sender_pid(root, 0) == agent.proc.pid)
    assert "nothing left" in agent.stop()


def test_rows_of_a_sigkilled_trainer_are_delivered(tmp_path, receiver, agents):
    env = pod_env(tmp_path, receiver.url, PRIMUS_LENS_AGENT="true", ROWS="30", HOLD="1")
    receiver.set_faults(fail_rate=1.0)  # nothing arrives before the kill
    agent = Agent(tmp_path, env)
    agents.append(agent)
    trainer = Trainer(tmp_path, env, 0, 1)
    run_id = trainer.line().split()[1]
    assert wait_until(lambda: len(record(agent.root, 0)) == 30)
    trainer.proc.kill()
    trainer.proc.communicate(timeout=30)
    receiver.set_faults()
    assert wait_until(lambda: exactly_once(receiver, run_id, range(30))), steps_of(receiver, run_id)
    assert "nothing left" in agent.stop()


def test_sigterm_drains_until_the_trainer_exits(tmp_path, receiver, agents):
    env = pod_env(tmp_path, receiver.url, PRIMUS_LENS_AGENT="true", HOLD="1")
    agent = Agent(tmp_path, env)
    agents.append(agent)
    trainer = Trainer(tmp_path, env, 0, 1)
    run_id = trainer.line().split()[1]
    assert wait_until(lambda: exactly_once(receiver, run_id, range(20)))
    agent.proc.send_signal(signal.SIGTERM)  # the pod ends; the trainer still writes
    assert wait_until(lambda: agent.proc.poll() is not None, timeout=3) is False  # it waits
    trainer.proc.stdin.write("go\n")
    trainer.proc.stdin.flush()
    trainer.finish()
    out, err = agent.proc.communicate(timeout=WAIT)
    assert agent.proc.returncode == 0, err
    assert exactly_once(receiver, run_id, range(40)), steps_of(receiver, run_id)
    assert out.strip().splitlines()[-1].endswith(f"nothing left in the records under {agent.root}")


def seen_writing(agent: Agent, records: int) -> None:
    """Bounded wait until the agent has looked at ``records`` records in a full round after
    finding them (its heartbeat comes after a round's look at the trainers' writing locks)."""
    assert wait_until(lambda: agent.info()["records"] == records)
    found = agent.info()["updated"]
    assert wait_until(lambda: agent.info()["updated"] > found)


def test_exit_when_done_ends_by_itself_once_the_trainers_are_gone(tmp_path, receiver, agents):
    env = pod_env(tmp_path, receiver.url, PRIMUS_LENS_AGENT="true", HOLD="1")
    agent = Agent(tmp_path, env, "--exit-when-done")  # the chart's regular-container form
    agents.append(agent)
    trainers = [Trainer(tmp_path, env, rank, 2) for rank in range(2)]
    ids = [trainer.line().split()[1] for trainer in trainers]
    seen_writing(agent, 2)
    assert all(wait_until(lambda run_id=run_id: exactly_once(receiver, run_id, range(20)))
               for run_id in ids)
    trainers[0].proc.stdin.write("go\n")
    trainers[0].proc.stdin.flush()
    trainers[0].finish()
    seen_writing(agent, 2)  # one trainer gone, one still writing: the agent stays
    assert agent.proc.poll() is None
    trainers[1].proc.stdin.write("go\n")
    trainers[1].proc.stdin.flush()
    trainers[1].finish()
    out, err = agent.proc.communicate(timeout=WAIT)  # no signal: it ends by itself
    assert agent.proc.returncode == 0, err[-3000:]
    lines = out.strip().splitlines()
    assert lines[-2].startswith("primus-lens agent: the trainers have exited; sending what is "
                                "left (at most 60 s), then ending"), out
    assert lines[-1] == (f"primus-lens agent: ended: delivered 80 rows to Lens from 2 record(s) "
                         f"and 1 detection report(s) (1 identical ones not sent); nothing left in "
                         f"the records under {agent.root}"), out + err
    assert all(exactly_once(receiver, run_id, range(40)) for run_id in ids)
    assert len(receiver.detections()) == 1


def test_exit_when_done_waits_for_a_trainer_and_ends_within_its_budget(tmp_path, agents):
    with Receiver(port=0) as receiver:
        url = receiver.url
    env = pod_env(tmp_path, url, PRIMUS_LENS_AGENT="true", PRIMUS_LENS_AGENT_DRAIN_SECONDS="2",
                  HOLD="1")
    agent = Agent(tmp_path, env, "--exit-when-done")  # nothing listens at url any more
    agents.append(agent)
    assert wait_until(lambda: agent.info()["updated"] > agent.info()["started"] + 2.5)
    assert agent.proc.poll() is None  # no trainer seen yet: it waits for them to come
    trainer = Trainer(tmp_path, env, 0, 1)
    trainer.line()
    seen_writing(agent, 1)
    trainer.proc.stdin.write("go\n")
    trainer.proc.stdin.flush()
    trainer.finish()
    out, err = agent.proc.communicate(timeout=WAIT)
    assert agent.proc.returncode == 0, err[-3000:]
    last = out.strip().splitlines()[-1]
    assert last.startswith("primus-lens agent: ended: delivered 0 rows to Lens from 1 record(s)")
    assert "40 line(s)" in last and "for Lens in 1 record(s)" in last, last
    assert len(record(agent.root, 0)) == 40  # kept for whoever sends the record next


def test_receiver_down_the_drain_ends_within_its_budget_and_says_what_is_left(tmp_path, agents):
    with Receiver(port=0) as receiver:
        url = receiver.url
    env = pod_env(tmp_path, url, PRIMUS_LENS_AGENT="true", PRIMUS_LENS_AGENT_DRAIN_SECONDS="2")
    agent = Agent(tmp_path, env)  # nothing listens at url any more
    agents.append(agent)
    Trainer(tmp_path, env, 0, 1).finish()
    assert wait_until(lambda: agent.info()["records"] == 1)
    last = agent.stop()
    assert last.startswith("primus-lens agent: ended: delivered 0 rows to Lens from 1 record(s)"), last
    assert "left in the records under" in last and "20 line(s)" in last and "for Lens in 1 record(s)" in last
    assert "1 detection report(s)" in last.split("left in the records")[1]
    assert len(record(agent.root, 0)) == 20  # kept for whoever sends the record next


def test_500s_and_no_workload_answers_are_retried(tmp_path, receiver, agents):
    env = pod_env(tmp_path, receiver.url, PRIMUS_LENS_AGENT="true")
    # the 500s go to row bodies only: the detection report would take some of them otherwise
    receiver.set_faults(fail_requests=3, fail_endpoints=["logs"], no_workload_requests=2)
    agent = Agent(tmp_path, env)
    agents.append(agent)
    run_id = Trainer(tmp_path, env, 0, 1).finish().split()[1]
    assert wait_until(lambda: exactly_once(receiver, run_id, range(20))), steps_of(receiver, run_id)
    assert receiver.requests(status=500) and receiver.requests(status=400)
    assert "nothing left" in agent.stop()
    status = json.loads((agent.root / "node_0" / "rank_0" / "wandb_metrics.status.json").read_text())
    assert status["rows_sent"] == 20 and status["retries"] >= 3 and status["dropped"] == {}


def test_otlp_rows_sent_once_by_the_agent(tmp_path, agents):
    with Receiver(port=0, otlp=True) as receiver:
        _otlp_rows_sent_once(tmp_path, receiver, agents)


def _otlp_rows_sent_once(tmp_path: Path, receiver: Receiver, agents: List[Agent]) -> None:
    env = pod_env(tmp_path, receiver.url, PRIMUS_LENS_AGENT="true", PRIMUS_LENS_OTLP="true",
                  OTEL_EXPORTER_OTLP_ENDPOINT=receiver.otlp_endpoint)
    agent = Agent(tmp_path, env)
    agents.append(agent)
    run_id = Trainer(tmp_path, env, 0, 1).finish().split()[1]
    assert wait_until(lambda: exactly_once(receiver, run_id, range(20)))

    def otlp_steps() -> Counter:
        return Counter(int(point["value"]) for point in receiver.otlp_points(name="wandb.step")
                       if point["resource"].get("wandb.run.id") == run_id)

    assert wait_until(lambda: sorted(otlp_steps()) == list(range(20))), otlp_steps()
    last = agent.stop()
    assert set(otlp_steps().values()) == {1}
    assert "20 rows to OTLP, 20 rows to Lens" in last and "nothing left" in last, last
