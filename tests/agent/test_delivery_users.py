"""The pod agent and its trainers as different users, as in the field: trainers as root (GPU
training images), the agent as an unprivileged user (the chart's default), on one record root
(docs/agent.md, "Who may write the record's directories").

Real processes as in ``test_delivery.py``: the test runs as root and starts the agent with
another uid (``nobody``), so it is skipped where the tests do not run as root.  The pod's
directory is made where that user can reach it (pytest's own temporary directories are 0700),
and the record root is world-writable, as a pod's ``emptyDir`` is.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import installs
import pytest
from conftest import LAYOUT, wait_until
from test_delivery import (  # noqa: F401 (agents, receiver: the fixtures)
    WAIT,
    Agent,
    Trainer,
    agents,
    exactly_once,
    pod_env,
    receiver,
    record,
    sender_pid,
    steps_of,
)

import primus_lens_inject

NOBODY = 65534  # the agent's user here; the chart's default is 65532, any non-root uid will do

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason=(
    "needs root: starts the trainers as root and the agent as another user (uid 65534), as in "
    "a pod whose training image runs as root"))


def _runs_as_nobody(command: List[str], env: Dict[str, str]) -> bool:
    try:
        return subprocess.run([*command, "--help"], user=NOBODY, group=NOBODY, env=env,
                              capture_output=True, timeout=WAIT).returncode == 0
    except PermissionError:  # the interpreter is under a directory closed to that user
        return False


@pytest.fixture
def agent_cli() -> Tuple[List[str], Dict[str, str]]:
    """The command that starts the agent as ``NOBODY``, and the variables it needs: the
    layout's where that user can run it; else (an interpreter under a private home, as pyenv's
    under /root) the system's Python of the same version on the checkout and this
    environment's packages; else the test is skipped."""
    env = installs.cli_env(LAYOUT, {"PATH": os.environ.get("PATH", "")})
    if _runs_as_nobody(LAYOUT.cli, env):
        return LAYOUT.cli, {}
    system = shutil.which(f"python{sys.version_info[0]}.{sys.version_info[1]}", path="/usr/bin")
    # the package as the layout installed it: the checkout, or the wheel's site-packages
    package = Path(primus_lens_inject.__file__).resolve().parent.parent \
        if LAYOUT.mode == "checkout" else installs.purelib(LAYOUT.python)
    extra = {"PYTHONPATH": os.pathsep.join([str(package), sysconfig.get_paths()["purelib"]])}
    command = [system or "python", "-m", "primus_lens_inject"]
    if LAYOUT.mode not in ("checkout", "wheel") or not system \
            or not _runs_as_nobody(command, {**env, **extra}):
        pytest.skip(f"no Python that uid {NOBODY} may run the agent with ({LAYOUT.cli[0]} is "
                    "not readable by it)")
    return command, extra


@pytest.fixture
def pod_dir() -> Iterator[Path]:
    """A directory the agent's user can reach, holding a world-writable record root (``out``,
    what the pod's emptyDir is)."""
    tmp = Path(tempfile.mkdtemp(prefix="primus-lens-users-"))
    tmp.chmod(0o755)
    (tmp / "home").mkdir()
    (tmp / "out").mkdir()
    (tmp / "out").chmod(0o777)
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_an_unprivileged_agent_sends_what_root_trainers_record(
        pod_dir, agent_cli, receiver, agents):  # noqa: F811 (test_delivery's fixtures)
    """Trainers as root with PRIMUS_LENS_AGENT=true and a umask that would shut every other
    user out; the agent as nobody: every row once, by the agent, the detection report sent and
    removed from the queue, the cursors moved; the record itself stays the trainers' (0644)."""
    env = pod_env(pod_dir, receiver.url)
    agent = Agent(pod_dir, {**env, **agent_cli[1]}, user=NOBODY, cli=agent_cli[0])
    agents.append(agent)
    umask = os.umask(0o077)  # the trainers' (inherited): the directories are opened by chmod
    try:
        trainers = [Trainer(pod_dir, {**env, "PRIMUS_LENS_AGENT": "true"}, rank, 2)
                    for rank in range(2)]
    finally:
        os.umask(umask)
    ids = {rank: trainer.line().split()[1] for rank, trainer in enumerate(trainers)}
    for trainer in trainers:
        trainer.finish()
    root = agent.root
    for rank, run_id in ids.items():
        assert wait_until(lambda run_id=run_id: exactly_once(receiver, run_id, range(20))), \
            (rank, steps_of(receiver, run_id))
        assert wait_until(lambda rank=rank: sender_pid(root, rank) == agent.proc.pid)
    assert wait_until(lambda: receiver.detections())
    last = agent.stop()
    assert last == (f"primus-lens agent: ended: delivered 40 rows to Lens from 2 record(s) and 1 "
                    f"detection report(s) (1 identical ones not sent); nothing left in the "
                    f"records under {root}"), agent.out + agent.err
    assert "leaves" not in agent.err and "cannot" not in agent.err, agent.err
    assert len(receiver.detections()) == 1
    assert sum(len(receiver.logs(run_id=run_id)) for run_id in ids.values()) == 40

    for rank in range(2):
        rank_dir = root / "node_0" / f"rank_{rank}"
        record_file = rank_dir / "wandb_metrics.jsonl"
        assert len(record(root, rank)) == 20
        # the trainers made the directories (root's) open to the agent, not the record
        assert (mode(rank_dir.parent), mode(rank_dir)) == (0o777, 0o777)
        assert (record_file.stat().st_uid, mode(record_file)) == (0, 0o644)
        assert mode(rank_dir / "pulse.jsonl") == mode(rank_dir / "wandb_metrics.writing") == 0o644
        for side in ("wandb_metrics.detections", "wandb_metrics.writers"):
            assert (rank_dir / side).stat().st_uid == 0 and mode(rank_dir / side) == 0o777, side
        # the agent's side files are its own; its cursor acknowledges the whole record
        cursor = rank_dir / "wandb_metrics.cursor"
        assert cursor.stat().st_uid == NOBODY
        assert json.loads(cursor.read_text())["offset"] == record_file.stat().st_size
        assert (rank_dir / "wandb_metrics.lock").stat().st_uid == NOBODY
        assert not list((rank_dir / "wandb_metrics.detections").glob("*.json")), \
            "the agent removed the root-owned reports it sent (or the identical one it did not)"
    kept = list(root.glob("node_0/rank_*/wandb_metrics.detections/sent/*.json"))
    assert len(kept) == 1 and kept[0].stat().st_uid == NOBODY


def test_a_record_another_user_made_without_agent_mode_is_left_to_its_trainer(
        pod_dir, agent_cli, receiver, agents):  # noqa: F811 (test_delivery's fixtures)
    """A root trainer without PRIMUS_LENS_AGENT (it sends its own record, in a 0755 directory):
    the agent as nobody says once which files it cannot create there and whose the directory
    is, takes no lock of its own elsewhere and sends nothing of that record; the trainer sends
    every row, once."""
    env = pod_env(pod_dir, receiver.url)
    agent = Agent(pod_dir, {**env, **agent_cli[1]}, user=NOBODY, cli=agent_cli[0])
    agents.append(agent)
    trainer = Trainer(pod_dir, env, 0, 1)
    run_id = trainer.finish().split()[1]
    root = agent.root
    assert wait_until(lambda: exactly_once(receiver, run_id, range(20))), \
        steps_of(receiver, run_id)
    assert sender_pid(root, 0) == trainer.proc.pid
    rank_dir = root / "node_0" / "rank_0"
    assert mode(rank_dir) == 0o755  # without agent mode nothing is opened to other users
    last = agent.stop()
    said = [line for line in agent.err.splitlines() if "leaves" in line]
    assert said == [
        f"primus-lens: the agent leaves {rank_dir / 'wandb_metrics.jsonl'} to its trainer: it "
        f"cannot create or replace wandb_metrics.lock, wandb_metrics.cursor, "
        f"wandb_metrics.status.json in {rank_dir} (permission denied: it belongs to uid 0, mode "
        f"755, and this agent runs as uid {NOBODY}); a trainer without PRIMUS_LENS_AGENT=true "
        f"(or with an injector older than this agent) made it, and sends that record itself"], \
        agent.err
    assert last == (f"primus-lens agent: ended: delivered no rows from 0 record(s) and 0 "
                    f"detection report(s); 1 record(s) left to their trainers (their directories "
                    f"are not the agent's to write); nothing left in the records under {root}"), \
        agent.out + agent.err
    assert exactly_once(receiver, run_id, range(20)), "the agent sent none of it"
    assert "sender lock" not in agent.err, "no lock of the agent's own elsewhere"
