"""Which process reports which rows, and under whose name (docs/reporting.md).

Frameworks disagree on who calls ``wandb.init``: rank 0 (most), the last rank (Megatron-LM), the
first rank of the last pipeline stage (TorchTitan), every rank (SaFE's Monarch client, wandb's
"one run per process").  So the process that owns a run reports it, and nobody else does.

The server keeps one row per workload and step, whatever the pod or rank, and merges every write
into it, so two owners in one workload must not send the same keys.  Which owners might collide
has to be decided from what a process knows when its run starts, identically in every process,
with no coordination (a registry of owners would race across pods).  The rule, per run:

* a run in a wandb group (the run's own ``group`` as wandb resolved it: ``group=``, which
  Primus's trainers fill from ``WANDB_GROUP``, or ``WANDB_RUN_GROUP``) says it is one of several
  runs of one job: its keys get its label, ``rank{R}/`` (or the replica/rank tokens of its
  name, e.g. ``replica1-rank3/``, where launchers leave the rank unset);
* otherwise the owner at global rank 0 sends plain keys (everyone's convention), and so does the
  owner at the last global rank when the process has imported a Megatron-style framework
  (Megatron-LM, Primus's Megatron backends: ``frameworks.megatron_style``), whose convention is
  to log there; without one the last rank is labelled, or a script whose every rank starts a run
  would have rank 0 and the last rank overwrite each other;
* any other owner is prefixed too: a run started on a middle rank cannot know that no other rank
  started one (TorchTitan's pipeline owner and per-node runs look the same from inside).

Each run's outcome is a ``Writer``: the writing process's identity (pod name and UID, workload
UID, global rank), whether its rows are sent, and the key prefix.  It is stored once beside the
record as ``wandb_metrics.writers/<tag>.json`` (the tag is a digest of its content) and every
record line carries the tag, so whichever process sends a shared record sends each line under
its own writer's identity, never its own.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Optional, Tuple

from .. import credentials
from ..config import Config
from ..paths import make_side_dir
from ..recordline import WRITERS_SUFFIX, sibling
from ..topology import Topology
from . import frameworks, spool
from .identity import identity

_NAME_TOKEN = re.compile(r"(?i)(?<![a-z])(replica|rank)[-_]?(\d+)")


@dataclass(frozen=True, eq=False)  # compared by identity: the sender batches per writer
class Writer:
    """How the rows of one run of one process are sent."""

    identity: Dict[str, str] = field(default_factory=dict)  # ``identity`` fields of the body
    rank: int = 0
    report: bool = False
    key_prefix: str = ""
    reason: str = ""

    @property
    def tag(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]

    @classmethod
    def from_json(cls, obj: Any) -> Optional[Writer]:
        try:
            identity = {str(k): str(v) for k, v in dict(obj["identity"]).items()}
            return cls(identity, int(obj["rank"]), obj["report"] is True, str(obj["key_prefix"]),
                       str(obj.get("reason", "")))
        except (KeyError, TypeError, ValueError, AttributeError):
            return None


def lens_reports(config: Config) -> bool:
    """Whether the Lens sink runs: reporting on, and an identity the server can file rows under."""
    return config.api_reporting and config.has_identity


def process_reports(config: Config, topology: Topology) -> Tuple[bool, str]:
    """Whether this process sends the runs it owns to any sink (Lens, OTLP), and why (doctor
    and debug say it).  One decision for every sink, so each exports a row once per job."""
    if not config.otlp:
        if not config.api_reporting:
            return False, "PRIMUS_LENS_WANDB_API_REPORTING=false"
        if not config.has_identity:
            return False, "no POD_NAME or WORKLOAD_UID: local record only"
    policy, rank = config.report_ranks, topology.rank
    if policy in ("owner", "all"):
        return True, (f"PRIMUS_LENS_REPORT_RANKS={policy}: every process that owns a wandb run "
                      f"reports it, this one (global rank {rank}) included")
    ranks = {0} if policy == "zero" else {int(part) for part in policy.split(",")}
    if rank in ranks:
        return True, f"global rank {rank} is among PRIMUS_LENS_REPORT_RANKS={policy}"
    return False, f"global rank {rank} is not among PRIMUS_LENS_REPORT_RANKS={policy}"


def _text(run: Any, name: str) -> str:
    try:
        value = getattr(run, name)
    except Exception:
        return ""
    return value if type(value) is str else ""  # old wandb's RunDisabled answers with itself


def _run_traits(run: Any, environ: Optional[Dict[str, str]] = None) -> Tuple[str, str, bool]:
    """(group, name, disabled) of a run, read once at its start."""
    env = os.environ if environ is None else environ
    group = _text(run, "group") or env.get("WANDB_RUN_GROUP", "")
    name = _text(run, "name") or env.get("WANDB_NAME", "") or env.get("WANDB_RUN_NAME", "")
    try:
        disabled = type(run).__name__ == "RunDisabled" or getattr(run, "disabled", False) is True
    except Exception:
        disabled = False
    return group.strip(), name.strip(), disabled


def label(topology: Topology, run_name: str) -> str:
    """``rank{R}``, or the replica/rank tokens of a run name that carries its rank."""
    tokens = [(kind.lower(), int(number)) for kind, number in _NAME_TOKEN.findall(run_name)]
    if any(kind == "rank" for kind, _ in tokens):
        return "-".join(f"{kind}{number}" for kind, number in tokens)
    return f"rank{topology.rank}"


def key_prefix(config: Config, topology: Topology, group: str, run_name: str,
               megatron: Optional[str] = None) -> Tuple[str, str]:
    """The rule of the module docstring: (prefix, why).  ``megatron``: the Megatron-style module
    the process has imported, if any."""
    mine = label(topology, run_name) + "/"
    policy = config.report_ranks
    if policy == "all":
        return mine, "PRIMUS_LENS_REPORT_RANKS=all labels every owner's keys"
    if policy == "zero" or policy.isdigit():
        return "", f"PRIMUS_LENS_REPORT_RANKS={policy}: one rank reports, plain keys"
    if group:
        return mine, (f"the run is in wandb group {credentials.scrub(group)!r}: "
                      "one of several runs of one job")
    last = topology.world_size - 1
    if topology.rank == 0:
        return "", "the run is on rank 0, a single-owner convention: plain keys"
    if topology.rank == last and megatron:
        return "", (f"the run is on the last rank ({last}) and {megatron} is imported: "
                    "Megatron's single-owner convention, plain keys")
    if topology.rank == last:
        return mine, (f"the run is on the last rank ({last}) without a Megatron-style framework "
                      f"({', '.join(frameworks.MEGATRON_STYLE)}) imported: rank 0 may own "
                      "a run too")
    return mine, (f"the run is on global rank {topology.rank}, neither the first nor the last: "
                  "another rank may own a run too")


def _disabled_job_wide(env: Dict[str, str]) -> bool:
    return env.get("WANDB_MODE", "").strip().lower() == "disabled" or \
        env.get("WANDB_DISABLED", "").strip().lower() in ("1", "true", "yes")


def writer_for(config: Config, topology: Topology, run: Any) -> Writer:
    """Decide, at a run's start, whether and how its rows are sent."""
    env: Dict[str, str] = dict(os.environ)
    report, why = process_reports(config, topology)
    group, name, disabled = _run_traits(run, env)
    if report and disabled and topology.rank != 0 and not _disabled_job_wide(env):
        # `wandb.init(mode="disabled")` on all ranks but one: the code chose another owner
        report, why = False, "the run is in wandb's disabled mode on a rank other than 0"
    prefix, how = key_prefix(config, topology, group, name, frameworks.megatron_style())
    who = identity(config) if config.has_identity else {}
    return Writer(who, topology.rank, report, prefix, f"{why}; {how}" if report else why)


def legacy_writer(config: Config, topology: Topology) -> Writer:
    """For record lines without a writer tag (``recordline``'s rule: written by an older
    injector): this process's own identity, as those versions sent them."""
    prefix = f"rank{topology.rank}/" if config.report_ranks == "all" else ""
    return Writer(identity(config), topology.rank, True, prefix, "untagged record line")


def _writers_dir(record_path: str) -> str:
    return sibling(record_path, WRITERS_SUFFIX)


def register(record_path: str, writer: Writer) -> None:
    """Store ``writer`` beside the record before any line carries its tag (once per content)."""
    path = os.path.join(_writers_dir(record_path), writer.tag + ".json")
    if os.path.exists(path):
        return
    make_side_dir(os.path.dirname(path))  # the pod agent reads it (and may be another user)
    spool.write_atomic(path, json.dumps(asdict(writer), sort_keys=True))


class Writers:
    """The sender's view of a record's writers: tag -> ``Writer``, read once (they never change)."""

    def __init__(self, record_path: str) -> None:
        self.directory = _writers_dir(record_path)
        self._known: Dict[str, Optional[Writer]] = {}

    def get(self, tag: str) -> Optional[Writer]:
        if tag not in self._known:
            if not re.fullmatch(r"[0-9a-f]{12}", tag):
                return None
            try:
                with open(os.path.join(self.directory, tag + ".json")) as f:
                    writer = Writer.from_json(json.load(f))
            except (OSError, ValueError):
                return None  # not cached: a writer that registers late is found next time
            self._known[tag] = writer
        return self._known[tag]


def explain(config: Config, topology: Topology) -> Dict[str, Any]:
    """For doctor: does this process report, and how its keys would be named (no run yet: the
    group comes from ``WANDB_RUN_GROUP``, or ``WANDB_GROUP``, which Primus's trainers pass as
    ``group=``; the name from ``WANDB_NAME``/``WANDB_RUN_NAME``; doctor imports no Megatron)."""
    report, why = process_reports(config, topology)
    group, name, _ = _run_traits(None)
    group = group or os.environ.get("WANDB_GROUP", "").strip()
    prefix, how = key_prefix(config, topology, group, name, frameworks.megatron_style())
    return {"reports": report, "why": why, "policy": config.report_ranks,
            "global_rank": topology.rank, "world_size": topology.world_size,
            "key_prefix": prefix, "key_prefix_why": how}
