"""Cost of the enrichment sampler: each figure source per sample, and ``run.log`` with enrichment.

Part 1, sources: every source that works here is sampled N times after a warm-up; printed are the
median wall time per sample, the median CPU time of the sampling thread, and the share of one core
the sampler takes at the default interval (CPU time / interval; goal ≤ 0.5 %).  Sources: the psutil
and /proc host sources, the amdgpu sysfs backend over a fake tree (one GPU; eight in node scope),
the NVML and amdsmi backends over the test fakes, and the real NVML / amdsmi / sysfs backends when
this machine has a GPU and driver.  A "round" line is one whole sampler round (host + GPU).

Part 2, ``run.log``: real wandb, children alternating, median per call over repeats: without the
injector, with it and enrichment off, with it and enrichment on (host figures plus a GPU: the real
one with ``--real``, else the fake NVML), in offline and disabled mode.

    python bench/sampler_cost.py            everything (fakes, fake sysfs tree, real GPU if any)
    python bench/sampler_cost.py --real     real hardware only: prints devices, mapping and
                                            figures (doctor's view), then costs; no fakes
    python bench/sampler_cost.py --real --watch 10
                                            also prints what the sampler sees every interval
                                            for 10 s (run a GPU job beside it)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from _common import ROOT, child_env, median, run_child, scratch

sys.path.insert(0, str(ROOT))
FAKES = str(ROOT / "tests" / "fakes")

from primus_lens_inject.config import Config  # noqa: E402
from primus_lens_inject.metrics.gpu import amdsmi_backend, describe  # noqa: E402
from primus_lens_inject.metrics.gpu.choose import attribute, choose  # noqa: E402
from primus_lens_inject.metrics.gpu.source import GpuSource  # noqa: E402
from primus_lens_inject.metrics.host import ProcHost, PsutilHost  # noqa: E402
from primus_lens_inject.metrics.sampler import Sampler  # noqa: E402
from primus_lens_inject.topology import Topology  # noqa: E402

INTERVAL = Config().sample_interval  # the documented default
GOAL = 0.5  # % of one core

Row = Tuple[str, int, float, float, float]  # label, figures, wall µs, p90 wall µs, cpu µs


def time_calls(call: Callable[[], Any], samples: int) -> Tuple[float, float, float, int]:
    """Median and p90 wall µs, median thread-CPU µs, and the number of figures per call."""
    figures = 0
    for _ in range(max(20, samples // 10)):
        figures = len(call() or {})
    wall: List[float] = []
    cpu: List[float] = []
    for _ in range(samples):
        t0, c0 = time.perf_counter_ns(), time.thread_time_ns()
        call()
        cpu.append((time.thread_time_ns() - c0) / 1000.0)
        wall.append((time.perf_counter_ns() - t0) / 1000.0)
    wall.sort()
    return statistics.median(wall), wall[int(len(wall) * 0.9)], statistics.median(cpu), figures


def print_rows(rows: List[Row]) -> None:
    print(f"\nper sample ({INTERVAL:g} s default interval; goal: sampler ≤ {GOAL} % of one core)")
    print(f"{'source':<48}{'figures':>8}{'wall µs':>10}{'p90 µs':>10}{'cpu µs':>10}"
          f"{'core %':>10}")
    for label, figures, wall, p90, cpu in rows:
        share = 100.0 * cpu / 1e6 / INTERVAL
        print(f"{label:<48}{figures:>8}{wall:>10.1f}{p90:>10.1f}{cpu:>10.1f}{share:>10.4f}"
              f"{'' if share <= GOAL else '   OVER GOAL'}")


def measure_source(label: str, source: Any, samples: int, rows: List[Row]) -> None:
    wall, p90, cpu, figures = time_calls(source.sample, samples)
    rows.append((label, figures, wall, p90, cpu))


def measure_gpu(label: str, config: Config, samples: int, rows: List[Row],
                host: Optional[Any] = None) -> bool:
    """One GPU source (and, with ``host``, a full sampler round); False when none opens."""
    choice = choose(config)
    if choice.backend is None:
        print(f"{label}: unavailable ({'; '.join(choice.rejected.values())})")
        return False
    gpu = GpuSource(config, Topology())
    gpu.attach(choice.backend, attribute(choice.backend, config, Topology()))
    try:
        measure_source(label, gpu, samples, rows)
        if host is not None:
            sampler = Sampler([host, gpu], INTERVAL)
            wall, p90, cpu, _ = time_calls(lambda: sampler.sample_once() or sampler.snapshot,
                                           samples)
            rows.append(("  one sampler round, with host", len(sampler.snapshot), wall, p90,
                         cpu))
    finally:
        gpu.close()
    return True


def fake_sysfs(tmp: str, gpus: int) -> str:
    import amdgpu_sysfs

    return amdgpu_sysfs.build(os.path.join(tmp, f"tree{gpus}"),
                              [amdgpu_sysfs.gpu(i) for i in range(gpus)])


def use_fakes(tmp: str) -> None:
    """Put the test fakes first on sys.path, with one GPU each, after any real-library use."""
    import importlib

    sys.path.insert(0, FAKES)
    for name in ("pynvml", "amdsmi"):
        sys.modules.pop(name, None)
    amdsmi_backend._import_failure = None  # the real one may have failed here before
    fake_gpu_state = importlib.import_module("fake_gpu_state")
    state = os.path.join(tmp, "fake-gpu-state.json")
    fake_gpu_state.write(state, {
        "nvml": {"devices": [{"name": "NVIDIA H100 80GB HBM3", "bus_id": "00000000:1B:00.0",
                              "uuid": "GPU-aaaa0000-1111-2222-3333-444455556666",
                              "memory_total": 80 << 30, "memory_used": 1 << 30, "util_gpu": 42,
                              "power_mw": 312_000, "temperature": 55}]},
        "amdsmi": {"library": True, "devices": [{
            "bdf": "0000:05:00.0", "market_name": "AMD Instinct MI300X",
            "asic_serial": "5E8C1B3F1A2C3B00", "vram_total": 192 << 30, "vram_used": 7 << 30,
            "gfx_activity": 42, "power": {"current_socket_power": 702},
            "temperature": {"EDGE": 45, "HOTSPOT": 60, "VRAM": 52}}]}})
    os.environ[fake_gpu_state.STATE_ENV] = state


def sources_part(real_only: bool, samples: int, tmp: str) -> List[Row]:
    rows: List[Row] = []
    host = PsutilHost()
    measure_source("host: psutil", host, samples, rows)
    measure_source("host: /proc (no psutil)", ProcHost(), samples, rows)
    for name in ("nvml", "amdsmi", "sysfs"):
        if measure_gpu(f"real {name}, process scope", Config(gpu_backend=name), samples, rows,
                       host):
            measure_gpu(f"real {name}, node scope", Config(gpu_backend=name, gpu_scope="node"),
                        samples, rows)
    if real_only:
        return rows
    sys.path.insert(0, FAKES)
    for gpus, scope in ((1, "process"), (8, "node")):
        sysfs = fake_sysfs(tmp, gpus)
        measure_gpu(f"sysfs over a fake tree, {gpus} GPU, {scope} scope",
                    Config(gpu_backend="sysfs", sysfs_root=sysfs, gpu_scope=scope), samples, rows,
                    host if gpus == 1 else None)
    use_fakes(tmp)
    for name in ("nvml", "amdsmi"):
        measure_gpu(f"{name} over the test fake, 1 GPU", Config(gpu_backend=name), samples, rows,
                    host)
    return rows


def log_part(real: bool, calls: int, repeats: int, tmp: str) -> None:
    try:
        import wandb  # noqa: F401
        from log_overhead import CHILD
    except ImportError as exc:
        print(f"\nrun.log: skipped ({exc})")
        return
    on = {"PRIMUS_LENS_WANDB_ENHANCE_METRICS": "true", "PRIMUS_LENS_GPU_BACKEND": "nvml"}
    if not real:  # the fake NVML, first on the path, with the state use_fakes wrote
        on.update(PYTHONPATH=os.pathsep.join([FAKES, str(ROOT / "sitecustomize")]),
                  PRIMUS_LENS_FAKE_GPU_STATE=os.environ["PRIMUS_LENS_FAKE_GPU_STATE"])
    configs = (("no injector", False, {}),
               ("enrichment off", True, {"PRIMUS_LENS_WANDB_ENHANCE_METRICS": "false"}),
               ("enrichment on", True, on))
    print(f"\nrun.log, µs per call (median of {repeats} children × {calls} calls; "
          f"GPU for 'on': {'real NVML' if real else 'fake NVML'})")
    for mode in ("offline", "disabled"):
        results: Dict[str, List[float]] = {label: [] for label, _, _ in configs}
        code = CHILD.format(mode=mode, warmup=max(200, calls // 10), calls=calls)
        for _ in range(repeats):
            for label, bootstrap, extra in configs:
                results[label].append(float(run_child(code, child_env(tmp, bootstrap, extra))))
        base, off, on_ = (median(results[label]) for label, _, _ in configs)
        print(f"  {mode:<9} no injector {base:8.2f}   enrichment off {off:8.2f}   "
              f"enrichment on {on_:8.2f}   on/off {on_ / off:6.3f}   on/none {on_ / base:6.3f}")


def watch(seconds: float, interval: float) -> None:
    """The session's own sampler (host + GPU, as at wandb.init), printed every interval."""
    from primus_lens_inject.metrics.gpu import open_gpu_sources
    from primus_lens_inject.metrics.host import open_host_source

    sampler = Sampler([open_host_source(), *open_gpu_sources(Config(), Topology())], interval)
    began = time.monotonic()
    sampler.start()
    print(f"\nsampler every {interval:g} s for {seconds:g} s (first snapshot after "
          f"{time.monotonic() - began:.3f} s)")
    while time.monotonic() - began < seconds:
        shown = {k.replace("_primus_", ""): round(v, 1) for k, v in sorted(sampler.snapshot.items())}
        print(f"  {time.monotonic() - began:6.2f} s  {json.dumps(shown)}")
        time.sleep(interval)
    sampler.close(math.inf)  # no process end: STOP_WAIT at most


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--real", action="store_true",
                        help="real hardware only: no fakes, print what the backends see")
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-log", action="store_true", help="skip the run.log part")
    parser.add_argument("--watch", type=float, default=0.0, metavar="SECONDS",
                        help="with --real: print the sampler's snapshots for this long")
    parser.add_argument("--interval", type=float, default=0.5, help="sampling interval for --watch")
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    if args.real:
        for scope in ("process", "node"):
            report = describe(Config(gpu_scope=scope), Topology())
            print(f"\ndescribe(auto, {scope} scope):\n{json.dumps(report, indent=1)}")
        if args.watch:
            watch(args.watch, args.interval)
    with scratch() as tmp:
        print_rows(sources_part(args.real, args.samples, tmp))
        if not args.no_log:
            log_part(args.real, args.calls, args.repeats, tmp)


if __name__ == "__main__":
    main()
