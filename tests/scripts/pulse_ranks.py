"""A torch.distributed (gloo, CPU) training loop for the rank pulse tests (tests/pulse/).

Every rank runs ``LENS_PULSE_STEPS`` (6) optimizer steps of a tiny linear model, each the sum of
``LENS_PULSE_ACCUM`` (1) micro-batches (gradient accumulation: one ``step`` per optimizer step),
gradients averaged with ``all_reduce``, batches from a ``DataLoader`` with ``LENS_PULSE_WORKERS``
(0) workers started by fork on even ranks and by spawn on odd ones.  ``LENS_PULSE_WANDB=1``:
rank 0 alone logs its loss to wandb.  ``LENS_PULSE_HANGS`` (``rank:how,...``, none by default):
those ranks hang for ``LENS_PULSE_HANG`` seconds before step ``LENS_PULSE_HANG_AT`` (3), ``how``
``sleep`` in ``wait_for_the_slow_disk`` (``time.sleep``: the GIL is free), ``c`` in
``spin_in_c_holding_the_gil`` (libc's usleep called through ``ctypes.PyDLL``: the GIL stays
held).  The other ranks wait in the next all_reduce.  Prints ``steps <rank> <optimizer steps>
<pid>`` at the end, and ``worker <rank> <pid>`` for every DataLoader worker.
"""

import ctypes
import os
import time

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, TensorDataset


def wait_for_the_slow_disk(seconds):
    time.sleep(seconds)


def spin_in_c_holding_the_gil(seconds):
    ctypes.PyDLL(None).usleep(int(seconds * 1e6))


def _say(line):
    """One whole line in one write(2): the ranks and their workers share torchrun's stdout, and
    print() under PYTHONUNBUFFERED writes the text and its newline apart (lines ran together)."""
    os.write(1, (line + "\n").encode())


def say_worker(worker_id):
    _say(f"worker {os.environ.get('RANK')} {os.getpid()}")


def main():
    steps = int(os.environ.get("LENS_PULSE_STEPS", "6"))
    accum = int(os.environ.get("LENS_PULSE_ACCUM", "1"))
    workers = int(os.environ.get("LENS_PULSE_WORKERS", "0"))
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    hangs = dict(item.split(":") for item in os.environ.get("LENS_PULSE_HANGS", "").split(",")
                 if item)
    run = None
    if rank == 0 and os.environ.get("LENS_PULSE_WANDB") == "1":
        import wandb

        run = wandb.init(project="pulse")
    torch.manual_seed(rank)
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    data = TensorDataset(torch.randn(steps * accum * 2, 4), torch.randn(steps * accum * 2, 1))
    loader = DataLoader(data, batch_size=2, num_workers=workers, worker_init_fn=say_worker,
                        multiprocessing_context=("spawn" if rank % 2 else "fork")
                        if workers else None)
    batches = iter(loader)
    done = 0
    for step in range(steps):
        if str(rank) in hangs and step == int(os.environ.get("LENS_PULSE_HANG_AT", "3")):
            seconds = float(os.environ["LENS_PULSE_HANG"])
            if hangs[str(rank)] == "c":
                spin_in_c_holding_the_gil(seconds)
            else:
                wait_for_the_slow_disk(seconds)
        optimizer.zero_grad()
        for _ in range(accum):
            x, y = next(batches)
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
        for param in model.parameters():
            dist.all_reduce(param.grad)
        optimizer.step()
        done += 1
        if run is not None:
            run.log({"loss": loss.item()})
        time.sleep(float(os.environ.get("LENS_PULSE_STEP_SLEEP", "0")))
    if run is not None:
        run.finish()
    dist.barrier()
    dist.destroy_process_group()
    _say(f"steps {rank} {done} {os.getpid()}")


if __name__ == "__main__":
    main()
