"""A real Prometheus server scrapes the agent (docs/prometheus.md): PromQL gives exactly the
values of the records for every rank, every rank's pulse (a real ``torchrun`` job's too), and the
series stay under the cap with the overflow counter when a run logs more keys than allowed.

Debian's ``prometheus`` (``/usr/bin/prometheus``; ``make test`` installs it) is started here on
loopback with a private storage directory and a 1 s scrape interval; its HTTP API is polled with
a bound on every wait, never a fixed sleep.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest
from conftest import free_port, require
from test_metrics import latest_in_record, pulse, run_pulse_job, run_trainers, write_record

from primus_lens_inject import pulseline
from primus_lens_inject.agent import Server, exposition
from primus_lens_inject.config import Config

PROMETHEUS = "/usr/bin/prometheus"
WAIT = 180.0  # seconds any one wait may take on a loaded machine


@pytest.fixture(autouse=True)
def prometheus_installed() -> None:
    """Skipped without Debian's prometheus; failed instead under ``make test``, which installs
    it (``PRIMUS_LENS_REQUIRE_TOOLS``, mk/system.mk)."""
    require("prometheus", os.access(PROMETHEUS, os.X_OK),
            f"{PROMETHEUS} is missing (Debian's prometheus package; `make test` installs it)")


class Prometheus:
    """A Prometheus server scraping ``targets`` (job name -> port) every second."""

    def __init__(self, tmp: Path, targets: Dict[str, int]) -> None:
        self.port = free_port()
        jobs = "".join(f"  - job_name: {job}\n    static_configs:\n"
                       f"      - targets: ['127.0.0.1:{port}']\n"
                       for job, port in targets.items())
        config = tmp / "prometheus.yml"
        config.write_text("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
                          f"scrape_configs:\n{jobs}")
        with open(tmp / "prometheus.log", "wb") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{self.port}"],
                stdout=log, stderr=subprocess.STDOUT, cwd=tmp)

    def query(self, promql: str) -> List[Dict[str, Any]]:
        url = (f"http://127.0.0.1:{self.port}/api/v1/query?"
               + urllib.parse.urlencode({"query": promql}))
        with urllib.request.urlopen(url, timeout=30) as answer:
            body = json.load(answer)
        assert body["status"] == "success", body
        return body["data"]["result"]

    def until(self, promql: str, done: Callable[[List[Dict[str, Any]]], bool]
              ) -> List[Dict[str, Any]]:
        """The result of ``promql`` once ``done`` accepts it (bounded by ``WAIT``)."""
        deadline = time.monotonic() + WAIT
        last: Optional[List[Dict[str, Any]]] = None
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "prometheus exited; see prometheus.log"
            try:
                last = self.query(promql)
                if done(last):
                    return last
            except OSError:
                pass  # not listening yet
            time.sleep(0.5)
        raise AssertionError(f"{promql}: no acceptable answer in {WAIT} s; last {last}")

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(30)


def agent(root: Path, **env: str) -> Server:
    config = Config.from_env({"PRIMUS_LENS_AGENT_ADDRESS": "127.0.0.1",
                              "PRIMUS_LENS_AGENT_PORT": "0", **env})
    server = Server(config, str(root), lambda: (True, ""))
    server.start()
    return server


@pytest.fixture
def servers() -> Iterator[List[Any]]:
    """Everything started by a test, closed at its end whatever happened."""
    started: List[Any] = []
    yield started
    for thing in reversed(started):
        thing.close()


def value(sample: Dict[str, Any]) -> float:
    return float(sample["value"][1])  # Prometheus's shortest exact decimal: float() round-trips


def by_labels(result: List[Dict[str, Any]], *names: str) -> Dict[Tuple[str, ...], float]:
    return {tuple(sample["metric"].get(n, "") for n in names): value(sample) for sample in result}


def test_promql_returns_the_records_values_for_every_rank(tmp_path: Path,
                                                          servers: List[Any]) -> None:
    runs = run_trainers(tmp_path, ranks=3, rows=8, keys=30)
    root = tmp_path / "out"
    # every rank's pulse (the lines the pulse writer writes)
    for rank in range(3):
        (root / "node_0" / f"rank_{rank}" / "pulse.jsonl").write_bytes(
            pulse("pulse", rank, rank, steps=100 + rank, step_last=0.5 + rank, step_mean=0.25,
                  step_median=0.3, figures={"_primus_gpu_0_util_percent": 10.0 * rank,
                                            "_primus_sys_process_rss_bytes": 1 << (20 + rank)})
            + (pulse("stall", rank, rank, steps=100 + rank, since=1.0, threshold=300.0,
                     stacks="", source="faulthandler") if rank == 2 else b""))
    capped_root = tmp_path / "capped"
    write_record(capped_root / "node_0" / "rank_0" / "wandb_metrics.jsonl",
                 [("big", step, {f"key{j:04d}": step * 1000 + j for j in range(300)})
                  for step in range(3)])
    main = agent(root)
    servers.append(main)
    capped = agent(capped_root, PRIMUS_LENS_METRICS_MAX_SERIES="100",
                   PRIMUS_LENS_METRICS_MAX_SERIES_PER_METRIC="50")
    servers.append(capped)
    (tmp_path / "prom").mkdir()
    prometheus = Prometheus(tmp_path / "prom", {"agent": main.port, "capped": capped.port})
    servers.append(prometheus)

    expected = latest_in_record(root)
    assert sorted(rank for rank, _ in expected) == [0, 1, 2]
    prometheus.until('count(wandb_step{job="agent"})', lambda r: bool(r) and value(r[0]) == 3)
    checked = 0
    for (rank, run), values in expected.items():
        assert run == runs[rank]
        for key, logged in values.items():
            if key.startswith("_primus_"):
                continue
            name, extra = ("wandb_step", ()) if key == "<step>" else exposition.key_metric(key)
            matchers = {"job": "agent", "rank": str(rank), "run": run, **dict(extra)}
            promql = name + "{" + ",".join(f'{k}="{v}"' for k, v in matchers.items()) + "}"
            result = prometheus.query(promql)
            assert len(result) == 1, (promql, result)
            got = value(result[0])
            assert got == logged or (math.isnan(got) and math.isnan(logged)), promql
            assert result[0]["metric"]["local_rank"] == str(rank)
            assert result[0]["metric"]["node_rank"] == "0"
            checked += 1
    assert checked >= 3 * 35
    # one name per key, labels per rank: the ranks side by side in one query
    assert by_labels(prometheus.query('wandb_tokens{job="agent"}'), "rank") == {
        (str(rank),): 7000.0 + rank for rank in range(3)}
    assert by_labels(prometheus.query('wandb_train_loss{job="agent",key="train/loss"}'),
                     "rank") == {(str(rank),): 1.0 / (8 + rank) for rank in range(3)}

    # every rank's pulse
    assert by_labels(prometheus.query("primus_lens_rank_optimizer_steps_total"), "rank") == {
        ("0",): 100.0, ("1",): 101.0, ("2",): 102.0}
    assert by_labels(prometheus.query("primus_lens_rank_step_seconds"), "rank") == {
        ("0",): 0.5, ("1",): 1.5, ("2",): 2.5}
    assert by_labels(prometheus.query("primus_lens_gpu_utilization_ratio"), "rank", "gpu") == {
        ("0", "0"): 0.0, ("1", "0"): 0.1, ("2", "0"): 0.2}
    assert by_labels(prometheus.query("primus_lens_process_rss_bytes"), "rank") == {
        (str(rank),): float(1 << (20 + rank)) for rank in range(3)}
    assert by_labels(prometheus.query("primus_lens_rank_stalled == 1"), "rank") == {("2",): 1.0}
    assert value(prometheus.query("sum(primus_lens_rank_stalls_total)")[0]) == 1.0

    # the capped agent: 300 keys x 1 run, 100 series at most, the rest counted
    prometheus.until('count({job="capped",__name__=~"wandb_.*"})',
                     lambda r: bool(r) and value(r[0]) == 100)
    dropped = prometheus.until('sum(primus_lens_series_dropped_total{job="capped"})',
                               lambda r: bool(r) and value(r[0]) == 201)
    assert value(dropped[0]) == 300 + 1 - 100  # 300 keys and the step, 100 kept
    samples = prometheus.query('scrape_samples_scraped{job="capped"}')
    assert value(samples[0]) <= 100 + 201  # admitted series and one counter per refused name
    kept = prometheus.query('{job="capped",__name__=~"wandb_key.*"}')
    assert {sample["metric"]["__name__"] for sample in kept} == {
        f"wandb_key{j:04d}" for j in range(100)}
    assert all(value(sample) == 2000 + int(sample["metric"]["__name__"][-4:])
               for sample in kept)
    for port in (main.port, capped.port):
        promtool_check(port)


def promtool_check(port: int) -> None:
    """``promtool check metrics`` (Prometheus's own linter) finds nothing wrong in a scrape
    (skipped where Debian's package left promtool out)."""
    if shutil.which("promtool") is None:
        return
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as answer:
        body = answer.read()
    check = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True,
                           timeout=60)
    assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()


def test_every_rank_of_a_real_torchrun_job_on_promql(tmp_path: Path, servers: List[Any]) -> None:
    """``torchrun`` (gloo, CPU), 2 ranks, only rank 0 with wandb, rank 1 hanging once past the
    stall threshold: PromQL shows each rank's optimizer steps, stalls and figures exactly as its
    pulse file says, and rank 0's logged loss."""
    steps = 6
    pulses = run_pulse_job(tmp_path, PRIMUS_LENS_STALL_SECONDS="1", PRIMUS_LENS_STALL_FACTOR="2",
                           LENS_PULSE_STEPS=str(steps), LENS_PULSE_HANGS="1:sleep",
                           LENS_PULSE_HANG="4", LENS_PULSE_HANG_AT="3")
    root = tmp_path / "out"
    main = agent(root)
    servers.append(main)
    (tmp_path / "prom").mkdir()
    prometheus = Prometheus(tmp_path / "prom", {"agent": main.port})
    servers.append(prometheus)

    found = prometheus.until("primus_lens_rank_optimizer_steps_total",
                             lambda r: len(r) == 2)
    assert by_labels(found, "rank", "local_rank", "node_rank") == {
        ("0", "0", "0"): float(steps), ("1", "1", "0"): float(steps)}
    stalls = by_labels(prometheus.query("primus_lens_rank_stalls_total"), "rank")
    for rank, lines in pulses.items():
        beats = [line for line in lines if line["kind"] == pulseline.PULSE]
        assert beats[-1]["steps"] == steps
        assert stalls[(str(rank),)] == sum(line["kind"] == pulseline.STALL for line in lines)
        rss = prometheus.query(f'primus_lens_process_rss_bytes{{rank="{rank}"}}')
        assert value(rss[0]) == beats[-1]["figures"]["_primus_sys_process_rss_bytes"]
        last = prometheus.query(f'primus_lens_rank_step_seconds{{rank="{rank}"}}')
        assert value(last[0]) == beats[-1]["step_last"]
    assert stalls[("1",)] >= 1  # the rank that slept
    assert by_labels(prometheus.query("primus_lens_rank_stalled"), "rank") == {
        ("0",): 0.0, ("1",): 0.0}  # both stepped again
    expected = latest_in_record(root)
    assert [rank for rank, _ in expected] == [0]  # only rank 0 owns a run
    (run, values), = ((run, values) for (_, run), values in expected.items())
    loss = prometheus.query(f'wandb_loss{{run="{run}"}}')
    assert [(sample["metric"]["rank"], value(sample)) for sample in loss] == [
        ("0", values["loss"])]
    promtool_check(main.port)
