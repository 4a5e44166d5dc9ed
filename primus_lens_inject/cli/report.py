"""``primus-lens report [RECORD_ROOT ...] [-o report.html]``: the page of a job's records.

Without a root it reads the record root a training process started here would write to, the
one ``primus-lens doctor`` names (``PRIMUS_LENS_WANDB_OUTPUT_PATH``, else ``./wandb/primus-lens``
beside wandb's files).  Prints the page's path and a five-line summary (docs/report.md).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional


def default_root() -> str:
    """The configured record root: three levels above this process's own record path."""
    from ..config import Config
    from ..paths import record_location
    from ..topology import detect

    topology, _problems = detect()
    where = record_location(Config.from_env(), topology, reporting=False)
    path = where.path or where.fallback
    return os.path.dirname(os.path.dirname(os.path.dirname(path))) if path else os.getcwd()


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="primus-lens report",
        description="Write one self-contained HTML page (no server, nothing fetched) of the "
                    "records and rank pulses under RECORD_ROOT(s): the job, every logged key, "
                    "per-rank heatmaps, stalls and gaps.")
    parser.add_argument("roots", nargs="*", metavar="RECORD_ROOT",
                        help="directories holding node_<n>/rank_<r>/ (default: the configured "
                             "record root, as `primus-lens doctor` names it)")
    parser.add_argument("-o", "--output", default="report.html", help="the page to write")
    args = parser.parse_args(argv)
    from ..view import build_model, summary, write_page

    roots = args.roots or [default_root()]
    missing = [root for root in roots if not os.path.isdir(root)]
    if missing:
        print(f"primus-lens report: no such directory: {', '.join(missing)}", file=sys.stderr)
        return 2
    model = build_model(roots)
    if not model["job"]["rank_dirs"]:
        print(f"primus-lens report: no node_<n>/rank_<r> directory under {', '.join(roots)}",
              file=sys.stderr)
        return 1
    try:
        size = write_page(model, args.output)
    except OSError as exc:
        print(f"primus-lens report: cannot write {args.output}: {exc.strerror or exc}",
              file=sys.stderr)
        return 1
    print(f"{os.path.abspath(args.output)} ({size / 1e6:.1f} MB)")
    for line in summary(model):
        print(f"  {line}")
    return 0
