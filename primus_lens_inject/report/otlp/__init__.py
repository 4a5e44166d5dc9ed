"""The OTLP sink (``sink.OtlpSink``): the record's rows as OTLP/HTTP metrics, with our own
protobuf/JSON encoder (``encoding``).  Built only through ``report.sinks``, and imported only
when ``PRIMUS_LENS_OTLP=true``; it never imports the Lens sink, nor the Lens sink it.  The pod
agent also sends every rank's pulse with it (``pulse_sink``: one sink per pulse file), loaded
only there: a trainer's OTLP sink never loads the pulse's module."""

import importlib
from typing import TYPE_CHECKING, Any

from .sink import OtlpSink, settings

if TYPE_CHECKING:
    from .pulse import PulseSink, pulse_sink

__all__ = ["OtlpSink", "PulseSink", "pulse_sink", "settings"]


def __getattr__(name: str) -> Any:
    """``PulseSink`` and ``pulse_sink``, imported from ``pulse`` on first use."""
    if name not in ("PulseSink", "pulse_sink"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.pulse"), name)
    globals()[name] = value
    return value
