"""Shared fixtures: a wall clock the test moves by hand, so expiry needs no sleeping."""

from __future__ import annotations

import pytest

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
