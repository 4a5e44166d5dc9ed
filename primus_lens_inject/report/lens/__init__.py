"""The Lens telemetry-processor sink (``sink.LensSink``): rows and detection reports behind one
endpoint object (``endpoint.LensEndpoint``).  Built only through ``report.sinks``; it never
imports the OTLP sink, nor the OTLP sink it."""

from .sink import LensSink

__all__ = ["LensSink"]
