"""The node's chores: the collector kept off what a member holds for long, the snapshot file's writer."""

from __future__ import annotations

import asyncio
import gc
import json
import math
import subprocess
import sys
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal import snapshot
from shoal.actions import BootStreaming
from shoal.cache import hosted
from shoal.clock import HybridClock
from shoal.housekeeping import (
    FREEZE_EVERY,
    GC_FREEZE_MIN,
    RECLAIM_COST,
    RECLAIM_FIRST,
    RECLAIM_GARBAGE,
    RECLAIM_GROWTH,
    RECLAIM_SHARE,
    Collector,
    Snapshots,
)
from shoal.node import Node


@pytest.fixture
def thawed() -> Iterator[None]:
    """Each test starts and ends with nothing frozen and the collector on."""
    gc.unfreeze()
    yield
    gc.unfreeze()
    gc.enable()


def in_sight(obj: object) -> bool:
    """Whether a collection would walk ``obj``: it is in generation 0, 1 or 2 (not frozen)."""
    return any(o is obj for o in gc.get_objects())


def test_the_entries_a_dump_brought_are_frozen_when_the_stream_ends_before_the_collector_runs_again(
    thawed: None,
) -> None:
    node = Node()
    cache = node.cache("c")
    driver = node._driver
    driver.run([BootStreaming(True)])
    assert not gc.isenabled()
    cache.set_many({f"k{i}": i for i in range(GC_FREEZE_MIN)})  # what the dump loads, collector paused
    entry = node._driver.core.replicas["c"].entries()[0]
    collections: list[int] = []

    def seen(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collections.append(info["generation"])

    gc.callbacks.append(seen)
    try:
        driver.run([BootStreaming(False)])
    finally:
        gc.callbacks.remove(seen)
    assert gc.isenabled()
    # Else the first young collection walks every entry, and the freeze at Ready walks them again.
    assert not in_sight(entry)
    assert collections == [], "frozen without a collection walking them"


def test_the_collector_freezes_after_so_many_writes_and_not_before(thawed: None) -> None:
    collector = Collector(True)
    made = [object() for _ in range(3)]
    collector.written(GC_FREEZE_MIN, FREEZE_EVERY - 1)
    assert in_sight(made) and gc.get_freeze_count() == 0
    collector.written(GC_FREEZE_MIN, FREEZE_EVERY)
    assert not in_sight(made)
    later = [object()]
    collector.written(GC_FREEZE_MIN, 2 * FREEZE_EVERY - 1)  # counted from the last freeze
    assert in_sight(later)


class Cycle:
    """An application's object in a reference cycle: only the cyclic collector can free it."""

    def __init__(self) -> None:
        self.me = self


def dead_cycle_in_the_oldest_generation() -> weakref.ref[Cycle]:
    """A cycle that survived a full collection and was then dropped: garbage only the next full
    collection finds. The reference says whether it is gone."""
    cycle = Cycle()
    gone = weakref.ref(cycle)
    gc.collect()
    del cycle
    return gone


def test_a_freeze_does_not_keep_the_garbage_cycles_that_waited_in_the_oldest_generation(thawed: None) -> None:
    """gc.freeze() is process-wide: frozen garbage is never collected. A cycle dropped after it
    reached the oldest generation waits there for a full collection; a freeze after a young
    one kept it (and every such cycle of the application) for the process's life."""
    collector = Collector(True)
    gone = dead_cycle_in_the_oldest_generation()
    collector.written(GC_FREEZE_MIN, FREEZE_EVERY)
    assert gc.get_freeze_count() > 0
    assert gone() is None, "a dead cycle was frozen"


def test_what_another_thread_drops_between_the_collection_and_the_freeze_is_not_frozen(thawed: None) -> None:
    """Threads may switch between two calls, and a thread waiting through a long full collection
    asks for its turn: what it drops then is young garbage. The collector reads its clock in that
    gap; this clock drops a cycle there, as such a thread would."""
    dropped: list[weakref.ref[Cycle]] = []

    def clock() -> float:
        dropped.append(weakref.ref(Cycle()))
        return 1000.0

    collector = Collector(True, clock=clock)
    collector.written(GC_FREEZE_MIN, FREEZE_EVERY)
    assert gc.get_freeze_count() > 0 and dropped
    assert all(ref() is None for ref in dropped), "young garbage was frozen"


def test_a_dump_s_freeze_does_not_keep_the_garbage_cycles_of_before_it_began(thawed: None) -> None:
    collector = Collector(True)
    gone = dead_cycle_in_the_oldest_generation()  # as the dump begins
    collector.pause(True)
    collector.streamed(GC_FREEZE_MIN, 0)
    collector.pause(False)
    assert gc.get_freeze_count() > 0
    assert gone() is None, "a dead cycle was frozen"


class Process:
    """What a collector reads of its process: a monotonic clock that moves ``step`` seconds at
    each reading (so a collection takes time), its resident memory and what its caches hold."""

    def __init__(self, step: float = 0.0) -> None:
        self.now, self.step, self.rss, self.held = 1000.0, step, 100 * MB, 0

    def clock(self) -> float:
        self.now += self.step
        return self.now

    def collector(self, max_stall: float = math.inf) -> Collector:
        return Collector(True, lambda: self.held, max_stall=max_stall, clock=self.clock, rss=lambda: self.rss)

    def grow(self) -> None:
        """Beside the caches, by what makes a collection of everything frozen worth its cost: the
        slack, or a quarter of what the process holds then."""
        self.rss += max(RECLAIM_GROWTH, self.rss // 3 + 1)


MB = 1 << 20


def frozen_then_dropped(collector: Collector, writes: int, cycles: int = 1) -> list[weakref.ref[Cycle]]:
    """Cycles alive at a freeze (requests in flight) and garbage right after it: only a collection
    of what is frozen can free them."""
    made = [Cycle() for _ in range(cycles)]
    gone = [weakref.ref(cycle) for cycle in made]
    collector.written(GC_FREEZE_MIN, writes)
    del made
    gc.collect()
    assert all(ref() is not None for ref in gone), "frozen garbage, which no collection sees"
    return gone


def test_frozen_garbage_is_collected_once_the_process_grew_and_not_before_a_while_after_the_first_freeze(
    thawed: None,
) -> None:
    process = Process()
    collector = process.collector()
    (gone,) = frozen_then_dropped(collector, FREEZE_EVERY)
    process.now += RECLAIM_FIRST
    collector.written(GC_FREEZE_MIN, 2 * FREEZE_EVERY)
    assert gone() is not None and collector.reclaims == 0, "the process did not grow: nothing to gain"
    process.rss += RECLAIM_GROWTH - 1
    collector.written(GC_FREEZE_MIN, 3 * FREEZE_EVERY)
    assert gone() is not None and collector.reclaims == 0
    process.rss += 1
    collector.written(GC_FREEZE_MIN, 4 * FREEZE_EVERY)
    assert gone() is None and collector.reclaims == 1 and collector.reclaimed >= 1
    assert gc.get_freeze_count() > 0, "and what is alive is frozen again"


def test_the_caches_own_growth_is_no_reason_to_collect_what_is_frozen(thawed: None) -> None:
    """A cache filling up after the first freeze (at 50,000 entries) would pay for collections
    that find nothing: 0.3-1.6 s with every thread stopped at 1M entries."""
    process = Process()
    collector = process.collector()
    (gone,) = frozen_then_dropped(collector, FREEZE_EVERY)
    process.now += RECLAIM_FIRST
    process.rss += 1000 * MB
    process.held += 1000 * MB
    collector.written(GC_FREEZE_MIN, 2 * FREEZE_EVERY)
    assert gone() is not None and collector.reclaims == 0
    process.grow()
    collector.written(GC_FREEZE_MIN, 3 * FREEZE_EVERY)
    assert gone() is None and collector.reclaims == 1


def test_a_process_that_grew_waits_until_a_while_after_the_first_freeze(thawed: None) -> None:
    process = Process()
    collector = process.collector()
    (gone,) = frozen_then_dropped(collector, FREEZE_EVERY)
    process.grow()
    process.now += RECLAIM_FIRST - 1
    collector.written(GC_FREEZE_MIN, 2 * FREEZE_EVERY)
    assert gone() is not None and collector.reclaims == 0
    process.now += 1
    collector.written(GC_FREEZE_MIN, 3 * FREEZE_EVERY)
    assert gone() is None and collector.reclaims == 1


def test_a_large_process_must_grow_by_a_quarter(thawed: None) -> None:
    process = Process()
    process.rss = 1000 * MB
    collector = process.collector()
    frozen_then_dropped(collector, FREEZE_EVERY)
    process.now += RECLAIM_FIRST
    process.rss += 333 * MB  # a quarter of 1333 MB is a little more
    collector.written(GC_FREEZE_MIN, 2 * FREEZE_EVERY)
    assert collector.reclaims == 0
    process.rss += MB
    collector.written(GC_FREEZE_MIN, 3 * FREEZE_EVERY)
    assert collector.reclaims == 1


def test_after_one_that_found_little_the_next_needs_the_process_to_grow_again(thawed: None) -> None:
    process = Process()
    collector = process.collector()
    frozen_then_dropped(collector, FREEZE_EVERY)
    process.now += RECLAIM_FIRST
    process.grow()
    collector.written(GC_FREEZE_MIN, 2 * FREEZE_EVERY)
    assert collector.reclaims == 1
    (gone,) = frozen_then_dropped(collector, 3 * FREEZE_EVERY)
    process.now += 3600
    collector.written(GC_FREEZE_MIN, 4 * FREEZE_EVERY)
    assert collector.reclaims == 1 and gone() is not None
    process.grow()
    collector.written(GC_FREEZE_MIN, 5 * FREEZE_EVERY)
    assert collector.reclaims == 2 and gone() is None


def test_while_they_find_garbage_collections_of_everything_frozen_come_as_often_as_their_share_allows(
    thawed: None,
) -> None:
    """The process need not grow meanwhile: the garbage collected left room it refills first."""
    process = Process(step=0.01)
    collector = process.collector()
    frozen_then_dropped(collector, FREEZE_EVERY, int(RECLAIM_GARBAGE * GC_FREEZE_MIN) + 1)
    process.now += RECLAIM_FIRST
    process.grow()
    collector.written(GC_FREEZE_MIN, 2 * FREEZE_EVERY)
    assert collector.reclaims == 1 and collector.reclaimed > RECLAIM_GARBAGE * GC_FREEZE_MIN
    took = collector.longest_reclaim
    assert took == pytest.approx(process.step)  # the clock read once after it began
    began = process.now - process.step
    due = began + took / RECLAIM_SHARE
    (gone,) = frozen_then_dropped(collector, 3 * FREEZE_EVERY)  # right after: no collection
    assert collector.reclaims == 1
    process.now = due - process.step - 1e-6  # the freeze reads the clock a step later
    collector.written(GC_FREEZE_MIN, 4 * FREEZE_EVERY)
    assert collector.reclaims == 1 and gone() is not None
    process.now = due - process.step + 1e-6
    collector.written(GC_FREEZE_MIN, 5 * FREEZE_EVERY)
    assert collector.reclaims == 2 and gone() is None


def test_no_collection_of_everything_frozen_stops_a_node_longer_than_its_max_stall(thawed: None) -> None:
    """Past half the failure timeout its peers take it for dead: on a node that large the frozen
    garbage stays (the limit of the bound, said in the docstring)."""
    for max_stall, collects in ((RECLAIM_COST * GC_FREEZE_MIN * 0.99, False), (RECLAIM_COST * GC_FREEZE_MIN, True)):
        process = Process()
        collector = process.collector(max_stall)
        (gone,) = frozen_then_dropped(collector, FREEZE_EVERY)
        process.now += RECLAIM_FIRST
        process.grow()
        collector.written(GC_FREEZE_MIN, 2 * FREEZE_EVERY)
        assert (collector.reclaims == 1) is collects and (gone() is None) is collects


def test_a_node_s_collections_of_everything_frozen_stop_it_half_its_failure_timeout_at_most() -> None:
    assert Node(failure_timeout=3.0)._driver._gc.max_stall == 1.5


def test_a_node_s_stats_say_what_its_collections_of_everything_frozen_found_and_took(thawed: None) -> None:
    """What tells an operator the application leaks cycles into the freezes."""
    node = Node()
    collector = node._driver._gc
    assert node.stats()["frozen_collections"] == {"count": 0, "garbage_found": 0, "seconds": 0, "longest_seconds": 0}
    process = Process(step=0.25)
    collector._clock, collector._rss = process.clock, lambda: process.rss
    frozen_then_dropped(collector, FREEZE_EVERY, 3)
    process.now += RECLAIM_FIRST
    process.grow()
    collector.written(GC_FREEZE_MIN, 2 * FREEZE_EVERY)
    figures = node.stats()["frozen_collections"]
    assert figures["count"] == 1 and figures["garbage_found"] >= 3
    assert figures["seconds"] == figures["longest_seconds"] >= 0.25


def test_a_collection_that_took_longer_than_the_max_stall_is_not_repeated_at_that_size(thawed: None) -> None:
    process = Process(step=1.0)  # every reading of the clock a second later: a collection takes one
    collector = process.collector(max_stall=0.5)
    frozen_then_dropped(collector, FREEZE_EVERY)
    process.now += RECLAIM_FIRST
    process.grow()
    collector.written(GC_FREEZE_MIN, 2 * FREEZE_EVERY)
    assert collector.reclaims == 1 and collector.longest_reclaim > collector.max_stall
    (gone,) = frozen_then_dropped(collector, 3 * FREEZE_EVERY)
    process.now += 3600
    process.grow()
    collector.written(GC_FREEZE_MIN, 4 * FREEZE_EVERY)
    assert collector.reclaims == 1 and gone() is not None, "the last one's cost per entry, times as many"


def test_without_a_reading_of_its_memory_a_collector_only_freezes(thawed: None) -> None:
    process = Process()
    collector = Collector(True, clock=process.clock, rss=lambda: None)
    (gone,) = frozen_then_dropped(collector, FREEZE_EVERY)
    process.now += RECLAIM_FIRST
    collector.written(GC_FREEZE_MIN, 2 * FREEZE_EVERY)
    assert gone() is not None and collector.reclaims == 0


def test_a_first_freeze_without_a_reading_of_memory_leaves_the_next_reading_as_the_mark(thawed: None) -> None:
    process = Process()
    readings: list[int | None] = [None]
    collector = Collector(True, clock=process.clock, rss=lambda: readings[-1])
    (gone,) = frozen_then_dropped(collector, FREEZE_EVERY)
    process.now += RECLAIM_FIRST
    readings.append(100 * MB)
    collector.written(GC_FREEZE_MIN, 2 * FREEZE_EVERY)
    assert collector.reclaims == 0
    readings.append(100 * MB + RECLAIM_GROWTH)
    collector.written(GC_FREEZE_MIN, 3 * FREEZE_EVERY)
    assert collector.reclaims == 1 and gone() is None


def test_memory_the_caches_gave_back_is_no_growth(thawed: None) -> None:
    """Entries that expired or were cleared leave the process as large as it was."""
    process = Process()
    process.rss = process.held = 1000 * MB
    collector = process.collector()
    frozen_then_dropped(collector, FREEZE_EVERY)
    process.now += RECLAIM_FIRST
    process.held = 0
    collector.written(GC_FREEZE_MIN, 2 * FREEZE_EVERY)
    assert collector.reclaims == 0


def test_a_dump_s_freeze_starts_the_wait_before_a_first_collection_of_everything_frozen(thawed: None) -> None:
    process = Process()
    collector = process.collector()
    cycle = Cycle()  # alive as the dump ends, garbage right after
    gone = weakref.ref(cycle)
    collector.pause(True)
    collector.streamed(GC_FREEZE_MIN, 0)
    collector.pause(False)
    del cycle
    gc.collect()
    assert gone() is not None, "frozen by the dump's freeze"
    process.grow()
    process.now += RECLAIM_FIRST - 1
    collector.written(GC_FREEZE_MIN, FREEZE_EVERY)
    assert collector.reclaims == 0
    process.now += 1
    collector.written(GC_FREEZE_MIN, 2 * FREEZE_EVERY)
    assert collector.reclaims == 1 and gone() is None


def test_a_cache_that_overwrites_its_keys_has_its_new_entries_frozen_though_it_does_not_grow(thawed: None) -> None:
    """Growth once decided, and a cache of constant size whose keys are rewritten kept every new
    entry in the collector's sight: each full collection walked more of them."""
    node = Node()
    cache = node.cache("c")
    keys = [f"k{i}" for i in range(GC_FREEZE_MIN)]
    cache.set_many(dict.fromkeys(keys, 0))
    node._driver._written()
    size = len(cache)
    for round_ in range(1, FREEZE_EVERY // GC_FREEZE_MIN + 2):
        cache.set_many(dict.fromkeys(keys, round_))
    assert len(cache) == size
    entry = node._driver.core.replicas["c"].entries()[0]
    assert in_sight(entry)
    node._driver._written()
    assert not in_sight(entry)


def test_a_collector_turned_off_freezes_nothing_however_many_writes(thawed: None) -> None:
    made = [object()]
    Collector(False).written(10 * GC_FREEZE_MIN, 10 * FREEZE_EVERY)
    assert in_sight(made) and gc.get_freeze_count() == 0


def test_the_snapshot_file_holds_every_entry_of_a_walk_with_or_without_expiry(tmp_path: Path) -> None:
    """The writer walks the caches on its worker thread; nothing is listed whole on the loop."""
    cache, replica = hosted("c", None, None, serializer=None, clock=HybridClock(1, time.time), tombstone_ttl=60)
    cache.set_many({f"n{i}": i for i in range(3000)})
    cache.set_many({f"t{i}": i for i in range(3000)}, ttl=600)
    cache.set_many({f"n{i}": -i for i in range(1000)}, ttl=300)  # stale references left behind
    cache.delete_many(f"t{i}" for i in range(1000))
    path = tmp_path / "snap"
    assert asyncio.run(Snapshots(path, 60.0).write({"c": replica}, True)) == len(cache) == 5000
    ops = snapshot.read(path, time.time())["c"]
    assert sorted(op[1] for op in ops) == sorted(cache.keys())


_LEAKING_APP = """
import gc, json, sys, weakref
from collections import deque
import shoal
from shoal import housekeeping

writes, variant = int(sys.argv[1]), sys.argv[2]
# A node waits 300 s for the first and spends 1% of its time at most: a test has seconds.
# The node before the bound never collects what is frozen.
housekeeping.RECLAIM_FIRST = 0.5 if variant == "bounded" else float("inf")
housekeeping.RECLAIM_SHARE = 0.2
housekeeping.RECLAIM_GROWTH = 8 * 1024 * 1024

class Request:  # a reference cycle holding a payload, as a traceback or a future's callbacks make
    def __init__(self):
        self.me = self
        self.body = bytearray(20_000)

node = shoal.Node(secret="leak-test-secret-0123")
cache = node.cache("users", ttl=3600, max_entries=100_000)
node.start()
assert node.wait_ready(30)
cache.set_many({f"user:{i:06d}": f"acct-{i:08d}" for i in range(60_000)})  # past GC_FREEZE_MIN
finished = weakref.WeakSet()  # requests done with: one still here once collected is frozen garbage
in_flight = deque()
for i in range(writes):
    cache.set(f"user:{i % 60_000:06d}", f"acct-{i:08d}")
    in_flight.append(Request())
    if len(in_flight) > 100:
        finished.add(in_flight.popleft())
in_flight.clear()
figures = node.stats()["frozen_collections"]
node.stop()
gc.collect()  # what is not frozen goes: what is left is what a freeze kept
print(json.dumps({**figures, "left": len(finished)}))
"""


def _leak(variant: str) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-c", _LEAKING_APP, "400000", variant], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    figures: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


@pytest.mark.slow
def test_a_node_beside_an_application_leaking_cycles_into_its_freezes_gives_them_back() -> None:
    """A real node and a real leak: requests whose cycles were alive at a periodic freeze, frozen
    and then dropped. The node before the bound kept every one; this one finds them and frees
    them, and its stats say so (the unit tests above drive the collector with a fake clock)."""
    unbounded, bounded = _leak("unbounded"), _leak("bounded")
    assert unbounded["count"] == 0 and unbounded["left"] >= 1000, unbounded  # 100 in flight, ~28 freezes
    assert bounded["count"] >= 2 and bounded["longest_seconds"] > 0, bounded
    assert bounded["garbage_found"] >= 3000, bounded  # 3 objects a request: thousands found and freed
    # What stays frozen at the end depends on when the last collection came (they come on growth by
    # a quarter, or while the last one found garbage of 1% of the entries): not asserted.
