"""What the reporter puts on the wire: only values the server's Go decoder accepts (spec §9.1)."""

from __future__ import annotations

import json

import pytest

from primus_lens_inject.report import policy, sendable
from primus_lens_inject.report.lens import wire
from primus_lens_inject.report.policy import DROP, OK, RETRY, STOP, classify, envelope_message


def test_sendable_keeps_finite_numbers_only_and_renames_reserved_keys():
    data = {"loss": 0.5, "n": 3, "flag": True, "nan": "NaN", "inf": "Infinity", "s": "x",
            "none": None, "lst": [1, 2], "huge": 10 ** 400, "big": 2 ** 60, "neg": -(2 ** 53),
            "nested": {"a": 1.5, "deep": {"b": 2}, "t": "x"},
            "img": {"_type": "wandb.Image", "width": 3},
            "step": 7, "run_id": 1.0, "history": 2, "created_at": 3, "_primus_lens_enabled": True}
    out = sendable.sendable(data)
    assert out == {"loss": 0.5, "n": 3, "big": float(2 ** 60), "neg": -(2 ** 53),
                   "nested.a": 1.5, "nested.deep.b": 2, "wandb/step": 7, "wandb/run_id": 1.0,
                   "wandb/history": 2, "wandb/created_at": 3}
    json.dumps(out, allow_nan=False)


def test_rank_prefix_and_entry_rules():
    entry, _ = sendable.log_entry(5, 1.7e9, {"loss": 1.0, "step": 1}, key_prefix="rank3/")
    assert entry == {"step": 5, "timestamp": 1.7e9, "data": {"rank3/loss": 1.0,
                                                             "rank3/wandb/step": 1}}
    assert sendable.log_entry(2 ** 31, 1.7e9, {"a": 1}) == (None, "step outside 0..2147483647")
    assert sendable.log_entry(-1, 1.7e9, {"a": 1})[0] is None
    assert sendable.log_entry(True, 1.7e9, {"a": 1}) == (None, "step is not an integer")
    assert sendable.log_entry(1, "now", {"a": 1})[0] is None
    assert sendable.log_entry(1, 1.7e9, {"s": "text"}) == (None, "no numeric values")


def test_merge_steps_merges_consecutive_rows_of_one_step():
    rows = [("r", {"step": 1, "timestamp": 1.0, "data": {"a": 1}}),
            ("r", {"step": 1, "timestamp": 2.0, "data": {"b": 2}}),
            ("r", {"step": 2, "timestamp": 3.0, "data": {"a": 3}}),
            ("q", {"step": 2, "timestamp": 4.0, "data": {"a": 4}})]
    merged = sendable.merge_steps(rows)
    assert [(r, e["step"], e["data"]) for r, e in merged] == [
        ("r", 1, {"a": 1, "b": 2}), ("r", 2, {"a": 3}), ("q", 2, {"a": 4})]
    assert merged[0][1]["timestamp"] == 2.0


def test_encode_refuses_nan():
    with pytest.raises(ValueError):
        wire.encode({"x": float("nan")})


@pytest.mark.parametrize("status,message,action", [
    (200, "OK", OK), (0, "ConnectError", RETRY), (500, "failed to process logs", RETRY),
    (502, "", RETRY), (503, "", RETRY), (429, "", RETRY),
    (400, "no valid workload found", RETRY), (400, "invalid request format", DROP),
    (400, "either workload_uid or pod_name is required", STOP), (401, "", STOP), (404, "", STOP),
    (307, "", STOP), (413, "", DROP),
])
def test_classification_follows_spec_9_6(status, message, action):
    assert classify(status, message)[0] == action


def test_envelope_message_tolerates_garbage():
    assert envelope_message(b'{"meta":{"code":400,"message":"no valid workload found"}}') \
        == "no valid workload found"
    for garbage in (b"", b"<html>", b"[1]", b'{"meta": 3}', b'{"meta":{"message":5}}'):
        assert envelope_message(garbage) == ""


def test_only_the_servers_envelope_acknowledges_a_2xx():
    ok = b'{"meta":{"code":2000,"message":"OK"},"data":{"count":1},"tracing":null}'
    assert policy.acknowledges(200, ok)
    for other in (b"<html><body>Default backend - 404</body></html>", b"", b"{}", b"[]",
                  b'{"meta":{"code":"2000","message":"OK"}}', b'{"meta":{"code":2000,"message":1}}',
                  b'{"meta":{"code":true,"message":"OK"}}', b'{"code":200,"message":"OK"}'):
        assert not policy.acknowledges(200, other), other
    action, reason = classify(200, "", enveloped=False)
    assert action == RETRY and "not the telemetry-processor's answer" in reason


def test_keys_and_strings_become_storable_in_postgres_jsonb():
    assert sendable.storable("plain/key") == "plain/key"
    assert sendable.storable("a\x00b\ud800c\udfffd") == "a\ufffdb\ufffdc\ufffdd"
    assert sendable.storable("ünïcode \U0001f600") == "ünïcode \U0001f600"  # real characters stay
    assert sendable.sendable({"nul\x00": 1, "nested": {"lone\udc00": 2}}) \
        == {"nul\ufffd": 1, "nested.lone\ufffd": 2}
    body = sendable.storable_body({"k\x00": ["v\ud800", {"x": "\x00"}], "n": 1})
    assert body == {"k\ufffd": ["v\ufffd", {"x": "\ufffd"}], "n": 1}
    assert b"\\u0000" not in wire.encode(wire.logs_body({}, "run\x00", [], 1.0))


def test_bodies_stay_under_the_limit_and_keep_every_key_once():
    ident = {"pod_name": "p"}
    big = {"step": 7, "timestamp": 1.0, "data": {f"k{j:05d}/" + "x" * 40: 0.5 for j in range(3000)}}
    small = [{"step": s, "timestamp": 1.0, "data": {"loss": 0.5}} for s in range(3)]
    bodies = wire.logs_bodies(ident, "r", [*small, big], 2.0, limit=40_000)
    assert len(bodies) > 4 and all(len(body) <= 40_000 for body in bodies)
    entries = [entry for body in bodies for entry in json.loads(body)["logs"]]
    assert [e["step"] for e in entries[:3]] == [0, 1, 2]
    keys = [key for e in entries if e["step"] == 7 for key in e["data"]]
    assert sorted(keys) == sorted(big["data"]) and len(keys) == len(set(keys))
    assert wire.logs_bodies(ident, "r", small, 2.0) == [wire.encode(wire.logs_body(ident, "r",
                                                                                   small, 2.0))]
