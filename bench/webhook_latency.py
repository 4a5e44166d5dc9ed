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

Then the attacks of issue 19, each against a fresh server (in a memory cgroup limited to the
chart's 256 MiB where this machine lets us create one), while 10 API-server connections keep
admitting pods (a dropped connection is reopened, its time counted): the baseline without
attack; 5,000 idle TLS connections attempted as fast as a second process can open them;
clients that declare 3 MiB bodies and send nothing or nearly all of it, reconnecting; the
memory bound's worst case sustained for a minute (every connection holding its own body share,
3 MiB reviews of empty arrays filling the shared pool and decoded back to back); and one 750 KB
review of a pod with 50,000 containers.  Per phase: median and p99 (medians over
``--repeats`` runs), their ratio to the baseline, admissions not answered within the API
server's 5 s, the most server threads seen, and peak memory (VmHWM; the cgroup's peak and OOM
kills where there is one).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import psutil
import trustme
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from k8s.support import MemoryCgroup, hold_request, status_field  # noqa: E402  (the tests' stand-ins)

POD = ROOT / "tests" / "k8s" / "pytorchjob-worker.yaml"
SERVICE_NAME = "primus-lens-inject.primus-lens.svc"
GOAL_P99_MS = 20.0
API_TIMEOUT = 5.0  # the chart's timeoutSeconds: an answer later than this admits uninjected
MEMORY_LIMIT = 256 << 20  # the chart's limit for the webhook container


def review_body() -> bytes:
    pod = yaml.safe_load(POD.read_text())
    return json.dumps({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": "bench", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                    "resource": {"group": "", "version": "v1", "resource": "pods"},
                    "namespace": "ml-team", "operation": "CREATE", "object": pod,
                    "oldObject": None, "dryRun": False},
    }).encode()


def start_server(tmp: Path, ca: trustme.CA,
                 cgroup: Optional[MemoryCgroup] = None) -> Tuple[subprocess.Popen, int]:
    cert = ca.issue_cert(SERVICE_NAME)
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp / "tls.pem"))
    (tmp / "config.json").write_text(json.dumps({
        "image": "primus-lens-inject:bench",
        "env": {"PRIMUS_LENS_API_BASE_URL": "http://lens:8989/v1",
                "PRIMUS_LENS_WANDB_API_REPORTING": "true"}}))
    argv = [sys.executable, "-m", "primus_lens_inject", "webhook", "--host", "127.0.0.1",
            "--port", "0", "--tls-cert", str(tmp / "tls.pem"), "--tls-key", str(tmp / "tls.pem"),
            "--config", str(tmp / "config.json"), "--shutdown-delay", "0"]
    proc = subprocess.Popen(cgroup.command(argv) if cgroup else argv,  # in it from the start
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


class BadAnswer(Exception):
    """Not a 200 with a patch: the pod would be admitted without the injector."""


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
            await self.close()
            raise BadAnswer(f"unexpected answer: {head[:40]!r} {body[:200]!r}")
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
        try:
            latencies = await asyncio.gather(*(c.admit() for c in clients))
        except BadAnswer as exc:
            raise SystemExit(str(exc))
        if not keep_alive:
            await asyncio.gather(*(c.close() for c in clients))
        if index >= warmup:
            samples.extend(latencies)
    await asyncio.gather(*(c.close() for c in clients))
    return samples


def peak_rss_mib(pid: int) -> Optional[float]:
    """The process's peak resident memory (Linux VmHWM), None where /proc cannot say."""
    peak = status_field(pid, "VmHWM")
    return None if peak is None else peak / 1024


def percentile(samples: List[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def steady(port: int, context: ssl.SSLContext, request: bytes, clients: int,
                 done: Callable[[int], bool]) -> Tuple[List[float], int]:
    """``clients`` API-server connections admitting pods back to back until ``done(attempts)``;
    the latencies, and the admissions not answered (with a patch) within API_TIMEOUT."""
    samples: List[float] = []
    failures = 0

    async def loop(client: Client) -> None:
        nonlocal failures
        while not done(len(samples) + failures):
            try:
                samples.append(await asyncio.wait_for(client.admit(), API_TIMEOUT))
            except (asyncio.TimeoutError, asyncio.IncompleteReadError, BadAnswer, OSError,
                    ValueError):
                failures += 1
                await client.close()  # the next admission opens a new connection

    pool = [Client(port, context, request) for _ in range(clients)]
    await asyncio.gather(*(loop(client) for client in pool))
    await asyncio.gather(*(client.close() for client in pool))
    return samples, failures


def attack(kind: str, port: int, ca_file: str, count: int) -> int:
    """The attacker, in a process of its own so that it does not share the measuring
    client's interpreter: ``idle`` opens ``count`` TLS connections and holds them (no request),
    then exits; ``bodies`` keeps 6 clients sending headers of a 3 MiB body and nothing, and 4
    sending all of it but one byte, each reconnecting when dropped, until killed; ``worst``
    keeps 240 clients holding the first 64 KiB of a body each (a connection's own share) and 6
    sending 3 MiB reviews of empty arrays over and over (the dearest decoding, one at a time,
    while the others fill the shared pool): the memory bound's worst case."""
    context = ssl.create_default_context(cafile=ca_file)
    resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)
    if kind == "idle":
        async def flood() -> Tuple[int, int]:
            gate = asyncio.Semaphore(64)
            held: List[asyncio.StreamWriter] = []
            refused = 0

            async def one() -> None:
                nonlocal refused
                async with gate:
                    try:
                        _, writer = await asyncio.wait_for(asyncio.open_connection(
                            "127.0.0.1", port, ssl=context, server_hostname=SERVICE_NAME), 10)
                        held.append(writer)
                    except (OSError, asyncio.TimeoutError):
                        refused += 1

            await asyncio.gather(*(one() for _ in range(count)))
            for writer in held:
                writer.transport.abort()
            return len(held), refused

        started = time.monotonic()
        opened, refused = asyncio.run(flood())
        print(json.dumps({"opened": opened, "refused": refused,
                          "seconds": time.monotonic() - started}), flush=True)
        return 0
    body_size = 3 << 20
    started = threading.Semaphore(0)
    forever = threading.Event()  # never set: the attack lasts until this process is killed
    # (declared length, what is sent of it) per client
    holders: List[Tuple[int, bytes]] = [(body_size, b"")] * 6 + [(body_size,
                                                                    b" " * (body_size - 1))] * 4
    if kind == "worst":  # every connection's own share, the pool, and the dearest decoding
        dense = dense_review(body_size)
        holders = [(body_size, b" " * (64 << 10))] * 240 + [(len(dense), dense)] * 6
    for length, body in holders:
        threading.Thread(target=hold_request, args=(port, context, SERVICE_NAME, length, body,
                                                    forever, started), daemon=True).start()
    for _ in holders:
        started.acquire()
    time.sleep(0.5)  # the bodies are on their way
    print(json.dumps({"holding": len(holders)}), flush=True)
    threading.Event().wait()
    return 0


def dense_review(size: int) -> bytes:
    """A review of about ``size`` bytes padded with empty arrays: the JSON that costs the most
    memory per byte to decode (about 35 times its size)."""
    review = json.loads(review_body())
    review["request"]["options"] = []
    body = json.dumps(review).encode()
    pads = (size - len(body) - 2) // 3
    return body.replace(b'"options": []', b'"options": [' + b"[]," * pads + b"[]]")


def start_attacker(kind: str, port: int, ca_file: Path, count: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, "--attack", kind, str(port),
                             str(ca_file), str(count)], stdout=subprocess.PIPE, text=True)


def big_review() -> bytes:
    """750 KB: a pod with 50,000 containers (issue 19: once a 39 MB answer and 325 MB)."""
    pod = yaml.safe_load(POD.read_text())
    pod["spec"]["containers"] = [{"name": f"c{n}", "image": "i"} for n in range(50_000)]
    return json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                       "request": {"uid": "big", "kind": {"group": "", "version": "v1",
                                                          "kind": "Pod"},
                                   "namespace": "ml-team", "operation": "CREATE",
                                   "object": pod}}, separators=(",", ":")).encode()


def post_once(port: int, context: ssl.SSLContext, body: bytes) -> Tuple[float, int]:
    """Seconds and answer bytes for one review on its own connection."""
    started = time.perf_counter()
    with context.wrap_socket(socket.create_connection(("127.0.0.1", port), 30),
                             server_hostname=SERVICE_NAME) as sock:
        sock.sendall(b"POST /mutate?timeout=5s HTTP/1.1\r\nContent-Length: %d\r\n"
                     b"Connection: close\r\n\r\n" % len(body) + body)
        answer = b""
        while True:
            chunk = sock.recv(1 << 16)
            if not chunk:
                break
            answer += chunk
    return time.perf_counter() - started, len(answer.partition(b"\r\n\r\n")[2])


def attack_phase(kind: str, tmp: Path, ca: trustme.CA, context: ssl.SSLContext,
                 request: bytes, args: argparse.Namespace) -> Dict[str, float]:
    """One run of one phase on a fresh server: its figures."""
    cgroup = MemoryCgroup.create(MEMORY_LIMIT) if args.cgroup else None
    proc, port = start_server(tmp, ca, cgroup)
    threads = [status_field(proc.pid, "Threads") or 0]
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.wait(0.05):
            threads.append(status_field(proc.pid, "Threads") or 0)

    threading.Thread(target=sample, daemon=True).start()
    attacker: Optional[subprocess.Popen] = None
    figures: Dict[str, float] = {}
    try:
        if kind == "big":
            seconds, size = post_once(port, context, big_review())
            figures.update(ms=seconds * 1000, answer_bytes=size)
            samples, failures = asyncio.run(steady(port, context, request, args.clients,
                                                   lambda n: n >= args.clients))
        else:
            if kind != "baseline":
                attacker = start_attacker(kind, port, tmp / "ca.pem", args.idle)
                if kind != "idle":
                    attacker.stdout.readline()  # measure once all of them hold their requests
            if kind == "idle":
                def done(n: int) -> bool:
                    return ((attacker.poll() is not None and n >= args.clients)
                            or proc.poll() is not None)
            elif kind == "worst":  # sustained: fragmentation shows after tens of seconds
                until = time.monotonic() + args.worst_seconds

                def done(n: int) -> bool:
                    return time.monotonic() >= until or proc.poll() is not None
            else:
                def done(n: int) -> bool:
                    return n >= args.steady or proc.poll() is not None
            samples, failures = asyncio.run(steady(port, context, request, args.clients, done))
            if kind == "idle":
                figures.update(json.loads(attacker.stdout.read() or "{}"))
        ms = [s * 1000 for s in samples] or [float("nan")]
        figures.update(n=len(samples), median=statistics.median(ms), p99=percentile(ms, 99),
                       failures=failures, died=float(proc.poll() is not None))
    finally:
        sampling.set()
        if attacker is not None and attacker.poll() is None:
            attacker.kill()
            attacker.wait(10)
        figures["threads"] = max(threads)
        figures["rss"] = peak_rss_mib(proc.pid) or 0.0
        if cgroup is not None:
            figures["cgroup_peak"] = cgroup.peak_mib() or 0.0
            figures["oom_kills"] = cgroup.oom_kills()
        proc.terminate()
        proc.wait(10)
        if cgroup is not None:
            cgroup.remove()
    return figures


def attacks(tmp: Path, ca: trustme.CA, context: ssl.SSLContext, request: bytes,
            args: argparse.Namespace) -> None:
    ca.cert_pem.write_to_path(str(tmp / "ca.pem"))
    probe = MemoryCgroup.create(MEMORY_LIMIT) if args.cgroup else None
    where = f"in a {MEMORY_LIMIT >> 20} MiB cgroup (v{probe.version})" if probe else \
        "no memory cgroup available here: VmHWM only"
    if probe is not None:
        probe.remove()
    print(f"under attack: {args.clients} API-server connections admitting back to back, "
          f"fresh server per run, {where}")
    phases = (("baseline", "baseline"), (f"idle x{args.idle}", "idle"),
              ("header-only bodies", "bodies"),
              (f"worst case {args.worst_seconds:.0f} s", "worst"),
              ("50,000 containers", "big"))
    base: Dict[str, float] = {}
    for name, kind in phases:
        if kind not in args.attacks.split(","):
            continue
        runs = [attack_phase(kind, tmp, ca, context, request, args)
                for _ in range(1 if kind in ("big", "worst") else args.repeats)]
        mid = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
        worst = {key: max(run[key] for run in runs) for key in
                 ("failures", "threads", "rss", "cgroup_peak", "oom_kills", "died")
                 if key in runs[0]}
        if kind == "baseline":
            base = mid
        if "answer_bytes" in mid:
            line = (f"  {name:20s} one 750 KB review: {mid['ms']:.0f} ms, answer "
                    f"{mid['answer_bytes']:.0f} B; admissions after it late/failed "
                    f"{worst['failures']:.0f}  peak RSS {worst['rss']:.0f} MiB")
        else:
            line = (f"  {name:20s} n={mid['n']:6.0f}  median {mid['median']:6.2f} ms "
                    f"(x{mid['median'] / base['median']:.2f})  p99 {mid['p99']:7.2f} ms "
                    f"(x{mid['p99'] / base['p99']:.2f})  late/failed {worst['failures']:.0f}  "
                    f"threads <= {worst['threads']:.0f}  peak RSS {worst['rss']:.0f} MiB")
        if "cgroup_peak" in worst:
            line += f"  cgroup peak {worst['cgroup_peak']:.0f} MiB, OOM kills {worst['oom_kills']:.0f}"
        if worst.get("died"):
            line += "  SERVER DIED"
        if "opened" in mid:
            line += (f"  (attack: {mid['opened']:.0f} connected, {mid['refused']:.0f} refused, "
                     f"{mid['seconds']:.0f} s)")
        print(line, flush=True)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=60, help="bursts measured per pattern")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--clients", type=int, default=10, help="API-server connections under attack")
    parser.add_argument("--steady", type=int, default=2000,
                        help="admissions per baseline and body-attack run")
    parser.add_argument("--idle", type=int, default=5000, help="idle connections attempted")
    parser.add_argument("--repeats", type=int, default=3, help="runs per attack phase")
    parser.add_argument("--attacks", default="baseline,idle,bodies,worst,big",
                        help="phases to run (comma-separated; ratios need the baseline)")
    parser.add_argument("--worst-seconds", type=float, default=60.0,
                        help="how long the worst case is sustained (one run)")
    parser.add_argument("--no-cgroup", dest="cgroup", action="store_false",
                        help="do not put the server in a 256 MiB memory cgroup")
    parser.add_argument("--attack", nargs=4, metavar=("KIND", "PORT", "CA", "COUNT"),
                        help=argparse.SUPPRESS)  # the attacker's own process
    args = parser.parse_args(argv)
    if args.attack:
        kind, port, ca_file, count = args.attack
        return attack(kind, int(port), ca_file, int(count))

    ca = trustme.CA(key_type=trustme.KeyType.RSA)  # as the chart's generated certificate
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
        attacks(Path(tmp), ca, context, request, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
