"""Requests per pod per sink, with the pod agent and with in-process senders; the agent's CPU
and memory.

One pod: 8 owners (one record each, ``node_0/rank_0..7``) logging 10 rows/s of 10 keys each,
written by a writer process the way trainers write them (tagged lines, registered writers, the
writing lock held).  Both sinks are on (Lens and OTLP) and answer 200 from a loopback counter.

1. Baseline, "in-process senders": one ``Reporter`` per record, as each trainer runs today (in
   this process: the requests are the same as from eight).  Injector, "agent": a real
   ``primus-lens agent`` process over the same root.  Printed: requests/s per sink at steady
   state (after a warm-up), rows per request.  Goal: ≤ 1 request/s per sink with the agent.
2. The agent's CPU per 1,000 rows/s delivered (8 owners × 125 rows/s, both sinks), from
   ``/proc/<pid>/stat`` over the steady window.  Goal: ≤ 2 % of a core.
3. Memory: the agent's peak RSS draining a backlog of N rows and of 4 N rows (sink down while
   they were written): about the same (one batch per sink), whatever the backlog.

Run: ``.venv/bin/python bench/agent_requests.py [--seconds 20]``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from _common import PYTHON, ROOT, report, scratch

OWNERS = 8
KEYS = 10
POD = "bench-pod-0"
STARTED: List[str] = []  # the first agent's start line

WRITER = r"""
import os, sys, time
from primus_lens_inject import liveness, recordline
from primus_lens_inject.report import Writer, register
root, owners, rate, seconds, keys = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), \
    float(sys.argv[4]), int(sys.argv[5])
files = []
for rank in range(owners):
    path = os.path.join(root, "node_0", f"rank_{rank}", "wandb_metrics.jsonl")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    writer = Writer({"pod_name": "bench-pod-0"}, rank, True, f"rank{rank}/", "bench")
    register(path, writer)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    liveness.hold(path)
    files.append((fd, writer.tag, f"run-{rank}"))
print("ready", flush=True)
tick, step, start = 0.1, 0, time.monotonic()
per_tick = max(1, int(round(rate * tick)))
while seconds < 0 or time.monotonic() - start < seconds:
    now = time.time()
    for fd, tag, run in files:
        lines = b"".join(recordline.encode(run, step + i, now, {f"k{j}": 0.5 * j for j in range(keys)},
                                           tag) for i in range(per_tick))
        os.write(fd, lines)
    step += per_tick
    if seconds < 0:
        break  # a backlog written at once
    time.sleep(max(0.0, start + (step / per_tick) * tick - time.monotonic()))
print("rows", step * len(files), flush=True)
"""


class Counter:
    """A loopback sink that answers 200 (Lens envelope, or an empty OTLP answer) and counts."""

    def __init__(self) -> None:
        self.hits: List[Tuple[float, str]] = []
        self.up = True
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if not owner.up:
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                kind = "otlp" if self.path.endswith("/v1/metrics") else \
                    "detection" if self.path.endswith("/detection") else "lens"
                owner.hits.append((time.monotonic(), kind))
                body = b"" if kind == "otlp" else \
                    b'{"meta":{"code":2000,"message":"OK"},"data":{},"tracing":null}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"

    def rate(self, kind: str, since: float, until: float) -> float:
        return sum(1 for t, k in self.hits if k == kind and since <= t < until) / (until - since)


def _env(sink: Counter, root: str, otlp: bool = True) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PRIMUS_LENS_", "OTEL_"))}
    env.update({"PRIMUS_LENS_WANDB_API_REPORTING": "true", "PRIMUS_LENS_API_BASE_URL": sink.base + "/v1",
                "POD_NAME": POD, "PRIMUS_LENS_OTLP": str(otlp).lower(),
                "OTEL_EXPORTER_OTLP_ENDPOINT": sink.base,
                "PRIMUS_LENS_WANDB_OUTPUT_PATH": root, "PRIMUS_LENS_AGENT_PORT": "0",
                "PRIMUS_LENS_AGENT_ADDRESS": "127.0.0.1", "PRIMUS_LENS_AGENT_DETECTION_WINDOW": "0",
                "PRIMUS_LENS_PULSE": "false", "PYTHONPATH": str(ROOT)})
    return env


def _writer(root: str, rate: float, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen([PYTHON, "-c", WRITER, root, str(OWNERS), str(rate), str(seconds),
                             str(KEYS)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout.readline().strip() == "ready"
    return proc


def _agent(env: Dict[str, str], root: str) -> subprocess.Popen:
    proc = subprocess.Popen([PYTHON, "-m", "primus_lens_inject", "agent", "--root", root],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if "sending the records" not in line:
        raise SystemExit(f"the agent did not start: {line}{proc.stderr.read()[-2000:]}")
    if not STARTED:
        STARTED.append(line.strip())
        print(f"  the agent: {line.strip()}")  # says which JSON library it uses
    return proc


def _cpu(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _end(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    return out.strip().splitlines()[-1] if out.strip() else err[-500:]


def in_process(seconds: float, warmup: float) -> Dict[str, float]:
    """Today: a Reporter per record (the trainer's), each sending its own."""
    from primus_lens_inject.config import Config
    from primus_lens_inject.report import Reporter
    from primus_lens_inject.topology import Topology

    sink = Counter()
    with scratch() as tmp:
        root = os.path.join(tmp, "out")
        writer = _writer(root, 10.0, seconds)
        config = Config.from_env(_env(sink, root))
        reporters = []
        for rank in range(OWNERS):
            path = os.path.join(root, "node_0", f"rank_{rank}", "wandb_metrics.jsonl")
            reporter = Reporter(config, Topology(rank=rank, local_rank=rank, world_size=OWNERS),
                                path)
            reporter.start()
            reporters.append(reporter)
        start = time.monotonic()
        writer.communicate(timeout=seconds + 60)
        end = time.monotonic()
        for reporter in reporters:
            reporter.close(time.monotonic() + 5)
    return {"lens": sink.rate("lens", start + warmup, end), "otlp": sink.rate("otlp", start + warmup, end)}


def with_agent(seconds: float, warmup: float, rate: float, otlp: bool = True) -> Dict[str, float]:
    sink = Counter()
    with scratch() as tmp:
        root = os.path.join(tmp, "out")
        writer = _writer(root, rate, seconds)
        agent = _agent(_env(sink, root, otlp), root)
        start = time.monotonic()
        time.sleep(warmup)
        cpu0, t0 = _cpu(agent.pid), time.monotonic()
        writer.communicate(timeout=seconds + 60)
        cpu1, t1 = _cpu(agent.pid), time.monotonic()
        _end(agent)
    rows_per_s = OWNERS * rate
    return {"lens": sink.rate("lens", start + warmup, t1), "otlp": sink.rate("otlp", start + warmup, t1),
            "cpu_share": (cpu1 - cpu0) / (t1 - t0), "rows_per_s": rows_per_s}


def backlog_peak(rows_per_owner: int) -> Tuple[float, str]:
    """The agent's peak RSS draining ``rows_per_owner`` rows in each of the 8 records."""
    sink = Counter()
    with scratch() as tmp:
        root = os.path.join(tmp, "out")
        writer = subprocess.run([PYTHON, "-c", WRITER, root, str(OWNERS), str(rows_per_owner * 10),
                                 "-1", str(KEYS)], env={**os.environ, "PYTHONPATH": str(ROOT)},
                                capture_output=True, text=True, timeout=600)
        assert writer.returncode == 0, writer.stderr
        agent = _agent(_env(sink, root), root)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not _all_acknowledged(root):
            time.sleep(0.5)
        peak = _peak_rss_mib(agent.pid)
        last = _end(agent)
    return peak, last


def _all_acknowledged(root: str) -> bool:
    """Every record's Lens and OTLP cursors at its end."""
    for rank in range(OWNERS):
        base = os.path.join(root, "node_0", f"rank_{rank}", "wandb_metrics")
        size = os.path.getsize(base + ".jsonl")
        for cursor in (".cursor", ".otlp.cursor"):
            try:
                with open(base + cursor) as f:
                    if json.load(f)["offset"] < size:
                        return False
            except (OSError, ValueError, KeyError):
                return False
    return True


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="steady-state run length")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--backlog", type=int, default=5000, help="rows per owner (memory)")
    args = parser.parse_args(argv)
    print(f"{OWNERS} owners x 10 rows/s of {KEYS} keys, Lens and OTLP on; "
          f"{args.seconds:g} s runs, {args.warmup:g} s warm-up")
    base = in_process(args.seconds, args.warmup)
    agent = with_agent(args.seconds, args.warmup, 10.0)
    for kind in ("lens", "otlp"):
        report(f"requests/s per pod, {kind} (in-process vs agent)", base[kind], agent[kind],
               "req/s", "agent <= 1")
        print(f"  rows per request with the agent: {OWNERS * 10 / max(agent[kind], 1e-9):.0f}")
    for otlp in (False, True):
        heavy = with_agent(args.seconds, args.warmup, 125.0, otlp)
        per_thousand = heavy["cpu_share"] / (heavy["rows_per_s"] / 1000.0) * 100
        print(f"agent CPU at {heavy['rows_per_s']:.0f} rows/s ({'Lens and OTLP' if otlp else 'Lens'}"
              f"): {heavy['cpu_share'] * 100:.2f} % of a core = {per_thousand:.2f} % per 1,000 "
              f"rows/s (goal <= 2 %); requests/s lens {heavy['lens']:.2f}, "
              f"otlp {heavy['otlp']:.2f}")
    small, _ = backlog_peak(args.backlog)
    large, last = backlog_peak(args.backlog * 4)
    print(f"agent peak RSS draining {OWNERS * args.backlog} rows: {small:.1f} MiB; "
          f"{OWNERS * args.backlog * 4} rows: {large:.1f} MiB (goal: about the same)")
    print(f"  its last line: {last}")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
