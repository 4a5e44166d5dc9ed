"""``make demo``: the whole path on embedded defaults, on this machine, with nothing to set up.

1. starts the built-in receiver (``primus-lens receive``) on a free loopback port;
2. runs ``examples/train.py`` — plain wandb code, offline mode — under ``primus-lens run``, with
   enrichment on and a pod identity, reporting to that receiver;
3. prints where the local record is and what it holds, and what the receiver got.
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
    proc = subprocess.Popen([sys.executable, "-m", "primus_lens_inject", "receive", "--port", "0",
                             "--db", str(OUT / "receiver.db")], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    if "listening on" not in line:
        proc.kill()
        raise SystemExit(f"the receiver did not start: {line!r}")
    return proc, line.rsplit(" ", 1)[1]


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def main() -> int:
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir()
    server, base = receiver()
    print(f"receiver: {base}")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PRIMUS_LENS_", "WANDB_"))}
    env.update({
        "WANDB_MODE": "offline", "WANDB_DIR": str(OUT), "WANDB_SILENT": "true",
        "PRIMUS_LENS_WANDB_OUTPUT_PATH": str(OUT / "metrics"),
        "PRIMUS_LENS_WANDB_ENHANCE_METRICS": "true",
        "PRIMUS_LENS_API_BASE_URL": base,
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
        print(f"\nreceiver got {len(arrived)} rows in "
              f"{sum(sum(s.values()) for s in stats['requests'].values())} requests "
              f"(by path and status: {stats['requests']})")
        if arrived:
            keys = sorted({key for row in arrived for key in row["data"]})
            print(f"  keys: {', '.join(keys)}")
            last = arrived[-1]
            print(f"  last step {last['step']}: " + json.dumps(last["data"]))
        for detection in get(base + "/_receiver/detections")["detections"]:
            hints = detection["data"].get("hints", {})
            print(f"  detection from {detection['pod']}: wrapper {hints.get('wrapper_frameworks')},"
                  f" base {hints.get('base_frameworks')}, confidence {hints.get('confidence')}")
        print(f"\nexplore: jq . {record} | less")
        cli = _command_path(Path(sys.executable).parent / "primus-lens")
        commands = [(f"{cli} doctor", "is the injector active in this shell, and if not, why"),
                    (f"{cli} run -- {cli} doctor", "the same under the injector, as the training ran")]
        width = max(len(command) for command, _ in commands)
        for command, meaning in commands:
            print(f"         {command:<{width}}   # {meaning}")
        return 0 if len(arrived) == len(lines) else 1
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


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
