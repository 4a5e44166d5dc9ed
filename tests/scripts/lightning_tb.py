"""A tiny Lightning fit logged to wandb with ``sync_tensorboard=True`` (tests/capture/test_integrations.py).

``WandbLogger`` passes ``sync_tensorboard`` to ``wandb.init``; the event files come from a
``TensorBoardLogger`` next to it, created after the run so that wandb has patched tensorboard's
writer first.  WandbLogger also declares ``trainer/global_step`` as every metric's step metric
(``step_sync``).  CPU only, random data, no downloads.  ``LENS_TEST_EPOCHS`` epochs (3) of 4
training batches and one validation pass each.  Prints ``logged <run id>`` before finishing.
"""

import os

import pytorch_lightning as pl
import torch
import wandb
from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger
from torch.utils.data import DataLoader, TensorDataset


class Tiny(pl.LightningModule):
    """One linear layer: enough for Lightning to log a loss per step and per validation."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def _loss(self, batch) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x), y)

    def training_step(self, batch, batch_idx):
        loss = self._loss(batch)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", self._loss(batch))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


torch.manual_seed(0)
data = TensorDataset(torch.randn(32, 4), torch.randn(32, 1))
wandb_logger = WandbLogger(project="lens-lightning", sync_tensorboard=True)
run = wandb_logger.experiment  # wandb.init now, before any event file exists
tb_logger = TensorBoardLogger(save_dir=run.dir, name="tb")
trainer = pl.Trainer(max_epochs=int(os.environ.get("LENS_TEST_EPOCHS", "3")),
                     logger=[wandb_logger, tb_logger], log_every_n_steps=1, accelerator="cpu",
                     devices=1, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False)
trainer.fit(Tiny(), DataLoader(data, batch_size=8), DataLoader(data, batch_size=16))
print("logged", run.id, flush=True)
wandb.finish()
