"""The pod agent (``primus-lens agent``): one process per pod that sends every record of the pod
and serves its figures (docs/agent.md, docs/prometheus.md).

What the command may use:

- ``Server``: the agent's HTTP endpoint (``/metrics``, ``/healthz``, ``/readyz``), which reads
  every record and pulse file under the record root for ``/metrics`` (``exposition``);
- ``PulseExport``: every rank's pulse lines sent over OTLP (a ``lifecycle.Part``).

Loaded lazily: ``prometheus_client`` and the senders load only when the agent runs.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .http import Server
    from .pulse_otlp import PulseExport

__all__ = ["PulseExport", "Server"]


def __getattr__(name: str) -> Any:
    """``Server`` and ``PulseExport``, imported on first use: ``prometheus_client`` and the OTLP
    sender load only in the agent, not in a command that reads the agent's file (doctor)."""
    value: Any
    if name == "Server":
        from .http import Server as value
    elif name == "PulseExport":
        from .pulse_otlp import PulseExport as value
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value
