"""Rows the server or the record could choke on, for the fault tests.

Step 3 holds an int of 5000 digits (wandb takes it; ``json`` refuses to print it), step 5 a key
with a NUL and one with a lone surrogate (Postgres jsonb refuses both; wandb takes the latter
only inside a nested dict, which it stores as JSON), step 7 60,000 keys (about 3 MB
as one request).  Prints ``logged <run id>``, then waits for a line on stdin before finishing.
"""

import sys

import wandb

run = wandb.init(project="faults", mode=sys.argv[1])
for i in range(10):
    row = {"i": i}
    if i == 3:
        row["huge"] = 10 ** 5000
    if i == 5:
        row.update({"nul\x00key": 1.5, "nested": {"lone\ud800key": 2.5}})
    if i == 7:
        row.update({f"layer{j:05d}/attention/output_projection/grad_norm": j + 0.25
                    for j in range(60_000)})
    run.log(row)
print("logged", run.id, flush=True)
sys.stdin.readline()
run.finish()
