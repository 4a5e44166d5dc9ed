"""Small arrays and tensors through plain ``run.log`` (tests/capture/test_integrations.py).

wandb keeps an array of up to 32 elements as a list of numbers and turns a bigger one into a
histogram; the record keeps the small ones as lists too.  Logs 3 rows of numpy arrays and torch
tensors (scalar-like, vector, matrix, 32 and 33 elements).  Prints ``logged <run id>``.
"""

import numpy as np
import torch
import wandb

run = wandb.init(project="lens-arrays")
for i in range(3):
    run.log({
        "np/vector": np.arange(4, dtype=np.float32) * (i + 1),
        "np/matrix": np.arange(6, dtype=np.int64).reshape(2, 3) + i,
        "np/thirty_two": np.linspace(0.0, 1.0, 32) + i,
        "np/thirty_three": np.linspace(0.0, 1.0, 33) + i,
        "torch/vector": torch.tensor([0.5, 1.5, 2.5]) * (i + 1),
        "torch/one": torch.tensor([float(i)]),
        "loss": 1.0 / (i + 1),
    })
print("logged", run.id, flush=True)
run.finish()
