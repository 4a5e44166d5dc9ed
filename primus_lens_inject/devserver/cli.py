"""``primus-lens receive``: the receiver as a command, serving until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sqlite3
import sys
import threading
from typing import Dict, List, Optional

from .faults import Faults
from .receiver import DEFAULT_HOST, DEFAULT_PORT, LAYOUTS, Receiver

_READY_LINE = "primus-lens receiver listening on {url}"
_OTLP_LINE = "primus-lens receiver accepting OTLP/HTTP metrics: PRIMUS_LENS_OTLP_ENDPOINT={endpoint}"


def _parse_pods(specs: Optional[List[str]]) -> Optional[Dict[str, List[str]]]:
    """``--pods a,b=uid1+uid2`` (repeatable) -> ``{"a": [], "b": ["uid1", "uid2"]}``."""
    if specs is None:
        return None
    table: Dict[str, List[str]] = {}
    for spec in specs:
        for entry in filter(None, (part.strip() for part in spec.split(","))):
            pod, _, uids = entry.partition("=")
            table[pod] = [uid for uid in uids.split("+") if uid]
    return table


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="primus-lens receive",
        description="Development stand-in for the Lens telemetry-processor: serves POST "
                    "/v1/wandb/{detection,metrics,logs,batch} like the real server, stores what it "
                    "accepts in SQLite, shows it under /v1/_receiver/ (open it in a browser "
                    "once it runs). The options below are the whole reference; the faults can "
                    "also be changed at run time.")
    parser.add_argument("--otlp", action="store_true",
                        help="also accept OTLP/HTTP metrics (POST /v1/metrics, protobuf or JSON) on the "
                             "same port, stored beside the Lens rows")
    parser.add_argument("--host", default=DEFAULT_HOST, help="address to listen on (default %(default)s)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help="port (default %(default)s; 0 picks a free one, printed when ready)")
    parser.add_argument("--db", default=":memory:", metavar="FILE",
                        help="SQLite file to keep data in, kept across restarts (default: in memory)")
    parser.add_argument("--pods", action="append", metavar="POD[=UID+UID...],...",
                        help="the only pods the pod cache knows, optionally with their workload UIDs "
                             "(repeatable); without it every pod is its own workload wl-POD")
    parser.add_argument("--layout", choices=tuple(LAYOUTS), default="lens",
                        help="which server to answer as: " + "; ".join(
                            f"{name}: {what}" for name, what in LAYOUTS.items())
                        + " (default %(default)s)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every request on stderr")
    faults = parser.add_argument_group("faults (also settable at run time: POST /v1/_receiver/faults)")
    faults.add_argument("--delay", type=float, metavar="SECONDS", help="delay before each answer")
    faults.add_argument("--delay-max", type=float, metavar="SECONDS",
                        help="random delay between --delay and this")
    faults.add_argument("--fail-rate", type=float, metavar="P", help="chance of 500 'failed to process ...'")
    faults.add_argument("--fail-endpoints", metavar="LIST",
                        help="comma-separated subset of detection,metrics,logs,otlp that may fail "
                             "(default all)")
    faults.add_argument("--garbage-rate", type=float, metavar="P", help="chance of a non-JSON answer")
    faults.add_argument("--garbage-status", type=int, metavar="CODE", help="its status (default 502)")
    faults.add_argument("--no-workload-for", type=float, metavar="SECONDS",
                        help="answer 'no valid workload found' for pod names this long (-1: until changed)")
    faults.add_argument("--no-workload-requests", type=int, metavar="N",
                        help="answer 'no valid workload found' to the next N pod-name lookups")
    faults.add_argument("--fail-requests", type=int, metavar="N",
                        help="fail the next N bodies (of --fail-endpoints) with 500, then --fail-rate")
    faults.add_argument("--otlp-fail-status", type=int, metavar="CODE",
                        help="status of a failing OTLP request (default 503; fails per --fail-rate)")
    faults.add_argument("--otlp-retry-after", type=int, metavar="SECONDS",
                        help="Retry-After header on that answer (default none)")
    faults.add_argument("--otlp-reject-rate", type=float, metavar="P",
                        help="chance that each OTLP data point is refused (partial success)")
    faults.add_argument("--otlp-html-for", type=int, metavar="N",
                        help="answer the next N OTLP requests 200 with an HTML page, as a proxy may")
    faults.add_argument("--otlp-max-body", type=int, metavar="BYTES",
                        help="answer 413 to OTLP bodies larger than this, as a proxy's limit does")
    faults.add_argument("--seed", type=int, help="seed for the random faults")
    return parser


_FAULT_OPTIONS = tuple(field.name for field in dataclasses.fields(Faults))


def main(argv: Optional[List[str]] = None) -> int:
    """``primus-lens receive``: serve until SIGTERM or SIGINT, then stop cleanly (exit 0)."""
    parser = _parser()
    args = parser.parse_args(argv)
    settings = {name: getattr(args, name) for name in _FAULT_OPTIONS if getattr(args, name) is not None}
    try:
        receiver = Receiver(args.host, args.port, args.db, _parse_pods(args.pods), settings, args.verbose,
                            args.otlp, args.layout)
    except ValueError as exc:
        parser.error(str(exc))
    except sqlite3.Error as exc:
        print(f"primus-lens receive: cannot open the database {args.db}: {exc}", file=sys.stderr)
        return 1
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda _signum, _frame: stop.set())
                for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        receiver.start()
    except OSError as exc:
        print(f"primus-lens receive: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}",
              file=sys.stderr)
        return 1
    else:
        lines = [_READY_LINE.format(url=receiver.url)]
        if args.otlp:
            lines.append(_OTLP_LINE.format(endpoint=receiver.otlp_endpoint))
        print("\n".join(lines), flush=True)  # one write: a reader that waited for one has both
        stop.wait()
    finally:
        receiver.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
