"""Detection of real framework runs, as the built-in receiver gets it (docs/detection.md).

Two real programs under the injector, reporting to the receiver on loopback, with real wandb in
offline mode: a Hugging Face ``Trainer`` run (tests/scripts/hf_trainer.py) and a Lightning run
(tests/scripts/lightning_tb.py) in an interpreter where ``transformers`` is installed, so that
torchmetrics imports it under Lightning.  Both frameworks fill ``wandb.config`` after
``wandb.init``, and both run in the same test session, started together (each takes seconds).

* The Trainer's report carries the configuration the Trainer set (its learning rate and batch
  size, the model's sizes) and names the Trainer on transformers.
* The Lightning report names Lightning alone: transformers is imported, not used.
* Each run gets exactly one report.

The last test (rows of a Trainer run prompt at the receiver and durable through SIGKILL) checks
the followed-run path of ``capture`` (tests/capture/test_followed.py) on a real Trainer run.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import statistics
import subprocess
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest
from conftest import TRAIN_PYTHON, training_env

from primus_lens_inject.capture.reconcile import fold
from primus_lens_inject.devserver.receiver import Receiver

SCRIPTS = Path(__file__).parents[1] / "scripts"
NEEDS = ("torch", "transformers", "accelerate", "pytorch_lightning", "tensorboard")
TIMEOUT = 300.0  # seconds for both programs together (~30 s on 2 busy cores)
LR, BATCH = 0.00025, 4


def missing(modules: Tuple[str, ...]) -> List[str]:
    """Which of ``modules`` the training interpreter cannot import."""
    probe = ("import importlib.util, sys\n"
             "print(*[m for m in sys.argv[1:] if importlib.util.find_spec(m) is None])")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    out = subprocess.run([TRAIN_PYTHON, "-c", probe, *modules], capture_output=True, text=True,
                         timeout=60, env=env, check=True)
    return out.stdout.split()


def reporting(url: str, pod: str) -> Dict[str, str]:
    return {"PRIMUS_LENS_WANDB_API_REPORTING": "true", "PRIMUS_LENS_API_BASE_URL": url,
            "POD_NAME": pod, "PRIMUS_LENS_WANDB_FLUSH_INTERVAL": "0.2",
            "PRIMUS_LENS_SHUTDOWN_TIMEOUT": "20", "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1", "WANDB_PROJECT": "lens-frameworks"}


@pytest.fixture(scope="module")
def detections(tmp_path_factory: pytest.TempPathFactory):
    """Runs both programs against one receiver; yields {pod: [detection bodies]}."""
    absent = missing(NEEDS)
    if absent:
        pytest.skip(f"{TRAIN_PYTHON} lacks {', '.join(absent)} (`make install` puts them next "
                    "to the local torch wheel)")
    with Receiver(port=0) as receiver:
        started = {}
        for pod, script, extra in (("hf-0", "hf_trainer.py", {"LENS_TEST_LR": str(LR),
                                                              "LENS_TEST_BATCH": str(BATCH)}),
                                   ("pl-0", "lightning_tb.py", {"LENS_TEST_EPOCHS": "1"})):
            tmp = tmp_path_factory.mktemp(pod)
            env = training_env(tmp, {**reporting(receiver.url, pod), **extra})
            started[pod] = subprocess.Popen([TRAIN_PYTHON, str(SCRIPTS / script)], cwd=tmp,
                                            env=env, text=True, stdout=subprocess.PIPE,
                                            stderr=subprocess.PIPE)
        deadline = time.monotonic() + TIMEOUT
        try:
            for pod, proc in started.items():
                _, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
                assert proc.returncode == 0, f"{pod}: {err[-4000:]}"
        finally:
            for proc in started.values():
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(timeout=30)
        # a finished program has delivered its report (the process end waits for it)
        yield {pod: [d["data"] for d in receiver.detections(pod=pod)] for pod in started}


def test_trainer_report_carries_the_configuration_set_after_init(detections) -> None:
    (body,) = detections["hf-0"]  # one report per run
    config = body["evidence"]["wandb"]["config"]
    assert config["learning_rate"] == LR and config["per_device_train_batch_size"] == BATCH
    assert config["hidden_size"] == 16 and config["num_hidden_layers"] == 1  # the model's
    assert len(config) > 50, sorted(config)  # the Trainer's whole configuration


def test_trainer_is_detected_as_the_trainer_on_transformers(detections) -> None:
    (body,) = detections["hf-0"]
    hints = body["hints"]
    assert (hints["wrapper_frameworks"], hints["base_frameworks"], hints["confidence"]) == (
        ["transformers_trainer"], ["transformers"], "high")
    evidence = body["evidence"]
    assert set(evidence["wrapper_frameworks"]) == {"transformers_trainer"}
    assert set(evidence["base_frameworks"]) == {"transformers"}


def test_lightning_is_detected_alone_though_transformers_is_imported(detections) -> None:
    (body,) = detections["pl-0"]
    evidence = body["evidence"]
    assert evidence["pytorch"]["detected_modules"]["transformers"] is True  # torchmetrics did
    assert set(evidence["wrapper_frameworks"]) == {"lightning"}
    assert evidence["base_frameworks"] == {}
    hints = body["hints"]
    assert (hints["wrapper_frameworks"], hints["base_frameworks"], hints["confidence"]) == (
        ["lightning"], [], "high")
    assert hints["possible_frameworks"] == ["lightning"]


LATER = """
import wandb
first = wandb.init(project="later", name="logs")
first.config.update({"learning_rate": 0.1, "per_device_train_batch_size": 8})  # as HF, Lightning
first.log({"loss": 1.0})
first.config.update({"after_the_first_row": 1})
first.finish()
second = wandb.init(project="later", name="finishes")
second.config.update({"epochs": 3})
second.finish()  # never logged
third = wandb.init(project="later", name="exits")
third.config.update({"warmup": 5})
print("done", flush=True)  # exits without a row and without finish
"""


@pytest.mark.wandb_compat
def test_configuration_set_after_init_is_reported_once_per_run(train) -> None:
    """The report is built from the run's first row, else its finish, else the process end."""
    with Receiver(port=0) as receiver:
        train(LATER, env=reporting(receiver.url, "later-0"))
        bodies = [d["data"] for d in receiver.detections(pod="later-0")]
    configs = {body["evidence"]["wandb"]["name"]: body["evidence"]["wandb"]["config"]
               for body in bodies}
    assert len(bodies) == 3 and configs == {
        "logs": {"learning_rate": 0.1, "per_device_train_batch_size": 8},
        "finishes": {"epochs": 3}, "exits": {"warmup": 5}}


def recorded_steps(path: Path, run_id: str) -> set:
    """The steps of the run's early rows now in the record (its complete lines only)."""
    try:
        text = path.read_text()
    except OSError:
        return set()
    lines = [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]
    return {line["step"] for line in lines if line["run_id"] == run_id and "amends" not in line}


def test_trainer_rows_are_prompt_and_survive_a_sigkill(tmp_path: Path) -> None:
    """A Trainer run (a followed run: it declares a step metric) logs a row every 2.5 s and is
    SIGKILLed 1 s after its last row: each row is in the record within ~1 s and at the receiver
    within ~2 s of the Trainer's ``log`` call (medians; loose bounds for a loaded machine, the
    printed figures are the measurement), and every row survives the SIGKILL."""
    absent = missing(NEEDS[:3])
    if absent:
        pytest.skip(f"{TRAIN_PYTHON} lacks {', '.join(absent)}")
    record = tmp_path / "out" / "node_0" / "rank_0" / "wandb_metrics.jsonl"
    logged: Dict[int, float] = {}
    seen: Dict[str, Dict[int, Optional[float]]] = {"record": {}, "receiver": {}}
    with Receiver(port=0) as receiver:
        env = training_env(tmp_path, {**reporting(receiver.url, "hf-kill"),
                                      "LENS_TEST_ROW_SLEEP": "2.5", "LENS_TEST_SIGKILL": "1"})
        proc = subprocess.Popen([TRAIN_PYTHON, str(SCRIPTS / "hf_trainer.py")], cwd=tmp_path,
                                env=env, text=True, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True,
                         ).start()
        run_id, deadline = "", time.monotonic() + TIMEOUT
        try:
            while time.monotonic() < deadline:
                while not lines.empty():
                    words = lines.get().split()
                    if words[:1] == ["row"]:
                        run_id, logged[int(words[2])] = words[1], float(words[3])
                now = time.time()
                waiting = [step for step in logged if now - logged[step] < 30.0]
                found = {"record": recorded_steps(record, run_id),
                         "receiver": {row["step"] for row in receiver.logs(run_id=run_id)}}
                for where, steps in found.items():
                    for step in waiting:
                        if step in steps and step not in seen[where]:
                            seen[where][step] = round(now - logged[step], 3)
                if proc.poll() is not None and all(  # each row seen, or 30 s late
                        step in seen[where] or step not in waiting
                        for where in seen for step in logged):
                    break
                time.sleep(0.02)
        finally:
            if proc.poll() is None:
                proc.kill()
            stderr = proc.communicate(timeout=30)[1]
    assert proc.returncode == -signal.SIGKILL, stderr[-4000:]
    steps = list(range(9))  # 8 training rows and the one the Trainer logs at the end
    assert sorted(logged) == steps
    assert sorted(seen["record"]) == sorted(seen["receiver"]) == steps, seen
    at_record, at_server = list(seen["record"].values()), list(seen["receiver"].values())
    print(f"\nTrainer rows: record latency median {statistics.median(at_record):.3f} s max "
          f"{max(at_record):.3f} s; receiver latency median {statistics.median(at_server):.3f} s "
          f"max {max(at_server):.3f} s")
    assert statistics.median(at_record) < 1.5 and statistics.median(at_server) < 3.0, seen
    assert max(at_server) < 10.0, seen
    lines_kept = fold([json.loads(line) for line in record.read_text().splitlines()])
    assert [line["step"] for line in lines_kept] == steps
    assert all("train/loss" in line["data"] for line in lines_kept[:8])
