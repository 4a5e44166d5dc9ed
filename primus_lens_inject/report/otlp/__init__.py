"""The OTLP sink (``sink.OtlpSink``): the record's rows as OTLP/HTTP metrics, with our own
protobuf/JSON encoder (``encoding``).  Built only through ``report.sinks``, and imported only
when ``PRIMUS_LENS_OTLP=true``; it never imports the Lens sink, nor the Lens sink it."""

from .sink import OtlpSink, settings

__all__ = ["OtlpSink", "settings"]
