"""The sampler thread: lazy priming, the bounded wait for a first sample, silent and loud drops."""

from __future__ import annotations

import math
import threading
import time
from typing import Dict, List

from conftest import wait_until

from primus_lens_inject import log
from primus_lens_inject.metrics.sampler import Sampler


class Source:
    def __init__(self, name: str = "fake", prime_seconds: float = 0.0, keep: bool = True,
                 fail_prime: bool = False) -> None:
        self.name = name
        self.value = 1.0
        self.prime_seconds = prime_seconds
        self.keep = keep
        self.fail_prime = fail_prime
        self.threads: List[str] = []
        self.closed_in = ""

    def prime(self) -> bool:
        self.threads.append(threading.current_thread().name)
        time.sleep(self.prime_seconds)
        if self.fail_prime:
            raise OSError("library exploded")
        return self.keep

    def sample(self) -> Dict[str, float]:
        self.threads.append(threading.current_thread().name)
        return {f"_{self.name}": self.value}

    def close(self) -> None:
        self.closed_in = threading.current_thread().name


def test_start_returns_with_a_first_snapshot_taken_in_the_sampler_thread():
    source = Source(prime_seconds=0.1)
    sampler = Sampler([source], interval=60)
    sampler.start()
    assert sampler.snapshot == {"_fake": 1.0}
    assert set(source.threads) == {"primus-lens-sampler"}  # never the caller's thread
    sampler.close(math.inf)  # no process end: STOP_WAIT at most
    assert source.closed_in == "primus-lens-sampler"


def test_a_slow_library_holds_start_up_no_longer_than_the_wait():
    source = Source(prime_seconds=0.6)
    sampler = Sampler([source], interval=0.05, first_sample_wait=0.1)
    began = time.monotonic()
    sampler.start()
    assert time.monotonic() - began < 0.5
    assert sampler.snapshot == {}
    assert wait_until(lambda: sampler.snapshot == {"_fake": 1.0})
    sampler.close(math.inf)  # no process end: STOP_WAIT at most


def test_snapshots_are_replaced_never_mutated():
    source = Source()
    sampler = Sampler([source], interval=0.02)
    sampler.start()
    first = sampler.snapshot
    source.value = 2.0
    assert wait_until(lambda: sampler.snapshot.get("_fake") == 2.0)
    assert first == {"_fake": 1.0}
    sampler.close(math.inf)  # no process end: STOP_WAIT at most
    samples = sampler.samples
    time.sleep(0.1)
    assert sampler.samples == samples  # stopped means stopped


def test_a_source_with_nothing_to_sample_is_dropped_silently(capsys, monkeypatch):
    monkeypatch.setattr(log, "_said", set())
    idle, failing, good = Source("idle", keep=False), Source("broken", fail_prime=True), Source()
    sampler = Sampler([idle, failing, good], interval=60)
    sampler.start()
    assert sampler.snapshot == {"_fake": 1.0}
    assert sampler.sources == [good]
    assert capsys.readouterr().err == (
        "primus-lens: broken metrics switched off after an error: OSError: library exploded\n")
    sampler.close(math.inf)  # no process end: STOP_WAIT at most


def test_close_without_start_closes_the_sources():
    source = Source()
    sampler = Sampler([source, None], interval=60)
    sampler.sample_once()
    assert sampler.snapshot == {"_fake": 1.0}
    sampler.close(math.inf)  # no process end: STOP_WAIT at most
    assert source.closed_in == threading.current_thread().name


def test_no_source_no_thread():
    sampler = Sampler([None], interval=0.01)
    sampler.start()
    assert sampler._thread is None and sampler.snapshot == {}
    sampler.close(math.inf)  # no process end: STOP_WAIT at most
