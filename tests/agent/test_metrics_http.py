"""The agent's HTTP endpoint (``agent.http.Server``): ``/metrics`` by ``Accept``, ``/healthz``,
``/readyz`` from the service's answer, 404 elsewhere, and clients that cannot stall it."""

from __future__ import annotations

import gzip
import http.client
import json
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest
from conftest import LAYOUT, installs
from test_metrics import OPENMETRICS, labels_of, parse, run_trainers, write_record

from primus_lens_inject.agent import Server
from primus_lens_inject.agent import http as agent_http
from primus_lens_inject.config import Config


class Readiness:
    """What the service answers for ``/readyz``; a test moves it."""

    def __init__(self) -> None:
        self.answer: Tuple[bool, str] = (False, "first discovery pass not done")

    def __call__(self) -> Tuple[bool, str]:
        return self.answer


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Tuple[Server, Readiness]]:
    ready = Readiness()
    config = Config.from_env({"PRIMUS_LENS_AGENT_ADDRESS": "127.0.0.1",
                              "PRIMUS_LENS_AGENT_PORT": "0"})
    server = Server(config, str(tmp_path), ready)
    server.start()
    try:
        yield server, ready
    finally:
        server.close()


def get(port: int, path: str, method: str = "GET",
        headers: Tuple[Tuple[str, str], ...] = ()) -> Tuple[int, str, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, headers=dict(headers))
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read()
    finally:
        conn.close()


def wait_for(check, what: str, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"no {what} within {seconds} s"
        time.sleep(0.05)


def test_paths_and_formats(served: Tuple[Server, Readiness], tmp_path: Path) -> None:
    server, ready = served
    port = server.port
    assert port > 0
    assert get(port, "/healthz")[::2] == (200, b"ok\n")
    assert get(port, "/readyz")[::2] == (503, b"not ready: first discovery pass not done\n")
    ready.answer = (True, "")
    assert get(port, "/readyz")[::2] == (200, b"ready\n")
    assert get(port, "/nope")[0] == 404
    assert get(port, "/metrics/x")[0] == 404
    assert get(port, "/metrics", method="POST")[0] == 501

    write_record(tmp_path / "node_0" / "rank_3" / "wandb_metrics.jsonl", [("r", 4, {"loss": 0.5})])
    labels = labels_of("", 3, run="r")

    def scraped() -> bool:
        return ("wandb_loss", labels) in parse(get(port, "/metrics")[2])

    wait_for(scraped, "row on /metrics (the reader thread)")
    status, content_type, body = get(port, "/metrics?x=1")
    assert (status, content_type) == (200, "text/plain; version=0.0.4; charset=utf-8")
    assert parse(body)[("wandb_loss", labels)] == 0.5
    # Prometheus's own Accept header asks for OpenMetrics first
    accept = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
              "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
    status, content_type, body = get(port, "/metrics", headers=(("Accept", accept),))
    assert content_type.startswith("application/openmetrics-text; version=1.0.0")
    assert parse(body, openmetrics=True)[("wandb_step", labels)] == 4
    status, content_type, body = get(port, "/metrics", "HEAD", (("Accept", OPENMETRICS),))
    assert (status, body) == (200, b"")
    assert content_type.startswith("application/openmetrics-text")
    # gzip for a scraper that accepts it (Prometheus and vmagent do), not for one that refuses it
    plain = get(port, "/metrics", headers=(("Accept", accept),))[2]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        for header, zipped in (("gzip", True), ("br, gzip;q=0.5", True), ("gzip;q=0", False),
                               ("identity", False)):
            conn.request("GET", "/metrics", headers={"Accept": accept, "Accept-Encoding": header})
            response = conn.getresponse()
            raw = response.read()
            assert (response.getheader("Content-Encoding") == "gzip") is zipped, header
            assert (gzip.decompress(raw) if zipped else raw) == plain
    finally:
        conn.close()


def test_hostile_clients_do_not_stall_it(served: Tuple[Server, Readiness]) -> None:
    server, _ = served
    port = server.port
    idle: List[socket.socket] = []
    try:
        # more silent connections than it serves at once, and one that trickles a request
        for _ in range(agent_http.MAX_CONNECTIONS + 4):
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=30))
        trickle = idle[0]
        trickle.sendall(b"GET /metr")
        # the silent ones time out (SOCKET_TIMEOUT) and free their slots: a scrape gets through
        wait_for(lambda: _answers(port), "answer while silent clients hold connections",
                 seconds=agent_http.SOCKET_TIMEOUT * 6 + 60)
    finally:
        for sock in idle:
            sock.close()
    # oversized and malformed requests are answered and bounded by http.server
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n")
        assert sock.recv(64).startswith(b"HTTP/1.1 414")
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"\x16\x03\x01garbage\r\n\r\n")  # a TLS hello: not HTTP
        assert b"Error code: 400" in sock.makefile("rb").read(4096)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\n" + b"X: y\r\n" * 200 + b"\r\n")
        assert sock.recv(64).startswith(b"HTTP/1.1 431")
    assert get(port, "/healthz")[0] == 200


def _answers(port: int) -> bool:
    try:
        return get(port, "/healthz")[0] == 200
    except (OSError, http.client.HTTPException):
        return False


def test_many_scrapes_at_once(served: Tuple[Server, Readiness], tmp_path: Path) -> None:
    server, _ = served
    write_record(tmp_path / "node_0" / "rank_0" / "wandb_metrics.jsonl",
                 [("r", 0, {f"k{j}": j for j in range(200)})])
    wait_for(lambda: b"wandb_k199" in get(server.port, "/metrics")[2], "rows on /metrics")
    answers: List[int] = []

    def scrape() -> None:
        for _ in range(5):
            try:
                answers.append(get(server.port, "/metrics")[0])
            except (OSError, http.client.HTTPException):
                answers.append(0)  # closed unanswered while full: a scraper retries

    threads = [threading.Thread(target=scrape) for _ in range(agent_http.MAX_CONNECTIONS * 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert answers.count(200) >= len(threads)  # most scrapes served, none hung
    assert set(answers) <= {200, 0}


def test_port_in_use_raises_and_close_frees_it(tmp_path: Path) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    config = Config.from_env({"PRIMUS_LENS_AGENT_ADDRESS": "127.0.0.1",
                              "PRIMUS_LENS_AGENT_PORT": str(port)})
    with pytest.raises(OSError):
        Server(config, str(tmp_path), lambda: (True, "")).start()
    holder.close()
    server = Server(config, str(tmp_path), lambda: (True, ""))
    server.start()
    assert server.port == port and get(port, "/healthz")[0] == 200
    server.close()
    again = Server(config, str(tmp_path), lambda: (True, ""))
    again.start()  # the port is free again
    again.close()


def test_readiness_that_raises_is_not_ready(tmp_path: Path) -> None:
    def broken() -> Tuple[bool, str]:
        raise RuntimeError("root unreadable")

    config = Config.from_env({"PRIMUS_LENS_AGENT_ADDRESS": "127.0.0.1",
                              "PRIMUS_LENS_AGENT_PORT": "0"})
    server = Server(config, str(tmp_path), broken)
    server.start()
    try:
        status, _, body = get(server.port, "/readyz")
        assert status == 503 and b"RuntimeError: root unreadable" in body
    finally:
        server.close()


def test_a_trickling_request_is_cut(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A client that sends a byte now and then, each within the socket timeout, is cut at the
    request's deadline (``REQUEST_SECONDS``, shortened here)."""
    monkeypatch.setattr(agent_http, "REQUEST_SECONDS", 1.0)
    config = Config.from_env({"PRIMUS_LENS_AGENT_ADDRESS": "127.0.0.1",
                              "PRIMUS_LENS_AGENT_PORT": "0"})
    server = Server(config, str(tmp_path), lambda: (True, ""))
    server.start()
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\n")
            cut = False
            for _ in range(600):  # at most a minute of trickling
                try:
                    sock.sendall(b"X: y\r\n")
                    sock.settimeout(0.1)
                    cut = sock.recv(1) == b""
                except socket.timeout:
                    continue
                except OSError:
                    cut = True
                if cut:
                    break
            assert cut
        assert get(server.port, "/healthz")[0] == 200
    finally:
        server.close()


def test_the_agent_command_serves_real_trainers_records(tmp_path: Path) -> None:
    """``primus-lens agent`` as a process (the layout under test): its port in the agent file,
    ``/readyz`` ready, every rank's values on ``/metrics``, exit 0 on SIGTERM."""
    runs = run_trainers(tmp_path, ranks=2, rows=4)
    root = tmp_path / "out"
    env = {"PRIMUS_LENS_AGENT_PORT": "0", "PRIMUS_LENS_AGENT_ADDRESS": "127.0.0.1",
           "PRIMUS_LENS_WANDB_API_REPORTING": "false", "PRIMUS_LENS_AGENT_DRAIN_SECONDS": "5",
           "HOME": str(tmp_path)}
    proc = subprocess.Popen([*LAYOUT.cli, "agent", "--root", str(root)],
                            env=installs.cli_env(LAYOUT, env), cwd=tmp_path, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        first = proc.stdout.readline() if proc.stdout is not None else ""
        assert first.startswith("primus-lens agent: "), first
        port = json.loads((root / "agent.json").read_text())["port"]
        wait_for(lambda: _answers(port) and get(port, "/readyz")[0] == 200, "ready agent")

        def both() -> bool:
            samples = parse(get(port, "/metrics")[2])
            return all(("wandb_tokens", labels_of(rank, rank, run=run)) in samples
                       for rank, run in runs.items())

        wait_for(both, "every rank on /metrics")
        samples = parse(get(port, "/metrics", headers=(("Accept", OPENMETRICS),))[2],
                        openmetrics=True)
        for rank, run in runs.items():
            assert samples[("wandb_tokens", labels_of(rank, rank, run=run))] == 3000 + rank
            assert samples[("wandb_step", labels_of(rank, rank, run=run))] == 4
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
