"""The node's chores: the collector kept off what a member holds for long, the snapshot file's writer."""

from __future__ import annotations

import asyncio
import gc
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal import snapshot
from shoal.actions import BootStreaming
from shoal.cache import hosted
from shoal.clock import HybridClock
from shoal.housekeeping import FREEZE_EVERY, GC_FREEZE_MIN, Collector, Snapshots
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


def test_a_dump_s_freeze_does_not_keep_the_garbage_cycles_of_before_it_began(thawed: None) -> None:
    collector = Collector(True)
    gone = dead_cycle_in_the_oldest_generation()  # as the dump begins
    collector.pause(True)
    collector.streamed(GC_FREEZE_MIN, 0)
    collector.pause(False)
    assert gc.get_freeze_count() > 0
    assert gone() is None, "a dead cycle was frozen"


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
