"""Redaction and size bounds: what may leave the machine, and how much of it."""

from __future__ import annotations

import copy
import json
import math
import random
import threading
from collections import OrderedDict
from typing import Any, Iterator, Mapping

import numpy as np
import pytest

from primus_lens_inject.redact import (
    REDACTED,
    TRUNCATED_KEY,
    UNREADABLE,
    Limits,
    fit,
    is_secret_key,
    json_size,
    redact,
    redact_text,
    sanitize,
)

HF = "hf_" + "AbCdEfGhIjKlMnOpQrStUvWxYz01234567"
GHP = "ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"
SK = "sk-proj-" + "Zx9Yw8Vu7Ts6Rq5Po4Nm3Lk2Ji1Hg0"
AKIA = "AKIAIOSFODNN7EXAMPLE"
JWT = ("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0."
       "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c")
GOOGLE = "AIza" + "SyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q"

SECRET_KEYS = [
    "WANDB_API_KEY", "hf_token", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "aws_secret_access_key",
    "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN", "Authorization", "authorization", "apiKey",
    "X-Api-Key", "api-key", "APIKey", "apikey", "password", "db_passwd", "PWD", "client_secret",
    "GOOGLE_APPLICATION_CREDENTIALS", "Set-Cookie", "cookie", "private_key", "privateKey",
    "sessionid", "sessionID", "session", "sig", "X-Amz-Signature", "OAuth2Token", "accesstoken",
    "refresh_token", "Passphrase", "use_auth_token", "auth", "token", "key", "AccountKey",
    "secret", "github_pat", "db_pass", "SECRETS",
]
BENIGN_KEYS = [
    "tokenizer", "tokenizer_name", "max_tokens", "num_tokens", "tokens_per_second", "pad_token",
    "eos_token", "bos_token", "pad_token_id", "num_key_value_heads", "learning_rate", "model_name",
    "author", "authors", "monkey", "keyboard", "token_budget", "hf_cache_dir", "bypass",
    "num_passes", "sort_keys", "lr", "framework", "base_framework", "primus_config", "kv_channels",
    "keys", "", "_wandb", "path", "url", "HOME", "seed",
]


@pytest.mark.parametrize("name", SECRET_KEYS)
def test_secret_key_names(name: str) -> None:
    assert is_secret_key(name)


@pytest.mark.parametrize("name", BENIGN_KEYS)
def test_ordinary_key_names(name: str) -> None:
    assert not is_secret_key(name)


@pytest.mark.parametrize(("text", "expected"), [
    ("https://user:pa@ss@host.example.com/path?x=1", "https://[REDACTED]@host.example.com/path?x=1"),
    (f"https://{GHP}@github.com/org/repo.git", "https://[REDACTED]@github.com/org/repo.git"),
    ("redis://:s3cret@redis:6379/0", "redis://[REDACTED]@redis:6379/0"),
    (f"s3://b/k?X-Amz-Signature=abc123&X-Amz-Credential={AKIA}/20240101/us&part=2",
     "s3://b/k?X-Amz-Signature=[REDACTED]&X-Amz-Credential=[REDACTED]&part=2"),
    ("https://acct.blob.core.windows.net/c?sv=2020&sig=abc%2Fdef&se=2025",
     "https://acct.blob.core.windows.net/c?sv=2020&sig=[REDACTED]&se=2025"),
    ("https://host/api?access_token=tok123#frag", "https://host/api?access_token=[REDACTED]#frag"),
    ("python train.py --hf_token abc123 --lr 3e-4 --password=hunter2 --tokenizer gpt2",
     "python train.py --hf_token [REDACTED] --lr 3e-4 --password=[REDACTED] --tokenizer gpt2"),
    ("--use_auth_token --fp16", "--use_auth_token --fp16"),
    ("Authorization: Bearer abcdefghijklmnop", "Authorization: [REDACTED]"),
    ("curl -H 'x: Bearer abcdefghijklmnop'", "curl -H 'x: [REDACTED]'"),
    ('{"api_key": "zzz-secret", "model": "llama"}', '{"api_key": "[REDACTED]", "model": "llama"}'),
    ("{'password': 'p4ss', 'lr': 1}", "{'password': '[REDACTED]', 'lr': 1}"),
    ("Server=db;AccountKey=abc+/def==;User=me", "Server=db;AccountKey=[REDACTED];User=me"),
    ("note: token=abc", "note: token=[REDACTED]"),
    (f"key {HF} in text", "key [REDACTED] in text"),
    (f"{GHP} {SK} {AKIA} {JWT} {GOOGLE}", " ".join([REDACTED] * 5)),
    ("xoxb-1234567890-abcdefghij npm_" + "a" * 36, f"{REDACTED} {REDACTED}"),
    ("sk_live_" + "a1" * 12, REDACTED),
    ("glpat-" + "x" * 20 + " pypi-" + "A" * 60, f"{REDACTED} {REDACTED}"),
    ("a\n-----BEGIN RSA PRIVATE KEY-----\nMIIEow\nIBAAK==\n-----END RSA PRIVATE KEY-----\nb",
     f"a\n{REDACTED}\nb"),
])
def test_secrets_inside_strings(text: str, expected: str) -> None:
    assert redact_text(text) == expected


@pytest.mark.parametrize("text", [
    "/data/hf_cache/models--meta-llama/snapshots/0123456789abcdef0123456789abcdef01234567",
    "0123456789abcdef0123456789abcdef01234567",  # a git SHA (same shape as a wandb key)
    "5b0c3f0e-2a7d-4c61-9a51-0f4f6c1d2e3a",
    "task-abcdefghijklmnopqrstuvwxyz0123", "risk-adjusted-return-estimation-v2-final",
    "12:30 and 3.14 and 1e-4 and /a/b:c", "git@github.com:org/repo.git",
    "https://github.com/org/repo.git?ref=main", "meta-llama/Llama-3-8B", "hf_model_name",
    "bearer of bad news", "max_tokens=2048 tokenizer=gpt2 pad_token=<pad>", "lr: 3e-4",
    "http://primus-lens-telemetry-processor.primus-lens.svc.cluster.local:8989/v1",
    "AKIAIOSFODNN7EXAMPLEX", "", "日本語のテキスト",
])
def test_ordinary_strings_survive(text: str) -> None:
    assert redact_text(text) == text


def _secrets() -> list:
    return ["hunter2", "wandb-key-value", "nested-pw", "listed-token-value", "k8s-env-value",
            "inner:pass", HF, GHP, SK, AKIA, JWT]


def _config() -> dict:
    return {
        "lr": 3e-4, "epochs": 3, "bf16": True, "note": None, "model_name": "llama3-8b",
        "password": "hunter2",
        "WANDB_API_KEY": "wandb-key-value",
        "optimizer": {"name": "adamw", "betas": [0.9, 0.95],
                      "db": {"url": "postgres://admin:inner:pass@db:5432/x", "pwd": "nested-pw"}},
        "callbacks": [{"type": "hub", "hub_token": "listed-token-value"}, ("tuple", HF)],
        "env": [{"name": "HF_TOKEN", "value": "k8s-env-value"}, {"name": "LR", "value": "0.1"}],
        "innocent": {"a": GHP, "b": f"Bearer {SK}", "c": [AKIA, JWT]},
        "auth": {"type": "basic", "user": "me"},
    }


def test_redact_nested_structures() -> None:
    assert redact(_config()) == {
        "lr": 3e-4, "epochs": 3, "bf16": True, "note": None, "model_name": "llama3-8b",
        "password": REDACTED,
        "WANDB_API_KEY": REDACTED,
        "optimizer": {"name": "adamw", "betas": [0.9, 0.95],
                      "db": {"url": f"postgres://{REDACTED}@db:5432/x", "pwd": REDACTED}},
        "callbacks": [{"type": "hub", "hub_token": REDACTED}, ["tuple", REDACTED]],
        "env": [{"name": "HF_TOKEN", "value": REDACTED}, {"name": "LR", "value": "0.1"}],
        "innocent": {"a": REDACTED, "b": REDACTED, "c": [REDACTED, REDACTED]},
        "auth": REDACTED,
    }
    text = json.dumps(sanitize(_config()), allow_nan=False)
    assert not [s for s in _secrets() if s in text]


def test_redact_never_mutates_and_copies() -> None:
    original = _config()
    before = copy.deepcopy(original)
    out = redact(original)
    assert original == before
    assert out["optimizer"] is not original["optimizer"]
    assert out["optimizer"]["betas"] is not original["optimizer"]["betas"]
    out["optimizer"]["name"] = "changed"
    assert original["optimizer"]["name"] == "adamw"


def test_leaf_values_become_plain_json() -> None:
    class Secretive:
        def __repr__(self) -> str:
            raise AssertionError("repr must not be called")

        __str__ = __repr__

    class Label(str):
        def __str__(self) -> str:
            return "not the content"

    out = redact({
        "nan": math.nan, "inf": math.inf, "ninf": -math.inf, "big": 10**30, "huge": 2**10000,
        "np_f": np.float32(1.5), "np_i": np.int64(7), "np_nan": np.float64("nan"),
        "np_arr": np.zeros((2, 3)), "np_str": np.array([HF]), "obj": Secretive(),
        "bytes": b"\x00secret", "label": Label("plain"), "nul": "a\x00b",
        5: "int key", 1.5: "float key", None: "none key", True: "bool key", (1, 2): "tuple key",
    })
    assert out == {
        "nan": "NaN", "inf": "Infinity", "ninf": "-Infinity", "big": str(10**30),
        "huge": "[TRUNCATED: integer of 10001 bits]", "np_f": 1.5, "np_i": 7, "np_nan": "NaN",
        "np_arr": {"_type": "numpy.ndarray", "shape": [2, 3], "dtype": "float64"},
        "np_str": REDACTED, "obj": {"_type": "test_redact.Secretive"},
        "bytes": {"_type": "bytes", "length": 7}, "label": "plain", "nul": "a\ufffdb",
        "5": "int key", "1.5": "float key", "null": "none key", "true": "bool key",
        "<tuple>": "tuple key",
    }
    assert type(out["big"]) is str and type(out["np_i"]) is int
    json.dumps(out, allow_nan=False)


def test_structural_limits_mark_what_was_cut() -> None:
    limits = Limits(max_str=10, max_items=3, max_depth=2, max_nodes=100, max_bytes=10**6)
    out = redact({"s": "x" * 25, "l": list(range(5)), "d": {str(i): i for i in range(5)},
                  "deep": {"a": {"b": 1}}}, limits)
    assert out == {
        "s": "x" * 10 + "...[TRUNCATED: 25 chars]",
        "l": [0, 1, 2, "[TRUNCATED: 2 of 5 items dropped]"],
        "d": {"0": 0, "1": 1, "2": 2, TRUNCATED_KEY: "2 of 5 keys dropped (too many)"},
        # max_items=3 keeps s, l, d; "deep" is beyond the first three keys
        TRUNCATED_KEY: "1 of 4 keys dropped (too many)",
    }
    deep = redact({"a": {"b": {"c": 1}}}, limits)
    assert deep == {"a": {"b": "[TRUNCATED: nested deeper than 2]"}}
    few = redact(list(range(10)), Limits(max_nodes=4))
    assert few == [0, 1, 2] + ["[TRUNCATED: too many values]"] * 7


def test_pathological_inputs_never_raise() -> None:
    cyclic: dict = {"a": 1}
    cyclic["self"] = cyclic
    assert redact(cyclic, Limits(max_depth=3))["self"]["self"] == {
        "a": 1, "self": "[TRUNCATED: nested deeper than 3]"}

    deep: list = []
    node = deep
    for _ in range(100_000):  # far beyond the recursion limit
        node.append([])
        node = node[0]
    out = redact(deep)
    for _ in range(31):
        out = out[0]
    assert out == ["[TRUNCATED: nested deeper than 32]"]

    class Broken(Mapping):
        def __getitem__(self, key: Any) -> Any:
            raise RuntimeError("boom")

        def __iter__(self) -> Iterator[Any]:
            raise RuntimeError("boom")

        def __len__(self) -> int:
            return 1

    assert redact({"ok": 1, "broken": Broken()}) == {"ok": 1, "broken": {
        TRUNCATED_KEY: "unreadable mapping"}}
    class Weird:
        @property
        def __class__(self) -> type:
            raise RuntimeError("no class")

    assert redact({"a": [1, Weird()], Weird(): 2, "b": 3}) == {"a": [1, UNREADABLE], "b": 3}
    assert redact(Weird()) == UNREADABLE
    assert redact(OrderedDict(a="x")) == {"a": "x"}
    assert redact("y" * (2 << 20)) == f"[TRUNCATED: {2 << 20} chars, not inspected]"


def test_copy_survives_concurrent_mutation() -> None:
    shared = {f"k{i}": [i] * 10 for i in range(500)}
    stop = threading.Event()

    def mutate() -> None:
        n = 0
        while not stop.is_set():
            shared[f"new{n}"] = [n]
            shared.pop(f"new{n - 50}", None)
            n += 1

    worker = threading.Thread(target=mutate, daemon=True)
    worker.start()
    try:
        results = [redact(shared) for _ in range(30)]
    finally:
        stop.set()
        worker.join(timeout=10)
    assert not worker.is_alive()
    assert all(isinstance(r, dict) and r["k499"] == [499] * 10 for r in results)


def _random_tree(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.random()
    if depth > 4 or kind < 0.45:
        return rng.choice([rng.randint(-10**6, 10**6), rng.random(), True, None,
                           "é" * rng.randint(0, 300), "x" * rng.randint(0, 3000), "\U0001f600" * 50])
    if kind < 0.75:
        return {f"key{i}": _random_tree(rng, depth + 1) for i in range(rng.randint(0, 12))}
    return [_random_tree(rng, depth + 1) for _ in range(rng.randint(0, 12))]


@pytest.mark.parametrize("seed", range(40))
def test_fit_bounds_serialized_size_deterministically(seed: int) -> None:
    rng = random.Random(seed)
    tree = {"framework": "megatron", "model_name": "llama", "body": _random_tree(rng)}
    size = json_size(tree)
    for budget in (64, 200, 1000, 5000, size // 2, size - 1, size):
        out = fit(tree, budget)
        assert json_size(out) <= max(budget, 2), (budget, size)
        assert out == fit(tree, budget)  # deterministic
        if budget >= 200:
            # the small scalar settings survive a big sibling
            assert out["framework"] == "megatron" and out["model_name"] == "llama"
    assert fit(tree, size) is tree


def test_fit_keeps_order_and_marks_cuts() -> None:
    tree = {"a": "x" * 1000, "b": 1, "c": list(range(400)), "d": "small", "e": {"big": "y" * 5000}}
    out = fit(tree, 1200)
    assert json_size(out) <= 1200
    assert list(out) == ["a", "b", "c", "d", TRUNCATED_KEY]
    assert out["b"] == 1 and out["d"] == "small" and out["a"] == "x" * 1000
    assert out[TRUNCATED_KEY] == "1 of 5 keys dropped (too large)"
    assert out["c"][-1].startswith("[TRUNCATED: ") and out["c"][-1].endswith(" of 400 items dropped]")
    assert out["c"][:3] == [0, 1, 2]
    text = fit("abcdefghij" * 100, 60)
    assert text.startswith("abcdefghij") and text.endswith("...[TRUNCATED: 1000 chars]")
    assert json_size(text) <= 60
    assert fit({"x": "y" * 100}, 10) == {}
    capped = redact({f"k{i}": "v" * 50 for i in range(10)}, Limits(max_items=6))
    both = fit(capped, 310)  # each entry is 58 bytes, the marker 94: three fit
    assert json_size(both) <= 310
    assert both[TRUNCATED_KEY] == "3 of 6 keys dropped (too large); 4 of 10 keys dropped (too many)"
    assert list(both) == ["k0", "k1", "k2", TRUNCATED_KEY]


def test_sanitize_caps_a_huge_config() -> None:
    config = {"framework": "deepspeed", "hf_token": HF,
              "layers": [{"name": f"layer{i}", "weights": "w" * 2000} for i in range(2000)],
              "table": {f"col{i}": "é" * 3000 for i in range(300)}}
    out = sanitize(config)
    text = json.dumps(out, separators=(",", ":"), allow_nan=False)
    assert len(text) <= 256 * 1024
    assert out["framework"] == "deepspeed" and out["hf_token"] == REDACTED
    assert HF not in text and "TRUNCATED" in text
