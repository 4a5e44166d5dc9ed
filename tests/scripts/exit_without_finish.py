"""A run that ends without ``finish()`` (tests/test_faults.py, the process end's budget).

``exit_without_finish.py ROWS [MODE] [OPTION...]``: wandb in MODE (offline), ROWS rows logged,
then ``done <run id>``.  Options: ``follow`` defines a step metric first, so the run's rows come
from wandb's transaction log and the injector's late exit hook reads its end after wandb's own
teardown (docs/capture.md); ``wait`` waits for a line on stdin before exiting.  Three atexit
hooks print ``time.monotonic()``, placed by the order atexit runs them in (last registered,
first run): ``exiting`` before everything of the process end, ``torn down`` after wandb's
teardown and before the injector's late hook (registered at the wandb import, before this one),
``ended`` after everything.
"""

import atexit
import sys
import time


def stamp(word: str) -> None:
    print(word, time.monotonic(), flush=True)


atexit.register(stamp, "ended")
import wandb  # noqa: E402  (the injector's late hook is registered here)

atexit.register(stamp, "torn down")
options = sys.argv[3:]
run = wandb.init(project="budget", mode=sys.argv[2] if len(sys.argv) > 2 else "offline")
atexit.register(stamp, "exiting")
if "follow" in options:
    run.define_metric("epoch")
    run.define_metric("val/*", step_metric="epoch")
for i in range(int(sys.argv[1])):
    run.log({"i": i, "epoch": i // 10})
print("done", run.id, flush=True)
if "wait" in options:
    sys.stdin.readline()
