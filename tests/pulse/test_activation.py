"""When a process pulses, and when it pays nothing (docs/pulse.md, "Activation").

Real interpreters with only ``PYTHONPATH`` set (the install under test, ``conftest``):

* a process that imports neither torch nor wandb imports nothing of ours and starts no thread;
  one that imports torch without joining a job only has ``init_process_group`` wrapped;
* ``init_process_group`` starts the pulse (the optimizer hook counts), ``jax.distributed``'s
  ``initialize`` too (a stand-in package here: jax is not installed), a wandb owner without
  torch counts its wandb steps; ``PRIMUS_LENS_PULSE=false`` leaves every one of them alone;
* garbage values get one warning each and the defaults;
* doctor says whether a process started there pulses, with which step source, and where;
* the C-level watchdog stands aside for an application that uses faulthandler's watchdog itself
  (said once), and a child forked while it is armed exits normally.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Dict, List, Optional

import pytest
from conftest import TRAIN_PYTHON, run_cli, run_training, training_env

from primus_lens_inject import pulseline

JOIN = """
    import sys, threading, time
    import torch, torch.distributed as dist
    dist.init_process_group("gloo", init_method="file://" + sys.argv[1], rank=0, world_size=1)
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(5):
        model(torch.ones(2)).sum().backward()
        optimizer.step()
"""
STATE = """
    from primus_lens_inject import pulse
    print(pulse.describe())
    print(sorted(t.name for t in threading.enumerate() if t.name == "primus-lens-pulse"))
"""


def has_torch() -> bool:
    probe = subprocess.run([TRAIN_PYTHON, "-c", "import torch.distributed"], capture_output=True,
                           timeout=120)
    return probe.returncode == 0


needs_torch = pytest.mark.skipif(not has_torch(), reason=f"{TRAIN_PYTHON} has no torch")


def pulse_lines(out: Path) -> List[dict]:
    found = []
    for rank_dir in sorted(out.glob("node_*/rank_*")):
        for path in pulseline.pulse_files(str(rank_dir)):
            found += [pulseline.decode(raw) for raw in Path(path).read_bytes().splitlines()]
    assert None not in found
    return found


def run(tmp_path: Path, script: str, env: Optional[Dict[str, str]] = None):
    result = run_training(tmp_path, script, env, args=[str(tmp_path / "rendezvous")])
    assert result.proc.returncode == 0, result.stderr[-4000:]
    return result


def test_a_process_without_torch_or_wandb_starts_nothing(tmp_path) -> None:
    result = run(tmp_path, """
        import json, sys, threading
        ours = sorted(m for m in sys.modules if m.startswith("primus_lens"))
        print(ours, threading.active_count())
    """)
    assert result.proc.stdout.split("\n")[0] == "[] 1"
    assert not result.output.exists()


@needs_torch
def test_importing_torch_wraps_init_and_starts_nothing(tmp_path) -> None:
    result = run(tmp_path, """
        import sys, threading
        import torch, torch.distributed as dist
        ours = sorted(m for m in sys.modules if m.startswith("primus_lens"))
        print(ours, threading.active_count(), dist.init_process_group._primus_lens_wrapped,
              dist.distributed_c10d.init_process_group is dist.init_process_group)
    """)
    assert result.proc.stdout.split("\n")[0] == "[] 1 True True"
    assert not result.output.exists()


@needs_torch
def test_joining_a_job_starts_the_pulse_once(tmp_path) -> None:
    result = run(tmp_path, JOIN + STATE)
    state, threads = result.proc.stdout.splitlines()[:2]
    assert "'pulsing': True" in state and "'reason': 'torch.distributed'" in state
    assert "'step_source': 'optimizer'" in state
    assert threads == "['primus-lens-pulse']"
    (last,) = pulse_lines(result.output)  # the default interval is 10 s: the exit's line only
    assert (last["kind"], last["steps"], last["rank"], last["world_size"]) == ("pulse", 5, 0, 1)
    assert result.stderr == ""


@needs_torch
def test_pulse_false_leaves_torch_and_wandb_alone(tmp_path) -> None:
    result = run(tmp_path, JOIN + """
    import wandb
    run = wandb.init(project="off")
    run.log({"x": 1})
    run.finish()
    print(getattr(dist.init_process_group, "_primus_lens_wrapped", False))
    """ + STATE, env={"PRIMUS_LENS_PULSE": "false"})
    wrapped, state, threads = result.proc.stdout.splitlines()[:3]
    assert wrapped == "False" and "'pulsing': False" in state and "PRIMUS_LENS_PULSE=false" in state
    assert threads == "[]"
    assert pulse_lines(result.output) == [] and len(result.record()) == 1


def test_jax_initialize_starts_the_pulse_without_a_step_source(tmp_path) -> None:
    stand_in = tmp_path / "packages" / "jax"
    (stand_in / "distributed").mkdir(parents=True)
    (stand_in / "__init__.py").write_text("")
    (stand_in / "distributed" / "__init__.py").write_text("def initialize(*args, **kwargs):\n"
                                                           "    return None\n")
    result = run_training(tmp_path, """
    import sys, threading
    sys.path.insert(0, sys.argv[1])
    import jax.distributed
    jax.distributed.initialize("127.0.0.1:1234", num_processes=1, process_id=0)
    """ + STATE, args=[str(tmp_path / "packages")], env={"PRIMUS_LENS_PULSE_INTERVAL": "0.5"})
    assert result.proc.returncode == 0, result.stderr
    state = result.proc.stdout.splitlines()[0]
    assert "'reason': 'jax.distributed'" in state and "'step_source': 'none'" in state
    lines = pulse_lines(result.output)
    assert lines and {(line["kind"], line["step_source"], line["steps"]) for line in lines} == {
        ("pulse", "none", 0)}


def test_a_wandb_owner_without_torch_counts_its_wandb_steps(tmp_path) -> None:
    result = run(tmp_path, """
        import sys, time, wandb
        run = wandb.init(project="numpy-loop")
        for i in range(6):
            run.log({"loss": 1.0 / (i + 1)})
            time.sleep(0.3)
        run.finish()
        print(run.id, "torch" in sys.modules)
    """, env={"PRIMUS_LENS_PULSE_INTERVAL": "0.5"})
    run_id, torch = result.proc.stdout.split()[-2:]
    assert torch == "False"
    lines = pulse_lines(result.output)
    assert {line["step_source"] for line in lines} == {"wandb"}
    assert lines[-1]["run_id"] == run_id and lines[-1]["wandb_step"] == 6
    assert 0 < lines[-1]["steps"] <= 6  # counted from the first step the pulse saw


@needs_torch
def test_the_first_optimizer_step_takes_over_from_the_wandb_step(tmp_path) -> None:
    """torch imported, no optimizer step yet (a JAX loop whose libraries import torch): the
    owner's wandb step counts; from the first optimizer step the optimizer does, for good."""
    result = run(tmp_path, """
        import time, torch, wandb
        run = wandb.init(project="switch")
        for i in range(4):
            run.log({"loss": 1.0})
            time.sleep(0.4)
        model = torch.nn.Linear(2, 1)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        for i in range(3):
            model(torch.ones(2)).sum().backward()
            optimizer.step()
            run.log({"loss": 0.5})
            time.sleep(0.4)
        run.finish()
    """, env={"PRIMUS_LENS_PULSE_INTERVAL": "0.5"})
    sources = [(line["step_source"], line["steps"]) for line in pulse_lines(result.output)]
    first = next(i for i, (source, steps) in enumerate(sources) if source == "optimizer" and steps)
    assert {source for source, _ in sources[:first]} <= {"optimizer", "wandb"}  # (waiting, 0)
    assert any(source == "wandb" and steps for source, steps in sources[:first])
    assert {source for source, _ in sources[first:]} == {"optimizer"}
    assert sources[-1] == ("optimizer", 3)


@needs_torch
def test_garbage_values_get_one_warning_each_and_the_defaults(tmp_path) -> None:
    result = run(tmp_path, JOIN + STATE, env={
        "PRIMUS_LENS_PULSE": "maybe", "PRIMUS_LENS_PULSE_INTERVAL": "often",
        "PRIMUS_LENS_STALL_SECONDS": "-5", "PRIMUS_LENS_STALL_FACTOR": "nan"})
    warnings = result.injector_lines()
    for name in ("PRIMUS_LENS_PULSE=", "PRIMUS_LENS_PULSE_INTERVAL", "PRIMUS_LENS_STALL_SECONDS",
                 "PRIMUS_LENS_STALL_FACTOR"):
        assert sum(name in line for line in warnings) == 1, warnings
    assert "'pulsing': True" in result.proc.stdout
    assert [line["steps"] for line in pulse_lines(result.output)] == [5]


def test_the_watchdog_survives_a_fork_and_stands_aside_for_the_application(tmp_path) -> None:
    """A wandb owner without torch (its watchdog armed from the first beat) forks a child that
    exits through the interpreter's normal end, which cancels faulthandler's watchdog: armed at
    the fork, the child would wait forever for a watchdog thread it does not have.  Then the
    application arms its own watchdog: it fires, and ours says once that it stands aside."""
    result = run(tmp_path, """
        import faulthandler, os, sys, tempfile, time, wandb
        run = wandb.init(project="fork")
        for i in range(3):
            run.log({"i": i})
        time.sleep(1.5)  # a few beats: the pulse's watchdog is armed
        pid = os.fork()
        if pid == 0:
            sys.exit(0)
        for _ in range(600):  # 60 s at most: a child stuck at its exit is killed, and said
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.1)
        else:
            os.kill(pid, 9)
        print("child", "exited" if done else "hung")
        mine = tempfile.TemporaryFile()
        faulthandler.dump_traceback_later(0.5, file=mine)
        time.sleep(2.0)
        print("app's dump", os.fstat(mine.fileno()).st_size > 0)
        run.finish()
    """, env={"PRIMUS_LENS_PULSE_INTERVAL": "0.5", "PRIMUS_LENS_STALL_SECONDS": "60"})
    assert result.proc.stdout.splitlines()[:2] == ["child exited", "app's dump True"]
    aside = [line for line in result.injector_lines() if "stands aside" in line]
    assert len(aside) == 1, result.stderr


def test_doctor_says_whether_a_process_pulses_how_and_where(tmp_path) -> None:
    env = training_env(tmp_path, {"PRIMUS_LENS_PULSE_INTERVAL": "2"})
    on = json.loads(run_cli(["doctor", "--json"], env).stdout)["pulse"]
    assert (on["on"], on["interval"]) == (True, 2.0)
    assert on["path"] == str(tmp_path / "out" / "node_0" / "rank_0" / "pulse.jsonl")
    assert on["step_source"] == ("optimizer" if has_torch() else "wandb")
    text = run_cli(["doctor"], env).stdout
    assert f"a line every 2 s to {on['path']}" in text
    off = json.loads(run_cli(["doctor", "--json"], dict(env, PRIMUS_LENS_PULSE="false")).stdout)
    assert (off["pulse"]["on"], off["pulse"]["why_not"]) == (False, "PRIMUS_LENS_PULSE=false")
