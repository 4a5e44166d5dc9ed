"""A followed run as Hugging Face Trainer, Lightning and Keras make one, watching its rows arrive.

``define_metric(..., step_metric=...)`` makes the injector follow wandb's transaction log
(tests/capture/test_followed.py).  ``val/*`` is declared against ``epoch`` and the validation
rows omit it, so wandb adds a value no ``log`` call carried.  ``LENS_TEST_ROWS`` rows (24), every
4th a validation row.  After each ``log`` call the script waits (at most ``LENS_TEST_WAIT``
seconds, 30) until the row is in the local record and, with ``LENS_TEST_READ_URL`` (a receiver's
``/v1/_receiver/logs``), at the receiver; it prints the seconds each took as
``latency {"record": [...], "receiver": [...]}`` (null: not seen in time).

Variations:
    LENS_TEST_NO_WAIT=1      log every 0.1 s without waiting for the rows
    LENS_TEST_SIGKILL=1      after the last row, sleep 1 s and SIGKILL itself (no finish)
    LENS_TEST_LOSE_LOG=delete|truncate   at row ``LENS_TEST_LOSE_AT`` (8), once the record
        shows that the injector read wandb's log (an amendment line: wandb-core writes the log
        about every 15 s; at most 120 s), delete it, or truncate it to half; for ``delete`` the
        script keeps a descriptor of its own and, after ``finish``, copies what wandb wrote into
        ``kept.wandb`` (wandb's history, for the test to compare with).

Prints ``logged <run id>`` before finishing.
"""

import json
import os
import shutil
import signal
import time
import urllib.request

import wandb

ROWS = int(os.environ.get("LENS_TEST_ROWS", "24"))
WAIT = float(os.environ.get("LENS_TEST_WAIT", "30"))
READ_URL = os.environ.get("LENS_TEST_READ_URL")
NO_WAIT = bool(os.environ.get("LENS_TEST_NO_WAIT"))
LOSE = os.environ.get("LENS_TEST_LOSE_LOG", "")
LOSE_AT = int(os.environ.get("LENS_TEST_LOSE_AT", "8"))
RECORD = os.path.join(os.environ["PRIMUS_LENS_WANDB_OUTPUT_PATH"], "node_0", "rank_0",
                      "wandb_metrics.jsonl")


def in_record(run_id, step):
    try:
        with open(RECORD) as f:
            lines = [json.loads(line) for line in f if line.endswith("\n")]
    except OSError:
        return False
    return any(line["run_id"] == run_id and line["step"] == step and "amends" not in line
               for line in lines)


def amended():
    with open(RECORD) as f:
        return any('"amends"' in line for line in f)


def at_receiver(run_id, step):
    with urllib.request.urlopen(f"{READ_URL}?run_id={run_id}", timeout=5) as answer:
        return any(row["step"] == step for row in json.load(answer)["logs"])


def seconds_until(seen, called, wait=WAIT):
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if seen():
            return round(time.time() - called, 3)
        time.sleep(0.02)
    return None


run = wandb.init(project="lens-followed")
run.define_metric("epoch")
run.define_metric("val/*", step_metric="epoch")
latency = {"record": [], "receiver": []}
kept = None
for i in range(ROWS):
    if LOSE and i == LOSE_AT:
        print("read before the loss", seconds_until(amended, time.time(), 120.0), flush=True)
        path = run.settings.sync_file
        if LOSE == "delete":
            kept = os.open(path, os.O_RDONLY)
            os.unlink(path)
        else:
            os.truncate(path, os.path.getsize(path) // 2)
    step = run.step
    row = {"val/accuracy": 0.5 + i / 100} if i % 4 == 3 else {"train/loss": 1.0 / (i + 1),
                                                              "epoch": i // 4}
    called = time.time()
    run.log(row)
    if NO_WAIT:
        time.sleep(0.1)
        continue
    latency["record"].append(seconds_until(lambda s=step: in_record(run.id, s), called))
    if READ_URL:
        latency["receiver"].append(seconds_until(lambda s=step: at_receiver(run.id, s), called))
print("latency", json.dumps(latency), flush=True)
print("logged", run.id, flush=True)
if os.environ.get("LENS_TEST_SIGKILL"):
    time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGKILL)
started = time.monotonic()
run.finish()
print("finish took", round(time.monotonic() - started, 3), flush=True)
if kept is not None:
    with os.fdopen(kept, "rb") as source, open("kept.wandb", "wb") as copy:
        shutil.copyfileobj(source, copy)
