"""``primus-lens doctor [--json]``: is the injector active in this interpreter, and if not, why.

Run it the way the training job runs (same image, same environment, same PYTHONPATH, same python
options): it reports what a training process started there would do, without importing wandb or
starting anything. ``collect`` gathers facts (the ``--json`` object); ``doctor_words`` puts them
into words.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
from typing import Any, Dict, List, Optional

from .. import compat, credentials
from ..config import Config, variable_rows
from .bootstrap import BOOTSTRAP_STATE, bootstrap_dir, is_bootstrap, pth_path, pth_state
from .doctor_words import print_report

_PROBE_TIMEOUT = 3.0  # seconds, for connecting and for the answer: doctor must never hang
NOT_ACTIVE = 3  # doctor's exit status when a training process here would run without us


def _wandb_section() -> Dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        text = version("wandb")
    except PackageNotFoundError:
        return {"installed": None, "supported": False, "note": "wandb is not installed here"}
    parsed = compat.parse_version(text)
    return {"installed": text, "supported": compat.supported(parsed),
            "note": compat.version_note(parsed)}


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


def _shadowing(winner: Optional[str], ours: List[str]) -> Optional[str]:
    """The first sitecustomize on sys.path when it is not ours and keeps ours from running:
    ours comes after it, or it sits in a PYTHONPATH entry where ours would be (a launcher that
    exports its own PYTHONPATH, as Primus's ODC launcher does). None otherwise: the image's own
    sitecustomize in the standard library is no obstacle, just a sign that ours is not there."""
    if winner is None or winner in ours:
        return None
    entry = os.path.dirname(winner)
    if os.path.basename(winner).startswith("__init__."):  # a sitecustomize package
        entry = os.path.dirname(entry)
    pythonpath = {os.path.abspath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                  if p}
    return winner if ours or entry in pythonpath else None


def _bootstrap_section(config: Config) -> Dict[str, Any]:
    module = sys.modules.get(BOOTSTRAP_STATE)
    pth = pth_path()
    pth_current = pth_state()
    found = _sitecustomizes(_startup_path())
    winner = found[0] if found else None
    ours = [path for path in found if is_bootstrap(path)]
    location: Optional[str] = getattr(module, "__file__", None)
    route: Optional[str]
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
        "shadowed_by": _shadowing(winner, ours),
        "package": os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
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
    shadowed = section["shadowed_by"] if pth_current is None else None  # a .pth is not shadowed
    if shadowed and section["location"]:
        ours = os.path.dirname(section["location"])
        reasons.append(f"another sitecustomize comes first on sys.path and wins: {shadowed}; put "
                       f"{ours} before {os.path.dirname(shadowed)} on PYTHONPATH, or use the "
                       ".pth route (`primus-lens install`), which no sitecustomize can shadow")
    elif shadowed:
        reasons.append(f"a sitecustomize that is not ours comes first on sys.path and never runs "
                       f"ours: {shadowed} (a launcher that sets its own PYTHONPATH does this); "
                       "the cure is the .pth route, which survives that: `primus-lens install` "
                       "(the training-base image installs it)")
    ignored = sys.flags.ignore_environment and any(
        is_bootstrap(os.path.join(p, "sitecustomize.py"))
        for p in section["pythonpath"].split(os.pathsep) if p)
    if ignored:
        reasons.append("python runs with -E/-I, which ignores PYTHONPATH and with it the "
                       "bootstrap there; `primus-lens install` (the .pth route) works under -E/-I")
    elif section["route"] is None and not shadowed:
        reasons.append("the bootstrap is neither on PYTHONPATH nor installed as a .pth: use "
                       f"`primus-lens run -- CMD`, PYTHONPATH={section['directory']}, or "
                       "`primus-lens install`")
    if pth_current is False and config.hook and not sys.flags.no_site:
        reasons.append(f"{section['pth_path']} (or the module it imports) is not what this "
                       "version writes: run `primus-lens install` again")
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
    """Where a training process started here keeps its record: the session's own answer
    (``paths.record_location``), plus the places it may have ended up (``candidates``)."""
    from ..paths import record_location
    from ..report.owner import process_reports
    from ..topology import detect

    topology, problems = detect()
    where = record_location(config, topology, process_reports(config, topology)[0])
    shown = where.path if not where.private else None  # a private spool is named at run time
    return {
        "save_local": config.save_local,
        "path": shown,
        "fallback": (where.fallback if where.fallback_known  # else named by the writer's pid
                     else where.fallback.replace(f"pid-{os.getpid()}", "pid-<pid>")) or None,
        "private_spool": bool(where.private),
        "candidates": where.candidates(),
        "writable": _writable(os.path.dirname(where.path)) if where.path else None,
        "topology": topology.__dict__,
        "invalid_rank_variables": [name for name, _ in problems],
    }


def _pulse_section(config: Config) -> Dict[str, Any]:
    """Whether a training process started here pulses (docs/pulse.md), with which step source,
    and where its lines go; inside a process that pulses, what its pulse is doing."""
    from importlib.metadata import PackageNotFoundError, version

    from .. import pulse
    from ..paths import record_location
    from ..pulseline import pulse_path
    from ..topology import detect

    live = pulse.describe()
    if live["pulsing"]:
        return {"on": True, "live": True, **live}
    where = record_location(config, detect()[0], reporting=False)
    try:
        torch = version("torch")
    except PackageNotFoundError:
        torch = None
    modern = torch is not None and compat.parse_version(torch) >= (2, 0)
    section: Dict[str, Any] = {
        "on": config.hook and config.pulse, "live": False,
        "why_not": None if config.hook and config.pulse else
        ("PRIMUS_LENS_WANDB_HOOK=false" if not config.hook else "PRIMUS_LENS_PULSE=false"),
        "starts_at": ["torch.distributed.init_process_group", "jax.distributed.initialize",
                      "wandb.init"],
        "step_source": "optimizer" if modern else "wandb",
        "torch": torch,
        "path": pulse_path(where.path) if where.path else None,
        "fallback": (pulse_path(where.fallback) if where.fallback_known  # else the writer's pid
                     else pulse_path(where.fallback).replace(f"pid-{os.getpid()}", "pid-<pid>"))
        if where.fallback else None,
        "interval": config.pulse_interval,
        "stall_seconds": config.stall_seconds, "stall_factor": config.stall_factor}
    if section["on"] and not where.path:
        section.update(on=False, why_not="PRIMUS_LENS_WANDB_SAVE_LOCAL=false: no record directory")
    return section


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
    from ..metrics.gpu import describe  # never raises: a failure is reported in its "error" key
    from ..topology import detect

    return describe(config, detect()[0])


def _probe(config: Config) -> str:
    """The endpoint check, bounded to a few seconds whatever the configured timeouts say."""
    from ..report.transport import probe

    print(credentials.scrub(f"probing {config.api_base_url} (up to {_PROBE_TIMEOUT:g} s to connect "
                            "and to answer) ..."), file=sys.stderr, flush=True)
    return probe(dataclasses.replace(
        config, connect_timeout=min(config.connect_timeout, _PROBE_TIMEOUT),
        read_timeout=min(config.read_timeout, _PROBE_TIMEOUT)))


def _who_reports(config: Config) -> Dict[str, Any]:
    from ..report.owner import explain
    from ..topology import detect

    return explain(config, detect()[0])


def _reporting_section(config: Config, candidates: List[str]) -> Dict[str, Any]:
    from ..report.identity import identity

    section: Dict[str, Any] = {
        "enabled": config.api_reporting,
        "will_send": config.api_reporting and config.has_identity,
        "endpoint": config.api_base_url,
        "identity": identity(config) if config.has_identity else None,
        "report_ranks": config.report_ranks,
        "this_process": _who_reports(config),
    }
    if not config.has_identity:  # Lens files rows by pod; the OTLP sink needs no identity
        section["note"] = "no POD_NAME or WORKLOAD_UID: nothing is sent to Lens" + (
            "; the OTLP sink sends the rows (otlp below)" if config.otlp
            else ", the record still works")
    if config.api_reporting:
        section["endpoint_check"] = _probe(config)
    section["sender"] = _sender_status(candidates)
    return section


# wandb 0.31 exports its own telemetry with the OpenTelemetry SDK in online runs, to W&B; the SDK
# adds these variables' headers to every request (docs/otlp.md, "Why our own variable names").
_WANDB_OTEL_SINCE = (0, 31)
_OTEL_HEADERS = ("OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_METRICS_HEADERS")
_OFFLINE_MODES = ("offline", "disabled", "dryrun")


def _otel_headers_warning(wandb_version: Optional[str]) -> Optional[str]:
    """Why the standard OTLP headers variables are a leak here, or None: they are set, and a wandb
    that exports its own telemetry would run online (``WANDB_MODE`` is not offline/disabled)."""
    leaked = [name for name in _OTEL_HEADERS if (os.environ.get(name) or "").strip()]
    mode = (os.environ.get("WANDB_MODE") or "").strip().lower()
    if not leaked or wandb_version is None or mode in _OFFLINE_MODES \
            or compat.parse_version(wandb_version) < _WANDB_OTEL_SINCE:
        return None
    return (f"{' and '.join(leaked)} set: wandb {wandb_version} exports its own telemetry with "
            "OpenTelemetry in online runs, to W&B (its /sdk/otel/v1/ routes), and the "
            "OpenTelemetry SDK adds these headers to its requests, so your collector's "
            "credentials are sent to W&B. Put them in PRIMUS_LENS_OTLP_HEADERS (the injector "
            f"reads it first) and unset {' and '.join(leaked)}")


def _otlp_section(config: Config, candidates: List[str]) -> Dict[str, Any]:
    """The OTLP sink as a training process would run it; header names only, never values."""
    from ..report.otlp import settings

    s = settings(config)
    sender = _sender_status(candidates) or {}
    warning = _otel_headers_warning(_wandb_section()["installed"])
    return {
        "enabled": config.otlp,
        "endpoint": s.endpoint,
        "protocol": s.protocol,
        "compression": "gzip" if s.gzip else "none",
        "timeout_s": s.timeout,
        "headers": [name for name, _ in s.headers],
        "tls": {"ca_file": s.certificate, "client_certificate": s.client_certificate,
                "client_key": bool(s.client_key)},
        "sender": sender.get("otlp"),
        "warnings": [warning] if warning else [],
    }


def _sender_status(candidates: List[str]) -> Optional[Dict[str, Any]]:
    """The newest sender status beside any record this process may have written: the record
    may have fallen back to the temporary directory, or sit in a private spool."""
    from ..recordline import STATUS_SUFFIX, sibling

    newest: Optional[Dict[str, Any]] = None
    for record in candidates:
        try:
            with open(sibling(record, STATUS_SUFFIX)) as f:
                status = json.load(f)
        except (OSError, ValueError):
            continue
        if isinstance(status, dict) and (newest is None
                                         or status.get("updated", 0) > newest.get("updated", 0)):
            newest = status
    if newest is not None:  # a status says "running" until its process closes it, or dies
        alive = _alive(newest.get("pid"))
        newest["process_alive"] = alive
        if isinstance(newest.get("otlp"), dict):
            newest["otlp"] = dict(newest["otlp"], pid=newest.get("pid"), process_alive=alive)
    return newest


def _agent_section(config: Config, record: Dict[str, Any]) -> Dict[str, Any]:
    """Whether a pod agent serves this process's record root: its file there, and its
    ``/healthz`` on this host (bounded): docs/agent.md."""
    from urllib.request import urlopen

    from ..agent.service import AGENT_FILE

    section: Dict[str, Any] = {"expected": config.agent, "serving": False}
    if not record.get("path"):
        section["note"] = "no shared record root (a private spool): this process sends itself"
        return section
    root = os.path.dirname(os.path.dirname(os.path.dirname(record["path"])))
    section["file"] = path = os.path.join(root, AGENT_FILE)
    try:
        with open(path) as f:
            facts = json.load(f)
    except (OSError, ValueError) as exc:
        section["note"] = f"no agent file ({getattr(exc, 'strerror', None) or exc})"
        return section
    if not isinstance(facts, dict):
        section["note"] = "the agent file is not a JSON object"
        return section
    section.update((key, facts.get(key)) for key in ("pid", "port", "updated", "ended"))
    port = facts.get("port")
    if facts.get("ended"):
        section["note"] = "the agent ended"
    elif isinstance(port, int) and 0 < port < 65536:
        try:
            with urlopen(f"http://127.0.0.1:{port}/healthz", timeout=_PROBE_TIMEOUT) as answer:
                section["healthz"] = f"HTTP {answer.status}"
                section["serving"] = answer.status == 200
        except Exception as exc:  # refused, timed out, an HTTP error: not served from here
            section["healthz"] = f"{type(exc).__name__}: {exc}"
    else:
        section["note"] = "the agent serves no port: its /healthz cannot be asked"
        section["serving"] = _alive(facts.get("pid")) is True
    return section


def _alive(pid: Any) -> Optional[bool]:
    """Whether the process that wrote a status still runs here (None: not a pid)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's: it exists
        return True
    return True


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
        "reporting": _reporting_section(config, record["candidates"]),
        "otlp": _otlp_section(config, record["candidates"]),
        "agent": _agent_section(config, record),
        "pulse": _pulse_section(config),
    }


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(prog="primus-lens doctor", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    report = credentials.scrub_tree(collect())  # no secret of ours (base URL password) printed
    if args.json:
        print(json.dumps(report, indent=2, default=str, sort_keys=True))
    else:
        print_report(report)
    return 0 if report["bootstrap"]["active"] else NOT_ACTIVE
