"""The reporter's HTTP client: built as configured, in the thread that uses it, with the imports
it needs held across a fork; and the probe doctor runs against the endpoint.
"""

from __future__ import annotations

import socket
import threading
from typing import Any, Dict, Optional, Tuple
from urllib.parse import urlsplit

from .. import state
from ..config import Config
from .policy import WORKER_HINT, envelope_message

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


def http_client(config: Config, read_timeout: float, http_transport: Any = None) -> Any:
    """An httpx client for the Lens server, configured as documented (timeouts, headers, TLS,
    proxy behaviour); ``http_transport``: an httpx transport to use instead of the network."""
    headers = {"Content-Type": "application/json", "User-Agent": "primus-lens-inject",
               **dict(config.api_headers)}
    return client(f"{config.api_base_url}/wandb/logs", headers, read_timeout,
                  config.connect_timeout, config.api_verify, config.api_ca_bundle,
                  trust_env=config.api_use_proxy, http_transport=http_transport)


def client(url: str, headers: Dict[str, str], read_timeout: float, connect_timeout: float,
           verify: bool = True, ca_file: Optional[str] = None,
           client_cert: Optional[Tuple[str, Optional[str]]] = None,
           trust_env: bool = False, http_transport: Any = None) -> Any:
    """An httpx client for POSTs to ``url``: a CA file and a client certificate (file, key
    file) given as an SSL context, which every httpx version takes; ``http_transport``
    replaces the network (an ``httpx.MockTransport`` in the sink contract tests)."""
    with IMPORTS:  # importing httpx and building its SSL context load modules lazily
        import ssl

        import httpx

        tls: Any = verify
        if verify and (ca_file or client_cert):
            tls = ssl.create_default_context(cafile=ca_file)
            if client_cert:
                tls.load_cert_chain(client_cert[0], client_cert[1])
        timeout = httpx.Timeout(read_timeout, connect=connect_timeout)
        made = httpx.Client(timeout=timeout, headers=headers, verify=tls, trust_env=trust_env,
                            transport=http_transport)
        made.build_request("POST", url, content=b"{}")  # warm
        return made


def probe(config: Config) -> str:
    """Does the endpoint answer like the telemetry-processor? (for doctor; sends nothing stored:
    an empty body is refused before anything is written)."""
    try:
        with http_client(config, min(config.read_timeout, 10.0)) as client:
            response = client.post(f"{config.api_base_url.rstrip('/')}/wandb/logs", content=b"{}")
            worker = response.status_code == 404 and healthy_host(client, config.api_base_url)
    except Exception as exc:
        return f"not reachable: {type(exc).__name__}: {exc}"
    message = envelope_message(response.content)
    if response.status_code == 400 and message:
        return f"answers (HTTP 400 {message!r} to an empty probe, as the telemetry-processor does)"
    if worker:
        return f"answers HTTP 404, and /healthz answers 200: {WORKER_HINT}"
    return f"answers HTTP {response.status_code}, but not like the telemetry-processor"


def healthy_host(client: Any, base_url: str) -> bool:
    """``GET /healthz`` on the host of ``base_url`` answers 200: something lives there that is
    not the API (robust 1.0.6's robust-analyzer is a worker that answers only its probes)."""
    parts = urlsplit(base_url)
    try:
        return client.get(f"{parts.scheme}://{parts.netloc}/healthz").status_code == 200
    except Exception:  # httpx.TransportError and anything below it: nothing to say
        return False


def unresolved(exc: BaseException) -> bool:
    """The server's host name does not resolve (httpx wraps the resolver's ``gaierror``)."""
    seen = 0
    cause: Optional[BaseException] = exc
    while cause is not None and seen < 8:
        if isinstance(cause, socket.gaierror):
            return True
        cause, seen = cause.__cause__ or cause.__context__, seen + 1
    return False
