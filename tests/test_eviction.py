"""Eviction policies on their own: S3-FIFO and LRU know entries, nothing else."""

from __future__ import annotations

from typing import Any

from shoal.eviction import GONE, LRU, MAIN, MAX_FREQ, S3FIFO, SMALL


class Item:
    """The three fields a policy may touch, as on ``store.Entry``."""

    def __init__(self, key: Any) -> None:
        self.key = key
        self.freq = 0
        self.queue = GONE

    def __repr__(self) -> str:
        return f"Item({self.key!r}, freq={self.freq}, queue={self.queue})"


class Table:
    """A minimal owner of a policy, doing what ``Store`` does around it."""

    def __init__(self, policy: Any, capacity: int) -> None:
        self.policy = policy
        self.capacity = capacity
        self.items: dict[Any, Item] = {}
        self.evicted: list[Any] = []

    def put(self, key: Any) -> Item:
        item = Item(key)
        old = self.items.get(key)
        self.items[key] = item
        if old is not None:
            self.policy.replace(old, item)
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
    table = Table(S3FIFO(10), 10)
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
    table = Table(S3FIFO(20), 20)
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
    policy = S3FIFO(10)
    table = Table(policy, 10)
    for key in range(11):
        table.put(key)
    assert table.evicted == [0]
    table.put(0)  # a ghost hit
    assert table.items[0].queue == MAIN


def test_a_new_key_starts_in_small() -> None:
    table = Table(S3FIFO(10), 10)
    assert table.put("k").queue == SMALL


def test_a_hit_entry_is_promoted_from_small_to_main_instead_of_evicted() -> None:
    table = Table(S3FIFO(10), 10)
    for key in range(10):
        table.put(key)
    table.hit(0)
    table.put(10)
    assert 0 in table.items
    assert table.items[0].queue == MAIN
    assert table.evicted == [1]


def test_hits_saturate_at_max_freq() -> None:
    policy = S3FIFO(10)
    item = Item("k")
    policy.insert(item)
    for _ in range(10):
        policy.hit(item)
    assert item.freq == MAX_FREQ


def test_replace_keeps_the_old_entrys_queue_and_frequency() -> None:
    policy = S3FIFO(10)
    table = Table(policy, 10)
    for key in range(11):
        table.put(key)
    table.put(0)  # back from the ghost, in main
    table.hit(0)
    table.hit(0)
    old = table.items[0]
    new = table.put(0)  # a newer write for the same key
    assert (new.queue, new.freq) == (MAIN, 2)
    assert old.queue == GONE


def test_replaced_entries_are_never_chosen_as_victims() -> None:
    table = Table(S3FIFO(5), 5)
    for round_ in range(50):
        for key in range(5):
            table.put(key)  # overwrites after the first round
        table.put(100 + round_)  # forces an eviction; Table checks the victim is current
    assert len(table.items) == 5


def test_removed_entries_are_skipped_and_the_live_ones_still_evict_in_order() -> None:
    table = Table(S3FIFO(10), 10)
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
    policy = S3FIFO(capacity)
    table = Table(policy, capacity)
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
    policy = S3FIFO(3)
    assert policy.victim() is None
    item = Item("k")
    policy.insert(item)
    policy.remove(item)
    assert policy.victim() is None


def test_victim_takes_every_entry_once_and_then_none() -> None:
    policy = S3FIFO(8)
    items = [Item(k) for k in range(8)]
    for item in items:
        policy.insert(item)
    for item in items[::2]:
        policy.hit(item)
    victims = [policy.victim() for _ in range(8)]
    assert sorted(v.key for v in victims) == list(range(8))
    assert policy.victim() is None


def test_clear_empties_every_queue_and_forgets_the_ghost() -> None:
    policy = S3FIFO(4)
    table = Table(policy, 4)
    for key in range(6):
        table.put(key)
    policy.clear()
    assert policy.victim() is None
    item = Item(0)  # was a ghost before the clear
    policy.insert(item)
    assert item.queue == SMALL


def test_capacity_must_be_at_least_one() -> None:
    try:
        S3FIFO(0)
    except ValueError:
        return
    raise AssertionError("S3FIFO(0) was accepted")


# -- LRU -------------------------------------------------------------------------------


def test_lru_evicts_the_least_recently_used_entry() -> None:
    table = Table(LRU(3), 3)
    for key in "abc":
        table.put(key)
    table.hit("a")
    table.put("d")
    assert table.evicted == ["b"]
    table.put("e")
    assert table.evicted == ["b", "c"]
    assert set(table.items) == {"a", "d", "e"}


def test_lru_replace_counts_as_a_use() -> None:
    table = Table(LRU(3), 3)
    for key in "abc":
        table.put(key)
    table.put("a")
    table.put("d")
    assert table.evicted == ["b"]
    assert table.items["a"].queue == MAIN


def test_lru_remove_and_clear() -> None:
    policy = LRU(3)
    table = Table(policy, 3)
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
    policy = S3FIFO(100)
    items = [Item(i) for i in range(5)]
    policy.insert_many(items)
    assert [i.queue for i in items] == [SMALL] * 5
    assert [policy.victim().key for _ in range(5)] == [0, 1, 2, 3, 4]
    assert policy.victim() is None


def test_insert_many_sends_a_returning_ghost_to_main_like_insert() -> None:
    table = Table(S3FIFO(2), 2)
    for key in ("a", "b", "c"):  # "a" is evicted from small and becomes a ghost
        table.put(key)
    assert "a" in table.evicted
    returning, new = Item("a"), Item("z")
    table.policy.insert_many([returning, new])
    assert (returning.queue, new.queue) == (MAIN, SMALL)
