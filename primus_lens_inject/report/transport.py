"""The reporter's HTTP client: built as configured, in the thread that uses it, with the imports
it needs held across a fork; and the probe doctor runs against the endpoint.
"""

from __future__ import annotations

import socket
import threading
from typing import Any, Optional

from .. import state
from ..config import Config
from .policy import envelope_message

# Our threads import lazily (httpx, the detection module, importlib.metadata...).  A fork while
# one of them is inside an import leaves that module's import lock held forever in the child,
# which then deadlocks importing the same module.  Imports happen under this lock, and fork
# waits for it (see ``hold_imports_across_fork``).
IMPORTS = threading.Lock()


def hold_imports_across_fork() -> None:
    state.at_fork(before=lambda: IMPORTS.acquire(), after_in_parent=lambda: IMPORTS.release(),
                  after_in_child=_new_imports_lock)  # the lock of the moment: a child makes its own


def _new_imports_lock() -> None:
    global IMPORTS
    IMPORTS = threading.Lock()


def http_client(config: Config, read_timeout: float) -> Any:
    """An httpx client configured as documented (timeouts, headers, TLS, proxy behaviour)."""
    with IMPORTS:  # importing httpx and building its SSL context load modules lazily
        import ssl

        import httpx

        verify: Any = config.api_verify
        if config.api_verify and config.api_ca_bundle:
            verify = ssl.create_default_context(cafile=config.api_ca_bundle)
        headers = {"Content-Type": "application/json", "User-Agent": "primus-lens-inject",
                   **dict(config.api_headers)}
        timeout = httpx.Timeout(read_timeout, connect=config.connect_timeout)
        client = httpx.Client(timeout=timeout, headers=headers, verify=verify,
                              trust_env=config.api_use_proxy)
        client.build_request("POST", f"{config.api_base_url}/wandb/logs", content=b"{}")  # warm
        return client


def probe(config: Config) -> str:
    """Does the endpoint answer like the telemetry-processor? (for doctor; sends nothing stored:
    an empty body is refused before anything is written)."""
    try:
        with http_client(config, min(config.read_timeout, 10.0)) as client:
            response = client.post(f"{config.api_base_url.rstrip('/')}/wandb/logs", content=b"{}")
    except Exception as exc:
        return f"not reachable: {type(exc).__name__}: {exc}"
    message = envelope_message(response.content)
    if response.status_code == 400 and message:
        return f"answers (HTTP 400 {message!r} to an empty probe, as the telemetry-processor does)"
    return f"answers HTTP {response.status_code}, but not like the telemetry-processor"


def unresolved(exc: BaseException) -> bool:
    """The server's host name does not resolve (httpx wraps the resolver's ``gaierror``)."""
    seen = 0
    cause: Optional[BaseException] = exc
    while cause is not None and seen < 8:
        if isinstance(cause, socket.gaierror):
            return True
        cause, seen = cause.__cause__ or cause.__context__, seen + 1
    return False
