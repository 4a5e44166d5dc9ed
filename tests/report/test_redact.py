"""What may leave the machine and how much of it: credential rules, the evidence allow-list,
size bounds."""

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

from primus_lens_inject.credentials import (
    REDACTED,
    client_secrets,
    is_secret_key,
    looks_random,
    own_secrets,
    redact_key,
    redact_text,
    scrub,
    scrub_tree,
)
from primus_lens_inject.report import sendable
from primus_lens_inject.report.bounds import TRUNCATED_KEY, fit, json_size
from primus_lens_inject.report.evidence import (
    UNREADABLE,
    WITHHELD,
    Limits,
    allow,
    evidence_text,
    label,
    safe_text,
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
    # short and compound names that leaked before
    "pw", "db-pw", "dbPw", "hf_tok", "tok", "HF_TOKEN_2", "api_key_id", "X-Auth-Token",
    "client_cert", "ssl_certificate", "otp", "Proxy-Authorization", "mysecretvalue",
    # compact and abbreviated names (one word ending in a secret word), qualifiers after them
    "dbpass", "sshpass", "rootpw", "adminpwd", "apitoken", "hftoken", "githubtoken", "wandbkey",
    "pswd", "passw", "token_new", "DBPASS", "SSHPASS", "MYSQL_PWD", "ROOT_PASSW", "db_pswd",
    "storepass", "keypass", "hftok", "passkey", "oauth", "api_key_old", "HFTOKEN_BACKUP",
    "GithubToken", "WandbKey", "Passwort",
]
BENIGN_KEYS = [
    "tokenizer", "tokenizer_name", "max_tokens", "num_tokens", "tokens_per_second", "pad_token",
    "eos_token", "bos_token", "pad_token_id", "num_key_value_heads", "learning_rate", "model_name",
    "author", "authors", "monkey", "keyboard", "token_budget", "hf_cache_dir", "bypass",
    "num_passes", "sort_keys", "lr", "framework", "base_framework", "primus_config", "kv_channels",
    "keys", "", "_wandb", "path", "url", "HOME", "seed", "pad_token_id", "image_token",
    "eos_token_id", "sigma", "pin_memory", "passes", "tokens",
    # ordinary words and metric names beside the compact rule
    "token_count", "tokens_per_sec", "num_keys", "compass", "bypass_ratio", "passage_len",
    "turkey", "passed", "padtoken", "eostoken", "maxtoken", "pass_weight", "highpass_cutoff",
    "forwardpass_time", "hotkey", "token_len", "passenger", "passive", "keyword",
]


@pytest.mark.parametrize("name", SECRET_KEYS)
def test_secret_key_names(name: str) -> None:
    assert is_secret_key(name)


@pytest.mark.parametrize("name", [n for n in BENIGN_KEYS if n])
def test_ordinary_key_names(name: str) -> None:
    assert not is_secret_key(name)


B64_USER_PASS = "dXNlcjpTM2NyZXQvIyE="  # user:S3cret/#!


@pytest.mark.parametrize(("text", "expected"), [
    ("https://user:pa@ss@host.example.com/path?x=1", "https://[REDACTED]@host.example.com/path?x=1"),
    (f"https://{GHP}@github.com/org/repo.git", "https://[REDACTED]@github.com/org/repo.git"),
    ("redis://:s3cret@redis:6379/0", "redis://[REDACTED]@redis:6379/0"),
    # passwords holding "/", "#", "?" and ":" (generated ones, AWS-style secrets)
    ("postgres://app:wJal/rX#Ut?n:F@db:5432/x", "postgres://[REDACTED]@db:5432/x"),
    ("s3://AKIAEXAMPLE:s3cr3t/Key+x@bucket/x", "s3://[REDACTED]@bucket/x"),
    ("see http://a.example/x and mail me@b.example", "see http://a.example/x and mail me@b.example"),
    (f"s3://b/k?X-Amz-Signature=abc123&X-Amz-Credential={AKIA}/20240101/us&part=2",
     "s3://b/k?X-Amz-Signature=[REDACTED]&X-Amz-Credential=[REDACTED]&part=2"),
    ("https://acct.blob.core.windows.net/c?sv=2020&sig=abc%2Fdef&se=2025",
     "https://acct.blob.core.windows.net/c?sv=2020&sig=[REDACTED]&se=2025"),
    ("https://host/api?access_token=tok123#frag", "https://host/api?access_token=[REDACTED]#frag"),
    ("python train.py --hf_token abc123 --lr 3e-4 --password=hunter2 --tokenizer gpt2",
     "python train.py --hf_token [REDACTED] --lr 3e-4 --password=[REDACTED] --tokenizer gpt2"),
    ("--use_auth_token --fp16", "--use_auth_token --fp16"),
    ("Authorization: Bearer abcdefghijklmnop", "Authorization: [REDACTED]"),
    # the scheme word and its credential, in every spelling
    (f"Authorization: Basic {B64_USER_PASS}", "Authorization: [REDACTED]"),
    ("Authorization: Token tok-98765-zyx", "Authorization: [REDACTED]"),
    ("Authorization=Basic c2VjcmV0", "Authorization=[REDACTED]"),
    ("authorization = Token 1234", "authorization = [REDACTED]"),
    ("-H 'Proxy-Authorization: Negotiate YII=abc' -d x", "-H 'Proxy-Authorization: [REDACTED]' -d x"),
    ('Authorization: Digest username="a", realm="r", response="6629fae49393a053974509785"',
     "Authorization: [REDACTED]"),
    (f"header Basic {B64_USER_PASS} sent", "header [REDACTED] sent"),
    ("Basic training, Basic tier", "Basic training, Basic tier"),
    ("curl -H 'x: Bearer abcdefghijklmnop'", "curl -H 'x: [REDACTED]'"),
    ('{"api_key": "zzz-secret", "model": "llama"}', '{"api_key": "[REDACTED]", "model": "llama"}'),
    ("{'password': 'p4ss', 'lr': 1}", "{'password': '[REDACTED]', 'lr': 1}"),
    ("Server=db;AccountKey=abc+/def==;User=me", "Server=db;AccountKey=[REDACTED];User=me"),
    ("note: token=abc", "note: token=[REDACTED]"),
    ("pw=abc db-pw: hunter2 hf_tok=xyz", "pw=[REDACTED] db-pw: [REDACTED] hf_tok=[REDACTED]"),
    (f"key {HF} in text", "key [REDACTED] in text"),
    (f"{GHP} {SK} {AKIA} {JWT} {GOOGLE}", " ".join([REDACTED] * 5)),
    ("xoxb-1234567890-abcdefghij npm_" + "a" * 36, f"{REDACTED} {REDACTED}"),
    ("sk_live_" + "a1" * 12, REDACTED),
    ("glpat-" + "x" * 20 + " pypi-" + "A" * 60, f"{REDACTED} {REDACTED}"),
    ("github_pat_" + "1A" * 20 + " ya29." + "b" * 30, f"{REDACTED} {REDACTED}"),
    ("a\n-----BEGIN RSA PRIVATE KEY-----\nMIIEow\nIBAAK==\n-----END RSA PRIVATE KEY-----\nb",
     f"a\n{REDACTED}\nb"),
    # random-looking strings shortly after a secret word
    ("aws secret wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY here", f"aws secret {REDACTED} here"),
    ("the password is Xk9qLm2pR7sTzz81", f"the password is {REDACTED}"),
    ("wandb key 0123456789abcdef0123456789abcdef0123abcd", f"wandb key {REDACTED}"),
    # compact names in pairs
    ("dbpass=hunter2 SSHPASS: hunter3 rootpw=x adminpwd=y",
     "dbpass=[REDACTED] SSHPASS: [REDACTED] rootpw=[REDACTED] adminpwd=[REDACTED]"),
    ("--hftoken abc --wandbkey=def token_new=ghi",
     "--hftoken [REDACTED] --wandbkey=[REDACTED] token_new=[REDACTED]"),
    # credential flags of common clients, separate, attached, quoted, in chains
    ("mysql -u root -p hunter2 db", "mysql -u root -p [REDACTED] db"),
    ("/usr/bin/mysql -uroot -phunter2 -h db", "/usr/bin/mysql -uroot -p[REDACTED] -h db"),
    ("mysql --password hunter2; mysql --password=hunter3",
     "mysql --password [REDACTED]; mysql --password=[REDACTED]"),
    ("mysqldump -p'pa ss' db && ls -p x", "mysqldump -p[REDACTED] db && ls -p x"),
    ("sshpass -p 'hunter 2' ssh -p 22 host", "sshpass -p '[REDACTED]' ssh -p 22 host"),
    ("curl -u admin:hunter2 https://x", "curl -u [REDACTED] https://x"),
    ("curl --user=admin:hunter2 -U proxy:pw2 -s x", "curl --user=[REDACTED] -U [REDACTED] -s x"),
    ("curl -s -H 'Authorization: Bearer abcdefghijk' https://x",
     "curl -s -H 'Authorization: [REDACTED]' https://x"),
    ("tool --token abc --api-key def --pw ghi",
     "tool --token [REDACTED] --api-key [REDACTED] --pw [REDACTED]"),
    ("redis-cli -a hunter2 ping | mongosh -p hunter3",
     "redis-cli -a [REDACTED] ping | mongosh -p [REDACTED]"),
    ("wandb login --relogin 0123456789abcdef", "wandb login --relogin [REDACTED]"),
    ("ldapsearch -x -w hunter2 -b dc=x", "ldapsearch -x -w [REDACTED] -b dc=x"),
    ("openssl enc -passin pass:hunter2 -in f", "openssl enc -passin [REDACTED] -in f"),
    ("sqlcmd -S db -U sa -P hunter2", "sqlcmd -S db -U sa -P [REDACTED]"),
    ("7z x -phunter2 a.7z", "7z x -p[REDACTED] a.7z"),
    # credentials in a URL's query or fragment
    ("https://fn.azurewebsites.net/api/x?code=abc123&name=a",
     "https://fn.azurewebsites.net/api/x?code=[REDACTED]&name=a"),
    ("https://h/cb?state=1&code=abc#x", "https://h/cb?state=1&code=[REDACTED]#x"),
    ("https://h/x?token=a&key=b&password=c&sig=d&ticket=e&sid=f",
     "https://h/x?token=[REDACTED]&key=[REDACTED]&password=[REDACTED]&sig=[REDACTED]"
     "&ticket=[REDACTED]&sid=[REDACTED]"),
    ("https://h/#access_token=abc&token_type=bearer",
     "https://h/#access_token=[REDACTED]&token_type=bearer"),
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
    "AKIAIOSFODNN7EXAMPLEX", "", "日本語のテキスト", "train/loss", "eval/accuracy@1",
    "Token throughput", "key_value_heads/layer_3",
    # the false-positive side of the compact, client and query rules
    "token_count=5 tokens_per_sec=3.5 max_tokens=7 num_keys=2 passes=3 keyboard=1 compass=2",
    "bypass_ratio=0.1 passage_len=4 monkey=1 turkey=2 passed=1 token_len=9",
    "exit code=3 error_code=4 code: 200", "https://h/cb?state=ok&mode=1&codec=h264",
    "run -p 8 now", "ssh -p 22 host", "docker run -p 8080:80 img", "python train.py -p 4",
    "mysql is up", "curl https://x", "the wandb login page",
])
def test_ordinary_strings_survive(text: str) -> None:
    assert redact_text(text) == text


# --- the evidence allow-list ------------------------------------------------------------------------


@pytest.mark.parametrize("text", [
    "megatron", "3e-4", "-1", "true", "bf16", "llama3-8b", "2.5.1+rocm6.2", "Megatron-LM",
    "/workspace/exp/llama3_8B.yaml", "meta-llama/Llama-3-8B", "rocm,cpu", "0,1,2,3", "a, b",
    "cuda:0", "localhost:8080", "rocm/primus:v25.9", "https://github.com/org/repo", "--lr", "",
    "s3://bucket/data/train", "DeepSpeedTrainer", "/data/hf_cache/datasets", "s3://bucket",
    "http://minio.local:9000/bucket/x",
])
def test_expected_shapes_pass(text: str) -> None:
    assert safe_text(text) and evidence_text(text) == text


@pytest.mark.parametrize("text", [
    "admin:hunter2", "https://u:p@h/x", "https://u:p/#x@h/x", "https://h/x?token=abc",
    "https://h/x#frag", "free text here", '{"a": 1}', "0123456789abcdef0123456789abcdef01234567",
    HF, GHP, SK, AKIA, JWT, "x" * 300, "a" * 40, "s3://AKIAEXAMPLE:secret@bucket", "a=b c",
    "Xk9qLm2pR7sTzz81", "dXNlcjpwYXNz\n", "x\x00y", "--password hunter2", "a;b", "~user@host",
])
def test_other_shapes_are_withheld(text: str) -> None:
    assert not safe_text(text) and evidence_text(text) == WITHHELD


@pytest.mark.parametrize(("args", "secret"), [
    (["mysql", "-u", "root", "-p", "pw1", "db"], {4: 0}),
    (["/usr/bin/mysql", "-uroot", "-ppw1"], {2: 2}),
    (["mysql", "-p", "-h", "db"], {}),  # "-p" alone prompts: "-h" is not its value
    (["sshpass", "-p", "pw1", "ssh", "-p", "22", "host"], {2: 0}),
    (["curl", "-u", "a:b", "--user=c:d", "-s"], {2: 0, 3: 7}),
    (["wandb", "login", "--relogin", "0123456789abcdef0123"], {3: 0}),
    (["wandb", "login", "page"], {}),
    (["mysql", "-ppw1", ";", "ls", "-p", "x"], {1: 2}),
    (["train.py", "-p", "8"], {}), (["docker", "run", "-p", "80:80"], {}), ([1, "mysql"], {}),
])
def test_client_secrets_in_argument_lists(args: list, secret: dict) -> None:
    assert client_secrets(args) == secret


def test_argument_lists_in_the_config_are_withheld_by_client() -> None:
    argv = ["mysql", "-u", "root", "-p", "hunter2", "-phunter3", "db", "&&", "curl", "-u",
            "admin:hunter4", "-p", "8"]
    assert allow({"argv": argv}) == {"argv": [  # "&&" is not a safe shape either
        "mysql", "-u", "root", "-p", WITHHELD, WITHHELD, "db", WITHHELD, "curl", "-u", WITHHELD,
        "-p", "8"]}


def test_flag_with_value_and_secret_names() -> None:
    assert evidence_text("--lr=3e-4") == "--lr=3e-4"
    assert evidence_text("--data=/x/y") == "--data=/x/y"
    assert evidence_text("--api-key=abc") == WITHHELD
    assert evidence_text("--pw=abc") == WITHHELD
    assert allow({"PRIMUS_HF_TOKEN": "megatron", "FRAMEWORK": "megatron"}) == {
        "PRIMUS_HF_TOKEN": WITHHELD, "FRAMEWORK": "megatron"}


def test_labels_are_redacted_not_withheld() -> None:
    assert label("glorious-sun-42") == "glorious-sun-42"
    assert label("lr sweep, run #3") == "lr sweep, run #3"
    assert label(f"run-{GHP}") == f"run-{REDACTED}"
    assert label("ckpt-0123456789abcdef0123") == f"ckpt-{REDACTED}"
    assert label("db https://u:p/#w@h/x") == f"db https://{REDACTED}@h/x"
    assert label("a\x00b") == "a\ufffdb"
    assert label("ab " * 200, 10) == "ab ab ab a...[TRUNCATED: 600 chars]"


def _secrets() -> list:
    return ["hunter2", "wandb-key-value", "nested-pw", "listed-token-value", "k8s-env-value",
            "inner:pass", "flag-value-1", "tuple-value-2", "basic-cred-3", HF, GHP, SK, AKIA, JWT]


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
        "argv": ["--lr", "0.1", "--api-key", "flag-value-1", "--seed=3", "--pw=x"],
        "pairs": [("HF_TOKEN", "tuple-value-2"), ["Authorization", "Basic basic-cred-3"]],
        "description": "my first run with warmup",
    }


def test_allow_nested_structures() -> None:
    assert allow(_config()) == {
        "lr": 3e-4, "epochs": 3, "bf16": True, "note": None, "model_name": "llama3-8b",
        "password": WITHHELD,
        "WANDB_API_KEY": WITHHELD,
        "optimizer": {"name": "adamw", "betas": [0.9, 0.95],
                      "db": {"url": WITHHELD, "pwd": WITHHELD}},
        "callbacks": [{"type": "hub", "hub_token": WITHHELD}, ["tuple", WITHHELD]],
        "env": [{"name": "HF_TOKEN", "value": WITHHELD}, {"name": "LR", "value": "0.1"}],
        "innocent": {"a": WITHHELD, "b": WITHHELD, "c": [WITHHELD, WITHHELD]},
        "auth": WITHHELD,
        "argv": ["--lr", "0.1", "--api-key", WITHHELD, "--seed=3", WITHHELD],
        "pairs": [["HF_TOKEN", WITHHELD], ["Authorization", WITHHELD]],
        "description": WITHHELD,
    }
    text = json.dumps(sanitize(_config()), allow_nan=False)
    assert not [s for s in _secrets() if s in text]


def test_keys_are_labels() -> None:
    out = allow({"https://u:p/w#1@h/x": 1, GHP: 2, "ab " * 10: 3, "lr": 4}, Limits(max_str=24))
    assert out == {f"https://{REDACTED}@h/x": 1, REDACTED: 2,
                   "ab ab ab ab ab ab ab ab ...[TRUNCATED: 30 chars]": 3, "lr": 4}


def test_allow_never_mutates_and_copies() -> None:
    original = _config()
    before = copy.deepcopy(original)
    out = allow(original)
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

    out = allow({
        "nan": math.nan, "inf": math.inf, "ninf": -math.inf, "big": 10**30, "huge": 2**10000,
        "np_f": np.float32(1.5), "np_i": np.int64(7), "np_nan": np.float64("nan"),
        "np_arr": np.zeros((2, 3)), "np_str": np.array([HF]), "obj": Secretive(),
        "bytes": b"\x00secret", "label": Label("plain"), "nul": "a\x00b",
        5: "int_key", 1.5: "float_key", None: "none_key", True: "bool_key", (1, 2): "tuple_key",
    })
    assert out == {
        "nan": "NaN", "inf": "Infinity", "ninf": "-Infinity", "big": str(10**30),
        "huge": "[TRUNCATED: integer of 10001 bits]", "np_f": 1.5, "np_i": 7, "np_nan": "NaN",
        "np_arr": [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]], "np_str": WITHHELD,
        "obj": {"_type": "test_redact.Secretive"},
        "bytes": {"_type": "bytes", "length": 7}, "label": "plain", "nul": WITHHELD,
        "5": "int_key", "1.5": "float_key", "null": "none_key", "true": "bool_key",
        "<tuple>": "tuple_key",
    }
    assert type(out["big"]) is str and type(out["np_i"]) is int
    json.dumps(out, allow_nan=False)


def test_structural_limits_mark_what_was_cut() -> None:
    limits = Limits(max_str=10, max_items=3, max_depth=2, max_nodes=100, max_bytes=10**6)
    out = allow({"s" * 25: "x", "l": list(range(5)), "d": {str(i): i for i in range(5)},
                 "deep": {"a": {"b": 1}}}, limits)
    assert out == {
        "s" * 10 + "...[TRUNCATED: 25 chars]": "x",
        "l": [0, 1, 2, "[TRUNCATED: 2 of 5 items dropped]"],
        "d": {"0": 0, "1": 1, "2": 2, TRUNCATED_KEY: "2 of 5 keys dropped (too many)"},
        # max_items=3 keeps s, l, d; "deep" is beyond the first three keys
        TRUNCATED_KEY: "1 of 4 keys dropped (too many)",
    }
    deep = allow({"a": {"b": {"c": 1}}}, limits)
    assert deep == {"a": {"b": "[TRUNCATED: nested deeper than 2]"}}
    few = allow(list(range(10)), Limits(max_nodes=4))
    assert few == [0, 1, 2] + ["[TRUNCATED: too many values]"] * 7


def test_pathological_inputs_never_raise() -> None:
    cyclic: dict = {"a": 1}
    cyclic["self"] = cyclic
    assert allow(cyclic, Limits(max_depth=3))["self"]["self"] == {
        "a": 1, "self": "[TRUNCATED: nested deeper than 3]"}

    deep: list = []
    node = deep
    for _ in range(100_000):  # far beyond the recursion limit
        node.append([])
        node = node[0]
    out = allow(deep)
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

    assert allow({"ok": 1, "broken": Broken()}) == {"ok": 1, "broken": {
        TRUNCATED_KEY: "unreadable mapping"}}

    class Weird:
        @property
        def __class__(self) -> type:
            raise RuntimeError("no class")

    assert allow({"a": [1, Weird()], Weird(): 2, "b": 3}) == {"a": [1, UNREADABLE], "b": 3}
    assert allow(Weird()) == UNREADABLE
    assert allow(OrderedDict(a="x")) == {"a": "x"}
    assert allow("y" * (2 << 20)) == WITHHELD
    assert label("y" * (2 << 20)) == f"[TRUNCATED: {2 << 20} chars, not inspected]"
    assert redact_text("y" * (2 << 20)) == f"[TRUNCATED: {2 << 20} chars, not inspected]"


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
        results = [allow(shared) for _ in range(30)]
    finally:
        stop.set()
        worker.join(timeout=10)
    assert not worker.is_alive()
    assert all(isinstance(r, dict) and r["k499"] == [499] * 10 for r in results)


def _random_tree(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.random()
    if depth > 4 or kind < 0.45:
        return rng.choice([rng.randint(-10**6, 10**6), rng.random(), True, None,
                           "é" * rng.randint(0, 300), "x-" * rng.randint(0, 1500), "\U0001f600" * 50])
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
    capped = allow({f"k{i}": "v-" * 25 for i in range(10)}, Limits(max_items=6))
    both = fit(capped, 310)  # each entry is 58 bytes, the marker 94: three fit
    assert json_size(both) <= 310
    assert both[TRUNCATED_KEY] == "3 of 6 keys dropped (too large); 4 of 10 keys dropped (too many)"
    assert list(both) == ["k0", "k1", "k2", TRUNCATED_KEY]


def test_sanitize_caps_a_huge_config() -> None:
    config = {"framework": "deepspeed", "hf_token": HF,
              "layers": [{"name": f"layer{i}", "init": "w-" * 120} for i in range(2000)],
              "table": {f"col{i}": "e-" * 120 for i in range(300)}}
    out = sanitize(config)
    text = json.dumps(out, separators=(",", ":"), allow_nan=False)
    assert len(text) <= 256 * 1024
    assert out["framework"] == "deepspeed" and out["hf_token"] == WITHHELD
    assert HF not in text and "TRUNCATED" in text


# --- the injector's own secrets ----------------------------------------------------------------------

OWN = {"PRIMUS_LENS_API_BASE_URL": "https://lens:p%2Fw0rd-9z@lens.example.com/v1",
       "PRIMUS_LENS_API_HEADERS": "X-Api-Key: plainkey77; Cookie: sess=cookievalue1; x=1"}


def test_own_secrets_are_scrubbed_by_exact_match() -> None:
    assert own_secrets(OWN) == (  # longest first; the user name alone is not a secret
        "X-Api-Key: plainkey77; Cookie: sess=cookievalue1; x=1", "sess=cookievalue1",
        "lens:p%2Fw0rd-9z", "lens:p/w0rd-9z", "cookievalue1", "p%2Fw0rd-9z", "plainkey77",
        "p/w0rd-9z")
    line = ("reporting to https://lens:p%2Fw0rd-9z@lens.example.com/v1 failed: sent plainkey77, "
            "cookievalue1 and p/w0rd-9z")
    assert scrub(line, OWN) == (f"reporting to https://{REDACTED}@lens.example.com/v1 failed: "
                                f"sent {REDACTED}, {REDACTED} and {REDACTED}")
    assert scrub("session_started x=1", OWN) == "session_started x=1"  # short words are not ours
    cut = "ignoring PRIMUS_LENS_API_BASE_URL='https://lens:p%2Fw0r...': expected a URL"
    assert scrub(cut, OWN) == f"ignoring PRIMUS_LENS_API_BASE_URL='https://{REDACTED}...': expected a URL"
    assert own_secrets({}) == ()
    otlp = {"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT":
            "https://otel:pw%2F9-zz@c:4318/v1/metrics?code=azfnkey123&fmt=json&tenant=Xk9QpL2mN8vB4cD7",
            "OTEL_EXPORTER_OTLP_ENDPOINT": "https://c:4318?api-key=k3y4567"}
    assert own_secrets(otlp) == ("Xk9QpL2mN8vB4cD7", "otel:pw%2F9-zz", "otel:pw/9-zz",
                                 "azfnkey123", "pw%2F9-zz", "k3y4567", "pw/9-zz")
    cut = "OTLP export to https://c:4318/v1/metrics?code=azfnke... failed; tenant Xk9QpL2mN8vB4cD7"
    assert scrub(cut, otlp) == (f"OTLP export to https://c:4318/v1/metrics?code={REDACTED} "
                                f"failed; tenant {REDACTED}")
    status = {"endpoint": OWN["PRIMUS_LENS_API_BASE_URL"], "n": 3, "errors": ["plainkey77"],
              "dropped": {"server said plainkey77": 1}}
    assert scrub_tree(status, OWN) == {"endpoint": f"https://{REDACTED}@lens.example.com/v1",
                                       "n": 3, "errors": [REDACTED],
                                       "dropped": {f"server said {REDACTED}": 1}}


TOKEN_KEYS = [HF, GHP, SK, JWT, AKIA, GOOGLE, "Xk9QpL2mN8vB4cD7fG1hJ3sT5wY6zR0a",
              f"loss_{HF}", f"eval/{GHP}/acc", "train/8f14e45fceea167a8f14_acc", f"acc_{AKIA}",
              "https://h/x?code=abc123/loss", "dbpass=hunter2/loss"]
BENIGN_METRIC_KEYS = ["token_count", "tokens_per_sec", "max_tokens", "num_keys", "passes",
                      "password_policy_len", "keyboard", "compass", "bypass_ratio", "passage_len",
                      "monkey", "turkey", "passed", "train/loss", "Qwen25Coder32BInstruct/acc",
                      "layers.0.self_attn.q_proj.weight_grad_norm", "_primus_gpu_0_util_percent"]


def test_token_shaped_metric_keys_never_leave_verbatim() -> None:
    """A key that is a token (or holds one) is redacted, not dropped: its value still arrives."""
    sent = sendable.sendable({key: 1.0 for key in TOKEN_KEYS + BENIGN_METRIC_KEYS})
    assert {k: v for k, v in sent.items() if k in BENIGN_METRIC_KEYS} == dict.fromkeys(
        BENIGN_METRIC_KEYS, 1.0)
    redacted = set(sent) - set(BENIGN_METRIC_KEYS)
    assert redacted == {REDACTED, f"loss_hf_{REDACTED}", f"eval/{REDACTED}/acc",
                        f"train/{REDACTED}_acc", f"acc_{REDACTED}",
                        f"https://h/x?code={REDACTED}", f"dbpass={REDACTED}"}  # to the end
    assert not [k for k in TOKEN_KEYS if any(k in key or key in k for key in redacted)]


def test_metric_keys_are_redacted_once_per_key() -> None:
    redact_key.cache_clear()
    keys = [f"https://u:p/w@h/loss{i % 3}" for i in range(30)]
    assert {redact_key(k) for k in keys} == {f"https://{REDACTED}@h/loss{i}" for i in range(3)}
    assert redact_key.cache_info().misses == 3
    assert redact_key("train/loss") == "train/loss"


@pytest.mark.parametrize(("text", "random_looking"), [
    ("Xk9QpL2mN8vB4cD7", True), ("XkQpLmNvBcDfGhJsTwYz", True), ("8f14e45fceea167a", True),
    ("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", True), ("x" * 32, True),
    ("GPT2BPETokenizer", False), ("HuggingFaceTokenizer", False), ("Qwen25Coder32BInstruct", False),
    ("pretrainingconfiguration", False), ("run20240101120000abc", False),
    ("examples/megatron/configs/llama3_8B-pretrain.yaml", False), ("/data/Models/Llama3/8B/ckpt", False),
    ("5b0c3f0e-2a7d-4c61-9a51-0f4f6c1d2e3a", False),
])
def test_what_random_looks_like(text: str, random_looking: bool) -> None:
    assert looks_random(text) is random_looking


def test_random_tokens_are_mostly_recognised() -> None:
    rng = random.Random(11)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    tokens = ["".join(rng.choice(alphabet) for _ in range(n)) for n in (16, 20, 24, 28) * 500]
    missed = [t for t in tokens if not looks_random(t)]
    assert len(missed) <= len(tokens) * 0.03  # documented: about 1.5% escape
    assert all(looks_random("".join(rng.choice("0123456789abcdef") for _ in range(16)) + "a1")
               for _ in range(200))
