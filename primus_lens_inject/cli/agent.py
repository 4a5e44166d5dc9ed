"""``primus-lens agent``: the pod's single sender and metrics endpoint (docs/agent.md).

It runs until SIGTERM or SIGINT (with ``--exit-when-done`` also until the pod's trainers have
come and gone: a regular container must end for a Job's pod to complete), then drains
(``agent.service``), prints one line on start (the root, the port) and one at its end (what was
delivered, what is left in the records), and exits 0: what could not be sent stays in the
records, which are the source of truth.  It exits 1
only when it cannot start (its port taken: another agent serves the pod).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from typing import Any, List

from .. import state
from ..agent import service

_STARTED = "primus-lens agent: "


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="primus-lens agent",
        description="Send every record under the pod's record root (the pod's one sender: "
                    "trainers with PRIMUS_LENS_AGENT=true only record), serve /metrics, /healthz "
                    "and /readyz on PRIMUS_LENS_AGENT_ADDRESS:PRIMUS_LENS_AGENT_PORT, and on "
                    "SIGTERM keep sending until the trainers have exited and every record is "
                    "acknowledged, or PRIMUS_LENS_AGENT_DRAIN_SECONDS.")
    parser.add_argument("--root", help="the pod's record root (default: "
                                       "PRIMUS_LENS_WANDB_OUTPUT_PATH, as in the trainers)")
    parser.add_argument("--exit-when-done", action="store_true",
                        help="also end without a signal: once a trainer was seen writing and "
                             "none is any longer, send what is left (at most "
                             "PRIMUS_LENS_AGENT_DRAIN_SECONDS) and exit 0; for the agent as a "
                             "regular container, which would otherwise keep a Job's pod running")
    args = parser.parse_args(argv)
    config, topology = state.get_config(), state.get_topology()
    root = args.root or config.output_path
    if not root:
        parser.error("no record root: pass --root or set PRIMUS_LENS_WANDB_OUTPUT_PATH")
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()  # the main thread drains; a second signal changes nothing

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)

    def started(agent: service.Agent) -> None:
        print(f"{_STARTED}sending the records under {agent.root}; /metrics on "
              f"{config.agent_address}:{agent.port} (pid {os.getpid()}; JSON by "
              f"{agent.json_library})", flush=True)

    def done(agent: service.Agent) -> None:
        print(f"{_STARTED}the trainers have exited; sending what is left (at most "
              f"{config.agent_drain_seconds:g} s), then ending", flush=True)

    try:
        summary = service.run(config, topology, root, stop, started,
                              done if args.exit_when_done else None)
    except OSError as exc:
        print(f"{_STARTED}cannot start: {exc.strerror or exc} (address "
              f"{config.agent_address}:{config.agent_port}; is another agent serving this pod?)",
              file=sys.stderr)
        return 1
    print(f"{_STARTED}ended: {summary.line(root)}", flush=True)
    return 0
