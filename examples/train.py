"""A small training loop that knows nothing about primus-lens: it only uses wandb.

Linear regression with mini-batch SGD in numpy, logging the way real trainers do: a training
row per step, evaluation keys accumulated with ``commit=False``, a learning-rate schedule.
Run it under the injector with ``primus-lens run -- python examples/train.py`` (``make demo``).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import wandb


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--eval-every", type=int, default=50)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    true_w = rng.normal(size=16)
    x_eval = rng.normal(size=(512, 16))
    y_eval = x_eval @ true_w
    w = np.zeros(16)
    config = {"lr": 0.05, "batch_size": 64, "model": "linear-16"}
    run = wandb.init(project="primus-lens-demo", config=config, tags=["demo"])
    started = time.perf_counter()
    for step in range(args.steps):
        lr = config["lr"] * 0.5 * (1 + np.cos(np.pi * step / args.steps))
        x = rng.normal(size=(config["batch_size"], 16))
        y = x @ true_w + rng.normal(scale=0.1, size=config["batch_size"])
        err = x @ w - y
        grad = x.T @ err / len(y)
        w -= lr * grad
        if step % args.eval_every == 0:
            eval_loss = float(np.mean((x_eval @ w - y_eval) ** 2))
            wandb.log({"eval/loss": eval_loss}, commit=False)
        run.log({
            "train/loss": np.float32(np.mean(err ** 2)),
            "train/grad_norm": float(np.linalg.norm(grad)),
            "train/lr": lr,
            "throughput/samples_per_sec": (step + 1) * config["batch_size"]
            / (time.perf_counter() - started),
        })
    run.summary["final_weight_error"] = float(np.linalg.norm(w - true_w))
    run.finish()


if __name__ == "__main__":
    main()
