"""The store: last writer wins by version, tombstones, the clear watermark, expiry, eviction."""

from __future__ import annotations

import math
import sys
from typing import Any
from unittest import mock

from hypothesis import given
from hypothesis import strategies as st

from shoal import store as store_module
from shoal.store import CLEAR, DELETE, LASTING, NEVER, STALE_BACKSTOP, WALK_SLICE, WRITE, Entry, Store, Walk

NOW = 1_700_000_000.0


def state(store: Store) -> tuple[dict[Any, tuple[Any, float, int]], dict[Any, int], int]:
    """Everything a replica holds: entries, tombstones, watermark."""
    entries = {k: (e.value, e.expires, e.version) for k, e in store.data.items()}
    return entries, dict(store.tombstones), store.watermark


def count_live(store: Store, now: float) -> int:
    """Unexpired entries, once ``sweep`` has removed every one that is due."""
    while store.sweep(now, limit=1 << 30):
        pass
    return sum(1 for entry in store.data.values() if entry > now)


def apply(store: Store, op: tuple[int, Any, Any, float, int], now: float = NOW) -> bool:
    kind, key, value, expires, version = op
    if kind == WRITE:
        return store.write(key, value, expires, version, now)
    if kind == DELETE:
        return store.delete(key, version, now)
    return store.clear(version)


# -- last writer wins --------------------------------------------------------------

KEYS = st.sampled_from(["a", b"a", 1])
EXPIRIES = st.sampled_from([NEVER, NOW + 30, NOW - 1, NOW])  # the last two are expired on arrival
OP = st.one_of(
    st.tuples(st.just(WRITE), KEYS, st.integers(0, 9), EXPIRIES),
    st.tuples(st.just(DELETE), KEYS, st.none(), st.just(NEVER)),
    st.tuples(st.just(CLEAR), st.just(b""), st.none(), st.just(NEVER)),
)


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[Any], list[Any]]:
    """Ops with distinct versions, in version order and in one delivery order."""
    ops = draw(st.lists(OP, min_size=1, max_size=12))
    versions = sorted(draw(st.lists(st.integers(1, 10**6), min_size=len(ops), max_size=len(ops), unique=True)))
    in_order = [(*op, version) for op, version in zip(ops, versions, strict=True)]
    return in_order, draw(st.permutations(in_order))


@given(histories())
def test_any_delivery_order_reaches_the_state_of_version_order(history: tuple[list[Any], list[Any]]) -> None:
    in_order, delivered = history
    expected, actual = Store(tombstone_ttl=60), Store(tombstone_ttl=60)
    for op in in_order:
        apply(expected, op)
    for op in delivered:
        apply(actual, op)
    assert state(actual) == state(expected)


@given(histories())
def test_delivering_every_op_twice_changes_nothing(history: tuple[list[Any], list[Any]]) -> None:
    in_order, delivered = history
    once, twice = Store(tombstone_ttl=60), Store(tombstone_ttl=60)
    for op in in_order:
        apply(once, op)
    for op in delivered + in_order:
        apply(twice, op)
    assert state(twice) == state(once)


def test_older_write_never_overwrites_newer_one() -> None:
    store = Store()
    assert store.write("k", "new", NEVER, 20, NOW)
    assert not store.write("k", "old", NEVER, 10, NOW)
    assert not store.write("k", "same", NEVER, 20, NOW)
    assert store.live("k", NOW).value == "new"  # type: ignore[union-attr]


def test_newer_write_replaces_value_expiry_and_version() -> None:
    store = Store()
    store.write("k", "old", NOW + 5, 10, NOW)
    assert store.write("k", "new", NOW + 50, 20, NOW)
    entry = store.live("k", NOW + 10)
    assert entry is not None
    assert (entry.value, entry.expires, entry.version) == ("new", NOW + 50, 20)
    assert count_live(store, NOW + 10) == 1


# -- tombstones ----------------------------------------------------------------------


def test_tombstone_blocks_an_older_write_that_arrives_late() -> None:
    store = Store(tombstone_ttl=60)
    store.write("k", "v1", NEVER, 10, NOW)
    assert store.delete("k", 20, NOW)
    assert not store.write("k", "v1-late", NEVER, 15, NOW + 1)
    assert store.live("k", NOW + 1) is None
    assert store.write("k", "v3", NEVER, 30, NOW + 1)  # a newer write does come back


def test_delete_of_an_absent_key_still_blocks_older_writes() -> None:
    store = Store(tombstone_ttl=60)
    assert store.delete("k", 20, NOW)
    assert not store.write("k", "older", NEVER, 10, NOW)
    assert store.version_of("k") == 20


def test_older_delete_never_removes_newer_write() -> None:
    store = Store(tombstone_ttl=60)
    store.write("k", "v", NEVER, 20, NOW)
    assert not store.delete("k", 10, NOW)
    assert store.live("k", NOW).value == "v"  # type: ignore[union-attr]


def test_tombstones_are_purged_after_tombstone_ttl() -> None:
    store = Store(tombstone_ttl=10)
    store.delete("a", 20, NOW)
    store.delete("b", 21, NOW + 5)
    store.sweep(NOW + 9.5)
    assert set(store.tombstones) == {"a", "b"}
    store.sweep(NOW + 10)
    assert set(store.tombstones) == {"b"}
    store.sweep(NOW + 15)
    assert store.tombstones == {}
    assert store.version_of("a") == 0


def test_an_expired_entry_leaves_a_tombstone_that_blocks_older_writes() -> None:
    store = Store(tombstone_ttl=60)
    store.write("k", "v", NOW + 1, 20, NOW)
    assert store.live("k", NOW + 2) is None
    assert store.tombstones == {"k": 20}
    assert not store.write("k", "older", NEVER, 10, NOW + 2)


def test_a_local_only_store_keeps_no_tombstones() -> None:
    store = Store(tombstone_ttl=0)
    store.write("k", "v", NOW + 1, 20, NOW)
    store.delete("k", 30, NOW)
    assert store.tombstones == {}


def test_a_rewrite_of_a_deleted_key_ends_its_tombstone() -> None:
    store = Store(tombstone_ttl=10)
    store.delete("k", 20, NOW)
    store.write("k", "again", NEVER, 30, NOW + 1)
    assert store.tombstones == {}
    store.sweep(NOW + 20)  # the stale purge record must not touch the live entry
    assert store.live("k", NOW + 20).value == "again"  # type: ignore[union-attr]


def test_purging_an_old_tombstone_keeps_a_newer_tombstone_for_the_same_key() -> None:
    store = Store(tombstone_ttl=10)
    store.delete("k", 20, NOW)
    store.write("k", "again", NEVER, 30, NOW + 5)
    store.delete("k", 40, NOW + 5)
    store.sweep(NOW + 10)  # the first tombstone's time is up, not the second's
    assert store.tombstones == {"k": 40}


# -- clear watermark -------------------------------------------------------------------


def test_clear_removes_every_entry_and_tombstone_older_than_its_version() -> None:
    store = Store(tombstone_ttl=60)
    store.write("a", 1, NEVER, 10, NOW)
    store.write("b", 2, NOW + 5, 11, NOW)
    store.delete("c", 12, NOW)
    assert store.clear(50)
    assert store.data == {}
    assert store.tombstones == {}
    assert count_live(store, NOW) == 0


def test_clear_keeps_entries_and_tombstones_newer_than_its_version() -> None:
    store = Store(tombstone_ttl=60)
    store.write("old", 1, NEVER, 10, NOW)
    store.write("new", 2, NOW + 5, 60, NOW)
    store.delete("dead", 70, NOW)
    store.clear(50)
    assert set(store.data) == {"new"}
    assert store.tombstones == {"dead": 70}
    # the survivor is still filed for expiry
    assert store.live("new", NOW + 6) is None
    assert count_live(store, NOW + 6) == 0


def test_writes_and_deletes_older_than_the_watermark_are_refused() -> None:
    store = Store(tombstone_ttl=60)
    store.clear(50)
    assert not store.write("k", "late", NEVER, 40, NOW)
    assert not store.delete("k", 45, NOW)
    assert store.version_of("k") == 50
    assert store.write("k", "fresh", NEVER, 51, NOW)


def test_an_older_clear_is_ignored() -> None:
    store = Store()
    store.clear(50)
    store.write("k", "v", NEVER, 60, NOW)
    assert not store.clear(40)
    assert store.watermark == 50
    assert "k" in store.data


# -- expiry ---------------------------------------------------------------------------


def test_live_treats_an_entry_as_expired_from_its_expiry_time_on() -> None:
    store = Store()
    store.write("k", "v", NOW + 10, 1, NOW)
    assert store.live("k", NOW + 9.75) is not None
    assert store.live("k", NOW + 10) is None
    assert "k" not in store.data
    assert store.expirations == 1


def test_sweep_removes_only_entries_that_are_due() -> None:
    store = Store()
    for i in range(1, 11):
        store.write(i, i, NOW + i, i, NOW)
    store.write("forever", 0, NEVER, 100, NOW)
    now = NOW + 5.5
    while store.sweep(now):
        pass
    assert set(range(6, 11)) <= set(store.data)  # nothing undue went
    assert set(range(1, 5)).isdisjoint(store.data)  # a second past due: swept
    assert "forever" in store.data
    store.sweep(NOW + 11)
    assert set(store.data) == {"forever"}
    assert store.expirations == 10


def test_sweep_never_removes_an_entry_before_its_expiry() -> None:
    store = Store()
    expiries = [NOW + i * 0.25 for i in range(1, 41)]
    for i, expires in enumerate(expiries):
        store.write(i, i, expires, i + 1, NOW)
    for step in range(1, 45):
        now = NOW + step * 0.25
        store.sweep(now)
        for i, expires in enumerate(expiries):
            if expires > now:
                assert i in store.data


def test_sweep_does_at_most_limit_removals_per_call() -> None:
    store = Store()
    for i in range(100):
        store.write(i, i, NOW + 1, i + 1, NOW)
    assert store.sweep(NOW + 5, limit=10) == 10
    assert len(store) == 90
    removed = [store.sweep(NOW + 5, limit=30) for _ in range(4)]
    assert removed == [30, 30, 30, 0]
    assert len(store) == 0


def test_sweep_limit_also_bounds_tombstone_purging() -> None:
    store = Store(tombstone_ttl=1)
    for i in range(50):
        store.delete(i, i + 1, NOW)
    assert store.sweep(NOW + 2, limit=20) == 20
    assert len(store.tombstones) == 30


def test_count_live_is_exact_within_the_current_second() -> None:
    store = Store()
    for i in range(8):
        store.write(i, i, NOW + 1 + i * 0.125, i + 1, NOW)  # all expire within one second
    store.write("forever", 0, NEVER, 100, NOW)
    for i in range(9):
        now = NOW + 1 + i * 0.125
        assert count_live(store, now) == sum(1 for j in range(8) if NOW + 1 + j * 0.125 > now) + 1


def test_an_expired_at_arrival_write_stores_nothing() -> None:
    store = Store(tombstone_ttl=60)
    assert store.write("k", "v", NOW - 1, 10, NOW)  # newest, so "applied"
    assert store.write("j", "v", NOW, 11, NOW)
    assert store.data == {}
    assert count_live(store, NOW) == 0
    assert not store.write("k", "older", NEVER, 5, NOW)  # but it still orders writes


def test_an_expired_at_arrival_write_removes_the_older_live_entry() -> None:
    store = Store(tombstone_ttl=60)
    store.write("k", "v1", NEVER, 10, NOW)
    assert store.write("k", "v2", NOW - 1, 20, NOW)
    assert store.data == {}
    assert store.version_of("k") == 20
    assert not store.write("k", "v1-late", NEVER, 15, NOW)


def test_an_expired_at_arrival_write_does_not_take_an_eviction_slot() -> None:
    store = Store(max_entries=2)
    store.write("a", 1, NEVER, 1, NOW)
    store.write("b", 2, NEVER, 2, NOW)
    store.write("a", 3, NOW - 1, 3, NOW)  # "a" is now gone
    store.write("c", 4, NEVER, 4, NOW)
    assert set(store.data) == {"b", "c"}
    assert store.evictions == 0


# -- eviction -------------------------------------------------------------------------


def test_eviction_keeps_len_within_max_entries_and_records_what_it_evicted() -> None:
    store = Store(max_entries=10)
    for i in range(100):
        store.write(i, i, NEVER, i + 1, NOW)
        assert len(store) <= 10
    assert len(store) == 10
    assert store.evictions == 90
    assert len(store.evicted) <= 10
    for key, version in store.evicted.items():
        assert key not in store.data
        assert version == key + 1


def test_an_overwrite_does_not_evict() -> None:
    store = Store(max_entries=3)
    for i in range(3):
        store.write(i, i, NEVER, i + 1, NOW)
    for version in range(10, 20):
        store.write(1, version, NEVER, version, NOW)
    assert set(store.data) == {0, 1, 2}
    assert store.evictions == 0


def test_a_rewritten_key_is_no_longer_recorded_as_evicted() -> None:
    store = Store(max_entries=1)
    store.write("a", 1, NEVER, 1, NOW)
    store.write("b", 2, NEVER, 2, NOW)
    assert "a" in store.evicted
    store.write("a", 3, NEVER, 3, NOW)
    assert "a" in store.data
    assert "a" not in store.evicted


def test_an_older_write_arriving_after_an_eviction_does_not_bring_back_a_stale_value() -> None:
    store = Store(max_entries=1)
    store.write("a", "new", NEVER, 20, NOW)
    store.write("b", "b", NEVER, 21, NOW)  # evicts "a" at version 20
    assert store.evicted.get("a") == 20
    assert not store.write("a", "stale", NEVER, 10, NOW)
    assert "a" not in store.data or store.data["a"].value != "stale"


def test_deletes_and_expiry_free_room_without_counting_as_evictions() -> None:
    store = Store(max_entries=4)
    for i in range(4):
        store.write(i, i, NOW + 1 if i < 2 else NEVER, i + 1, NOW)
    store.delete(2, 10, NOW)
    store.sweep(NOW + 3)
    assert len(store) == 1
    for i in range(10, 13):
        store.write(i, i, NEVER, i + 10, NOW + 3)
    assert len(store) == 4
    assert store.evictions == 0


def test_clear_resets_eviction_bookkeeping() -> None:
    store = Store(max_entries=3)
    for i in range(6):
        store.write(i, i, NEVER, i + 1, NOW)
    store.clear(100)
    assert store.evicted == {}
    for i in range(3):
        store.write(i, i, NEVER, 200 + i, NOW)
    assert len(store) == 3
    store.write(99, 99, NEVER, 300, NOW)
    assert len(store) == 3


def test_max_entries_must_be_positive() -> None:
    for bad in (0, -1):
        try:
            Store(max_entries=bad)
        except ValueError:
            continue
        raise AssertionError(f"max_entries={bad} was accepted")


def test_entry_is_its_own_expiry() -> None:
    store = Store()
    store.write("k", "v", NOW + 3, 1, NOW)
    entry = store.data["k"]
    assert entry.expires == NOW + 3
    assert entry > NOW and entry <= NOW + 3
    store.write("n", "v", NEVER, 2, NOW)
    assert math.isinf(store.data["n"].expires)


# -- warm-boot chunks (load) ------------------------------------------------------------

CHUNK_KEYS = st.sampled_from([f"k{i}" for i in range(6)] + [b"k0", 7])
CHUNK_EXPIRIES = st.sampled_from([NEVER, NOW + 30, NOW + 30.5, NOW + 31, NOW - 1, NOW])


HELD_BEFORE = st.tuples(st.just(WRITE), CHUNK_KEYS, st.integers(0, 9), st.sampled_from([NEVER, NOW + 30]))
"""A live entry for one of the chunk's keys: the case a chunk merged in bulk must not overwrite."""
CHUNK_OP = st.one_of(
    HELD_BEFORE,
    st.tuples(st.just(DELETE), CHUNK_KEYS, st.none(), st.just(NEVER)),
    st.tuples(st.just(CLEAR), st.just(b""), st.none(), st.just(NEVER)),
)


@st.composite
def chunks(draw: st.DrawFn) -> tuple[list[Any], list[Any], list[Any]]:
    """Prior ops on the store (on the chunk's keys too: a live write or a second donor got there
    first, newer or older), then a dump chunk (keys may repeat, expiries may be past)."""
    prior = draw(st.lists(st.one_of(HELD_BEFORE, CHUNK_OP, OP), max_size=6))
    rows = draw(st.lists(st.tuples(CHUNK_KEYS, st.integers(0, 9), CHUNK_EXPIRIES), min_size=1, max_size=10))
    versions = draw(
        st.lists(st.integers(1, 10**6), min_size=len(prior) + len(rows), max_size=len(prior) + len(rows), unique=True)
    )
    ops = [(*op, v) for op, v in zip(prior, versions, strict=False)]
    chunk = [(*row, v) for row, v in zip(rows, versions[len(prior) :], strict=True)]
    bound = draw(st.sampled_from([None, 3, 20]))
    return ops, chunk, [bound]


@given(chunks())
def test_loading_a_chunk_ends_in_the_state_of_writing_its_unexpired_entries_one_by_one(case: Any) -> None:
    prior, chunk, (bound,) = case
    loaded, written = Store(bound, tombstone_ttl=60), Store(bound, tombstone_ttl=60)
    for op in prior:
        apply(loaded, op)
        apply(written, op)
    keys, values, expires, versions = (list(col) for col in zip(*chunk, strict=True))
    applied = loaded.load(keys, values, expires, versions, NOW)
    expected = sum(written.write(k, v, e, ver, NOW) for k, v, e, ver in chunk if e > NOW)
    assert applied == expected
    assert state(loaded) == state(written)
    assert dict(loaded.evicted) == dict(written.evicted)
    assert count_live(loaded, NOW + 30.25) == count_live(written, NOW + 30.25)


@given(
    st.lists(HELD_BEFORE, min_size=1, max_size=4),
    st.lists(st.tuples(CHUNK_KEYS, st.integers(0, 9), st.sampled_from([NEVER, NOW + 30])), min_size=1, max_size=8),
    st.data(),
)
def test_a_chunk_naming_keys_held_already_keeps_whichever_version_is_newer(
    held: list[Any], rows: list[Any], data: st.DataObject
) -> None:
    """A chunk of distinct keys, some held already by a newer or an older write: the one a bulk
    merge must not take (it goes key by key), though nothing repeats inside the chunk."""
    rows = list({row[0]: row for row in rows}.values())  # each key once: the chunk the bulk merge takes
    versions = data.draw(
        st.lists(st.integers(1, 10**6), min_size=len(held) + len(rows), max_size=len(held) + len(rows), unique=True)
    )
    loaded, written = Store(tombstone_ttl=60), Store(tombstone_ttl=60)
    for op, version in zip(held, versions, strict=False):
        apply(loaded, (*op, version))
        apply(written, (*op, version))
    chunk = [(*row, v) for row, v in zip(rows, versions[len(held) :], strict=True)]
    keys, values, expires, chunk_versions = (list(col) for col in zip(*chunk, strict=True))
    applied = loaded.load(keys, values, expires, chunk_versions, NOW)
    assert applied == sum(written.write(k, v, e, ver, NOW) for k, v, e, ver in chunk)
    assert state(loaded) == state(written)
    assert count_live(loaded, NOW + 30.25) == count_live(written, NOW + 30.25)


def test_a_chunk_of_fresh_keys_is_swept_and_evicted_like_written_entries() -> None:
    store = Store(max_entries=100)
    keys = [f"k{i}" for i in range(60)]
    expires = [NOW + 10] * 30 + [NOW + 20.5] * 20 + [NEVER] * 10  # spans buckets and NEVER
    assert store.load(keys, list(range(60)), expires, list(range(1, 61)), NOW) == 60
    assert count_live(store, NOW + 15) == 30
    while store.sweep(NOW + 15):
        pass
    assert set(store.data) == set(keys[30:])
    for i in range(100):  # fill past the bound: the loaded entries are eviction candidates too
        store.write(f"new{i}", i, NEVER, 1000 + i, NOW + 15)
    assert len(store) == 100
    assert store.evictions == 30
    assert set(store.evicted) <= set(keys) | {f"new{i}" for i in range(100)}


def test_a_chunk_that_does_not_fit_under_the_bound_still_evicts_down_to_it() -> None:
    store = Store(max_entries=10)
    assert store.load([f"k{i}" for i in range(25)], [0] * 25, [NOW + 5] * 25, list(range(1, 26)), NOW) == 25
    assert len(store) == 10
    assert store.evictions == 15


def test_entries_of_a_chunk_that_expired_on_the_way_are_skipped_without_a_tombstone() -> None:
    store = Store(tombstone_ttl=60)
    assert store.load(["a", "b"], [1, 2], [NOW - 1, NOW + 5], [1, 2], NOW) == 1
    assert set(store.data) == {"b"}
    assert store.tombstones == {}


# -- stale wheel references ---------------------------------------------------------------


def wheel_refs(store: Store) -> int:
    return sum(len(bucket) for bucket in store._wheel.values())


def test_overwrites_leave_stale_references_that_sweep_compacts_away() -> None:
    store = Store()
    version = 0
    for _ in range(3):
        for i in range(3000):
            version += 1
            store.write(i, version, NOW + 100 + version / 1000, version, NOW)
    assert wheel_refs(store) == 9000  # each overwrite left its predecessor's reference behind
    while store.sweep(NOW):  # nothing is due: the sweep only compacts
        pass
    assert wheel_refs(store) <= 2 * 3000  # no more stale references than entries
    assert [store.data[i].value for i in (0, 2999)] == [6001, 9000]


def test_a_compaction_pass_keeps_each_key_once_where_its_entry_expires() -> None:
    store = Store()
    for version in range(1, 2001):  # two writes per key within one second, then one much later
        store.write(version % 1000, version, NOW + 100.5, version, NOW)
    for key in range(500):
        store.write(key, 0, NOW + 200.5, 10_000 + key, NOW)
    store.delete(999, 20_000, NOW)
    store._compact_some(1 << 30)
    assert sorted(store._wheel[int(NOW + 100.5)]) == list(range(500, 999))
    assert sorted(store._wheel[int(NOW + 200.5)]) == list(range(500))
    assert store._stale == 0


def test_a_store_nothing_sweeps_compacts_its_wheel_itself() -> None:
    store = Store()
    for version in range(1, 10_001):
        store.write("k", version, NOW + 100 + version / 1000, version, NOW)
    assert wheel_refs(store) <= STALE_BACKSTOP + 2 * len(store) + 1


def test_evicted_entries_are_not_kept_alive_by_the_wheel() -> None:
    store = Store(max_entries=100)
    for i in range(20_000):
        store.write(i, i, NOW + 3600, i + 1, NOW)
    assert len(store) == 100
    assert wheel_refs(store) <= STALE_BACKSTOP + 2 * len(store) + 1
    while store.sweep(NOW):
        pass
    assert wheel_refs(store) <= 100 + STALE_BACKSTOP
    assert count_live(store, NOW) == 100


# -- entries without expiry are filed too (LASTING) ----------------------------------------


def filed_in(store: Store, second: int) -> list[Any]:
    return sorted(store._wheel.get(second, []))


def test_an_entry_without_expiry_is_filed_under_lasting_which_never_comes_due() -> None:
    store = Store()
    store.write("k", "v", NEVER, 1, NOW)
    assert filed_in(store, LASTING) == ["k"]
    assert LASTING not in store._wheel.due
    while store.sweep(NOW + 10**9):
        pass
    assert store.data["k"].value == "v"
    assert filed_in(store, LASTING) == ["k"]


def test_an_entry_that_gains_or_loses_its_expiry_moves_between_lasting_and_its_second() -> None:
    store = Store()
    store.write("k", 1, NEVER, 1, NOW)
    store.write("k", 2, NOW + 30.5, 2, NOW)
    store.write("k", 3, NEVER, 3, NOW)
    assert store._stale == 2  # the first LASTING reference and the one in NOW + 30
    store._compact_some(1 << 30)
    assert filed_in(store, LASTING) == ["k"] and filed_in(store, int(NOW + 30.5)) == []
    assert store._stale == 0


def test_compaction_keeps_the_entries_without_expiry_and_drops_their_stale_references() -> None:
    store = Store()
    for i in range(100):
        store.write(i, i, NEVER, i + 1, NOW)
    for i in range(50):
        store.delete(i, 1000 + i, NOW)
    for i in range(50, 60):  # rewritten with an expiry: their LASTING references go stale
        store.write(i, i, NOW + 30, 2000 + i, NOW)
    for i in range(60, 70):  # rewritten without one: they stay where they are filed
        store.write(i, -i, NEVER, 3000 + i, NOW)
    assert store._stale == 60
    store._compact_some(1 << 30)
    assert filed_in(store, LASTING) == list(range(60, 100))
    assert filed_in(store, int(NOW + 30)) == list(range(50, 60))
    assert store._stale == 0


def test_loaded_and_clear_surviving_entries_without_expiry_are_filed_under_lasting() -> None:
    store = Store()
    store.load(["a", "b"], [1, 2], [NEVER, NEVER], [1, 2], NOW)  # a chunk that never expires: one extend
    store.load(["c", "d"], [3, 4], [NEVER, NOW + 30], [10, 11], NOW)  # a mixed one: key by key
    assert filed_in(store, LASTING) == ["a", "b", "c"] and filed_in(store, int(NOW + 30)) == ["d"]
    store.clear(5)
    assert filed_in(store, LASTING) == ["c"] and filed_in(store, int(NOW + 30)) == ["d"]


# -- walking the entries -------------------------------------------------------------------


def walk_all(store: Store, n: int = 1000) -> list[Entry]:
    """What a walk of ``store`` yields, taken ``n`` at a time."""
    walk, taken = store.walk(), []
    while not walk.done:
        taken += walk.take(n)
    return taken


def rest_of(walk: Walk) -> list[Entry]:
    """What a walk yields from where it is to its end, a slice at a time (its iterator)."""
    return [entry for part in walk for entry in part]


def test_a_walk_yields_every_entry_latest_expiry_first_and_then_is_done() -> None:
    store = Store()
    store.write("soon", 1, NOW + 10, 1, NOW)
    store.write("never", 2, NEVER, 2, NOW)
    store.write("later", 3, NOW + 20, 3, NOW)
    assert [e.key for e in walk_all(store)] == ["never", "later", "soon"]
    assert walk_all(Store()) == []


def test_a_walk_skips_stale_references_looking_at_one_slice_per_take() -> None:
    store = Store()
    for i in range(3 * WALK_SLICE):  # filed in NOW + 20, then all but the last moved out of it
        store.write(i, i, NOW + 20, i + 1, NOW)
    for i in range(3 * WALK_SLICE - 1):
        store.write(i, i, NOW + 10, 10**6 + i, NOW)
    walk = store.walk()
    assert [walk.take(10) for _ in range(2)] == [[], []]  # a slice of stale references each, nothing found
    assert not walk.done
    assert [e.key for e in walk.take(10)] == [3 * WALK_SLICE - 1]
    rest = rest_of(walk)
    assert sorted(e.key for e in rest) == list(range(3 * WALK_SLICE - 1))


def test_a_bucket_compacted_under_a_walk_loses_none_of_its_entries() -> None:
    """A compaction that shrank the bucket in place moved keys below the walk's position."""
    store = Store()
    for i in range(4 * WALK_SLICE):
        store.write(i, i, NEVER, i + 1, NOW)
    walk = store.walk()
    first = walk.take(WALK_SLICE)
    for i in range(WALK_SLICE):  # the first slice's keys leave: stale references before the walk's position
        store.delete(i, 10**6 + i, NOW)
    store._compact_some(1 << 30)
    assert filed_in(store, LASTING) == list(range(WALK_SLICE, 4 * WALK_SLICE))
    assert sorted(e.key for e in first + rest_of(walk)) == list(range(4 * WALK_SLICE))


def test_a_walk_ends_though_writers_keep_filing_into_the_bucket_it_walks() -> None:
    store = Store()
    for i in range(2 * WALK_SLICE):
        store.write(i, i, NEVER, i + 1, NOW)
    walk, taken, version = store.walk(), [], 10**6
    while not walk.done:
        taken += walk.take(100)
        for _ in range(200):  # faster than the walk reads
            version += 1
            store.write(version, 0, NEVER, version, NOW)
    assert {e.key for e in taken} >= set(range(2 * WALK_SLICE))


WALK_KEYS = st.integers(0, 23)
WALK_TTLS = st.sampled_from([None, 0.5, 1.5, 30.0])  # None: no expiry
STEP_KINDS = ["write"] * 4 + ["delete", "load", "read", "sweep", "clear"] + ["compact", "walk"] * 2


@st.composite
def walk_steps(draw: st.DrawFn) -> tuple[str, Any]:
    kind = draw(st.sampled_from(STEP_KINDS))
    if kind == "write":
        return kind, (draw(WALK_KEYS), draw(WALK_TTLS))
    if kind == "load":
        return kind, (draw(st.lists(WALK_KEYS, min_size=1, max_size=4, unique=True)), draw(WALK_TTLS))
    if kind in ("delete", "read"):
        return kind, draw(WALK_KEYS)
    if kind == "sweep":
        return kind, (draw(st.sampled_from([0.0, 0.5, 1.0, 2.0])), draw(st.integers(1, 4)))
    if kind == "compact":
        return kind, draw(st.integers(1, 4))
    if kind == "clear":
        return kind, draw(st.floats(0.0, 1.0))
    return kind, draw(st.integers(1, 3))


@given(
    st.lists(walk_steps(), min_size=20, max_size=60),
    st.lists(walk_steps(), min_size=20, max_size=80),
    st.sampled_from([None, 4, 8]),
)
def test_a_walk_yields_every_entry_left_unchanged_while_it_ran_and_nothing_never_held(
    before: list[tuple[str, Any]], during: list[tuple[str, Any]], bound: int | None
) -> None:
    """Writes that move keys between buckets, deletes, expiry, sweeps that compact (tiny
    thresholds), evictions and clears, interleaved with the steps of a walk (tiny slices)."""
    with mock.patch.object(store_module, "WALK_SLICE", 2), mock.patch.object(store_module, "STALE_BACKSTOP", 0):
        store = Store(bound, tombstone_ttl=5.0)
        clock = {"now": NOW, "version": 0}
        ever: dict[int, Entry] = {}  # every entry the table held between two steps, by identity

        def step(kind: str, arg: Any) -> None:
            now = clock["now"]
            if kind == "write":
                key, ttl = arg
                clock["version"] += 1
                store.write(key, clock["version"], NEVER if ttl is None else now + ttl, clock["version"], now)
            elif kind == "load":
                keys, ttl = arg
                versions = [clock["version"] + 1 + i for i in range(len(keys))]
                clock["version"] += len(keys)
                expires = [NEVER if ttl is None else now + ttl] * len(keys)
                store.load(keys, versions, expires, versions, now)
            elif kind == "delete":
                clock["version"] += 1
                store.delete(arg, clock["version"], now)
            elif kind == "read":
                store.live(arg, now)  # an expired entry goes on the way
            elif kind == "sweep":
                clock["now"] += arg[0]
                store.sweep(clock["now"], arg[1])
            elif kind == "compact":  # a step of a compaction pass, as sweep runs one
                store._compact_some(arg)
            elif kind == "clear":  # entries newer than the clear survive it
                low = store.watermark + 1
                if clock["version"] >= low:
                    store.clear(low + int(arg * (clock["version"] - low)))
            ever.update((id(e), e) for e in store.data.values())

        for kind, arg in before:
            if kind != "walk":
                step(kind, arg)
        walk = store.walk()
        start = dict(store.data)
        unchanged = set(start)
        taken: list[Entry] = []
        for kind, arg in during:
            if kind == "walk":
                taken += walk.take(arg)
            else:
                step(kind, arg)
            unchanged = {k for k in unchanged if store.data.get(k) is start[k]}
        for _ in range(10_000):
            if walk.done:
                break
            taken += walk.take(3)
        assert walk.done, "the walk ended"
        got = {id(e) for e in taken}
        missed = [start[k] for k in unchanged if id(start[k]) not in got]
        assert not missed
        assert all(ever.get(id(e)) is e for e in taken)


# -- what the store keeps alive ----------------------------------------------------------


def test_a_replaced_or_deleted_entry_is_referenced_by_nothing_in_the_store() -> None:
    store = Store(max_entries=10, tombstone_ttl=60)
    store.write("k", "v1", NOW + 30, 1, NOW)
    old = store.data["k"]
    store.write("k", "v2", NOW + 31, 2, NOW)  # queue and wheel still name "k", not the old entry
    assert sys.getrefcount(old) == 2  # ours and getrefcount's argument
    gone = store.data["k"]
    store.delete("k", 3, NOW)
    assert sys.getrefcount(gone) == 2


BOUNDED_OP = st.one_of(
    st.tuples(st.just(WRITE), st.integers(0, 15), st.sampled_from([NEVER, NOW + 30, NOW + 31.5])),
    st.tuples(st.just(DELETE), st.integers(0, 15), st.just(NEVER)),
)


@given(st.lists(BOUNDED_OP, max_size=80), st.integers(1, 6))
def test_a_bounded_store_keeps_its_queues_and_wheel_consistent_with_its_table(ops: list[Any], bound: int) -> None:
    store = Store(bound, tombstone_ttl=60)
    for version, (kind, key, expires) in enumerate(ops, start=1):
        if kind == WRITE:
            store.write(key, version, expires, version, NOW)
        else:
            store.delete(key, version, NOW)
        assert len(store) <= bound
    policy = store.policy
    assert policy is not None
    live = policy._small_live + policy._main_live  # type: ignore[attr-defined]
    assert live == len(store)
    queued = set(policy._small) | set(policy._main)  # type: ignore[attr-defined]
    assert set(store.data) <= queued
    filed = {k for bucket in store._wheel.values() for k in bucket}
    assert set(store.data) <= filed  # every entry, one without expiry too (under LASTING)
    assert count_live(store, NOW + 31) == sum(1 for e in store.data.values() if e > NOW + 31)
    victims = []
    while (victim := policy.victim()) is not None:  # every live entry comes out exactly once
        victims.append(victim.key)
    assert sorted(victims) == sorted(store.data)


def test_a_large_bucket_is_compacted_in_bounded_steps() -> None:
    store = Store()
    for i in range(40_000):  # one bucket of 40k keys...
        store.write(i, i, NOW + 100.5, i + 1, NOW)
    for i in range(40_000):  # ...all rewritten to expire in another second: 40k stale references
        store.write(i, i, NOW + 200.5, 100_000 + i, NOW)
    steps = []
    while store._stale:
        steps.append(store._compact_some(100))
    assert max(steps) <= 40_000 // 8 + 1  # no single call examined the whole bucket
    assert store._wheel[int(NOW + 100.5)] == []
    assert sorted(store._wheel[int(NOW + 200.5)]) == list(range(40_000))


# -- tombstones are bounded (issue 20, row 10) ----------------------------------------------


def test_a_million_deletes_of_absent_keys_keep_at_most_max_entries_tombstones() -> None:
    """Row 10: 1M deletes of absent keys kept 1M tombstones for 600 s (+320 MB) in a 1,000-entry cache."""
    store = Store(max_entries=1000, tombstone_ttl=600.0)
    for i in range(1_000_000):
        store.delete(f"absent-{i}", i + 1, NOW)
    assert len(store.tombstones) <= 1024 and len(store._tomb_queue) <= 1024
    assert store.tombstones_dropped == 1_000_000 - len(store.tombstones)
    # No dropped tombstone lets an older write back, and a newer write still lands.
    assert not store.write("absent-5", "old", NEVER, 6, NOW)
    assert "absent-5" not in store.data
    assert store.write("absent-5", "new", NEVER, 2_000_000, NOW)


def test_tombstones_are_bounded_in_bytes_counting_their_keys() -> None:
    store = Store(tombstone_ttl=600.0, tombstone_bytes=1024 * 1024)
    for i in range(10_000):
        store.delete(f"{i:04096d}", i + 1, NOW)  # 4 KiB keys
    assert len(store.tombstones) * 4096 <= 1024 * 1024
    assert not store.write(f"{7:04096d}", "old", NEVER, 1, NOW)


def bounded_histories() -> st.SearchStrategy[list[tuple[str, Any, int, float]]]:
    step = st.tuples(
        st.sampled_from(["write", "delete", "clear", "tick"]),
        st.integers(0, 12),  # few keys: tombstones are dropped and keys come back often
        st.integers(1, 60),  # versions: late (older) writes are common
        st.sampled_from([NEVER, NOW + 5, NOW + 50]),
    )
    return st.lists(step, max_size=80)


@given(bounded_histories(), st.integers(1, 4))
def test_a_store_with_few_tombstones_never_holds_a_key_the_unbounded_store_deleted(
    history: list[tuple[str, Any, int, float]], cap: int
) -> None:
    """Against the model with no bound: what the bounded store holds, the unbounded one holds too."""
    bounded = Store(tombstone_ttl=30.0, max_tombstones=cap)
    unbounded = Store(tombstone_ttl=30.0, max_tombstones=10**9)
    now = NOW
    for kind, key, version, expires in history:
        for store in (bounded, unbounded):
            if kind == "write":
                store.write(key, f"v{version}", expires, version, now)
            elif kind == "delete":
                store.delete(key, version, now)
            elif kind == "clear":
                store.clear(version // 4)
            else:
                store.sweep(now + 1)
        if kind == "tick":
            now += 10
        assert len(bounded.tombstones) <= cap
        for k in range(13):
            held = bounded.live(k, now)
            model = unbounded.live(k, now)
            assert held is None or (model is not None and (held.value, held.version) == (model.value, model.version))


def _traced_bytes_of_writes(store: Store, items: list[tuple[str, Any]]) -> int:
    import tracemalloc

    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i, (key, value) in enumerate(items):
            store.write(key, value, 1e12 + i // 1000, (1 << 80) + i, 0.0)
        return tracemalloc.get_traced_memory()[0] - before + sum(sys.getsizeof(k) for k, _ in items)
    finally:
        tracemalloc.stop()


def test_approx_bytes_of_string_entries_is_within_a_fifth_of_what_tracemalloc_measures() -> None:
    store = Store()
    assert store.approx_bytes() == 0
    items = [(f"user:{i:08d}", f"acct-{i:010d}") for i in range(20_000)]
    measured = _traced_bytes_of_writes(store, items) + sum(sys.getsizeof(v) for _, v in items)
    assert 0.8 * measured < store.approx_bytes() < 1.2 * measured


def test_approx_bytes_counts_what_a_value_holds_but_walks_a_bounded_part_of_it() -> None:
    small, nested = Store(), Store()
    small.write("k", [1], NEVER, 1, 0.0)
    nested.write("k", [["x" * 1000] * 3], NEVER, 1, 0.0)
    assert nested.approx_bytes() > small.approx_bytes() + 3000  # the strings inside the inner list
    huge = Store()
    huge.write("k", [[i] for i in range(100_000)], NEVER, 1, 0.0)
    # the outer list's pointers and 64 of the million inner objects, not all of them
    assert huge.approx_bytes() < sys.getsizeof(huge.data["k"].value) + 64 * 100 + 10_000
