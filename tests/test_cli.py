"""The ``primus-lens`` command as a user runs it: run, the .pth route, doctor."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from conftest import BOOTSTRAP_DIR, ROOT, training_env

PRIMUS_LENS = [sys.executable, "-m", "primus_lens_inject"]

TRAIN = """
import os, sys, wandb
print("PYTHONPATH=" + os.environ.get("PYTHONPATH", ""))
run = wandb.init(project="cli")
run.log({"x": 1})
run.finish()
"""


def test_run_puts_the_bootstrap_first_and_keeps_the_rest(tmp_path):
    (tmp_path / "train.py").write_text(TRAIN)
    env = training_env(tmp_path, {"PYTHONPATH": "/opt/team/lib:/opt/other"}, bootstrap=False)
    proc = subprocess.run([*PRIMUS_LENS, "run", "--", sys.executable, "train.py"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"PYTHONPATH={BOOTSTRAP_DIR}:/opt/team/lib:/opt/other" in proc.stdout
    record = tmp_path / "out" / "node_0" / "rank_0" / "wandb_metrics.jsonl"
    assert json.loads(record.read_text())["data"]["x"] == 1


def test_run_reports_a_missing_command(tmp_path):
    proc = subprocess.run([*PRIMUS_LENS, "run", "--", "no-such-command-xyz"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 127 and "cannot execute 'no-such-command-xyz'" in proc.stderr
    proc = subprocess.run([*PRIMUS_LENS, "run"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "usage" in proc.stderr


@pytest.fixture
def scratch_env(tmp_path):
    """A virtualenv of its own with our package really installed (a wheel, not editable);
    wandb and the other dependencies come from the test environment through a path file."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    python = venv / "bin" / "python"
    purelib = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig."
                                   "get_paths()['purelib'])"], capture_output=True, text=True,
                                  check=True).stdout.strip())
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(purelib), str(ROOT)], check=True, timeout=300,
                   capture_output=True)
    (purelib / "outer.pth").write_text(f"{sysconfig.get_paths()['purelib']}\n")
    return python, purelib


def test_pth_route_install_check_uninstall(tmp_path, scratch_env):
    python, purelib = scratch_env
    env = training_env(tmp_path, bootstrap=False)

    def cli(*args):
        return subprocess.run([str(python), "-m", "primus_lens_inject", *args], env=env,
                              capture_output=True, text=True, timeout=60)

    assert cli("check").returncode == 1
    installed = cli("install")
    assert installed.returncode == 0 and str(purelib / "primus_lens_inject.pth") in installed.stdout
    assert cli("check").returncode == 0
    (tmp_path / "train.py").write_text(TRAIN)
    proc = subprocess.run([str(python), "train.py"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "PYTHONPATH=\n" in proc.stdout
    record = tmp_path / "out" / "node_0" / "rank_0" / "wandb_metrics.jsonl"
    assert [json.loads(line)["data"]["x"] for line in record.read_text().splitlines()] == [1]

    # .pth and PYTHONPATH bootstrap together: still one activation, one row per log
    record.unlink()
    proc = subprocess.run([str(python), "train.py"], cwd=tmp_path, capture_output=True, text=True,
                          env=dict(env, PYTHONPATH=str(BOOTSTRAP_DIR)), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert len(record.read_text().splitlines()) == 1

    # the kill switch is honoured by the .pth line before anything of ours is imported
    proc = subprocess.run([str(python), "-c", "import sys; print(sorted(m for m in sys.modules "
                           "if m.startswith(('primus_lens', '_primus_lens'))))"],
                          env=dict(env, PRIMUS_LENS_WANDB_HOOK="false"), capture_output=True,
                          text=True, timeout=60)
    assert proc.stdout.strip() == "[]"

    assert cli("uninstall").returncode == 0
    assert cli("check").returncode == 1
    assert "not installed" in cli("uninstall").stdout


def doctor(tmp_path, extra, bootstrap=True):
    env = training_env(tmp_path, extra, bootstrap=bootstrap)
    proc = subprocess.run([*PRIMUS_LENS, "doctor", "--json"], env=env, capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_doctor_explains_an_active_injector(tmp_path):
    image = tmp_path / "image"
    image.mkdir()
    (image / "sitecustomize.py").write_text("")
    report = doctor(tmp_path, {"PYTHONPATH": f"{BOOTSTRAP_DIR}:{image}", "NODE_RANK": "3",
                               "LOCAL_RANK": "2"})
    boot = report["bootstrap"]
    assert boot["active"] is True and boot["why_not"] == []
    assert boot["location"] == str(BOOTSTRAP_DIR / "sitecustomize.py")
    assert boot["chained_sitecustomize"] == str(image / "sitecustomize.py")
    assert report["wandb"]["supported"] is True
    assert report["record"]["path"] == str(tmp_path / "out" / "node_3" / "rank_2" /
                                           "wandb_metrics.jsonl")
    assert report["record"]["writable"] is True
    assert report["invalid_values"] == []


def test_doctor_explains_why_not(tmp_path):
    report = doctor(tmp_path, {"PRIMUS_LENS_WANDB_HOOK": "off", "PRIMUS_LENS_SAMPLE_INTERVAL": "x",
                               "PRIMUS_LENS_WANDB_OUTPUT_PATH": "/proc/forbidden",
                               "RANK": "abc"}, bootstrap=False)
    boot = report["bootstrap"]
    assert boot["active"] is False
    assert any("kill switch" in reason for reason in boot["why_not"])
    assert any("not on PYTHONPATH" in reason for reason in boot["why_not"])
    assert report["invalid_values"] == [
        "ignoring PRIMUS_LENS_SAMPLE_INTERVAL='x': expected a float between 0.1 and 3600; "
        "using the default"]
    assert report["record"]["writable"] is False
    assert report["record"]["invalid_rank_variables"] == ["RANK"]
    rows = {row["variable"]: row for row in report["configuration"]}
    assert rows["PRIMUS_LENS_WANDB_HOOK"]["value"] is False
    assert rows["PRIMUS_LENS_SAMPLE_INTERVAL"]["value"] == rows["PRIMUS_LENS_SAMPLE_INTERVAL"][
        "default"] == 1.0


def test_doctor_text_output_and_hidden_secrets(tmp_path):
    env = training_env(tmp_path, {"PRIMUS_LENS_API_HEADERS": "Cookie: session=sekrit-value"})
    proc = subprocess.run([*PRIMUS_LENS, "doctor"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0
    assert proc.stdout.startswith("injector: ACTIVE")
    assert "sekrit-value" not in proc.stdout
    assert "PRIMUS_LENS_API_HEADERS = '<set, hidden>'" in proc.stdout


def test_version_and_usage():
    proc = subprocess.run([*PRIMUS_LENS, "--version"], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip().startswith("primus-lens-inject ")
    proc = subprocess.run([*PRIMUS_LENS, "bogus"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "invalid choice" in proc.stderr
    assert os.path.isdir(BOOTSTRAP_DIR)
