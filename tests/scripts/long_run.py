"""The signal tests' training script (tests/capture/test_process.py): 200 committed rows and one
pending (``commit=False``) row, then ``logged`` on stdout and a long sleep for the test's signal.

With the argument ``own-handler`` the program installs its own SIGTERM handler after
``wandb.init``, as torchrun and Lightning do: it logs a last key, finishes the run and exits 3.
"""

import signal
import sys
import time

import wandb

run = wandb.init(project="signals")


def stop(signum, frame):
    run.log({"stopping": 1})
    run.finish()
    sys.exit(3)


if sys.argv[1:] == ["own-handler"]:
    signal.signal(signal.SIGTERM, stop)
for i in range(200):
    run.log({"i": i})
run.log({"pending": 1}, commit=False)
print("logged", flush=True)
time.sleep(60)
