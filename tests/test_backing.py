"""A cache in front of Redis (backing.py), against real redis-server processes the tests start.

Members are in-process Nodes (each with its own loop thread, connections and
tracking); Redis is a throwaway ``redis-server`` on a free port, a Redis Cluster
three of them joined by ``redis-cli --cluster create``. No mock of Redis anywhere.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

import msgpack
import pytest
import redis

from bench.harness import RedisServer, free_port
from shoal import BackingError
from shoal.cache import Cache
from shoal.node import Node
from shoal.singleflight import LOAD, VALUE
from tests.support.cluster import wait_until

pytestmark = pytest.mark.slow

REDIS = shutil.which("redis-server")
CLI = shutil.which("redis-cli")
PREFIX = "shoal:acc:"


def _need_redis() -> str:
    if REDIS is None or CLI is None:
        pytest.skip("redis-server and redis-cli are not installed (apt-get install redis-server)")
    return REDIS


@pytest.fixture
def server() -> Iterator[RedisServer]:
    started = RedisServer(_need_redis())
    started.client()
    yield started
    started.stop()


@pytest.fixture
def members() -> Iterator[Callable[..., list[tuple[Node, Cache]]]]:
    """``make(url, n)``: n started members hosting cache "acc" in front of ``url``; all stopped at teardown."""
    nodes: list[Node] = []

    def make(url: Any, n: int = 3, seed: Node | None = None, **options: Any) -> list[tuple[Node, Cache]]:
        made = []
        for _ in range(n):
            first = seed or (nodes[0] if nodes else None)
            node = Node(seeds=[first.address] if first is not None else [])
            cache = node.cache("acc", ttl=3600, max_entries=100_000, backing=url, **options)
            node.start()
            nodes.append(node)
            made.append((node, cache))
        for node, _ in made:
            assert node.wait_ready(30)
        return made

    yield make
    for node in nodes:
        with contextlib.suppress(Exception):
            node.stop()


def url(server: RedisServer) -> str:
    return f"redis://127.0.0.1:{server.port}/0"


def held(cache: Cache, key: str) -> Any:
    """What the local tier holds for key (no read, no network), or None."""
    return cache._peek(key) if key in cache else None


def all_hold(caches: list[Cache], key: str, value: Any) -> bool:
    return all(held(c, key) == value for c in caches)


class Cli:
    """An interactive redis-cli, connected before the clock starts: a write is timed from when it is sent."""

    def __init__(self, port: int, *options: str) -> None:
        assert CLI is not None
        self.proc = subprocess.Popen(
            [CLI, "-p", str(port), *options], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.send("PING") == "PONG"

    def send(self, line: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        self.proc.wait(10)


def cli_value(value: str) -> str:
    """value as msgpack (a short str), written the way redis-cli reads escapes."""
    return '"' + "".join(f"\\x{b:02x}" for b in msgpack.packb(value)) + '"'


def read_back(caches: list[Cache], key: str, value: Any) -> None:
    """Every member reads key until it holds value. A copy read within the millisecond of an
    announcement is not kept (it cannot be told from one read before it), so one read may not do."""
    wait_until(
        lambda: all(c.get(key) == value for c in caches) and all_hold(caches, key, value), 10, what=f"{key} held"
    )


def wait_gone(caches: list[Cache], key: str, deadline: float) -> float:
    """Seconds until no cache holds key, polled without sleeping past ``deadline`` seconds."""
    start = time.perf_counter()
    while any(key in c for c in caches):
        if time.perf_counter() - start > deadline:
            raise AssertionError(f"still held after {deadline}s by {sum(key in c for c in caches)} members")
        time.sleep(0.0005)
    return time.perf_counter() - start


# -- invalidation ----------------------------------------------------------------------------


def test_a_write_through_redis_cli_is_gone_from_every_members_local_copy_within_50_ms(
    server: RedisServer, members: Callable[..., list[tuple[Node, Cache]]]
) -> None:
    caches = [c for _, c in members(url(server))]
    cli = Cli(server.port)
    try:
        times = []
        for i in range(5):
            key = f"user:{i}"
            heard = [c.stats()["invalidations"] for c in caches]
            caches[0].set(key, "old")
            for cache, before in zip(caches[1:], heard[1:], strict=True):
                # the others hear of the write (and drop the key), then read it back
                wait_until(lambda c=cache, n=before: c.stats()["invalidations"] > n, 10, what="the announcement")
            read_back(caches, key, "old")
            assert cli.send(f"SET {PREFIX}{key} {cli_value('new')}") == "OK"
            times.append(wait_gone(caches, key, 0.05))
            assert [c.get(key) for c in caches] == ["new"] * 3
        print(f"gone from 3 members after {max(times) * 1000:.2f} ms at most (5 writes)")
    finally:
        cli.close()
    assert all(c.stats()["invalidations"] >= 5 for c in caches)


def test_a_members_own_write_is_kept_by_it_and_dropped_by_the_others_who_read_it_back(
    server: RedisServer, members: Callable[..., list[tuple[Node, Cache]]]
) -> None:
    (_, a), (_, b) = members(url(server), 2)
    b.get("k")  # absent everywhere: nothing kept
    a.set("k", {"n": 1})
    assert held(a, "k") == {"n": 1}
    assert server.client().get(f"{PREFIX}k".encode()) == msgpack.packb({"n": 1})
    wait_until(lambda: held(b, "k") is None and b.stats()["invalidations"] >= 1, 10, what="b dropping k")
    read_back([b], "k", {"n": 1})
    before = b.stats()["backing_reads"]
    assert b.get("k") == {"n": 1} and b.stats()["backing_reads"] == before  # now local
    assert a.stats()["invalidations"] == 0  # NOLOOP: no announcement of its own writes


def test_a_delete_by_another_client_drops_the_key_and_a_get_then_misses_in_both_tiers(
    server: RedisServer, members: Callable[..., list[tuple[Node, Cache]]]
) -> None:
    caches = [c for _, c in members(url(server), 2)]
    server.client().set(f"{PREFIX}gone", msgpack.packb("x"))
    assert [c.get("gone") for c in caches] == ["x", "x"]
    server.client().delete(f"{PREFIX}gone")
    wait_gone(caches, "gone", 5)
    assert [c.get("gone", "default") for c in caches] == ["default", "default"]


# -- losing the tracking connection -----------------------------------------------------------


def test_a_redis_restart_leaves_no_member_serving_a_value_it_was_not_told_about(
    members: Callable[..., list[tuple[Node, Cache]]],
) -> None:
    binary = _need_redis()
    first = RedisServer(binary)
    port = first.port
    first.client().set(f"{PREFIX}k", msgpack.packb("before"))
    caches = [c for _, c in members(url(first))]
    second = None
    try:
        read_back(caches, "k", "before")
        first.stop()  # the data goes with it: no persistence
        wait_until(lambda: all(c.stats()["tracking_resets"] == 1 for c in caches), 10, what="every member reset")
        assert not any("k" in c for c in caches)
        for cache in caches:
            with pytest.raises(BackingError):
                cache.get("k")  # nothing local, nothing to read: an error, not a stale value
        second = RedisServer(binary, port=port)
        second.client().set(f"{PREFIX}k", msgpack.packb("after"))  # written before the members are back
        wait_until(lambda: all(c.stats()["tracking"] for c in caches), 15, what="tracking again")
        assert [c.get("k") for c in caches] == ["after"] * 3
        assert all(c.stats()["tracking_resets"] == 1 for c in caches)
    finally:
        if second is not None:
            second.stop()


def test_a_killed_tracking_connection_drops_the_local_tier_and_tracking_comes_back(
    server: RedisServer, members: Callable[..., list[tuple[Node, Cache]]]
) -> None:
    client = server.client()
    client.set(f"{PREFIX}k", msgpack.packb(1))
    ((_, cache),) = members(url(server), 1)
    read_back([cache], "k", 1)
    trackers = [c["id"] for c in client.client_list() if "t" in c["flags"] and c["flags"] != "N"]
    listeners = [c["id"] for c in client.client_list() if c.get("sub") == "1"]
    assert len(listeners) == 1 and len(trackers) == 1
    client.client_kill_filter(_id=trackers[0])  # the connection that tracks, not the one that listens
    wait_until(lambda: cache.stats()["tracking_resets"] == 1, 10, what="the reset")
    assert "k" not in cache
    wait_until(lambda: cache.stats()["tracking"], 10, what="tracking again")
    read_back([cache], "k", 1)
    client.set(f"{PREFIX}k", msgpack.packb(2))
    wait_gone([cache], "k", 5)


# -- failures ----------------------------------------------------------------------------------


def test_a_backing_failure_raises_and_leaves_the_local_copy_unchanged(
    server: RedisServer, members: Callable[..., list[tuple[Node, Cache]]]
) -> None:
    (_, a), (_, b) = members(url(server), 2)
    a.set("k", "v1")
    wait_until(lambda: b.stats()["invalidations"] == 1, 10, what="b hearing of a's write")
    read_back([b], "k", "v1")
    client = server.client()
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", 1)  # every write is refused (OOM); reads and tracking go on
    with pytest.raises(BackingError, match="could not write"):
        a.set("k", "v2")
    with pytest.raises(BackingError):
        a.fetch("new", lambda key: "loaded")  # the loader's value cannot be stored in the store
    assert held(a, "k") == "v1" and held(b, "k") == "v1" and "new" not in a
    assert client.get(f"{PREFIX}k") == msgpack.packb("v1")
    assert a.stats()["backing_errors"] == 2
    client.config_set("maxmemory", 0)
    a.set("k", "v3")
    assert a.get("k") == "v3"


def test_a_value_another_client_wrote_in_another_format_is_a_backing_error_and_nothing_is_kept(
    server: RedisServer, members: Callable[..., list[tuple[Node, Cache]]]
) -> None:
    ((_, cache),) = members(url(server), 1)
    server.client().set(f"{PREFIX}raw", b"\xc1")  # 0xc1: never used by msgpack
    with pytest.raises(BackingError, match="serializer"):
        cache.get("raw")
    assert "raw" not in cache


# -- what goes to Redis ----------------------------------------------------------------------


def test_values_round_trip_through_redis_and_keep_the_caches_ttl_there(
    server: RedisServer, members: Callable[..., list[tuple[Node, Cache]]]
) -> None:
    (_, a), (_, b) = members(url(server), 2)
    values: dict[str, Any] = {
        "none": None,
        "bytes": b"\x00\xff",
        "nested": {"a": [1, 2.5, {"b": None}], "c": b"x"},
        "big": 2**63,
        "text": "é" * 100,
    }
    for key, value in values.items():
        a.set(key, value)
    client = server.client()
    for key, value in values.items():
        wait_until(lambda key=key: key not in b, 5, what="b dropping its copy")
        assert b.get(key, "absent") == value
        assert 3590_000 < client.pttl(f"{PREFIX}{key}") <= 3600_000
    a.set("short", 1, ttl=5)
    assert 4000 < client.pttl(f"{PREFIX}short") <= 5000
    a.set("forever", 1, ttl=None)
    assert client.pttl(f"{PREFIX}forever") == -1
    with pytest.raises(TypeError, match="str keys"):
        a.set(7, 1)  # type: ignore[arg-type]


def test_a_cache_takes_a_redis_py_client_and_its_own_prefix_and_refuses_a_decoding_client(
    server: RedisServer,
) -> None:
    node = Node()
    try:
        cache = node.cache("acc", backing=redis.Redis(port=server.port), backing_prefix="svc:")
        node.start()
        cache.set("k", 1)
        assert server.client().get("svc:k") == msgpack.packb(1)
        with pytest.raises(ValueError, match="decode_responses"):
            node.cache("other", backing=redis.Redis(port=server.port, decode_responses=True))
        node.cache("plain")
        with pytest.raises(ValueError, match="backing"):
            node.cache("plain", backing=url(server))
    finally:
        node.stop()


# -- single flight --------------------------------------------------------------------------


def test_three_members_by_a_hundred_fetches_of_ten_new_keys_make_ten_backing_reads_and_ten_loader_calls(
    server: RedisServer, members: Callable[..., list[tuple[Node, Cache]]]
) -> None:
    caches = [c for _, c in members(url(server))]
    calls: Counter[str] = Counter()
    entered = threading.Condition()
    callers = 0

    def upstream(key: str) -> str:
        # a slow upstream, answering once the whole burst has come in (300 threads share one GIL here)
        with entered:
            calls[key] += 1
            assert entered.wait_for(lambda: callers == 300, 30)
        return f"value of {key}"

    keys = [f"new:{i}" for i in range(10)]
    got: list[str] = []

    def caller(cache: Cache, key: str) -> None:
        nonlocal callers
        with entered:
            callers += 1
            entered.notify_all()
        got.append(cache.fetch(key, upstream))

    threads = [threading.Thread(target=caller, args=(c, keys[i % 10])) for c in caches for i in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(got) == sorted(f"value of {k}" for k in keys for _ in range(30))
    assert calls == Counter(dict.fromkeys(keys, 1))
    assert sum(c.stats()["backing_reads"] for c in caches) == 10
    client = server.client()
    assert all(client.get(f"{PREFIX}{k}") == msgpack.packb(f"value of {k}") for k in keys)


def test_a_fetch_of_a_key_redis_holds_reads_it_once_for_the_cluster_and_calls_no_loader(
    server: RedisServer, members: Callable[..., list[tuple[Node, Cache]]]
) -> None:
    server.client().set(f"{PREFIX}there", msgpack.packb("stored"))
    caches = [c for _, c in members(url(server))]

    def never(key: str) -> str:
        raise AssertionError("the loader ran although Redis held the key")

    assert [c.fetch("there", never) for c in caches] == ["stored"] * 3
    assert sum(c.stats()["backing_reads"] for c in caches) == 1


# -- warm boot ------------------------------------------------------------------------------


def test_a_rolling_restart_of_the_members_keeps_the_local_tier_warm(
    server: RedisServer, members: Callable[..., list[tuple[Node, Cache]]]
) -> None:
    client = server.client()
    pipe = client.pipeline(transaction=False)
    keys = [f"hot:{i}" for i in range(2000)]
    for key in keys:
        pipe.set(f"{PREFIX}{key}", msgpack.packb(key), px=3600_000)
    pipe.execute()
    running = members(url(server))
    for key in keys:
        running[0][1].get(key)  # read through once; the fill replicates to the others
    wait_until(lambda: all(len(c) == len(keys) for _, c in running), 20, what="every member holding the hot keys")
    for step in range(3):
        node, _ = running.pop(0)
        node.stop()
        restarted = members(url(server), 1, seed=running[0][0])
        fresh = restarted[0][1]
        assert len(fresh) == len(keys), f"step {step}: the new member booted with {len(fresh)} entries"
        assert all(fresh.get(k) == k for k in keys)
        assert fresh.stats()["backing_reads"] == 0, f"step {step}: a restarted member read the store"
        running += restarted


# -- Redis Cluster --------------------------------------------------------------------------


@contextlib.contextmanager
def _cluster(replicas: int = 0) -> Iterator[list[RedisServer]]:
    """Three primaries (each with ``replicas`` replicas) made by ``redis-cli --cluster create``."""
    binary = _need_redis()
    options = ("--cluster-enabled", "yes", "--cluster-node-timeout", "1000")
    servers = [RedisServer(binary, *options, port=_cluster_port()) for _ in range(3 * (1 + replicas))]
    try:
        for s in servers:
            s.client()
        assert CLI is not None
        subprocess.run(
            [CLI, "--cluster", "create", *(f"127.0.0.1:{s.port}" for s in servers), *_replicas(replicas)],
            check=True,
            capture_output=True,
            timeout=60,
        )
        clients = [s.client() for s in servers]
        wait_until(lambda: all(_cluster_ok(c) for c in clients), 30, what="the cluster to be ok")
        synced = lambda c: c.info("replication").get("master_link_status", "up") == "up"  # noqa: E731
        wait_until(lambda: all(synced(c) for c in clients), 30, what="replicas in sync (else none fails over)")
        yield servers
    finally:
        for s in servers:
            s.stop()


def _replicas(count: int) -> list[str]:
    return ["--cluster-replicas", str(count), "--cluster-yes"]


def _cluster_ok(client: Any) -> bool:
    return b"cluster_state:ok" in client.execute_command("CLUSTER", "INFO")


@pytest.fixture
def redis_cluster() -> Iterator[list[RedisServer]]:
    with _cluster() as servers:
        yield servers


def _cluster_port() -> int:
    """A free port whose cluster bus port (itself + 10000) is free too and below 65536."""
    while True:
        port = free_port()
        if port + 10000 < 65536:
            with socket.socket() as bus:
                try:
                    bus.bind(("127.0.0.1", port + 10000))
                except OSError:
                    continue
            return port


def _slot_server(servers: list[RedisServer], name: str) -> RedisServer:
    """The primary that serves name's slot, as the first server still running sees it."""
    client = next(s for s in servers if s.proc.poll() is None).client()
    slot = client.execute_command("CLUSTER", "KEYSLOT", name)
    for start, end, owner, *_ in client.execute_command("CLUSTER", "SLOTS"):
        if start <= slot <= end:
            return next(s for s in servers if s.port == int(owner[1]))
    raise AssertionError("no owner for the slot")


def _slot_owner(servers: list[RedisServer], name: str) -> tuple[RedisServer, str]:
    """``_slot_server`` and its cluster node id."""
    found = _slot_server(servers, name)
    return found, found.client().execute_command("CLUSTER", "MYID").decode()


def test_in_a_redis_cluster_a_write_on_any_primary_and_a_migrated_key_are_invalidated(
    redis_cluster: list[RedisServer], members: Callable[..., list[tuple[Node, Cache]]]
) -> None:
    caches = [c for _, c in members(f"redis+cluster://127.0.0.1:{redis_cluster[0].port}", 2)]
    assert all(c.stats()["tracking"] for c in caches)
    keys = [f"k{i}" for i in range(30)]  # spread over the three primaries
    owners = {_slot_owner(redis_cluster, f"{PREFIX}{k}")[0].port for k in keys}
    assert len(owners) == 3
    for key in keys:
        caches[0].set(key, "old")
        assert caches[1].get(key) == "old"
    for key in keys:
        owner, _ = _slot_owner(redis_cluster, f"{PREFIX}{key}")
        owner.client().set(f"{PREFIX}{key}", msgpack.packb("new"))
        wait_gone(caches, key, 5)
        assert [c.get(key) for c in caches] == ["new", "new"]
    # move one key's slot to another primary, then write it there
    name = f"{PREFIX}{keys[0]}"
    source, source_id = _slot_owner(redis_cluster, name)
    target = next(s for s in redis_cluster if s is not source)
    target_id = target.client().execute_command("CLUSTER", "MYID").decode()
    slot = source.client().execute_command("CLUSTER", "KEYSLOT", name)
    target.client().execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
    source.client().execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
    source.client().execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", name)
    for s in redis_cluster:
        s.client().execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
    assert _slot_owner(redis_cluster, name)[0] is target
    read_back(caches, keys[0], "new")  # after the migration's own announcements
    target.client().set(name, msgpack.packb("moved"))
    wait_gone(caches, keys[0], 5)
    assert [c.get(keys[0]) for c in caches] == ["moved", "moved"]
    caches[0].set(keys[0], "ours")  # a write to the key's new primary
    assert target.client().get(name) == msgpack.packb("ours")


# -- the asyncio API and the figures ------------------------------------------------------------


def test_the_async_api_of_a_backed_cache_reaches_redis_off_the_event_loop(server: RedisServer) -> None:
    import asyncio

    node = Node()
    cache = node.cache("acc", backing=url(server))
    backing = cache._backing
    assert backing is not None
    threads: list[threading.Thread] = []
    for name in ("read", "write", "delete"):
        command = getattr(backing, name)

        def recorded(*args: Any, command: Callable[..., Any] = command) -> Any:
            threads.append(threading.current_thread())
            return command(*args)

        setattr(backing, name, recorded)

    async def load(key: str) -> str:
        return f"loaded {key}"

    async def main() -> tuple[threading.Thread, list[Any]]:
        async with node:
            loop_thread = threading.current_thread()
            await cache.aset("k", 1)
            got = [await cache.aget("absent"), await cache.afetch("new", load), await cache.adelete("k")]
            return loop_thread, got

    loop_thread, got = asyncio.run(main())
    assert got == [None, "loaded new", True]
    assert len(threads) == 5 and loop_thread not in threads  # set, get, fetch's read and write, delete


def test_node_stats_and_prometheus_show_backing_reads_errors_invalidations_and_resets(
    server: RedisServer, members: Callable[..., list[tuple[Node, Cache]]]
) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from shoal.contrib.prometheus import register

    ((node, cache),) = members(url(server), 1)
    server.client().set(f"{PREFIX}k", msgpack.packb(1))
    wait_until(lambda: cache.stats()["invalidations"] == 1, 10, what="the announcement")
    assert cache.get("k") == 1
    figures = node.stats()["caches"]["acc"]
    assert figures["backing_reads"] == 1 and figures["backing_hits"] == 1 and figures["tracking"] is True
    registry = CollectorRegistry()
    register(node, registry)
    text = generate_latest(registry).decode()
    assert 'shoal_backing_reads_total{cache="acc"} 1.0' in text
    assert 'shoal_backing_invalidations_total{cache="acc"} 1.0' in text
    assert 'shoal_backing_tracking_resets_total{cache="acc"} 0.0' in text


def test_a_members_write_is_never_shadowed_by_a_copy_a_peer_stamped_later_but_read_before_it(
    server: RedisServer, members: Callable[..., list[tuple[Node, Cache]]]
) -> None:
    ((_, cache),) = members(url(server), 1)
    # a peer's fill of the old value, replicated here, stamped a little later than our next stamp
    # (the peer's clock a few milliseconds ahead, within the skew the members allow)
    ahead = cache._clock.stamp() + (5 << 16 << 64)
    cache._keep("k", "old", msgpack.packb("old"), time.time() + 60, ahead)
    assert held(cache, "k") == "old"
    cache.set("k", "new")
    assert held(cache, "k") != "old"
    assert cache.get("k") == "new"


def test_after_a_redis_cluster_failover_the_members_track_the_new_primary_and_its_writes_invalidate(
    members: Callable[..., list[tuple[Node, Cache]]],
) -> None:
    with _cluster(replicas=1) as servers:
        primary = next(s for s in servers if s.client().info("replication")["role"] == "master")
        caches = [c for _, c in members(f"redis+cluster://127.0.0.1:{primary.port}", 2)]
        key = next(f"k{i}" for i in range(1000) if _slot_server(servers, f"{PREFIX}k{i}") is primary)
        caches[0].set(key, "old")
        read_back(caches, key, "old")
        # Redis replicates asynchronously: a primary killed before its replica has the write
        # loses it (then every member rightly reads nothing). Wait for the replica first.
        assert primary.client().wait(1, 5000) >= 1, "the replica never acknowledged the write"
        primary.proc.kill()  # its replica takes over its slots
        primary.proc.wait()
        alive = [s for s in servers if s is not primary]
        wait_until(
            lambda: _slot_server(servers, f"{PREFIX}{key}") is not primary and _cluster_ok(alive[0].client()),
            30,
            what="the failover",
        )
        wait_until(lambda: all(c.stats()["tracking_resets"] >= 1 for c in caches), 30, what="every member reset")
        assert not any(key in c for c in caches)
        wait_until(lambda: all(c.stats()["tracking"] for c in caches), 30, what="the new primary tracked")
        read_back(caches, key, "old")  # the replica had it
        new_primary = _slot_server(alive, f"{PREFIX}{key}")
        new_primary.client().set(f"{PREFIX}{key}", msgpack.packb("new"))
        wait_gone(caches, key, 5)
        assert [c.get(key) for c in caches] == ["new", "new"]


def test_a_backing_store_that_cannot_be_reached_is_a_backing_error_at_first_use_not_a_hang() -> None:
    _need_redis()
    port = free_port()  # nothing listens there
    with pytest.raises(BackingError, match="Cluster could not be reached"):
        Node().cache("c", backing=f"redis+cluster://127.0.0.1:{port}")
    node = Node()
    try:
        cache = node.cache("d", backing=f"redis://127.0.0.1:{port}/0")  # tracking keeps trying meanwhile
        assert cache.stats()["tracking"] is False
        with pytest.raises(BackingError, match="could not read"):
            cache.get("k")
        with pytest.raises(BackingError, match="could not write"):
            cache.set("k", 1)
        assert "k" not in cache
    finally:
        node.stop()


# -- which announcements a waiting member lets through (no server needed) ---------------------


class _Answers:
    """A singleflight.Cluster whose answers the test gives."""

    limit = 1.0

    def __init__(self) -> None:
        self.asked: list[Future[str]] = []

    def on_loop(self) -> bool:
        return False

    def ask(self, cache: str, key: Any) -> Future[str]:
        self.asked.append(Future())
        return self.asked[-1]

    def report(self, cache: str, key: Any, error: BaseException | None = None) -> None:
        pass

    def give_back(self, cache: str, key: Any) -> None:
        pass


def _tier() -> tuple[Any, list[str], _Answers, Any]:
    from shoal.backing import Backing

    dropped: list[str] = []
    tier = Backing(redis.Redis(port=1), PREFIX, dropped.append, lambda: dropped.append("*"))  # never connected
    answers = _Answers()
    return tier, dropped, answers, tier.awaiting(answers)


def test_while_waiting_for_another_members_load_only_the_first_announcement_is_taken_for_its_write() -> None:
    tier, dropped, answers, cluster = _tier()
    cluster.ask("acc", "k")
    answers.asked[-1].set_result(VALUE)  # told it is loaded before the holder's write is announced here
    tier.announced([f"{PREFIX}k".encode()])
    assert dropped == []  # the holder's write: its value is on its way here
    cluster.ask("acc", "k")  # the value had not arrived: it asks again, still the same wait
    tier.announced([f"{PREFIX}k".encode()])
    assert dropped == ["k"]  # a second change: whatever arrives for it is dropped
    tier.settled("k")
    tier.announced([f"{PREFIX}k".encode()])
    assert dropped == ["k", "k"]


def test_a_member_told_to_load_itself_or_done_waiting_lets_every_announcement_through() -> None:
    tier, dropped, answers, cluster = _tier()
    cluster.ask("acc", "a")
    answers.asked[-1].set_result(LOAD)  # it reads the store itself: its fill is stamped before the read
    tier.announced([f"{PREFIX}a".encode()])
    cluster.ask("acc", "b")
    tier.settled("b")  # the fetch ended (the value came)
    tier.announced([f"{PREFIX}b".encode(), b"other:b", f"{PREFIX}\xff".encode("latin-1")])
    tier.announced(None)  # FLUSHALL
    assert dropped == ["a", "b", "*"]
    assert tier.stats()["invalidations"] == 4  # a, b, the undecodable name under our prefix, the flush
