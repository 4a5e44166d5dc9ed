"""One rank of ``make demo``'s job: a training loop that knows nothing about primus-lens.

It fits a line by mini-batch SGD in plain Python (the demo's environment holds the injector and
wandb, no framework and no numpy) and logs the way trainers do: a row per step, an evaluation
key accumulated with ``commit=False``, a learning-rate schedule, a summary at the end.  Every
rank starts its own wandb run in the job's group (per-rank runs), so every rank is an owner and
keeps its own record.  The launcher (``examples/demo.py``) sets ``RANK``, ``LOCAL_RANK`` and
``WORLD_SIZE`` as torchrun would.

Two ranks misbehave on purpose, so the report has something to show: ``--slow-rank`` takes
longer per step (a straggler), and ``--stall-rank`` stops in the middle for ``--stall-seconds``
in ``wait_for_storage`` (the function a stall's stack will name).
"""

from __future__ import annotations

import argparse
import math
import os
import random
import time

import wandb


def wait_for_storage(seconds: float) -> None:
    """A read that hangs, as one from a busy shared file system does."""
    time.sleep(seconds)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--step-seconds", type=float, default=0.12)
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--slow-rank", type=int, default=-1, help="this rank's steps take 40%% longer")
    parser.add_argument("--stall-rank", type=int, default=-1)
    parser.add_argument("--stall-at", type=int, default=60, help="the step the stalled rank stops at")
    parser.add_argument("--stall-seconds", type=float, default=6.0)
    args = parser.parse_args()
    rank = int(os.environ.get("RANK", "0"))
    step_seconds = args.step_seconds * (1.4 if rank == args.slow_rank else 1.0)

    rng = random.Random(rank)
    true_w, true_b = 2.0, -1.0
    w = b = 0.0
    config = {"lr": 0.05, "batch_size": 32, "model": "line-fit", "world_size": os.environ.get("WORLD_SIZE")}
    run = wandb.init(project="lens-demo", group="demo-job", name=f"rank-{rank}", config=config,
                     tags=["demo"])
    started = time.perf_counter()
    for step in range(args.steps):
        if rank == args.stall_rank and step == args.stall_at:
            wait_for_storage(args.stall_seconds)
        tick = time.perf_counter()
        lr = config["lr"] * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        xs = [rng.uniform(-1, 1) for _ in range(config["batch_size"])]
        errors = [(w * x + b) - (true_w * x + true_b + rng.gauss(0, 0.1)) for x in xs]
        grad_w = 2 * sum(e * x for e, x in zip(errors, xs)) / len(xs)
        grad_b = 2 * sum(errors) / len(xs)
        w, b = w - lr * grad_w, b - lr * grad_b
        if step % args.eval_every == 0:
            wandb.log({"eval/loss": (w - true_w) ** 2 + (b - true_b) ** 2}, commit=False)
        time.sleep(max(0.0, step_seconds - (time.perf_counter() - tick)))  # the "GPU" work
        run.log({
            "train/loss": sum(e * e for e in errors) / len(errors),
            "train/grad_norm": math.hypot(grad_w, grad_b),
            "train/lr": lr,
            "perf/samples_per_sec": (step + 1) * config["batch_size"] / (time.perf_counter() - started),
        })
    run.summary["final_error"] = math.hypot(w - true_w, b - true_b)
    run.finish()


if __name__ == "__main__":
    main()
