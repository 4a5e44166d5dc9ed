"""The OTLP tests' training script (tests/report/test_otlp*.py): rows whose values the tests can
recompute, then one JSON line naming the run and the modules the process has loaded.

Driven by the environment: ``OTLP_TEST_ROWS`` rows (40); ``OTLP_TEST_WIDE`` keys ``wide/<i>`` =
``i`` in one more row logged first (none); ``OTLP_TEST_PAUSE`` seconds to sleep after logging,
before the report line and ``run.finish()``.
"""

import json
import os
import sys
import time

import wandb

run = wandb.init(project="otlp-proj")
wide = int(os.environ.get("OTLP_TEST_WIDE", "0"))
if wide:
    run.log({f"wide/{i}": i for i in range(wide)})
for i in range(int(os.environ.get("OTLP_TEST_ROWS", "40"))):
    run.log({"train/loss": 1.0 / (i + 1), "lr": 0.5 * i, "odd key!": i, "9th": -i,
             "text": "skipped", "flag": True, "nested": {"a": i * 2}})
time.sleep(float(os.environ.get("OTLP_TEST_PAUSE", "0")))
loaded = sorted(name for name in sys.modules  # wandb itself may load protobuf and the OTel API
                if name.startswith(("primus_lens_inject.report.otlp", "opentelemetry.proto")))
print(json.dumps({"run_id": run.id, "modules": loaded}), flush=True)
run.finish()
