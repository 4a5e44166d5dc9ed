"""Admission latency of ``primus-lens webhook`` under 50 concurrent requests over TLS.

The server runs as the Deployment runs it (its own process, TLS, decision log at info level);
this process plays the API server with an asyncio client.  Two patterns:

- keep-alive: 50 persistent TLS connections (the API server reuses its connections), each round
  all 50 send a PyTorchJob worker pod's AdmissionReview at the same instant, as when a 50-node
  job's pods are created together;
- new connections: the same bursts, each request on a fresh TLS connection (handshake included),
  the worst case after the API server has dropped its idle connections.

Prints median, p99 and max per pattern, the server's CPU time per review (the figure least
disturbed by other work on the machine) and its peak resident memory; the goal is p99 <= 20 ms
with keep-alive.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import List, Optional, Tuple

import psutil
import trustme
import yaml

ROOT = Path(__file__).resolve().parent.parent
POD = ROOT / "tests" / "k8s" / "pytorchjob-worker.yaml"
SERVICE_NAME = "primus-lens-inject.primus-lens.svc"
GOAL_P99_MS = 20.0


def review_body() -> bytes:
    pod = yaml.safe_load(POD.read_text())
    return json.dumps({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": "bench", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                    "resource": {"group": "", "version": "v1", "resource": "pods"},
                    "namespace": "ml-team", "operation": "CREATE", "object": pod,
                    "oldObject": None, "dryRun": False},
    }).encode()


def start_server(tmp: Path, ca: trustme.CA) -> Tuple[subprocess.Popen, int]:
    cert = ca.issue_cert(SERVICE_NAME)
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp / "tls.pem"))
    (tmp / "config.json").write_text(json.dumps({
        "image": "primus-lens-inject:bench",
        "env": {"PRIMUS_LENS_API_BASE_URL": "http://lens:8989/v1",
                "PRIMUS_LENS_WANDB_API_REPORTING": "true"}}))
    proc = subprocess.Popen(
        [sys.executable, "-m", "primus_lens_inject", "webhook", "--host", "127.0.0.1",
         "--port", "0", "--tls-cert", str(tmp / "tls.pem"), "--tls-key", str(tmp / "tls.pem"),
         "--config", str(tmp / "config.json"), "--shutdown-delay", "0"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    port: List[int] = []
    ready = threading.Event()

    def drain() -> None:  # the decision log is written as in production, and read away here
        for line in proc.stderr:
            if not port and '"listening"' in line:
                port.append(json.loads(line)["port"])
                ready.set()
        ready.set()

    threading.Thread(target=drain, daemon=True).start()
    if not ready.wait(20) or not port:
        proc.kill()
        raise SystemExit("the webhook did not start within 20 s")
    return proc, port[0]


class Client:
    """One API-server connection: HTTP/1.1 over TLS, a request at a time."""

    def __init__(self, port: int, context: ssl.SSLContext, request: bytes) -> None:
        self.port, self.context, self.request = port, context, request
        self.reader: Optional[asyncio.StreamReader] = None
        self.writer: Optional[asyncio.StreamWriter] = None

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(
            "127.0.0.1", self.port, ssl=self.context, server_hostname=SERVICE_NAME)

    async def admit(self) -> float:
        """Seconds from sending the review to having the whole answer."""
        started = time.perf_counter()
        if self.writer is None:
            await self.connect()
        self.writer.write(self.request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        body = await self.reader.readexactly(length)
        elapsed = time.perf_counter() - started
        if not head.startswith(b"HTTP/1.1 200") or b'"patch"' not in body:
            raise SystemExit(f"unexpected answer: {head[:40]!r} {body[:200]!r}")
        return elapsed

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except (ssl.SSLError, ConnectionError):
                pass
            self.writer = None


async def bursts(port: int, context: ssl.SSLContext, request: bytes, concurrency: int,
                 rounds: int, warmup: int, keep_alive: bool) -> List[float]:
    clients = [Client(port, context, request) for _ in range(concurrency)]
    if keep_alive:
        await asyncio.gather(*(c.connect() for c in clients))
    samples: List[float] = []
    for index in range(warmup + rounds):
        latencies = await asyncio.gather(*(c.admit() for c in clients))
        if not keep_alive:
            await asyncio.gather(*(c.close() for c in clients))
        if index >= warmup:
            samples.extend(latencies)
    await asyncio.gather(*(c.close() for c in clients))
    return samples


def peak_rss_mib(pid: int) -> Optional[float]:
    """The process's peak resident memory (Linux VmHWM), None where /proc cannot say."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def percentile(samples: List[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=60, help="bursts measured per pattern")
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args(argv)

    ca = trustme.CA()
    context = ssl.create_default_context()
    ca.configure_trust(context)
    body = review_body()
    request = (f"POST /mutate?timeout=5s HTTP/1.1\r\nHost: {SERVICE_NAME}:443\r\n"
               f"Content-Type: application/json\r\nAccept: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = start_server(Path(tmp), ca)
        try:
            print(f"webhook latency: {args.concurrency} concurrent AdmissionReviews "
                  f"({len(body)} B PyTorchJob worker pod) over TLS, {os.cpu_count()} CPUs")
            passed = True
            server = psutil.Process(proc.pid)
            for name, keep_alive, rounds in (("keep-alive", True, args.rounds),
                                             ("new connection", False, max(10, args.rounds // 4))):
                cpu = sum(server.cpu_times()[:2])
                samples = asyncio.run(bursts(port, context, request, args.concurrency, rounds,
                                             args.warmup, keep_alive))
                cpu = sum(server.cpu_times()[:2]) - cpu
                total = args.concurrency * (rounds + args.warmup)
                ms = [s * 1000 for s in samples]
                p99 = percentile(ms, 99)
                print(f"  {name:15s} n={len(ms):5d}  median {statistics.median(ms):6.2f} ms  "
                      f"p99 {p99:6.2f} ms  max {max(ms):6.2f} ms  "
                      f"server CPU {cpu / total * 1000:.2f} ms/review")
                if keep_alive:
                    passed = p99 <= GOAL_P99_MS
            peak = peak_rss_mib(proc.pid)
            if peak is not None:
                print(f"  server peak RSS {peak:.0f} MiB (the chart's limit: 256 Mi)")
            print(f"  goal p99 <= {GOAL_P99_MS:.0f} ms (keep-alive): {'met' if passed else 'MISSED'}")
        finally:
            proc.terminate()
            proc.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
