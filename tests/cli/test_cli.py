"""The ``primus-lens`` command as a user runs it: run, --help, the .pth route, doctor.

Everything runs against the install under test (``conftest.LAYOUT``); the .pth route needs a
virtualenv of its own, which gets the wheel built from this checkout.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
from pathlib import Path

import installs
import pytest
from conftest import BASE_PYTHON, BOOTSTRAP_DIR, LAYOUT, ROOT, TRAIN_PYTHON, run_cli, training_env

TRAIN = """
import os, sys, wandb
print("PYTHONPATH=" + os.environ.get("PYTHONPATH", ""))
run = wandb.init(project="cli")
run.log({"x": 1})
run.finish()
"""
LOADED = "import sys; print(sorted(m for m in sys.modules if 'primus_lens' in m))"


def record_xs(tmp: Path) -> list:
    path = tmp / "out" / "node_0" / "rank_0" / "wandb_metrics.jsonl"
    return [json.loads(line)["data"]["x"] for line in path.read_text().splitlines()]


def python(tmp: Path, args: list, env: dict, interpreter: str = TRAIN_PYTHON):
    return subprocess.run([interpreter, *args], cwd=tmp, env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.layouts
def test_run_puts_the_bootstrap_first_and_warns_about_isolating_options(tmp_path):
    (tmp_path / "train.py").write_text(TRAIN)
    env = training_env(tmp_path, {"PYTHONPATH": "/opt/team/lib:/opt/other"}, bootstrap=False)
    proc = run_cli(["run", "--", TRAIN_PYTHON, "train.py"], env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"PYTHONPATH={BOOTSTRAP_DIR}:/opt/team/lib:/opt/other\n" in proc.stdout
    assert "primus-lens run:" not in proc.stderr
    assert record_xs(tmp_path) == [1]

    # -I and -S keep the bootstrap out: said once, before the command runs
    proc = run_cli(["run", "--", TRAIN_PYTHON, "-X", "utf8", "-IS", "-c", LOADED], env,
                   cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout == "[]\n", proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("primus-lens run:")]
    assert warnings == [f"primus-lens run: {TRAIN_PYTHON} -I ignores PYTHONPATH, -S never imports "
                        "sitecustomize: the injector cannot load in that process (drop the "
                        "option)"]
    proc = run_cli(["run", "--", TRAIN_PYTHON, "-E", "-c", "pass"], env, cwd=tmp_path)
    assert proc.stderr == (f"primus-lens run: {TRAIN_PYTHON} -E ignores PYTHONPATH: the injector "
                           "cannot load in that process (drop the option, or use the .pth route: "
                           "`primus-lens install`)\n")


@pytest.mark.parametrize(("argv", "found"), [
    (["python3", "-I", "train.py"], ["-I"]),
    (["/usr/bin/python3.11", "-X", "importtime", "-E", "-m", "torch.distributed.run"], ["-E"]),
    (["python", "-bIS", "-W", "ignore", "x.py"], ["-I", "-S"]),
    (["python", "-Wignore", "-c", "-I"], []),  # -I is the program's argument here
    (["python", "-X", "E", "train.py"], []),  # and here the value of -X
    (["python", "train.py", "-I"], []),
    (["torchrun", "-I", "train.py"], []),  # not a Python
])
def test_isolating_options_are_read_like_python_reads_them(argv, found):
    from primus_lens_inject.cli.main import isolating_options

    assert [option.split()[0] for option in isolating_options(argv)] == found


def test_help_of_every_subcommand_only_prints_help(tmp_path):
    env = training_env(tmp_path, bootstrap=False)
    pth = installs.purelib(TRAIN_PYTHON) / "primus_lens_inject.pth"
    for command in ("run", "doctor", "install", "uninstall", "check", "receive", "webhook", "agent"):
        proc = run_cli([command, "--help"], env, cwd=tmp_path)
        assert proc.returncode == 0, (command, proc.stderr)
        assert proc.stdout.startswith(f"usage: primus-lens {command}"), (command, proc.stdout)
        assert proc.stderr == "", (command, proc.stderr)
        # an installed wheel ships no docs/: help never sends a user to a page they lack
        assert "docs/" not in proc.stdout and ".md" not in proc.stdout, (command, proc.stdout)
    assert not pth.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home"]

    proc = run_cli(["run", "--", "no-such-command-xyz"], env)
    assert proc.returncode == 127 and "cannot execute 'no-such-command-xyz'" in proc.stderr
    proc = run_cli(["run"], env)
    assert proc.returncode == 2 and proc.stderr.startswith("usage: primus-lens run")
    proc = run_cli(["--version"], env)
    assert proc.stdout == "primus-lens-inject 0.1.0\n"
    proc = run_cli(["bogus"], env)
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


NOT_ACTIVE = 3  # doctor's exit status when the injector would not be active


def doctor_json(tmp: Path, env: dict, *options: str, interpreter: str = TRAIN_PYTHON) -> dict:
    """``python [OPTIONS] -m primus_lens_inject doctor --json``, as one runs it in an image; its
    exit status says what the report says (0 active, ``NOT_ACTIVE`` not)."""
    proc = python(tmp, [*options, "-m", "primus_lens_inject", "doctor", "--json"], env, interpreter)
    report = json.loads(proc.stdout)
    assert proc.returncode == (0 if report["bootstrap"]["active"] else NOT_ACTIVE), proc.stderr
    return report


def test_pth_route_install_uninstall_and_pip_uninstall(tmp_path, wheel):
    venv_python = installs.wheel_virtualenv(tmp_path / "venv", BASE_PYTHON, wheel)
    purelib = installs.purelib(venv_python)
    pth = purelib / "primus_lens_inject.pth"
    shim = purelib / "_primus_lens_inject_pth.py"  # what the .pth imports
    (record_file,) = purelib.glob("primus_lens_inject-*.dist-info/RECORD")
    bootstrap = installs.installed_bootstrap(venv_python)
    env = training_env(tmp_path, bootstrap=False)

    def cli(*args):
        return subprocess.run([str(Path(venv_python).parent / "primus-lens"), *args], env=env,
                              cwd=tmp_path, capture_output=True, text=True, timeout=60)

    # -E ignores the PYTHONPATH route, and doctor says so
    report = doctor_json(tmp_path, dict(env, PYTHONPATH=str(bootstrap)), "-E",
                         interpreter=venv_python)
    assert report["bootstrap"]["active"] is False
    assert report["bootstrap"]["why_not"] == [
        "python runs with -E/-I, which ignores PYTHONPATH and with it the bootstrap there; "
        "`primus-lens install` (the .pth route) works under -E/-I"]

    assert cli("check").returncode == 1
    installed = cli("install")
    assert installed.returncode == 0, installed.stderr
    assert installed.stdout == (
        f"installed {pth}: every `{venv_python}` process now loads the injector "
        "(PRIMUS_LENS_WANDB_HOOK=false turns it off; `pip uninstall primus-lens-inject` or "
        "`primus-lens uninstall` removes it)\n")
    assert record_file.read_text().splitlines().count("primus_lens_inject.pth,,") == 1
    assert cli("check").returncode == 0

    # the .pth route works under -I, which drops PYTHONPATH; doctor agrees
    (tmp_path / "train.py").write_text(TRAIN)
    proc = python(tmp_path, ["-I", "train.py"], env, venv_python)
    assert proc.returncode == 0, proc.stderr
    assert record_xs(tmp_path) == [1]
    boot = doctor_json(tmp_path, env, "-I", interpreter=venv_python)["bootstrap"]
    assert (boot["active"], boot["route"], boot["why_not"]) == (True, ".pth", [])
    assert boot["location"] == str(bootstrap / "sitecustomize.py")
    proc = cli("run", "--", venv_python, "-I", "-c", "pass")  # nothing to warn about here
    assert (proc.returncode, proc.stderr) == (0, "")

    # .pth and PYTHONPATH together: still one activation, one row per log
    proc = python(tmp_path, ["train.py"], dict(env, PYTHONPATH=str(bootstrap)), venv_python)
    assert proc.returncode == 0, proc.stderr
    assert record_xs(tmp_path) == [1, 1]

    # the kill switch is honoured by the .pth's shim before anything else of ours is read
    proc = python(tmp_path, ["-c", LOADED], dict(env, PRIMUS_LENS_WANDB_HOOK="false"), venv_python)
    assert proc.stdout == "['_primus_lens_inject_pth']\n" and proc.stderr == ""

    assert cli("uninstall").stdout == f"removed {pth}\n"
    assert not shim.exists() and not list(purelib.glob("__pycache__/_primus_lens_inject_pth.*"))
    assert not re.search(r"^(primus_lens_inject\.pth|_primus_lens_inject_pth|__pycache__/_primus)",
                         record_file.read_text(), re.MULTILINE)
    assert cli("check").returncode == 1
    assert cli("uninstall").stdout == f"not installed: {pth} does not exist\n"

    # pip uninstall takes the .pth with the package
    assert cli("install").returncode == 0
    installs.pip(venv_python, "uninstall", "-q", "-y", "primus-lens-inject")
    assert not pth.exists() and not shim.exists()
    assert not list(purelib.glob("__pycache__/_primus_lens_inject_pth.*"))
    proc = python(tmp_path, ["-c", "pass"], env, venv_python)
    assert (proc.returncode, proc.stderr) == (0, "")

    # a .pth left behind by a removal pip knew nothing of: silent, no traceback at start-up
    venv_python = installs.wheel_virtualenv(tmp_path / "venv2", BASE_PYTHON, wheel)
    proc = subprocess.run([str(Path(venv_python).parent / "primus-lens"), "install"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    shutil.rmtree(installs.purelib(venv_python) / "primus_lens_inject")
    proc = python(tmp_path, ["-c", "print('ok')"], env, venv_python)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "ok\n", "")


@pytest.mark.layouts
def test_doctor_explains_an_active_injector(tmp_path):
    image = tmp_path / "image"
    image.mkdir()
    (image / "sitecustomize.py").write_text("")
    env = training_env(tmp_path, {"PYTHONPATH": f"{BOOTSTRAP_DIR}:{image}", "NODE_RANK": "3",
                                  "LOCAL_RANK": "2"})
    report = doctor_json(tmp_path, env)
    boot = report["bootstrap"]
    assert (boot["active"], boot["why_not"], boot["warnings"]) == (True, [], [])
    assert boot["status"] == "active: waiting for wandb"
    assert boot["location"] == boot["first_sitecustomize"] == str(BOOTSTRAP_DIR / "sitecustomize.py")
    assert boot["route"] == "PYTHONPATH"
    assert boot["layout"] == {"checkout": "directory", "wheel": "installed package",
                              "image": "image tree"}[LAYOUT.mode]
    assert boot["chained_sitecustomize"] == str(image / "sitecustomize.py")
    assert boot["shadowed_by"] is None
    assert report["wandb"]["supported"] is True
    assert report["record"]["path"] == str(tmp_path / "out" / "node_3" / "rank_2" /
                                           "wandb_metrics.jsonl")
    assert report["record"]["writable"] is True
    assert report["invalid_values"] == []
    assert report["reporting"]["enabled"] is False and report["reporting"]["will_send"] is False


@pytest.mark.layouts
def test_doctor_under_primus_lens_run_with_the_kill_switch(tmp_path):
    env = training_env(tmp_path, {"PRIMUS_LENS_WANDB_HOOK": "off", "PRIMUS_LENS_SAMPLE_INTERVAL":
                                  "x", "PRIMUS_LENS_WANDB_OUTPUT_PATH": "/proc/forbidden",
                                  "RANK": "abc"}, bootstrap=False)
    proc = run_cli(["run", "--", TRAIN_PYTHON, "-m", "primus_lens_inject", "doctor", "--json"],
                   env, cwd=tmp_path)
    assert proc.returncode == NOT_ACTIVE, proc.stderr  # passed on by `run`
    report = json.loads(proc.stdout)
    boot = report["bootstrap"]
    assert (boot["active"], boot["loaded"], boot["route"]) == (False, False, "PYTHONPATH")
    assert boot["why_not"] == ["PRIMUS_LENS_WANDB_HOOK=off turns it off (kill switch); unset it "
                               "to turn the injector on"]
    assert report["invalid_values"] == [
        "ignoring PRIMUS_LENS_SAMPLE_INTERVAL='x': expected a float between 0.1 and 3600; "
        "using the default"]
    assert report["record"]["writable"] is False
    assert report["record"]["invalid_rank_variables"] == ["RANK"]
    rows = {row["variable"]: row for row in report["configuration"]}
    assert rows["PRIMUS_LENS_WANDB_HOOK"]["value"] is False
    assert rows["PRIMUS_LENS_SAMPLE_INTERVAL"]["value"] == rows["PRIMUS_LENS_SAMPLE_INTERVAL"][
        "default"] == 1.0


def test_doctor_finds_a_shadowed_bootstrap(tmp_path):
    # an image's own sitecustomize ahead of ours: it runs, ours never does
    image = tmp_path / "image"
    image.mkdir()
    (image / "sitecustomize.py").write_text("")
    env = training_env(tmp_path, {"PYTHONPATH": f"{image}:{BOOTSTRAP_DIR}"})
    boot = doctor_json(tmp_path, env)["bootstrap"]
    assert (boot["active"], boot["shadowed_by"]) == (False, str(image / "sitecustomize.py"))
    assert boot["why_not"] == [
        f"another sitecustomize comes first on sys.path and wins: {image}/sitecustomize.py; "
        f"put {BOOTSTRAP_DIR} before {image} on PYTHONPATH, or use the .pth route "
        "(`primus-lens install`), which no sitecustomize can shadow"]

    # a launcher's site-packages (holding the package) ahead of the image tree: the bootstrap
    # is the tree's, the package is not
    tree = installs.image_tree(tmp_path / "tree")
    site = tmp_path / "site-packages"
    shutil.copytree(ROOT / "primus_lens_inject", site / "primus_lens_inject",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "sitecustomize", site / "primus_lens_inject" / "_bootstrap",
                    ignore=shutil.ignore_patterns("__pycache__"))
    boot = doctor_json(tmp_path, training_env(tmp_path, {"PYTHONPATH": f"{site}:{tree}"}))[
        "bootstrap"]
    assert (boot["active"], boot["layout"]) == (True, "image tree")
    assert boot["location"] == str(tree / "sitecustomize.py")
    assert boot["warnings"] == [
        f"primus_lens_inject is imported from {site}/primus_lens_inject, not from the tree beside "
        f"the bootstrap ({tree}/primus_lens_inject): put {tree} before {site} on PYTHONPATH"]


class SilentServer:
    """Accepts connections (the kernel does) and never answers: a hung telemetry-processor."""

    def __enter__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"

    def __exit__(self, *exc):
        self.sock.close()


@pytest.mark.layouts
def test_doctor_text_in_words_probe_bounded_and_secrets_hidden(tmp_path):
    with SilentServer() as url:
        env = training_env(tmp_path, {"PRIMUS_LENS_API_HEADERS": "Cookie: session=sekrit-value",
                                      "PRIMUS_LENS_WANDB_API_REPORTING": "true",
                                      "PRIMUS_LENS_API_BASE_URL": url, "POD_NAME": "trainer-0",
                                      "NODE_RANK": "1", "RANK": "5", "LOCAL_RANK": "1",
                                      "WORLD_SIZE": "8"})
        proc = run_cli(["doctor"], env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == f"probing {url} (up to 3 s to connect and to answer) ...\n"
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("injector: ACTIVE in ")
    assert "sekrit-value" not in proc.stdout
    assert "  PRIMUS_LENS_API_HEADERS = <set, hidden>   (set)" in lines
    assert "  PRIMUS_LENS_WANDB_HOOK = true" in lines
    assert "  PRIMUS_LENS_WANDB_OUTPUT_PATH = " + str(tmp_path / "out") + "   (set)" in lines
    assert "  PRIMUS_LENS_API_CA_BUNDLE = unset" in lines
    assert "  PRIMUS_LENS_API_TIMEOUT = 30 s" in lines
    assert "topology: node 1, rank 5 (from RANK), local rank 1, world size 8" in lines
    assert len([line for line in lines if line.startswith(f"reporting: on, to {url} (")]) == 1
    assert f"  endpoint {url}: not reachable: ReadTimeout: timed out" in lines
    reprs = [line for line in lines if re.search(r"= (True|False|None|\(\)|'.*')$", line)
             or "{'" in line]
    assert reprs == []


def test_doctor_into_a_closed_pipe_is_quiet(tmp_path):
    env = installs.cli_env(LAYOUT, training_env(tmp_path))
    proc = subprocess.Popen([*LAYOUT.cli, "doctor"], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # like `primus-lens doctor | head -0`: gone before doctor writes
    stderr = proc.communicate(timeout=120)[1]
    assert (proc.returncode, stderr) == (1, "")


def test_receive_where_the_receiver_is_left_out_says_so(tmp_path):
    # the image tree leaves devserver/ out (.dockerignore): one line and exit 2, no traceback
    shutil.copytree(ROOT / "primus_lens_inject", tmp_path / "primus_lens_inject",
                    ignore=shutil.ignore_patterns("__pycache__", "devserver"))
    env = training_env(tmp_path, {"PYTHONPATH": str(tmp_path)})
    # -S: no site, so no editable-install finder serves the full package ahead of the tree
    proc = subprocess.run([BASE_PYTHON, "-S", "-m", "primus_lens_inject", "receive", "--port", "0"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60, env=env)
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr == ("primus-lens: primus_lens_inject.devserver.cli is not in this installation "
                           "(the image ships the injector and the webhook only; the built-in "
                           "receiver comes with the wheel)\n")
