"""``define_metric`` with a step metric, which wandb fills in itself (tests/capture/test_integrations.py).

``val/*`` is declared against ``epoch`` (``step_sync`` left at its default, True), and the
validation rows omit ``epoch``: wandb adds the last ``epoch`` value to them, a value no ``log``
call carried.  ``LENS_TEST_EPOCHS`` epochs (3) of 3 training rows and 1 validation row.
Prints ``logged <run id>`` before finishing.
"""

import os

import wandb

run = wandb.init(project="lens-step-sync")
run.define_metric("epoch")
run.define_metric("val/*", step_metric="epoch")
for epoch in range(int(os.environ.get("LENS_TEST_EPOCHS", "3"))):
    for batch in range(3):
        run.log({"train/loss": 1.0 / (epoch * 3 + batch + 1), "epoch": epoch})
    run.log({"val/accuracy": 0.5 + epoch / 10})
print("logged", run.id, flush=True)
run.finish()
