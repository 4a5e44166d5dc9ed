"""multiprocessing ``fork`` children that init wandb, log and return without ``finish``: they
leave through ``os._exit``, so only multiprocessing's finalizers run in them.  Each forks once
more before it ends: the fork hooks a child inherited must work in it too."""

import multiprocessing
import os
import sys

import wandb


def child(number: int) -> None:
    run = wandb.init(project="faults-child", mode=sys.argv[1], reinit=True)
    for i in range(50):
        run.log({"child": number, "i": i})
    grandchild = os.fork()
    if grandchild == 0:
        os._exit(0)
    os.waitpid(grandchild, 0)
    print("child", run.id, flush=True)


if __name__ == "__main__":
    run = wandb.init(project="faults", mode=sys.argv[1])
    for i in range(10):
        run.log({"parent": i})
    workers = [multiprocessing.get_context("fork").Process(target=child, args=(n,))
               for n in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    print("exit codes", [worker.exitcode for worker in workers], flush=True)
    print("parent", run.id, flush=True)
    run.finish()
