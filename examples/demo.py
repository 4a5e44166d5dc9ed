"""``make demo``: the whole path on embedded defaults, on this machine, with nothing to set up.

1. starts the built-in receiver (``primus-lens receive --otlp``) on a free loopback port: it
   stands in for the Lens telemetry-processor and, on the same port, for an OpenTelemetry
   Collector (``POST /v1/metrics``);
2. runs ``examples/train.py`` — plain wandb code, offline mode — under ``primus-lens run``, with
   enrichment on and a pod identity, reporting to that receiver through both sinks: Lens, and
   OTLP (``PRIMUS_LENS_OTLP=true`` with ``PRIMUS_LENS_OTLP_ENDPOINT``);
3. prints where the local record is and what it holds, and what each sink delivered.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "demo-output"


def receiver() -> tuple:
    """The receiver process, the Lens base URL (``.../v1``) and the OTLP endpoint (``http://host:port``)."""
    proc = subprocess.Popen([sys.executable, "-m", "primus_lens_inject", "receive", "--port", "0", "--otlp",
                             "--db", str(OUT / "receiver.db")], stdout=subprocess.PIPE, text=True)
    lens, otlp = proc.stdout.readline().strip(), proc.stdout.readline().strip()
    if "listening on" not in lens or "PRIMUS_LENS_OTLP_ENDPOINT=" not in otlp:
        proc.kill()
        raise SystemExit(f"the receiver did not start: {lens!r} {otlp!r}")
    return proc, lens.rsplit(" ", 1)[1], otlp.rsplit("=", 1)[1]


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def main() -> int:
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir()
    server, base, otlp_endpoint = receiver()
    print(f"receiver: Lens {base}, OTLP {otlp_endpoint}/v1/metrics")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PRIMUS_LENS_", "WANDB_", "OTEL_"))}
    env.update({
        "WANDB_MODE": "offline", "WANDB_DIR": str(OUT), "WANDB_SILENT": "true",
        "PRIMUS_LENS_WANDB_OUTPUT_PATH": str(OUT / "metrics"),
        "PRIMUS_LENS_WANDB_ENHANCE_METRICS": "true",
        "PRIMUS_LENS_API_BASE_URL": base,
        "PRIMUS_LENS_OTLP": "true", "PRIMUS_LENS_OTLP_ENDPOINT": otlp_endpoint,
        "POD_NAME": "demo-trainer-0", "POD_NAMESPACE": "demo", "POD_UID": "00000000-demo",
        "PRIMUS_CONFIG": "examples/train.py",  # detection evidence, as a Primus job would carry
    })
    try:
        command = [sys.executable, "-m", "primus_lens_inject", "run", "--", sys.executable,
                   str(ROOT / "examples" / "train.py")]
        print("training: " + " ".join(command))
        done = subprocess.run(command, env=env, cwd=OUT, timeout=300)
        if done.returncode != 0:
            print(f"training failed with exit status {done.returncode}")
            return done.returncode
        record = OUT / "metrics" / "node_0" / "rank_0" / "wandb_metrics.jsonl"
        lines = [json.loads(line) for line in record.read_text().splitlines()]
        print(f"\nlocal record: {record}\n  {len(lines)} rows, steps {lines[0]['step']}.."
              f"{lines[-1]['step']}, run {lines[0]['run_id']}")
        print("  first row: " + json.dumps(lines[0]))
        arrived = get(base + "/_receiver/logs")["logs"]
        stats = get(base + "/_receiver/stats")
        lens_requests = {path: by_status for path, by_status in stats["requests"].items()
                         if path.startswith("/v1/wandb/")}
        print(f"\nLens sink: the receiver got {len(arrived)} rows in "
              f"{sum(sum(s.values()) for s in lens_requests.values())} requests "
              f"(by path and status: {lens_requests})")
        if arrived:
            keys = sorted({key for row in arrived for key in row["data"]})
            print(f"  keys: {', '.join(keys)}")
            last = arrived[-1]
            print(f"  last step {last['step']}: " + json.dumps(last["data"]))
        for detection in get(base + "/_receiver/detections")["detections"]:
            hints = detection["data"].get("hints", {})
            print(f"  detection from {detection['pod']}: wrapper {hints.get('wrapper_frameworks')},"
                  f" base {hints.get('base_frameworks')}, confidence {hints.get('confidence')}")
        points = get(base + "/_receiver/otlp")["otlp"]
        _print_otlp(points, stats["requests"].get("/v1/metrics", {}))
        print(f"\nexplore: jq . {record} | less")
        cli = _command_path(Path(sys.executable).parent / "primus-lens")
        commands = [(f"{cli} doctor", "is the injector active in this shell, and if not, why"),
                    (f"{cli} run -- {cli} doctor", "the same under the injector, as the training ran")]
        width = max(len(command) for command, _ in commands)
        for command, meaning in commands:
            print(f"         {command:<{width}}   # {meaning}")
        return 0 if len(arrived) == len(lines) and points else 1
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


def _print_otlp(points: list, requests: dict) -> None:
    """What the OTLP sink delivered: data points, metric names, the resource of one point."""
    print(f"\nOTLP sink: the receiver got {len(points)} data points in {sum(requests.values())} "
          f"requests (by status: {requests})")
    if not points:
        print("  none: is the OTLP sink of this injector on? (PRIMUS_LENS_OTLP=true)")
        return
    names = sorted({point["name"] for point in points})
    shown = ", ".join(names[:8]) + (f", ... ({len(names)} names)" if len(names) > 8 else "")
    print(f"  metrics: {shown}")
    last = points[-1]
    unit = f" ({last['unit']})" if last["unit"] else ""
    print(f"  last point: {last['name']} = {last['value']}{unit}, "
          f"attributes {json.dumps(last['attributes'])}")
    print("  resource: " + json.dumps(last["resource"]))


def _command_path(path: Path) -> str:
    """How to type ``path`` in this shell (``.venv/bin/primus-lens`` under make): the command
    is not on PATH unless the virtualenv is activated."""
    if not path.exists():
        return f"{sys.executable} -m primus_lens_inject"
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    sys.exit(main())
