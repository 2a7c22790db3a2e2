"""The Django cache backend: Django's cache API on shoal, and two real members replicating.

The test process is member A: Django (tests/django_settings.py) starts its node on
first use of the cache. Member B is a separate process (tests/support/member.py)
speaking the same protocol. Expiry is real time here (the node's caches use the
wall clock), so timeouts that must run out are short and waited for with ``wait_until``.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

django = pytest.importorskip("django")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.django_settings")
django.setup()

from django.core.cache import caches  # noqa: E402
from django.core.cache.backends.base import CacheKeyWarning  # noqa: E402
from django.core.exceptions import ImproperlyConfigured  # noqa: E402
from django.test import Client  # noqa: E402

from shoal.contrib import django as shoal_django  # noqa: E402
from shoal.contrib.django import PickleSerializer, ShoalCache  # noqa: E402
from tests import django_settings  # noqa: E402
from tests.support.cluster import Cluster, cluster, wait_until  # noqa: E402

FIXTURES = (cluster,)  # imported for pytest to find; the tests take them by name
FAST = {"anti_entropy_interval": 1.0, "heartbeat_interval": 0.2, "failure_timeout": 2.0}


@pytest.fixture(autouse=True)
def empty_unit_cache() -> Iterator[None]:
    caches["unit"].clear()
    yield


# -- two members -------------------------------------------------------------------


@pytest.mark.slow
def test_a_write_through_django_reaches_another_member_and_a_write_there_reaches_django(cluster: Cluster) -> None:
    client = Client()
    assert client.post("/remember/greeting", {"value": "hello from A"}).json() == {"key": "greeting", "stored": True}
    backend = caches["default"]
    node_a = backend.node
    member_b = cluster.start(seeds=[node_a.address], secret=django_settings.SHOAL_SECRET, cache="c", **FAST)
    assert member_b.cmd("ready", timeout=10)

    # Django's make_key prefixes the key (":1:greeting"); B holds the same raw key,
    # received in its warm boot from A.
    raw = backend.make_key("greeting")
    assert raw == ":1:greeting"
    wait_until(lambda: member_b.cmd("get", key=raw) == "hello from A", what="A's write on B")

    # Live replication both ways, now that both are up.
    wait_until(lambda: node_a.address in member_b.peers_up(), what="B sees A up")
    member_b.cmd("set", key=backend.make_key("answer"), value="hello from B")
    wait_until(lambda: client.get("/remember/answer").json()["value"] == "hello from B", what="B's write in Django")
    client.post("/remember/greeting", {"value": "hello again from A"})
    wait_until(lambda: member_b.cmd("get", key=raw) == "hello again from A", what="A's second write on B")

    # A delete through Django is replicated too.
    assert backend.delete("answer") is True
    wait_until(lambda: member_b.cmd("get", key=backend.make_key("answer")) is None, what="the delete on B")


def test_the_view_counts_visits_with_get_or_set_and_incr() -> None:
    client = Client()
    caches["default"].delete("visits:home")
    assert [client.get("/visits/home").json()["visits"] for _ in range(3)] == [1, 2, 3]


def test_every_alias_on_one_location_shares_one_node_started_on_first_use() -> None:
    assert caches["default"].node is caches["unit"].node is caches["versioned"].node
    assert caches["unit"].shoal_cache is caches["versioned"].shoal_cache
    assert caches["default"].shoal_cache is not caches["unit"].shoal_cache


def test_a_backend_per_thread_still_shares_the_node() -> None:
    found: list[Any] = []
    thread = threading.Thread(target=lambda: found.append(caches["unit"]))
    thread.start()
    thread.join()
    assert found[0] is not caches["unit"]  # Django makes one backend instance per thread
    assert found[0].node is caches["unit"].node


# -- timeouts ----------------------------------------------------------------------


def test_default_timeout_is_the_alias_timeout() -> None:
    cache = caches["unit"]
    cache.set("k", "v")
    remaining = cache.shoal_cache.ttl(cache.make_key("k"))
    assert remaining is not None and 59 < remaining <= 60


def test_a_timeout_of_none_never_expires() -> None:
    cache = caches["unit"]
    cache.set("forever", "v", timeout=None)
    assert cache.shoal_cache.ttl(cache.make_key("forever")) is None


def test_an_alias_whose_timeout_is_none_never_expires_by_default() -> None:
    cache = caches["versioned"]
    cache.set("k", "v")
    assert cache.shoal_cache.ttl(cache.make_key("k")) is None


def test_a_timeout_of_zero_stores_nothing_and_drops_the_old_value() -> None:
    cache = caches["unit"]
    cache.set("k", "old")
    cache.set("k", "new", timeout=0)
    assert cache.get("k") is None
    cache.set("k", "new", timeout=-5)
    assert not cache.has_key("k")


def test_a_short_timeout_runs_out() -> None:
    cache = caches["unit"]
    cache.set("brief", "v", timeout=0.1)
    assert cache.get("brief") == "v"
    wait_until(lambda: cache.get("brief") is None, timeout=5, what="expiry")


def test_add_only_stores_an_absent_key() -> None:
    cache = caches["unit"]
    assert cache.add("k", 1) is True
    assert cache.add("k", 2) is False
    assert cache.get("k") == 1
    assert cache.add("other", 1, timeout=0) is True  # added and gone at once, as in Django's backends
    assert cache.get("other") is None
    assert cache.add("k", 3, timeout=0) is False


def test_touch_sets_a_new_expiry_and_zero_deletes() -> None:
    cache = caches["unit"]
    assert cache.touch("missing") is False
    cache.set("k", "v", timeout=10)
    assert cache.touch("k", timeout=None) is True
    assert cache.shoal_cache.ttl(cache.make_key("k")) is None
    assert cache.touch("k") is True
    remaining = cache.shoal_cache.ttl(cache.make_key("k"))
    assert remaining is not None and 59 < remaining <= 60
    assert cache.touch("k", timeout=0) is True
    assert cache.get("k") is None


# -- the rest of the API -----------------------------------------------------------


def test_get_many_set_many_delete_many() -> None:
    cache = caches["unit"]
    assert cache.set_many({"a": 1, "b": [1, 2], "c": {"x": None}}) == []
    assert cache.get_many(["a", "b", "c", "missing"]) == {"a": 1, "b": [1, 2], "c": {"x": None}}
    cache.delete_many(["a", "b"])
    assert cache.get_many(["a", "b", "c"]) == {"c": {"x": None}}
    assert cache.set_many({"c": 2}, timeout=0) == []
    assert cache.get_many(["c"]) == {}


def test_delete_says_whether_there_was_a_value() -> None:
    cache = caches["unit"]
    cache.set("k", "v")
    assert cache.delete("k") is True
    assert cache.delete("k") is False


def test_has_key_and_in() -> None:
    cache = caches["unit"]
    cache.set("k", None)  # None is a value like any other
    assert cache.has_key("k") and "k" in cache
    assert not cache.has_key("missing") and "missing" not in cache


def test_keys_carry_the_prefix_and_version() -> None:
    unit, versioned = caches["unit"], caches["versioned"]
    unit.set("k", "v1")
    unit.set("k", "v2", version=2)
    versioned.set("k", "app")
    assert unit.get("k") == "v1" and unit.get("k", version=2) == "v2" and versioned.get("k") == "app"
    assert sorted(unit.shoal_cache.keys()) == [":1:k", ":2:k", "app:2:k"]  # one shoal cache under both aliases
    assert unit.incr_version("k") == 2
    assert unit.get("k") is None and unit.get("k", version=2) == "v1"
    assert versioned.get("k") == "app"


def test_keys_django_would_not_carry_to_memcached_warn() -> None:
    with pytest.warns(CacheKeyWarning):
        caches["unit"].set("has a space", 1)


def test_clear_empties_the_cache_under_every_prefix() -> None:
    caches["unit"].set("k", 1)
    caches["versioned"].set("k", 2)
    caches["unit"].clear()
    assert caches["unit"].get("k") is None and caches["versioned"].get("k") is None


def test_incr_and_decr_keep_the_expiry_and_refuse_a_missing_key() -> None:
    cache = caches["unit"]
    with pytest.raises(ValueError, match="not found"):
        cache.incr("missing")
    with pytest.raises(ValueError, match="not found"):
        cache.decr("missing")
    cache.set("n", 10, timeout=30)
    assert cache.incr("n") == 11
    assert cache.incr("n", 5) == 16
    assert cache.decr("n", 6) == 10
    remaining = cache.shoal_cache.ttl(cache.make_key("n"))
    assert remaining is not None and 29 < remaining <= 30
    cache.set("forever", 0, timeout=None)
    cache.incr("forever")
    assert cache.shoal_cache.ttl(cache.make_key("forever")) is None


def test_incr_from_many_threads_of_one_process_loses_nothing() -> None:
    cache = caches["unit"]
    cache.set("n", 0)

    def bump() -> None:
        for _ in range(200):
            caches["unit"].incr("n")

    threads = [threading.Thread(target=bump) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert cache.get("n") == 1600


def test_get_or_set_stores_the_default_and_keeps_what_is_there() -> None:
    cache = caches["unit"]
    assert cache.get_or_set("k", "first") == "first"
    assert cache.get_or_set("k", "second") == "first"
    assert cache.get_or_set("called", lambda: "made") == "made"
    assert cache.get("called") == "made"
    assert cache.get_or_set("nothing", "v", timeout=0) == "v"
    assert not cache.has_key("nothing")


def test_get_or_set_calls_a_callable_default_once_however_many_threads_miss() -> None:
    calls: list[int] = []

    def slow_default() -> str:
        calls.append(1)
        time.sleep(0.2)
        return "loaded"

    results: list[Any] = []
    threads = [
        threading.Thread(target=lambda: results.append(caches["unit"].get_or_set("slow", slow_default)))
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == ["loaded"] * 8
    assert len(calls) == 1


def test_async_methods() -> None:
    cache = caches["unit"]

    async def main() -> None:
        await cache.aset("a", 1)
        assert await cache.aget("a") == 1
        assert await cache.aget("missing", "dflt") == "dflt"
        assert await cache.aadd("a", 2) is False
        assert await cache.aadd("b", 2) is True
        assert await cache.aset_many({"c": 3, "d": 4}) == []
        assert await cache.aget_many(["a", "b", "c", "x"]) == {"a": 1, "b": 2, "c": 3}
        assert await cache.ahas_key("d")
        assert await cache.aincr("a", 10) == 11
        assert await cache.adecr("a") == 10
        assert await cache.atouch("a", None) is True
        assert cache.shoal_cache.ttl(cache.make_key("a")) is None
        assert await cache.adelete("a") is True
        assert await cache.adelete("a") is False
        await cache.adelete_many(["b", "c"])
        assert await cache.aget_many(["b", "c", "d"]) == {"d": 4}
        calls: list[int] = []

        def default() -> str:
            calls.append(1)
            return "made"

        assert await asyncio.gather(*(cache.aget_or_set("e", default) for _ in range(10))) == ["made"] * 10
        assert calls == [1]
        assert await cache.aincr_version("e") == 2  # Django's own default, on our aget/aset/adelete
        await cache.aclear()
        assert await cache.aget("d") is None

    asyncio.run(main())


# -- values and configuration --------------------------------------------------------


def test_a_value_msgpack_cannot_carry_is_refused_at_set() -> None:
    with pytest.raises(TypeError):
        caches["unit"].set("k", object())


def _backend(location: str = django_settings.LOCATION, **options: Any) -> ShoalCache:
    params = {"OPTIONS": {**django_settings.SHOAL, **options}}
    return ShoalCache(location, params)


def test_a_serializer_option_stores_arbitrary_objects() -> None:
    cache = _backend(cache="pickled", serializer="shoal.contrib.django.PickleSerializer")
    value = {"set": {1, 2}, "tuple": (1, "a")}  # neither a set nor a tuple survives msgpack
    cache.set("k", value)
    assert cache.get("k") == value
    assert isinstance(cache.shoal_cache.serializer, PickleSerializer)
    packed = cache.shoal_cache.serializer.dumps(value)
    assert cache.shoal_cache.serializer.loads(packed) == value  # what another member gets back
    with pytest.raises(TypeError):
        cache.set("lock", threading.Lock())


def test_one_shoal_cache_cannot_have_two_serializers() -> None:
    _backend(cache="pickled", serializer="shoal.contrib.django.PickleSerializer").get("k")
    with pytest.raises(ImproperlyConfigured, match="serializer"):
        _backend(cache="pickled").get("k")


def test_aliases_on_one_location_must_agree_on_the_node() -> None:
    with pytest.raises(ImproperlyConfigured, match="different"):
        _backend(secret="another cluster secret").get("k")


def test_bad_configuration_is_refused() -> None:
    with pytest.raises(ImproperlyConfigured):
        ShoalCache("no-port", {})
    with pytest.raises(ImproperlyConfigured):
        ShoalCache("127.0.0.1:7602-7600", {})
    with pytest.raises(ImproperlyConfigured, match="dumps"):
        _backend(cache="badser", serializer="os.path.join").get("k")


def _taken_port_before_a_free_one() -> socket.socket:
    """A listening socket on a port whose successor was free a moment ago (other processes
    on the host take ports too: a port picked blindly had a taken successor under load)."""
    for _ in range(50):
        taken = socket.socket()
        taken.bind(("127.0.0.1", 0))
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", taken.getsockname()[1] + 1))
            except OSError:
                taken.close()
                continue
        taken.listen()
        return taken
    raise AssertionError("no port with a free successor in 50 tries")


def test_a_port_range_takes_the_first_free_port() -> None:
    with _taken_port_before_a_free_one() as taken:
        port = taken.getsockname()[1]
        location = f"127.0.0.1:{port}-{port + 1}"
        cache = _backend(location)
        try:
            cache.set("k", "v")
            assert cache.node.address == f"127.0.0.1:{port + 1}"
        finally:
            cache.node.stop()
            shoal_django._members.pop(location, None)
