"""A tiny Hugging Face ``Trainer`` run reporting to wandb (tests/report/test_frameworks_real.py).

The model is a BERT classifier built from a config with tiny sizes (nothing downloaded: run it
with ``HF_HUB_OFFLINE=1``), the data a small in-memory list of random token ids.  ``Trainer``
starts the wandb run itself (``report_to=["wandb"]``), fills ``wandb.config`` with its arguments
and the model's config after ``wandb.init``, and declares ``train/global_step`` as every
metric's step metric (so the injector follows wandb's transaction log).  ``LENS_TEST_STEPS``
optimizer steps (8), one row each (``logging_steps=1``), and a last row when training ends;
``LENS_TEST_LR`` the learning rate (0.00025), ``LENS_TEST_BATCH`` the batch size (4).

After each row the Trainer logged it prints ``row <run id> <wandb step> <time.time()>`` and
sleeps ``LENS_TEST_ROW_SLEEP`` seconds (0), so a test can watch rows arrive while training goes
on.  Prints ``logged <run id>`` when training is done; then, with ``LENS_TEST_SIGKILL=1``, sleeps
1 s and SIGKILLs itself instead of finishing.
"""

import os
import signal
import time

import torch
import wandb
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)


class Rows(TrainerCallback):
    """Says when each row was logged: runs after the Trainer's own wandb callback."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_log(self, args, state, control, **kwargs):
        print("row", wandb.run.id, wandb.run.step - 1, time.time(), flush=True)
        time.sleep(self.seconds)


steps = int(os.environ.get("LENS_TEST_STEPS", "8"))
batch = int(os.environ.get("LENS_TEST_BATCH", "4"))
torch.manual_seed(0)
config = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=32, max_position_embeddings=32, num_labels=2)
model = BertForSequenceClassification(config)
data = [{"input_ids": torch.randint(0, 64, (12,)), "attention_mask": torch.ones(12, dtype=torch.long),
         "labels": torch.tensor(i % 2)} for i in range(steps * batch)]
args = TrainingArguments(output_dir="hf-out", per_device_train_batch_size=batch,
                         learning_rate=float(os.environ.get("LENS_TEST_LR", "0.00025")),
                         max_steps=steps, logging_steps=1, report_to=["wandb"], save_strategy="no",
                         use_cpu=True, disable_tqdm=True, dataloader_num_workers=0, seed=0)
trainer = Trainer(model=model, args=args, train_dataset=data,
                  callbacks=[Rows(float(os.environ.get("LENS_TEST_ROW_SLEEP", "0")))])
trainer.train()
print("logged", wandb.run.id, flush=True)
if os.environ.get("LENS_TEST_SIGKILL"):
    time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGKILL)
wandb.finish()
