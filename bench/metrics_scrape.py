"""The agent's ``/metrics``: scrape latency over real HTTP, the exposition's memory, and the cost of
reading new rows (docs/prometheus.md).

A pod of ``--ranks`` ranks (8) whose runs each log ``--keys`` keys (500) and a pulse, in a record
root on disk; the agent's ``Server`` serves it on loopback while a writer process (the trainers) appends a row
to every record ``--rate`` times a second (10), so the data moves between scrapes.  A scraper
comes every ``--interval`` seconds (2), ``--scrapes`` times per format, over one keep-alive
connection as Prometheus does; printed are the median and p99 wall time per scrape (goal: p99
≤ 50 ms), and what one rendering costs alone (a scrape that finds no body rendered ahead pays
it: the first one, or one at an irregular moment).  Memory is
``tracemalloc``'s count of what the exposition holds after reading a backlog of ``--backlog``
rows per rank, and again after twice that backlog (it must not grow with the backlog).  Reading
cost: CPU seconds per 1,000 rows read, for rows of ``--keys`` keys and of 20 keys.

    python bench/metrics_scrape.py [--ranks 8] [--keys 500] [--scrapes 60]
"""

from __future__ import annotations

import argparse
import http.client
import multiprocessing
import os
import sys
import time
import tracemalloc
from typing import Any, Callable, Dict, List

from _common import ROOT, median, scratch

sys.path.insert(0, str(ROOT))

from primus_lens_inject import pulseline, recordline
from primus_lens_inject.agent import Server
from primus_lens_inject.agent.exposition import Exposition
from primus_lens_inject.config import Config

PROMETHEUS_ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
                     "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
FORMATS = {"OpenMetrics (Prometheus's Accept)": PROMETHEUS_ACCEPT, "text 0.0.4": ""}


def row(rank: int, step: int, keys: int) -> bytes:
    data: Dict[str, object] = {f"train/metric_{k:04d}": rank + step * 0.001 + k for k in range(keys)}
    return recordline.encode(f"run-{rank}", step, time.time(), data)


def pulse_line(rank: int, step: int) -> bytes:
    return pulseline.encode(pulseline.PULSE, {
        "time": time.time(), "pid": 1000 + rank, "rank": rank, "local_rank": rank, "node": 0,
        "world_size": 8, "steps": step, "step_last": 0.5, "step_mean": 0.5, "step_median": 0.5,
        "wandb_step": step, "run_id": f"run-{rank}",
        "figures": {"_primus_gpu_util_percent": 90.0, "_primus_gpu_memory_used_bytes": 1 << 34,
                    "_primus_gpu_power_watts": 500.0, "_primus_gpu_temperature_celsius": 70,
                    "_primus_sys_cpu_percent": 40.0, "_primus_sys_process_rss_bytes": 1 << 33}})


def write_pod(root: str, ranks: int, keys: int, rows: int, start: int = 0) -> None:
    for rank in range(ranks):
        directory = os.path.join(root, "node_0", f"rank_{rank}")
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "wandb_metrics.jsonl"), "ab") as f:
            f.write(b"".join(row(rank, start + step, keys) for step in range(rows)))
        with open(os.path.join(directory, pulseline.FILE_NAME), "ab") as f:
            f.write(pulse_line(rank, start + rows))


def scrape_times(port: int, accept: str, count: int, before: Callable[[], None]) -> List[float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    out = []
    try:
        for _ in range(count):
            before()
            began = time.perf_counter()
            conn.request("GET", "/metrics", headers={"Accept": accept})
            response = conn.getresponse()
            body = response.read()
            out.append(time.perf_counter() - began)
            assert response.status == 200 and body
    finally:
        conn.close()
    return out


def p99(values: List[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


def writer(root: str, ranks: int, keys: int, rate: float, stop: Any) -> None:
    """The trainers: a row to every record ``rate`` times a second (another process, as
    trainers are)."""
    step = 1000
    while not stop.wait(1.0 / rate):
        write_pod(root, ranks, keys, 1, step)
        step += 1


def latency(args: argparse.Namespace) -> None:
    config = Config.from_env({"PRIMUS_LENS_AGENT_ADDRESS": "127.0.0.1",
                              "PRIMUS_LENS_AGENT_PORT": "0"})
    with scratch() as root:
        write_pod(root, args.ranks, args.keys, 2)
        server = Server(config, root, lambda: (True, ""))
        server.start()
        view = server.exposition
        deadline = time.monotonic() + 120
        while view.series() < args.ranks * (args.keys + 1) and time.monotonic() < deadline:
            time.sleep(0.1)
        print(f"/metrics of {args.ranks} ranks x {args.keys} keys: {view.series()} series "
              f"(goal p99 <= 50 ms); scrapes every {args.interval:g} s while the trainers write "
              f"{args.rate:g} rows/s per rank")
        for label, accept in FORMATS.items():
            began = time.perf_counter()
            view.render(accept)  # what a scrape costs when it must render itself
            alone = time.perf_counter() - began
            stop = multiprocessing.Event()
            trainers = multiprocessing.Process(target=writer, daemon=True,
                                               args=(root, args.ranks, args.keys, args.rate, stop))
            trainers.start()

            def pace() -> None:
                time.sleep(args.interval)

            times = scrape_times(server.port, accept, args.scrapes + 2, pace)[2:]  # warm-up
            stop.set()
            trainers.join(30)
            print(f"  {label:<36} median {median(times) * 1e3:6.2f} ms  p99 "
                  f"{p99(times) * 1e3:6.2f} ms  ({len(times)} scrapes); a rendering alone "
                  f"{alone * 1e3:6.2f} ms")
        server.close()


def memory(args: argparse.Namespace) -> None:
    config = Config.from_env({})
    with scratch() as root:
        write_pod(root, args.ranks, args.keys, args.backlog)
        tracemalloc.start()
        view = Exposition(config, root)
        for _ in range(50):
            view.refresh()
        view.render(PROMETHEUS_ACCEPT)
        first = tracemalloc.get_traced_memory()
        write_pod(root, args.ranks, args.keys, args.backlog, args.backlog)
        for _ in range(50):
            view.refresh()
        view.render(PROMETHEUS_ACCEPT)
        second = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        print(f"exposition memory, {view.series()} series: {first[0] / 2**20:.1f} MiB after "
              f"{args.backlog} rows per rank, {second[0] / 2**20:.1f} MiB after "
              f"{2 * args.backlog} (peak while reading {second[1] / 2**20:.1f} MiB)")


def reading(args: argparse.Namespace) -> None:
    for keys in (args.keys, 20):
        with scratch() as root:
            rows = max(200, 20000 // keys)
            write_pod(root, args.ranks, keys, rows)
            view = Exposition(Config.from_env({}), root)
            began = time.process_time()
            for _ in range(50):
                view.refresh()
            spent = time.process_time() - began
            total = rows * args.ranks
            print(f"reading rows of {keys:4d} keys: {spent / total * 1e6:8.1f} us CPU per row, "
                  f"{spent / total * 1000:6.3f} s per 1,000 rows (share of a core at 1,000 rows/s: "
                  f"{spent / total * 1000 * 100:5.1f} %)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ranks", type=int, default=8)
    parser.add_argument("--keys", type=int, default=500)
    parser.add_argument("--scrapes", type=int, default=60)
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between scrapes")
    parser.add_argument("--rate", type=float, default=10.0, help="rows per second per rank")
    parser.add_argument("--backlog", type=int, default=200, help="rows per rank for memory")
    args = parser.parse_args()
    latency(args)
    memory(args)
    reading(args)


if __name__ == "__main__":
    main()
