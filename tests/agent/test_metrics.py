"""The agent's ``/metrics`` exposition (docs/prometheus.md): the latest value of every key of
every writer of real trainers' records, every rank's pulse, names and caps, parsed back with
``prometheus_client``'s own parsers in both formats."""

from __future__ import annotations

import json
import math
import os
import subprocess
import time
from pathlib import Path
from typing import Dict, List, Tuple

import pytest
from conftest import TRAIN_PYTHON, training_env
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from primus_lens_inject import pulseline, recordline
from primus_lens_inject.agent import exposition
from primus_lens_inject.agent.exposition import Exposition
from primus_lens_inject.config import Config

OPENMETRICS = "application/openmetrics-text; version=1.0.0"
# Every rank of a job owns a run and logs known values (``PRIMUS_LENS_REPORT_RANKS=all``-style
# jobs, wandb's "one run per process"); rank R's last row is ROWS - 1.
TRAINER = """
import os
import wandb

rank = int(os.environ["RANK"])
rows = int(os.environ["LENS_TEST_ROWS"])
run = wandb.init(project="metrics")
for i in range(rows):
    run.log({"train/loss": 1.0 / (i + 1 + rank), "lr": 1e-3 * (rank + 1), "tokens": i * 1000 + rank,
             "nested": {"x": i}, "text": "ignored", "flag": True, "nan": float("nan"),
             "tokens_total": i * 10, "Grad Norm": 0.1 * i, "eval/acc.top1": 0.9})
    run.log({**{f"k{j:03d}": rank * 10000 + j for j in range(int(os.environ["LENS_TEST_KEYS"]))},
             "loss": 0.5 + rank}, commit=False)
print("done", run.id, flush=True)
run.finish()
"""

Samples = Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]


def config(**env: str) -> Config:
    return Config.from_env(env)


def run_trainers(tmp: Path, ranks: int, rows: int = 5, keys: int = 0,
                 node: int = 0) -> Dict[int, str]:
    """``ranks`` real trainer processes of one pod at once, each owning a run; their run ids."""
    script = tmp / "trainer.py"
    script.write_text(TRAINER)
    procs = []
    for rank in range(ranks):
        env = training_env(tmp, {"RANK": str(rank), "LOCAL_RANK": str(rank),
                                 "WORLD_SIZE": str(ranks), "NODE_RANK": str(node),
                                 "LENS_TEST_ROWS": str(rows), "LENS_TEST_KEYS": str(keys)})
        procs.append(subprocess.Popen([TRAIN_PYTHON, str(script)], cwd=tmp, env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    runs = {}
    for rank, proc in enumerate(procs):
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        runs[rank] = out.split()[-1]
    return runs


def run_pulse_job(tmp: Path, **env: str) -> Dict[int, List[dict]]:
    """A real ``torchrun`` job (gloo, CPU) of 2 ranks (tests/scripts/pulse_ranks.py: only rank 0
    uses wandb), pulsing every 0.5 s; each rank's pulse lines, read here.  Skips without torch."""
    script = Path(__file__).parents[1] / "scripts" / "pulse_ranks.py"
    job = subprocess.run([TRAIN_PYTHON, "-m", "torch.distributed.run", "--standalone",
                          "--nproc-per-node=2", str(script)], cwd=tmp,
                         env=training_env(tmp, {"PRIMUS_LENS_PULSE_INTERVAL": "0.5",
                                                "LENS_PULSE_WANDB": "1", "OMP_NUM_THREADS": "1",
                                                **env}),
                         capture_output=True, text=True, timeout=300)
    if "No module named torch" in job.stderr:
        pytest.skip(f"{TRAIN_PYTHON} has no torch")
    assert job.returncode == 0, job.stderr[-4000:]
    out = {}
    for rank in (0, 1):
        lines = [pulseline.decode(raw)
                 for path in pulseline.pulse_files(str(tmp / "out" / "node_0" / f"rank_{rank}"))
                 for raw in Path(path).read_bytes().splitlines()]
        assert all(line is not None for line in lines), rank
        out[rank] = [line for line in lines if line is not None]
    return out


def latest_in_record(root: Path) -> Dict[Tuple[int, str], Dict[str, float]]:
    """What the records say, read here on its own: (global rank, run) -> key -> the last number
    logged (the writer file names the rank), the step included as ``"<step>"``."""
    out: Dict[Tuple[int, str], Dict[str, float]] = {}
    for record in sorted(root.glob("node_*/rank_*/wandb_metrics.jsonl")):
        writers = record.parent / "wandb_metrics.writers"
        for text in record.read_text().splitlines():
            line = json.loads(text)
            if line.get("amends"):
                continue
            rank = json.loads((writers / f"{line['who']}.json").read_text())["rank"]
            values = out.setdefault((rank, line["run_id"]), {})
            values["<step>"] = line["step"]
            for key, value in line["data"].items():
                if isinstance(value, dict):
                    values.update({f"{key}.{k}": v for k, v in value.items()})
                elif type(value) in (int, float):
                    values[key] = value
                elif value == "NaN":
                    values[key] = math.nan
    return out


def parse(body: bytes, openmetrics: bool = False) -> Samples:
    """Every sample of a scrape, parsed by ``prometheus_client``'s own parser."""
    parser = openmetrics_families if openmetrics else text_string_to_metric_families
    samples: Samples = {}
    for family in parser(body.decode("utf-8")):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in samples, f"duplicate series {key}"
            samples[key] = sample.value
    return samples


def series(samples: Samples, name: str) -> Dict[Tuple[Tuple[str, str], ...], float]:
    return {labels: value for (found, labels), value in samples.items() if found == name}


def same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def test_real_trainers_every_key_of_every_rank(tmp_path: Path) -> None:
    runs = run_trainers(tmp_path, ranks=3, rows=6, keys=20)
    root = tmp_path / "out"
    expected = latest_in_record(root)
    assert sorted(rank for rank, _ in expected) == [0, 1, 2]
    view = Exposition(config(), str(root))
    view.refresh()
    for accept, openmetrics in (("", False), (OPENMETRICS, True)):
        body, content_type = view.render(accept)
        assert content_type.startswith("application/openmetrics-text" if openmetrics
                                       else "text/plain")
        samples = parse(body, openmetrics)
        for (rank, run), values in expected.items():
            assert run == runs[rank]
            base = (("local_rank", str(rank)), ("node_rank", "0"), ("rank", str(rank)),
                    ("run", run))
            for key, value in values.items():
                if key == "<step>":
                    name, extra = "wandb_step", ()
                elif key.startswith("_primus_"):
                    continue
                else:
                    name, extra = exposition.key_metric(key)
                labels = tuple(sorted(base + extra))
                assert same(samples[(name, labels)], float(value)), (name, labels)
        # the values the script logged last, independently of the record
        for rank, run in runs.items():
            labels = (("local_rank", str(rank)), ("node_rank", "0"), ("rank", str(rank)),
                      ("run", run))
            assert samples[("wandb_lr", labels)] == pytest.approx(1e-3 * (rank + 1))
            assert samples[("wandb_tokens", labels)] == 5000 + rank
            assert samples[("wandb_k019", labels)] == rank * 10000 + 19
            assert samples[("wandb_step", labels)] == 6  # the last row: commit=False keys
            loss = (("key", "train/loss"), *labels)
            assert samples[("wandb_train_loss", tuple(sorted(loss)))] == 1.0 / (6 + rank)
            assert math.isnan(samples[("wandb_nan", labels)])
        names = {name for name, _ in samples}
        assert not {"wandb_text", "wandb_flag", "wandb__primus_lens_enabled"} & names
        # one name per key, never one per rank
        assert len(series(samples, "wandb_lr")) == 3


def write_record(path: Path, rows: List[Tuple[str, int, dict]], who: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as f:
        for run, step, data in rows:
            f.write(recordline.encode(run, step, time.time(), dict(data), who))


def pulse(kind: str, rank: int, local_rank: int, node: int = 0, **fields: object) -> bytes:
    common = {"time": 1_700_000_000.0 + rank, "pid": 100 + rank, "rank": rank,
              "local_rank": local_rank, "node": node, "world_size": 8}
    return pulseline.encode(kind, {**common, **fields})


def labels_of(rank: int, local_rank: int, node: int = 0, **extra: str) -> Tuple:
    return tuple(sorted((("local_rank", str(local_rank)), ("node_rank", str(node)),
                         ("rank", str(rank)), *extra.items())))


def test_key_names_are_stable_and_never_collide(tmp_path: Path) -> None:
    assert exposition.key_metric("loss") == ("wandb_loss", ())
    assert exposition.key_metric("train/loss") == ("wandb_train_loss", (("key", "train/loss"),))
    assert exposition.key_metric("Train Loss") == ("wandb_train_loss", (("key", "Train Loss"),))
    assert exposition.key_metric("step") == ("wandb_step_value", (("key", "step"),))
    assert exposition.key_metric("tokens_total") == ("wandb_tokens_total_value",
                                                     (("key", "tokens_total"),))
    assert exposition.key_metric("épsilon") == ("wandb__psilon", (("key", "épsilon"),))
    record = tmp_path / "node_0" / "rank_0" / "wandb_metrics.jsonl"
    write_record(record, [("r", 1, {"train/loss": 1.0, "train.loss": 2.0, "train_loss": 3.0,
                                    "step": 7, "1st": 4.0})])
    view = Exposition(config(), str(tmp_path))
    view.refresh()
    samples = parse(view.render("")[0])
    found = series(samples, "wandb_train_loss")
    base = (("local_rank", "0"), ("node_rank", "0"), ("rank", ""), ("run", "r"))
    assert found == {tuple(sorted((*base, ("key", "train/loss")))): 1.0,
                     tuple(sorted((*base, ("key", "train.loss")))): 2.0,
                     tuple(sorted(base)): 3.0}
    assert series(samples, "wandb_step_value") == {tuple(sorted((*base, ("key", "step")))): 7}
    assert series(samples, "wandb_step") == {tuple(sorted(base)): 1}
    assert series(samples, "wandb_1st") == {tuple(sorted(base)): 4.0}
    parse(view.render(OPENMETRICS)[0], openmetrics=True)  # valid OpenMetrics too


def test_pulse_figures_per_rank_stalls_and_rotation(tmp_path: Path) -> None:
    rank_dir = tmp_path / "node_1" / "rank_2"
    rank_dir.mkdir(parents=True)
    figures = {"_primus_gpu_0_util_percent": 87.0, "_primus_gpu_0_memory_used_bytes": 3 << 30,
               "_primus_gpu_0_power_watts": 310.5, "_primus_gpu_0_temperature_celsius": 61,
               "_primus_gpu_0_temperature_junction_celsius": 70,
               "_primus_gpu_0_clock_sm_mhz": 1400, "_primus_sys_cpu_percent": 25.0,
               "_primus_sys_process_rss_bytes": 123456789, "_primus_lens_enabled": True}
    path = rank_dir / "pulse.jsonl"
    path.write_bytes(pulse("pulse", 10, 2, 1, steps=40, step_last=0.25, step_mean=0.2,
                           step_median=0.21, wandb_step=None, run_id=None, figures=figures))
    view = Exposition(config(), str(tmp_path))
    view.refresh()
    samples = parse(view.render("")[0])
    me = labels_of(10, 2, 1)
    gpu = tuple(sorted((*me, ("gpu", "0"))))
    assert samples[("primus_lens_rank_optimizer_steps_total", me)] == 40
    assert samples[("primus_lens_rank_step_seconds", me)] == 0.25
    assert samples[("primus_lens_rank_step_seconds_mean", me)] == 0.2
    assert samples[("primus_lens_rank_step_seconds_median", me)] == 0.21
    assert samples[("primus_lens_rank_last_pulse_timestamp_seconds", me)] == 1_700_000_010.0
    assert samples[("primus_lens_rank_stalled", me)] == 0
    assert samples[("primus_lens_rank_stalls_total", me)] == 0
    assert samples[("primus_lens_gpu_utilization_ratio", gpu)] == pytest.approx(0.87)
    assert samples[("primus_lens_gpu_memory_used_bytes", gpu)] == 3 << 30
    assert samples[("primus_lens_gpu_power_watts", gpu)] == 310.5
    assert samples[("primus_lens_gpu_temperature_celsius",
                    tuple(sorted((*gpu, ("sensor", "gpu")))))] == 61
    assert samples[("primus_lens_gpu_temperature_celsius",
                    tuple(sorted((*gpu, ("sensor", "junction")))))] == 70
    assert samples[("primus_lens_gpu_clock_sm_hertz", gpu)] == 1.4e9
    assert samples[("primus_lens_host_cpu_utilization_ratio", me)] == 0.25
    assert samples[("primus_lens_process_rss_bytes", me)] == 123456789
    assert not [name for name, _ in samples if "enabled" in name]

    # a stall, then the writer rotates: the rotated file is followed by inode, nothing twice
    with open(path, "ab") as f:
        f.write(pulse("stall", 10, 2, 1, steps=41, since=1.0, threshold=300.0, stacks="...",
                      source="faulthandler"))
    view.refresh()
    samples = parse(view.render("")[0])
    assert samples[("primus_lens_rank_stalled", me)] == 1
    assert samples[("primus_lens_rank_stalls_total", me)] == 1
    with open(path, "ab") as f:  # a pulse line during the stall says so too
        f.write(pulse("pulse", 10, 2, 1, steps=41, stalled=True, figures={}))
    view.refresh()
    assert parse(view.render("")[0])[("primus_lens_rank_stalled", me)] == 1
    with open(path, "ab") as f:
        f.write(pulse("recovery", 10, 2, 1, steps=42, since=1.0, stalled=400.0))
    os.replace(path, rank_dir / "pulse.jsonl.1")
    path.write_bytes(pulse("stall", 10, 2, 1, steps=42, since=2.0, threshold=300.0, stacks="",
                           source="faulthandler"))
    view.refresh()
    samples = parse(view.render(OPENMETRICS)[0], openmetrics=True)
    assert samples[("primus_lens_rank_stalls_total", me)] == 2
    assert samples[("primus_lens_rank_stalled", me)] == 1
    assert samples[("primus_lens_rank_optimizer_steps_total", me)] == 42


def test_record_figures_only_where_no_pulse_and_markers_never(tmp_path: Path) -> None:
    figures = {"loss": 1.5, "_primus_gpu_util_percent": 50.0, "_primus_step_approx": True}
    write_record(tmp_path / "node_0" / "rank_0" / "wandb_metrics.jsonl", [("a", 3, figures)])
    write_record(tmp_path / "node_0" / "rank_1" / "wandb_metrics.jsonl", [("b", 3, figures)])
    (tmp_path / "node_0" / "rank_1" / "pulse.jsonl").write_bytes(
        pulse("pulse", 1, 1, steps=3, figures={"_primus_gpu_util_percent": 20.0}))
    view = Exposition(config(), str(tmp_path))
    view.refresh()
    samples = parse(view.render("")[0])
    assert series(samples, "primus_lens_gpu_utilization_ratio") == {
        labels_of("", 0): 0.5, labels_of(1, 1): 0.2}
    # the untagged rows of rank_1 take the global rank its pulse gave
    assert series(samples, "wandb_loss") == {labels_of("", 0, run="a"): 1.5,
                                             labels_of(1, 1, run="b"): 1.5}
    assert not [name for name, _ in samples if "approx" in name]


def test_rows_merged_per_piece_give_each_keys_latest_value(tmp_path: Path) -> None:
    """Flat rows of one writer and run are merged before their keys are looked at; nested rows,
    amendments and other runs in between keep the per-key, in-order meaning."""
    record = tmp_path / "node_0" / "rank_0" / "wandb_metrics.jsonl"
    record.parent.mkdir(parents=True)
    change = type("Change", (), {"step": 3, "timestamp": 1.0, "changes": {"a": 9.0}, "unset": []})
    old_change = type("Change", (), {"step": 1, "timestamp": 1.0, "changes": {"b": 100.0},
                                     "unset": []})
    lines = [recordline.encode("r1", 1, 1.0, {"a": 1.0, "b": 2.0}),
             recordline.encode("r2", 10, 1.0, {"a": 50.0}),  # another run in between
             recordline.encode("r1", 2, 1.0, {"a": 3.0}),
             recordline.encode("r1", 2, 1.0, {"n": {"x": 5.0}}),  # nested: alone, in order
             recordline.encode("r1", 3, 1.0, {"n": {"y": 6.0}, "b": 7.0}),
             recordline.encode("r1", 2, 1.0, {"c": 4.0}),  # an older step: its keys still count
             recordline.encode("r1", 3, 1.0, {"we{ird": 8.0}),  # a brace in a key
             b'{"broken\n',
             recordline.encode_amendment("r1", change),  # the latest step: applies
             recordline.encode_amendment("r1", old_change),  # an older one: not the latest
             recordline.encode("r2", 11, 1.0, {"a": 51.0, "z": float("nan")})]
    record.write_bytes(b"".join(lines))
    view = Exposition(config(), str(tmp_path))
    view.refresh()
    samples = parse(view.render("")[0])
    r1, r2 = labels_of("", 0, run="r1"), labels_of("", 0, run="r2")
    assert series(samples, "wandb_a") == {r1: 9.0, r2: 51.0}
    assert series(samples, "wandb_b") == {r1: 7.0}
    assert series(samples, "wandb_c") == {r1: 4.0}
    assert series(samples, "wandb_n_x") == {tuple(sorted((*r1, ("key", "n.x")))): 5.0}
    assert series(samples, "wandb_n_y") == {tuple(sorted((*r1, ("key", "n.y")))): 6.0}
    assert series(samples, "wandb_we_ird") == {tuple(sorted((*r1, ("key", "we{ird")))): 8.0}
    assert math.isnan(series(samples, "wandb_z")[r2])  # the record's "NaN"
    assert series(samples, "wandb_step") == {r1: 3, r2: 11}
    assert samples[("primus_lens_unreadable_lines_total", (("file", "record"),))] == 1


def test_caps_refuse_new_series_and_count_them_once(tmp_path: Path) -> None:
    record = tmp_path / "node_0" / "rank_0" / "wandb_metrics.jsonl"
    write_record(record, [("r", 0, {f"k{j}": j for j in range(30)})])
    view = Exposition(config(PRIMUS_LENS_METRICS_MAX_SERIES="20"), str(tmp_path))
    view.refresh()
    write_record(record, [("r", 1, {f"k{j}": j + 100 for j in range(30)})])  # the same series
    view.refresh()
    samples = parse(view.render("")[0])
    kept = {name for name, _ in samples if name.startswith("wandb_k")}
    assert len(kept) + len(series(samples, "wandb_step")) == 20 == view.series()
    assert kept == {f"wandb_k{j}" for j in range(20)}  # the first ones admitted stay
    assert samples[("wandb_k5", labels_of("", 0, run="r"))] == 105  # and keep moving
    dropped = series(samples, "primus_lens_series_dropped_total")
    assert dropped == {**{(("metric", f"wandb_k{j}"),): 1 for j in range(20, 30)},
                       (("metric", "wandb_step"),): 1}

    # per metric: one name, many runs
    other = tmp_path / "per"
    write_record(other / "node_0" / "rank_0" / "wandb_metrics.jsonl",
                 [(f"run{n}", 0, {"loss": float(n)}) for n in range(7)])
    view = Exposition(config(PRIMUS_LENS_METRICS_MAX_SERIES_PER_METRIC="3"), str(other))
    view.refresh()
    samples = parse(view.render(OPENMETRICS)[0], openmetrics=True)
    assert len(series(samples, "wandb_loss")) == 3
    assert series(samples, "primus_lens_series_dropped_total") == {
        (("metric", "wandb_loss"),): 4, (("metric", "wandb_step"),): 4}


def test_reads_incrementally_and_bounded(tmp_path: Path) -> None:
    record = tmp_path / "node_0" / "rank_0" / "wandb_metrics.jsonl"
    write_record(record, [("r", 0, {"loss": 1.0})])
    view = Exposition(config(), str(tmp_path))
    view.refresh()
    line = recordline.encode("r", 1, time.time(), {"loss": 2.0})
    with open(record, "ab") as f:
        f.write(line[:10])  # a line being written: not read until whole
    view.refresh()
    assert parse(view.render("")[0])[("wandb_loss", labels_of("", 0, run="r"))] == 1.0
    with open(record, "ab") as f:
        f.write(line[10:])
        f.write(b'{"broken\n')
        f.write(b"x" * (exposition._READ_BYTES + 10) + b"\n")  # passed over, not held
        f.write(recordline.encode("r", 2, time.time(), {"loss": 3.0}))
    for _ in range(4):
        view.refresh()
    assert parse(view.render("")[0])[("wandb_loss", labels_of("", 0, run="r"))] == 3.0
    unreadable = parse(view.render("")[0])[("primus_lens_unreadable_lines_total",
                                             (("file", "record"),))]
    assert unreadable == 2  # the broken line and the one too long to hold
    # a record that is replaced (a new pod's volume, a test) is read from its start
    record.unlink()
    write_record(record, [("s", 0, {"loss": 9.0})])
    view.refresh()
    assert parse(view.render("")[0])[("wandb_loss", labels_of("", 0, run="s"))] == 9.0


def test_render_is_kept_until_something_changes(tmp_path: Path) -> None:
    write_record(tmp_path / "node_0" / "rank_0" / "wandb_metrics.jsonl", [("r", 0, {"a": 1})])
    view = Exposition(config(), str(tmp_path))
    view.refresh()
    first = view.render("")[0]
    assert view.render("")[0] is first  # nothing new: the same body
    view.refresh()
    assert view.render("")[0] is first
    write_record(tmp_path / "node_0" / "rank_0" / "wandb_metrics.jsonl", [("r", 1, {"a": 2})])
    view.refresh()
    assert view.render("")[0] is not first


def test_a_body_is_rendered_ahead_for_the_next_scrape(tmp_path: Path) -> None:
    record = tmp_path / "node_0" / "rank_0" / "wandb_metrics.jsonl"
    write_record(record, [("r", 0, {"a": 1})])
    view = Exposition(config(), str(tmp_path))
    view.refresh()
    view.prerender()  # nobody scraped yet: nothing rendered ahead
    view.render(OPENMETRICS)
    view.render(OPENMETRICS)  # two scrapes a moment apart: the next one is due at once
    write_record(record, [("r", 1, {"a": 2})])
    view.refresh()
    view.prerender()
    ahead = view._scrapers[next(iter(view._scrapers))].body
    body = view.render(OPENMETRICS)[0]
    assert body is ahead  # served as rendered by the reader, not rendered again
    assert parse(body, openmetrics=True)[("wandb_a", labels_of("", 0, run="r"))] == 2
