"""The reporting tests' training script: 50 rows of mixed values (tests/report/test_reporting.py).

Every row carries values the wire must leave out or rename (NaN, -Inf, a bool, text, a 401-digit
int on row 3, a nested dict, a user key ``step``), and the config holds secrets that must never
leave.  Driven by the environment, so the tests never edit its text:
``LENS_TEST_ROWS`` rows to log (50); ``LENS_TEST_PAUSE`` seconds to sleep before printing
``logged <run id>``; ``LENS_TEST_LINGER`` seconds to sleep after it, before ``run.finish()``
(with ``LENS_TEST_NO_FINISH=1`` the script only sleeps and never finishes: a SIGTERM ends it);
``LENS_TEST_WAIT_STDIN=1`` reads one line from stdin before going on to ``run.finish()`` (a test
holds the run open until an event, not for a number of seconds).
"""

import math
import os
import sys
import time

import wandb

run = wandb.init(project="lens", config={"lr": 3e-4, "framework": "megatron",
                 "db_password": "hunter2-secret", "data": "s3://AKIAEXAMPLE:s3cr3tKey@bucket/x"})
for i in range(int(os.environ.get("LENS_TEST_ROWS", "50"))):
    run.log({"loss": 1.0 / (i + 1), "nan": math.nan, "inf": -math.inf, "flag": i % 2 == 0,
             "name": "text", "huge": 10 ** 400 if i == 3 else i, "nested": {"a": i},
             "step": i * 10})
time.sleep(float(os.environ.get("LENS_TEST_PAUSE", "0")))
print("logged", run.id, flush=True)
time.sleep(float(os.environ.get("LENS_TEST_LINGER", "0")))
if os.environ.get("LENS_TEST_WAIT_STDIN") == "1":
    sys.stdin.readline()
if os.environ.get("LENS_TEST_NO_FINISH") != "1":
    run.finish()
