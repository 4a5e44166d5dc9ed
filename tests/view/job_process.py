"""One process of a small job for the report's page tests (tests/view/test_page.py).

Started ``WORLD_SIZE`` times, each with its own ``RANK``: every process writes its rank's pulse
(``pulseline.encode``: the rank pulse of helper A's ``primus_lens_inject.pulse`` is not used, so
the figures and the stall are exactly known): ``LENS_TEST_PULSES`` lines 10 s apart ending now,
two steps a second, GPU figures with ``LENS_TEST_HOT_RANK`` running 20 °C hotter, and one stall
of every rank from the 40th line to the 52nd, with the stacks faulthandler takes in this process
at that moment, as the pulse takes them (from a thread named like its own, ``primus-lens-pulse``,
with the thread names): the ranks wait for their peers in ``wait_for_peers``, except
``LENS_TEST_STALLED_RANK``, which is stuck in ``read_batch``.  Rank 0 then owns a wandb run and
logs ``LENS_TEST_STEPS`` rows (the injector records them).
"""

import faulthandler
import math
import os
import sys
import tempfile
import threading
import time
from typing import Dict, Tuple

from primus_lens_inject import pulseline
from primus_lens_inject.paths import record_path

RANK = int(os.environ["RANK"])
WORLD = int(os.environ["WORLD_SIZE"])
ROOT = os.environ["PRIMUS_LENS_WANDB_OUTPUT_PATH"]
PULSES = int(os.environ.get("LENS_TEST_PULSES", "60"))
STEPS = int(os.environ.get("LENS_TEST_STEPS", "60"))
HOT = int(os.environ.get("LENS_TEST_HOT_RANK", "1"))
STALLED = int(os.environ.get("LENS_TEST_STALLED_RANK", "2"))
STALL_FROM, STALL_TO, INTERVAL, THRESHOLD = 40, 52, 10.0, 60.0


def stacks(gate: threading.Lock) -> Dict[str, object]:
    """Every thread's stack as faulthandler writes it, and the threads' names by the ids it
    prints, taken by a thread named like the pulse's once the calling (main) thread's innermost
    frame is its caller again, waiting for the held ``gate`` in C (so the caller's frames are
    known whenever the dump comes); the thread releases ``gate`` after."""
    main, caller = threading.get_ident(), sys._getframe(1).f_code.co_name
    taken: Dict[str, object] = {}

    def take() -> None:
        deadline = time.monotonic() + 60  # bounded: the main thread gets there at once
        while time.monotonic() < deadline:
            frame = sys._current_frames().get(main)
            if frame is not None and frame.f_code.co_name == caller:
                break
            time.sleep(0.001)
        with tempfile.TemporaryFile("w+") as f:
            faulthandler.dump_traceback(f, all_threads=True)
            f.seek(0)
            taken["text"] = f.read()
        taken["names"] = {f"0x{t.ident:016x}": t.name for t in threading.enumerate()}
        gate.release()

    threading.Thread(target=take, name="primus-lens-pulse").start()
    return taken


def held_while_the_stacks_are_taken() -> Tuple[str, Dict[str, str]]:
    """Wait in C for ``stacks`` (this frame stays the innermost until they are taken), so the
    main thread's innermost frames are this, then where it was called from."""
    gate = threading.Lock()
    gate.acquire()
    taken = stacks(gate)
    gate.acquire()
    return taken["text"], taken["names"]  # type: ignore[return-value]


def read_batch() -> Tuple[str, Dict[str, str]]:
    return held_while_the_stacks_are_taken()


def wait_for_peers() -> Tuple[str, Dict[str, str]]:
    return held_while_the_stacks_are_taken()


def train(out, start: float) -> None:
    common = {"pid": os.getpid(), "rank": RANK, "local_rank": RANK, "node": 0, "world_size": WORLD}
    steps = 0
    for i in range(PULSES):
        when = start + i * INTERVAL
        stalled = STALL_FROM <= i < STALL_TO
        if i and not stalled:
            steps += 20
        figures = {"_primus_gpu_util_percent": 5.0 if stalled else 90.0 + RANK,
                   "_primus_gpu_power_watts": 100.0 if stalled else 400.0 + i % 5,
                   "_primus_gpu_memory_used_bytes": 40e9 + RANK * 1e8,
                   "_primus_gpu_temperature_celsius": 60.0 + 20.0 * (RANK == HOT) + math.sin(i),
                   "_primus_sys_cpu_percent": 12.5}
        out.write(pulseline.encode(pulseline.PULSE, {
            **common, "time": when, "steps": steps, "step_last": 0.5, "step_mean": 0.5,
            "step_median": 0.5, "wandb_step": None, "run_id": None, "figures": figures}))
        if i == STALL_FROM + 6:
            text, names = read_batch() if RANK == STALLED else wait_for_peers()
            out.write(pulseline.encode(pulseline.STALL, {
                **common, "time": when, "since": start + STALL_FROM * INTERVAL,
                "threshold": THRESHOLD, "steps": steps, "stacks": text, "threads": names,
                "source": "faulthandler"}))
        if i == STALL_TO:
            out.write(pulseline.encode(pulseline.RECOVERY, {
                **common, "time": when, "since": start + STALL_FROM * INTERVAL,
                "stalled": (STALL_TO - STALL_FROM) * INTERVAL, "steps": steps}))


path = pulseline.pulse_path(record_path(ROOT, 0, RANK))
os.makedirs(os.path.dirname(path), exist_ok=True)
with open(path, "wb") as pulse:
    train(pulse, time.time() - PULSES * INTERVAL)

if RANK == 0:
    import wandb

    run = wandb.init(project="lens-report")
    for step in range(STEPS):
        run.log({"train/loss": 1.0 / (step + 1), "train/lr": 0.1 * 0.99 ** step,
                 "eval/accuracy": step / STEPS})
    print("logged", run.id, flush=True)
    run.finish()
