"""The pod agent's one life: find the pod's records, send each of them, serve, drain, end.

``primus-lens agent`` runs one ``Agent`` per pod (docs/agent.md).  Its main thread only
discovers and keeps time; everything else is on daemon threads of the parts it starts:

- every ``DISCOVERY_SECONDS`` it lists the record root (``paths.rank_dirs``) and gives each new
  record a ``report.Reporter`` of its own, the same sinks, cursors, writers, identities and
  policy a trainer uses, with two differences: the agent's reporters share one pace per kind of
  sink (``report.Paces``: about one request a second per pod and destination, batches growing
  while they wait), and none sends detection reports, which one ``report.PodDetections`` sends
  for the whole pod (jittered, one per job);
- a reporter's sinks take the record's owner lock before they send a line (``Control.own``), so
  a trainer that sends its own record (no ``PRIMUS_LENS_AGENT``) keeps it, and the agent waits:
  two processes never send one line;
- the heartbeat rewrites ``<root>/agent.json`` (pid, address, port, started, updated), which
  ``primus-lens doctor`` in a trainer reads;
- the HTTP endpoint (``http.Server``: ``/metrics``, ``/healthz``, ``/readyz``, docs/prometheus.md)
  and, with OTLP on, the pulse export (``pulse_otlp.PulseExport``) are parts of their own; this
  module starts and ends them.

On SIGTERM (or SIGINT) the command calls ``drain``: the pace is lifted, and the agent keeps
sending until no trainer of the pod is alive (``liveness``: their writing locks are gone) and
every record is acknowledged by every sink, or until ``PRIMUS_LENS_AGENT_DRAIN_SECONDS``; then
``close`` stops everything and says what is left in the records, once (``Summary``).  Memory
holds one batch per sink whatever the backlog: the records are the queues.
"""

from __future__ import annotations

import gc
import json
import os
import threading
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Set, Tuple

from .. import fastjson, guard, liveness, log, paths
from ..config import Config
from ..lifecycle import Part
from ..report import Paces, PodDetections, Reporter, write_atomic
from ..topology import Topology
from .access import refusal

DISCOVERY_SECONDS = 2.0  # how often the root is listed (and the heartbeat written)
AGENT_FILE = "agent.json"  # under the record root: who serves this pod, for doctor
_DRAIN_ROUND = 1.0  # seconds one drain round waits for the reporters before it looks again
_DRAIN_PAUSE = 0.2  # a round that could not wait (a record another process sends) pauses this
_CLOSE_SECONDS = 2.0  # the parts' close after the drain, at most
_READ = 1 << 20
_GC_YOUNG = 5000  # allocations between young collections (Python: 700), see _collect_less
_SINK_WORDS = {"rows": "Lens", "otlp": "OTLP"}  # sink names (``report.sinks``) as said


class Left(NamedTuple):
    """What a record still holds for one sink at the end."""

    record: str
    sink: str
    lines: int
    bytes: int


class Summary(NamedTuple):
    """The agent's end, for its one last line."""

    records: int
    delivered: Dict[str, int]  # rows acknowledged, by sink
    detections_sent: int
    detections_deduplicated: int
    detections_left: int
    left: List[Left]
    trainers_alive: int  # trainers still writing when the drain ended
    refused: int = 0  # records left to their trainers (``access.refusal``)

    def line(self, root: str) -> str:
        sent = ", ".join(f"{rows} rows to {_SINK_WORDS.get(sink, sink)}"
                         for sink, rows in sorted(self.delivered.items()))
        text = (f"delivered {sent or 'no rows'} from {self.records} record(s) and "
                f"{self.detections_sent} detection report(s)"
                + (f" ({self.detections_deduplicated} identical ones not sent)"
                   if self.detections_deduplicated else ""))
        if self.refused:
            text += (f"; {self.refused} record(s) left to their trainers (their directories "
                     "are not the agent's to write)")
        if not self.left and not self.detections_left:
            return f"{text}; nothing left in the records under {root}"
        lines = sum(left.lines for left in self.left)
        size = sum(left.bytes for left in self.left)
        kinds = ", ".join(sorted({_SINK_WORDS.get(left.sink, left.sink) for left in self.left}))
        records = len({left.record for left in self.left})
        where = f"{lines} line(s) ({size} bytes) for {kinds} in {records} record(s)" \
            if self.left else ""
        detections = f"{self.detections_left} detection report(s)" if self.detections_left else ""
        alive = f"; {self.trainers_alive} trainer(s) still writing" if self.trainers_alive else ""
        return (f"{text}; left in the records under {root}: "
                f"{' and '.join(part for part in (where, detections) if part)}{alive} "
                "(kept there: whoever sends those records next sends them)")


def _unacked(record: str, offset: int) -> Tuple[int, int]:
    """(complete lines, bytes) of ``record`` after ``offset``."""
    lines = size = 0
    try:
        with open(record, "rb") as f:
            f.seek(offset)
            while True:
                piece = f.read(_READ)
                if not piece:
                    break
                lines += piece.count(b"\n")
                size += len(piece)
    except OSError:
        pass
    return lines, size


def _collect_less() -> None:
    """Fewer cyclic garbage collections in the agent: it keeps thousands of parsed lines alive
    for its readers (``recordline.SharedLines``) and makes dozens of short-lived objects per
    row, nearly all freed by their reference counts.  With Python's defaults the collections
    walked every kept line and every module again and again: measured 0.17 s of collection per
    30 s at 1,000 rows/s, 0.065 s with this, at the same peak memory draining 128,000 rows
    (a young generation ten times larger saved more CPU and cost 28 MiB; docs/agent.md).  What
    start-up made (modules, the configuration) is never garbage: frozen, no collection walks it."""
    gc.freeze()
    gc.set_threshold(_GC_YOUNG)


class Agent:
    """The pod agent: ``start``, ``tick`` every ``DISCOVERY_SECONDS`` until told to stop, then
    ``drain`` and ``close``."""

    def __init__(self, config: Config, topology: Topology, root: str) -> None:
        self.config = config
        self.topology = topology
        self.root = os.path.abspath(root)
        self.paces = Paces()
        self.reporters: Dict[str, Reporter] = {}
        self.detections = PodDetections(config, self.root)
        self.server: Any = None  # http.Server, once started
        self.pulse: Optional[Part] = None  # pulse_otlp.PulseExport, with OTLP on
        self._ready: Tuple[bool, str] = (False, "the first look at the record root is not done")
        self._started = time.time()
        self._lens = False
        self._seen_alive = False  # a trainer's writing lock was seen held (``trainers_gone``)
        self.refused: Set[str] = set()  # records whose side files this user cannot keep
        # msgspec for the rows' JSON where this environment has it (the injector image does)
        self.json_library = fastjson.accelerate() or "the standard library"

    # -- start ----------------------------------------------------------------------------------

    def start(self) -> None:
        """Serve (``OSError`` when the port cannot be bound), look at the root, write the agent
        file."""
        from .http import Server  # prometheus_client and the exposition load only here

        self.server = Server(self.config, self.root, self.ready)
        self.server.start()
        if self.config.otlp:
            from .pulse_otlp import PulseExport

            self.pulse = PulseExport(self.config, self.root)
            self.pulse.start()
        _collect_less()
        self.tick()

    @property
    def port(self) -> int:
        return int(self.server.port) if self.server is not None else 0  # 0: not serving yet

    def ready(self) -> Tuple[bool, str]:
        """``/readyz``: (True, "") once a look at the root found it readable."""
        return self._ready

    # -- the running agent ----------------------------------------------------------------------

    def tick(self) -> None:
        """One round of the main loop: new records, the heartbeat."""
        self.discover()
        self._heartbeat()

    def discover(self) -> None:
        """A reporter for every record under the root that has none yet."""
        try:
            os.makedirs(self.root, exist_ok=True)  # the volume may be empty until a trainer starts
            os.listdir(self.root)
        except OSError as exc:
            self._ready = (False, f"the record root {self.root} is not readable "
                                  f"({exc.strerror or exc})")
            return
        for rank_dir in paths.rank_dirs(self.root):
            record = paths.record_in(rank_dir)
            if record not in self.reporters and os.path.isfile(record) and self._may_send(record):
                self._add(record)
        self._ready = (True, "")

    def _may_send(self, record: str) -> bool:
        """Whether the agent can keep the record's side files (``access.refusal``); if not, it
        says so once and leaves the record to its trainer, looking again at every discovery (a
        trainer in agent mode may be between making a directory and opening it to all)."""
        why = refusal(record)
        if why:
            self.refused.add(record)
            log.warn(f"the agent leaves {record} to its trainer: it {why}; a trainer without "
                     "PRIMUS_LENS_AGENT=true (or with an injector older than this agent) made "
                     "it, and sends that record itself", key=f"agent-refused-{record}")
            return False
        self.refused.discard(record)
        return True

    def _record_topology(self, record: str) -> Topology:
        """Where a record's writers ran, as far as its path says (``node_<n>/rank_<r>``): the
        sinks name their local and node rank after it (OTLP's resource); the global rank of
        every tagged line comes from its writer."""
        rank_dir = os.path.dirname(record)
        try:
            node = int(os.path.basename(os.path.dirname(rank_dir)).split("_", 1)[1])
            local = int(os.path.basename(rank_dir).split("_", 1)[1])
        except (IndexError, ValueError):
            return self.topology
        return Topology(node_rank=node, rank=local, local_rank=local,
                        world_size=self.topology.world_size, rank_source="record path", node=node)

    def _add(self, record: str) -> None:
        reporter = Reporter(self.config, self._record_topology(record), record,
                            paces=self.paces, detections=False)
        reporter.start()
        self.reporters[record] = reporter
        if not reporter.sinks:
            log.warn("the agent sends nothing: no sink is enabled here (Lens needs "
                     "PRIMUS_LENS_WANDB_API_REPORTING=true and POD_NAME or WORKLOAD_UID in the "
                     "agent's environment; OTLP needs PRIMUS_LENS_OTLP=true); the records keep "
                     "every row", key="agent-no-sinks")
        if any(sink.name == "rows" for sink in reporter.sinks):  # Lens is on: its reports too
            owner = reporter.control.owner
            self.detections.add_record(record, lambda: owner.held)
            if not self._lens:
                self._lens = True
                self.detections.start()
        log.debug("agent_record", record=record, sinks=[sink.name for sink in reporter.sinks])

    def _heartbeat(self, ended: bool = False) -> None:
        """``<root>/agent.json``, replaced whole (a reader never sees half of it)."""
        facts = {"pid": os.getpid(), "address": self.config.agent_address, "port": self.port,
                 "started": self._started, "updated": time.time(), "root": self.root,
                 "records": len(self.reporters)}
        if ended:
            facts["ended"] = time.time()
        try:
            write_atomic(os.path.join(self.root, AGENT_FILE), json.dumps(facts, sort_keys=True))
        except OSError as exc:
            log.warn(f"cannot write {os.path.join(self.root, AGENT_FILE)} "
                     f"({exc.strerror or exc}); doctor in the trainers will not see this agent",
                     key="agent-file")

    # -- the end --------------------------------------------------------------------------------

    def trainers_alive(self) -> int:
        """Records some live process still writes (``liveness``)."""
        return sum(1 for record in list(self.reporters) if liveness.writing(record))

    def trainers_gone(self) -> bool:
        """Whether a trainer was seen alive since the start and none is now: the end of the
        pod's work, for ``--exit-when-done`` (a regular container must end by itself for a
        Job's pod to complete).  Before any trainer is seen the agent waits: trainers may start
        after it."""
        alive = self.trainers_alive() > 0
        self._seen_alive = self._seen_alive or alive
        return self._seen_alive and not alive

    def drain(self, budget: float) -> None:
        """Send everything, without pace, until no trainer is alive and every record and report
        is acknowledged, or for ``budget`` seconds."""
        deadline = time.monotonic() + budget
        self.paces.lift()
        self.detections.lift()
        while True:
            self.tick()  # a trainer may still open a record
            alive = self.trainers_alive()
            round_end = min(deadline, time.monotonic() + _DRAIN_ROUND)
            self.detections.flush_round()
            delivered = all([reporter.flush(round_end) for reporter in self.reporters.values()])
            if not alive and delivered and self.detections.settled():
                return
            if time.monotonic() >= deadline:
                return
            if time.monotonic() < round_end:
                time.sleep(min(_DRAIN_PAUSE, max(0.0, deadline - time.monotonic())))

    def close(self) -> Summary:
        """Stop every part (their cursors saved) and count what is left."""
        deadline = time.monotonic() + _CLOSE_SECONDS
        now = time.monotonic()
        detections_left = len(self.detections.pending())  # while the owner locks are held
        for reporter in self.reporters.values():
            reporter.close(now)  # drained already: no more waiting
        self.detections.close()
        if self.pulse is not None:
            self.pulse.close(deadline)
        summary = self._summary(detections_left)
        self._heartbeat(ended=True)
        if self.server is not None:
            self.server.close()
        return summary

    def _summary(self, detections_left: int) -> Summary:
        delivered: Dict[str, int] = {}
        left: List[Left] = []
        for record, reporter in self.reporters.items():
            try:
                size = os.path.getsize(record)
            except OSError:
                size = 0
            for sink in reporter.sinks:
                status = sink.status(size)
                figures = status.get(sink.name, status)  # the Lens sink's are at the top level
                delivered[sink.name] = delivered.get(sink.name, 0) + int(figures["rows_sent"])
                acked = int(figures["acked_offset"])
                if acked < size:
                    lines, unacked = _unacked(record, acked)
                    left.append(Left(record, sink.name, lines, unacked))
        return Summary(len(self.reporters), delivered, self.detections.stats.detections_sent,
                       self.detections.deduplicated, detections_left, left,
                       self.trainers_alive(), len(self.refused))


def run(config: Config, topology: Topology, root: str, stop: threading.Event,
        started: Optional[Callable[[Agent], None]] = None,
        done: Optional[Callable[[Agent], None]] = None) -> Summary:
    """The agent's whole life on the calling (main) thread: start, tick until ``stop`` is set,
    drain for ``PRIMUS_LENS_AGENT_DRAIN_SECONDS``, close.  ``started(agent)`` is called once it
    serves (the command prints its first line there).  With ``done``, the agent also ends by
    itself once the trainers are gone (``Agent.trainers_gone``): ``done(agent)`` is called, then
    it drains and closes as on SIGTERM."""
    agent = Agent(config, topology, root)
    agent.start()
    if started is not None:
        started(agent)
    while not stop.wait(DISCOVERY_SECONDS):
        guard.run_guarded("agent-discovery", agent.tick, restart=False)
        if done is not None and agent.trainers_gone():
            done(agent)
            break
    agent.drain(config.agent_drain_seconds)
    return agent.close()
