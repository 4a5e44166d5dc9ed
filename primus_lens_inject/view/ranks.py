"""Per rank over time, from the pulse: the page's heatmaps (rank × time) and their outliers.

Every process writes a pulse line every interval (``pulseline``); a rank's row of a heatmap is
its lines' figure, averaged per time column (a few hundred columns, however long the job: the
page stays small and a column is still finer than the eye).  The step rate of a line is the
optimizer steps since the same process's previous line over the seconds between them (a new pid
is a restarted process: it starts over).  A process that samples several GPUs shows their mean;
the host's CPU and the process's RSS follow the GPU figures (a job without GPUs shows those).

A rank is an outlier of a figure when its median over the job is further from the median of all
ranks than three scaled median absolute deviations and more than a tenth of that median: the slow
rank of a synchronous job, the GPU running hot or idle.  With fewer than three ranks nothing is
an outlier: there is no majority to differ from.
"""

from __future__ import annotations

import re
import statistics
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .records import number

MAX_COLUMNS = 360
STEP_RATE = "step_rate"
# (name on the page, the figure: a GPU figure's key suffix or a host figure's key, unit)
FIGURES = (("gpu_util", "util_percent", "%"), ("gpu_power", "power_watts", "W"),
           ("gpu_memory", "memory_used_bytes", "bytes"),
           ("gpu_temperature", "temperature_celsius", "°C"),
           ("host_cpu", "_primus_sys_cpu_percent", "%"),
           ("process_rss", "_primus_sys_process_rss_bytes", "bytes"))
_GPU_KEY = re.compile(r"^_primus_gpu_(?:\d+_)?(.+)$")
_SCALED_MAD = 1.4826  # the MAD of a normal distribution, in standard deviations
_OUTLIER_MADS = 3.0
_OUTLIER_FRACTION = 0.1


def line_figures(figures: Any) -> Dict[str, float]:
    """A pulse line's ``figures`` by ``FIGURES``'s second column: a GPU figure's suffix with the
    mean over the process's GPUs, a host figure's key with its value."""
    sums: Dict[str, List[float]] = {}
    if type(figures) is not dict:
        return {}
    for key, value in figures.items():
        match = _GPU_KEY.match(key) if type(key) is str else None
        if number(value):
            sums.setdefault(match.group(1) if match else key, []).append(float(value))
    return {name: sum(values) / len(values) for name, values in sums.items()}


def samples(lines: Sequence[Dict[str, Any]]) -> Dict[int, Dict[str, List[Tuple[float, float]]]]:
    """rank -> figure name -> (time, value) of every pulse line, step rate included."""
    out: Dict[int, Dict[str, List[Tuple[float, float]]]] = {}
    previous: Dict[Tuple[int, Any], Tuple[float, Any]] = {}
    for line in sorted((x for x in lines if x.get("kind") == "pulse"), key=lambda x: x["time"]):
        rank, when = int(line["rank"]), float(line["time"])
        mine = out.setdefault(rank, {})
        steps = line.get("steps")
        before = previous.get((rank, line["pid"]))
        if type(steps) is int and before is not None and type(before[1]) is int \
                and when > before[0] and steps >= before[1]:
            mine.setdefault(STEP_RATE, []).append((when, (steps - before[1]) / (when - before[0])))
        previous[(rank, line["pid"])] = (when, steps)
        found = line_figures(line.get("figures"))
        for name, figure, _unit in FIGURES:
            if figure in found:
                mine.setdefault(name, []).append((when, found[figure]))
    return out


def _columns(points: List[Tuple[float, float]], t0: float, width: float, count: int) -> List[Any]:
    sums = [0.0] * count
    counts = [0] * count
    for when, value in points:
        column = min(int((when - t0) / width), count - 1)
        sums[column] += value
        counts[column] += 1
    return [_round(sums[i] / counts[i]) if counts[i] else None for i in range(count)]


def _round(value: float) -> float:
    """Four significant digits: a heatmap cell's colour needs fewer, the file stays small."""
    return float(f"{value:.4g}")


def outliers(per_rank: Dict[int, float]) -> List[Dict[str, Any]]:
    """The ranks whose value is far from the job's median (module docstring), and which way."""
    if len(per_rank) < 3:
        return []
    middle = statistics.median(per_rank.values())
    spread = _SCALED_MAD * statistics.median(abs(v - middle) for v in per_rank.values())
    limit = max(_OUTLIER_MADS * spread, _OUTLIER_FRACTION * abs(middle))
    return [{"rank": rank, "value": _round(value), "job_median": _round(middle),
             "direction": "high" if value > middle else "low"}
            for rank, value in sorted(per_rank.items()) if abs(value - middle) > limit > 0]


def heatmaps(lines: Sequence[Dict[str, Any]], labels: Dict[int, str]) -> Optional[Dict[str, Any]]:
    """The page's ``ranks`` section, or None without pulse lines."""
    per_rank = samples(lines)
    times = [when for figures in per_rank.values() for points in figures.values()
             for when, _ in points]
    if not times:
        return None
    t0, t1 = min(times), max(times)
    longest = max(len(points) for figures in per_rank.values() for points in figures.values())
    count = max(1, min(MAX_COLUMNS, longest))  # no more columns than a rank has lines
    width = max((t1 - t0) / count, 1e-9)
    ranks = sorted(per_rank)
    maps = []
    for name, unit in ((STEP_RATE, "steps/s"), *((n, u) for n, _s, u in FIGURES)):
        if not any(name in per_rank[rank] for rank in ranks):
            continue
        rows = [_columns(per_rank[rank].get(name, []), t0, width, count) for rank in ranks]
        medians = {rank: statistics.median(v for _t, v in per_rank[rank][name])
                   for rank in ranks if per_rank[rank].get(name)}
        maps.append({"name": name, "unit": unit, "rows": rows, "outliers": outliers(medians)})
    return {"ranks": ranks, "labels": [labels.get(rank, f"rank {rank}") for rank in ranks],
            "t0": t0, "t1": t1, "columns": count, "column_seconds": width, "heatmaps": maps,
            "step_rate": _rate_lines(maps, count, t0, width)}


def _rate_lines(maps: List[Dict[str, Any]], count: int, t0: float, width: float) -> Optional[Dict[str, Any]]:
    """The job's median and slowest step rate per column: the line chart above the heatmaps."""
    rate = next((m for m in maps if m["name"] == STEP_RATE), None)
    if rate is None:
        return None
    x, median, slowest = [], [], []
    for column in range(count):
        values = [row[column] for row in rate["rows"] if row[column] is not None]
        if values:
            x.append(round(t0 + (column + 0.5) * width, 3))
            median.append(_round(statistics.median(values)))
            slowest.append(min(values))
    return {"x": x, "median": median, "slowest": slowest}
