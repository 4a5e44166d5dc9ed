"""The Lens telemetry-processor sink (``sink.LensSink``): rows and detection reports behind one
endpoint object (``endpoint.LensEndpoint``).  Built only through ``report.sinks``; it never
imports the OTLP sink, nor the OTLP sink it.  ``detections.ReportStore`` (a run's report to the
record's queue) also serves a trainer whose pod agent sends (``report.handover``), and
``detections.PodDetections`` is that agent's one detection sender."""

from .detections import PodDetections, ReportStore
from .sink import LensSink

__all__ = ["LensSink", "PodDetections", "ReportStore"]
