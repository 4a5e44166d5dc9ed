"""``primus-lens doctor [--json]``: is the injector active in this interpreter, and if not, why.

Run it the way the training job runs (same image, same environment, same PYTHONPATH, same python
options): it reports what a training process started there would do, without importing wandb or
starting anything. ``collect`` gathers facts (the ``--json`` object); the ``_print_*`` functions
put one section each into words.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
import tempfile
from typing import Any, Dict, List, Optional

from . import credentials
from .cli import PTH_LINE, bootstrap_dir, is_bootstrap, pth_path
from .config import Config, variable_rows
from .patch import MIN_WANDB

BOOTSTRAP_STATE = "_primus_lens_bootstrap"
NEWEST_TESTED_WANDB = (0, 31, 0)
PROBE_TIMEOUT = 3.0  # seconds, for connecting and for the answer: doctor must never hang


def _wandb_section() -> Dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

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


def _startup_path() -> List[str]:
    """sys.path as site.py saw it when it imported sitecustomize: without the script's directory
    (or the current one), which Python inserts only afterwards, unless -I/-P left it out."""
    skip_first = not (sys.flags.isolated or getattr(sys.flags, "safe_path", False))
    return [os.path.abspath(p or os.curdir) for p in (sys.path[1:] if skip_first else sys.path)]


def _sitecustomizes(entries: List[str]) -> List[str]:
    """Every sitecustomize on these entries, in the order Python would look; the first wins."""
    from importlib.machinery import PathFinder

    found = []
    for entry in dict.fromkeys(entries):
        spec = PathFinder.find_spec("sitecustomize", [entry])
        if spec is not None and spec.origin and spec.loader is not None:
            found.append(spec.origin)
    return found


def _layout(location: str) -> str:
    """Which way of shipping the bootstrap this file belongs to."""
    directory = os.path.dirname(location)
    if os.path.isdir(os.path.join(directory, "primus_lens_inject")):
        return "image tree"
    if os.path.basename(directory) == "_bootstrap":
        return "installed package"
    return "directory"


def _bootstrap_section(config: Config) -> Dict[str, Any]:
    module = sys.modules.get(BOOTSTRAP_STATE)
    pth = pth_path()
    try:
        with open(pth) as f:
            pth_current = f.read() == PTH_LINE
    except OSError:
        pth_current = None
    found = _sitecustomizes(_startup_path())
    winner = found[0] if found else None
    ours = [path for path in found if is_bootstrap(path)]
    location = getattr(module, "__file__", None)
    if module is not None:
        route = "PYTHONPATH" if module.__name__ == "sitecustomize" else ".pth"
    else:  # not activated: where would it have come from?
        route = "PYTHONPATH" if ours else ".pth" if pth_current is not None else None
        location = ours[0] if ours else None
        if route == ".pth":
            location = os.path.join(bootstrap_dir(), "sitecustomize.py")
    section: Dict[str, Any] = {
        "directory": bootstrap_dir(),
        "loaded": module is not None,
        "location": location,
        "route": route,
        "layout": _layout(location) if location else None,
        "status": getattr(module, "status", None),
        "chained_sitecustomize": getattr(module, "chained", None),
        "first_sitecustomize": winner,
        "shadowed_by": winner if ours and winner not in ours else None,
        "package": os.path.dirname(os.path.abspath(__file__)),
        "pth_installed": pth_current is not None,
        "pth_path": pth,
        "pythonpath": os.environ.get("PYTHONPATH", ""),
    }
    section["why_not"] = _why_not(config, section, module, pth_current)
    section["active"] = module is not None and str(module.status).startswith("active")
    section["warnings"] = _warnings(section)
    return section


def _why_not(config: Config, section: Dict[str, Any], module: Any,
             pth_current: Optional[bool]) -> List[str]:
    """Why a training process started here would not load the injector, with the fix."""
    if module is not None:
        status = str(module.status)
        return [] if status.startswith("active") else [f"the bootstrap is loaded but {status}"]
    reasons: List[str] = []
    if not config.hook:
        reasons.append(f"PRIMUS_LENS_WANDB_HOOK={os.environ.get('PRIMUS_LENS_WANDB_HOOK', '')} "
                       "turns it off (kill switch); unset it to turn the injector on")
    if sys.flags.no_site:
        reasons.append("python runs with -S: neither sitecustomize nor .pth files are processed")
    if section["shadowed_by"]:
        ours = os.path.dirname(section["location"])
        reasons.append(f"another sitecustomize comes first on sys.path and wins: "
                       f"{section['shadowed_by']}; put {ours} before "
                       f"{os.path.dirname(section['shadowed_by'])} on PYTHONPATH")
    ignored = sys.flags.ignore_environment and any(
        is_bootstrap(os.path.join(p, "sitecustomize.py"))
        for p in section["pythonpath"].split(os.pathsep) if p)
    if ignored:
        reasons.append("python runs with -E/-I, which ignores PYTHONPATH and with it the "
                       "bootstrap there; `primus-lens install` (the .pth route) works under -E/-I")
    elif section["route"] is None:
        reasons.append("the bootstrap is neither on PYTHONPATH nor installed as a .pth: use "
                       f"`primus-lens run -- CMD`, PYTHONPATH={section['directory']}, or "
                       "`primus-lens install`")
    if pth_current is False and config.hook and not sys.flags.no_site:
        reasons.append(f"{section['pth_path']} is not this version's line: run `primus-lens "
                       "install` again")
    if not reasons:
        reasons.append("the bootstrap is in place but did not load in this process")
    return reasons


def _warnings(section: Dict[str, Any]) -> List[str]:
    """Things that work differently from what the layout intends, though the injector loads."""
    warnings = []
    location = section["location"]
    if section["layout"] == "image tree":
        tree_package = os.path.join(os.path.dirname(location), "primus_lens_inject")
        if os.path.abspath(tree_package) != section["package"]:
            warnings.append(f"primus_lens_inject is imported from {section['package']}, not from "
                            f"the tree beside the bootstrap ({tree_package}): put "
                            f"{os.path.dirname(location)} before "
                            f"{os.path.dirname(section['package'])} on PYTHONPATH")
    return warnings


def _record_section(config: Config) -> Dict[str, Any]:
    from .record import default_root, record_path
    from .topology import detect

    topology, problems = detect()
    root = config.output_path or default_root()
    path = record_path(root, topology.node, topology.local_rank)
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


def _probe(config: Config) -> str:
    """The endpoint check, bounded to a few seconds whatever the configured timeouts say."""
    from .reporter import probe

    print(credentials.scrub(f"probing {config.api_base_url} (up to {PROBE_TIMEOUT:g} s to connect "
                            "and to answer) ..."), file=sys.stderr, flush=True)
    return probe(dataclasses.replace(
        config, connect_timeout=min(config.connect_timeout, PROBE_TIMEOUT),
        read_timeout=min(config.read_timeout, PROBE_TIMEOUT)))


def _who_reports(config: Config) -> Dict[str, Any]:
    from .owner import explain
    from .topology import detect

    return explain(config, detect()[0])


def _reporting_section(config: Config, record_path: str) -> Dict[str, Any]:
    from . import spool
    from .wire import identity

    section: Dict[str, Any] = {
        "enabled": config.api_reporting,
        "will_send": config.api_reporting and config.has_identity,
        "endpoint": config.api_base_url,
        "identity": identity(config) if config.has_identity else None,
        "report_ranks": config.report_ranks,
        "this_process": _who_reports(config),
    }
    if not config.has_identity:
        section["note"] = "no POD_NAME or WORKLOAD_UID: nothing is sent, the record still works"
    if config.api_reporting:
        section["endpoint_check"] = _probe(config)
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


# -- words ---------------------------------------------------------------------------------------

def _words(value: Any, unit: str = "") -> str:
    """A value as a person writes it: true/false, unset, lists joined, numbers with their unit."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None or value in ((), "", [], {}):
        return "unset"
    if isinstance(value, (list, tuple)):
        return ", ".join(_words(item) for item in value)
    if isinstance(value, dict):
        return ", ".join(f"{key} {_words(item)}" for key, item in value.items())
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"{value} {unit}" if unit else str(value)


def _size(count: Any) -> str:
    number = float(count or 0)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if number < 1024 or unit == "GiB":
            return f"{number:.0f} {unit}" if unit == "bytes" else f"{number:.1f} {unit}"
        number /= 1024
    return ""  # not reached


def _unit(doc: str) -> str:
    return "s" if re.match(r"(Most )?[Ss]econds\b", doc) else ""


def _print_bootstrap(report: Dict[str, Any]) -> None:
    boot, python = report["bootstrap"], report["python"]
    print(f"injector: {'ACTIVE' if boot['active'] else 'NOT ACTIVE'} "
          f"in {python['executable']} (Python {python['version']})")
    for reason in boot["why_not"]:
        print(f"  why not: {reason}")
    for warning in boot["warnings"]:
        print(f"  warning: {warning}")
    if boot["location"]:
        state = boot["status"] or "not loaded in this process"
        print(f"  bootstrap: {boot['location']} ({boot['layout']}, by {boot['route']}; {state})")
    else:
        print(f"  bootstrap: not found on sys.path; this package's copy is in {boot['directory']}")
    print(f"  first sitecustomize on sys.path: {boot['first_sitecustomize'] or 'none'}")
    print(f"  chained sitecustomize: {boot['chained_sitecustomize'] or 'none'}")
    print(f"  .pth route: {'installed at ' + boot['pth_path'] if boot['pth_installed'] else 'not installed'}")


def _print_wandb(report: Dict[str, Any]) -> None:
    wandb = report["wandb"]
    if not wandb.get("installed"):
        print("wandb: not installed here")
        return
    supported = "supported" if wandb.get("supported") else "NOT supported"
    note = f"; {wandb['note']}" if wandb.get("note") else ""
    print(f"wandb: {wandb['installed']} ({supported}{note})")


def _print_record(report: Dict[str, Any]) -> None:
    record = report["record"]
    if record["save_local"]:
        print(f"record: {record['path']} [{'writable' if record['writable'] else 'NOT writable'}]")
    else:
        print("record: off (PRIMUS_LENS_WANDB_SAVE_LOCAL=false)")
    topology = record["topology"]
    source = f"from {topology['rank_source']}" if topology["rank_source"] else "no rank variable set"
    print(f"topology: node {topology['node']}, rank {topology['rank']} ({source}), local "
          f"rank {topology['local_rank']}, world size {topology['world_size']}")
    for problem in report["invalid_values"]:
        print(f"INVALID: {problem}")
    for name in record["invalid_rank_variables"]:
        print(f"INVALID: {name} is not a non-negative integer; the next source or 0 is used")


def _print_gpu(report: Dict[str, Any]) -> None:
    gpu = report["gpu"]
    if gpu.get("error"):
        print(f"gpu: error ({gpu['error']})")
    if not gpu.get("backend"):
        print(f"gpu: none ({gpu.get('reason') or 'no backend'}; requested {gpu.get('requested')})")
        for backend, why in sorted((gpu.get("rejected") or {}).items()):
            print(f"  {backend}: {why}")
        return
    driver = f", driver {gpu['driver_version']}" if gpu.get("driver_version") else ""
    print(f"gpu: {gpu['backend']} ({gpu.get('vendor')}{driver}); {gpu.get('reason')}; "
          f"scope {gpu.get('scope')}")
    for device in gpu.get("devices") or []:
        memory = _size(device.get("memory_total_bytes")) if device.get("memory_total_bytes") else "?"
        print(f"  device {device.get('index')}: {device.get('name')}, {memory}, "
              f"{device.get('uuid') or 'no uuid'}, bus {device.get('pci_bus_id') or 'unknown'}")
    mapping = gpu.get("mapping") or {}
    sampled = ", ".join(d.get("uuid") or d.get("pci_bus_id") or "?" for d in mapping.get("sampled", []))
    print(f"  this process samples: {sampled or 'nothing'} ({mapping.get('reason')})")
    for key, value in sorted((gpu.get("sample") or {}).items()):
        print(f"  {key} = {_words(value)}")


def _print_reporting(report: Dict[str, Any]) -> None:
    rep = report["reporting"]
    if not rep["enabled"]:
        print("reporting: off (PRIMUS_LENS_WANDB_API_REPORTING=false)")
    elif not rep["will_send"]:
        print(f"reporting: off: {rep.get('note')}")
    else:
        print(f"reporting: on, to {rep['endpoint']} (ranks: {rep['report_ranks']})")
    if rep.get("endpoint_check"):
        print(f"  endpoint {rep['endpoint']}: {rep['endpoint_check']}")
    mine = rep["this_process"]
    print(f"  this process {'reports' if mine['reports'] else 'does not report'}: {mine['why']}")
    if mine["reports"]:
        print(f"  keys: {mine['key_prefix'] or 'plain'} ({mine['key_prefix_why']})")
    if rep["identity"]:
        print(f"  identity: {_words(rep['identity'])}")
    sender = rep.get("sender")
    if sender:
        dropped = sum((sender.get("dropped") or {}).values())
        print(f"  sender (pid {sender.get('pid')}): {sender.get('state')}; {sender.get('rows_sent')} "
              f"rows sent, {sender.get('retries')} retries, {dropped} dropped, backlog "
              f"{_size(sender.get('backlog_bytes'))}")


def _print_configuration(report: Dict[str, Any]) -> None:
    print("configuration:")
    for row in report["configuration"]:
        marker = "" if row["value"] == row["default"] else "   (set)"
        print(f"  {row['variable']} = {_words(row['value'], _unit(row['doc']))}{marker}")


SECTIONS = (_print_bootstrap, _print_wandb, _print_record, _print_gpu, _print_reporting,
            _print_configuration)


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(prog="primus-lens doctor", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    report = credentials.scrub_tree(collect())  # no secret of ours (base URL password) printed
    if args.json:
        print(json.dumps(report, indent=2, default=str, sort_keys=True))
    else:
        for section in SECTIONS:
            section(report)
    return 0
