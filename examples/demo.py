"""``make demo``: a small multi-process job under the injector, on this machine, with nothing to set up.

1. starts the built-in receiver (``primus-lens receive --otlp``) on a free loopback port: it
   stands in for the Lens telemetry-processor and, on the same port, for an OpenTelemetry
   Collector (``POST /v1/metrics``);
2. launches ``--ranks`` processes of ``examples/demo_train.py`` (plain wandb code, offline mode),
   each under ``primus-lens run`` with ``RANK``/``LOCAL_RANK``/``WORLD_SIZE`` set as torchrun
   would, enrichment on and a pod identity, reporting to that receiver through both sinks (Lens,
   and OTLP with ``PRIMUS_LENS_OTLP=true``); one rank is a straggler, one stalls for a while;
3. compares what each rank recorded with what each sink delivered, per rank;
4. prints the framework-detection verdict and the evidence behind it;
5. writes the report (``primus-lens report``) and prints its path and a five-line summary.

Exit status 0 when every rank finished and every recorded row reached both sinks.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from primus_lens_inject import paths, recordline

ROOT = Path(__file__).resolve().parent.parent
TRAIN = ROOT / "examples" / "demo_train.py"
POD = "demo-trainer-0"
# Our own settings and wandb's from the caller's shell would change what the demo shows.
_OWN_PREFIXES = ("PRIMUS_LENS_", "WANDB_", "OTEL_")
_PHASES = 5


def say(step: int, text: str) -> None:
    print(f"[{step}/{_PHASES}] {text}", flush=True)


def receiver(out: Path) -> Tuple[subprocess.Popen, str, str]:
    """The receiver process, the Lens base URL (``.../v1``) and the OTLP endpoint (``http://host:port``)."""
    proc = subprocess.Popen([sys.executable, "-m", "primus_lens_inject", "receive", "--port", "0", "--otlp",
                             "--db", str(out / "receiver.db")], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    lens, otlp = proc.stdout.readline().strip(), proc.stdout.readline().strip()
    if "listening on" not in lens or "PRIMUS_LENS_OTLP_ENDPOINT=" not in otlp:
        proc.kill()
        raise SystemExit(f"the receiver did not start: {lens!r} {otlp!r}")
    return proc, lens.rsplit(" ", 1)[1], otlp.rsplit("=", 1)[1]


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def rank_env(base: Dict[str, str], rank: int, ranks: int) -> Dict[str, str]:
    return {**base, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(ranks),
            "LOCAL_WORLD_SIZE": str(ranks), "NODE_RANK": "0"}


def train(args: argparse.Namespace, out: Path, base: str, otlp_endpoint: str) -> List[int]:
    """Runs the job's ranks side by side; their exit statuses, rank by rank."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_OWN_PREFIXES)}
    env.update({
        "WANDB_MODE": "offline", "WANDB_DIR": str(out), "WANDB_SILENT": "true",
        "PRIMUS_LENS_WANDB_OUTPUT_PATH": str(out / "metrics"),
        "PRIMUS_LENS_WANDB_ENHANCE_METRICS": "true",  # CPU/memory (and GPU) figures every second
        "PRIMUS_LENS_PULSE_INTERVAL": "1",  # a pulse line per rank every second (default 10 s)
        "PRIMUS_LENS_STALL_SECONDS": "3",  # so the staged stall counts as one (default 300 s)
        "PRIMUS_LENS_API_BASE_URL": base,
        "PRIMUS_LENS_OTLP": "true", "PRIMUS_LENS_OTLP_ENDPOINT": otlp_endpoint,
        "POD_NAME": POD, "POD_NAMESPACE": "demo", "POD_UID": "00000000-demo",
    })
    job = [str(TRAIN), "--steps", str(args.steps), "--step-seconds", str(args.step_seconds),
           "--slow-rank", str(args.ranks - 1), "--stall-rank", str(args.ranks // 2),
           "--stall-at", str(args.steps // 2), "--stall-seconds", str(args.stall_seconds)]
    print(f"      each rank: primus-lens run -- python {TRAIN.relative_to(ROOT)} {' '.join(job[1:5])} \\\n"
          f"                 {' '.join(job[5:])}")
    print(f"      {args.ranks} ranks in pod {POD}, {args.steps} steps of {args.step_seconds} s; on purpose, "
          f"rank {args.ranks - 1} is 40 % slower\n      per step and rank {args.ranks // 2} stalls "
          f"{args.stall_seconds:g} s at step {args.steps // 2}", flush=True)
    logs = out / "logs"
    logs.mkdir()
    procs = []
    for rank in range(args.ranks):
        with open(logs / f"rank_{rank}.log", "wb") as log:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "primus_lens_inject", "run", "--", sys.executable, *job],
                env=rank_env(env, rank, args.ranks), cwd=out, stdout=log, stderr=subprocess.STDOUT))
    codes = []
    for rank, proc in enumerate(procs):
        try:
            codes.append(proc.wait(timeout=args.timeout))
        except subprocess.TimeoutExpired:
            proc.kill()
            codes.append(proc.wait())
        if codes[-1] != 0:
            print(f"      rank {rank} failed (exit status {codes[-1]}); its output: {logs}/rank_{rank}.log")
    return codes


def recorded(metrics_root: Path) -> Dict[int, Dict[str, Any]]:
    """Per rank: its run id, its rows (amendments folded away) and its distinct host samples."""
    found: Dict[int, Dict[str, Any]] = {}
    for rank_dir in paths.rank_dirs(str(metrics_root)):
        rank = int(rank_dir.rsplit("_", 1)[1])
        rows = []
        record = Path(paths.record_in(rank_dir))
        if record.exists():
            for raw in record.read_bytes().splitlines():
                line = recordline.decode(raw)
                if isinstance(line, recordline.Line) and not line.amends:
                    rows.append(line)
        samples = {(row.data.get("_primus_sys_cpu_percent"), row.data.get("_primus_sys_process_rss_bytes"))
                   for row in rows if "_primus_sys_cpu_percent" in row.data}
        found[rank] = {"run": rows[0].run_id if rows else None, "rows": len(rows), "samples": len(samples)}
    return found


def delivered(base: str, runs: Dict[Any, int], expected: int, wait: float) -> Tuple[Counter, Counter]:
    """Rows per rank that reached the Lens sink (by run id) and the OTLP sink (``wandb.step``
    points by the ``primus.rank`` resource attribute), waiting up to ``wait`` s for them all."""
    deadline = time.monotonic() + wait
    while True:
        lens = Counter(runs.get(row["run_id"], -1) for row in get(base + "/_receiver/logs")["logs"])
        points = get(base + "/_receiver/otlp")["otlp"]
        otlp = Counter(point["resource"].get("primus.rank", -1) for point in points
                       if point["name"] == "wandb.step")
        if (sum(lens.values()) >= expected and sum(otlp.values()) >= expected) or time.monotonic() > deadline:
            return lens, otlp
        time.sleep(0.5)


# How each kind of indicator in the report's hints reads (report/hints.py makes them).
def explain(indicator: str) -> str:
    kind, _, rest = indicator.partition(".")
    if kind == "import":
        return f"the process imported {rest} and uses it"
    if kind == "env":
        return f"the environment sets {rest.split('=')[0]}"
    if kind == "config":
        return f"the wandb config has {rest.split('=')[0].split('~')[0]!r}"
    if indicator.startswith("project~"):
        return f"the wandb project's name contains {indicator[8:]!r} (the weakest evidence)"
    return indicator


def verdict(detections: List[Dict[str, Any]]) -> None:
    """Prints what detection concluded (the last report's hints) and the evidence it rests on."""
    if not detections:
        print("      no detection report arrived")
        return
    hints = detections[-1]["data"].get("hints", {})
    chosen = [*hints.get("wrapper_frameworks", []), *hints.get("base_frameworks", [])]
    same = len({json.dumps(d["data"].get("hints", {}).get("possible_frameworks")) for d in detections}) == 1
    print(f"      {len(detections)} reports (one per wandb run){', all alike' if same else ''}: "
          f"wrapper {hints.get('wrapper_frameworks')}, base {hints.get('base_frameworks')}, "
          f"confidence {hints.get('confidence')}")
    for indicator in hints.get("primary_indicators", []):
        print(f"      because {explain(indicator)} ({indicator})")
    if not chosen:
        project = detections[-1]["data"].get("evidence", {}).get("wandb", {}).get("project", "")
        print("      why none: no framework's code started or logged the run (the loop is plain Python),\n"
              "      no framework variable is set (PRIMUS_*, MEGATRON_*, DEEPSPEED_*, FRAMEWORK), the\n"
              f"      wandb config has no framework key, and the project name {project!r} names none.\n"
              "      Lens shows such a job's framework as unknown (docs/detection.md)")


def shown(path: Path) -> str:
    """``path`` as typed from here: relative when it is under the current directory."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def report(metrics_root: Path, html: Path) -> bool:
    """Runs ``primus-lens report``, which prints the page's path and a five-line summary."""
    command = [sys.executable, "-m", "primus_lens_inject", "report", shown(metrics_root), "-o", shown(html)]
    say(5, f"report: primus-lens {' '.join(command[3:])}")
    done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    print("\n".join(f"      {line}" for line in done.stdout.splitlines()), flush=True)
    if done.returncode == 0 and html.is_file():
        return True
    print(f"      primus-lens report failed (exit status {done.returncode})")
    return False


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "demo-output", help="emptied first")
    parser.add_argument("--ranks", type=int, default=4)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--step-seconds", type=float, default=0.12)
    parser.add_argument("--stall-seconds", type=float, default=6.0)
    parser.add_argument("--timeout", type=float, default=300.0, help="per rank, seconds")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    metrics_root = out / "metrics"

    server, base, otlp_endpoint = receiver(out)
    say(1, f"receiver: primus-lens receive --otlp, listening on {otlp_endpoint}")
    print(f"      Lens API {base[len(otlp_endpoint):]}, OTLP /v1/metrics: a stand-in for Lens and an "
          "OpenTelemetry Collector")
    try:
        say(2, f"training: {args.ranks} ranks, each under the injector (offline wandb, enrichment and both "
            "sinks on)")
        started = time.monotonic()
        codes = train(args, out, base, otlp_endpoint)
        records = recorded(metrics_root)
        total = sum(r["rows"] for r in records.values())
        print(f"      {len(records)} ranks finished in {time.monotonic() - started:.0f} s, "
              f"{len(codes) - codes.count(0)} with an error")
        lens, otlp = delivered(base, {r["run"]: rank for rank, r in records.items()}, total, wait=30)
        say(3, f"delivery: what each rank recorded (in {shown(metrics_root)}/node_0/rank_<r>) "
            "and what each sink received")
        print("      rank  run       rows  host samples  Lens rows  OTLP rows")
        for rank, r in sorted(records.items()):
            print(f"      {rank:>4}  {r['run'] or '-':<8}  {r['rows']:>4}  {r['samples']:>12}  "
                  f"{lens[rank]:>9}  {otlp[rank]:>9}")
        complete = bool(records) and all(lens[rank] == r["rows"] == otlp[rank] for rank, r in records.items())
        words = "every recorded row reached both sinks" if complete else "INCOMPLETE: rows are missing"
        print(f"      {words} ({sum(lens.values())} Lens rows, {sum(otlp.values())} OTLP rows of {total})")
        say(4, "framework detection: what the injector told Lens, and the evidence")
        verdict(get(base + "/_receiver/detections")["detections"])
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)

    html = out / "report.html"
    written = report(metrics_root, html)
    ok = written and complete and not any(codes)
    cli = Path(sys.executable).parent / "primus-lens"
    cli_text = shown(cli) if cli.exists() else f"{sys.executable} -m primus_lens_inject"
    print("\nnext: your own job under the injector, its report, and is the injector active in a shell?")
    for command in ("run -- python train.py", "report", "doctor"):
        print(f"      {cli_text} {command}")
    print(f"{'done' if ok else 'FAILED'}: open {shown(html) if written else 'no report'} in a browser")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
