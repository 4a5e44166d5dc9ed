"""A training loop that writes tensorboard event files which wandb syncs (tests/capture/test_integrations.py).

wandb-core reads the event files itself and inserts their rows into the run's history, so the
injector never sees them as ``log`` calls.  Driven by the environment, so the tests never edit
its text: ``LENS_TEST_STEPS`` training steps (20); ``LENS_TEST_SECONDS`` the loop's length in
seconds, spread evenly over the steps (0); ``LENS_TEST_LOG=1`` also calls ``run.log`` on every
step, and with ``LENS_TEST_EXPLICIT_STEP=1`` passes ``step=`` (which wandb ignores while
tensorboard is patched); ``LENS_TEST_NO_FINISH=1`` exits without ``run.finish()``.  Prints
``logged <run id>`` when the loop is done.
"""

import os
import time

import numpy as np
import wandb
from torch.utils.tensorboard import SummaryWriter

steps = int(os.environ.get("LENS_TEST_STEPS", "20"))
pause = float(os.environ.get("LENS_TEST_SECONDS", "0")) / steps
log = os.environ.get("LENS_TEST_LOG") == "1"
explicit = os.environ.get("LENS_TEST_EXPLICIT_STEP") == "1"

run = wandb.init(project="lens-tb", sync_tensorboard=True)
writer = SummaryWriter(log_dir=os.path.join(run.dir, "tb"))
rng = np.random.default_rng(0)
for i in range(steps):
    writer.add_scalar("train/loss", 1.0 / (i + 1), global_step=i)
    writer.add_scalar("train/lr", 0.1 * 0.9 ** i, global_step=i)
    if i % 5 == 0:
        writer.add_histogram("train/weights", rng.normal(size=100), global_step=i)
    if log:
        row = {"user/accuracy": i / steps, "user/i": i}
        if explicit:
            run.log(row, step=i * 10)
        else:
            run.log(row)
    writer.flush()
    time.sleep(pause)
writer.close()
print("logged", run.id, flush=True)
if os.environ.get("LENS_TEST_NO_FINISH") != "1":
    run.finish()
