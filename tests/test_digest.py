"""Digests kept as writes apply (digest.Ledger) against the scan every peer computes."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal import digest as digest_module
from shoal.digest import BUCKETS, FOLD_SLICE, READ_BACKLOG, RECENT_MAX, RIPE, Behind, Ledger, digests, horizon_of
from shoal.store import FOLD_BACKSTOP, Store

NODE_BITS = 64
T0 = 1_700_000_000.0


def version(ms: int, counter: int, node: int) -> int:
    return horizon_of(ms) | (counter << NODE_BITS) | node


keys = st.sampled_from([f"k{i}" for i in range(12)] + [b"k1", 7, -3])
expiry = st.one_of(st.just(math.inf), st.floats(-2.0, 12.0))  # seconds from now
# How long ago a write was stamped (negative: a peer ahead of us); whole seconds land on a round's line.
age_ms = st.one_of(st.sampled_from([1000, 2000, 3000]), st.integers(-900, 12_000))

op = st.one_of(
    st.tuples(st.just("write"), keys, expiry, age_ms, st.integers(0, 3), st.integers(0, 3)),
    st.tuples(st.just("delete"), keys, age_ms, st.integers(1, 3)),
    st.tuples(st.just("load"), st.lists(st.tuples(keys, expiry, age_ms), max_size=6)),
    st.tuples(st.just("tick"), st.floats(0.0, 3.0), st.integers(1, 50)),  # time passes; the node sweeps
    st.tuples(st.just("clear"), age_ms),
)


@settings(max_examples=300, deadline=None)
@given(
    ops=st.lists(op, max_size=60),
    bound=st.sampled_from([None, 3, 8]),
    lines=st.lists(st.one_of(st.sampled_from([1.0, 2.0, 3.0]), st.floats(1.0, 4.0)), min_size=1),
    segment=st.sampled_from([1, 2, 3, 5, digest_module.SEGMENT]),  # small: every queue crosses segments
)
def test_digests_kept_as_writes_apply_equal_the_scan_of_the_same_entries(
    ops: list[tuple], bound: int | None, lines: list[float], segment: int
) -> None:
    saved, digest_module.SEGMENT = digest_module.SEGMENT, segment
    try:
        _check_kept_digests_against_the_scan(ops, bound, lines)
    finally:
        digest_module.SEGMENT = saved


def _check_kept_digests_against_the_scan(ops: list[tuple], bound: int | None, lines: list[float]) -> None:
    store = Store(bound, tombstone_ttl=5.0)
    store.keep_digests()
    wall = T0

    def stamp(age: int, counter: int = 0, node: int = 1) -> int:
        return version(int(wall * 1000) - age, counter, node)

    for step in ops:
        kind = step[0]
        if kind == "write":
            _, key, exp, age, counter, node = step
            store.write(key, "v", wall + exp, stamp(age, counter, node), wall)
        elif kind == "delete":
            _, key, age, node = step
            store.delete(key, stamp(age, 0, node), wall)
        elif kind == "load":
            rows = step[1]
            store.load(
                [k for k, _, _ in rows],
                ["v"] * len(rows),
                [wall + e for _, e, _ in rows],
                [stamp(a) for *_, a in rows],
                wall,
            )
        elif kind == "tick":
            wall += step[1]
            store.sweep(wall, step[2])
        else:
            store.clear(stamp(step[1]))
        for back in lines:  # our own line (SETTLE back) and a peer's, further back
            horizon = horizon_of(int((wall - back) * 1000))
            kept = store.digests(wall, horizon)
            assert kept is not None  # a line within the window never needs a scan
            assert kept == digests(store.entries(), wall, horizon)


def test_a_line_older_than_the_window_is_left_to_a_scan_and_a_newer_one_is_answered() -> None:
    store = Store(None, tombstone_ttl=5.0)
    store.keep_digests()
    ms = int(T0 * 1000)
    for i in range(100):
        store.write(f"k{i}", i, T0 + 60, version(ms - i * 30, 0, 1), T0)
    later = T0 + 10
    store.write("late", 0, T0 + 60, version(ms + 10_000, 0, 1), later)
    store.sweep(later)
    later += 1.5
    store.sweep(later)  # folds what waited a second (RIPE): the first hundred leave the window
    behind = horizon_of(ms)  # at or below the newest version that left it
    assert store.digests(later, behind) is None
    line = horizon_of(int((later - 1.0) * 1000))
    assert store.digests(later, line) == digests(store.entries(), later, line)
    store.write("fresh", 0, later + 60, version(int(later * 1000), 0, 1), later)
    store.sweep(later)
    later += 1.2
    store.sweep(later)  # folded, and still past the next round's line: it stays out, exactly
    line = horizon_of(int((later - 1.0) * 1000))
    kept = store.digests(later, line)
    assert kept is not None and kept == digests(store.entries(), later, line)


def test_a_burst_over_the_recent_bound_falls_back_to_a_scan_for_older_lines_only() -> None:
    class E(float):
        __slots__ = ("key", "version")

    entries = []
    for i in range(RECENT_MAX + 10):
        e = E(math.inf)
        e.key, e.version = f"k{i}", version(int(T0 * 1000) + i // 1000, i % 1000, 1)
        entries.append(e)
    table = {e.key: e for e in entries}
    ledger = Ledger(table)
    while ledger.pending:
        ledger.fold(T0, 1 << 20, ripe=0.0)
    assert len(ledger.recent_versions) == len(ledger.recent_keys) == RECENT_MAX
    newest_dropped = entries[9].version  # the ten oldest went
    assert ledger.read(lambda wall: [], T0, newest_dropped) is None
    newer = ledger.read(lambda wall: [], T0, newest_dropped + 1)
    assert newer == digests(entries, T0, newest_dropped + 1)
    assert newer is not None and len(newer) == BUCKETS


def test_writes_leave_their_digest_work_to_the_tick_and_a_store_nobody_sweeps_stays_bounded() -> None:
    store = Store(None, tombstone_ttl=0)
    store.keep_digests()
    for i in range(FOLD_BACKSTOP + 50_000):
        store.write("hot", i, math.inf, version(int(T0 * 1000), i, 1), T0)
    ledger = store._ledger
    assert ledger is not None
    assert ledger.removals_pending() <= FOLD_BACKSTOP  # each a replaced entry kept alive until folded
    assert ledger.additions_pending() <= FOLD_BACKSTOP + 1
    later, line = T0 + 10, horizon_of(int((T0 + 9) * 1000))
    with pytest.raises(Behind):  # more ripe records than a read hashes: the node's tick folds them first
        store.digests(later, line)
    sweeps = 0
    while ledger.backlog > READ_BACKLOG or not sweeps:
        store.sweep(later)
        sweeps += 1
    assert store.digests(later, line) == digests(store.entries(), later, line)


def test_a_store_keeps_its_digests_once_it_holds_enough_entries_and_scans_before() -> None:
    store = Store(None, tombstone_ttl=5.0)
    store.keep_digests(5)
    line = horizon_of(int((T0 + 10 - 1.0) * 1000))
    for i in range(4):
        store.write(f"k{i}", i, math.inf, version(int(T0 * 1000), i, 1), T0)
    assert store.digests(T0 + 10, line) is None  # small: a round scans, as before
    store.write("k4", 4, math.inf, version(int(T0 * 1000), 4, 1), T0)
    assert store.digests(T0 + 10, line) == digests(store.entries(), T0 + 10, line)


def test_a_ledger_with_more_ripe_records_than_a_fold_takes_says_it_is_behind_until_they_are_folded() -> None:
    store = Store(None, tombstone_ttl=5.0)
    store.keep_digests()
    n = 3 * FOLD_SLICE + 5  # a warm boot's chunks, many slices' worth
    ms = int(T0 * 1000)
    store.load([f"k{i}" for i in range(n)], ["v"] * n, [T0 + 60] * n, [version(ms, i, 1) for i in range(n)], T0)
    store.sweep(T0)
    assert not store.digests_behind  # nothing is ripe yet: no reason to tick faster
    later = T0 + RIPE + 0.5
    sweeps = 0
    while True:
        store.sweep(later)
        sweeps += 1
        if not store.digests_behind:
            break
        assert sweeps < 10, "never caught up"
    assert sweeps == 4  # three full slices, then the rest
    line = horizon_of(int((later - 1.0) * 1000))
    assert store.digests(later, line) == digests(store.entries(), later, line)
    store.write("fresh", "v", T0 + 60, version(int(later * 1000), 0, 1), later)
    store.sweep(later)
    assert not store.digests_behind  # one unripe write: the tick's own pace is enough


def test_a_read_waits_while_the_tick_has_more_ripe_records_to_fold_than_it_would_hash() -> None:
    """A read hashes each settled record not folded yet, as a fold does (about 2 us each): a round
    opened with 130,000 of them held the loop 300 ms. Past ``READ_BACKLOG`` it waits instead."""
    store = Store(None, tombstone_ttl=5.0)
    store.keep_digests()
    n = READ_BACKLOG + 3 * FOLD_SLICE
    ms = int(T0 * 1000)
    store.load([f"k{i}" for i in range(n)], ["v"] * n, [T0 + 60] * n, [version(ms, i, 1) for i in range(n)], T0)
    store.sweep(T0)
    later = T0 + RIPE + 0.5
    line = horizon_of(int((later - 1.0) * 1000))
    store.sweep(later)  # one slice folded: the rest is a backlog over the bound
    ledger = store._ledger
    assert ledger is not None and ledger.backlog > READ_BACKLOG
    with pytest.raises(Behind):
        store.digests(later, line)
    while ledger.backlog > READ_BACKLOG:
        store.sweep(later)
    assert ledger.backlog > 0  # some left, within the bound: taken into account by the read
    assert store.digests(later, line) == digests(store.entries(), later, line)


def test_an_entry_newer_than_the_line_that_expired_before_it_was_folded_is_not_taken_out_of_the_sums() -> None:
    """It was never added to them: the correction for expired entries still held leaves it alone."""
    store = Store(None, tombstone_ttl=5.0)
    store.keep_digests()
    ms = int(T0 * 1000)
    store.write("lasting", "v", T0 + 60, version(ms - 5000, 0, 1), T0)
    store.write("brief", "v", T0 + 0.2, version(ms - 100, 0, 1), T0)
    later = T0 + 0.5  # "brief" has expired, unfolded (not ripe) and unswept (its second is not over)
    line = horizon_of(int((later - 1.0) * 1000))
    assert store.digests(later, line) == digests(store.entries(), later, line)
