"""``primus-lens doctor [--json]``: is the injector active in this interpreter, and if not, why.

Run it the way the training job runs (same image, same environment, same PYTHONPATH): it reports
what a training process started there would do, without importing wandb or starting anything.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from typing import Any, Dict, List, Optional

from .config import Config, variable_rows
from .patch import MIN_WANDB

BOOTSTRAP_STATE = "_primus_lens_bootstrap"
NEWEST_TESTED_WANDB = (0, 31, 0)


def _wandb_section() -> Dict[str, Any]:
    try:
        from importlib.metadata import PackageNotFoundError, version
    except ImportError:  # pragma: no cover - Python < 3.8 is not supported by the package
        return {"installed": None}
    try:
        text = version("wandb")
    except PackageNotFoundError:
        return {"installed": None, "supported": False, "note": "wandb is not installed here"}
    from .patch import wandb_version

    parsed = wandb_version(type("W", (), {"__version__": text}))
    supported = parsed >= MIN_WANDB
    note = "" if supported else "older than 0.12.21: the injector leaves it alone"
    if supported and parsed > NEWEST_TESTED_WANDB:
        note = "newer than the newest version tested (0.31.0); patch points are stable"
    return {"installed": text, "supported": supported, "note": note}


def _bootstrap_section(config: Config) -> Dict[str, Any]:
    from .cli import bootstrap_dir, pth_path

    module = sys.modules.get(BOOTSTRAP_STATE)
    pth = pth_path()
    section: Dict[str, Any] = {
        "directory": bootstrap_dir(),
        "loaded": module is not None,
        "location": getattr(module, "__file__", None),
        "status": getattr(module, "status", None),
        "chained_sitecustomize": getattr(module, "chained", None),
        "pth_installed": os.path.exists(pth),
        "pth_path": pth,
        "pythonpath": os.environ.get("PYTHONPATH", ""),
    }
    reasons: List[str] = []
    if not config.hook:
        reasons.append("PRIMUS_LENS_WANDB_HOOK is false (kill switch)")
    if sys.flags.ignore_environment or sys.flags.isolated:
        reasons.append("python runs with -E/-I: PYTHONPATH is ignored")
    if sys.flags.no_site:
        reasons.append("python runs with -S: sitecustomize is never imported")
    if module is None and not section["pth_installed"]:
        reasons.append(f"the bootstrap is not on PYTHONPATH: use `primus-lens run -- CMD` or "
                       f"PYTHONPATH={bootstrap_dir()}, or `primus-lens install`")
    section["active"] = not reasons and (module is not None or section["pth_installed"])
    section["why_not"] = reasons
    return section


def _record_section(config: Config) -> Dict[str, Any]:
    from .record import default_root, record_path
    from .topology import detect

    topology, problems = detect()
    root = config.output_path or default_root()
    path = record_path(root, topology.node_rank, topology.local_rank)
    return {
        "save_local": config.save_local,
        "path": path,
        "writable": _writable(os.path.dirname(path)),
        "topology": topology.__dict__,
        "invalid_rank_variables": [name for name, _ in problems],
    }


def _writable(directory: str) -> bool:
    """Can this user create the record directory and a file in it? Leaves nothing behind."""
    probe = directory
    while not os.path.isdir(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            return False
        probe = parent
    try:
        with tempfile.NamedTemporaryFile(dir=probe, prefix=".primus-lens-doctor-"):
            return True
    except OSError:
        return False


def _gpu_section(config: Config) -> Dict[str, Any]:
    from .gpu import describe  # never raises: a failure is reported in its "error" key
    from .topology import detect

    return describe(config, detect()[0])


def _reporting_section(config: Config, record_path: str) -> Dict[str, Any]:
    from . import spool
    from .reporter import probe
    from .wire import identity

    section: Dict[str, Any] = {
        "enabled": config.api_reporting,
        "endpoint": config.api_base_url,
        "identity": identity(config) if config.has_identity else None,
        "report_ranks": config.report_ranks,
    }
    if not config.has_identity:
        section["note"] = "no POD_NAME or WORKLOAD_UID: nothing is sent, the record still works"
    if config.api_reporting:
        section["endpoint_check"] = probe(config)
    try:
        with open(spool.sibling(record_path, spool.STATUS_SUFFIX)) as f:
            section["sender"] = json.load(f)
    except (OSError, ValueError):
        section["sender"] = None
    return section


def collect(config: Optional[Config] = None) -> Dict[str, Any]:
    config = config or Config.from_env()
    record = _record_section(config)
    return {
        "python": {"executable": sys.executable, "version": sys.version.split()[0],
                   "implementation": sys.implementation.name},
        "bootstrap": _bootstrap_section(config),
        "wandb": _wandb_section(),
        "configuration": [
            {"variable": name, "value": value, "default": default, "doc": doc}
            for name, value, default, doc in variable_rows(config)
        ],
        "invalid_values": [p.message() for p in config.problems],
        "record": record,
        "gpu": _gpu_section(config),
        "reporting": _reporting_section(config, record["path"]),
    }


def _print_text(report: Dict[str, Any]) -> None:
    boot = report["bootstrap"]
    print(f"injector: {'ACTIVE' if boot['active'] else 'NOT ACTIVE'} "
          f"in {report['python']['executable']} (Python {report['python']['version']})")
    for reason in boot["why_not"]:
        print(f"  why not: {reason}")
    print(f"  bootstrap: {boot['location'] or boot['directory']} ({boot['status'] or 'not loaded'})")
    print(f"  chained sitecustomize: {boot['chained_sitecustomize'] or 'none'}")
    print(f"  .pth route: {'installed at ' + boot['pth_path'] if boot['pth_installed'] else 'no'}")
    wandb = report["wandb"]
    supported = "supported" if wandb.get("supported") else "NOT supported"
    print(f"wandb: {wandb.get('installed') or 'not installed'}"
          + (f" ({supported}{'; ' + wandb['note'] if wandb.get('note') else ''})"
             if wandb.get("installed") else ""))
    record = report["record"]
    print(f"record: {record['path'] if record['save_local'] else 'off (SAVE_LOCAL=false)'}"
          f" [{'writable' if record['writable'] else 'NOT writable'}]")
    print(f"topology: {record['topology']}")
    for problem in report["invalid_values"]:
        print(f"INVALID: {problem}")
    for name in record["invalid_rank_variables"]:
        print(f"INVALID: {name} is not a non-negative integer; the next source or 0 is used")
    print("gpu: " + json.dumps(report["gpu"], default=str))
    rep = report["reporting"]
    print(f"reporting: {'on' if rep['enabled'] else 'off'} -> {rep['endpoint']}")
    if rep.get("endpoint_check"):
        print(f"  endpoint: {rep['endpoint_check']}")
    print(f"  identity: {rep['identity'] or rep.get('note')}")
    sender = rep.get("sender")
    if sender:
        print(f"  sender (pid {sender.get('pid')}): {sender.get('state')}; rows sent "
              f"{sender.get('rows_sent')}, retries {sender.get('retries')}, dropped "
              f"{sender.get('dropped')}, backlog {sender.get('backlog_bytes')} bytes")
    print("configuration:")
    for row in report["configuration"]:
        marker = "" if row["value"] == row["default"] else "   (set)"
        print(f"  {row['variable']} = {row['value']!r}{marker}")


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(prog="primus-lens doctor", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    report = collect()
    if args.json:
        print(json.dumps(report, indent=2, default=str, sort_keys=True))
    else:
        _print_text(report)
    return 0
