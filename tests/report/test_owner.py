"""Who reports, under whose name, from which record: the job shapes real frameworks produce.

Every shape runs as real processes (torchrun with gloo for the Megatron shape, plain processes
with the launcher's variables for the others) with real wandb in offline mode, reporting to the
built-in receiver, whose merged per-step view is the server's: one row per workload and step,
every write merged into it.  Each owner logs values no other owner logs, so a value overwritten
by another writer, a row sent twice or under another pod's name shows up as a wrong value.
Megatron-LM and Primus's Megatron backend are stand-in packages of the same module names: the
injector only looks them up in ``sys.modules``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
import types
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional

import httpx
import pytest
from conftest import BOOTSTRAP_DIR, TRAIN_PYTHON, run_cli, strict_json, training_env

from primus_lens_inject.config import API_PRESETS, Config
from primus_lens_inject.devserver.receiver import Receiver
from primus_lens_inject.report import frameworks, owner
from primus_lens_inject.report.reporter import Reporter
from primus_lens_inject.report.transport import unresolved
from primus_lens_inject.topology import Topology, detect

STEPS = 12

IMPORTS = """
import os
for name in os.environ.get("LENS_TEST_IMPORTS", "").split():  # a framework the job uses
    __import__(name)
"""

OWNER = IMPORTS + f"""
import os, sys, time, wandb
base = float(sys.argv[1])
wait_for = sys.argv[2] if len(sys.argv) > 2 else ""
key = sys.argv[3] if len(sys.argv) > 3 else "loss"
run = wandb.init(project="shapes", group=os.environ.get("WANDB_RUN_GROUP") or None,
                 name=os.environ.get("WANDB_RUN_NAME") or None)
for i in range({STEPS}):
    if wait_for and i == {STEPS} // 2:
        open(wait_for + ".half", "w").close()
        deadline = time.time() + 60
        while not os.path.exists(wait_for) and time.time() < deadline:
            time.sleep(0.05)
    run.log({{key: base + i, "lr": base / 1000 + i}})
run.finish()  # a line printed before finish goes through wandb's console pipe, cut at times
print("run", run.id, flush=True)
"""

DISTRIBUTED = IMPORTS + f"""
import sys, torch, torch.distributed as dist
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
total = torch.tensor([1.0])
dist.all_reduce(total)
owner = {{"first": 0, "last": world - 1,  # everyone's rank 0; Megatron-LM's last rank
         "pipeline": (world // 2) * (2 - 1)}}[sys.argv[1]]  # TorchTitan, pp=2: last stage's first
base, key = float(sys.argv[2]), sys.argv[3]
if rank == owner:
    import wandb
    run = wandb.init(project="distributed")
    for i in range({STEPS}):
        run.log({{key: base + total.item() - world + i, "lr": base / 1000 + i}})
    run.finish()
    print("run", run.id, flush=True)
dist.barrier()
dist.destroy_process_group()
"""


class Job:
    """One training process (or launcher) started in the background."""

    def __init__(self, tmp: Path, script: str, env: Dict[str, str], args: List[str],
                 launcher: Optional[List[str]] = None) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        path = tmp / f"train-{len(list(tmp.glob('train-*.py')))}.py"
        path.write_text(textwrap.dedent(script))
        self.proc = subprocess.Popen([*(launcher or [TRAIN_PYTHON]), str(path), *args], cwd=tmp,
                                     env=training_env(tmp, env), text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def run_id(self) -> str:
        out, err = self.proc.communicate(timeout=180)
        assert self.proc.returncode == 0, err[-3000:]
        self.stderr = err
        (line,) = [line for line in out.splitlines() if line.startswith("run ")]
        return line.split()[1]


def has_torch() -> bool:
    """Whether the training interpreter can run torch.distributed (the layout under test may
    not have torch)."""
    probe = subprocess.run([TRAIN_PYTHON, "-c", "import importlib.util as u, sys; "
                            "sys.exit(u.find_spec('torch') is None)"], timeout=60,
                           env={k: v for k, v in os.environ.items() if not k.startswith("PYTHON")})
    return probe.returncode == 0


def stand_ins(root: Path, *modules: str) -> Dict[str, str]:
    """Empty packages named ``modules`` under ``root``, imported by OWNER and DISTRIBUTED: the
    environment that puts them on the path after the injector and has the scripts import them."""
    for module in modules:
        parts = module.split(".")
        for depth in range(1, len(parts) + 1):
            package = root.joinpath(*parts[:depth])
            package.mkdir(parents=True, exist_ok=True)
            (package / "__init__.py").touch()
    return {"PYTHONPATH": os.pathsep.join((str(BOOTSTRAP_DIR), str(root))),
            "LENS_TEST_IMPORTS": " ".join(modules)}


def reporting(url: str, pod: str, **extra: str) -> Dict[str, str]:
    return {"PRIMUS_LENS_WANDB_API_REPORTING": "true", "PRIMUS_LENS_API_BASE_URL": url,
            "POD_NAME": pod, "POD_UID": f"uid-{pod}", "PRIMUS_LENS_WANDB_FLUSH_INTERVAL": "0.2",
            "PRIMUS_LENS_SHUTDOWN_TIMEOUT": "20", **extra}


def delivered_once(receiver: Receiver, run_id: str, pod: str, expected: Dict[int, dict]) -> None:
    """Every step of the run arrived exactly once, under its own pod, with exactly its values."""
    rows = receiver.logs(run_id=run_id)
    assert Counter(row["step"] for row in rows) == dict.fromkeys(expected, 1), rows[:3]
    for row in rows:
        assert (row["pod"], row["pod_uid"]) == (pod, f"uid-{pod}"), row
        assert row["data"] == expected[row["step"]], row


def merged(receiver: Receiver, workload: str, expected: Dict[int, dict], writes: int) -> None:
    """The server's row per step holds every owner's values, none overwritten by another's."""
    steps = receiver.steps(workload=workload)
    assert [s["iteration"] for s in steps] == sorted(expected), steps[:2]
    for step in steps:
        data = {k: v for k, v in step["data"].items()
                if k not in ("source", "run_id", "step", "created_at", "updated_at")}
        assert data == expected[step["iteration"]] and step["writes"] == writes, step


SHAPES = {"rank0": 100, "megatron": 150, "titan": 200}  # each owner's values start here


def owner_rows(base: float, prefix: str = "", key: str = "loss") -> Dict[int, dict]:
    return {i: {f"{prefix}{key}": base + i, f"{prefix}lr": base / 1000 + i} for i in range(STEPS)}


def union(owners: List[Dict[int, dict]]) -> Dict[int, dict]:
    """What the server's row of each step must hold when every owner's write survived."""
    return {i: {k: v for rows in owners for k, v in rows[i].items()} for i in range(STEPS)}


@pytest.mark.wandb_compat
def test_every_job_shape_delivers_every_row_once_without_collisions(tmp_path):
    pods = {"rank0-master-0": ["wl-rank0"], "megatron-master-0": ["wl-megatron"],
            "titan-master-0": ["wl-titan"], "mon-0": ["wl-monarch"], "pp-0": ["wl-pods"],
            "pp-1": ["wl-pods"]}
    with Receiver(port=0, pods=pods) as receiver:
        url = receiver.url
        torch = has_torch()
        jobs = {}
        # one owner in a torch.distributed job (real gloo processes where torch exists):
        # rank 0 of 2; Megatron-LM's last rank of 2; TorchTitan's pipeline owner, rank 2 of 4
        for name, rule, world, key in (("rank0", "first", 2, "loss"), ("megatron", "last", 2,
                                       "lm loss"), ("titan", "pipeline", 4, "loss")):
            env = reporting(url, f"{name}-master-0")
            if name == "megatron":  # Megatron-LM is imported: its last rank keeps plain keys
                env.update(stand_ins(tmp_path / "packages", "megatron"))
            args = [rule, str(SHAPES[name]), key]
            if torch:
                jobs[name] = Job(tmp_path / name, DISTRIBUTED, env, args, launcher=[
                    TRAIN_PYTHON, "-m", "torch.distributed.run", "--standalone",
                    f"--nproc-per-node={world}"])
            else:
                owner_rank = {"first": 0, "last": world - 1, "pipeline": world // 2}[rule]
                jobs[name] = Job(tmp_path / name, OWNER, {**env, "RANK": str(owner_rank),
                                                          "WORLD_SIZE": str(world)},
                                 [str(SHAPES[name]), "", key])
        # Monarch/torchft: every rank its own run, in one pod, launcher ranks unset (so all
        # three share one record file), run names carrying replica and rank
        for rank in range(3):
            jobs[f"mon{rank}"] = Job(tmp_path / "monarch", OWNER, reporting(
                url, "mon-0", WANDB_RUN_GROUP="job-7",
                WANDB_RUN_NAME=f"job-7-replica01-gen00-rank{rank:02d}"), [str(300 + 10 * rank)])
        # several pods of one workload, each with its own run in a wandb group
        for rank in range(2):
            jobs[f"pod{rank}"] = Job(tmp_path / f"pod{rank}", OWNER, reporting(
                url, f"pp-{rank}", RANK=str(rank), WORLD_SIZE="2", NODE_RANK=str(rank),
                LOCAL_RANK="0", WANDB_RUN_GROUP="exp"), [str(400 + 10 * rank)])
        ids = {name: job.run_id() for name, job in jobs.items()}

        for name, rows in (("rank0", owner_rows(SHAPES["rank0"])),
                           ("megatron", owner_rows(SHAPES["megatron"], key="lm loss")),
                           ("titan", owner_rows(SHAPES["titan"], "rank2/"))):
            delivered_once(receiver, ids[name], f"{name}-master-0", rows)
            merged(receiver, f"wl-{name}", rows, writes=1)
        monarch = [owner_rows(300 + 10 * rank, f"replica1-rank{rank}/") for rank in range(3)]
        for rank, rows in enumerate(monarch):
            delivered_once(receiver, ids[f"mon{rank}"], "mon-0", rows)
        merged(receiver, "wl-monarch", union(monarch), writes=3)
        pods = [owner_rows(400 + 10 * rank, f"rank{rank}/") for rank in range(2)]
        for rank, rows in enumerate(pods):
            delivered_once(receiver, ids[f"pod{rank}"], f"pp-{rank}", rows)
        merged(receiver, "wl-pods", union(pods), writes=2)
        assert {r["status"] for r in receiver.requests(path="/v1/wandb/logs")} == {200}
        assert len(receiver.detections()) == len(jobs)
        shared = tmp_path / "monarch" / "out" / "node_0" / "rank_0" / "wandb_metrics.jsonl"
        assert len({strict_json(line)["who"] for line in shared.read_text().splitlines()}) == 3


RANKS = IMPORTS + f"""
import os, sys, torch.distributed as dist
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
owners = {{"every": range(world), "last": [world - 1]}}[sys.argv[1]]
base = float(sys.argv[2]) + 100 * rank
if rank in owners:  # Primus's trainers pass WANDB_GROUP as group=; wandb itself reads no such name
    import wandb
    run = wandb.init(project="ranks", group=os.environ.get("WANDB_GROUP") or None)
    for i in range({STEPS}):
        run.log({{"loss": base + i, "lr": base / 1000 + i}})
    run.finish()  # wandb passes a line printed before this through a pipe it may cut at finish
    print("run", rank, run.id, flush=True)
dist.barrier()
dist.destroy_process_group()
"""


def test_ranks_of_one_torchrun_job_never_overwrite_each_other(tmp_path):
    """torchrun (gloo) jobs of 2 processes in one pod each: every rank owns an ungrouped run (a
    script that forgets to gate ``wandb.init``), so rank 0 sends plain keys and the last rank is
    labelled; every rank owns a run in the group Primus's trainers pass from ``WANDB_GROUP``
    (``WANDB_RUN_GROUP`` unset): both labelled; the last rank alone owns a run with Primus's
    Megatron backend imported: plain keys, Megatron's convention.  Every value arrives."""
    if not has_torch():
        pytest.skip(f"{TRAIN_PYTHON} has no torch for torch.distributed")
    torchrun = [TRAIN_PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    with Receiver(port=0) as receiver:
        jobs = {
            "ungrouped": Job(tmp_path / "ungrouped", RANKS, reporting(receiver.url, "ungrouped"),
                             ["every", "500"], launcher=torchrun),
            "grouped": Job(tmp_path / "grouped", RANKS, reporting(
                receiver.url, "grouped", WANDB_GROUP="primus-exp"), ["every", "700"],
                launcher=torchrun),
            "primus": Job(tmp_path / "primus", RANKS, reporting(
                receiver.url, "primus", **stand_ins(tmp_path / "packages",
                                                    "primus.backends.megatron")),
                          ["last", "900"], launcher=torchrun)}
        ids = {}
        for name, job in jobs.items():
            out, err = job.proc.communicate(timeout=180)
            assert job.proc.returncode == 0, err[-3000:]
            ids[name] = {int(line.split()[1]): line.split()[2] for line in out.splitlines()
                         if line.startswith("run ")}
        assert {name: sorted(ranks) for name, ranks in ids.items()} == {
            "ungrouped": [0, 1], "grouped": [0, 1], "primus": [1]}
        expected = {
            "ungrouped": [owner_rows(500), owner_rows(600, "rank1/")],
            "grouped": [owner_rows(700, "rank0/"), owner_rows(800, "rank1/")],
            "primus": [owner_rows(1000)]}
        for name, owners in expected.items():
            for rank, rows in zip(sorted(ids[name]), owners):
                delivered_once(receiver, ids[name][rank], name, rows)
            merged(receiver, f"wl-{name}", union(owners), writes=len(owners))


def test_shared_directories_mpi_nodes_and_private_spools(tmp_path):
    """Three writers in one record directory (two pods on a shared volume with the same ranks,
    one of them not reporting), two Open MPI "nodes" on one file system, and two processes with
    SAVE_LOCAL=false and one TMPDIR that exit one after the other."""
    with Receiver(port=0) as receiver:
        url = receiver.url
        shared = tmp_path / "shared"
        volume = {"PRIMUS_LENS_WANDB_OUTPUT_PATH": str(tmp_path / "volume")}
        jobs = {pod: Job(shared, OWNER, reporting(url, pod, **volume, **extra), [base])
                for pod, base, extra in (("sh-a", "10", {}), ("sh-b", "20", {}),
                                         ("sh-c", "30", {"PRIMUS_LENS_REPORT_RANKS": "3"}))}
        lost = Job(tmp_path / "lost", OWNER, reporting(url + "/api", "lost-0"), ["90"])
        mpi = {"OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_LOCAL_SIZE": "2",
               "OMPI_COMM_WORLD_LOCAL_RANK": "0"}
        for pod, rank in (("mpi-0", "0"), ("mpi-2", "2")):
            jobs[pod] = Job(tmp_path / "mpi", OWNER,
                            reporting(url, pod, OMPI_COMM_WORLD_RANK=rank, **mpi), [f"5{rank}"])
        spool = tmp_path / "spool"
        private = {"PRIMUS_LENS_WANDB_SAVE_LOCAL": "false", "TMPDIR": str(spool / "tmp")}
        (spool / "tmp").mkdir(parents=True)
        gate = spool / "first-exited"
        jobs["sp-late"] = Job(spool, OWNER, reporting(url, "sp-late", **private), ["70", str(gate)])
        deadline = time.monotonic() + 120
        while not Path(f"{gate}.half").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        jobs["sp-early"] = Job(spool, OWNER, reporting(url, "sp-early", **private), ["60"])
        ids = {"sp-early": jobs.pop("sp-early").run_id()}  # exits while sp-late still logs
        gate.touch()
        ids.update({pod: job.run_id() for pod, job in jobs.items()})

        for pod, base in (("sh-a", 10), ("sh-b", 20), ("mpi-0", 50), ("sp-early", 60),
                          ("sp-late", 70)):
            delivered_once(receiver, ids[pod], pod, owner_rows(base))
        delivered_once(receiver, ids["mpi-2"], "mpi-2", owner_rows(52, "rank2/"))
        assert receiver.logs(run_id=ids["sh-c"]) == [] and receiver.logs(pod="sh-c") == []
        record = tmp_path / "volume" / "node_0" / "rank_0" / "wandb_metrics.jsonl"
        lines = [strict_json(line) for line in record.read_text().splitlines()]
        assert Counter(line["run_id"] for line in lines) == {ids[p]: STEPS for p in
                                                            ("sh-a", "sh-b", "sh-c")}
        mpi_out = tmp_path / "mpi" / "out"
        for node, pod in ((0, "mpi-0"), (2, "mpi-2")):
            path = mpi_out / f"node_{node}" / "rank_0" / "wandb_metrics.jsonl"
            assert {strict_json(line)["run_id"] for line in path.read_text().splitlines()} == \
                {ids[pod]}
        assert sorted(p.name for p in mpi_out.iterdir()) == ["node_0", "node_2"]
        lost.run_id()  # a wrong endpoint: said once, loudly, with the URL and the presets
        (said,) = [line for line in lost.stderr.splitlines() if "NO TELEMETRY ENDPOINT" in line]
        assert f"{url}/api (PRIMUS_LENS_API_BASE_URL) answers HTTP 404" in said
        assert all(f"{name}: {base}" in said for name, base in API_PRESETS.items())
        leftovers = [p for p in (spool / "tmp").rglob("*") if p.is_file()]
        assert leftovers == [], leftovers  # each private spool removed by its owner


def test_a_sender_sends_each_line_under_its_writers_name(tmp_path):
    """One record, several writers, sent by another process's reporter: the lines of a writer
    that reports go under its identity and prefix, those of one that does not stay home,
    untagged lines (an older injector's) go under the sender's own name, a line of an unknown
    writer is dropped and counted, and no request mixes writers."""
    record = tmp_path / "node_0" / "rank_0" / "wandb_metrics.jsonl"
    record.parent.mkdir(parents=True)
    writers = {"a": owner.Writer({"pod_name": "a", "pod_uid": "uid-a"}, 0, True, ""),
               "b": owner.Writer({"pod_name": "b", "workload_uid": "wl-b"}, 3, True, "rank3/"),
               "quiet": owner.Writer({"pod_name": "q"}, 1, False, "")}
    for writer in writers.values():
        owner.register(str(record), writer)
    lines = []
    for step in range(6):
        for name in ("a", "quiet", "b", ""):  # "": no tag, as an older injector wrote
            who = writers[name].tag if name else ""
            lines.append(json.dumps({"timestamp": 1.7e9 + step, "step": step, "run_id": "r",
                                     "who": who, "data": {f"k_{name or 'old'}": step}}))
    lines.append(json.dumps({"timestamp": 1.7e9, "step": 9, "run_id": "r", "who": "0" * 12,
                             "data": {"x": 1}}))  # a writer nobody registered
    record.write_text("\n".join(lines) + "\n")
    with Receiver(port=0) as receiver:
        config = Config(api_base_url=receiver.url, pod_name="sender", flush_interval=0.05)
        sender = Reporter(config, Topology(), str(record))
        sender.start()
        assert sender.flush(time.monotonic() + 30)
        sender.close(time.monotonic() + 1.0)
        rows = receiver.logs()
        bodies = [json.loads(r["body"]) for r in receiver.requests(path="/v1/wandb/logs")]
    got = {(row["pod"], row["pod_uid"], row["workload"], row["step"]): row["data"] for row in rows}
    assert len(rows) == len(got) == 18
    for step in range(6):
        assert got[("a", "uid-a", "wl-a", step)] == {"k_a": step}
        assert got[("b", "", "wl-b", step)] == {"rank3/k_b": step}
        assert got[("sender", "", "wl-sender", step)] == {"k_old": step}
    owners = {"k_a": "a", "rank3/k_b": "b", "k_old": "sender"}
    for body in bodies:  # one writer per request
        assert {owners[key] for entry in body["logs"] for key in entry["data"]} == \
            {body["pod_name"]}
    assert sender.stats.dropped == {"record line of an unknown writer": 1}


def test_record_directories_are_distinct_for_every_launcher():
    launchers = {
        # torchrun / PyTorchJob: the node comes from GROUP_RANK / PET_NODE_RANK
        "torchrun": [{"RANK": str(r), "LOCAL_RANK": str(r % 4), "GROUP_RANK": str(r // 4),
                      "WORLD_SIZE": "8"} for r in range(8)],
        "slurm": [{"SLURM_PROCID": str(r), "SLURM_LOCALID": str(r % 4),
                   "SLURM_NODEID": str(r // 4), "SLURM_NTASKS": "8"} for r in range(8)],
        # Open MPI, ranks placed by node, by round robin, and on uneven nodes (2 + 2 + 4)
        "ompi-by-node": [{"OMPI_COMM_WORLD_RANK": str(r), "OMPI_COMM_WORLD_LOCAL_RANK": str(r % 4),
                          "OMPI_COMM_WORLD_SIZE": "8"} for r in range(8)],
        "ompi-round-robin": [{"OMPI_COMM_WORLD_RANK": str(r),
                              "OMPI_COMM_WORLD_LOCAL_RANK": str(r // 2),
                              "OMPI_COMM_WORLD_SIZE": "8"} for r in range(8)],
        "ompi-uneven": [{"OMPI_COMM_WORLD_RANK": str(r),
                         "OMPI_COMM_WORLD_LOCAL_RANK": str(r % 2 if r < 4 else r - 4),
                         "OMPI_COMM_WORLD_SIZE": "8"} for r in range(8)],
        "mpich": [{"PMI_RANK": str(r), "MPI_LOCALRANKID": str(r % 4), "PMI_SIZE": "8"}
                  for r in range(8)],
        "multiprocessing": [{}],
    }
    for name, processes in launchers.items():
        dirs = [(t.node, t.local_rank) for t in (detect(env)[0] for env in processes)]
        assert len(set(dirs)) == len(dirs), (name, dirs)
    by_node = [detect(env)[0] for env in launchers["ompi-by-node"]]
    assert [(t.node, t.local_rank) for t in by_node] == [(0, 0), (0, 1), (0, 2), (0, 3),
                                                         (4, 0), (4, 1), (4, 2), (4, 3)]
    assert detect({"PMI_RANK": "5"})[0].node == 0  # no local rank: the global rank is the dir


def test_doctor_says_which_process_reports(tmp_path):
    env = training_env(tmp_path, {"PRIMUS_LENS_WANDB_API_REPORTING": "true", "POD_NAME": "mg-0",
                                  "PRIMUS_LENS_API_BASE_URL": "http://127.0.0.1:9/v1",
                                  "RANK": "15", "WORLD_SIZE": "16", "WANDB_RUN_GROUP": "g"})
    proc = run_cli(["doctor", "--json"], env)
    assert proc.returncode == 0, proc.stderr
    mine = json.loads(proc.stdout)["reporting"]["this_process"]
    assert mine["reports"] is True and mine["policy"] == "owner" and mine["global_rank"] == 15
    assert mine["key_prefix"] == "rank15/" and "wandb group 'g'" in mine["key_prefix_why"]
    # Primus's trainers pass WANDB_GROUP as group=; doctor imports no Megatron: the last rank
    # is labelled unless the training process imports one, and doctor says so
    for variables, why in (({"WANDB_GROUP": "primus-exp"}, "wandb group 'primus-exp'"),
                           ({}, "without a Megatron-style framework (megatron, ")):
        env.pop("WANDB_RUN_GROUP", None)
        proc = run_cli(["doctor", "--json"], {**env, **variables})
        mine = json.loads(proc.stdout)["reporting"]["this_process"]
        assert mine["key_prefix"] == "rank15/" and why in mine["key_prefix_why"], mine


def test_who_reports_and_how_keys_are_named(monkeypatch):
    def prefix(env: Dict[str, str], rank: int, world: int, name: str = "",
               megatron: str = "") -> str:
        config = Config.from_env({"POD_NAME": "p", **env})
        return owner.key_prefix(config, Topology(rank=rank, world_size=world),
                                env.get("WANDB_RUN_GROUP", ""), name, megatron or None)[0]

    assert prefix({}, 0, 8) == "" and prefix({}, 0, 8, megatron="megatron") == ""  # rank 0
    assert prefix({}, 7, 8, megatron="megatron") == ""  # Megatron's last rank
    assert prefix({}, 7, 8, megatron="primus.backends.megatron") == ""
    assert prefix({}, 7, 8) == "rank7/"  # the last rank of a job that is not Megatron's
    assert prefix({"WANDB_RUN_GROUP": "g"}, 7, 8, megatron="megatron") == "rank7/"
    assert prefix({}, 0, 1) == ""  # alone: rank 0 is the last rank
    assert prefix({}, 4, 8) == "rank4/"  # a middle rank cannot know it is alone
    assert prefix({}, 4, 8, megatron="megatron") == "rank4/"
    assert prefix({"PRIMUS_LENS_REPORT_RANKS": "all"}, 0, 8) == "rank0/"
    assert prefix({"PRIMUS_LENS_REPORT_RANKS": "4", "WANDB_RUN_GROUP": "g"}, 4, 8) == ""
    assert prefix({"PRIMUS_LENS_REPORT_RANKS": "4,5"}, 4, 8) == "rank4/"
    assert prefix({"WANDB_RUN_GROUP": "g"}, 0, 1) == "rank0/"
    assert prefix({"WANDB_RUN_GROUP": "g"}, 0, 1, "x-replica02-gen01-rank13") == "replica2-rank13/"
    assert prefix({"WANDB_RUN_GROUP": "g"}, 3, 8, "exp-RANK_3") == "rank3/"
    assert prefix({"WANDB_RUN_GROUP": "g"}, 3, 8, "franky-7") == "rank3/"  # no rank token

    def reports(env: Dict[str, str], rank: int) -> bool:
        config = Config.from_env({"POD_NAME": "p", **env})
        return owner.process_reports(config, Topology(rank=rank, world_size=16))[0]

    assert reports({}, 15) and reports({}, 0)  # default: owner
    assert not reports({"PRIMUS_LENS_REPORT_RANKS": "zero"}, 15)
    assert reports({"PRIMUS_LENS_REPORT_RANKS": " 15, 8"}, 8)
    assert not reports({"PRIMUS_LENS_REPORT_RANKS": "8,15"}, 3)
    assert not reports({"PRIMUS_LENS_WANDB_API_REPORTING": "false"}, 0)
    assert Config.from_env({"PRIMUS_LENS_REPORT_RANKS": "8,x"}).report_ranks == "owner"

    class DisabledRun:  # wandb's disabled mode, as 0.31 reports it
        disabled = True
        group = name = ""

    for module in ("megatron", "primus", "primus.backends", "primus.backends.megatron",
                   "primus.backends.megatron_bridge"):
        monkeypatch.delitem(sys.modules, module, raising=False)
    assert frameworks.megatron_style() is None
    monkeypatch.setitem(sys.modules, "primus.backends.megatron_bridge", types.ModuleType("b"))
    assert frameworks.megatron_style() == "primus.backends.megatron_bridge"
    monkeypatch.setitem(sys.modules, "megatron", None)  # an import that was blocked
    assert frameworks.megatron_style() == "primus.backends.megatron_bridge"
    monkeypatch.setitem(sys.modules, "megatron", types.ModuleType("megatron"))
    assert frameworks.megatron_style() == "megatron"

    config = Config.from_env({"POD_NAME": "p"})
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_DISABLED", raising=False)
    assert not owner.writer_for(config, Topology(rank=1, world_size=2), DisabledRun()).report
    assert owner.writer_for(config, Topology(rank=0, world_size=2), DisabledRun()).report


def test_endpoint_presets_and_the_base_url_override():
    assert Config.from_env({}).api_base_url == API_PRESETS["lens"] == (
        "http://primus-lens-telemetry-processor.primus-lens.svc.cluster.local:8989/v1")
    robust = Config.from_env({"PRIMUS_LENS_API_PRESET": "robust"})
    assert robust.api_base_url == API_PRESETS["robust"]
    assert Config.from_env({"PRIMUS_LENS_API_PRESET": "Robust ",
                            "PRIMUS_LENS_API_BASE_URL": "http://x:1/v1/"}).api_base_url == "http://x:1/v1"
    bad = Config.from_env({"PRIMUS_LENS_API_PRESET": "lenz"})
    assert bad.api_base_url == API_PRESETS["lens"]
    assert [p.variable for p in bad.problems] == ["PRIMUS_LENS_API_PRESET"]


def test_a_host_name_that_does_not_resolve_is_recognised():
    def connect(cause: OSError) -> None:
        try:
            raise cause
        except OSError as exc:  # as httpx raises it: the socket's error is the cause
            raise httpx.ConnectError(str(exc)) from exc

    seen = {}
    for name, cause in (("dns", socket.gaierror(-2, "Name or service not known")),
                        ("refused", ConnectionRefusedError(111, "Connection refused"))):
        with pytest.raises(httpx.ConnectError) as raised:
            connect(cause)
        seen[name] = unresolved(raised.value)
    assert seen == {"dns": True, "refused": False}
