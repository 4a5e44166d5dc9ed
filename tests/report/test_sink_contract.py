"""The contract every sink keeps, whatever its destination, checked in-process through an injected
``httpx.MockTransport``: a 2xx delivers (the cursor moves to the record's end), a 429 with
``Retry-After`` and a 503 are retried until delivered, a 401 stops the sink for the process with
its cursor kept.  The Lens and OTLP sinks pass it, and so does a third sink that exists only here,
added by one registry line (``report.sinks.REGISTRY``): a new destination is one folder plus that
line.  Each case is given one second (an absolute deadline, as the session passes it).
"""

from __future__ import annotations

import json
import time
from typing import Any, Dict, List, Optional, Tuple

import httpx
import pytest

from primus_lens_inject import recordline
from primus_lens_inject.config import Config
from primus_lens_inject.recordline import Line
from primus_lens_inject.report import owner, sinks, transport
from primus_lens_inject.report.policy import DROP, OK, RETRY, STOP
from primus_lens_inject.report.reporter import Reporter
from primus_lens_inject.report.sendable import log_entry
from primus_lens_inject.report.sink import Batch, RowsSink, answered
from primus_lens_inject.topology import Topology

ROWS = 3
BUDGET = 1.0  # seconds each case may take, start to close


class EchoSink(RowsSink):
    """A destination that takes each batch as a JSON list of entries (a test double of a third
    sink: everything it needs comes from ``report.sink``)."""

    name = "echo"
    url = "http://echo.invalid/ingest"

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        self._asked: Optional[float] = None

    @property
    def where(self) -> str:
        return f"echo export to {self.url}"

    @property
    def address(self) -> str:
        return self.url

    def open_client(self) -> Any:
        return transport.client(self.url, {"Content-Type": "application/json"}, BUDGET, BUDGET,
                                http_transport=self.context.http_transport)

    def entry(self, row: Line, writer: owner.Writer) -> Tuple[Optional[Dict[str, Any]], str]:
        return log_entry(row.step, row.timestamp, row.data)

    def encode(self, batch: Batch, now: float) -> List[bytes]:
        return [json.dumps(batch[2]).encode()]

    def retry_after(self) -> Optional[float]:
        return self._asked

    def post(self, client: Any, body: bytes) -> Tuple[str, str]:
        response = client.post(self.url, content=body)
        status = response.status_code
        asked = response.headers.get("Retry-After")
        self._asked = float(asked) if asked else None
        action = (OK if 200 <= status < 300 else RETRY if status == 429 or status >= 500
                  else STOP if status in (401, 403) else DROP)
        answered(self.stats, action, f"HTTP {status}", self.where, f"echo-{status}")
        return action, f"HTTP {status}"


# (configuration, the body of an accepted answer, its Content-Type) per sink under test
KINDS: Dict[str, Tuple[Config, bytes, str]] = {
    "lens": (Config(api_base_url="http://lens.invalid/v1", pod_name="pod-0", flush_interval=30.0),
             b'{"meta": {"code": 2000}}', "application/json"),
    "otlp": (Config(api_reporting=False, otlp=True, otlp_endpoint="http://otlp.invalid",
                    pod_name="pod-0", flush_interval=30.0), b"", "application/x-protobuf"),
    "echo": (Config(api_reporting=False, pod_name="pod-0", flush_interval=30.0), b"",
             "application/json"),
}
# the answers a server gives, in order (the last one repeats): (status, headers)
SCENARIOS = {
    "2xx": [(200, {})],
    "429 with Retry-After": [(429, {"Retry-After": "0"}), (200, {})],
    "5xx": [(503, {}), (200, {})],
    "401": [(401, {})],
}


@pytest.fixture
def registry(monkeypatch):
    """The third sink: one registry line."""
    monkeypatch.setattr(sinks, "REGISTRY", [*sinks.REGISTRY,
                                            sinks.Entry("echo", lambda config: True, EchoSink)])


def write_record(path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        for step in range(ROWS):
            f.write(recordline.encode("run-1", step, time.time(), {"loss": 1.0 / (step + 1)}))
    return path.stat().st_size


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_sink_keeps_the_contract(kind, scenario, tmp_path, registry):
    config, accepted, content_type = KINDS[kind]
    if kind != "echo":  # only the sink under test runs
        sinks.REGISTRY.pop()
    answers = list(SCENARIOS[scenario])
    requests: List[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        status, headers = answers.pop(0) if len(answers) > 1 else answers[0]
        body = accepted if 200 <= status < 300 else b'{"meta": {"code": 4000}}'
        return httpx.Response(status, headers={"Content-Type": content_type, **headers},
                              content=body)

    record = tmp_path / "node_0" / "rank_0" / "wandb_metrics.jsonl"
    size = write_record(record)
    reporter = Reporter(config, Topology(), str(record), http_transport=httpx.MockTransport(answer))
    assert [sink.name for sink in reporter.sinks] == [{"lens": "rows"}.get(kind, kind)]
    (sink,) = reporter.sinks
    started = time.monotonic()
    reporter.start()
    delivered = reporter.flush(started + BUDGET)
    reporter.close(started + BUDGET)
    took = time.monotonic() - started
    with open(recordline.sibling(str(record), recordline.STATUS_SUFFIX)) as f:
        status = json.load(f)
    figures = status if kind == "lens" else status[kind]
    if scenario == "401":
        assert not delivered and len(requests) == 1
        assert sink.acked == 0  # the cursor is kept: a fixed process sends the rows from there
        assert figures["state"].startswith("stopped: ") and figures["rows_sent"] == 0
    else:
        assert delivered, (kind, scenario, figures)
        assert sink.acked == size and figures["acked_offset"] == size
        assert figures["rows_sent"] == ROWS and figures["state"] == "exited, all delivered"
        assert len(requests) == len(SCENARIOS[scenario])
        assert figures["retries"] == len(SCENARIOS[scenario]) - 1
    assert took < BUDGET + 0.5, took  # close adds no wait of its own past the deadline


def test_an_idle_sink_parses_its_oldest_line_once(tmp_path, monkeypatch, registry):
    """While a batch fills (``flush_interval`` not up), a sink looks at its oldest unsent line on
    every pass; the line is parsed the first time only."""
    from primus_lens_inject.report import spool

    config = KINDS["echo"][0]
    record = tmp_path / "wandb_metrics.jsonl"
    write_record(record)
    sinks.REGISTRY[:] = sinks.REGISTRY[-1:]  # the echo sink alone
    (sink,) = Reporter(config, Topology(), str(record)).sinks
    parsed: List[bytes] = []
    real = recordline.decode
    monkeypatch.setattr(recordline, "decode", lambda raw: parsed.append(raw) or real(raw))
    lines = spool.read_lines(str(record), 0, 1 << 20)
    cursor = spool.Cursor(str(record), recordline.cursor_suffix(sink.name))
    assert [sink._due(lines, cursor) for _ in range(50)] == [False] * 50
    assert parsed == [lines[0][1]]


def test_the_sinks_of_a_record_parse_each_line_once(tmp_path, monkeypatch, registry):
    """Two sinks of one record (Lens and a third) batch the same lines: each line is parsed once
    for both (``sink.SharedLines``), and each sink still batches every row."""
    from primus_lens_inject.report import spool

    record = tmp_path / "wandb_metrics.jsonl"
    write_record(record)
    both = Reporter(KINDS["lens"][0], Topology(), str(record)).sinks
    assert [sink.name for sink in both] == ["rows", "echo"]
    parsed: List[bytes] = []
    real = recordline.decode
    monkeypatch.setattr(recordline, "decode", lambda raw: parsed.append(raw) or real(raw))
    lines = spool.read_lines(str(record), 0, 1 << 20)
    for sink in both:
        (_, run_id, entries), used, skipped = sink._batch(lines)
        assert (run_id, [entry["step"] for entry in entries], used, skipped) == \
            ("run-1", list(range(ROWS)), ROWS, {})
    assert parsed == [raw for _, raw in lines]


def test_a_paced_sink_grows_its_batch_past_the_batch_size(tmp_path, registry):
    """In the pod agent (a ``Paces``), a batch grows past ``PRIMUS_LENS_WANDB_BATCH_SIZE`` up to
    ``pace.GROWN_BATCH`` steps (the most a logs request carries); a trainer's stays at the batch
    size.  A paced sink sees a full batch waiting in the record from the lines it holds."""
    from primus_lens_inject.report import Paces, spool
    from primus_lens_inject.report.pace import GROWN_BATCH

    record = tmp_path / "wandb_metrics.jsonl"
    with open(record, "wb") as f:
        for step in range(GROWN_BATCH + 200):
            f.write(recordline.encode("run-1", step, time.time(), {"loss": 1.0 / (step + 1)}))
    sinks.REGISTRY[:] = sinks.REGISTRY[-1:]  # the echo sink alone
    config = KINDS["echo"][0]
    (trainer,) = Reporter(config, Topology(), str(record)).sinks
    (agent,) = Reporter(config, Topology(), str(record), paces=Paces()).sinks
    lines = spool.read_lines(str(record), 0, 1 << 20)
    batches = {}
    for who, sink in (("trainer", trainer), ("agent", agent)):
        (_, _, entries), used, _ = sink._batch(lines)
        batches[who] = (len(entries), used, entries[-1]["step"])
    assert batches == {"trainer": (config.batch_size, config.batch_size, config.batch_size - 1),
                       "agent": (GROWN_BATCH, GROWN_BATCH, GROWN_BATCH - 1)}
    agent.cursor = spool.Cursor(str(record), recordline.cursor_suffix(agent.name))
    assert agent._full(lines[:10])  # 10 in hand, the rest of a full batch in the record
    agent.cursor.advance(lines[-11][0])
    assert not agent._full(lines[-10:-5])  # only 5 more behind them
