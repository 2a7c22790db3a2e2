"""Eviction policies on their own: S3-FIFO and LRU know entries, nothing else."""

from __future__ import annotations

from typing import Any

from shoal.eviction import GONE, LRU, MAIN, MAX_FREQ, S3FIFO, SMALL


class Item:
    """The three fields a policy may touch, made as ``store.Entry`` makes them."""

    def __init__(self, key: Any) -> None:
        self.key = key
        self.freq = 0
        self.queue = 0

    def __repr__(self) -> str:
        return f"Item({self.key!r}, freq={self.freq}, queue={self.queue})"


class Table:
    """A minimal owner of a policy, doing what ``Store`` does around it (S3-FIFO unless told)."""

    def __init__(self, capacity: int, policy: type[S3FIFO] | type[LRU] = S3FIFO) -> None:
        self.capacity = capacity
        self.items: dict[Any, Item] = {}
        self.policy = policy(capacity, self.items.get)
        self.evicted: list[Any] = []

    def put(self, key: Any) -> Item:
        item = Item(key)
        old = self.items.get(key)
        self.items[key] = item
        if old is not None:  # an overwrite: the same key to the policy, where it was
            item.freq, item.queue = old.freq, old.queue
            return item
        self.policy.insert(item)
        if len(self.items) > self.capacity:
            victim = self.policy.victim()
            assert victim is not None
            assert victim.queue == GONE
            assert self.items[victim.key] is victim  # never a dead or replaced reference
            del self.items[victim.key]
            self.evicted.append(victim.key)
        return item

    def hit(self, key: Any) -> None:
        self.policy.hit(self.items[key])

    def delete(self, key: Any) -> None:
        self.policy.remove(self.items.pop(key))


# -- S3-FIFO ----------------------------------------------------------------------------


def test_one_hit_wonders_leave_before_frequently_hit_entries() -> None:
    table = Table(10)
    for key in range(10):
        table.put(key)
    for key in (2, 5, 7):
        table.hit(key)
        table.hit(key)
    for key in range(100, 107):  # a scan of keys nobody reads again
        table.put(key)
    assert {2, 5, 7} <= set(table.items)
    assert len(table.items) == 10
    assert not {2, 5, 7} & set(table.evicted)


def test_a_scan_does_not_flush_entries_that_made_it_to_main() -> None:
    table = Table(20)
    hot = list(range(10))
    for key in hot:
        table.put(key)
        table.hit(key)
    for key in range(1000, 1200):  # a long one-off scan
        table.put(key)
        if key % 10 == 0:
            for h in hot:
                table.hit(h)
    assert set(hot) <= set(table.items)


def test_an_entry_evicted_from_small_is_remembered_and_goes_to_main_when_it_returns() -> None:
    table = Table(10)
    for key in range(11):
        table.put(key)
    assert table.evicted == [0]
    table.put(0)  # a ghost hit
    assert table.items[0].queue == MAIN


def test_a_new_key_starts_in_small() -> None:
    table = Table(10)
    assert table.put("k").queue == SMALL


def test_a_hit_entry_is_promoted_from_small_to_main_instead_of_evicted() -> None:
    table = Table(10)
    for key in range(10):
        table.put(key)
    table.hit(0)
    table.put(10)
    assert 0 in table.items
    assert table.items[0].queue == MAIN
    assert table.evicted == [1]


def test_hits_saturate_at_max_freq() -> None:
    table = Table(10)
    item = table.put("k")
    for _ in range(10):
        table.hit("k")
    assert item.freq == MAX_FREQ


def test_a_stores_overwrite_keeps_the_keys_queue_and_frequency() -> None:
    from shoal.store import NEVER, Store

    store = Store(10)
    for version, key in enumerate([*range(11), 0], start=1):  # 0 is evicted, then back from the ghost
        store.write(key, "v", NEVER, version, 0.0)
    old = store.data[0]
    assert store.policy is not None and old.queue == MAIN
    store.policy.hit(old)
    store.policy.hit(old)
    store.write(0, "newer", NEVER, 100, 0.0)
    new = store.data[0]
    assert new is not old and (new.queue, new.freq) == (MAIN, 2)


def test_replaced_entries_are_never_chosen_as_victims() -> None:
    table = Table(5)
    for round_ in range(50):
        for key in range(5):
            table.put(key)  # overwrites after the first round
        table.put(100 + round_)  # forces an eviction; Table checks the victim is current
    assert len(table.items) == 5


def test_removed_entries_are_skipped_and_the_live_ones_still_evict_in_order() -> None:
    table = Table(10)
    for key in range(10):
        table.put(key)
    for key in (0, 1, 2):
        table.delete(key)
    for key in range(10, 14):
        table.put(key)
    assert table.evicted == [3]
    assert len(table.items) == 10


def test_compaction_of_dead_references_keeps_eviction_working() -> None:
    capacity = 100
    table = Table(capacity)
    policy = table.policy
    for key in range(capacity):
        table.put(key)
    for round_ in range(30):  # many deletes and overwrites leave dead references behind
        for key in list(table.items)[:80]:
            table.delete(key)
        for key in range(80):
            table.put((round_, key))
        for key in list(table.items)[:20]:
            table.put(key)
    queued = len(policy._small) + len(policy._main)
    assert queued <= 2 * capacity + 1100  # compaction ran: dead references did not pile up
    for key in range(5000, 5300):
        table.put(key)
    assert len(table.items) == capacity
    assert policy._small_live + policy._main_live == capacity


def test_victim_of_an_empty_policy_is_none() -> None:
    table = Table(3)
    assert table.policy.victim() is None
    table.put("k")
    table.delete("k")
    assert table.policy.victim() is None


def test_victim_takes_every_entry_once_and_then_none() -> None:
    table = Table(8)
    for key in range(8):
        table.put(key)
    for key in range(0, 8, 2):
        table.hit(key)
    victims = [table.policy.victim() for _ in range(8)]
    assert sorted(v.key for v in victims) == list(range(8))
    assert table.policy.victim() is None


def test_clear_empties_every_queue_and_forgets_the_ghost() -> None:
    table = Table(4)
    policy = table.policy
    for key in range(6):
        table.put(key)
    policy.clear()
    table.items.clear()
    assert policy.victim() is None
    assert table.put(0).queue == SMALL  # 0 was a ghost before the clear


def test_capacity_must_be_at_least_one() -> None:
    try:
        S3FIFO(0, {}.get)
    except ValueError:
        return
    raise AssertionError("S3FIFO(0) was accepted")


# -- LRU -------------------------------------------------------------------------------


def test_lru_evicts_the_least_recently_used_entry() -> None:
    table = Table(3, LRU)
    for key in "abc":
        table.put(key)
    table.hit("a")
    table.put("d")
    assert table.evicted == ["b"]
    table.put("e")
    assert table.evicted == ["b", "c"]
    assert set(table.items) == {"a", "d", "e"}


def test_an_lru_overwrite_keeps_the_keys_place() -> None:
    table = Table(3, LRU)
    for key in "abc":
        table.put(key)
    table.put("a")
    table.put("d")
    assert table.evicted == ["a"]
    assert table.items["d"].queue == MAIN


def test_lru_remove_and_clear() -> None:
    table = Table(3, LRU)
    policy = table.policy
    for key in "abc":
        table.put(key)
    table.delete("a")
    assert policy.victim().key == "b"
    policy.clear()
    assert policy.victim() is None


def test_overwriting_one_key_many_times_keeps_the_queues_bounded() -> None:
    from shoal.cache import Cache

    cache = Cache(ttl=300, max_entries=1000)
    for i in range(100_000):
        cache.set("k", i)
    policy = cache._store.policy  # the queues themselves: white-box on purpose
    assert len(cache) == 1
    assert len(policy._small) + len(policy._main) <= 1024 + 2  # type: ignore[union-attr]


def test_insert_many_puts_new_keys_in_small_in_order_like_insert() -> None:
    table = Table(100)
    items = [Item(i) for i in range(5)]
    table.items.update((item.key, item) for item in items)
    table.policy.insert_many([item.key for item in items], items)
    assert [i.queue for i in items] == [SMALL] * 5
    assert [table.policy.victim().key for _ in range(5)] == [0, 1, 2, 3, 4]
    assert table.policy.victim() is None


def test_insert_many_sends_a_returning_ghost_to_main_like_insert() -> None:
    table = Table(2)
    for key in ("a", "b", "c"):  # "a" is evicted from small and becomes a ghost
        table.put(key)
    assert "a" in table.evicted
    returning, new = Item("a"), Item("z")
    table.items.update(a=returning, z=new)
    table.policy.insert_many(["a", "z"], [returning, new])
    assert (returning.queue, new.queue) == (MAIN, SMALL)
