"""Cost of the rank pulse (docs/pulse.md): the hook on the training thread, the pulse thread, disk.

Part 1, the optimizer step hook, A/B in one process: blocks of ``optimizer.step()`` calls on a
one-parameter SGD (the cheapest real step, so the hook's share is as large as it gets), alternating
blocks without the hook and with it registered through torch's global post-hook registry, as the
pulse does; the median per-step difference over the pairs (goal ≤ 1 µs).  Also the hook alone,
called directly (what it adds without torch's loop around it).

Part 2, the pulse thread at a 1 s interval: two children that join a one-rank gloo job and then
sleep, one with the pulse, one with ``PRIMUS_LENS_PULSE=false``, run side by side; the difference
of their process CPU time over the sleep is the pulse's share of one core (goal ≤ 0.5 %).  The
pulse child's file gives the bytes per line, hence the bytes per rank per day at the default
interval (goal ≤ 10 MB; rotation bounds the disk at twice ``pulseline.MAX_BYTES`` whatever the
interval).  Without a GPU here the lines hold host figures only; a GPU adds a dozen figures.

    python bench/pulse_cost.py [--blocks 41] [--steps 2000] [--seconds 30]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import List, Tuple

from _common import ROOT, child_env, median, report, scratch

sys.path.insert(0, str(ROOT))

from primus_lens_inject import pulseline
from primus_lens_inject.config import Config
from primus_lens_inject.pulse.steps import StepCounter, make_hook

DAY = 86400.0
CHILD = """
import os, resource, sys, time
import torch, torch.distributed as dist
dist.init_process_group("gloo", init_method="file://" + sys.argv[1], rank=0, world_size=1)
time.sleep(2.0)  # start-up work (imports, the first sample) is not what is measured
before = resource.getrusage(resource.RUSAGE_SELF)
started = time.monotonic()
time.sleep(float(sys.argv[2]))
after = resource.getrusage(resource.RUSAGE_SELF)
print((after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
      time.monotonic() - started)
"""


def hook_cost(blocks: int, steps: int) -> Tuple[float, float, float, float]:
    """(µs per step without the hook, with it, the median of the pairs' differences, the hook
    called directly), medians."""
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook

    param = torch.nn.Parameter(torch.zeros(1))
    param.grad = torch.ones(1)
    optimizer = torch.optim.SGD([param], lr=0.0)
    hook = make_hook(StepCounter())

    def block() -> float:
        started = time.perf_counter_ns()
        for _ in range(steps):
            optimizer.step()
        return (time.perf_counter_ns() - started) / steps / 1000

    block()
    plain: List[float] = []
    hooked: List[float] = []
    for _ in range(blocks):
        plain.append(block())
        handle = register_optimizer_step_post_hook(hook)
        hooked.append(block())
        handle.remove()
    calls = 200_000
    started = time.perf_counter_ns()
    for _ in range(calls):
        hook(optimizer, (), {})
    direct = (time.perf_counter_ns() - started) / calls / 1000
    return median(plain), median(hooked), median([b - a for a, b in zip(plain, hooked)]), direct


def pulse_cost(seconds: float) -> Tuple[float, float, int, int]:
    """(CPU s of the child without the pulse, with it, bytes per pulse line, lines) over
    ``seconds`` of sleep."""
    import subprocess

    with scratch() as tmp:
        children = []
        for name, pulse in (("off", "false"), ("on", "true")):
            env = child_env(os.path.join(tmp, name), True, {
                "PRIMUS_LENS_PULSE": pulse, "PRIMUS_LENS_PULSE_INTERVAL": "1",
                "PRIMUS_LENS_WANDB_OUTPUT_PATH": os.path.join(tmp, name, "out")})
            children.append(subprocess.Popen(
                [sys.executable, "-c", CHILD, os.path.join(tmp, name + ".rdv"), str(seconds)],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        cpu = []
        for child in children:
            out, err = child.communicate(timeout=seconds + 300)
            if child.returncode != 0:
                raise SystemExit(f"benchmark child failed:\n{err[-3000:]}")
            cpu.append(float(out.split()[0]))
        path = os.path.join(tmp, "on", "out", "node_0", "rank_0", pulseline.FILE_NAME)
        with open(path, "rb") as f:
            lines = [line for line in f.read().splitlines()
                     if json.loads(line)["kind"] == pulseline.PULSE]
        size = sum(len(line) + 1 for line in lines) // max(1, len(lines))
        return cpu[0], cpu[1], size, len(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=41)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--hook-only", action="store_true", help="part 1 only")
    args = parser.parse_args()
    plain, hooked, added, direct = hook_cost(args.blocks, args.steps)
    report("optimizer.step() with the pulse hook (µs, median)", plain, hooked, "µs",
           "added <= 1 µs")
    print(f"{'  added, median of the paired blocks':<44} {added:10.3f} µs   (goal <= 1 µs)")
    print(f"{'  the hook called directly':<44} {direct:10.3f} µs")
    if args.hook_only:
        return
    off, on, size, lines = pulse_cost(args.seconds)
    share = (on - off) / args.seconds * 100
    print(f"{'pulse thread at a 1 s interval':<44} CPU {off:.3f} s without, {on:.3f} s with, over "
          f"{args.seconds:g} s: {share:.3f} % of a core (goal <= 0.5 %)")
    interval = Config().pulse_interval
    per_day = size * DAY / interval / 1e6
    print(f"{'pulse file':<44} {size} bytes a line ({lines} lines), {per_day:.2f} MB per rank per "
          f"day at the default {interval:g} s (goal <= 10 MB); on disk at most "
          f"{2 * pulseline.MAX_BYTES / 1e6:.1f} MB at any interval")


if __name__ == "__main__":
    main()
