"""The framework-detection report: evidence, hints, secrets, size, and the contract it must meet."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import random
import subprocess
import sys
import textwrap
import time
import types
from importlib import metadata
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

from primus_lens_inject.config import Config
from primus_lens_inject.credentials import REDACTED
from primus_lens_inject.report.bounds import TRUNCATED_KEY, json_size
from primus_lens_inject.report.detection import build_report
from primus_lens_inject.report.environment import gpu_arch
from primus_lens_inject.report.evidence import WITHHELD
from primus_lens_inject.report.hints import Signal, hints
from primus_lens_inject.report.runfacts import RunFacts, caller_modules
from primus_lens_inject.topology import Topology

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "tests" / "telemetry-api.schema.json"
FRAMEWORK_TOPS = {"torch", "jax", "jaxlib", "megatron", "deepspeed", "transformers", "lightning",
                  "pytorch_lightning", "primus", "tensorflow"}
NOW = 1767225600.125
CONFIG = Config(pod_name="llama3-master-0", pod_uid="5b0c3f0e-uid", pod_namespace="team-a")
MI300X = {"vendor": "amd", "backend": "amdsmi", "driver_version": "6.8.5",
          "devices": [{"name": "AMD Instinct MI300X", "memory_total_bytes": 205822885888}] * 8}


@pytest.fixture
def modules(monkeypatch: pytest.MonkeyPatch):
    """A sys.modules without any real framework, and ``add(name, version, **attrs)`` for fakes."""
    for name in list(sys.modules):
        if name.split(".")[0] in FRAMEWORK_TOPS:
            monkeypatch.delitem(sys.modules, name)

    def add(name: str, version: Optional[str] = None, **attrs: Any) -> types.ModuleType:
        module = types.ModuleType(name)
        if version is not None:
            module.__version__ = version
        for key, value in attrs.items():
            setattr(module, key, value)
        monkeypatch.setitem(sys.modules, name, module)
        return module

    return add


def report(facts: Optional[RunFacts] = None, environ: Optional[Dict[str, str]] = None,
           gpu_inventory: Optional[Dict[str, Any]] = None, config: Config = CONFIG) -> Dict[str, Any]:
    return build_report(facts or RunFacts(project="exp", name="run-1", id="abc123"), config,
                        Topology(node_rank=1, rank=8, local_rank=0, world_size=16),
                        gpu_inventory=gpu_inventory, now=NOW, environ=environ or {})


def _validator():
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(SCHEMA.read_text())
    return jsonschema.Draft202012Validator({**schema, "$ref": "#/$defs/DetectionRequest"})


def assert_contract(body: Dict[str, Any]) -> None:
    """Valid per the schema, strict JSON, and the Go-typed fields hold exactly the Go types."""
    errors = sorted(str(e.message) for e in _validator().iter_errors(body))
    assert errors == []
    text = json.dumps(body, allow_nan=False, separators=(",", ":"))
    assert len(text) <= 1024 * 1024
    hardware = body["evidence"].get("hardware", {})
    assert type(hardware.get("gpu_count", 0)) is int
    assert all(type(v) is str for k, v in hardware.items() if k not in ("gpu_count", "gpu_memory_gb"))
    assert type(body["timestamp"]) is float and math.isfinite(body["timestamp"])
    for section in ("wrapper_frameworks", "base_frameworks"):
        for entry in body["evidence"].get(section, {}).values():
            assert entry["detected"] is True and type(entry["version"]) is str


# --- framework combinations ------------------------------------------------------------------------


def _primus_megatron(add) -> None:
    add("torch", "2.5.1+rocm6.2")
    add("torch.version", cuda=None, hip="6.2.41133-dd7f95766")
    add("primus", "0.3.0")
    add("primus.core.utils.global_vars", _GLOBAL_PRIMUS_CFG=object())
    add("megatron")
    add("megatron.core", "0.9.0")
    add("megatron.training.global_vars", _GLOBAL_ARGS=None)
    add("transformers", "4.44.0")  # tokenizer only: incidental next to Megatron
    add("transformers.trainer")


def _lightning(add) -> None:
    add("torch", "2.4.0")
    add("lightning", "2.4.0")


def _pytorch_lightning(add) -> None:
    add("torch", "2.1.0")
    add("pytorch_lightning", "1.9.5")


def _hf_trainer(add) -> None:
    add("torch", "2.4.0")
    add("transformers", "4.44.0")
    add("transformers.trainer")


def _hf_trainer_deepspeed(add) -> None:
    _hf_trainer(add)
    add("deepspeed", "0.15.1")
    add("deepspeed.comm.comm", cdb=None)


def _deepspeed(add) -> None:
    add("torch", "2.4.0")
    add("deepspeed", "0.15.1")
    add("deepspeed.comm.comm", cdb=object())


def _jax(add) -> None:
    add("jax", "0.4.30")
    add("jax._src.xla_bridge", _backends={})


def _tokenizers_only(add) -> None:
    add("torch", "2.4.0")
    add("transformers", "4.44.0")


def _plain_torch(add) -> None:
    add("torch", "2.4.0")


def _nothing(add) -> None:
    pass


def _entry(version: str, module: str, **extra: Any) -> Dict[str, Any]:
    return {"detected": True, "version": version, "module_name": module, **extra}


def _layers(wrappers: List[str], bases: List[str]) -> Dict[str, Any]:
    out: Dict[str, Any] = {w: {"layer": "wrapper", "base_frameworks": bases} for w in wrappers}
    out.update({b: {"layer": "base", "wrapper_frameworks": wrappers} for b in bases})
    return out


def _hints(wrappers: List[str], bases: List[str], confidence: str,
           indicators: List[str]) -> Dict[str, Any]:
    return {"wrapper_frameworks": wrappers, "base_frameworks": bases,
            "possible_frameworks": wrappers + bases, "confidence": confidence,
            "primary_indicators": indicators, "framework_layers": _layers(wrappers, bases)}


COMBINATIONS = {
    "primus+megatron": (
        _primus_megatron,
        {"primus": _entry("0.3.0", "primus", initialized=True, base_framework="megatron")},
        {"megatron": _entry("0.9.0", "megatron", initialized=False)},
        _hints(["primus"], ["megatron"], "high", ["import.primus", "import.megatron"]),
    ),
    "lightning": (
        _lightning, {"lightning": _entry("2.4.0", "lightning")}, {},
        _hints(["lightning"], [], "high", ["import.lightning"]),
    ),
    "pytorch_lightning": (
        _pytorch_lightning, {"lightning": _entry("1.9.5", "pytorch_lightning")}, {},
        _hints(["lightning"], [], "high", ["import.pytorch_lightning"]),
    ),
    "hf-trainer": (
        _hf_trainer, {"transformers_trainer": _entry("4.44.0", "transformers.trainer")},
        {"transformers": _entry("4.44.0", "transformers")},
        _hints(["transformers_trainer"], ["transformers"], "high",
               ["import.transformers.trainer", "import.transformers"]),
    ),
    "hf-trainer+deepspeed": (
        _hf_trainer_deepspeed, {"transformers_trainer": _entry("4.44.0", "transformers.trainer")},
        {"deepspeed": _entry("0.15.1", "deepspeed", initialized=False)},
        _hints(["transformers_trainer"], ["deepspeed"], "high",
               ["import.transformers.trainer", "import.deepspeed"]),
    ),
    "deepspeed": (
        _deepspeed, {}, {"deepspeed": _entry("0.15.1", "deepspeed", initialized=True)},
        _hints([], ["deepspeed"], "high", ["import.deepspeed"]),
    ),
    "jax": (
        _jax, {}, {"jax": _entry("0.4.30", "jax", initialized=False)},
        _hints([], ["jax"], "high", ["import.jax"]),
    ),
    "tokenizers-only": (
        _tokenizers_only, {}, {"transformers": _entry("4.44.0", "transformers")},
        _hints([], ["transformers"], "medium", ["import.transformers"]),
    ),
    "plain-torch": (_plain_torch, {}, {}, _hints([], [], "low", [])),
    "nothing": (_nothing, {}, {}, _hints([], [], "low", [])),
}

PYTORCH = {
    "primus+megatron": {"available": True, "version": "2.5.1+rocm6.2", "cuda_available": True,
                        "detected_modules": {"deepspeed": False, "megatron": True,
                                             "transformers": True, "lightning": False}},
    "jax": {"available": False, "version": "", "cuda_available": False,
            "detected_modules": {"deepspeed": False, "megatron": False, "transformers": False,
                                 "lightning": False}},
    "hf-trainer+deepspeed": {"available": True, "version": "2.4.0", "cuda_available": False,
                             "detected_modules": {"deepspeed": True, "megatron": False,
                                                  "transformers": True, "lightning": False}},
    "pytorch_lightning": {"available": True, "version": "2.1.0", "cuda_available": False,
                          "detected_modules": {"deepspeed": False, "megatron": False,
                                               "transformers": False, "lightning": True}},
}


@pytest.mark.parametrize("case", list(COMBINATIONS))
def test_framework_combinations(modules, case: str) -> None:
    setup, wrappers, bases, expected_hints = COMBINATIONS[case]
    setup(modules)
    body = report(gpu_inventory=MI300X)
    evidence = body["evidence"]
    assert evidence["wrapper_frameworks"] == wrappers
    assert evidence["base_frameworks"] == bases
    assert body["hints"] == expected_hints
    if case in PYTORCH:
        assert evidence["pytorch"] == PYTORCH[case]
    assert_contract(body)


def _chosen(callers: tuple) -> tuple:
    body = report(RunFacts(project="exp", callers=callers))
    evidence, hint = body["evidence"], body["hints"]
    assert list(evidence["wrapper_frameworks"]) == hint["wrapper_frameworks"]
    assert list(evidence["base_frameworks"]) == hint["base_frameworks"]
    return hint["wrapper_frameworks"], hint["base_frameworks"]


def test_frameworks_are_judged_by_what_the_run_uses(modules) -> None:
    """With the run's stack seen, an imported wrapper or ``transformers`` counts only if its code
    drove the run (or its state is set up, or a transformers model class is loaded); the bases
    that nothing imports on the side count when imported."""
    _pytorch_lightning(modules)
    modules("transformers", "5.0.0")  # what torchmetrics imports under every Lightning job
    modules("transformers.models.auto.modeling_auto")
    lightning = ("__main__", "pytorch_lightning.loggers.wandb", "pytorch_lightning.trainer.trainer")
    assert _chosen(lightning) == (["lightning"], [])
    assert _chosen(("__main__",)) == ([], [])  # a loop of the user's own that logs
    assert _chosen(()) == (["lightning"], ["transformers"])  # stack not seen: imports count
    modules("transformers.modeling_utils")  # a model class of transformers was loaded
    assert _chosen(lightning) == (["lightning"], ["transformers"])

    modules("transformers.trainer")
    trainer = ("transformers.integrations.integration_utils", "transformers.trainer_callback",
               "transformers.trainer", "__main__")
    assert _chosen(trainer) == (["transformers_trainer"], ["transformers"])
    assert _chosen(("transformersx.trainer", "pytorch_lightningx")) == ([], ["transformers"])

    modules("deepspeed", "0.15.1")  # imported, not on the stack: a base counts
    modules("primus", "0.3.0")
    assert _chosen(trainer) == (["transformers_trainer"], ["deepspeed"])
    modules("primus.core.utils.global_vars", _GLOBAL_PRIMUS_CFG=object())  # Primus set up
    assert _chosen(("__main__",)) == (["primus"], ["deepspeed"])


def test_callers_are_the_modules_on_the_stack() -> None:
    def inner() -> tuple:
        return caller_modules()

    names = inner()
    assert names[0] == __name__ and len(names) == len(set(names))
    assert "_pytest.python" in names  # the test runner called this test
    assert caller_modules(limit=1) == (__name__,)
    facts = RunFacts.from_run(types.SimpleNamespace(project="p"), callers=names)
    assert facts.callers == names and facts.project == "p"


def test_report_shape_and_identity(modules) -> None:
    _primus_megatron(modules)
    facts = RunFacts(project="llama3-pretrain", name="llama3-8b-bf16-run7", id="k3x9q2ab",
                     tags=("pretrain", "mi300x"),
                     config={"framework": "megatron", "lr": 0.0003, "micro_batch_size": 2,
                             "bf16": True, "model_name": "llama3-8b"})
    env = {"PRIMUS_CONFIG": "/workspace/exp/llama3_8B.yaml", "PRIMUS_BACKEND": "megatron",
           "WORLD_SIZE": "16", "RANK": "0", "LOCAL_RANK": "0", "ROCM_VERSION": "6.2",
           "IMAGE_TAG": "rocm/primus:v25.9", "GIT_COMMIT": "0123abcd", "WORKLOAD_ID": "safe-wl-7",
           "HOME": "/root", "MASTER_ADDR": "10.0.0.1", "PATH": "/usr/bin"}
    body = report(facts, env, MI300X)
    assert list(body) == ["source", "type", "version", "pod_name", "pod_uid", "namespace",
                          "evidence", "hints", "timestamp"]
    assert (body["source"], body["type"], body["version"]) == ("wandb", "framework_detection_raw", "1.0")
    assert (body["pod_name"], body["pod_uid"], body["namespace"]) == (
        "llama3-master-0", "5b0c3f0e-uid", "team-a")
    assert body["timestamp"] == NOW
    evidence = body["evidence"]
    assert evidence["wandb"] == {"project": "llama3-pretrain", "name": "llama3-8b-bf16-run7",
                                 "id": "k3x9q2ab", "config": facts.config,
                                 "tags": ["pretrain", "mi300x"]}
    assert evidence["environment"] == {"LOCAL_RANK": "0", "PRIMUS_BACKEND": "megatron",
                                       "PRIMUS_CONFIG": "/workspace/exp/llama3_8B.yaml",
                                       "RANK": "0", "WORLD_SIZE": "16"}
    assert evidence["system"] == {
        "python_version": ".".join(map(str, sys.version_info[:3])),
        "python_implementation": sys.implementation.name, "platform": sys.platform,
        "machine": os.uname().machine, "node_rank": 1, "rank": 8, "local_rank": 0, "world_size": 16}
    assert evidence["hardware"] == {"gpu_count": 8, "gpu_name": "AMD Instinct MI300X",
                                    "gpu_memory_gb": 191.7, "gpu_arch": "mi300x",
                                    "rocm_version": "rocm6.2"}
    assert evidence["software"]["rocm_version"] == "6.2"
    assert evidence["software"]["packages"]["wandb"] == metadata.version("wandb")
    assert evidence["build"] == {"image_tag": "rocm/primus:v25.9", "git_commit": "0123abcd"}
    assert body["hints"]["primary_indicators"] == [
        "import.primus", "import.megatron", "env.PRIMUS_CONFIG", "env.PRIMUS_BACKEND",
        "env.PRIMUS_BACKEND=megatron", "config.framework=megatron"]
    text = json.dumps(body)
    assert "safe-wl-7" not in text and "10.0.0.1" not in text and "/usr/bin" not in text
    assert_contract(body)


def test_workload_uid_only_when_set(modules) -> None:
    body = report(config=Config(pod_name="p", workload_uid="wl-uid-1"))
    assert (body["workload_uid"], body["pod_name"]) == ("wl-uid-1", "p")
    assert "pod_uid" not in body and "namespace" not in body
    assert_contract(body)
    assert "workload_uid" not in report(config=Config(pod_name="p"))


def test_timestamp_defaults_to_now(modules) -> None:
    before = time.time()
    stamps = [build_report(RunFacts(), CONFIG, Topology(), now=value, environ={})["timestamp"]
              for value in (None, math.nan, math.inf)]
    after = time.time()
    assert all(type(s) is float and before <= s <= after for s in stamps)


# --- environment, config and project evidence -----------------------------------------------------


def test_environment_evidence_without_imports(modules) -> None:
    body = report(environ={"PRIMUS_CONFIG": "/x.yaml", "PRIMUS_BACKEND": "Megatron-LM"})
    assert body["evidence"]["wrapper_frameworks"] == {} and body["evidence"]["base_frameworks"] == {}
    assert body["hints"] == _hints(["primus"], ["megatron"], "medium", [
        "env.PRIMUS_CONFIG", "env.PRIMUS_BACKEND", "env.PRIMUS_BACKEND=megatron"])


def test_two_kinds_of_evidence_agreeing_are_high(modules) -> None:
    body = report(RunFacts(config={"trainer": "DeepSpeedTrainer"}),
                  environ={"DEEPSPEED_CONFIG": "/ds.json", "MEGATRON_PATH": ""})
    assert body["hints"] == _hints([], ["deepspeed"], "high", [
        "env.DEEPSPEED_CONFIG", "config.trainer~deepspeed"])


def test_empty_values_are_not_evidence(modules) -> None:
    body = report(RunFacts(project="scratch", config={"framework": "", "primus_config": None,
                                                      "deepspeed_config": {}, "lr": 0.1}),
                  environ={"PRIMUS_CONFIG": "", "DEEPSPEED_CONFIG": "  ", "MEGATRON_LM_PATH": "",
                           "JAX_PLATFORMS": "", "FRAMEWORK": "", "GIT_COMMIT": "",
                           "GIT_SHA": "abc123", "IMAGE_TAG": " ", "GPU_ARCH": "",
                           "ROCM_VERSION": "", "CUDA_VERSION": ""})
    assert body["evidence"]["environment"] == {}
    assert body["evidence"]["build"] == {"git_commit": "abc123"}  # the next non-empty source
    assert "hardware" not in body["evidence"]
    assert body["evidence"]["wandb"]["config"] == {"lr": 0.1}
    assert body["hints"] == _hints([], [], "low", [])


def test_config_framework_names(modules) -> None:
    body = report(RunFacts(config={"framework": "PyTorch-Lightning", "base_framework": "DS"}))
    assert body["hints"] == _hints(["lightning"], ["deepspeed"], "medium", [
        "config.framework=lightning", "config.base_framework=deepspeed"])
    body = report(RunFacts(config={"framework": "torchtitan", "megatron_config": "/m.yaml"}))
    assert body["hints"]["base_frameworks"] == ["megatron", "torchtitan"]
    assert body["hints"]["primary_indicators"] == ["config.megatron_config", "config.framework=torchtitan"]


def test_project_name_counts_only_alone(modules) -> None:
    body = report(RunFacts(project="Megatron-Llama-sweep"))
    assert body["hints"] == _hints([], ["megatron"], "low", ["project~megatron"])
    _lightning(modules)
    body = report(RunFacts(project="deepspeed-exp"))
    assert body["hints"]["wrapper_frameworks"] == ["lightning"]
    assert body["hints"]["base_frameworks"] == []
    assert body["hints"]["possible_frameworks"] == ["lightning", "deepspeed"]
    assert body["hints"]["confidence"] == "high"


def test_imports_outrank_environment_and_config(modules) -> None:
    _deepspeed(modules)
    body = report(RunFacts(config={"framework": "jax"}), environ={"MEGATRON_LM_PATH": "/m"})
    assert body["hints"]["base_frameworks"] == ["deepspeed"]
    assert body["hints"]["possible_frameworks"] == ["deepspeed", "megatron", "jax"]
    assert body["hints"]["primary_indicators"] == ["import.deepspeed"]


def test_hint_order_is_deterministic() -> None:
    signals = [Signal("megatron", "base", 0, "import.megatron"),
               Signal("primus", "wrapper", 0, "import.primus"),
               Signal("lightning", "wrapper", 0, "import.lightning"),
               Signal("deepspeed", "base", 1, "env.DS_CONFIG"),
               Signal("zeta", "base", 0, "import.zeta"), Signal("jax", "base", 0, "import.jax")]
    expected = hints(signals)
    assert expected["wrapper_frameworks"] == ["primus", "lightning"]
    assert expected["base_frameworks"] == ["megatron", "jax", "zeta"]
    assert expected["possible_frameworks"] == ["primus", "lightning", "megatron", "jax", "zeta",
                                               "deepspeed"]
    rng = random.Random(7)
    for _ in range(20):
        rng.shuffle(signals)
        assert hints(signals) == expected


# --- no imports, no calls, no processes ---------------------------------------------------------------


def test_no_framework_function_is_called(modules) -> None:
    calls: List[str] = []

    def recorder(name: str):
        def call(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            raise AssertionError(f"{name} was called")
        return call

    cuda_api = ("is_available", "device_count", "get_device_name", "get_device_properties",
                "init", "is_initialized", "current_device", "mem_get_info")
    modules("torch", "2.4.0", cuda=modules("torch.cuda", _initialized=False,
                                            **{f: recorder(f"torch.cuda.{f}") for f in cuda_api}))
    modules("torch.version", cuda="12.4", hip=None)
    modules("jax", "0.4.30", devices=recorder("jax.devices"),
            default_backend=recorder("jax.default_backend"))
    modules("deepspeed", "0.15.1", is_initialized=recorder("deepspeed.is_initialized"))
    modules("megatron", get_args=recorder("megatron.get_args"))
    modules("primus", "0.3.0", is_initialized=recorder("primus.is_initialized"))
    # a lazy module: every missing attribute would import something
    modules("lightning", __getattr__=recorder("lightning.__getattr__"))
    body = report()
    assert calls == []
    # the version comes from package metadata, never from the module: "lightning", else the
    # older "pytorch-lightning" distribution (the test environment installs the latter)
    installed = _installed("lightning")
    expected = installed if installed != "unknown" else _installed("pytorch-lightning")
    assert body["evidence"]["wrapper_frameworks"]["lightning"]["version"] == expected
    assert body["evidence"]["pytorch"]["cuda_available"] is False  # no GPU seen, not initialised
    assert body["evidence"]["hardware"] == {"cuda_version": "cuda12.4"}
    assert body["hints"]["base_frameworks"] == ["megatron", "deepspeed", "jax"]


def _installed(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"


def test_cuda_available_from_inventory_or_initialised_runtime(modules) -> None:
    modules("torch", "2.4.0")
    modules("torch.version", cuda="12.4", hip=None)
    assert report()["evidence"]["pytorch"]["cuda_available"] is False
    assert report(gpu_inventory=MI300X)["evidence"]["pytorch"]["cuda_available"] is True
    modules("torch.cuda", _initialized=True)
    assert report()["evidence"]["pytorch"]["cuda_available"] is True
    modules("torch.version", cuda=None, hip=None)  # a CPU build
    assert report(gpu_inventory=MI300X)["evidence"]["pytorch"]["cuda_available"] is False


_FAKE_PACKAGES = {"jax": "0.4.30", "megatron": None, "deepspeed": "0.15.1",
                  "transformers": "4.44.0", "lightning": "2.4.0", "pytorch_lightning": "1.9.5",
                  "primus": "0.3.0", "tensorflow": "2.16.1"}

_PROBE = """
    import json, os, subprocess, sys
    PREIMPORT = sys.argv[1]
    if PREIMPORT:
        __import__(PREIMPORT)
    from primus_lens_inject.config import Config
    from primus_lens_inject.report.detection import build_report
    from primus_lens_inject.report.runfacts import RunFacts
    from primus_lens_inject.topology import Topology

    def refuse(*args, **kwargs):
        raise AssertionError("a process was started")

    for name in ("system", "popen", "posix_spawn", "posix_spawnp", "fork", "execv", "execve"):
        if hasattr(os, name):
            setattr(os, name, refuse)
    subprocess.Popen = refuse
    env = {"PRIMUS_CONFIG": "/p.yaml", "PRIMUS_BACKEND": "megatron", "DEEPSPEED_CONFIG": "/d",
           "MEGATRON_LM_PATH": "/m", "JAX_PLATFORMS": "rocm", "FRAMEWORK": "lightning"}
    facts = RunFacts(project="primus-megatron-deepspeed-jax-lightning-transformers",
                     config={"framework": "jax", "trainer": "deepspeed", "primus_config": "/p"})
    inventory = {"vendor": "nvidia", "backend": "nvml", "driver_version": "550",
                 "devices": [{"name": "NVIDIA H100 80GB HBM3", "memory_total_bytes": 85520809984}]}
    before = set(sys.modules)
    body = build_report(facts, Config(pod_name="p"), Topology(), inventory, environ=env)
    print(json.dumps({"new": sorted(set(sys.modules) - before), "body": body,
                      "stdlib": sorted(getattr(sys, "stdlib_module_names", ()))}))
"""


@pytest.mark.parametrize("preimport", ["", "torch"])
def test_building_imports_no_framework(tmp_path: Path, preimport: str) -> None:
    """In a fresh process where every framework is importable: nothing new but the stdlib."""
    site = tmp_path / "site"
    for name, version in _FAKE_PACKAGES.items():
        (site / name).mkdir(parents=True)
        (site / name / "__init__.py").write_text(f"__version__ = {version!r}\n")
        if version:
            info = site / f"{name}-{version}.dist-info"
            info.mkdir()
            info.joinpath("METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    script = tmp_path / "probe.py"
    script.write_text(textwrap.dedent(_PROBE))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PRIMUS_LENS_"))}
    env["PYTHONPATH"] = str(site)
    if preimport and importlib.util.find_spec(preimport) is None:
        pytest.skip(f"{preimport} is not installed")
    proc = subprocess.run([sys.executable, str(script), preimport], capture_output=True, text=True,
                          timeout=120, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    new_tops = {name.split(".")[0] for name in result["new"]}
    assert not new_tops & FRAMEWORK_TOPS, result["new"]
    stdlib = set(result["stdlib"])
    if stdlib:
        assert new_tops <= stdlib | {"primus_lens_inject"}, sorted(new_tops - stdlib)
    body = result["body"]
    packages = body["evidence"]["software"]["packages"]
    assert {k: packages.get(k) for k in ("jax", "deepspeed", "transformers", "lightning")} == {
        "jax": "0.4.30", "deepspeed": "0.15.1", "transformers": "4.44.0", "lightning": "2.4.0"}
    assert body["evidence"]["wrapper_frameworks"] == {} and body["evidence"]["base_frameworks"] == {}
    assert body["evidence"]["hardware"] == {"gpu_count": 1, "gpu_name": "NVIDIA H100 80GB HBM3",
                                            "gpu_memory_gb": 79.6, "gpu_arch": "h100"}
    if preimport == "torch":
        assert body["evidence"]["pytorch"]["version"] == metadata.version("torch")
        assert body["evidence"]["pytorch"]["available"] is True
    assert_contract(body)


# --- secrets and size ------------------------------------------------------------------------------

SECRETS = {
    "wandb_key": "0123456789abcdef0123456789abcdef0123abcd",
    "hf": "hf_" + "QwErTyUiOpAsDfGhJkLzXcVbNm12345678",
    "aws_secret": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "aws_id": "AKIAIOSFODNN7EXAMPLE",
    "cookie": "session=cookie-value-42",
    "db_pw": "db-password-77",
    "url_pw": "url-pass-99",
    "git_token": "ghp_" + "z" * 36,
    "query_token": "query-token-31",
    "jwt": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1c2VyMTIzNDU2In0.c2lnbmF0dXJlLXZhbHVlLXh5eg",
    "openai": "sk-" + "A1b2C3d4E5f6G7h8I9j0K1l2",
    "nested_pw": "nested-secret-55",
    "listed": "listed-secret-66",
    "tag_token": "hf_" + "TaGtOkEnVaLuE0123456789abcdefghij",
    "name_token": "ghp_" + "n" * 36,
    "framework_token": "hf_" + "FrAmEwOrKtOkEn0123456789abcdefgh",
    "primus_token": "primus-hub-token-12",
}


def _secret_facts() -> RunFacts:
    s = SECRETS
    return RunFacts(
        project="llama-pretrain", name=f"run-{s['name_token']}", id="abc123",
        tags=("pretrain", s["tag_token"]),
        config={
            "framework": "megatron", "lr": 0.0003, "model_name": "meta-llama/Llama-3-8B",
            "wandb_api_key": s["wandb_key"], "hf_token": s["hf"],
            "storage": {"aws_secret_access_key": s["aws_secret"], "aws_access_key_id": s["aws_id"],
                        "endpoint": f"https://minio:{s['url_pw']}@minio.local:9000/bucket"},
            "db": [{"dsn": f"postgres://app:{s['db_pw']}@db/x"}, {"password": s["nested_pw"]}],
            "callbacks": [["hub", {"token": s["listed"]}], f"Bearer {s['jwt']}"],
            "innocent": s["openai"], "deep": {"a": {"b": {"c": {"Authorization": s["cookie"]}}}},
            "data_path": "/data/hf_cache/datasets", "seed": 1234,
        })


def _secret_env() -> Dict[str, str]:
    s = SECRETS
    return {
        "WANDB_API_KEY": s["wandb_key"], "HF_TOKEN": s["hf"], "AWS_SECRET_ACCESS_KEY": s["aws_secret"],
        "PRIMUS_LENS_API_HEADERS": f"Cookie: {s['cookie']}", "PRIMUS_HF_TOKEN": s["primus_token"],
        "MEGATRON_DATA_URL": f"https://user:{s['url_pw']}@data.example.com/set?token={s['query_token']}",
        "GIT_REPO": f"https://{s['git_token']}@github.com/org/repo.git",
        "BUILD_URL": f"https://ci.example.com/job/7?access_token={s['query_token']}",
        "FRAMEWORK": s["framework_token"], "PRIMUS_CONFIG": "/workspace/exp/llama3_8B.yaml",
        "DEEPSPEED_CONFIG": f"--password {s['db_pw']}",
        "WORLD_SIZE": "16", "GIT_COMMIT": "0123abcd",
    }


def test_secrets_never_leave(modules) -> None:
    _primus_megatron(modules)
    body = report(_secret_facts(), _secret_env(), MI300X)
    text = json.dumps(body)
    leaked = [name for name, value in SECRETS.items() if value in text]
    assert leaked == []
    evidence = body["evidence"]
    config = evidence["wandb"]["config"]
    assert config["storage"] == {"aws_secret_access_key": WITHHELD, "aws_access_key_id": WITHHELD,
                                 "endpoint": WITHHELD}
    assert config["db"] == [{"dsn": WITHHELD}, {"password": WITHHELD}]
    assert config["callbacks"] == [["hub", {"token": WITHHELD}], WITHHELD]
    assert config["innocent"] == WITHHELD
    assert config["deep"] == {"a": {"b": {"c": {"Authorization": WITHHELD}}}}
    # what is not secret arrives unchanged
    assert (config["framework"], config["lr"], config["model_name"], config["seed"]) == (
        "megatron", 0.0003, "meta-llama/Llama-3-8B", 1234)
    assert config["data_path"] == "/data/hf_cache/datasets"
    assert evidence["wandb"]["tags"] == ["pretrain", REDACTED]
    assert evidence["wandb"]["name"] == f"run-{REDACTED}"
    assert evidence["environment"] == {
        "DEEPSPEED_CONFIG": WITHHELD, "FRAMEWORK": WITHHELD, "MEGATRON_DATA_URL": WITHHELD,
        "PRIMUS_CONFIG": "/workspace/exp/llama3_8B.yaml", "PRIMUS_HF_TOKEN": WITHHELD,
        "WORLD_SIZE": "16"}
    assert evidence["build"] == {"build_url": WITHHELD, "git_commit": "0123abcd",
                                 "git_repo": WITHHELD}
    assert WITHHELD not in json.dumps(body["hints"])  # a withheld value names no framework
    assert_contract(body)


def test_evidence_levels(modules) -> None:
    _primus_megatron(modules)
    full = report(_secret_facts(), _secret_env(), MI300X)
    minimal = report(_secret_facts(), _secret_env(), MI300X,
                     config=Config.from_env({"POD_NAME": "p", "PRIMUS_LENS_EVIDENCE": " Minimal "}))
    off = report(_secret_facts(), _secret_env(), MI300X,
                 config=Config.from_env({"POD_NAME": "p", "PRIMUS_LENS_EVIDENCE": "off"}))
    kept = ["pytorch", "wrapper_frameworks", "base_frameworks", "software"]
    assert list(minimal["evidence"]) == kept
    assert minimal["evidence"] == {key: full["evidence"][key] for key in kept}
    assert off["evidence"] == {}
    assert minimal["hints"] == off["hints"] == full["hints"]
    assert off["hints"]["wrapper_frameworks"] == ["primus"]
    for body in (minimal, off):
        assert_contract(body)
    bad = Config.from_env({"PRIMUS_LENS_EVIDENCE": "everything"})
    assert bad.evidence == "standard"
    assert [p.message() for p in bad.problems] == [
        "ignoring PRIMUS_LENS_EVIDENCE='everything': expected one of standard|minimal|off; "
        "using the default"]


def test_body_stays_bounded(modules) -> None:
    _primus_megatron(modules)
    emoji = "\U0001f600"  # 12 bytes once ASCII-escaped
    env = {f"PRIMUS_VAR_{i:04d}": emoji * 2000 for i in range(400)}
    env.update({f"MEGATRON_{i}": "x" * 5000 for i in range(400)})
    env.update({name: emoji * 5000 for name in ("BUILD_URL", "IMAGE_TAG", "GIT_REPO", "GIT_BRANCH")})
    facts = RunFacts(project=emoji * 5000, name="n-" * 50000, id="i-" * 2500,
                     tags=tuple(emoji * 1000 for _ in range(500)),
                     config={"framework": "megatron",
                             "layers": [{"w": emoji * 1500, "i": i} for i in range(1500)],
                             **{f"k{i}": "v" * 100 for i in range(5000)}})
    inventory = {"devices": [{"name": emoji * 1000, "memory_total_bytes": 1}] * 5000}
    body = report(facts, env, inventory)
    assert_contract(body)
    assert json_size(body) <= 1024 * 1024
    evidence = body["evidence"]
    assert json_size(evidence["wandb"]["config"]) <= 256 * 1024
    assert json_size(evidence["environment"]) <= 64 * 1024
    # every value is withheld (too long), so only the count limit cuts
    assert evidence["environment"][TRUNCATED_KEY] == "672 of 800 keys dropped (too many)"
    assert {v for k, v in evidence["environment"].items() if k != TRUNCATED_KEY} == {WITHHELD}
    assert evidence["wandb"]["config"]["framework"] == "megatron"
    assert evidence["wandb"]["tags"][-1].startswith("[TRUNCATED: ")
    assert len(evidence["wandb"]["name"]) < 300 and evidence["wandb"]["name"].endswith(" chars]")
    assert evidence["hardware"]["gpu_count"] == 5000
    assert body["hints"]["wrapper_frameworks"] == ["primus"]


# --- hardware ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "arch"), [
    ("AMD Instinct MI300X", "mi300x"), ("AMD Instinct MI300X VF", "mi300x"),
    ("AMD Instinct MI300A", "mi300a"), ("AMD Instinct MI300", "mi300"),
    ("AMD Instinct MI325X", "mi325x"), ("AMD Instinct MI355X", "mi355x"),
    ("AMD Instinct MI250X/MI250", "mi250x"), ("AMD Instinct MI250", "mi250"),
    ("AMD Instinct MI210", "mi210"), ("NVIDIA GH200 480GB", "gh200"), ("NVIDIA H200", "h200"),
    ("NVIDIA H100 80GB HBM3", "h100"), ("NVIDIA H100-SXM5-80GB", "h100"), ("NVIDIA H20", "h20"),
    ("NVIDIA A100-SXM4-80GB", "a100"), ("NVIDIA A10G", "a10g"), ("NVIDIA A10", "a10"),
    ("NVIDIA L40S", "l40s"), ("NVIDIA L4", "l4"), ("Tesla T4", "t4"), ("Tesla V100-SXM2-16GB", "v100"),
    ("NVIDIA B200", "b200"), ("NVIDIA GeForce RTX 4090", None), ("AMD Radeon PRO W7900", None),
    # a product name must not be part of a longer one
    ("AMD Instinct MI500", None), ("NVIDIA RTX A4000", None), ("NVIDIA Quadro T400", None),
    ("NVIDIA GH100", None), ("", None),
])
def test_gpu_arch_from_name(name: str, arch: Optional[str]) -> None:
    assert gpu_arch(name) == arch


def test_hardware_sources(modules) -> None:
    assert "hardware" not in report(environ={"WORLD_SIZE": "16"})["evidence"]  # never a guess
    body = report(environ={"GPU_ARCH": "MI308X", "CUDA_VERSION": "12.4.1"}, gpu_inventory=MI300X)
    assert body["evidence"]["hardware"] == {"gpu_count": 8, "gpu_name": "AMD Instinct MI300X",
                                            "gpu_memory_gb": 191.7, "gpu_arch": "mi308x",
                                            "cuda_version": "cuda12.4.1"}
    modules("torch", "2.5.1")
    modules("torch.version", cuda=None, hip="6.2.41133-dd7f95766")
    body = report(gpu_inventory={"vendor": None, "backend": None, "devices": [], "driver_version": None})
    assert body["evidence"]["hardware"] == {"rocm_version": "rocm6.2.41133-dd7f95766"}
    assert body["evidence"]["software"]["rocm_version"] == "6.2.41133-dd7f95766"


@pytest.mark.parametrize("inventory", [
    {"devices": "not a list"}, {"devices": [None, 3, {"name": 5, "memory_total_bytes": "8"}]},
    {"devices": [{"name": "NVIDIA H100", "memory_total_bytes": True}]}, [], "x",
    {"devices": [{"name": "NVIDIA H100", "memory_total_bytes": 1.5e10}]},
])
def test_malformed_inventory_is_tolerated(modules, inventory: Any) -> None:
    body = report(gpu_inventory=inventory)
    assert_contract(body)
    hardware = body["evidence"].get("hardware", {})
    assert "gpu_memory_gb" not in hardware
    assert hardware.get("gpu_arch") in (None, "h100")


# --- RunFacts ------------------------------------------------------------------------------------------


class _Anything(str):
    """Like wandb 0.12's disabled run: a str whose every attribute and call is another such str."""

    def __getattr__(self, name: str) -> _Anything:
        return _Anything()

    def __call__(self, *args: Any, **kwargs: Any) -> _Anything:
        return _Anything()


class _Raising:
    @property
    def project(self) -> str:
        raise RuntimeError("finished")

    name = project
    id = project
    tags = project
    config = project


class _Config:
    """wandb's Config before _as_dict existed: __getattr__ of a missing key raises KeyError."""

    def __init__(self, items: dict) -> None:
        object.__setattr__(self, "_items", items)

    def __getattr__(self, key: str) -> Any:
        return self._items[key]

    def as_dict(self) -> dict:
        return {k: v for k, v in self._items.items() if not k.startswith("_")}


def test_run_facts_from_odd_runs() -> None:
    assert RunFacts.from_run(_Anything()) == RunFacts()
    assert RunFacts.from_run(_Raising()) == RunFacts()
    assert RunFacts.from_run(None) == RunFacts()
    run = types.SimpleNamespace(project=_Anything("proj"), name=None, id=7, tags=["a", 3, _Anything("b")],
                                config=_Config({"lr": 1, "_wandb": {"x": 1}, "_private": 2}))
    assert RunFacts.from_run(run) == RunFacts(project="proj", tags=("a", "b"), config={"lr": 1})
    assert type(RunFacts.from_run(run).project) is str


def test_run_facts_copies_the_config_at_init() -> None:
    live = {"lr": 0.1, "_wandb": {"cli_version": "0.31.0"}, "_note": "kept"}
    config = types.SimpleNamespace(_as_dict=lambda: live)
    facts = RunFacts.from_run(types.SimpleNamespace(project="p", name="n", id="i", tags=("t",),
                                                    config=config))
    assert facts == RunFacts("p", "n", "i", ("t",), {"lr": 0.1, "_note": "kept"})
    live["later"] = 1
    assert "later" not in facts.config and "_wandb" in live


_WANDB_PROBE = """
    import json, sys
    import wandb
    from primus_lens_inject.config import Config
    from primus_lens_inject.report.detection import build_report
    from primus_lens_inject.report.runfacts import RunFacts
    from primus_lens_inject.topology import Topology

    secrets = json.loads(sys.argv[2])
    run = wandb.init(project="lens-proj", name="lens-run", tags=["t1", "t2"], mode=sys.argv[1],
                     config={"lr": 0.1, "framework": "deepspeed", "hf_token": secrets["hf"],
                             "nested": {"password": secrets["pw"],
                                        "url": "https://u:" + secrets["url"] + "@h/x"},
                             "_note": 1})
    facts = RunFacts.from_run(run)
    body = build_report(facts, Config(pod_name="pod-0"), Topology(), now=1.5)
    run.finish()
    print("RESULT " + json.dumps({"facts": facts.__dict__, "body": body, "run": type(run).__name__,
                                  "wandb": wandb.__version__}))
"""


@pytest.mark.wandb_compat
@pytest.mark.parametrize("mode", ["offline", "disabled"])
def test_run_facts_from_a_real_wandb_run(tmp_path: Path, mode: str) -> None:
    python = os.environ.get("PRIMUS_LENS_TEST_PYTHON") or sys.executable
    secrets = {"hf": "hf_" + "RealRunTokenValue0123456789abcdefg", "pw": "real-run-pw-81",
               "url": "real-run-url-pw-82"}
    script = tmp_path / "probe.py"
    script.write_text(textwrap.dedent(_WANDB_PROBE))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("WANDB_", "PRIMUS_LENS_", "PYTHON"))}
    env.update(WANDB_DIR=str(tmp_path), WANDB_SILENT="true", HOME=str(tmp_path),
               WANDB_DISABLE_GIT="true", WANDB__DISABLE_STATS="true")
    proc = subprocess.run([python, str(script), mode, json.dumps(secrets)], capture_output=True,
                          text=True, timeout=150, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    result = json.loads(line[len("RESULT "):])
    facts, body = result["facts"], result["body"]
    # wandb 0.12-0.15 disabled runs are str objects that know no project and no tags
    old_disabled = result["run"] == "RunDisabled"
    assert facts["project"] == ("" if old_disabled else "lens-proj")
    assert facts["tags"] == ([] if old_disabled else ["t1", "t2"])
    assert facts["name"] == "lens-run" or (old_disabled and facts["name"].startswith("dummy-"))
    assert isinstance(facts["id"], str) and facts["id"]
    assert facts["config"] == {"lr": 0.1, "framework": "deepspeed", "hf_token": secrets["hf"],
                               "nested": {"password": secrets["pw"],
                                          "url": "https://u:" + secrets["url"] + "@h/x"},
                               "_note": 1}
    sent = body["evidence"]["wandb"]["config"]
    assert sent == {"lr": 0.1, "framework": "deepspeed", "hf_token": WITHHELD,
                    "nested": {"password": WITHHELD, "url": WITHHELD}, "_note": 1}
    assert not [v for v in secrets.values() if v in json.dumps(body)]
    assert body["hints"]["base_frameworks"] == ["deepspeed"]
    assert body["evidence"]["software"]["packages"]["wandb"] == result["wandb"]
    assert_contract(body)


def test_body_decodes_under_go_rules(modules) -> None:
    godecode = pytest.importorskip("primus_lens_inject.devserver.godecode")
    g = godecode
    string_map, bool_map = g.Map(g.STRING), g.Map(g.BOOL)
    nested, strings = g.Map(g.Map(g.ANY)), g.Slice(g.STRING)
    request = g.Struct(
        "WandBDetectionRequest", source=g.STRING, type=g.STRING, version=g.STRING,
        workload_uid=g.STRING, pod_uid=g.STRING, pod_name=g.STRING, namespace=g.STRING,
        evidence=g.Struct(
            "WandBEvidence",
            wandb=g.Struct("WandBInfo", project=g.STRING, name=g.STRING, id=g.STRING,
                           config=g.Map(g.ANY), tags=strings),
            environment=string_map,
            pytorch=g.Pointer(g.Struct("PyTorchInfo", available=g.BOOL, version=g.STRING,
                                       cuda_available=g.BOOL, detected_modules=bool_map)),
            wrapper_frameworks=nested, base_frameworks=nested, system=g.Map(g.ANY),
            hardware=g.Pointer(g.Struct("HardwareInfo", gpu_arch=g.STRING, gpu_count=g.INT64,
                                        gpu_memory_gb=g.FLOAT64, gpu_name=g.STRING,
                                        rocm_version=g.STRING, cuda_version=g.STRING)),
            software=g.Pointer(g.Struct("SoftwareInfo", rocm_version=g.STRING,
                                        packages=string_map)),
            build=g.Pointer(g.Struct("BuildInfo", **{k: g.STRING for k in (
                "build_url", "dockerfile_url", "image_tag", "build_date", "git_commit",
                "git_branch", "git_repo", "ci_pipeline_id")}))),
        hints=g.Struct("WandBHints", wrapper_frameworks=strings, base_frameworks=strings,
                       possible_frameworks=strings, confidence=g.STRING,
                       primary_indicators=strings, framework_layers=nested),
        timestamp=g.FLOAT64)
    _primus_megatron(modules)
    facts = _secret_facts()
    facts.config.update(nan=math.nan, big=10**40, huge=2**5000, flag=True)
    body = report(facts, _secret_env(), MI300X)
    raw = json.dumps(body, allow_nan=False, separators=(",", ":")).encode()
    decoded = godecode.decode_body(raw, request)
    assert decoded["evidence"]["hardware"]["gpu_count"] == 8
    assert decoded["evidence"]["wandb"]["config"]["nan"] == "NaN"
    assert decoded["evidence"]["wandb"]["config"]["big"] == str(10**40)
    assert decoded["hints"]["wrapper_frameworks"] == ["primus"]


def test_importing_detection_is_light() -> None:
    """The init wrapper imports ``runfacts`` on the training thread: nothing else of ours and no
    metadata machinery; the report's own modules load no more than our leaves either."""
    code = ("import sys, primus_lens_inject.config, primus_lens_inject.topology\n"
            "before = set(sys.modules)\n"
            "import primus_lens_inject.report.runfacts\n"
            "print(' '.join(sorted(set(sys.modules) - before)))\n"
            "before = set(sys.modules)\n"
            "import primus_lens_inject.report.detection\n"
            "print(' '.join(sorted(set(sys.modules) - before)))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    facts, report_modules = proc.stdout.split("\n")[:2]
    assert facts.split() == ["primus_lens_inject.report", "primus_lens_inject.report.runfacts"]
    assert set(report_modules.split()) <= {
        f"primus_lens_inject.{name}" for name in (
            "report.detection", "report.environment", "report.evidence", "report.frameworks",
            "report.hints", "report.bounds", "report.identity", "values", "credentials")} | {"binascii"}
    assert "primus_lens_inject.report.detection" in report_modules.split()
