"""Fewer points, the same shape: Largest-Triangle-Three-Buckets (Steinarsson, 2013).

A chart is a few thousand pixels wide, and a job logs hundreds of thousands of steps per key.
Averaging buckets would flatten the spikes people look for (a loss spike, a NaN-adjacent jump);
LTTB keeps, per bucket, the original point that spans the largest triangle with its neighbours,
so peaks and troughs survive and every point shown is a value the record holds (a tooltip's
number is the record's number).
"""

from __future__ import annotations

from typing import List, Sequence, Tuple


def lttb(xs: Sequence[float], ys: Sequence[float], target: int) -> Tuple[List[float], List[float]]:
    """At most ``target`` points of (xs, ys), the first and last kept; xs ascending."""
    count = len(xs)
    if target >= count or target < 3:
        return list(xs), list(ys)
    out_x, out_y = [xs[0]], [ys[0]]
    every = (count - 2) / (target - 2)
    chosen = 0
    for bucket in range(target - 2):
        start = int(bucket * every) + 1
        end = int((bucket + 1) * every) + 1
        # the average of the next bucket: the third corner of every triangle of this one
        next_end = min(int((bucket + 2) * every) + 1, count)
        span = max(next_end - end, 1)
        avg_x = sum(xs[end:next_end]) / span if next_end > end else xs[count - 1]
        avg_y = sum(ys[end:next_end]) / span if next_end > end else ys[count - 1]
        ax, ay = xs[chosen], ys[chosen]
        best, best_area = start, -1.0
        for index in range(start, min(end, count - 1)):
            area = abs((ax - avg_x) * (ys[index] - ay) - (ax - xs[index]) * (avg_y - ay))
            if area > best_area:
                best, best_area = index, area
        out_x.append(xs[best])
        out_y.append(ys[best])
        chosen = best
    out_x.append(xs[count - 1])
    out_y.append(ys[count - 1])
    return out_x, out_y
