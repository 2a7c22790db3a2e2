"""Bounds a stranger or a peer cannot push past: log lines, failing rounds, jobs per peer, frame bytes."""

from __future__ import annotations

import asyncio
import logging

import pytest
from conftest import FakeClock
from hypothesis import given
from hypothesis import strategies as st

from shoal.limits import LogLimiter, PeerQuota, Supervisor, spans

log = logging.getLogger("shoal.test")


def test_a_flood_of_events_writes_a_burst_then_one_count_per_window(
    caplog: pytest.LogCaptureFixture, fake_clock: FakeClock
) -> None:
    """Finding: one log line per timed-out stranger, 11,170 lines in 25 s."""
    caplog.set_level(logging.INFO, logger="shoal.test")
    limiter = LogLimiter(log, burst=3, interval=10.0, clock=fake_clock)
    for i in range(10_000):
        limiter.log(logging.WARNING, "stranger %d refused", i)
    assert [r.getMessage() for r in caplog.records] == [f"stranger {i} refused" for i in range(3)]
    fake_clock.advance(10)
    limiter.log(logging.WARNING, "stranger %d refused", 10_000)
    assert [r.getMessage() for r in caplog.records[3:]] == [
        "9997 more like the last were not logged in 10 s",
        "stranger 10000 refused",
    ]


def test_a_failing_round_is_logged_with_its_traceback_and_the_next_round_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    supervisor = Supervisor("the ticker", log, FakeClock(0.0))
    results = []

    def poisoned() -> None:
        raise OverflowError("cannot convert float infinity to integer")

    for round_ in (poisoned, lambda: results.append(1), poisoned, lambda: results.append(2)):
        supervisor.run(round_)
    assert results == [1, 2] and supervisor.failures == 2
    failed = [r for r in caplog.records if "a round of the ticker failed" in r.getMessage()]
    assert len(failed) == 2 and all(r.exc_info is not None for r in failed)


def test_cancellation_is_not_swallowed_by_supervision() -> None:
    def cancelled() -> None:
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        Supervisor("x", log, FakeClock(0.0)).run(cancelled)


def test_a_peer_gets_its_quota_and_no_more_and_others_are_unaffected() -> None:
    quota = PeerQuota(2)
    assert [quota.take(1) for _ in range(4)] == [True, True, False, False]
    assert quota.take(2)
    quota.give(1)
    assert quota.take(1) and not quota.take(1)
    quota.give(1)
    quota.give(1)
    assert quota.held(1) == 0


@given(st.lists(st.integers(0, 5000), max_size=300), st.integers(1, 8000), st.integers(1, 50))
def test_spans_cover_every_item_in_order_within_both_bounds(sizes: list[int], max_bytes: int, max_items: int) -> None:
    cut = list(spans(sizes, max_bytes, max_items))
    assert [i for a, b in cut for i in range(a, b)] == list(range(len(sizes)))
    for a, b in cut:
        assert 0 < b - a <= max_items
        assert sum(sizes[a:b]) <= max_bytes or b - a == 1


def test_values_of_8_kb_make_chunks_far_below_the_frame_limit() -> None:
    """Finding: 2,000 values of 8 KB made a dump chunk over the 16 MiB frame limit."""
    cut = list(spans([8 * 1024 + 40] * 10_000, 4 * 1024 * 1024, 2000))
    assert max(b - a for a, b in cut) == (4 * 1024 * 1024) // (8 * 1024 + 40)


def test_a_limiter_without_a_clock_keeps_its_windows_on_the_time_each_call_gives_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The protocol core reads no clock: its limiter (one per member) is given the member's time."""
    caplog.set_level(logging.INFO, logger="shoal.test")
    limiter = LogLimiter(log, burst=2, interval=60.0)
    written = [limiter.log(logging.ERROR, "scan %d failed", i, now=1000.0 + i) for i in range(5)]
    assert written == [True, True, False, False, False]
    assert limiter.log(logging.ERROR, "scan %d failed", 5, now=1060.0)
    assert [r.getMessage() for r in caplog.records][-2:] == [
        "3 more like the last were not logged in 60 s",
        "scan 5 failed",
    ]
    with pytest.raises(TypeError, match="given now"):
        limiter.log(logging.ERROR, "no time")
