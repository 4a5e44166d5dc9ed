"""``primus-lens report`` at scale: a synthetic 256-rank × 20,000-step record set.

Writes a record root the size the issue names (every rank's pulse: a line every 10 s of a job
stepping twice a second, GPU figures, one stall of 8 ranks with their stacks; the record of the
owning rank(s): 20,000 rows of 12 keys each), then measures, as medians of ``--repeat`` runs:

* the build: reading every rank directory and writing the page (in this process);
* the page's size (goal ≤ 15 MB);
* the render in headless Chromium (goal ≤ 3 s): the page's own clock from navigation start until
  every chart and heatmap is drawn (``since_navigation_ms`` of its self-check), and the whole
  browser process's wall time (start-up included) beside it.

    python bench/report_scale.py                     rank 0 owns the run (the usual job)
    python bench/report_scale.py --owners 256        every rank owns a run (wandb's run per process)
    python bench/report_scale.py --ranks 64 --steps 5000
"""

from __future__ import annotations

import argparse
import html
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import scratch

from primus_lens_inject import pulseline, recordline
from primus_lens_inject.paths import record_path
from primus_lens_inject.view import build_model, summary, write_page

GPUS_PER_NODE = 8
STEPS_PER_SECOND = 2.0
INTERVAL = 10.0
STALLED = range(8, 16)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1280,1200"]  # no virtual time: the page's clock must be the real one
_SELFCHECK = re.compile(r'<pre id="lens-selfcheck"[^>]*>(.*?)</pre>', re.S)
STACK = ('Current thread 0x00007f0000000001 (most recent call first):\n'
         '  File "/job/train.py", line {line} in {where}\n'
         '  File "/job/train.py", line 80 in step\n  File "/job/train.py", line 120 in <module>\n')


def write_records(root: str, ranks: int, steps: int, owners: int) -> int:
    """The record set; its size in bytes."""
    start = time.time() - steps / STEPS_PER_SECOND
    pulses = int(steps / STEPS_PER_SECOND / INTERVAL)
    stall_at = pulses * 2 // 3
    for rank in range(ranks):
        node, local = divmod(rank, GPUS_PER_NODE)
        path = record_path(root, node, local)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        common = {"pid": 1000 + rank, "rank": rank, "local_rank": local, "node": node,
                  "world_size": ranks}
        lines = []
        for i in range(pulses):
            hot = 12.0 if rank == 77 else 0.0
            figures = {"_primus_gpu_util_percent": 95.0 - (i % 7) - (30.0 if rank == 131 else 0),
                       "_primus_gpu_power_watts": 650.0 + (i * rank) % 40,
                       "_primus_gpu_memory_used_bytes": 150e9 + rank * 1e7,
                       "_primus_gpu_temperature_celsius": 65.0 + hot + math.sin(i / 10),
                       "_primus_sys_cpu_percent": 40.0}
            lines.append(pulseline.encode(pulseline.PULSE, {
                **common, "time": start + i * INTERVAL, "steps": int(i * INTERVAL * STEPS_PER_SECOND),
                "step_last": 0.5, "step_mean": 0.5, "step_median": 0.5, "wandb_step": None,
                "run_id": None, "figures": figures}))
            if i == stall_at and rank in STALLED:
                where = "read_batch" if rank == STALLED[0] else "all_reduce"
                lines.append(pulseline.encode(pulseline.STALL, {
                    **common, "time": start + i * INTERVAL, "since": start + (i - 31) * INTERVAL,
                    "threshold": 300.0, "steps": i * 20, "source": "faulthandler",
                    "stacks": STACK.format(line=40 + rank % 3, where=where)}))
        with open(pulseline.pulse_path(path), "wb") as f:
            f.write(b"".join(lines))
        if rank < owners:
            with open(path, "wb") as f:
                f.write(b"".join(recordline.encode(f"run{rank:03d}", step, start + step / 2, {
                    "train/loss": 2.0 * math.exp(-step / 5000) + 0.01 * math.sin(step),
                    "train/lr": 3e-4 * min(1.0, step / 1000), "train/grad_norm": 1.0 + (step % 97) / 97,
                    "train/tokens_per_second": 180_000.0 + (step * 7919) % 5000,
                    "eval/loss": 2.1 * math.exp(-step / 5000), "perf/tflops": 410.0 + step % 13,
                    "perf/mfu": 0.42 + (step % 11) / 1000, "data/epoch": step // 5000,
                    "_primus_sys_cpu_percent": 40.0, "_primus_sys_process_rss_bytes": 2.1e10,
                    "_primus_gpu_util_percent": 95.0, "_primus_gpu_power_watts": 650.0,
                }, "") for step in range(steps)))
    return sum(f.stat().st_size for f in Path(root).rglob("*") if f.is_file())


def render(page: str, workdir: str) -> tuple:
    """(the page's own ms, the browser's wall seconds) of one headless Chromium run."""
    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("chromium is not installed: the render cannot be measured")
    profile = os.path.join(workdir, f"profile-{time.monotonic_ns()}")
    began = time.perf_counter()
    done = subprocess.run([chromium, *FLAGS, f"--user-data-dir={profile}", "--dump-dom",
                           Path(page).as_uri()], capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - began
    found = _SELFCHECK.search(done.stdout)
    if not found:
        raise SystemExit(f"the page wrote no self-check:\n{done.stderr[-2000:]}")
    check = json.loads(html.unescape(found.group(1)))
    if check["errors"]:
        raise SystemExit(f"the page failed: {check['errors']}")
    return check["since_navigation_ms"], wall, check


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--owners", type=int, default=1, help="ranks that own a run (record)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with scratch() as tmp:
        root = os.path.join(tmp, "out")
        began = time.perf_counter()
        size = write_records(root, args.ranks, args.steps, args.owners)
        print(f"record set: {args.ranks} ranks × {args.steps} steps, {args.owners} owner(s), "
              f"{size / 1e6:.1f} MB on disk, written in {time.perf_counter() - began:.1f} s")
        page = os.path.join(tmp, "report.html")
        builds, pages = [], 0
        for _ in range(args.repeat):
            began = time.perf_counter()
            model = build_model([root])
            pages = write_page(model, page)
            builds.append(time.perf_counter() - began)
        for line in summary(model):
            print(f"  {line}")
        renders = [render(page, tmp) for _ in range(args.repeat)]
        check = renders[-1][2]
        print(f"{'build (read + write the page)':<34} median {statistics.median(builds):8.2f} s")
        print(f"{'page size':<34} {pages / 1e6:15.2f} MB   goal ≤ 15 MB")
        print(f"{'render (page clock, navigation on)':<34} median "
              f"{statistics.median(r[0] for r in renders) / 1000:8.2f} s    goal ≤ 3 s")
        print(f"{'render (browser wall, start-up on)':<34} median "
              f"{statistics.median(r[1] for r in renders):8.2f} s")
        rows = check["heatmaps"][0]["rows"] if check["heatmaps"] else 0
        odd = check["stalls"][0]["odd"] if check["stalls"] else []
        print(f"drawn: {len(check['charts'])} line charts, {len(check['heatmaps'])} heatmaps of "
              f"{rows} rows, {len(check['stalls'])} stall(s), odd one out {odd}")


if __name__ == "__main__":
    main()
