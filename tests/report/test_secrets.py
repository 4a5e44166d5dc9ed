"""No credential ever leaves the pod: a corpus of planted secrets, every byte we send or write.

Secrets are generated around recognisable markers (``zq<n>leak``) and planted where real jobs
keep them: the environment (framework variables and others, compact names such as
``PRIMUS_DBPASS``), ``wandb.config`` (secret-looking and compact keys, token formats under
innocent keys, free text, URLs with credentials in the userinfo or the query, command lines and
argv-like lists with credential flags of common clients, tuples, Kubernetes env lists,
secret-bearing keys), the process's own argv, the run's name, tags, notes and group, metric keys
(token-shaped, glued into words, URLs, pairs) and our own settings (the base URL's password,
``PRIMUS_LENS_API_HEADERS``, the OTLP endpoint's ``?code=``, ``WANDB_PROJECT``, invalid values).
Real wandb training subprocesses report to the built-in receiver and to an OTLP collector on
loopback at once; no marker may appear in any request body either received, in stderr, in
``primus-lens doctor``'s output or in any file we write beside the record (status, cursor, owner
lock, pending detection reports).  The record itself is the user's and keeps their metric keys.
The false-positive side: ordinary metric keys that hold secret words (``token_count``,
``password_policy_len``, ``bypass_ratio``) arrive unchanged at both.  The positive side:
framework detection from Megatron, DeepSpeed and torchrun environments is what it was before the
allow-list.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest
from conftest import run_training, training_env, wait_until
from otlp_support import Answer, OtlpServer
from test_reporting import free_port, reporting_env

from primus_lens_inject.config import Config
from primus_lens_inject.credentials import REDACTED
from primus_lens_inject.devserver.receiver import Receiver
from primus_lens_inject.report.detection import build_report
from primus_lens_inject.report.evidence import WITHHELD
from primus_lens_inject.report.runfacts import RunFacts
from primus_lens_inject.topology import Topology

ALNUM = "Xk9QpL2mN8vB4cD7fG1hJ3sT5wY6zR0a"  # padding that mixes case and digits, like real tokens


class Corpus:
    """Generated secrets, each holding a unique marker; ``needles`` are what must never appear."""

    def __init__(self) -> None:
        self.needles: List[str] = []

    def marker(self) -> str:
        found = f"zq{len(self.needles):03d}leak"
        self.needles.append(found)
        return found

    def also(self, needle: str) -> str:
        """An encoded form that must not appear either (a Basic credential hides its marker)."""
        self.needles.append(needle)
        return needle

    def pad(self, length: int, alphabet: str = ALNUM) -> str:
        text = self.marker() + alphabet * 4
        return text[:length]

    # well-known formats, each with its marker inside
    def hf(self) -> str:
        return "hf_" + self.pad(34)

    def ghp(self) -> str:
        return "ghp_" + self.pad(36)

    def github_pat(self) -> str:
        return "github_pat_" + self.pad(40)

    def openai(self) -> str:
        return "sk-proj-" + self.pad(32)

    def akia(self) -> str:
        return "AKIA" + (self.marker().upper() + "7XYZABCDEFG")[:16]

    def aws_secret(self) -> str:
        return (self.marker() + "/K7MDENG/bPxRfiCYEXAMPLEKEY0123456789")[:40]

    def jwt(self) -> str:
        return f"eyJhbGciOiJIUzI1NiJ9.eyJ{self.pad(24)}.c2lnbmF0dXJlLXZhbHVl"

    def slack(self) -> str:
        return f"xoxb-1234567890-{self.pad(24)}"

    def google(self) -> str:
        return "AIza" + self.pad(35)

    def gitlab(self) -> str:
        return "glpat-" + self.pad(20)

    def npm(self) -> str:
        return "npm_" + self.pad(36)

    def pem(self) -> str:
        return f"-----BEGIN RSA PRIVATE KEY-----\nMIIE{self.pad(40)}\n-----END RSA PRIVATE KEY-----"

    def basic(self) -> str:
        """A Basic credential: base64 of user:password, the password holding a marker."""
        return self.also(base64.b64encode(f"svc:{self.marker()}/#x".encode()).decode())

    def url(self) -> str:
        """A URL whose password holds "/", "#" and "?" (generated passwords do)."""
        return f"https://svc:{self.marker()}/a#b?c@data.example.com:8443/set"

    def tokens(self) -> List[str]:
        return [self.hf(), self.ghp(), self.github_pat(), self.openai(), self.akia(),
                self.jwt(), self.slack(), self.google(), self.gitlab(), self.npm(), self.pem()]


SECRET_NAMES = ["pw", "db-pw", "hf_tok", "tok", "apiKey", "dbPassword", "x-auth-token",
                "private_key", "session_id", "cookie", "signature", "sig", "client_cert",
                "passwd", "credentials", "wandb_api_key", "AWS_SECRET_ACCESS_KEY", "OAuth2Token",
                "github_pat", "bearer", "jwt", "otp", "secret", "HF_TOKEN_2"]


# Compact and abbreviated names: only the name gives their identifier-shaped values away.
COMPACT_NAMES = ["dbpass", "sshpass", "rootpw", "adminpwd", "apitoken", "hftoken", "githubtoken",
                 "wandbkey", "pswd", "passw", "token_new", "MysqlPwd", "storepass", "hftok",
                 "api_key_old", "passkey"]
# Metric keys holding secret words that are not secrets: they arrive unchanged.
ORDINARY_KEYS = ["token_count", "tokens_per_sec", "max_tokens", "num_keys", "passes",
                 "password_policy_len", "keyboard", "compass", "bypass_ratio", "passage_len",
                 "monkey", "turkey", "passed"]


def plant_urls(c: Corpus) -> List[str]:
    """Credentials in a URL's query or fragment."""
    return [f"https://fn.azurewebsites.net/api/hook?code={c.marker()}&name=a",
            f"https://sso.example.com/cb?state=1&code={c.marker()}",
            f"https://h.example.com/x?token={c.marker()}",
            f"https://acct.blob.core.windows.net/c/x?sv=2020&sig={c.marker()}",
            f"https://maps.example.com/x?key={c.marker()}&v=1",
            f"https://b.s3.amazonaws.com/k?X-Amz-Signature={c.marker()}&X-Amz-Credential={c.akia()}",
            f"https://h.example.com/login?user=a&password={c.marker()}",
            f"https://h.example.com/#access_token={c.marker()}&token_type=bearer",
            f"https://cas.example.com/x?ticket={c.marker()}"]


def plant_arguments(c: Corpus) -> List[str]:
    """A command line (the process's argv, and in the config): credential flags of clients."""
    return ["--lr", "3e-4", "--dbpass", c.marker(), "--password", c.marker(),
            f"--password={c.marker()}", "--token", c.marker(), "--api-key", c.marker(),
            "--hftoken", c.marker(), "&&", "mysql", "-u", "root", "-p", c.marker(),
            f"-p{c.marker()}", "db", ";", "sshpass", "-p", c.marker(), "ssh", "-p", "22", "host",
            "&&", "curl", "-u", f"admin:{c.marker()}", f"--user=svc:{c.marker()}", "-H",
            f"Authorization: Bearer {c.marker()}", "https://x.example.com", ";", "redis-cli",
            "-a", c.marker(), ";", "wandb", "login", c.pad(40), ";", "ldapsearch", "-w",
            c.marker(), ";", "openssl", "enc", "-passin", f"pass:{c.marker()}"]


def plant_environment(c: Corpus) -> Dict[str, str]:
    return {
        # framework variables, sent by name, with values that must be withheld
        "PRIMUS_CONFIG": c.url(),
        "MEGATRON_DATA_URL": f"s3://AKIAEXAMPLE:{c.marker()}/w+J@bucket/data",
        "DEEPSPEED_CONFIG": f'{{"train_batch_size": 8, "comms": {{"token": "{c.marker()}"}}}}',
        "PRIMUS_HF_TOKEN": c.marker(), "PRIMUS_DB_PW": c.marker(), "MEGATRON_TOK": c.marker(),
        "DEEPSPEED_API_KEY": c.marker(),
        "MODEL_NAME": f"https://user:{c.marker()}@hf.example.com/meta-llama/Llama-3-8B",
        "FRAMEWORK": c.pad(24), "MODEL_ID": c.hf(), "PRIMUS_MODEL": c.ghp(),
        "TRAINING_MODE": c.jwt(), "PRECISION": f"bf16 password={c.marker()}",
        "PRIMUS_EXTRA_HEADERS": f"Authorization: Basic {c.basic()}",
        "MEGATRON_AUTH_HEADER": f"Authorization=Token {c.marker()}",
        "PRIMUS_ARGS": f"--lr 3e-4 --api-key {c.marker()}",
        "DS_CONFIG": f"/cfg/ds.json?sig={c.marker()}",
        # build variables
        "BUILD_URL": f"https://ci.example.com/job/7?access_token={c.marker()}",
        "GIT_REPO": f"https://{c.ghp()}@github.com/org/repo.git",
        "DOCKERFILE_URL": f"https://u:{c.marker()}#x@git.example.com/Dockerfile",
        "IMAGE_TAG": f"registry.example.com/team/img:v1?X-Amz-Signature={c.marker()}",
        "GIT_BRANCH": f"feature/{c.hf()}", "CI_PIPELINE_ID": f"Bearer {c.marker()}abcdef",
        # everything else a job carries
        "HF_TOKEN": c.hf(), "WANDB_API_KEY": c.also("0123456789abcdef0123456789abcdef0badc0de"),
        "AWS_SECRET_ACCESS_KEY": c.aws_secret(), "AWS_ACCESS_KEY_ID": c.akia(),
        "GITHUB_TOKEN": c.ghp(), "OPENAI_API_KEY": c.openai(), "SLACK_TOKEN": c.slack(),
        "DATABASE_URL": f"postgres://app:{c.marker()}/x@db:5432/x",
        "HUGGING_FACE_HUB_TOKEN": c.hf(), "GOOGLE_API_KEY": c.google(),
        # read for hardware versions: only version- and arch-shaped values count
        "ROCM_VERSION": c.pad(40), "CUDA_VERSION": c.hf(), "GPU_ARCH": c.pad(30),
        # compact names of framework variables, client command lines, URL query credentials
        **{f"PRIMUS_{name.upper()}": c.marker() for name in COMPACT_NAMES},
        "MEGATRON_LAUNCH": f"mysql -uroot -p{c.marker()} db && sshpass -p {c.marker()} ssh h",
        **{f"PRIMUS_URL_{i}": url for i, url in enumerate(plant_urls(c))},
        "DBPASS": c.marker(), "SSHPASS": c.marker(), "HFTOKEN": c.hf(),
    }


def plant_config(c: Corpus) -> Dict[str, Any]:
    config: Dict[str, Any] = {"lr": 3e-4, "model_name": "llama3-8b", "framework": "megatron",
                              "micro_batch_size": 2, "bf16": True}
    for name in SECRET_NAMES:
        config[name] = c.marker()  # identifier-shaped: only the key gives it away
    config.update({
        "db": {"password": c.marker(), "host": "db.internal"},
        "storage": {"endpoint": c.url(), "region": "us-east-1"},
        "innocent": [*c.tokens(), c.aws_secret()],
        "note": f"the password is {c.marker()}",
        "cmd": f"python train.py --hf-token {c.marker()} --lr 3e-4",
        "headers": [f"Authorization: Basic {c.basic()}", f"Authorization: Token {c.marker()}",
                    f"Authorization=Basic {c.basic()}"],
        "dsn": f"postgres://app:{c.marker()}/#@db/x",
        "args": ["--lr", "0.1", "--api-key", c.marker(), "--hf_token", c.marker(),
                 "--db-pw", c.marker(), f"--password={c.marker()}", "-p", "8"],
        "pairs": [("HF_TOKEN", c.marker()), ["Authorization", f"Basic {c.basic()}"],
                  ("tok", c.marker()), ("Cookie", f"session={c.marker()}")],
        "env": [{"name": "HF_TOKEN", "value": c.marker()}, {"name": "DB_PW", "value": c.marker()},
                {"name": "LR", "value": "0.1"}],
        c.url(): 1, c.ghp(): 2,
        "deep": {"a": {"b": {"c": {"Authorization": f"Bearer {c.marker()}"}}}},
        "http": [{"header": "Authorization", "value": f"Token {c.marker()}"}],
        "push_to_hub_token": c.marker(), "githubToken": c.marker(),
        "wandb": {"api_key": c.marker(), "entity": "team-a"},
        "cache": {"url": f"redis://:{c.marker()}@redis:6379/0"},
        "extra_env": [f"HF_TOKEN={c.marker()}", "LR=0.1"],
        "AzureStorageConnectionString": f"AccountName=a;AccountKey={c.marker()}==;",
        "compact": {name: c.marker() for name in COMPACT_NAMES},
        "launch": plant_arguments(c),
        "launch_cmd": " ".join(plant_arguments(c)),
        "urls": plant_urls(c), "callback": plant_urls(c)[0],
    })
    return config


def plant_run(c: Corpus) -> Dict[str, Any]:
    return {"name": f"run-{c.ghp()}",
            "tags": [c.hf(), f"pw={c.marker()}", c.openai(), f"u:{c.marker()}@h",
                     f"Bearer {c.pad(20)}"],
            "notes": f"password {c.marker()}", "group": f"grp-{c.hf()}"}


def plant_metric_keys(c: Corpus) -> List[str]:
    return [f"https://u:{c.marker()}/x@h/loss", f"loss/{c.hf()}", f"eval/{c.ghp()}",
            f"Authorization: Bearer {c.marker()}", f"x?token={c.marker()}",
            f"pw={c.marker()}/loss", f"{c.akia()}/acc", f"jwt/{c.jwt()}",
            f"the password is {c.pad(20)}",
            # token-shaped keys: alone, glued into words, and long random strings
            c.hf(), c.ghp(), c.openai(), c.jwt(), c.akia(), c.github_pat(), c.pad(40),
            f"loss_{c.hf()}", f"acc_{c.akia()}", f"eval/{c.pad(24)}_acc", f"grad.{c.pad(32)}",
            # compact pairs and URL query credentials in keys
            f"dbpass={c.marker()}", f"sshpass:{c.marker()}/loss",
            f"https://h.example.com/x?code={c.marker()}", f"https://h.example.com/x?sig={c.marker()}"]


def plant_own(c: Corpus, port: int, otlp_url: str
              ) -> Tuple[Dict[str, str], Dict[str, str], Dict[str, str]]:
    """(settings for the live run, for a run whose endpoint is down, invalid settings)."""
    first, second = c.marker(), c.marker()
    live = {"PRIMUS_LENS_API_BASE_URL": f"http://lens:{first}%2F{second}@127.0.0.1:{port}/v1",
            "PRIMUS_LENS_API_HEADERS": f"X-Api-Key: {c.marker()}; Cookie: sess={c.marker()}",
            "PRIMUS_LENS_WANDB_DEBUG": "true",
            "PRIMUS_LENS_WANDB_BATCH_SIZE": f"pw={c.marker()}",  # invalid: warned about
            # the OTLP sink too, its endpoint's key in the query (Azure Functions' ?code=)
            "PRIMUS_LENS_OTLP": "true",
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": f"{otlp_url}/v1/metrics?code={c.marker()}",
            "WANDB_PROJECT": f"proj-{c.hf()}"}
    down = {"PRIMUS_LENS_API_BASE_URL": f"http://lens:{c.marker()}@127.0.0.1:{free_port()}/v1",
            "PRIMUS_LENS_API_HEADERS": f"Authorization: Bearer {c.marker()}{ALNUM}",
            "PRIMUS_LENS_SHUTDOWN_TIMEOUT": "1", "PRIMUS_LENS_WANDB_DEBUG": "true"}
    # warnings quote an invalid value cut to 60 characters: the URL's "@" may be cut off
    invalid = {"PRIMUS_LENS_API_BASE_URL": f"ftp://lens:{c.pad(60)}@lens.example.com/v1",
               "PRIMUS_LENS_API_HEADERS": f"no colon {c.marker()}",
               "PRIMUS_LENS_API_TIMEOUT": f"Bearer {c.pad(20)}"}
    return live, down, invalid


TRAIN = """
import json, os, sys, wandb
plan = json.loads(os.environ.pop("PLANTED"))
config = dict(plan["config"], argv=sys.argv[1:])
run = wandb.init(project="lens-secrets", config=config, **plan["run"])
for step in range(3):
    row = {"loss": 1.0 / (step + 1)}
    row.update({key: float(step) for key in plan["keys"] + plan["ordinary"]})
    row["outer"] = {plan["nested"]: 1.0}
    run.log(row)
print("logged", run.id, flush=True)
run.finish()
"""

# What a Megatron/DeepSpeed/torchrun launch leaves in the environment (the positive side).
TORCHRUN = {"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
            "NODE_RANK": "0", "GROUP_RANK": "0", "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": "29500", "TORCHELASTIC_RUN_ID": "none"}
MEGATRON = {"PRIMUS_BACKEND": "megatron", "MEGATRON_LM_PATH": "/workspace/Megatron-LM",
            "CUDA_DEVICE_MAX_CONNECTIONS": "1"}


def _leaks(needles: List[str], text: str) -> List[str]:
    lowered = text.lower()
    return [n for n in needles if n.lower() in lowered]


def _written_beside_the_record(out: Path) -> Dict[str, str]:
    """Every file under the output root except the user's record itself."""
    return {str(p.relative_to(out)): p.read_text(errors="replace") for p in sorted(out.rglob("*"))
            if p.is_file() and not p.name.endswith(".jsonl")}


@pytest.mark.wandb_compat
def test_planted_secrets_never_leave(tmp_path: Path) -> None:
    c = Corpus()
    with Receiver(port=0) as receiver, OtlpServer() as collector:
        port = int(receiver.url.rsplit(":", 1)[1].split("/")[0])
        env = plant_environment(c)
        plan = {"config": plant_config(c), "run": plant_run(c), "keys": plant_metric_keys(c),
                "nested": f"hf_tok={c.marker()}", "ordinary": ORDINARY_KEYS}
        argv = plant_arguments(c)
        live, down, invalid = plant_own(c, port, collector.url)
        assert len(c.needles) >= 200
        base = {**TORCHRUN, **MEGATRON, **env, "PLANTED": json.dumps(plan)}

        result = run_training(tmp_path, TRAIN, env=reporting_env(receiver.url, **base, **live),
                              args=argv)
        assert result.proc.returncode == 0, result.stderr[-3000:]
        run_id = result.proc.stdout.split()[1]
        assert wait_until(lambda: len(receiver.logs(run_id=run_id)) == 3 and receiver.detections()
                          and collector.steps(run_id) == [0, 1, 2])
        doctor = subprocess.run([sys.executable, "-m", "primus_lens_inject", "doctor", "--json"],
                                env=training_env(tmp_path, reporting_env(receiver.url, **live)),
                                capture_output=True, text=True, timeout=120)
        raw = b"".join(receiver.raw_bodies()).decode("ascii")
        (detection,) = receiver.detections()
        rows = receiver.logs(run_id=run_id)
        assert not collector.undecodable
        exported = "\n".join(str(request["message"]) for request in collector.requests)
        points = collector.points()

    down_dir = tmp_path / "down"
    down_dir.mkdir()
    with OtlpServer(script=lambda n, request: Answer(401)) as refusing:  # said on stderr
        refused = {"PRIMUS_LENS_OTLP": "true", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT":
                   f"{refusing.url}/v1/metrics?code={c.marker()}"}
        dead = run_training(down_dir, TRAIN, env=reporting_env("unused", **base, **down, **refused))
    assert dead.proc.returncode == 0, dead.stderr[-3000:]
    warned = subprocess.run(
        [sys.executable, "-c", "from primus_lens_inject.state import get_config; get_config()"],
        env=training_env(tmp_path, invalid), capture_output=True, text=True, timeout=60)
    assert [line.split("=")[0] for line in warned.stderr.splitlines()] == [
        "primus-lens: ignoring PRIMUS_LENS_API_BASE_URL", "primus-lens: ignoring PRIMUS_LENS_API_TIMEOUT",
        "primus-lens: ignoring PRIMUS_LENS_API_HEADERS"], warned.stderr

    # the planting reached us: the record keeps the user's keys, warnings and debug lines ran
    record_keys = set(result.record()[0]["data"])
    assert set(plan["keys"]) <= record_keys
    assert any("PRIMUS_LENS_WANDB_BATCH_SIZE" in line for line in result.injector_lines())
    assert any("reporting to http://" in line for line in dead.injector_lines())
    assert any(f"{refusing.url}/v1/metrics?code={REDACTED}" in line
               for line in dead.injector_lines()), dead.stderr[-3000:]
    assert (dead.output / "node_0" / "rank_0" / "wandb_metrics.detections").is_dir()
    shown = f"http://{REDACTED}@127.0.0.1:{port}/v1"  # where our base URL is shown, redacted
    assert shown in doctor.stdout, doctor.stdout[-2000:]
    status = json.loads((result.output / "node_0" / "rank_0" / "wandb_metrics.status.json").read_text())
    assert status["endpoint"] == shown
    otlp_shown = f"{collector.url}/v1/metrics?code={REDACTED}"  # the OTLP endpoint's key too
    assert status["otlp"]["endpoint"] == otlp_shown and otlp_shown in doctor.stdout

    # not one marker anywhere (and the bodies searched are plain text: safe evidence is in them)
    assert "/workspace/Megatron-LM" in raw and "db.internal" in raw and "loss" in raw
    assert "wandb.loss" in exported and "lens-secrets" not in exported
    places = {"request bodies": raw, "OTLP exports": exported, "stderr": result.stderr,
              "stderr (endpoint down)": dead.stderr,
              "doctor": doctor.stdout + doctor.stderr, "invalid settings": warned.stderr}
    places.update(_written_beside_the_record(result.output))
    places.update({f"down/{k}": v for k, v in _written_beside_the_record(dead.output).items()})
    assert [name for name in places if name.startswith("down/") and ".detections/" in name]
    assert {place: _leaks(c.needles, text) for place, text in places.items()
            if _leaks(c.needles, text)} == {}

    # what is safe still arrives, and detection is what the environment says
    body = detection["data"]
    evidence = body["evidence"]
    assert body["hints"]["wrapper_frameworks"] == ["primus"]
    assert body["hints"]["base_frameworks"] == ["megatron", "deepspeed"]
    environment = evidence["environment"]
    assert {k: environment[k] for k in ("PRIMUS_BACKEND", "MEGATRON_LM_PATH", "WORLD_SIZE",
                                        "RANK", "LOCAL_RANK", "PRIMUS_CONFIG", "PRIMUS_HF_TOKEN",
                                        "DEEPSPEED_CONFIG")} == {
        "PRIMUS_BACKEND": "megatron", "MEGATRON_LM_PATH": "/workspace/Megatron-LM",
        "WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0", "PRIMUS_CONFIG": WITHHELD,
        "PRIMUS_HF_TOKEN": WITHHELD, "DEEPSPEED_CONFIG": WITHHELD}
    assert "MASTER_ADDR" not in environment and "HF_TOKEN" not in environment
    config = evidence["wandb"]["config"]
    assert {k: config[k] for k in ("lr", "model_name", "framework", "micro_batch_size", "bf16")} == {
        "lr": 3e-4, "model_name": "llama3-8b", "framework": "megatron", "micro_batch_size": 2,
        "bf16": True}
    assert all(config[name] == WITHHELD for name in SECRET_NAMES)
    assert config["args"][:3] == ["--lr", "0.1", "--api-key"] and config["args"][-2:] == ["-p", "8"]
    assert config["db"] == {"password": WITHHELD, "host": "db.internal"}
    assert config["wandb"] == {"api_key": WITHHELD, "entity": "team-a"}
    assert config["extra_env"] == [WITHHELD, "LR=0.1"]
    assert evidence["wandb"]["name"] == f"run-{REDACTED}"
    assert {k: v for k, v in evidence["build"].items() if v} == dict.fromkeys(
        ("build_url", "dockerfile_url", "image_tag", "git_branch", "git_repo", "ci_pipeline_id"),
        WITHHELD)
    # metric keys: redacted in what is sent, the record keeps them
    sent_keys = {key.removeprefix("rank0/")  # a run in a wandb group: keys carry the rank
                 for row in rows for key in row["data"]}
    assert "loss" in sent_keys and f"loss/{REDACTED}" in sent_keys
    assert f"https://{REDACTED}@h/loss" in sent_keys and "outer.hf_tok=" + REDACTED in sent_keys
    # token-shaped keys are redacted, not dropped (alone, they all become one key)
    assert {REDACTED, f"loss_hf_{REDACTED}", f"acc_{REDACTED}", f"eval/{REDACTED}_acc",
            f"grad.{REDACTED}", f"dbpass={REDACTED}", f"https://h.example.com/x?code={REDACTED}",
            f"https://h.example.com/x?sig={REDACTED}"} <= sent_keys
    # ordinary keys holding secret words arrive unchanged, at Lens and at the collector
    assert set(ORDINARY_KEYS) <= sent_keys
    assert all(row["data"][f"rank0/{key}" if f"rank0/{key}" in row["data"] else key]
               == row["step"] for row in rows for key in ORDINARY_KEYS)
    exported_names = {point.name for point in points}
    assert {f"wandb.{key}" for key in ORDINARY_KEYS} <= exported_names
    assert {point.resource["wandb.project"] for point in points} == {f"proj-{REDACTED}"}
    # the process's argv reached the config, and only its safe items were sent
    assert config["argv"][:4] == ["--lr", "3e-4", "--dbpass", WITHHELD]
    assert config["argv"][config["argv"].index("ssh"):][:4] == ["ssh", "-p", "22", "host"]
    assert config["launch"] == config["argv"]
    assert config["compact"] == dict.fromkeys(COMPACT_NAMES, WITHHELD)
    assert config["urls"] == [WITHHELD] * len(plant_urls(Corpus()))
    assert {k: v for k, v in environment.items() if k.startswith("PRIMUS_") and k[7:].lower()
            in {n.lower() for n in COMPACT_NAMES}} == {f"PRIMUS_{n.upper()}": WITHHELD
                                                       for n in COMPACT_NAMES}


# --- the allow-list's positive side ------------------------------------------------------------------

LAUNCHES = {
    "torchrun": ({**TORCHRUN, "WORLD_SIZE": "16", "RANK": "9", "LOCAL_RANK": "1",
                  "LOCAL_WORLD_SIZE": "8", "NODE_RANK": "1"}, [], [], "low"),
    "megatron": ({**TORCHRUN, "MEGATRON_LM_PATH": "/workspace/Megatron-LM",
                  "MEGATRON_CONFIG": "/workspace/configs/gpt_175b.yaml",
                  "CUDA_DEVICE_MAX_CONNECTIONS": "1", "MODEL_NAME": "gpt-175b",
                  "PRECISION": "bf16"}, [], ["megatron"], "medium"),
    "primus+megatron": ({**TORCHRUN, "PRIMUS_CONFIG": "examples/megatron/configs/llama3_8B-pretrain.yaml",
                         "PRIMUS_BACKEND": "Megatron-LM", "PRIMUS_VERSION": "0.3.0",
                         "PRIMUS_MODEL": "llama3_8B", "MEGATRON_LM_PATH": "/workspace/Megatron-LM"},
                        ["primus"], ["megatron"], "medium"),
    "deepspeed": ({**TORCHRUN, "DEEPSPEED_CONFIG": "/workspace/ds_config_zero3.json",
                   "DS_CONFIG": "ds_config.json", "DEEPSPEED_VERSION": "0.15.1",
                   "DS_VERSION": "0.15.1", "TORCH_DTYPE": "bfloat16", "DTYPE": "bf16"},
                  [], ["deepspeed"], "medium"),
    "jax+framework": ({"JAX_PLATFORMS": "rocm,cpu", "JAX_BACKEND": "rocm", "FRAMEWORK": "jax",
                       "TRAINING_FRAMEWORK": "JAX", "JAX_VERSION": "0.4.30",
                       "PRIMUS_LENS_API_HEADERS": "Cookie: x=y"}, [], ["jax"], "medium"),
}


@pytest.mark.parametrize("launch", list(LAUNCHES))
def test_launcher_environments_are_evidence_unchanged(launch: str) -> None:
    env, wrappers, bases, confidence = LAUNCHES[launch]
    body = build_report(RunFacts(project="exp"), Config(pod_name="p"), Topology(), environ=env)
    listed = {k: v for k, v in env.items()
              if k not in ("GROUP_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID",
                           "CUDA_DEVICE_MAX_CONNECTIONS", "PRIMUS_LENS_API_HEADERS")}
    assert body["evidence"]["environment"] == dict(sorted(listed.items()))
    hints = body["hints"]
    assert (hints["wrapper_frameworks"], hints["base_frameworks"], hints["confidence"]) == (
        wrappers, bases, confidence)
