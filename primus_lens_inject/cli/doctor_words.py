"""``primus-lens doctor`` in words: one section each for what ``doctor.collect`` found."""

from __future__ import annotations

import re
from typing import Any, Dict


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
        print(f"  if it cannot be written there: {record['fallback']}")
    elif record["private_spool"]:
        print("record: off (PRIMUS_LENS_WANDB_SAVE_LOCAL=false); rows are sent from a private "
              "spool of each process, removed once delivered")
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
        print("reporting: off (PRIMUS_LENS_WANDB_API_REPORTING=false)"
              + ("; the OTLP sink sends the rows (otlp below)" if report["otlp"]["enabled"]
                 else "; nothing is sent, the record still works"))
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
    if sender and sender.get("endpoint"):  # the Lens sink ran (not only OTLP, or the record)
        print(f"  sender (pid {sender.get('pid')}): {_sender_words(sender)}")
    record = (sender or {}).get("record")
    if record:
        print(f"  record at the last exit: {record.get('rows_spilled_at_exit')} rows spilled to "
              f"{record.get('spill_path') or 'no fallback'}, {record.get('rows_lost_at_exit')} "
              f"lost, {record.get('rows_left_out')} left out while stalled "
              f"({record.get('reason') or 'stalled'})")


def _sender_words(sender: Dict[str, Any]) -> str:
    """A sink's counters from the status file beside the record; a state the process never
    closed ("starting", "running") is not shown as current once that process is gone."""
    dropped = sum((sender.get("dropped") or {}).values())
    state = sender.get("state")
    if sender.get("process_alive") is False and not str(state).startswith(("exited", "stopped")):
        state = f"not running (process {sender.get('pid')} ended without closing; last: {state})"
    return (f"{state}; {sender.get('rows_sent')} rows sent, "
            f"{sender.get('retries')} retries, {dropped} dropped, backlog "
            f"{_size(sender.get('backlog_bytes'))}")


def _print_otlp(report: Dict[str, Any]) -> None:
    otlp = report["otlp"]
    if not otlp["enabled"]:
        print("otlp: off (PRIMUS_LENS_OTLP=false)")
    else:
        headers = ", ".join(otlp["headers"]) or "none"
        print(f"otlp: on, to {otlp['endpoint']} ({otlp['protocol']}, compression "
              f"{otlp['compression']}, timeout {_words(otlp['timeout_s'], 's')}, "
              f"headers: {headers})")
        if otlp.get("sender"):
            print(f"  sender: {_sender_words(otlp['sender'])}")
    for warning in otlp["warnings"]:  # whether our sink is on or not: wandb's own leaks them
        print(f"  warning: {warning}")


def _print_configuration(report: Dict[str, Any]) -> None:
    print("configuration:")
    for row in report["configuration"]:
        marker = "" if row["value"] == row["default"] else "   (set)"
        print(f"  {row['variable']} = {_words(row['value'], _unit(row['doc']))}{marker}")


def _print_agent(report: Dict[str, Any]) -> None:
    agent = report["agent"]
    mode = ("PRIMUS_LENS_AGENT=true: this process only records, the pod agent sends"
            if agent["expected"] else "PRIMUS_LENS_AGENT=false: this process sends its own record")
    if agent["serving"]:
        print(f"agent: serves this pod (pid {agent.get('pid')}, port {agent.get('port')}, "
              f"/healthz {agent.get('healthz', 'not asked')}); {mode}")
    else:
        why = agent.get("note") or f"/healthz: {agent.get('healthz')}"
        print(f"agent: none serves this pod ({why}); {mode}"
              + ("; the record waits for an agent" if agent["expected"] else ""))


def _print_pulse(report: Dict[str, Any]) -> None:
    pulse = report["pulse"]
    if pulse["live"]:
        print(f"rank pulse: on in this process since {pulse['reason']}, steps from the "
              f"{pulse['step_source']} source, {pulse['lines']} lines to {pulse['path']}, "
              f"{pulse['stalls']} stalls")
        return
    if not pulse["on"]:
        print(f"rank pulse: off ({pulse['why_not']})")
        return
    source = ("torch's optimizer step hook (torch " + pulse["torch"] + ")"
              if pulse["step_source"] == "optimizer" else
              "the owner's wandb step (no torch >= 2.0 here)")
    print(f"rank pulse: on from the first of {', '.join(pulse['starts_at'])}; steps counted by "
          f"{source}")
    print(f"  a line every {_words(pulse['interval'], 's')} to {pulse['path']} (read by the pod "
          "agent and `primus-lens report`; the process itself sends none of it)")
    print(f"  stall: no step for max({_words(pulse['stall_seconds'], 's')}, "
          f"{_words(pulse['stall_factor'])} x the median step time): every thread's stack")


_SECTIONS = (_print_bootstrap, _print_wandb, _print_record, _print_gpu, _print_reporting,
             _print_otlp, _print_agent, _print_pulse, _print_configuration)


def print_report(report: Dict[str, Any]) -> None:
    """The report as a person reads it, section by section, on stdout."""
    for section in _SECTIONS:
        section(report)
