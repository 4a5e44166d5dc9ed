"""What the agent's ``/metrics`` says: the latest value of every figure of every rank of the pod.

A scrape is a snapshot: it sees the latest value of each key, not every step (the push sinks,
Lens and OTLP, keep every step).  So this module keeps, in memory and per series, one number: the
latest value of every numeric key each writer logged (``wandb_<key>``), the wandb step of each
writer and run (``wandb_step``), and every rank's pulse (``primus_lens_rank_*`` and the host and
GPU figures of each process).  docs/prometheus.md lists every name.

It reads the record root itself, incrementally and with offsets of its own in memory (no cursor
file: the senders' cursors say what was delivered, this says nothing to anyone): on each
``refresh`` (the agent's reader thread, once a second; never on a scrape, which only renders),
only the bytes appended since the last one, at most ``_READ_BYTES`` per file, so a long record
met at start-up is caught up over a few passes and memory holds one piece (``_PIECE_BYTES``) at
a time; a record line the agent's sinks parsed already is not parsed again
(``recordline.SharedLines``).  Pulse files are followed by inode, so a rotation
(``pulse.jsonl`` -> ``pulse.jsonl.1``) loses no line.

Series are capped in all and per metric name (``PRIMUS_LENS_METRICS_MAX_SERIES`` and
``_PER_METRIC``): a new series past a cap is refused and counted once in
``primus_lens_series_dropped_total{metric=...}``; what was admitted stays (a scrape never sees a
series vanish because another one appeared).  Rendering is ``prometheus_client``'s own: a
``Collector`` on a private registry, text or OpenMetrics by the scraper's ``Accept``.  Rendering
thousands of series takes tens of milliseconds, so the reader renders a body just before each
format's next scrape is due (``prerender``: the interval between its scrapes says when), and
the scrape is answered with it: a scrape sees the pod as read at most ``AHEAD_AGE`` (2.5)
seconds before it, the rows themselves being read once a second.  A body is rendered once per
scrape, never once per row; a scrape at an unforeseen moment renders its own.  A piece of a
record (``_PIECE_BYTES``) is parsed outside the lock and applied under it, its consecutive flat
rows of one writer and run merged first: a scrape waits at most for one piece's keys, never for
a backlog.
"""

from __future__ import annotations

import functools
import gzip
import math
import os
import re
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Optional, Set, Tuple

from .. import paths, pulseline, recordline
from ..config import Config
from ..report import Writers

if TYPE_CHECKING:  # imported where used: the package imports with the standard library alone
    from prometheus_client.core import Metric

_READ_BYTES = 4 << 20  # per file and pass: a long backlog is read over several passes
_PIECE_BYTES = 128 << 10  # ... in pieces of this, each applied before the next is read
_SKIP_BYTES = 1 << 20  # the piece read while passing over a line longer than _READ_BYTES
_MAX_DEPTH = 4  # nested dicts in a row are flattened to "outer.inner" this deep
_MAX_LABEL = 128  # characters of a label value (a run id, a key) kept
_MAX_NAME = 200  # characters of a metric name kept (the ``key`` label keeps the whole key)
_REFUSED_KEPT = 100_000  # refused series remembered, so each is counted once
_DROP_METRICS = 1000  # metric names counted apart in the overflow counter; the rest under ""
_NAMES_KEPT = 1 << 16  # key -> name translations cached (one regex per key, not per row)
_FORMATS_KEPT = 4  # formats followed (``_Scraper``), one per content type asked for
_GZIP_LEVEL = 1
_SCRAPER_KEPT = 600.0  # seconds a format is rendered ahead after its last scrape
READ_SECONDS = 1.0  # the agent's reader runs ``refresh`` and ``prerender`` this often
LEAD = 1.5 * READ_SECONDS  # a body is rendered ahead when its scrape is due this soon
AHEAD_AGE = LEAD + READ_SECONDS  # seconds a body rendered ahead may wait for its scrape

WANDB_PREFIX = "wandb_"
STEP = "wandb_step"
RESERVED = frozenset((STEP,))  # our own names: a key that would take one gets ``_value`` added
# Suffixes Prometheus and OpenMetrics keep for counters, histograms and summaries: a logged key
# is a gauge (its monotony is unknown), so a name ending in one gets ``_value`` added too.
RESERVED_SUFFIXES = ("_total", "_count", "_sum", "_bucket", "_created", "_info")
KEY_LABEL = "key"  # the logged key, on a series whose name is not exactly ``wandb_<key>``
DROPPED = "primus_lens_series_dropped"  # a counter: exposed as ``..._total``
_INVALID = re.compile(r"[^a-zA-Z0-9_]+")
_PLAIN_KEY = re.compile(r"[a-z0-9_]+\Z")  # a key whose name is ``wandb_<key>`` exactly
_GPU_KEY = re.compile(r"_primus_gpu_(?:(\d+)_)?([a-z0-9_]+)\Z")
_SYS_PREFIX = "_primus_sys_"
_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}

# A series: its metric name and its labels, as pairs in the order they are rendered.
Labels = Tuple[Tuple[str, str], ...]
Figure = Tuple[str, float, Labels]  # (name, scale, extra labels)

# Host figures (metrics/host.py): record key -> (name, scale).
_HOST: Dict[str, Tuple[str, float]] = {
    "_primus_sys_cpu_percent": ("primus_lens_host_cpu_utilization_ratio", 0.01),
    "_primus_sys_memory_percent": ("primus_lens_host_memory_utilization_ratio", 0.01),
    "_primus_sys_process_rss_bytes": ("primus_lens_process_rss_bytes", 1.0),
}
# GPU figures (metrics/gpu/device.py): figure -> (name, scale, extra labels).
_GPU: Dict[str, Figure] = {
    "util_percent": ("primus_lens_gpu_utilization_ratio", 0.01, ()),
    "memory_used_bytes": ("primus_lens_gpu_memory_used_bytes", 1.0, ()),
    "memory_total_bytes": ("primus_lens_gpu_memory_total_bytes", 1.0, ()),
    "power_watts": ("primus_lens_gpu_power_watts", 1.0, ()),
    "temperature_celsius": ("primus_lens_gpu_temperature_celsius", 1.0, (("sensor", "gpu"),)),
    "temperature_junction_celsius": ("primus_lens_gpu_temperature_celsius", 1.0,
                                     (("sensor", "junction"),)),
    "temperature_memory_celsius": ("primus_lens_gpu_temperature_celsius", 1.0,
                                   (("sensor", "memory"),)),
}
# Units a figure's name may end in, and the base unit it is exported in.
_UNIT_SUFFIXES = (("_percent", "_ratio", 0.01), ("_mhz", "_hertz", 1e6), ("_mib", "_bytes", 2**20))

# Pulse fields (pulseline.py) -> (name, type); counters are exposed with ``_total``.
_PULSE_FIELDS = (("steps", "primus_lens_rank_optimizer_steps", "counter"),
                 ("step_last", "primus_lens_rank_step_seconds", "gauge"),
                 ("step_mean", "primus_lens_rank_step_seconds_mean", "gauge"),
                 ("step_median", "primus_lens_rank_step_seconds_median", "gauge"),
                 ("time", "primus_lens_rank_last_pulse_timestamp_seconds", "gauge"))
UNREADABLE = "primus_lens_unreadable_lines"  # a counter, by file kind
_RECORD: Labels = (("file", "record"),)
_PULSE: Labels = (("file", "pulse"),)
STALLED = "primus_lens_rank_stalled"
STALLS = "primus_lens_rank_stalls"  # a counter

HELP: Dict[str, str] = {
    STEP: "The latest wandb step of the writer's run.",
    "primus_lens_rank_optimizer_steps": "Optimizer steps the rank's process completed.",
    "primus_lens_rank_step_seconds": "Wall time of the rank's last optimizer step.",
    "primus_lens_rank_step_seconds_mean": "Mean optimizer step time of the last pulse interval.",
    "primus_lens_rank_step_seconds_median": "Median of the rank's recent optimizer step times.",
    "primus_lens_rank_last_pulse_timestamp_seconds": "Unix time of the rank's latest pulse line.",
    STALLED: "1 while the rank makes no optimizer step past its stall threshold, else 0.",
    STALLS: "Stalls the rank had (a stall event in its pulse).",
    DROPPED: "Series refused by the caps (PRIMUS_LENS_METRICS_MAX_SERIES, _PER_METRIC).",
    UNREADABLE: "Record and pulse lines no reader can use (torn, corrupt, over 4 MiB).",
    "primus_lens_host_cpu_utilization_ratio": "Host CPU utilization (0..1).",
    "primus_lens_host_memory_utilization_ratio": "Host memory utilization (0..1).",
    "primus_lens_process_rss_bytes": "Resident memory of the rank's process.",
    "primus_lens_gpu_utilization_ratio": "GPU utilization (0..1).",
    "primus_lens_gpu_memory_used_bytes": "GPU memory in use.",
    "primus_lens_gpu_memory_total_bytes": "GPU memory in all.",
    "primus_lens_gpu_power_watts": "GPU power draw.",
    "primus_lens_gpu_temperature_celsius": "GPU temperature by sensor.",
}


def sanitize(text: str) -> str:
    """``text`` lower-cased, every run of characters outside ``[a-z0-9_]`` one ``_``."""
    return _INVALID.sub("_", text).lower()


@functools.lru_cache(maxsize=_NAMES_KEPT)
def key_metric(key: str) -> Tuple[str, Labels]:
    """The metric name of a logged key, and the ``key`` label it carries (none when the name is
    exactly ``wandb_<key>``).  Stateless, so the same key gets the same name in every agent and
    at every scrape: two keys that sanitize alike (``train/loss``, ``train.loss``) share a name
    and stay two series by their ``key`` label; a key that would take one of our own names
    (``step``) or end in a suffix of another type (``tokens_total``) gets ``_value`` added and
    its ``key`` label; a name is cut to ``_MAX_NAME`` characters."""
    name = (WANDB_PREFIX + sanitize(key))[:_MAX_NAME]
    if name in RESERVED or name.endswith(RESERVED_SUFFIXES):
        name += "_value"
    elif name == WANDB_PREFIX + key and _PLAIN_KEY.match(key):
        return name, ()
    return name, ((KEY_LABEL, key[:_MAX_LABEL]),)


def _with_unit(name: str) -> Tuple[str, float]:
    for suffix, base, scale in _UNIT_SUFFIXES:
        if name.endswith(suffix):
            return name[:-len(suffix)] + base, scale
    return name, 1.0


@functools.lru_cache(maxsize=_NAMES_KEPT)
def figure_metric(key: str) -> Optional[Figure]:
    """(name, scale, extra labels) of an injector figure (``_primus_sys_*``, ``_primus_gpu_*``),
    in base units; None for any other key (our other markers are never exported)."""
    if key in _HOST:
        name, scale = _HOST[key]
        return name, scale, ()
    if key.startswith(_SYS_PREFIX):
        name, scale = _with_unit("primus_lens_host_" + sanitize(key[len(_SYS_PREFIX):]))
        return name, scale, ()
    match = _GPU_KEY.match(key)
    if match is None:
        return None
    index, figure = match.groups()
    gpu: Labels = (("gpu", index),) if index is not None else ()
    known = _GPU.get(figure)
    if known is not None:
        return known[0], known[1], gpu + known[2]
    name, scale = _with_unit("primus_lens_gpu_" + figure)
    return name, scale, gpu


def numbers(data: Dict[str, Any], prefix: str = "", depth: int = 0) -> Iterator[Tuple[str, float]]:
    """The numeric values of a row: numbers, the record's spelling of non-finite ones
    (``"NaN"``...), nested dicts as ``outer.inner`` (wandb's naming); media, text, bools, lists
    and descriptors (a dict with ``_type``) are left out."""
    for key, value in data.items():
        kind = type(value)
        if kind is float or kind is int:
            try:
                yield prefix + key, float(value)
            except OverflowError:  # an int beyond a double
                continue
        elif kind is str and value in _NON_FINITE:
            yield prefix + key, _NON_FINITE[value]
        elif kind is dict and depth < _MAX_DEPTH and "_type" not in value:
            yield from numbers(value, f"{prefix}{key}.", depth + 1)


class _Family:
    """One metric name: its type and its series (labels -> latest value)."""

    __slots__ = ("kind", "series")

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.series: Dict[Labels, float] = {}


class Store:
    """Latest values by metric and labels, under the caps; ``changes`` counts every update (the
    rendered body is kept until it moves)."""

    def __init__(self, max_series: int, max_per_metric: int) -> None:
        self.max_series = max_series
        self.max_per_metric = max_per_metric
        self.families: Dict[str, _Family] = {}
        self.total = 0
        self.dropped: Dict[str, int] = {}
        self._refused: Set[int] = set()
        self.changes = 0

    def set(self, name: str, labels: Labels, value: float,
            kind: str = "gauge") -> Optional[Dict[Labels, float]]:
        """The latest value of one series (admitted if the caps allow); the series' family's
        dict when it was admitted (a reader may keep it and write there directly next time,
        then counting its change with ``changed``), None when refused."""
        family = self.families.get(name)
        if family is None:
            if self.total >= self.max_series:
                self._refuse(name, labels)
                return None
            family = self.families[name] = _Family(kind)
        series = family.series
        if labels not in series:
            if self.total >= self.max_series or len(series) >= self.max_per_metric:
                self._refuse(name, labels)
                return None
            self.total += 1
        series[labels] = value
        self.changes += 1
        return series

    def changed(self) -> None:
        """Values were written directly into admitted series (see ``set``)."""
        self.changes += 1

    def add(self, name: str, labels: Labels, amount: float) -> None:
        """A counter series moved by ``amount``."""
        family = self.families.get(name)
        now = family.series.get(labels, 0.0) if family is not None else 0.0
        self.set(name, labels, now + amount, "counter")

    def get(self, name: str, labels: Labels) -> Optional[float]:
        family = self.families.get(name)
        return family.series.get(labels) if family is not None else None

    def _refuse(self, name: str, labels: Labels) -> None:
        """Count a refused series once (exactly while fewer than ``_REFUSED_KEPT`` were)."""
        digest = hash((name, labels))
        if digest in self._refused:
            return
        if len(self._refused) < _REFUSED_KEPT:
            self._refused.add(digest)
        metric = name if name in self.dropped or len(self.dropped) < _DROP_METRICS else ""
        self.dropped[metric] = self.dropped.get(metric, 0) + 1
        self.changes += 1

    def metrics(self) -> Iterator[Metric]:
        """The families as ``prometheus_client`` metrics, and the overflow counter."""
        from prometheus_client.core import Metric

        for name, family in self.families.items():
            metric = Metric(name, HELP.get(name, _help_of(name)), family.kind)
            sample = name + "_total" if family.kind == "counter" else name
            for labels, value in family.series.items():
                metric.add_sample(sample, dict(labels), value)
            yield metric
        dropped = Metric(DROPPED, HELP[DROPPED], "counter")
        for name, count in sorted(self.dropped.items()):
            dropped.add_sample(DROPPED + "_total", {"metric": name}, float(count))
        yield dropped


def _help_of(name: str) -> str:
    if name.startswith(WANDB_PREFIX):
        return "The latest value the writer logged under this key (the key label when renamed)."
    return "An injector figure of the rank's process (docs/prometheus.md)."


class _Tail:
    """New complete lines of one file from an offset kept in memory."""

    __slots__ = ("offset", "skipping")

    def __init__(self) -> None:
        self.offset = 0
        self.skipping = False  # inside a line longer than _READ_BYTES

    def read(self, path: str) -> List[bytes]:
        """The complete lines of the next piece (``_PIECE_BYTES``; a longer line is read whole
        up to ``_READ_BYTES``, passed over beyond), so memory holds one piece whatever the
        backlog."""
        try:
            with open(path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read(_SKIP_BYTES if self.skipping else _PIECE_BYTES)
                if not self.skipping and len(chunk) == _PIECE_BYTES and b"\n" not in chunk:
                    chunk += f.read(_READ_BYTES - _PIECE_BYTES)  # one long line
        except OSError:
            return []
        end = chunk.rfind(b"\n")
        if end < 0:
            if len(chunk) == (_SKIP_BYTES if self.skipping else _READ_BYTES):
                self.offset += len(chunk)  # a line too long to keep: passed over
                self.skipping = True
            return []
        lines = chunk[:end].split(b"\n")
        if self.skipping:
            lines[0] = b""  # the end of the line passed over: counted as unreadable
            self.skipping = False
        self.offset += end + 1
        return lines


class _RankDir:
    """What the exposition follows in one ``node_<n>/rank_<r>`` directory."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.record = paths.record_in(path)
        node, rank = os.path.basename(os.path.dirname(path)), os.path.basename(path)
        self.node = node[len("node_"):]
        self.local_rank = rank[len("rank_"):]
        self.record_tail = _Tail()
        self.lines = recordline.shared_lines(self.record)  # each line parsed once with the sinks
        self.lines.readers += 1
        self.record_inode = 0
        self.writers = Writers(self.record)
        self.pulse_tails: Dict[Tuple[int, int], _Tail] = {}  # by (device, inode)
        self.pulsed = False  # a pulse file was seen: its figures win over the record's
        self.rank = ""  # the global rank, once a pulse or a writer said it
        self.steps: Dict[Labels, float] = {}  # the latest step of each writer and run
        # the series of each writer and run's keys once admitted (bounded by the caps)
        self.admitted: Dict[Labels, Dict[str, Tuple[Dict[Labels, float], Labels]]] = {}


class _Scraper:
    """What is known of the scrapes of one format: when they come, and the body kept for them."""

    __slots__ = ("accept", "ahead", "body", "changes", "gzipped", "interval", "last", "rendered",
                 "zipped")

    def __init__(self, accept: str) -> None:
        self.accept = accept
        self.body: Optional[bytes] = None
        self.changes = -1  # ``Store.changes`` when ``body`` was rendered
        self.rendered = 0.0  # ``time.monotonic()`` then
        self.ahead = False  # ``body`` was rendered ahead, for the next scrape
        self.last = 0.0  # the last scrape
        self.interval = 0.0  # between the last two scrapes (0: one scrape so far)
        self.gzipped = False  # the last scrape accepted gzip
        self.zipped: Optional[bytes] = None  # ``body`` compressed, once asked for

    def scraped(self, now: float, gzipped: bool) -> None:
        if self.last:
            self.interval = now - self.last
        self.last, self.gzipped = now, gzipped

    def keep(self, body: bytes, changes: int, now: float, ahead: bool) -> None:
        self.body, self.changes, self.rendered, self.ahead = body, changes, now, ahead
        self.zipped = None

    def compressed(self) -> bytes:
        """``body`` gzip-compressed (level 1: most of the gain for the least CPU), made once."""
        if self.zipped is None:
            self.zipped = gzip.compress(self.body or b"", _GZIP_LEVEL)
        return self.zipped


class Exposition:
    """The pod's figures for ``/metrics``: ``refresh`` reads, ``render`` answers a scrape."""

    def __init__(self, config: Config, root: str) -> None:
        self.root = root
        self.store = Store(config.metrics_max_series, config.metrics_max_series_per_metric)
        self._dirs: Dict[str, _RankDir] = {}
        self._lock = threading.Lock()
        self._scrapers: Dict[str, _Scraper] = {}  # by the content type they are answered in
        self._settled = 0  # ``Store.changes`` at the end of the last whole ``refresh``
        from prometheus_client.registry import CollectorRegistry

        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)  # ``collect``: a custom collector

    # -- reading ---------------------------------------------------------------------------

    def refresh(self) -> None:
        """Read what was appended under the root since the last call (new rank directories
        included); a file that cannot be read now is tried again next time."""
        for path in paths.rank_dirs(self.root):
            found = self._dirs.get(path)
            if found is None:
                found = self._dirs[path] = _RankDir(path)
            self._read_pulse(found)
            self._read_record(found)
        with self._lock:
            self._settled = self.store.changes

    def _read_record(self, rank_dir: _RankDir) -> None:
        try:
            stat = os.stat(rank_dir.record)
        except OSError:
            return
        tail = rank_dir.record_tail
        if stat.st_ino != rank_dir.record_inode or stat.st_size < tail.offset:  # a new file
            rank_dir.record_inode, tail.offset, tail.skipping = stat.st_ino, 0, False
        self._follow(tail, rank_dir.record, stat.st_size,
                     lambda raws: self._record_lines(rank_dir, raws))

    def _follow(self, tail: _Tail, path: str, size: int,
                apply: Callable[[List[bytes]], None]) -> None:
        """``apply`` the lines appended to ``path`` (``size`` bytes now), a piece at a time, up
        to ``_READ_BYTES`` in this pass, one piece in memory at a time."""
        start = tail.offset
        while tail.offset < size and tail.offset - start < _READ_BYTES:
            before = tail.offset
            lines = tail.read(path)
            if lines:
                apply(lines)
            if tail.offset == before:
                return  # a line not written whole yet

    def _read_pulse(self, rank_dir: _RankDir) -> None:
        files = []
        for path in pulseline.pulse_files(rank_dir.path):  # the rotated one first
            try:
                stat = os.stat(path)
            except OSError:
                continue
            files.append((path, (stat.st_dev, stat.st_ino), stat.st_size))
        if files:
            rank_dir.pulsed = True
        tails = {inode: rank_dir.pulse_tails.get(inode) or _Tail() for _, inode, _ in files}
        rank_dir.pulse_tails = tails  # a file rotated away twice is forgotten
        for path, inode, size in files:
            tail = tails[inode]
            self._follow(tail, path, size, lambda raws: self._pulse_lines(rank_dir, raws))

    def _record_lines(self, rank_dir: _RankDir, raws: List[bytes]) -> None:
        """A piece of the record: parsed outside the lock (once for the sinks too), applied
        under it.  Only the latest value of each key counts here, so consecutive flat rows of
        one writer and run (the common case) are merged first and their keys looked at once, not
        once per row; a row with nested dicts, and an amendment, are applied alone, in order."""
        decoded = [(raw, rank_dir.lines.decode(raw, recordline.decode)) for raw in raws]
        with self._lock:
            merged: Optional[Dict[str, Any]] = None  # the flat rows of ``labels`` so far
            labels: Labels = ()
            step: Optional[int] = None  # their highest integer step
            writer_run: Tuple[Any, Any] = (None, None)  # (who, run id) ``labels`` stand for
            for raw, line in decoded:
                if isinstance(line, recordline.Unreadable):
                    self.store.add(UNREADABLE, _RECORD, 1.0)
                    continue
                if (line.who, line.run_id) != writer_run:
                    if merged is not None:
                        self._apply(rank_dir, labels, merged, step, False)
                        merged = None
                    writer_run, labels = (line.who, line.run_id), self._labels(rank_dir, line)
                line_step = line.step if type(line.step) is int else None
                if line.amends or raw.count(b"{") != 2:  # not one flat object in another
                    if merged is not None:
                        self._apply(rank_dir, labels, merged, step, False)
                        merged = None
                    self._apply(rank_dir, labels, line.data, line_step, line.amends)
                elif merged is None:
                    merged, step = dict(line.data), line_step  # a copy: the line is shared
                else:
                    merged.update(line.data)
                    if line_step is not None and (step is None or line_step > step):
                        step = line_step
            if merged is not None:
                self._apply(rank_dir, labels, merged, step, False)

    def _labels(self, rank_dir: _RankDir, line: recordline.Line) -> Labels:
        """The rank, local rank, node rank and run labels of a record line's writer."""
        writer = rank_dir.writers.get(line.who) if line.who else None
        rank = str(writer.rank) if writer is not None else rank_dir.rank
        if writer is not None and not rank_dir.rank:
            rank_dir.rank = rank
        run = str(line.run_id)[:_MAX_LABEL] if line.run_id is not None else ""
        return (("rank", rank), ("local_rank", rank_dir.local_rank),
                ("node_rank", rank_dir.node), ("run", run))

    def _apply(self, rank_dir: _RankDir, labels: Labels, data: Dict[str, Any],
               step: Optional[int], amends: bool) -> None:
        """The latest values of one writer and run: ``data``, of a row (or merged rows) whose
        highest step is ``step``, or of an amendment line (``amends``)."""
        latest = rank_dir.steps.get(labels)
        if amends and (step is None or latest is None or step < latest):
            return  # wandb's later view of an older step: not the latest value
        store = self.store
        admitted = rank_dir.admitted.get(labels)  # key -> (its series' dict, its labels)
        if admitted is None:
            admitted = rank_dir.admitted[labels] = {}
        for key, value in numbers(data):
            known = admitted.get(key)
            if known is not None:  # the common case: a series seen before, no name to make
                known[0][known[1]] = value
                continue
            if key.startswith(recordline.OURS):
                figure = None if rank_dir.pulsed else figure_metric(key)
                if figure is not None:
                    name, scale, extra = figure
                    store.set(name, labels[:3] + extra, value * scale)
                continue
            name, key_label = key_metric(key)
            full = labels + key_label
            series = store.set(name, full, value)
            if series is not None:
                admitted[key] = (series, full)
        store.changed()
        if step is not None and not amends and (latest is None or step >= latest):
            rank_dir.steps[labels] = step
            store.set(STEP, labels, float(step))

    def _pulse_lines(self, rank_dir: _RankDir, raws: List[bytes]) -> None:
        for raw in raws:
            with self._lock:  # per line: a scrape never waits for a whole backlog
                self._pulse_line(rank_dir, raw)

    def _pulse_line(self, rank_dir: _RankDir, raw: bytes) -> None:
        line = pulseline.decode(raw)
        if line is None:
            self.store.add(UNREADABLE, _PULSE, 1.0)
            return
        rank_dir.rank = str(int(line["rank"]))
        labels = (("rank", rank_dir.rank), ("local_rank", str(int(line["local_rank"]))),
                  ("node_rank", str(int(line["node"]))))
        store = self.store
        kind = line["kind"]
        if store.get(STALLS, labels) is None:
            store.add(STALLS, labels, 0.0)
            store.set(STALLED, labels, 0.0)
        if kind == pulseline.STALL:
            store.add(STALLS, labels, 1.0)
            store.set(STALLED, labels, 1.0)
        elif kind == pulseline.RECOVERY:
            store.set(STALLED, labels, 0.0)
        elif type(line.get("stalled")) is bool:  # a pulse line says whether its rank is stalled
            store.set(STALLED, labels, float(line["stalled"]))
        for field, name, metric_kind in _PULSE_FIELDS:
            value = line.get(field)
            if isinstance(value, (int, float)) and not isinstance(value, bool) \
                    and (kind == pulseline.PULSE or field == "steps"):
                store.set(name, labels, float(value), metric_kind)
        figures = line.get("figures") if kind == pulseline.PULSE else None
        if type(figures) is dict:
            for key, value in numbers(figures):
                figure = figure_metric(key)
                if figure is not None:
                    store.set(figure[0], labels + figure[2], value * figure[1])

    # -- answering a scrape ------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        """``prometheus_client``'s collector protocol (called under ``render``'s lock)."""
        return self.store.metrics()

    def render(self, accept: str, gzipped: bool = False) -> Tuple[bytes, str]:
        """(body, content type) of a scrape whose ``Accept`` header is ``accept``: the kept body
        when it holds everything the last whole reading pass read (a pass under way does not
        count until it ends), or ``prerender`` made it for this scrape less than ``AHEAD_AGE``
        seconds ago; else one rendered now.  ``gzipped``: the body gzip-compressed (the scraper
        accepts it; Prometheus and vmagent do), compressed once per body."""
        from prometheus_client.exposition import choose_encoder

        encoder, content_type = choose_encoder(accept)
        now = time.monotonic()
        with self._lock:
            scraper = self._scrapers.get(content_type)
            if scraper is None:
                if len(self._scrapers) >= _FORMATS_KEPT:  # Accept may name any version
                    self._scrapers.clear()
                scraper = self._scrapers[content_type] = _Scraper(accept)
            scraper.scraped(now, gzipped)
            body = scraper.body
            if body is None or (scraper.changes < self._settled
                                and not (scraper.ahead and now - scraper.rendered <= AHEAD_AGE)):
                body = encoder(self.registry)
                scraper.keep(body, self.store.changes, now, False)
            return (scraper.compressed() if gzipped else body), content_type

    def prerender(self) -> None:
        """Render, for each format scraped lately, the body its next scrape will be served:
        once per scrape, when the scrape is due within ``LEAD`` seconds (the last interval
        between its scrapes tells when).  Called by the agent's reader after each ``refresh``,
        the only thread that changes the store, so it renders without the lock: a scrape that
        comes meanwhile is not held up."""
        from prometheus_client.exposition import choose_encoder

        now = time.monotonic()
        with self._lock:
            due = [scraper for scraper in self._scrapers.values()
                   if now - scraper.last <= _SCRAPER_KEPT and scraper.interval
                   and scraper.last + scraper.interval - now <= LEAD
                   and scraper.changes != self.store.changes
                   and not (scraper.ahead and scraper.rendered > scraper.last)]
            changes = self.store.changes
        for scraper in due:
            body = choose_encoder(scraper.accept)[0](self.registry)
            with self._lock:
                scraper.keep(body, changes, time.monotonic(), True)
                if scraper.gzipped:  # its scraper asks for gzip: compressed ahead too
                    scraper.compressed()

    def series(self) -> int:
        """Series exposed now (the overflow counter's not counted)."""
        return self.store.total

