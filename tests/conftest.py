"""Shared fixtures: a wall clock the test moves by hand, so expiry needs no sleeping."""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import Any

import pytest
from hypothesis import settings

from shoal.cache import Cache, Replica, hosted
from shoal.clock import HybridClock

# No per-example deadline: these machines are shared and noisy, and a test never asserts on time.
settings.register_profile("shoal", deadline=None)
settings.load_profile("shoal")

START = 1_700_000_000.0


class FakeClock:
    """A stand-in for ``time.time``: returns ``now`` until the test moves it.

    Steps used by the tests are binary fractions (0.25, 0.5, ...) so that
    ``now + ttl`` computed by the cache and by a test are the same float.
    """

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def set(self, now: float) -> None:
        """Jump to any time, backwards included (a wall clock stepped by NTP)."""
        self.now = now


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


def hosted_cache(
    timer: FakeClock, node_id: int = 1, *, ttl: float | None = None, tombstone_ttl: float = 600.0
) -> tuple[Cache, Replica]:
    """A cache as a Node hosts it (its own clock id, tombstones kept) and its protocol-side view."""
    return hosted(
        "c", ttl, None, serializer=None, clock=HybridClock(node_id, timer), tombstone_ttl=tombstone_ttl, timer=timer
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    """Under CI=true a test that cannot run fails instead of skipping: a green CI means every test ran."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("CI") == "true" and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, which must run every test: {reason}"
