"""Cost of ``run.log`` with the injector (record on, enrichment on) against plain wandb.

wandb's own offline cost wanders by tens of microseconds between processes (its service
process, socket buffers), more than the injector adds, so the figure that decides is taken
side by side in ONE process:

A. in-process: one run, blocks of calls alternating between the injector capturing and the
   injector switched off at run time (its wrapper then only checks a flag and calls wandb);
   the median per call of each mode over all its blocks.
B. across processes: children without the bootstrap and children with it alternate; the median
   of each child's median.  Shown for completeness; noisy in offline mode.

Goals: offline ratio ≤ 1.05; disabled mode ≤ 10 µs added per call at the median.
"""

from __future__ import annotations

import argparse

from _common import child_env, median, report, run_child, scratch

ROW = ('{"loss": 0.5, "acc": 0.9, "lr": 1e-3, "grad_norm": 1.25, "tokens_per_sec": 41234.5, '
       '"step_time": 0.21, "mem": 12.5, "scale": 65536.0}')

IN_PROCESS = """
import statistics, time, wandb
from primus_lens_inject.capture import session
run = wandb.init(project="bench", mode="{mode}")
row = {row}
for _ in range(1000):
    run.log(row)
injector = session.current()
times = {{True: [], False: []}}
clock = time.perf_counter_ns
for block in range({blocks} * 2):
    capturing = block % 2 == 0
    injector.enabled = capturing
    samples = times[capturing]
    for _ in range({per_block}):
        t0 = clock()
        run.log(row)
        samples.append(clock() - t0)
injector.enabled = True
run.finish()
print(statistics.median(times[False]) / 1000.0, statistics.median(times[True]) / 1000.0)
"""

ACROSS = """
import statistics, time, wandb
run = wandb.init(project="bench", mode="{mode}")
row = {row}
for _ in range(1000):
    run.log(row)
samples = []
clock = time.perf_counter_ns
for _ in range({calls}):
    t0 = clock()
    run.log(row)
    samples.append(clock() - t0)
run.finish()
print(statistics.median(samples) / 1000.0)
"""

GOALS = {"offline": "ratio <= 1.05", "disabled": "added <= 10 us"}
ENRICHED = {"PRIMUS_LENS_WANDB_ENHANCE_METRICS": "true"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--blocks", type=int, default=40)
    parser.add_argument("--per-block", type=int, default=250)
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with scratch() as tmp:
        for mode in ("offline", "disabled"):
            off, on = [], []
            for _ in range(args.repeats):
                code = IN_PROCESS.format(mode=mode, row=ROW, blocks=args.blocks,
                                         per_block=args.per_block)
                base, ours = map(float, run_child(code, child_env(tmp, True, ENRICHED)).split())
                off.append(base)
                on.append(ours)
            report(f"A. run.log {mode}, one process (us/call)", median(off), median(on), "us",
                   GOALS[mode])
        for mode in ("offline", "disabled"):
            base, ours = [], []
            code = ACROSS.format(mode=mode, row=ROW, calls=args.calls)
            for _ in range(args.repeats):
                base.append(float(run_child(code, child_env(tmp, False))))
                ours.append(float(run_child(code, child_env(tmp, True, ENRICHED))))
            report(f"B. run.log {mode}, across processes (us/call)", median(base), median(ours),
                   "us", GOALS[mode])


if __name__ == "__main__":
    main()
