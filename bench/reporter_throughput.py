"""How fast the reporter delivers, what it costs, and what reporting costs the training thread.

1. Drain: a record of N rows × 20 keys is delivered by a ``Reporter`` to a minimal loopback
   sink (another process that answers 200 to everything); prints rows/s, points/s and the
   reporter's CPU time per point.  Goal: ≥ 5,000 rows/s of 20 keys, ≤ 5 µs CPU per point.
   The same for the OTLP sink alone (protobuf, protobuf with gzip, JSON), each against the Lens
   sink as the baseline, medians of ``--repeats`` drains; and a live run at 5,000 rows/s with
   the OTLP sink on.
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
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

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
        body = b"" if self.path.endswith("/v1/metrics") else OK  # OTLP: empty = all accepted
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
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


def lens_config(url: str) -> Any:
    from primus_lens_inject.config import Config

    return Config(api_base_url=url, pod_name="bench-0", flush_interval=0.05)


def otlp_config(url: str, protocol: str, compression: str = "none") -> Any:
    from primus_lens_inject.config import Config

    return Config(api_reporting=False, otlp=True, otlp_endpoint=url.rsplit("/v1", 1)[0],
                  otlp_protocol=protocol, otlp_compression=compression, pod_name="bench-0",
                  flush_interval=0.05)


def drain(rows: int, config: Any, tmp: str, name: str) -> Tuple[float, float]:
    """Deliver a fresh record of ``rows`` rows; (rows/s, reporter CPU µs per point)."""
    from primus_lens_inject.report.reporter import Reporter
    from primus_lens_inject.topology import Topology

    record = Path(tmp) / f"drain-{name}" / "wandb_metrics.jsonl"
    write_record(record, rows)
    reporter = Reporter(config, Topology(), str(record))
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    reporter.start()
    delivered = reporter.flush(time.monotonic() + 600)
    elapsed = time.perf_counter() - started
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    reporter.close(time.monotonic() + 1.0)
    shutil.rmtree(record.parent)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    points = rows * KEYS
    if not delivered:
        raise SystemExit(f"drain {name}: not everything was delivered")
    return rows / elapsed, cpu * 1e6 / points


def drains(rows: int, url: str, tmp: str, repeats: int) -> None:
    """The Lens sink is the baseline each OTLP encoding is compared with; medians."""
    sinks = {"lens": lens_config(url), "otlp protobuf": otlp_config(url, "http/protobuf"),
             "otlp protobuf+gzip": otlp_config(url, "http/protobuf", "gzip"),
             "otlp json": otlp_config(url, "http/json")}
    rates: Dict[str, List[float]] = {name: [] for name in sinks}
    costs: Dict[str, List[float]] = {name: [] for name in sinks}
    for _ in range(repeats):  # alternating, so a noisy moment hits every sink alike
        for name, config in sinks.items():
            rate, cost = drain(rows, config, tmp, name.replace(" ", "-").replace("+", "-"))
            rates[name].append(rate)
            costs[name].append(cost)
    print(f"drain: {rows} rows x {KEYS} keys, medians of {repeats}; goals >= 5,000 rows/s, "
          "<= 5 us CPU/point")
    for name in sinks:
        if name == "lens":
            continue
        report(f"drain rows/s, lens vs {name}", median(rates["lens"]), median(rates[name]),
               "rows/s", ">= 5,000")
        report(f"drain CPU us/point, lens vs {name}", median(costs["lens"]), median(costs[name]),
               "us", "<= 5")


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


def live(url: str, tmp: str, rate: int, seconds: float, otlp: bool = False) -> None:
    rows = int(rate * seconds)
    where = os.path.join(tmp, "live-otlp" if otlp else "live")
    sink = {"PRIMUS_LENS_OTLP": "true", "PRIMUS_LENS_OTLP_ENDPOINT": url.rsplit("/v1", 1)[0]} \
        if otlp else {"PRIMUS_LENS_WANDB_API_REPORTING": "true", "PRIMUS_LENS_API_BASE_URL": url}
    env = child_env(tmp, True, {**sink, "POD_NAME": "bench-0",
                                "PRIMUS_LENS_WANDB_OUTPUT_PATH": where,
                                "PRIMUS_LENS_SHUTDOWN_TIMEOUT": "30"})
    logged_for, finish = map(float, run_child(LIVE.format(keys=KEYS, rows=rows, rate=rate),
                                              env).split())
    status = json.loads((Path(where) / "node_0" / "rank_0" /
                         "wandb_metrics.status.json").read_text())
    status = status["otlp"] if otlp else status
    print(f"live{' otlp' if otlp else ''}: {rows} rows at {rate}/s logged in {logged_for:.2f} s; "
          f"finish (flushing what was not yet sent) took {finish:.2f} s; at exit "
          f"{status['rows_sent']} sent, backlog {status['backlog_bytes']} bytes, "
          f"state '{status['state']}'")


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
            drains(args.rows, url, tmp, args.repeats)
            live(url, tmp, args.rate, args.seconds)
            live(url, tmp, args.rate, args.seconds, otlp=True)
            log_cost(url, tmp, args.calls, args.repeats)
    finally:
        sink.kill()


if __name__ == "__main__":
    main()
