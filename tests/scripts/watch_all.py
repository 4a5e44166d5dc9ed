"""``wandb.watch(model, log="all", log_freq=1)`` on a tiny model (tests/capture/test_integrations.py).

watch's hooks log every parameter and gradient as a histogram through ``Run._log``, never through
``Run.log``.  ``LENS_TEST_STEPS`` backward steps (5), each followed by a ``run.log`` of the loss.
Prints ``logged <run id>`` before finishing.
"""

import os

import torch
import wandb

torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
x, y = torch.randn(16, 4), torch.randn(16, 1)

run = wandb.init(project="lens-watch")
wandb.watch(model, log="all", log_freq=1)
for step in range(int(os.environ.get("LENS_TEST_STEPS", "5"))):
    optimizer.zero_grad()
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    optimizer.step()
    run.log({"loss": loss.item(), "step_index": step})
print("logged", run.id, flush=True)
run.finish()
