"""A training script for the fault tests, driven by its arguments.

``train_steps.py MODE PHASE...``: wandb in MODE (offline or disabled), then each PHASE in turn:
``N`` logs N rows ``{"i": <running count>, "pad": <text>}`` and prints ``phase <k> <count>``;
``wait`` blocks until the test writes a line on stdin; ``sleep:S`` sleeps S seconds.  At the end
it prints ``done <run id> <count>`` and finishes the run.
"""

import sys
import time

import wandb

run = wandb.init(project="faults", mode=sys.argv[1])
count = 0
for number, phase in enumerate(sys.argv[2:], 1):
    if phase == "wait":
        sys.stdin.readline()
    elif phase.startswith("sleep:"):
        time.sleep(float(phase.split(":", 1)[1]))
    else:
        for _ in range(int(phase)):
            run.log({"i": count, "pad": "x" * 100})
            count += 1
        print("phase", number, count, flush=True)
print("done", run.id, count, flush=True)
run.finish()
