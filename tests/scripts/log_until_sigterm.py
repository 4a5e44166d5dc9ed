"""Log as fast as possible until SIGTERM, for the fault tests.

``log_until_sigterm.py MODE HANDLER``: wandb in MODE; HANDLER ``own`` installs the program's own
SIGTERM handler before ``wandb.init`` (as launchers do), which only asks the loop to stop, so
that the count of rows logged is exact; ``none`` leaves SIGTERM to its default (and to us).
Prints ``logging`` once 2000 rows are logged, and with its own handler ``logged <run id> <n>``.
A third argument ``follow`` defines a step metric first (step_sync): the injector then reads the
run's rows from wandb's transaction log instead of the ``log`` calls.
"""

import signal
import sys

import wandb

stop = []
if sys.argv[2] == "own":
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.append(signum))
run = wandb.init(project="faults", mode=sys.argv[1])
if sys.argv[3:] == ["follow"]:
    run.define_metric("val/*", step_metric="epoch")
count = 0
while not stop:
    run.log({"i": count})
    count += 1
    if count == 2000:
        print("logging", flush=True)
print("logged", run.id, count, flush=True)
run.finish()
