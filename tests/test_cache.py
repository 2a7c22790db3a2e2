"""shoal.Cache as a caller sees it: every public method, its async twin, loads and replication."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import msgpack
import pytest
from conftest import FakeClock, hosted_cache
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal import DEFAULT, Cache
from shoal.store import CLEAR, DELETE, NEVER, WRITE


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll a condition another thread will make true; fail rather than hang."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.001)


@pytest.fixture
def cache(fake_clock: FakeClock) -> Cache:
    return Cache(ttl=10, timer=fake_clock)


# -- get / set / add / delete -------------------------------------------------------------


def test_get_returns_what_set_stored_and_the_default_on_a_miss(cache: Cache) -> None:
    cache.set("k", {"a": [1, 2]})
    assert cache.get("k") == {"a": [1, 2]}
    assert cache.get("absent") is None
    assert cache.get("absent", "fallback") == "fallback"


def test_keys_may_be_str_bytes_or_int_and_are_distinct(cache: Cache) -> None:
    cache.set("1", "str")
    cache.set(b"1", "bytes")
    cache.set(1, "int")
    assert (cache.get("1"), cache.get(b"1"), cache.get(1)) == ("str", "bytes", "int")


def test_a_stored_none_is_a_hit_not_a_miss(cache: Cache) -> None:
    cache.set("k", None)
    assert cache.get("k", "default") is None
    assert "k" in cache
    assert cache.stats()["hits"] == 1


def test_set_overwrites(cache: Cache) -> None:
    cache.set("k", 1)
    cache.set("k", 2)
    assert cache.get("k") == 2
    assert len(cache) == 1


def test_add_sets_only_when_no_live_value_is_held(cache: Cache, fake_clock: FakeClock) -> None:
    assert cache.add("k", "first", ttl=1)
    assert not cache.add("k", "second")
    assert cache.get("k") == "first"
    fake_clock.advance(1)
    assert cache.add("k", "after expiry")
    assert cache.get("k") == "after expiry"


def test_delete_reports_whether_a_live_value_was_removed(cache: Cache, fake_clock: FakeClock) -> None:
    cache.set("k", 1)
    assert cache.delete("k")
    assert cache.get("k") is None
    assert not cache.delete("k")
    cache.set("e", 1, ttl=1)
    fake_clock.advance(2)
    assert not cache.delete("e")


def test_get_many_returns_only_the_keys_that_hit(cache: Cache) -> None:
    cache.set("a", 1)
    cache.set("b", None)
    assert cache.get_many(["a", "b", "c"]) == {"a": 1, "b": None}


def test_set_many_stores_every_pair_with_one_ttl(cache: Cache, fake_clock: FakeClock) -> None:
    cache.set_many({"a": 1, "b": 2}, ttl=2)
    assert cache.get_many(["a", "b"]) == {"a": 1, "b": 2}
    assert cache.ttl("a") == cache.ttl("b") == 2
    fake_clock.advance(2)
    assert cache.get_many(["a", "b"]) == {}


def test_delete_many_returns_how_many_live_values_it_removed(cache: Cache) -> None:
    cache.set_many({"a": 1, "b": 2})
    assert cache.delete_many(["a", "b", "c"]) == 2
    assert len(cache) == 0


def test_touch_gives_a_live_entry_a_new_expiry(cache: Cache, fake_clock: FakeClock) -> None:
    cache.set("k", "v", ttl=1)
    assert cache.touch("k", ttl=5)
    fake_clock.advance(4)
    assert cache.get("k") == "v"
    assert cache.ttl("k") == 1
    assert cache.touch("k", ttl=None)
    assert cache.ttl("k") is None


def test_touch_is_false_for_an_absent_or_expired_key(cache: Cache, fake_clock: FakeClock) -> None:
    assert not cache.touch("absent")
    cache.set("k", "v", ttl=1)
    fake_clock.advance(1)
    assert not cache.touch("k", ttl=100)
    assert "k" not in cache


def test_touch_with_the_default_ttl_uses_the_caches_ttl(cache: Cache) -> None:
    cache.set("k", "v", ttl=1)
    assert cache.touch("k")
    assert cache.ttl("k") == 10


def test_clear_removes_everything(cache: Cache) -> None:
    cache.set_many({"a": 1, "b": 2, 3: 3})
    cache.clear()
    assert len(cache) == 0
    assert cache.keys() == []
    assert cache.get("a") is None
    cache.set("a", "again")  # a write after a clear is kept
    assert cache.get("a") == "again"


# -- ttl --------------------------------------------------------------------------------


def test_ttl_as_float_seconds(cache: Cache, fake_clock: FakeClock) -> None:
    cache.set("k", "v", ttl=1.5)
    assert cache.ttl("k") == 1.5
    fake_clock.advance(1.25)
    assert cache.get("k") == "v"
    assert cache.ttl("k") == 0.25
    fake_clock.advance(0.25)
    assert cache.get("k") is None


def test_ttl_as_timedelta(cache: Cache, fake_clock: FakeClock) -> None:
    cache.set("k", "v", ttl=timedelta(minutes=2))
    assert cache.ttl("k") == 120
    fake_clock.advance(119.5)
    assert "k" in cache
    fake_clock.advance(0.5)
    assert "k" not in cache


def test_ttl_none_never_expires_even_when_the_cache_has_a_ttl(cache: Cache, fake_clock: FakeClock) -> None:
    cache.set("k", "v", ttl=None)
    assert cache.ttl("k") is None
    fake_clock.advance(10**9)
    assert cache.get("k") == "v"


def test_default_ttl_is_the_caches_ttl(cache: Cache, fake_clock: FakeClock) -> None:
    cache.set("a", 1)
    cache.set("b", 2, ttl=DEFAULT)
    assert cache.ttl("a") == cache.ttl("b") == 10
    fake_clock.advance(10)
    assert cache.get_many(["a", "b"]) == {}


def test_a_cache_without_a_ttl_keeps_entries_forever(fake_clock: FakeClock) -> None:
    cache = Cache(timer=fake_clock)
    cache.set("k", "v")
    assert cache.ttl("k") is None
    fake_clock.advance(10**9)
    assert cache.get("k") == "v"


def test_the_caches_ttl_may_be_a_timedelta(fake_clock: FakeClock) -> None:
    cache = Cache(ttl=timedelta(seconds=3), timer=fake_clock)
    cache.set("k", "v")
    assert cache.ttl("k") == 3


def test_a_zero_ttl_stores_nothing_readable(cache: Cache) -> None:
    cache.set("k", "v", ttl=0)
    assert cache.get("k") is None
    assert len(cache) == 0


@pytest.mark.parametrize("bad", [-1, -0.001, timedelta(seconds=-1), float("nan")])
def test_a_negative_or_nan_ttl_is_a_value_error(cache: Cache, bad: Any, fake_clock: FakeClock) -> None:
    with pytest.raises(ValueError):
        cache.set("k", "v", ttl=bad)
    with pytest.raises(ValueError):
        cache.add("k", "v", ttl=bad)
    with pytest.raises(ValueError):
        cache.set_many({"k": "v"}, ttl=bad)
    cache.set("k", "v")
    with pytest.raises(ValueError):
        cache.touch("k", ttl=bad)
    assert cache.ttl("k") == 10
    with pytest.raises(ValueError):
        Cache(ttl=bad, timer=fake_clock)


def test_get_on_an_expired_entry_is_a_miss(cache: Cache, fake_clock: FakeClock) -> None:
    cache.set("k", "v", ttl=1)
    fake_clock.advance(1)
    assert cache.get("k", "default") == "default"
    assert "k" not in cache
    stats = cache.stats()
    assert (stats["hits"], stats["misses"], stats["expirations"]) == (0, 1, 1)


def test_ttl_of_an_absent_or_expired_key_raises_key_error(cache: Cache, fake_clock: FakeClock) -> None:
    with pytest.raises(KeyError):
        cache.ttl("absent")
    cache.set("k", "v", ttl=1)
    fake_clock.advance(1)
    with pytest.raises(KeyError):
        cache.ttl("k")


# -- what may be stored ------------------------------------------------------------------


@pytest.mark.parametrize("value", [object(), {1, 2}, lambda: 1, 2**64, {"nested": [object()]}])
def test_an_unserializable_value_is_refused_at_set_and_nothing_is_stored(fake_clock: FakeClock, value: Any) -> None:
    cache, replica = hosted_cache(fake_clock)
    sent: list[Any] = []
    replica.connect(sent.append)
    with pytest.raises(TypeError):
        cache.set("k", value)
    with pytest.raises(TypeError):
        cache.add("k", value)
    assert "k" not in cache
    assert sent == []
    assert cache.stats()["sets"] == 0


@pytest.mark.parametrize("key", [1.0, (1, 2), True, False, None, frozenset()])
def test_a_key_that_is_not_str_bytes_or_int_is_refused_at_set(cache: Cache, key: Any) -> None:
    with pytest.raises(TypeError):
        cache.set(key, "v")
    with pytest.raises(TypeError):
        cache.add(key, "v")
    assert len(cache) == 0


def test_a_refused_key_does_not_alias_an_equal_int_key(cache: Cache) -> None:
    cache.set(1, "one")
    with pytest.raises(TypeError):
        cache.set(True, "true")
    with pytest.raises(TypeError):
        cache.set(1.0, "float")
    assert cache.get(1) == "one"


def test_msgpack_values_round_trip_through_the_default_serializer(fake_clock: FakeClock) -> None:
    cache, replica = hosted_cache(fake_clock)
    value = [None, True, -(2**63), 2**64 - 1, 1.5, "s", b"b", [1], {"k": {1: 2}}]
    sent: list[Any] = []
    replica.connect(sent.append)
    cache.set("k", value)
    assert cache.get("k") is value  # the stored object itself: treat it as immutable
    assert msgpack.unpackb(sent[0][2], raw=False, strict_map_key=False) == value


def test_a_custom_serializer_decides_what_is_accepted(fake_clock: FakeClock) -> None:
    class Strings:
        def dumps(self, value: Any) -> bytes:
            if not isinstance(value, str):
                raise TypeError("strings only")
            return value.encode()

        def loads(self, data: bytes) -> Any:
            return data.decode()

    cache = Cache(serializer=Strings(), timer=fake_clock)
    cache.set("k", "v")
    with pytest.raises(TypeError):
        cache.set("k", 1)
    assert cache.get("k") == "v"


# -- local views -------------------------------------------------------------------------


def test_contains_len_keys_and_items_see_only_live_entries(cache: Cache, fake_clock: FakeClock) -> None:
    cache.set("short", 1, ttl=1)
    cache.set("long", 2, ttl=5)
    cache.set(3, 3, ttl=None)
    assert len(cache) == 3
    fake_clock.advance(1)
    assert "short" not in cache
    assert "long" in cache
    assert len(cache) == 3  # O(1): held until swept (a node sweeps every tick, a local cache as it writes)
    fake_clock.advance(1)
    cache._store.sweep(fake_clock())  # what the writes after this would do
    assert len(cache) == 2
    assert sorted(map(str, cache.keys())) == ["3", "long"]
    assert dict(cache.items()) == {"long": 2, 3: 3}


def test_keys_and_items_are_snapshots_safe_to_iterate_while_writing(cache: Cache) -> None:
    cache.set_many({i: i for i in range(100)})
    keys, items = cache.keys(), cache.items()
    for key in keys:
        cache.delete(key)
        cache.set(key + 1000, key)
    for key, value in items:
        cache.set(key + 2000, value)
    assert sorted(keys) == list(range(100))
    assert sorted(items) == [(i, i) for i in range(100)]
    assert len(cache) == 200


def test_contains_of_an_unknown_key_is_false(cache: Cache) -> None:
    assert "absent" not in cache
    assert 7 not in cache


# -- stats -------------------------------------------------------------------------------


def test_stats_count_hits_misses_sets_deletes_and_entries(cache: Cache) -> None:
    cache.set("a", 1)
    cache.set("b", 2)
    cache.add("b", 3)  # refused: not a set
    cache.get("a")
    cache.get("a")
    cache.get("zz")
    cache.delete("a")
    cache.delete("absent")
    stats = cache.stats()
    for name in ("hits", "misses", "sets", "deletes", "evictions", "expirations", "entries", "loads"):
        assert name in stats
    assert "load_errors" in stats
    assert (stats["hits"], stats["misses"], stats["sets"], stats["deletes"]) == (2, 1, 2, 1)
    assert stats["entries"] == 1


def test_stats_count_evictions_and_expirations(fake_clock: FakeClock) -> None:
    cache = Cache(max_entries=5, timer=fake_clock)
    for i in range(8):
        cache.set(i, i, ttl=1 if i == 7 else None)
    assert cache.stats()["evictions"] == 3
    assert len(cache) == 5
    fake_clock.advance(2)
    cache._store.sweep(fake_clock())  # what the writes after this would do
    stats = cache.stats()
    assert stats["expirations"] == 1
    assert stats["entries"] == len(cache) == 4


def test_stats_count_loads_and_load_errors(cache: Cache) -> None:
    cache.fetch("a", str.upper)
    cache.fetch("a", str.upper)  # a hit: no load

    def broken(key: Any) -> Any:
        raise RuntimeError("backend down")

    with pytest.raises(RuntimeError):
        cache.fetch("b", broken)
    stats = cache.stats()
    assert (stats["loads"], stats["load_errors"]) == (1, 1)


# -- async twins -------------------------------------------------------------------------


def test_every_async_twin_does_what_its_sync_method_does(cache: Cache, fake_clock: FakeClock) -> None:
    async def scenario() -> None:
        await cache.aset("k", "v", ttl=2)
        assert await cache.aget("k") == "v"
        assert await cache.aget("absent", "d") == "d"
        assert await cache.aadd("k", "other") is False
        assert await cache.aadd("j", "j") is True
        assert await cache.attl("k") == 2
        assert await cache.atouch("k", ttl=timedelta(seconds=4)) is True
        assert await cache.attl("k") == 4
        await cache.aset_many({"a": 1, "b": 2})
        assert await cache.aget_many(["a", "b", "c"]) == {"a": 1, "b": 2}
        assert await cache.adelete_many(["a", "b", "c"]) == 2
        assert await cache.adelete("j") is True
        assert await cache.adelete("j") is False
        await cache.aclear()
        assert await cache.aget("k") is None
        with pytest.raises(KeyError):
            await cache.attl("k")

    asyncio.run(scenario())


def test_async_twins_raise_what_the_sync_methods_raise(cache: Cache) -> None:
    async def scenario() -> None:
        with pytest.raises(TypeError):
            await cache.aset("k", object())
        with pytest.raises(TypeError):
            await cache.aset(1.5, "v")
        with pytest.raises(ValueError):
            await cache.aset("k", "v", ttl=-1)

    asyncio.run(scenario())


# -- fetch: single-flight loads ----------------------------------------------------------


def test_fetch_returns_a_cached_value_without_calling_the_loader(cache: Cache) -> None:
    cache.set("k", "cached")
    assert cache.fetch("k", lambda key: pytest.fail("loader called on a hit")) == "cached"


def test_fetch_on_a_miss_stores_the_loaders_value_with_the_given_ttl(cache: Cache, fake_clock: FakeClock) -> None:
    assert cache.fetch("k", lambda key: f"loaded {key}", ttl=3) == "loaded k"
    assert cache.get("k") == "loaded k"
    assert cache.ttl("k") == 3
    fake_clock.advance(3)
    assert cache.fetch("k", lambda key: "reloaded") == "reloaded"


def test_fetch_caches_a_none_result(cache: Cache) -> None:
    calls: list[Any] = []

    def loader(key: Any) -> None:
        calls.append(key)

    assert cache.fetch("k", loader) is None
    assert cache.fetch("k", loader) is None
    assert calls == ["k"]


def test_fetch_calls_the_loader_once_for_16_threads_missing_together(cache: Cache) -> None:
    release = threading.Event()
    calls: list[Any] = []

    def loader(key: str) -> str:
        calls.append(key)
        assert release.wait(10)
        return f"loaded {key}"

    results: list[Any] = [None] * 16
    errors: list[BaseException] = []

    def caller(i: int) -> None:
        try:
            results[i] = cache.fetch("k", loader)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    wait_until(lambda: cache.stats()["misses"] == 16 and bool(calls))  # all 16 missed
    release.set()
    for t in threads:
        t.join(10)
    assert errors == []
    assert calls == ["k"]
    assert results == ["loaded k"] * 16
    assert cache.get("k") == "loaded k"
    assert cache.stats()["loads"] == 1
    assert cache.stats()["loading"] == 0


def test_a_loader_error_reaches_every_waiter_and_nothing_is_stored(cache: Cache) -> None:
    release = threading.Event()
    calls: list[Any] = []

    class BackendDown(Exception):
        pass

    def loader(key: str) -> str:
        calls.append(key)
        assert release.wait(10)
        raise BackendDown(key)

    outcomes: list[Any] = []

    def caller() -> None:
        try:
            outcomes.append(cache.fetch("k", loader))
        except BaseException as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=caller) for _ in range(16)]
    for t in threads:
        t.start()
    wait_until(lambda: cache.stats()["misses"] == 16 and bool(calls))
    release.set()
    for t in threads:
        t.join(10)
    assert calls == ["k"]
    assert len(outcomes) == 16
    assert all(isinstance(o, BackendDown) for o in outcomes)
    assert "k" not in cache
    assert cache.stats()["load_errors"] == 1
    assert cache.fetch("k", lambda key: "recovered") == "recovered"  # the failure was not cached


def test_a_loader_returning_an_unserializable_value_fails_the_load(cache: Cache) -> None:
    with pytest.raises(TypeError):
        cache.fetch("k", lambda key: object())
    assert "k" not in cache
    assert cache.stats()["load_errors"] == 1


def test_fetch_for_different_keys_loads_each(cache: Cache) -> None:
    assert [cache.fetch(k, lambda key: key * 2) for k in (1, 2, 1)] == [2, 4, 2]
    assert cache.stats()["loads"] == 2


def test_afetch_awaits_an_async_loader(cache: Cache) -> None:
    async def loader(key: str) -> str:
        await asyncio.sleep(0)
        return key.upper()

    async def scenario() -> None:
        assert await cache.afetch("k", loader, ttl=2) == "K"
        assert await cache.afetch("k", loader) == "K"
        assert cache.ttl("k") == 2

    asyncio.run(scenario())
    assert cache.stats()["loads"] == 1


def test_afetch_runs_a_sync_loader_off_the_event_loop(cache: Cache) -> None:
    release = threading.Event()
    ran_on: list[int] = []

    def loader(key: str) -> str:
        ran_on.append(threading.get_ident())
        assert release.wait(5), "the event loop was blocked by the loader"
        return "v"

    async def scenario() -> str:
        task = asyncio.create_task(cache.afetch("k", loader))
        await asyncio.sleep(0)  # afetch starts the loader
        release.set()  # only possible if the loop is free while the loader runs
        return await task

    assert asyncio.run(scenario()) == "v"
    assert ran_on and ran_on[0] != threading.get_ident()
    assert cache.get("k") == "v"


def test_afetch_calls_the_loader_once_for_many_tasks_missing_together(cache: Cache) -> None:
    calls: list[Any] = []

    async def scenario() -> list[Any]:
        release = asyncio.Event()

        async def loader(key: str) -> str:
            calls.append(key)
            await release.wait()
            return "v"

        tasks = [asyncio.create_task(cache.afetch("k", loader)) for _ in range(50)]
        while cache.stats()["misses"] < 50:
            await asyncio.sleep(0)
        await asyncio.sleep(0)
        release.set()
        return await asyncio.gather(*tasks)

    assert asyncio.run(scenario()) == ["v"] * 50
    assert calls == ["k"]


def test_an_async_loader_error_reaches_every_task_and_nothing_is_stored(cache: Cache) -> None:
    calls: list[Any] = []

    async def scenario() -> list[Any]:
        release = asyncio.Event()

        async def loader(key: str) -> str:
            calls.append(key)
            await release.wait()
            raise LookupError(key)

        tasks = [asyncio.create_task(cache.afetch("k", loader)) for _ in range(20)]
        while cache.stats()["misses"] < 20:
            await asyncio.sleep(0)
        release.set()
        return await asyncio.gather(*tasks, return_exceptions=True)

    outcomes = asyncio.run(scenario())
    assert calls == ["k"]
    assert len(outcomes) == 20 and all(isinstance(o, LookupError) for o in outcomes)
    assert "k" not in cache
    assert cache.stats()["load_errors"] == 1


def test_threads_and_tasks_missing_together_share_one_load(cache: Cache) -> None:
    release = threading.Event()
    calls: list[Any] = []
    from_thread: list[Any] = []

    def loader(key: str) -> str:
        calls.append(key)
        assert release.wait(5)
        return "v"

    thread = threading.Thread(target=lambda: from_thread.append(cache.fetch("k", loader)))
    thread.start()
    wait_until(lambda: bool(calls))

    async def scenario() -> Any:
        task = asyncio.create_task(cache.afetch("k", loader))
        await asyncio.sleep(0)  # the task joins the thread's flight
        release.set()
        return await task

    assert asyncio.run(scenario()) == "v"
    thread.join(5)
    assert from_thread == ["v"]
    assert calls == ["k"]


# -- memoize -----------------------------------------------------------------------------


def test_memoize_caches_a_sync_function_per_arguments(cache: Cache, fake_clock: FakeClock) -> None:
    calls: list[Any] = []

    @cache.memoize(ttl=5)
    def double(x: int, scale: int = 2) -> int:
        """Doubles."""
        calls.append((x, scale))
        return x * scale

    assert [double(1), double(1), double(2), double(1, scale=3), double(1, scale=3)] == [2, 2, 4, 3, 3]
    assert calls == [(1, 2), (2, 2), (1, 3)]
    assert double.__name__ == "double" and double.__doc__ == "Doubles."
    fake_clock.advance(5)
    assert double(1) == 2
    assert len(calls) == 4


def test_memoize_caches_an_async_function(cache: Cache) -> None:
    calls: list[Any] = []

    @cache.memoize()
    async def lookup(identity: str) -> str:
        calls.append(identity)
        await asyncio.sleep(0)
        return f"acct-{identity}"

    async def scenario() -> list[str]:
        first = await asyncio.gather(*(lookup("u1") for _ in range(10)))
        return [*first, await lookup("u1"), await lookup("u2")]

    assert asyncio.iscoroutinefunction(lookup)
    assert asyncio.run(scenario()) == ["acct-u1"] * 11 + ["acct-u2"]
    assert calls == ["u1", "u2"]


def test_memoize_uses_a_custom_key_function(cache: Cache) -> None:
    calls: list[Any] = []

    @cache.memoize(key=lambda user, *, verbose=False: f"user:{user}")
    def profile(user: int, *, verbose: bool = False) -> str:
        calls.append(user)
        return f"profile {user}"

    assert profile(7) == profile(7, verbose=True) == "profile 7"
    assert calls == [7]
    assert cache.get("user:7") == "profile 7"


def test_memoized_functions_with_the_same_arguments_do_not_share_entries(cache: Cache) -> None:
    @cache.memoize()
    def f(x: int) -> str:
        return "f"

    @cache.memoize()
    def g(x: int) -> str:
        return "g"

    assert (f(1), g(1)) == ("f", "g")


def test_memoize_does_not_cache_an_exception(cache: Cache) -> None:
    attempts: list[int] = []

    @cache.memoize()
    def flaky(x: int) -> int:
        attempts.append(x)
        if len(attempts) == 1:
            raise ConnectionError("first try fails")
        return x

    with pytest.raises(ConnectionError):
        flaky(1)
    assert flaky(1) == 1
    assert flaky(1) == 1
    assert len(attempts) == 2


# -- replication hook and apply ------------------------------------------------------------


def test_replicate_receives_every_local_mutation(fake_clock: FakeClock) -> None:
    cache, replica = hosted_cache(fake_clock, ttl=10)
    sent: list[Any] = []
    replica.connect(sent.append)
    now = fake_clock.now

    cache.set("k", "v", ttl=5)
    assert cache.add("a", [1, 2])
    assert not cache.add("a", "refused")  # not applied, not sent
    assert cache.touch("k", ttl=None)
    assert not cache.touch("absent")
    assert cache.delete("k")
    cache.clear()

    kinds = [(kind, key, expires) for kind, key, _, expires, _ in sent]
    assert kinds == [
        (WRITE, "k", now + 5),
        (WRITE, "a", now + 10),
        (WRITE, "k", NEVER),
        (DELETE, "k", NEVER),
        (CLEAR, b"", NEVER),
    ]
    packed = [p for _, _, p, _, _ in sent]
    assert [msgpack.unpackb(p) if p is not None else None for p in packed] == ["v", [1, 2], "v", None, None]
    versions = [v for *_, v in sent]
    assert versions == sorted(versions) and len(set(versions)) == len(versions)


def test_apply_takes_writes_deletes_and_clears_from_another_cache(fake_clock: FakeClock) -> None:
    a, ra = hosted_cache(fake_clock, 1, tombstone_ttl=60)
    b, rb = hosted_cache(fake_clock, 2, tombstone_ttl=60)
    ops: list[Any] = []
    ra.connect(ops.append)
    a.set("x", 1, ttl=5)
    a.set("y", 2)
    assert rb.apply(ops, fake_clock()) == (2, 0)
    assert dict(b.items()) == {"x": 1, "y": 2}
    assert b.ttl("x") == 5
    assert rb.apply(ops, fake_clock()) == (0, 2)  # replayed ops are older than what b holds
    ops.clear()
    a.delete("x")
    a.clear()
    assert rb.apply(ops, fake_clock()) == (2, 0)
    assert len(b) == 0


def test_a_local_write_after_applying_a_remote_one_wins(fake_clock: FakeClock) -> None:
    ahead = FakeClock(fake_clock.now + 0.5)  # the remote clock runs ahead, within max_clock_skew
    remote, r_remote = hosted_cache(ahead, 9)
    local, r_local = hosted_cache(fake_clock, 1)
    ops: list[Any] = []
    r_remote.connect(ops.append)
    remote.set("k", "remote")
    r_local.apply(ops, fake_clock())
    local.set("k", "local")  # later in real time, so it must win despite the slow wall clock
    assert local.get("k") == "local"


ACTIONS = st.lists(
    st.tuples(
        st.sampled_from(["set", "add", "delete", "touch", "clear", "advance"]),
        st.sampled_from(["a", b"a", 1, "b"]),
        st.integers(0, 5),
        st.sampled_from([None, 0.5, 1.0, 30.0]),
    ),
    max_size=15,
)


def run_actions(cache: Cache, clock: FakeClock, actions: list[Any]) -> None:
    for action, key, value, ttl in actions:
        if action == "set":
            cache.set(key, value, ttl=ttl)
        elif action == "add":
            cache.add(key, value, ttl=ttl)
        elif action == "delete":
            cache.delete(key)
        elif action == "touch":
            cache.touch(key, ttl=ttl)
        elif action == "clear":
            cache.clear()
        else:
            clock.advance(0.25)


@settings(max_examples=150, deadline=None)
@given(ACTIONS, ACTIONS, st.randoms(use_true_random=False))
def test_exchanging_ops_in_any_order_converges_two_caches(actions_a: list[Any], actions_b: list[Any], rng: Any) -> None:
    clock = FakeClock()
    a, ra = hosted_cache(clock, 1)
    b, rb = hosted_cache(clock, 2)
    ops_a: list[Any] = []
    ops_b: list[Any] = []
    ra.connect(ops_a.append)
    rb.connect(ops_b.append)
    run_actions(a, clock, actions_a)
    run_actions(b, clock, actions_b)
    ra.connect(lambda op: None)
    rb.connect(lambda op: None)
    rng.shuffle(ops_a)
    rng.shuffle(ops_b)
    for op in ops_b:  # one at a time on a, as a batch on b
        ra.apply([op], clock())
    rb.apply(ops_a, clock())
    assert dict(a.items()) == dict(b.items())
    for key in ("a", b"a", 1, "b"):
        assert (key in a) == (key in b)
        if key in a:
            assert a.ttl(key) == b.ttl(key)


# -- reads racing writers ------------------------------------------------------------------


class Interfering:
    """A wall clock that runs ``act`` once, on its n-th reading.

    ``get`` reads the clock between finding an entry and returning its value, so
    this lands a write from "another thread" exactly inside that window.
    """

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.act: Callable[[], None] | None = None

    def __call__(self) -> float:
        act, self.act = self.act, None
        if act is not None:
            act()
        return self.clock()


@pytest.mark.parametrize("writer", ["delete", "evict", "clear"])
def test_a_read_racing_a_writer_returns_the_old_value_or_the_default_never_a_hole(
    fake_clock: FakeClock, writer: str
) -> None:
    wall = Interfering(fake_clock)
    cache = Cache(max_entries=2, timer=wall)
    cache.set("k", "value")
    cache.set("other", "x")
    race: dict[str, Callable[[], Any]] = {
        "delete": lambda: cache.delete("k"),
        "evict": lambda: [cache.set(f"new{i}", i) for i in range(4)],
        "clear": cache.clear,
    }
    wall.act = race[writer]
    assert cache.get("k", "default") in ("value", "default")
    assert wall.act is None  # the writer did run inside the read
