"""How fast the reporter delivers, what it costs, and what reporting costs the training thread.

1. Drain: a record of N rows × 20 keys is delivered by a ``Reporter`` to a minimal loopback
   sink (another process that answers 200 to everything); prints rows/s, points/s and the
   reporter's CPU time per point.  Goal: ≥ 5,000 rows/s of 20 keys, ≤ 5 µs CPU per point.
2. Live: a training subprocess logs 5,000 rows/s for a few seconds (wandb disabled mode, so
   wandb's own cost does not hide ours) with reporting on; prints the backlog left at the end.
3. ``run.log`` median per call without the injector, with the injector and reporting off, and
   with reporting on (sink up), side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from _common import child_env, median, report, run_child, scratch
from log_overhead import ACROSS

SINK = r"""
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
OK = b'{"meta":{"code":2000,"message":"OK"},"data":{},"tracing":null}'
class Sink(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # one response, no 40 ms delayed-ACK stall
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(OK)))
        self.end_headers()
        self.wfile.write(OK)
    def log_message(self, *args):
        pass
server = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
print(server.server_address[1], flush=True)
server.serve_forever()
"""

KEYS = 20


def start_sink() -> tuple:
    proc = subprocess.Popen([sys.executable, "-c", SINK], stdout=subprocess.PIPE, text=True)
    return proc, f"http://127.0.0.1:{int(proc.stdout.readline())}/v1"


def write_record(path: Path, rows: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    now = time.time() - 3600
    with open(path, "w") as f:
        for step in range(rows):
            data = {f"train/metric_{k}": 0.001 * step + k for k in range(KEYS)}
            f.write(json.dumps({"timestamp": now + step * 0.01, "step": step, "run_id": "bench",
                                "data": data}, separators=(",", ":")) + "\n")


def drain(rows: int, url: str, tmp: str) -> None:
    from primus_lens_inject.config import Config
    from primus_lens_inject.report.reporter import Reporter
    from primus_lens_inject.topology import Topology

    record = Path(tmp) / "drain" / "wandb_metrics.jsonl"
    write_record(record, rows)
    config = Config(api_base_url=url, pod_name="bench-0", flush_interval=0.05)
    reporter = Reporter(config, Topology(), str(record))
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    reporter.start()
    delivered = reporter.flush(timeout=600)
    elapsed = time.perf_counter() - started
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    reporter.close(1.0)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    points = rows * KEYS
    print(f"drain: {rows} rows x {KEYS} keys delivered={delivered} in {elapsed:.2f} s: "
          f"{rows / elapsed:,.0f} rows/s, {points / elapsed:,.0f} points/s, "
          f"reporter CPU {cpu * 1e6 / points:.2f} us/point "
          f"(goals: >= 5,000 rows/s, <= 5 us/point)")


LIVE = """
import time, wandb
run = wandb.init(project="bench", mode="disabled")
row = {{f"train/metric_{{k}}": 0.5 for k in range({keys})}}
start = time.perf_counter()
for i in range({rows}):
    run.log(row)
    if i % 50 == 49:  # a training step sleeps or waits on the GPU, releasing the GIL
        time.sleep(max(0.0, start + (i + 1) / {rate} - time.perf_counter()))
logged = time.perf_counter() - start
run.finish()
print(logged, time.perf_counter() - start - logged)
"""


def live(url: str, tmp: str, rate: int, seconds: float) -> None:
    rows = int(rate * seconds)
    env = child_env(tmp, True, {"PRIMUS_LENS_WANDB_API_REPORTING": "true",
                                "PRIMUS_LENS_API_BASE_URL": url, "POD_NAME": "bench-0",
                                "PRIMUS_LENS_WANDB_OUTPUT_PATH": os.path.join(tmp, "live"),
                                "PRIMUS_LENS_SHUTDOWN_TIMEOUT": "30"})
    logged_for, finish = map(float, run_child(LIVE.format(keys=KEYS, rows=rows, rate=rate),
                                              env).split())
    status = json.loads((Path(tmp) / "live" / "node_0" / "rank_0" /
                         "wandb_metrics.status.json").read_text())
    print(f"live: {rows} rows at {rate}/s logged in {logged_for:.2f} s; finish (flushing what "
          f"was not yet sent) took {finish:.2f} s; at exit {status['rows_sent']} sent, backlog "
          f"{status['backlog_bytes']} bytes, state '{status['state']}'")


def log_cost(url: str, tmp: str, calls: int, repeats: int) -> None:
    row = "{" + ", ".join(f'"train/metric_{k}": 0.5' for k in range(KEYS)) + "}"
    code = ACROSS.format(mode="disabled", row=row, calls=calls)
    off = {"PRIMUS_LENS_WANDB_API_REPORTING": "false"}
    on = {"PRIMUS_LENS_WANDB_API_REPORTING": "true", "PRIMUS_LENS_API_BASE_URL": url,
          "POD_NAME": "bench-0"}
    plain, quiet, reporting = [], [], []
    for _ in range(repeats):
        plain.append(float(run_child(code, child_env(tmp, False))))
        quiet.append(float(run_child(code, child_env(tmp, True, off))))
        reporting.append(float(run_child(code, child_env(tmp, True, on))))
    report("run.log disabled, injector, reporting off (us)", median(plain), median(quiet), "us",
           "added <= 10 us")
    report("run.log disabled, injector, reporting on (us)", median(plain), median(reporting),
           "us", "added <= 10 us")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--rate", type=int, default=5_000)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    sink, url = start_sink()
    try:
        with scratch() as tmp:
            drain(args.rows, url, tmp)
            live(url, tmp, args.rate, args.seconds)
            log_cost(url, tmp, args.calls, args.repeats)
    finally:
        sink.kill()


if __name__ == "__main__":
    main()
