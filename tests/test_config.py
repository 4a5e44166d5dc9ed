"""Configuration parsing, in process: each setting declared once, every value parsed as documented,
every bad value reported once with the default kept, and the log's own debug switch read the same
way."""

from __future__ import annotations

import json
import os
from dataclasses import fields

import pytest

from primus_lens_inject import config, log
from primus_lens_inject.config import API_PRESETS, VARIABLES, Config, Problem, markdown_table

GOOD = {
    "PRIMUS_LENS_WANDB_HOOK": (" Off ", False),
    "PRIMUS_LENS_WANDB_ENHANCE_METRICS": ("y", True),
    "PRIMUS_LENS_WANDB_OUTPUT_PATH": ("~/rec", os.path.expanduser("~/rec")),
    "PRIMUS_LENS_SAMPLE_INTERVAL": ("0.1", 0.1),
    "PRIMUS_LENS_GPU_BACKEND": ("NVML", "nvml"),
    "PRIMUS_LENS_API_BASE_URL": ("https://lens.example:8443/v1/", "https://lens.example:8443/v1"),
    "PRIMUS_LENS_WANDB_BATCH_SIZE": ("500", 500),
    "PRIMUS_LENS_API_HEADERS": ("Cookie: a=b; X-Team: ml", (("Cookie", "a=b"), ("X-Team", "ml"))),
    "PRIMUS_LENS_REPORT_RANKS": ("8, 0,8", "0,8"),
    "POD_NAME": (" trainer-0 ", "trainer-0"),
    "PRIMUS_LENS_OTLP": ("true", True),
    "OTEL_EXPORTER_OTLP_ENDPOINT": ("http://otel-collector:4318/", "http://otel-collector:4318"),
    "OTEL_EXPORTER_OTLP_HEADERS": ("api-key=a%3Db , x-org=ml", (("api-key", "a=b"), ("x-org", "ml"))),
    "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT": ("2500", 2500),
    "OTEL_EXPORTER_OTLP_PROTOCOL": ("HTTP/JSON", "http/json"),
    "OTEL_EXPORTER_OTLP_COMPRESSION": ("gzip", "gzip"),
    "OTEL_RESOURCE_ATTRIBUTES": ("team=ml,cost.center=a%2Cb", (("team", "ml"), ("cost.center", "a,b"))),
    "OTEL_SERVICE_NAME": (" trainer ", "trainer"),
}
BAD = {
    "PRIMUS_LENS_WANDB_DEBUG": ("maybe", "expected true/false (1/0, yes/no, on/off)"),
    "PRIMUS_LENS_SAMPLE_INTERVAL": ("nan", "expected a float between 0.1 and 3600"),
    "PRIMUS_LENS_WANDB_BATCH_SIZE": ("501", "expected a int between 1 and 500"),
    "PRIMUS_LENS_GPU_SCOPE": ("cluster", "expected one of process|node"),
    "PRIMUS_LENS_API_BASE_URL": ("ftp://x", "expected an http:// or https:// URL"),
    "PRIMUS_LENS_REPORT_RANKS": ("-1", "expected owner, zero, all or a list of global ranks such as 0,8"),
    "PRIMUS_LENS_API_HEADERS": ('{"A": 1}', "header values must be strings"),
    "OTEL_EXPORTER_OTLP_PROTOCOL": ("grpc", "grpc is not supported by this exporter, it sends OTLP/HTTP"),
    "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": ("thrift", "expected one of http/protobuf|http/json"),
    "OTEL_EXPORTER_OTLP_TIMEOUT": ("10s", "expected a int between 1 and 600000"),
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": ("collector:4318", "expected an http:// or https:// URL"),
    "OTEL_EXPORTER_OTLP_METRICS_HEADERS": ("token", "expected key=value pairs separated by commas"),
    "OTEL_RESOURCE_ATTRIBUTES": ("=x", "expected key=value pairs separated by commas"),
}


def test_each_setting_is_declared_once_and_documented():
    settings = [f.name for f in fields(Config) if f.name != "problems"]
    assert [var.field for var in VARIABLES] == settings
    # + robust, + OTLP, + pulse, + agent
    assert len({var.name for var in VARIABLES}) == len(VARIABLES) == 48 + 2 + 11 + 4 + 7
    table = markdown_table().splitlines()
    assert len(table) == 2 + len(VARIABLES)
    assert table[2] == ("| `PRIMUS_LENS_WANDB_HOOK` | `true` | Master switch. false: the bootstrap "
                        "imports nothing, patches nothing, starts nothing. |")
    assert [var.name for var in VARIABLES if var.secret] == [
        "PRIMUS_LENS_API_HEADERS", "PRIMUS_LENS_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS",
        "OTEL_EXPORTER_OTLP_METRICS_HEADERS"]


def test_values_are_parsed_as_documented():
    parsed = Config.from_env({name: raw for name, (raw, _) in GOOD.items()})
    by_name = {var.name: var.field for var in VARIABLES}
    assert {name: getattr(parsed, by_name[name]) for name in GOOD} == \
        {name: value for name, (_, value) in GOOD.items()}
    assert parsed.problems == ()
    assert Config.from_env({"PRIMUS_LENS_API_HEADERS": json.dumps({"Cookie": "t=1"})}).api_headers \
        == (("Cookie", "t=1"),)
    # unset and blank mean the default; the preset chooses the base URL unless it is set
    assert Config.from_env({"PRIMUS_LENS_WANDB_HOOK": "  "}) == Config()
    assert Config.from_env({"PRIMUS_LENS_API_PRESET": "robust"}).api_base_url == API_PRESETS["robust"]
    assert Config.from_env({}).api_base_url == API_PRESETS["lens"]


def test_each_bad_value_is_one_problem_and_the_default_stays():
    parsed = Config.from_env({name: raw for name, (raw, _) in BAD.items()})
    defaults = Config()
    assert parsed == defaults  # problems are not compared
    secret = {var.name for var in VARIABLES if var.secret}
    shown = {name: "<hidden>" if name in secret else raw
             for name, (raw, _) in BAD.items()}
    assert sorted(parsed.problems, key=lambda p: p.variable) == sorted(
        (Problem(name, shown[name], reason) for name, (_, reason) in BAD.items()),
        key=lambda p: p.variable)
    problem = Problem("PRIMUS_LENS_GPU_SCOPE", "x" * 70, "expected one of process|node")
    assert problem.message() == (f"ignoring PRIMUS_LENS_GPU_SCOPE={'x' * 57 + '...'!r}: expected "
                                 "one of process|node; using the default")


@pytest.mark.parametrize("name", [var.name for var in VARIABLES])
def test_value_of_reads_one_setting_like_from_env(name):
    field = next(var.field for var in VARIABLES if var.name == name)
    for env in ({}, {name: GOOD.get(name, ("", None))[0]}, {name: BAD.get(name, ("", None))[0]}):
        assert config.value_of(field, env) == getattr(Config.from_env(env), field)


def test_the_log_reads_its_debug_switch_once(monkeypatch, capsys):
    monkeypatch.setattr(log, "_debugging", None)
    monkeypatch.setenv("PRIMUS_LENS_WANDB_DEBUG", "on")
    log.debug("first", n=1)
    monkeypatch.setenv("PRIMUS_LENS_WANDB_DEBUG", "off")  # read once: still on
    log.debug("second")
    lines = capsys.readouterr().err.splitlines()
    assert [json.loads(line[len(log.PREFIX):])["event"] for line in lines] == ["first", "second"]
    monkeypatch.setattr(log, "_debugging", None)
    monkeypatch.setenv("PRIMUS_LENS_WANDB_DEBUG", "maybe")  # invalid: the default, off
    log.debug("third")
    assert capsys.readouterr().err == ""


def _otlp_chain(name):
    """The variables of one OTLP setting, in the declared order (config.OTLP_TIERS)."""
    by_field = {var.field: var.name for var in VARIABLES}
    return [by_field[f"{tier}_{name}"] for tier in config.OTLP_TIERS if f"{tier}_{name}" in by_field]


def _otlp_sample(name, variable, tier):
    """A raw value for ``variable`` that tells its tier apart, and the value otlp_setting gives."""
    if name == "endpoint":
        url = f"http://tier{tier}:4318/p"
        return url, url if "_METRICS_" in variable else url + "/v1/metrics"
    if name in ("headers", "resource_attributes"):
        return f"k=tier{tier}", (("k", f"tier{tier}"),)
    if name == "timeout":
        return str(100 + tier), 100 + tier
    if name == "compression":
        return ("gzip", "none")[tier % 2], ("gzip", "none")[tier % 2]
    if name == "protocol":
        return ("http/json", "http/protobuf")[tier % 2], ("http/json", "http/protobuf")[tier % 2]
    if name == "service_name":
        return f"tier{tier}", f"tier{tier}"
    return f"/tier{tier}", f"/tier{tier}"  # certificate and key paths


# A value each OTLP setting's parser refuses (a service name is any text).
UNUSABLE_OTLP = {"endpoint": "collector:4318", "headers": "token", "timeout": "0",
                 "compression": "zip", "protocol": "grpc", "certificate": "a\x00b",
                 "client_certificate": "a\x00b", "client_key": "a\x00b", "resource_attributes": "=x"}


@pytest.mark.parametrize("name", config.OTLP_SETTINGS)
def test_each_otlp_setting_comes_from_the_first_tier_that_sets_it(name):
    chain = _otlp_chain(name)
    assert chain[0].startswith("PRIMUS_LENS_OTLP_") and chain[-1].startswith("OTEL_")
    samples = [_otlp_sample(name, variable, tier) for tier, variable in enumerate(chain)]
    for top in range(len(chain)):  # the tiers above ``top`` unset: ``top`` gives the value
        env = {variable: raw for variable, (raw, _) in zip(chain[top:], samples[top:])}
        assert Config.from_env(env).otlp_setting(name) == samples[top][1], (name, chain[top])
        if name in UNUSABLE_OTLP:  # unusable: said once, and the next tier is used
            parsed = Config.from_env({**env, chain[top]: UNUSABLE_OTLP[name]})
            expected = samples[top + 1][1] if top + 1 < len(chain) else Config().otlp_setting(name)
            assert [p.variable for p in parsed.problems] == [chain[top]]
            assert parsed.otlp_setting(name) == expected


def test_the_otlp_tiers_cover_every_otlp_variable_and_nothing_else():
    chained = {variable for name in config.OTLP_SETTINGS for variable in _otlp_chain(name)}
    otlp = {var.name for var in VARIABLES if var.field.startswith(("otlp_", "otel_"))}
    assert chained == otlp
    defaults = Config()
    assert defaults.otlp_setting("endpoint") == "http://localhost:4318/v1/metrics"
    assert defaults.otlp_setting("timeout") == 10_000
    pinned = Config.from_env({"PRIMUS_LENS_OTLP_ENDPOINT": "https://c.example/otlp/?code=k"})
    assert pinned.otlp_setting("endpoint") == "https://c.example/otlp/v1/metrics?code=k"
    with pytest.raises(ValueError, match="not an OTLP setting"):
        defaults.otlp_setting("metrics_endpoint")
