"""The registry of sinks: each destination of a record is one entry (name, whether the
configuration enables it, how to build it), and the ``Reporter`` starts those enabled.

A new destination is one folder beside ``lens/`` and ``otlp/`` whose sink implements
``sink.Sink`` (most subclass ``sink.RowsSink``), plus one line here.  A factory imports its
folder only when called, so a training process loads the code of the sinks it runs and no
other (the OTLP encoder is never imported without ``PRIMUS_LENS_OTLP=true``).
"""

from __future__ import annotations

from typing import Callable, List, NamedTuple

from ..config import Config
from . import owner
from .sink import Context, Sink


class Entry(NamedTuple):
    """One kind of sink."""

    name: str
    enabled: Callable[[Config], bool]
    factory: Callable[[Context], Sink]


def _lens(context: Context) -> Sink:
    from .lens import LensSink

    return LensSink(context)


def _otlp(context: Context) -> Sink:
    from .otlp import OtlpSink

    return OtlpSink(context)


def _otlp_enabled(config: Config) -> bool:
    return config.otlp


REGISTRY: List[Entry] = [
    Entry("rows", owner.lens_reports, _lens),  # the Lens telemetry-processor (docs/reporting.md)
    Entry("otlp", _otlp_enabled, _otlp),  # an OpenTelemetry endpoint (docs/otlp.md)
]


def enabled(context: Context) -> List[Sink]:
    """The sinks the configuration enables, built, in registry order."""
    return [entry.factory(context) for entry in REGISTRY if entry.enabled(context.config)]
