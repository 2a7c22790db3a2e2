"""Many threads on one bounded cache: nothing raises, nothing invented, bounds and counts hold."""

from __future__ import annotations

import random
import sys
import threading
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import FakeClock

from shoal import Cache

THREADS = 8
OPS_PER_THREAD = 3000
KEYS = 100
MAX_ENTRIES = 40
MISS = "miss"  # no value written is a str, so a read returning None is a hole, not a miss


@pytest.fixture
def frequent_switches() -> Iterator[None]:
    """Hand the GIL over far more often than usual, so interleavings actually happen."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


class Worker(threading.Thread):
    def __init__(self, cache: Cache, index: int, start: threading.Barrier) -> None:
        super().__init__(name=f"worker-{index}")
        self.cache = cache
        self.index = index
        self.begin = start
        self.written: dict[int, list[Any]] = defaultdict(list)
        self.read: list[tuple[int, Any]] = []
        self.sets = 0
        self.loads = 0
        self.error: BaseException | None = None

    def load(self, key: int) -> tuple[Any, ...]:
        # Runs on whichever thread leads the flight, which is this one.
        self.loads += 1
        value = (key, "loaded", self.index, self.loads)
        self.written[key].append(value)
        return value

    def run(self) -> None:
        rng = random.Random(self.index)
        try:
            self.begin.wait()
            for seq in range(OPS_PER_THREAD):
                key = rng.randrange(KEYS)
                roll = rng.random()
                if roll < 0.35:
                    value = (key, self.index, seq)
                    self.written[key].append(value)
                    self.cache.set(key, value, ttl=rng.choice([None, 60]))
                    self.sets += 1
                elif roll < 0.75:
                    self.read.append((key, self.cache.get(key, MISS)))
                elif roll < 0.85:
                    self.cache.delete(key)
                elif roll < 0.95:
                    self.read.append((key, self.cache.fetch(key, self.load)))
                elif roll < 0.98:
                    self.cache.touch(key, ttl=120)
                else:
                    self.read.extend(self.cache.items())
        except BaseException as exc:
            self.error = exc


def test_eight_threads_mixing_set_get_delete_and_fetch_keep_every_invariant(
    fake_clock: FakeClock, frequent_switches: None
) -> None:
    cache = Cache(ttl=30, max_entries=MAX_ENTRIES, timer=fake_clock)
    start = threading.Barrier(THREADS)
    workers = [Worker(cache, i, start) for i in range(THREADS)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(30)
        assert not w.is_alive()

    assert [w.error for w in workers] == [None] * THREADS
    written: dict[int, list[Any]] = defaultdict(list)
    for w in workers:
        for key, values in w.written.items():
            written[key].extend(values)

    for w in workers:
        for key, value in w.read:
            assert value == MISS or value in written[key], (key, value)

    assert len(cache) <= MAX_ENTRIES
    stats = cache.stats()
    assert stats["entries"] <= MAX_ENTRIES
    assert stats["sets"] == sum(w.sets + w.loads for w in workers)
    assert stats["loads"] == sum(w.loads for w in workers)
    assert stats["loading"] == 0
    assert stats["evictions"] > 0  # the bound was actually exercised
    for key, value in cache.items():
        assert value in written[key]
        assert cache.get(key) == value
