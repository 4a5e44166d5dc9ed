"""Cost of ``run.log`` with the injector (record on, enrichment on) against plain wandb.

Each child process inits a run, warms up, then times every one of N ``run.log`` calls with
``perf_counter_ns``; the figure per child is the median per call.  Baseline and injector
children alternate and the reported value is the median over repeats.

    offline mode   goal: ratio ≤ 1.05
    disabled mode  goal: ≤ 10 µs added per call at the median
"""

from __future__ import annotations

import argparse

from _common import child_env, median, report, run_child, scratch

CHILD = """
import statistics, time, wandb
run = wandb.init(project="bench", mode="{mode}")
row = {{"loss": 0.5, "acc": 0.9, "lr": 1e-3, "grad_norm": 1.25, "tokens_per_sec": 41234.5,
        "step_time": 0.21, "mem": 12.5, "scale": 65536.0}}
for _ in range({warmup}):
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


def measure(mode: str, bootstrap: bool, calls: int, tmp: str) -> float:
    extra = {"PRIMUS_LENS_WANDB_ENHANCE_METRICS": "true"}
    code = CHILD.format(mode=mode, warmup=max(200, calls // 10), calls=calls)
    return float(run_child(code, child_env(tmp, bootstrap, extra)).strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with scratch() as tmp:
        for mode, goal in (("offline", "ratio <= 1.05"), ("disabled", "added <= 10 us")):
            base, ours = [], []
            for _ in range(args.repeats):
                base.append(measure(mode, False, args.calls, tmp))
                ours.append(measure(mode, True, args.calls, tmp))
            report(f"run.log, {mode} (us per call, median)", median(base), median(ours), "us",
                   goal)


if __name__ == "__main__":
    main()
