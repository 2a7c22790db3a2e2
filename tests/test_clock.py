"""Hybrid logical clock: versions order writes even when the wall clock does not help."""

from __future__ import annotations

import itertools
import threading

import pytest
from conftest import FakeClock, hosted_cache

from shoal.clock import COUNTER_BITS, NODE_BITS, NODE_MASK, HybridClock, version_ms


def make_version(hlc: int, node_id: int) -> int:
    return (hlc << NODE_BITS) | node_id


def version_hlc(version: int) -> int:
    return version >> NODE_BITS


def version_node(version: int) -> int:
    return version & NODE_MASK


def test_versions_strictly_increase_while_the_wall_clock_is_frozen(fake_clock: FakeClock) -> None:
    clock = HybridClock(7, wall=fake_clock)
    versions = [clock.stamp() for _ in range(1000)]
    assert all(a < b for a, b in itertools.pairwise(versions))


def test_versions_strictly_increase_when_the_wall_clock_steps_backwards(fake_clock: FakeClock) -> None:
    clock = HybridClock(7, wall=fake_clock)
    before = clock.stamp()
    fake_clock.set(fake_clock.now - 3600)
    after = [clock.stamp() for _ in range(10)]
    assert before < after[0]
    assert all(a < b for a, b in itertools.pairwise(after))


def test_versions_follow_the_wall_clock_when_it_moves_forward(fake_clock: FakeClock) -> None:
    clock = HybridClock(7, wall=fake_clock)
    for _ in range(5):
        clock.stamp()  # the counter has moved past this millisecond
    fake_clock.advance(2.0)
    version = clock.stamp()
    assert version_ms(version) == int(fake_clock.now * 1000)
    assert version_hlc(version) & ((1 << COUNTER_BITS) - 1) == 0  # a fresh millisecond, counter reset


def test_version_ms_is_the_wall_clock_millisecond_of_the_stamp(fake_clock: FakeClock) -> None:
    fake_clock.set(1_700_000_123.456)
    version = HybridClock(3, wall=fake_clock).stamp()
    assert version_ms(version) == int(1_700_000_123.456 * 1000)
    assert version_node(version) == 3


def test_observe_moves_the_next_stamp_past_a_remote_version(fake_clock: FakeClock) -> None:
    ours = HybridClock(1, wall=fake_clock)
    ahead = FakeClock(fake_clock.now + 0.5)  # a peer whose clock runs ahead, within max_skew
    theirs = HybridClock(2, wall=ahead)
    remote = theirs.stamp()
    assert ours.stamp() < remote
    ours.observe(remote)
    assert ours.stamp() > remote


def test_observe_moves_past_a_remote_version_even_from_a_larger_node_id(fake_clock: FakeClock) -> None:
    ours = HybridClock(1, wall=fake_clock)
    remote = make_version(version_hlc(ours.stamp()) + 5, NODE_MASK)
    ours.observe(remote)
    assert ours.stamp() > remote


def test_observing_an_older_version_does_not_move_the_clock_back(fake_clock: FakeClock) -> None:
    clock = HybridClock(1, wall=fake_clock)
    last = clock.stamp()
    clock.observe(make_version(1, 9))
    assert clock.stamp() > last


def test_node_id_breaks_ties_between_writes_stamped_in_the_same_millisecond(fake_clock: FakeClock) -> None:
    low, high = HybridClock(1, wall=fake_clock), HybridClock(2, wall=fake_clock)
    a, b = low.stamp(), high.stamp()
    assert version_hlc(a) == version_hlc(b)
    assert a < b
    assert (version_node(a), version_node(b)) == (1, 2)


def test_a_version_stamped_past_now_outranks_every_version_any_member_stamps_in_this_millisecond(
    fake_clock: FakeClock,
) -> None:
    busy, other = HybridClock(NODE_MASK, wall=fake_clock), HybridClock(1, wall=fake_clock)
    stamped = [busy.stamp() for _ in range(1000)]  # a member that stamped a lot in this millisecond
    past = other.stamp_past()
    assert past > max(stamped)
    fake_clock.advance(0.001)
    assert busy.stamp() > past  # the next millisecond outranks it again


def test_stamping_past_now_does_not_move_the_clock_ahead(fake_clock: FakeClock) -> None:
    clock = HybridClock(1, wall=fake_clock)
    past = clock.stamp_past()
    later = clock.stamp()
    assert later < past  # else this member's next reads would outrank the others' announcements
    assert version_ms(later) == int(fake_clock.now * 1000)


@pytest.mark.parametrize("node_id", [-1, NODE_MASK + 1])
def test_node_id_must_fit_in_64_unsigned_bits(node_id: int) -> None:
    with pytest.raises(ValueError):
        HybridClock(node_id, lambda: 0.0)


def test_concurrent_writers_to_one_cache_get_distinct_increasing_versions(fake_clock: FakeClock) -> None:
    # The clock itself is not locked: the cache calls it under its write lock.
    cache, replica = hosted_cache(fake_clock, 5)
    results: list[list[int]] = [[] for _ in range(8)]
    start = threading.Barrier(8)
    local = threading.local()
    replica.connect(lambda op: local.out.append(op[4]))

    def work(out: list[int]) -> None:
        local.out = out
        start.wait()
        for i in range(2000):
            cache.set(f"k{i}", i)

    threads = [threading.Thread(target=work, args=(out,)) for out in results]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stamped = [v for out in results for v in out]
    assert len(set(stamped)) == len(stamped) == 16_000
    assert all(a < b for out in results for a, b in itertools.pairwise(out))
