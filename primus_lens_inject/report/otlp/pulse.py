"""Every rank's pulse over OTLP: the pulse lines of one ``node_<n>/rank_<r>`` directory
(``pulseline``) as OTLP/HTTP metrics, sent by the pod agent only (a trainer adds no traffic).

One ``PulseSink`` per pulse file: an ``OtlpSink`` (the same endpoint settings, encoding, answers,
retries and budgets) that reads pulse lines instead of record lines (``read_line``) and keeps its
own cursor beside them (``pulse.otlp.cursor``), so a restarted agent resumes where it was.  Each
line is one point per figure at the line's time; the resource is the rank's (``primus.rank``,
``primus.local_rank``, ``primus.node_rank``, ``primus.world_size`` and the pod), so every rank is
a series of its own.  Names (docs/otlp.md):

* ``primus.rank.optimizer_steps`` (``{step}``): the optimizer steps the process completed (the
  pulse's ``steps``), a point of every line, stall and recovery included;
* ``primus.rank.step.duration`` / ``.mean`` / ``.median`` (``s``): the last step's wall time,
  the interval's mean, the median of recent steps;
* ``primus.rank.stalled`` (``1``): 1 at a stall event, 0 at its recovery, and in every pulse
  line that says (``stalled``);
* ``primus.rank.wandb_step`` (``{step}``): the owner's wandb step, where the process owns a
  run (not the rows' ``wandb.step``, whose series has one point per row);
* the host and GPU figures under the names of the record's rows (``system.*``, ``process.*``,
  ``hw.*``: ``encoding.describe``).
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional

from ... import pulseline
from ...config import Config
from ...recordline import Decoded, Line, Unreadable
from ...topology import Topology
from .. import owner
from ..identity import identity
from ..pace import Paces
from ..sink import Context, Control
from ..status import Stats
from . import encoding
from .sink import OtlpSink

UNREADABLE = Unreadable("unreadable pulse line")
_STALLED = "_primus_rank_stalled"
_STEPS = "_primus_rank_optimizer_steps"
_KEY_RANGE = 1 << 31  # a row's step must be an int32 (``sendable.log_entry``)
# pulse field -> (record-style key, metric): what a ``pulse`` line carries besides its figures
_FIELDS = {
    "step_last": ("_primus_rank_step_last",
                  encoding.Metric("primus.rank.step.duration", "s", 1.0, ())),
    "step_mean": ("_primus_rank_step_mean",
                  encoding.Metric("primus.rank.step.duration.mean", "s", 1.0, ())),
    "step_median": ("_primus_rank_step_median",
                    encoding.Metric("primus.rank.step.duration.median", "s", 1.0, ())),
    # not ``wandb.step``: under the owner's resource that is the rows' own series (a point per
    # row, ``encoding``), and the pulse's latest step (one past the last row's) would join it
    "wandb_step": ("_primus_rank_wandb_step",
                   encoding.Metric("primus.rank.wandb_step", "{step}", 1.0, ())),
}
_METRICS = {key: metric for key, metric in _FIELDS.values()}
_METRICS[_STALLED] = encoding.Metric("primus.rank.stalled", "1", 1.0, ())
_METRICS[_STEPS] = encoding.Metric("primus.rank.optimizer_steps", "{step}", 1.0, ())


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def pulse_row(raw: Optional[bytes]) -> Decoded:
    """A pulse line as a record ``Line``: the data its optimizer steps, its figures
    (``_FIELDS`` under our keys, the sampler's own keys), a stall or recovery
    ``_primus_rank_stalled``; the run is the owner's run, "" in a process without one.  The
    row's step is the line's time in milliseconds (modulo 2^31), never sent: the sink merges
    rows of one step, and two lines of a stalled rank have the same optimizer steps."""
    line = pulseline.decode(raw)
    steps = line.get("steps") if line is not None else None
    if line is None or not _number(steps):
        return UNREADABLE
    data: Dict[str, Any] = {_STEPS: steps}
    if line["kind"] == pulseline.PULSE:
        for field, (key, _) in _FIELDS.items():
            if _number(line.get(field)):
                data[key] = line[field]
        figures = line.get("figures")
        if type(figures) is dict:
            data.update(figures)
        if type(line.get("stalled")) is bool:  # the writer's view: whether its rank is stalled
            data[_STALLED] = int(line["stalled"])
    else:
        data[_STALLED] = 1 if line["kind"] == pulseline.STALL else 0
    run = line.get("run_id")
    order = int(line["time"] * 1000) % _KEY_RANGE if math.isfinite(line["time"]) else 0
    return Line(run if type(run) is str else "", order, line["time"], "", data)


class PulseEncoder(encoding.Encoder):
    """The record's encoder with the pulse's own names, and no step gauge (a pulse row's step
    only keeps its lines apart)."""

    def __init__(self, protocol: str) -> None:
        super().__init__(protocol)
        self._steps = None

    def metric(self, key: str) -> encoding.Metric:
        return _METRICS.get(key) or super().metric(key)


class PulseSink(OtlpSink):
    """The pulse lines of one rank directory to ``{endpoint}/v1/metrics``."""

    name = "otlp"  # the cursor: ``pulse.otlp.cursor``

    def __init__(self, context: Context) -> None:
        super().__init__(context)
        self.encoder = PulseEncoder(self.settings.protocol)

    @property
    def where(self) -> str:
        return f"pulse OTLP export to {self.endpoint}"

    def read_line(self, raw: Optional[bytes]) -> Decoded:
        return pulse_row(raw)

    def stop(self, seconds: float) -> None:
        """Stop for good (the agent ends, or the file was rotated away): the thread ends
        (``seconds`` at most), the cursor is kept, the lock is let go (a new file's sink, or
        another agent, takes it)."""
        self.control.stop = True
        self.wake.set()
        for thread in self._threads:
            thread.join(seconds)
        self.close(0.0)
        self.control.owner.release()


def pulse_sink(config: Config, pulse_path: str, first: Dict[str, Any],
               paces: Optional[Paces] = None) -> PulseSink:
    """The sink of the pulse file ``pulse_path``, whose first line (``pulseline.decode``) says
    which rank it is; ``paces``: shared by the agent's pulse sinks (one request at a time)."""
    node = int(first["node"])
    topology = Topology(node_rank=node, rank=int(first["rank"]),
                        local_rank=int(first["local_rank"]),
                        world_size=int(first["world_size"]), node=node)
    writer = owner.Writer(identity(config) if config.has_identity else {}, topology.rank, True,
                          "", "the rank's pulse, sent by the pod agent")
    context = Context(config, topology, pulse_path, Control(pulse_path),
                      owner.Writers(pulse_path), writer, Stats(), dict, paces=paces)
    return PulseSink(context)
