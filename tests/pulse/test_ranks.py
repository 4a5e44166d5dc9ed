"""Every rank's pulse in a real ``torchrun`` job (gloo, CPU), as docs/pulse.md describes it.

One job of 4 ranks (tests/scripts/pulse_ranks.py) shows most of the pulse at once:

* only rank 0 uses wandb, yet every rank writes a pulse, and each counts exactly the optimizer
  steps it ran, with gradient accumulation (3 micro-batches per step: steps, not micro-batches);
* each rank reads batches through a DataLoader worker, forked on even ranks and spawned on odd
  ones: no worker writes a line (every line names a rank's own pid);
* rank 2 hangs in ``time.sleep`` (the GIL is free) and rank 3 in a C call that holds the GIL,
  at the same step: each gets one stall event whose stacks name the function it hangs in (rank 3's
  taken by the C-level watchdog), ranks 0 and 1 get one whose stacks show them in the collective,
  every stall is written during the hang (before the recovery, never before the threshold), and
  every rank writes a recovery event when it steps again.

Timing never decides a verdict: stall lines are checked against the job's own stamps (order and
the threshold they state), and every wait is bounded generously.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Dict, List

import pytest
from conftest import TRAIN_PYTHON, strict_json, training_env

from primus_lens_inject import pulseline

SCRIPT = Path(__file__).parents[1] / "scripts" / "pulse_ranks.py"
WORLD, STEPS, ACCUM, HANG_AT = 4, 8, 3, 4
INTERVAL, STALL = 0.5, 2.0
HANG = 7.0  # seconds: the threshold, a few intervals, and room for a loaded machine
HANGS = {2: ("sleep", "wait_for_the_slow_disk"), 3: ("c", "spin_in_c_holding_the_gil")}


def has_torch() -> bool:
    probe = subprocess.run([TRAIN_PYTHON, "-c", "import torch.distributed"], capture_output=True,
                           timeout=120)
    return probe.returncode == 0


def lines(out: Path, rank: int) -> List[dict]:
    rank_dir = out / "node_0" / f"rank_{rank}"
    found = []
    for path in pulseline.pulse_files(str(rank_dir)):
        for raw in Path(path).read_bytes().splitlines():
            line = pulseline.decode(raw)
            assert line is not None, raw[:200]
            strict_json(raw.decode())
            found.append(line)
    return found


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory):
    """The 4-rank job, run once: (its stdout, {rank: pulse lines})."""
    if not has_torch():
        pytest.skip(f"{TRAIN_PYTHON} has no torch.distributed")
    tmp = tmp_path_factory.mktemp("ranks")
    env = training_env(tmp, {
        "PRIMUS_LENS_PULSE_INTERVAL": str(INTERVAL), "PRIMUS_LENS_STALL_SECONDS": str(STALL),
        "PRIMUS_LENS_STALL_FACTOR": "2", "LENS_PULSE_WANDB": "1", "LENS_PULSE_STEPS": str(STEPS),
        "LENS_PULSE_ACCUM": str(ACCUM), "LENS_PULSE_WORKERS": "1",
        "LENS_PULSE_HANGS": ",".join(f"{rank}:{how}" for rank, (how, _) in HANGS.items()),
        "LENS_PULSE_HANG": str(HANG), "LENS_PULSE_HANG_AT": str(HANG_AT),
        "OMP_NUM_THREADS": "1"})
    proc = subprocess.run([TRAIN_PYTHON, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc-per-node={WORLD}", str(SCRIPT)], cwd=tmp, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout, {rank: lines(tmp / "out", rank) for rank in range(WORLD)}


def ran(stdout: str) -> Dict[int, tuple]:
    """rank -> (optimizer steps it ran, its pid), as the script printed them."""
    return {int(rank): (int(steps), int(pid))
            for rank, steps, pid in re.findall(r"^steps (\d+) (\d+) (\d+)$", stdout, re.M)}


def test_every_rank_counts_exactly_its_optimizer_steps(job) -> None:
    stdout, pulses = job
    assert sorted(ran(stdout)) == list(range(WORLD))
    for rank, (steps, _) in ran(stdout).items():
        beats = [line for line in pulses[rank] if line["kind"] == pulseline.PULSE]
        assert beats, rank
        assert beats[-1]["steps"] == steps == STEPS  # accumulation: ACCUM micro-batches a step
        assert [b["steps"] for b in beats] == sorted(b["steps"] for b in beats)
        assert {b["step_source"] for b in beats} == {"optimizer"}
        assert {(b["rank"], b["local_rank"], b["node"], b["world_size"]) for b in beats} == {
            (rank, rank, 0, WORLD)}
        assert any(b["step_mean"] and b["step_median"] for b in beats)


def test_only_the_wandb_owner_carries_a_run(job) -> None:
    _, pulses = job
    owner = [line for line in pulses[0] if line["kind"] == pulseline.PULSE and line["run_id"]]
    assert owner and all(isinstance(line["wandb_step"], int) for line in owner)
    assert len({line["run_id"] for line in owner}) == 1
    for rank in range(1, WORLD):
        assert {(line["run_id"], line["wandb_step"]) for line in pulses[rank]
                if line["kind"] == pulseline.PULSE} == {(None, None)}


def test_dataloader_workers_write_nothing(job) -> None:
    stdout, pulses = job
    workers = {int(pid) for pid in re.findall(r"^worker \d+ (\d+)$", stdout, re.M)}
    assert len(workers) == WORLD  # one worker per rank: forked on ranks 0 and 2, spawned on 1, 3
    for rank, (_, pid) in ran(stdout).items():
        assert {line["pid"] for line in pulses[rank]} == {pid}


def _stall_at_the_hang(pulses: Dict[int, List[dict]], rank: int) -> dict:
    stalls = [line for line in pulses[rank] if line["kind"] == pulseline.STALL
              and line["steps"] == HANG_AT]
    assert len(stalls) == 1, [line["kind"] for line in pulses[rank]]
    return stalls[0]


def test_a_hung_rank_names_the_function_it_hangs_in(job) -> None:
    _, pulses = job
    for rank, (_, function) in HANGS.items():
        stall = _stall_at_the_hang(pulses, rank)
        assert f"in {function}" in stall["stacks"], stall["stacks"]
        assert stall["threads"].values() and "MainThread" in stall["threads"].values()
    assert _stall_at_the_hang(pulses, 3)["source"] == "watchdog"  # the GIL was held
    assert _stall_at_the_hang(pulses, 2)["source"] == "pulse"


def test_the_other_ranks_stacks_are_in_the_collective(job) -> None:
    _, pulses = job
    for rank in set(range(WORLD)) - set(HANGS):
        stall = _stall_at_the_hang(pulses, rank)
        assert "in all_reduce" in stall["stacks"], stall["stacks"]
        assert not any(f"in {function}" in stall["stacks"] for _, function in HANGS.values())


def test_each_stall_is_written_during_it_and_followed_by_a_recovery(job) -> None:
    _, pulses = job
    for rank in range(WORLD):
        stall = _stall_at_the_hang(pulses, rank)
        after = pulses[rank][pulses[rank].index(stall) + 1:]
        recovery = next(line for line in after if line["kind"] == pulseline.RECOVERY)
        assert stall["threshold"] >= STALL
        assert stall["since"] + stall["threshold"] <= stall["time"] < recovery["time"]
        assert recovery["since"] == stall["since"] and recovery["steps"] > HANG_AT
        assert recovery["stalled"] == pytest.approx(recovery["time"] - stall["since"])
        beats = [line for line in pulses[rank] if line["kind"] == pulseline.PULSE]
        assert any(line["stalled"] for line in beats) and not beats[-1]["stalled"]
