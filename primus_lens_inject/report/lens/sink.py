"""The Lens sink: the record's rows to ``{base}/wandb/logs`` and each run's detection report to
``{base}/wandb/detection``, two threads behind one ``LensEndpoint`` (docs/reporting.md).

Rows: a ``sink.RowsSink`` merging rows per step, in batches of one run and one writer, each under
its writer's identity and key prefix (``wire``).  Detection: ``detections.DetectionSender``, except
in the pod agent, whose one ``detections.PodDetections`` sends every record's reports
(``Context.detections`` false).  A
flush waits for both; the sink's counters are the status file's top level (doctor reads them
there).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from ... import guard
from ...recordline import Line
from .. import owner
from ..sendable import log_entry
from ..sink import Batch, Context, RowsSink
from . import wire
from .detections import DetectionSender
from .endpoint import LensEndpoint


class LensSink(RowsSink):
    """Rows and detection reports to the Lens telemetry-processor."""

    name = "rows"

    def __init__(self, context: Context) -> None:
        self.endpoint = LensEndpoint(context.config, context.control, context.stats,
                                     context.http_transport)
        super().__init__(context, context.stats, self.endpoint.health)
        self.detection = DetectionSender(context, self.endpoint)

    @property
    def where(self) -> str:
        return self.endpoint.where

    @property
    def address(self) -> str:
        return self.endpoint.base_url

    def open_client(self) -> Any:
        return self.endpoint.client(self.config.read_timeout)

    def entry(self, row: Line, writer: owner.Writer) -> Tuple[Optional[Dict[str, Any]], str]:
        return log_entry(row.step, row.timestamp, row.data, writer.key_prefix)

    def encode(self, batch: Batch, now: float) -> List[bytes]:
        writer, run_id, entries = batch
        return wire.logs_bodies(writer.identity, run_id, entries, now)

    def post(self, client: Any, body: bytes) -> Tuple[str, str]:
        return self.endpoint.post(client, "logs", body)

    def stopped(self, reason: str) -> None:
        self.endpoint.stop(reason)

    def add_run(self, facts: Any) -> None:
        """A new run: its detection report is built and sent in the background."""
        self.detection.add(facts)

    def start(self) -> None:
        super().start()
        if self.context.detections:
            self._threads.append(guard.start_thread("detection", self.detection.run))

    def busy_without_lock(self) -> bool:
        return bool(self.detection.store.facts)  # a flush waits until they are on disk

    def settled(self, target: int) -> Tuple[bool, bool]:
        settled, delivered = super().settled(target)
        if delivered and self.context.detections and self.detection.waiting():
            return self.health.gave_up, False  # detection reports still wait
        return settled, delivered

    def close(self, deadline: float) -> None:
        super().close(deadline)
        self.detection.wake.set()

    def status(self, record_size: int) -> Dict[str, Any]:
        """At the status file's top level (where doctor has always read the Lens figures)."""
        return {"endpoint": self.address, "acked_offset": self.acked,
                "backlog_bytes": max(0, record_size - self.acked), **self.stats.as_dict()}
