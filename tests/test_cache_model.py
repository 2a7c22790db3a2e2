"""shoal.Cache against a plain dict model, driven by hypothesis through random histories."""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

import pytest
from conftest import FakeClock
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from shoal import DEFAULT, Cache

CACHE_TTL = 2.0
KEYS = st.sampled_from(["a", "b", b"a", 1, 2])
VALUES = st.one_of(st.none(), st.integers(-3, 3), st.text(max_size=3), st.lists(st.integers(0, 2), max_size=2))
# Binary fractions only, so the model's ``now + ttl`` is the cache's float exactly.
TTLS = st.sampled_from([None, DEFAULT, 0, 0.25, 1.0, 3.5, timedelta(seconds=1.5)])
STEPS = st.sampled_from([0.25, 0.5, 1.0, 2.0])


def seconds(ttl: Any) -> float | None:
    if ttl is DEFAULT:
        return CACHE_TTL
    if isinstance(ttl, timedelta):
        return ttl.total_seconds()
    return ttl  # type: ignore[no-any-return]


class CacheMatchesModel(RuleBasedStateMachine):
    """Model: key -> (value, absolute expiry); a key is live while expiry > now."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.cache = Cache(ttl=CACHE_TTL, max_entries=None, timer=self.clock)
        self.model: dict[Any, tuple[Any, float]] = {}

    def expiry(self, ttl: Any) -> float:
        s = seconds(ttl)
        return math.inf if s is None else self.clock.now + s

    def live(self) -> dict[Any, Any]:
        now = self.clock.now
        return {k: v for k, (v, expires) in self.model.items() if expires > now}

    @rule(key=KEYS, value=VALUES, ttl=TTLS)
    def set(self, key: Any, value: Any, ttl: Any) -> None:
        self.cache.set(key, value, ttl=ttl)
        self.model[key] = (value, self.expiry(ttl))

    @rule(key=KEYS, value=VALUES, ttl=TTLS)
    def add(self, key: Any, value: Any, ttl: Any) -> None:
        expected = key not in self.live()
        assert self.cache.add(key, value, ttl=ttl) is expected
        if expected:
            self.model[key] = (value, self.expiry(ttl))

    @rule(key=KEYS)
    def get(self, key: Any) -> None:
        marker = object()
        assert self.cache.get(key, marker) == self.live().get(key, marker)

    @rule(keys=st.lists(KEYS, max_size=4))
    def get_many(self, keys: list[Any]) -> None:
        live = self.live()
        assert self.cache.get_many(keys) == {k: live[k] for k in keys if k in live}

    @rule(key=KEYS)
    def delete(self, key: Any) -> None:
        expected = key in self.live()
        assert self.cache.delete(key) is expected
        self.model.pop(key, None)

    @rule(key=KEYS, ttl=TTLS)
    def touch(self, key: Any, ttl: Any) -> None:
        live = self.live()
        expected = key in live
        assert self.cache.touch(key, ttl=ttl) is expected
        if expected:
            self.model[key] = (live[key], self.expiry(ttl))

    @rule(key=KEYS)
    def ttl(self, key: Any) -> None:
        if key not in self.live():
            with pytest.raises(KeyError):
                self.cache.ttl(key)
            return
        expires = self.model[key][1]
        left = self.cache.ttl(key)
        if math.isinf(expires):
            assert left is None
        else:
            assert left == pytest.approx(expires - self.clock.now)

    @precondition(lambda self: self.model)
    @rule()
    def clear(self) -> None:
        self.cache.clear()
        self.model.clear()

    @rule(step=STEPS)
    def advance_time(self, step: float) -> None:
        self.clock.advance(step)

    @rule()
    def sweep(self) -> None:
        self.cache._store.sweep(self.clock())

    @invariant()
    def reads_agree_with_the_model(self) -> None:
        live = self.live()
        assert len(self.cache.keys()) == len(live)
        assert len(self.cache) >= len(live)  # O(1): expired entries count until swept
        assert set(self.cache.keys()) == set(live)
        assert dict(self.cache.items()) == live
        for key in ("a", "b", b"a", 1, 2):
            assert (key in self.cache) == (key in live)


CacheMatchesModel.TestCase.settings = settings(max_examples=120, stateful_step_count=40, deadline=None)
test_cache_matches_a_dict_model = CacheMatchesModel.TestCase


MAX_ENTRIES = 4


class BoundedCacheInvariants(RuleBasedStateMachine):
    """With eviction the contents are the policy's choice; these hold whatever it chooses."""

    @initialize()
    def start(self) -> None:
        self.clock = FakeClock()
        self.cache = Cache(ttl=CACHE_TTL, max_entries=MAX_ENTRIES, timer=self.clock)
        self.last: dict[Any, tuple[Any, float]] = {}  # key -> last value written, its expiry
        self.sets = 0

    def record(self, key: Any, value: Any, ttl: Any) -> None:
        s = seconds(ttl)
        self.last[key] = (value, math.inf if s is None else self.clock.now + s)

    @rule(key=st.integers(0, 9), value=st.integers(-1000, 1000), ttl=TTLS)
    def set(self, key: int, value: int, ttl: Any) -> None:
        self.cache.set(key, value, ttl=ttl)
        self.record(key, value, ttl)
        self.sets += 1

    @rule(key=st.integers(0, 9), value=st.integers(-1000, 1000), ttl=TTLS)
    def add(self, key: int, value: int, ttl: Any) -> None:
        if self.cache.add(key, value, ttl=ttl):
            self.record(key, value, ttl)
            self.sets += 1

    @rule(key=st.integers(0, 9))
    def get(self, key: int) -> None:
        self.cache.get(key)

    @rule(key=st.integers(0, 9))
    def delete(self, key: int) -> None:
        self.cache.delete(key)
        self.last.pop(key, None)

    @rule()
    def clear(self) -> None:
        self.cache.clear()
        self.last.clear()

    @rule(step=STEPS)
    def advance_time(self, step: float) -> None:
        self.clock.advance(step)

    @invariant()
    def never_more_than_max_entries(self) -> None:
        assert len(self.cache) <= MAX_ENTRIES
        assert self.cache.stats()["entries"] <= MAX_ENTRIES

    @invariant()
    def every_key_present_returns_the_last_value_written_for_it(self) -> None:
        now = self.clock.now
        for key, value in self.cache.items():
            assert key in self.last
            written, expires = self.last[key]
            assert value == written
            assert expires > now
            assert self.cache.get(key, object()) == written

    @invariant()
    def every_set_is_counted(self) -> None:
        assert self.cache.stats()["sets"] == self.sets


BoundedCacheInvariants.TestCase.settings = settings(max_examples=100, stateful_step_count=50, deadline=None)
test_bounded_cache_keeps_its_invariants = BoundedCacheInvariants.TestCase
