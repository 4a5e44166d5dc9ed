"""The injector in a process's life: start-up, kill switch, chaining, signals, fork and spawn."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import BOOTSTRAP_DIR, TRAIN_PYTHON, run_training, training_env

pytestmark = pytest.mark.wandb_compat


def test_plain_process_imports_nothing_of_ours(tmp_path):
    result = run_training(tmp_path, """
        import sys, threading
        ours = sorted(m for m in sys.modules if m.startswith(("primus_lens", "_primus_lens")))
        print(ours, threading.active_count())
        print(any(getattr(f, "_primus_lens", False) for f in sys.meta_path))
    """)
    assert result.proc.stdout.splitlines() == ["['_primus_lens_bootstrap'] 1", "True"]
    assert result.proc.stderr == ""


def test_kill_switch_leaves_no_trace(tmp_path):
    result = run_training(tmp_path, """
        import sys, threading, wandb
        run = wandb.init(project="off")
        run.log({"x": 1})
        run.finish()
        print(sorted(m for m in sys.modules if m.startswith(("primus_lens", "_primus_lens"))))
        print(getattr(wandb, "_primus_lens_patched", None))
        print(any(getattr(f, "_primus_lens", False) for f in sys.meta_path))
        print(sorted(t.name for t in threading.enumerate() if "primus" in t.name))
    """, env={"PRIMUS_LENS_WANDB_HOOK": "false", "PRIMUS_LENS_WANDB_ENHANCE_METRICS": "true"})
    assert result.proc.returncode == 0, result.stderr
    assert result.proc.stdout.splitlines() == ["[]", "None", "False", "[]"]
    assert not result.output.exists()


def test_patched_once_and_flag_set(tmp_path):
    result = run_training(tmp_path, """
        import wandb
        from wandb.sdk import wandb_run
        depth, fn = 0, wandb_run.Run.log
        while fn is not None:
            depth += bool(getattr(fn, "_primus_lens_wrapped", False))
            fn = getattr(fn, "__wrapped__", None)
        print(wandb._primus_lens_patched, depth, wandb.init is wandb.sdk.wandb_init.init)
    """)
    assert result.proc.stdout.split() == ["True", "1", "True"]


def _sitecustomize(directory: Path, body: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "sitecustomize.py").write_text(body)
    return directory


def test_chains_the_next_sitecustomize_exactly_once(tmp_path):
    image = _sitecustomize(tmp_path / "image", "import os\n"
                           "os.environ['IMAGE_SC'] = os.environ.get('IMAGE_SC', '') + 'x'\n"
                           "import wandb  # an image sitecustomize that imports wandb itself\n")
    result = run_training(tmp_path, """
        import os, sys, wandb
        print(os.environ.get("IMAGE_SC"), sys.modules["sitecustomize"].__file__)
        run = wandb.init(project="chain")
        run.log({"x": 1})
        run.finish()
    """, env={"PYTHONPATH": f"{BOOTSTRAP_DIR}{os.pathsep}{image}"})
    assert result.proc.returncode == 0, result.stderr
    marker, module_file = result.proc.stdout.split()
    assert marker == "x" and module_file == str(image / "sitecustomize.py")
    assert [line["data"]["x"] for line in result.record()] == [1]


def test_broken_next_sitecustomize_is_reported_like_site_does(tmp_path):
    image = _sitecustomize(tmp_path / "image", "raise RuntimeError('image bug')\n")
    result = run_training(tmp_path, """
        import wandb
        run = wandb.init(project="chain")
        run.log({"x": 1})
        run.finish()
    """, env={"PYTHONPATH": f"{BOOTSTRAP_DIR}{os.pathsep}{image}"})
    assert result.proc.returncode == 0
    assert "Error in sitecustomize; set PYTHONVERBOSE for traceback:\nRuntimeError: image bug" \
        in result.stderr
    assert len(result.record()) == 1


def test_two_copies_of_the_bootstrap_activate_once(tmp_path):
    copy = tmp_path / "mounted"
    copy.mkdir()
    shutil.copy(BOOTSTRAP_DIR / "sitecustomize.py", copy / "sitecustomize.py")
    image = _sitecustomize(tmp_path / "image", "import os\nos.environ['IMAGE_SC'] = "
                           "os.environ.get('IMAGE_SC', '') + 'x'\n")
    result = run_training(tmp_path, """
        import os, sys, wandb
        from wandb.sdk import wandb_run
        hooks = [f for f in sys.meta_path if "wandb" in getattr(f, "callbacks", ())]
        run = wandb.init(project="twice")
        run.log({"x": 1})
        run.finish()
        print(os.environ["IMAGE_SC"], len(hooks), wandb_run.Run.log.__wrapped__.__name__)
        state = sys.modules["_primus_lens_bootstrap"]
        print(state.__file__, state.status, sep="|")
    """, env={"PYTHONPATH": os.pathsep.join([str(copy), str(BOOTSTRAP_DIR), str(image)])})
    assert result.proc.returncode == 0, result.stderr
    first, second = result.proc.stdout.splitlines()
    assert first.split() == ["x", "0", "log"]
    assert second == f"{copy / 'sitecustomize.py'}|active: wandb patched"
    assert len(result.record()) == 1


def _interpreter(version: str):
    """An installed CPython of that version: pyenv's build, or one on PATH."""
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    for candidate in [*sorted(root.glob(f"versions/{version}.*/bin/python{version}")),
                      shutil.which(f"python{version}")]:
        if candidate and subprocess.run([str(candidate), "-c", "pass"], capture_output=True,
                                        env={"PATH": os.environ["PATH"]}).returncode == 0:
            return str(candidate)
    return None


@pytest.mark.parametrize("version", ["2.7", "3.6", "3.7", "3.8"])
def test_bootstrap_is_inert_on_old_pythons(tmp_path, version):
    python = _interpreter(version)
    if python is None:
        pytest.skip(f"python{version} is not installed here")
    image = _sitecustomize(tmp_path / "image", "import os\nos.environ['IMAGE_SC'] = '1'\n")
    env = training_env(tmp_path, {"PYTHONPATH": f"{BOOTSTRAP_DIR}{os.pathsep}{image}"})
    env.pop("PYENV_VERSION", None)
    proc = subprocess.run([python, "-c", "import os, sys; print('%s %s' % (os.environ.get('IMAGE_SC'), "
                           "'_primus_lens_bootstrap' in sys.modules))"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0 and proc.stderr == ""
    assert proc.stdout.split() == ["1", "False"]


def test_garbage_environment_gets_one_warning_each(tmp_path):
    result = run_training(tmp_path, """
        import wandb
        for _ in range(2):
            run = wandb.init(project="garbage", reinit=True)
            for i in range(3):
                run.log({"i": i})
            run.finish()
    """, env={"PRIMUS_LENS_WANDB_ENHANCE_METRICS": "maybe", "PRIMUS_LENS_SAMPLE_INTERVAL": "-3",
              "PRIMUS_LENS_WANDB_SAVE_LOCAL": "yes please", "RANK": "../../etc",
              "LOCAL_RANK": "-1", "NODE_RANK": "1e3", "SLURM_NODEID": "2"})
    assert result.proc.returncode == 0, result.stderr
    lines = result.injector_lines()
    for name in ("PRIMUS_LENS_WANDB_ENHANCE_METRICS", "PRIMUS_LENS_SAMPLE_INTERVAL",
                 "PRIMUS_LENS_WANDB_SAVE_LOCAL", "RANK", "LOCAL_RANK", "NODE_RANK"):
        assert sum(f"ignoring {name}=" in line for line in lines) == 1, (name, lines)
    assert len(lines) == 6
    # NODE_RANK is garbage, so the next source (SLURM_NODEID) gives the node
    assert [line["data"]["i"] for line in result.record(node=2, rank=0)] == [0, 1, 2] * 2
    assert not any("_primus_sys" in key for line in result.record(node=2) for key in line["data"])


def test_unwritable_output_path_warns_once_and_falls_back(tmp_path):
    """The fallback record is the job's own: two jobs of one user never share it (by the pod's
    name where one is set, else by the writer's pid)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    fallback = tmp_path / "tmpdir"
    fallback.mkdir()
    moved = []
    for pod in ("", "", "trainer-0"):
        result = run_training(tmp_path, """
            import os, wandb
            run = wandb.init(project="ro")
            for i in range(3):
                run.log({"i": i})
            run.finish()
            print("trained", os.getpid())
        """, env={"PRIMUS_LENS_WANDB_OUTPUT_PATH": str(blocker / "metrics"),
                  "TMPDIR": str(fallback), "POD_NAME": pod or None})
        assert result.proc.returncode == 0 and "trained" in result.proc.stdout
        (warning,) = result.injector_lines()
        assert str(blocker / "metrics") in warning and "trying" in warning
        job = pod or f"pid-{result.proc.stdout.split()[-1]}"
        moved.append(fallback / f"primus-lens-{os.getuid()}" / f"job-{job}" / "node_0" / "rank_0"
                     / "wandb_metrics.jsonl")
    assert len(set(moved)) == 3
    for path in moved:
        assert [line.count('"i":') for line in path.read_text().splitlines()] == [1, 1, 1]


def _start(tmp: Path, script: str, env=None, args=()) -> subprocess.Popen:
    (tmp / "train.py").write_text(script)
    return subprocess.Popen([TRAIN_PYTHON, str(tmp / "train.py"), *args], cwd=tmp, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=training_env(tmp, env))


def _wait_for(proc: subprocess.Popen, text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if text in line:
            return
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"{text!r} never printed; stderr: {proc.stderr.read()[-2000:]}")


def _lines(tmp: Path) -> list:
    path = tmp / "out" / "node_0" / "rank_0" / "wandb_metrics.jsonl"
    return path.read_text().splitlines() if path.exists() else []


LONG_RUN = (Path(__file__).parents[1] / "scripts" / "long_run.py").read_text()


def test_sigterm_flushes_everything_and_dies_of_sigterm(tmp_path):
    proc = _start(tmp_path, LONG_RUN)
    _wait_for(proc, "logged")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == -signal.SIGTERM
    lines = _lines(tmp_path)
    assert len(lines) == 201 and '"pending":1' in lines[-1]


def test_sigterm_with_the_programs_own_handler(tmp_path):
    proc = _start(tmp_path, LONG_RUN, args=["own-handler"])
    _wait_for(proc, "logged")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 3
    lines = _lines(tmp_path)
    assert len(lines) == 201 and '"pending":1' in lines[-1] and '"stopping":1' in lines[-1]


def test_rows_older_than_a_second_survive_sigkill(tmp_path):
    proc = _start(tmp_path, LONG_RUN)
    _wait_for(proc, "logged")
    time.sleep(1.0)
    proc.kill()
    proc.wait(timeout=30)
    lines = _lines(tmp_path)
    assert [int(line.split('"i":')[1].split(",")[0].rstrip("}")) for line in lines] \
        == list(range(200))


def test_fork_with_live_threads_and_a_child_run(tmp_path):
    result = run_training(tmp_path, """
        import os, wandb
        run = wandb.init(project="parent")
        for i in range(50):
            run.log({"who": "parent", "i": i})
        run.log({"who": "parent", "pending": 1}, commit=False)
        pid = os.fork()
        if pid == 0:
            child = wandb.init(project="child", reinit=True)
            for i in range(20):
                child.log({"who": "child", "i": i})
            child.finish()
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        for i in range(50, 60):
            run.log({"who": "parent", "i": i})
        run.finish()
        print("child status", status)
    """, env={"PRIMUS_LENS_WANDB_ENHANCE_METRICS": "true"}, timeout=180)
    assert result.proc.returncode == 0, result.stderr
    assert "child status 0" in result.proc.stdout
    lines = result.record()
    parent = [line for line in lines if line["data"]["who"] == "parent"]
    child = [line for line in lines if line["data"]["who"] == "child"]
    # the pending row of the parent is committed once, by the parent, merged with i=50
    assert [line["data"]["i"] for line in parent] == list(range(60))
    assert [line["data"]["i"] for line in parent if "pending" in line["data"]] == [50]
    assert [line["data"]["i"] for line in child] == list(range(20))
    assert [line["step"] for line in child] == list(range(20))
    assert len({line["run_id"] for line in child} | {line["run_id"] for line in parent}) == 2
    assert all("_primus_sys_cpu_percent" in line["data"] for line in child)


def test_spawn_workers_stay_idle_unless_they_init(tmp_path):
    result = run_training(tmp_path, """
        import multiprocessing as mp, sys, threading, wandb

        def idle(_):
            return sorted(t.name for t in threading.enumerate() if "primus" in t.name)

        def trains(n):
            run = wandb.init(project="worker", reinit=True)
            for i in range(5):
                run.log({"worker": n, "i": i})
            run.finish()

        if __name__ == "__main__":
            run = wandb.init(project="main")
            run.log({"main": 1})
            ctx = mp.get_context("spawn")
            with ctx.Pool(2) as pool:
                print("idle threads", pool.map(idle, range(2)))
            workers = [ctx.Process(target=trains, args=(n,)) for n in range(2)]
            [w.start() for w in workers]
            [w.join(120) for w in workers]
            print("exit codes", [w.exitcode for w in workers])
            run.log({"main": 2})
            run.finish()
    """, env={"PRIMUS_LENS_WANDB_ENHANCE_METRICS": "true"}, timeout=240)
    assert result.proc.returncode == 0, result.stderr
    assert "idle threads [[], []]" in result.proc.stdout
    assert "exit codes [0, 0]" in result.proc.stdout
    lines = result.record()
    main = [line["data"]["main"] for line in lines if "main" in line["data"]]
    workers = sorted((line["data"]["worker"], line["data"]["i"]) for line in lines
                     if "worker" in line["data"])
    assert main == [1, 2]
    assert workers == [(w, i) for w in range(2) for i in range(5)]
    assert sys.version_info >= (3, 9)
