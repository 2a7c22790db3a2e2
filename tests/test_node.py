"""The asyncio driver, in process: lifecycle, readiness, members, stats, discovery and caches."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from shoal.errors import ShoalError
from shoal.node import Node
from tests.support.cluster import wait_until

SECRET = "node-test-secret"
FAST: dict[str, Any] = {"heartbeat_interval": 0.1, "failure_timeout": 1.0, "boot_wait": 0.3}


@pytest.fixture
def nodes() -> Iterator[Callable[..., Node]]:
    """Start nodes on background threads; every one is stopped at teardown."""
    started: list[Node] = []

    def start(*, caches: tuple[str, ...] = ("c",), **kw: Any) -> Node:
        node = Node(secret=SECRET, **{**FAST, **kw})
        for name in caches:
            node.cache(name, ttl=None)
        started.append(node.start())
        return node

    yield start
    for node in reversed(started):
        node.stop()


def up_addresses(node: Node) -> set[str]:
    return {m["address"] for m in node.members() if m["state"] == "up"}


async def until(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "") -> Any:
    """``wait_until`` for code running on the event loop: polls without blocking it."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        await asyncio.sleep(0.02)
    return value


def connectable(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
    except OSError:
        return False
    return True


# -- lifecycle -----------------------------------------------------------------------


def test_start_runs_the_node_on_a_background_thread_and_stop_closes_it() -> None:
    node = Node(secret=SECRET)
    node.cache("c")
    before = set(threading.enumerate())
    assert node.start() is node
    try:
        assert node.address.startswith("127.0.0.1:") and not node.address.endswith(":0")
        workers = [t for t in set(threading.enumerate()) - before if t.name.startswith("shoal-node-")]
        assert len(workers) == 1 and workers[0].daemon
        assert connectable(node.address)
    finally:
        node.stop()
    assert not workers[0].is_alive()
    assert not connectable(node.address)
    node.stop()  # a second stop is harmless


def test_async_with_runs_the_node_on_the_callers_loop() -> None:
    async def main() -> tuple[Any, Any, bool]:
        loop = asyncio.get_running_loop()
        async with Node(secret=SECRET, **FAST) as first:
            a = first.cache("c", ttl=None)
            assert first._driver.loop is loop
            assert await first.ready(timeout=5)
            async with Node(seeds=[first.address], secret=SECRET, **FAST) as second:
                b = second.cache("c", ttl=None)
                assert second._driver.loop is loop
                assert await second.ready(timeout=5)
                await a.aset("k", "from first")
                await until(lambda: b.get("k") is not None, what="the write to replicate")
                await b.aset("k2", "from second")
                await until(lambda: a.get("k2") is not None, what="the reverse write")
                return b.get("k"), a.get("k2"), first.wait_ready(0)

    assert asyncio.run(main()) == ("from first", "from second", True)


def test_wait_ready_is_true_at_once_for_a_member_with_no_seeds(nodes: Callable[..., Node]) -> None:
    started = time.monotonic()
    node = nodes(boot_wait=30.0)  # no seeds: nothing to wait for, whatever boot_wait says
    assert node.wait_ready(timeout=5)
    assert time.monotonic() - started < 2.0
    assert node.stats()["caches"]["c"]["warm_boot"]["state"] == "no peers"


def test_ready_before_the_node_runs_is_an_error() -> None:
    async def main() -> None:
        await Node(secret=SECRET).ready(0.1)

    with pytest.raises(ShoalError):
        asyncio.run(main())


# -- members and stats ---------------------------------------------------------------


def test_members_lists_itself_and_each_peer_with_id_address_state_and_last_heard(nodes: Callable[..., Node]) -> None:
    a = nodes()
    b = nodes(seeds=[a.address])
    wait_until(lambda: b.address in up_addresses(a), 10, what="a to see b")
    rows = {m["address"]: m for m in a.members()}
    assert set(rows) == {a.address, b.address}
    me, peer = rows[a.address], rows[b.address]
    assert me["id"] == f"{a.node_id:016x}" and me["state"] == "self"
    assert peer["id"] == f"{b.node_id:016x}" and peer["state"] == "up"
    for row in (me, peer):
        assert {"id", "address", "state", "last_heard"} <= set(row)
        assert isinstance(row["last_heard"], float) and row["last_heard"] >= 0
        assert row["caches"] == ["c"]
    # last_heard is seconds since the peer was heard; heartbeats keep it fresh.
    assert peer["last_heard"] < a.config.failure_timeout


def test_stats_reports_replication_figures_and_warm_boot(nodes: Callable[..., Node]) -> None:
    a = nodes()
    a.cache("c").set_many({f"k{i}": i for i in range(50)})
    b = nodes(seeds=[a.address])
    assert b.wait_ready(10)
    a.cache("c").set("live", 1)
    wait_until(lambda: b.cache("c").get("live") == 1, 10, what="the live write")

    sa, sb = a.stats(), b.stats()
    assert sb["id"] == f"{b.node_id:016x}" and sb["address"] == b.address
    assert sb["ready"] is True and sb["members_up"] == 1
    figures = sb["caches"]["c"]
    for name in ("ops_sent", "ops_received", "ops_applied", "ops_dropped", "queue_depth", "repair_rounds"):
        assert name in figures, name
    assert figures["entries"] == 51
    assert figures["ops_applied"] >= 1 and sa["caches"]["c"]["ops_sent"] >= 1
    boot = figures["warm_boot"]
    assert boot["state"] == "warm" and boot["donor"] == f"{a.node_id:016x}"
    assert boot["entries"] == 50
    assert boot["bytes"] > 50 * 18  # each entry brings at least its expiry and its hlc (9 bytes each)
    assert 0 < boot["seconds"] < 10  # it waited for the handshake at least (scrypt), and not forever
    assert sa["caches"]["c"]["warm_boot"]["dumps_served"] == 1


# -- discovery ------------------------------------------------------------------------


def test_dns_discovery_finds_a_peer_through_the_resolver(nodes: Callable[..., Node]) -> None:
    a = nodes()
    asked: list[tuple[str, int]] = []

    async def resolver(name: str, port: int) -> list[str]:
        asked.append((name, port))
        return [a.address]

    b = nodes(discovery="dns:svc.local:7600", resolver=resolver, dns_interval=0.2)
    wait_until(lambda: a.address in up_addresses(b) and b.address in up_addresses(a), 10, what="the peers to meet")
    assert asked[0] == ("svc.local", 7600)
    a.cache("c").set("k", "v")
    wait_until(lambda: b.cache("c").get("k") == "v", 10, what="replication to the discovered peer")


def test_dns_discovery_survives_a_failing_resolver(nodes: Callable[..., Node]) -> None:
    a = nodes()
    calls = 0

    async def flaky(name: str, port: int) -> list[str]:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise OSError("temporary failure in name resolution")
        return [a.address]

    b = nodes(discovery="dns:svc.local:7600", resolver=flaky, dns_interval=0.1)
    wait_until(lambda: a.address in up_addresses(b), 10, what="discovery after resolver failures")


def test_two_groups_that_formed_apart_merge_once_one_learns_the_others_address(nodes: Callable[..., Node]) -> None:
    # Group one: a1 + a2. Group two: b1 + b2, found through DNS, which at first knows only b1.
    a1 = nodes()
    a2 = nodes(seeds=[a1.address])
    b1 = nodes()
    visible = [b1.address]

    async def resolver(name: str, port: int) -> list[str]:
        return list(visible)

    b2 = nodes(discovery="dns:svc.local:7600", resolver=resolver, dns_interval=0.1)
    wait_until(lambda: up_addresses(a1) == {a2.address}, 10, what="group one to form")
    wait_until(lambda: up_addresses(b2) == {b1.address}, 10, what="group two to form")
    a1.cache("c").set("one", 1)
    b1.cache("c").set("two", 2)
    wait_until(lambda: b2.cache("c").get("two") == 2 and a2.cache("c").get("one") == 1, 10)
    assert up_addresses(a1) == {a2.address} and up_addresses(b1) == {b2.address}

    visible.append(a1.address)  # DNS starts returning group one's member
    everyone = {a1, a2, b1, b2}

    def merged() -> bool:
        return all(up_addresses(node) == {n.address for n in everyone - {node}} for node in everyone)

    wait_until(merged, 10, what="every member to see every other")
    a2.cache("c").set("after", 3)
    wait_until(lambda: all(n.cache("c").get("after") == 3 for n in everyone), 10, what="a write to reach all")


# -- caches ---------------------------------------------------------------------------


def test_cache_with_the_same_name_twice_is_the_same_cache() -> None:
    node = Node(secret=SECRET)
    accounts = node.cache("accounts", ttl=60)
    assert node.cache("accounts") is accounts
    assert node.cache("accounts", ttl=60) is accounts
    assert node.cache("other") is not accounts


def test_asking_for_an_existing_cache_with_other_options_is_an_error_not_ignored() -> None:
    node = Node(secret=SECRET)
    node.cache("accounts", ttl=60, max_entries=100)
    with pytest.raises(ValueError, match="ttl=5"):
        node.cache("accounts", ttl=5)
    with pytest.raises(ValueError, match="max_entries=10"):
        node.cache("accounts", max_entries=10)


def test_a_cache_added_after_start_joins_its_group_and_replicates(nodes: Callable[..., Node]) -> None:
    a = nodes()
    b = nodes(seeds=[a.address])
    assert b.wait_ready(10)
    wait_until(lambda: b.address in up_addresses(a), 10, what="a to see b")
    late_a = a.cache("late", ttl=None)
    late_a.set("early", 1)  # before any peer hosts "late"
    # Keep b's loop busy for a moment (a long scan, say): readiness must not depend on
    # the loop getting round to the new cache before the caller asks.
    release = threading.Event()
    b._driver.loop.call_soon_threadsafe(release.wait, 5)
    late_b = b.cache("late", ttl=None)
    threading.Timer(0.2, release.set).start()
    # Not ready until the new cache finished its warm boot, which brings what a holds.
    assert b.wait_ready(10)
    assert b.stats()["caches"]["late"]["warm_boot"]["state"] == "warm"
    assert late_b.get("early") == 1
    wait_until(lambda: "late" in next(m for m in a.members() if m["address"] == b.address)["caches"], 10)
    late_b.set("k", "from b")
    late_a.set("k2", "from a")
    wait_until(lambda: late_a.get("k") == "from b" and late_b.get("k2") == "from a", 10, what="both ways")
    assert a.cache("c").get("k") is None  # caches stay apart


def test_ready_waits_for_a_cache_added_on_the_loop_after_start() -> None:
    async def main() -> tuple[bool, str, Any]:
        async with Node(secret=SECRET, **FAST) as first:
            first.cache("c")
            assert await first.ready(5)
            first.cache("late", ttl=None).set("early", 1)
            async with Node(seeds=[first.address], secret=SECRET, **FAST) as second:
                second.cache("c")
                assert await second.ready(5)
                await until(lambda: second.members()[1:] and "late" in second.members()[1]["caches"])
                late = second.cache("late", ttl=None)
                ready = await second.ready(5)
                return ready, second.stats()["caches"]["late"]["warm_boot"]["state"], late.get("early")

    assert asyncio.run(main()) == (True, "warm", 1)


def test_member_up_and_down_callbacks_fire(nodes: Callable[..., Node]) -> None:
    a = nodes()
    ups: list[tuple[int, str]] = []
    downs: list[tuple[int, str, str]] = []
    a.on_member_up.append(lambda peer, listen: ups.append((peer, listen)))
    a.on_member_down.append(lambda peer, listen, reason: downs.append((peer, listen, reason)))
    b = nodes(seeds=[a.address])
    wait_until(lambda: ups, 10, what="member up")
    assert ups == [(b.node_id, b.address)]
    b.stop()
    wait_until(lambda: downs, 10, what="member down")
    assert downs[0][:2] == (b.node_id, b.address) and downs[0][2] == "left"


def test_ready_with_a_zero_timeout_answers_true_once_the_node_is_ready() -> None:
    async def main() -> bool:
        async with Node() as node:
            node.cache("c")
            assert await node.ready(timeout=5)
            return await node.ready(timeout=0)  # a readiness probe asks without waiting

    assert asyncio.run(main())


def test_the_config_a_node_shows_is_the_one_it_runs_and_cannot_be_changed_under_it() -> None:
    import dataclasses

    node = Node(mesh_wait=1.5, max_peer_backlog=1 << 20)
    assert node.config.mesh_wait == 1.5 and node.config.max_peer_backlog == 1 << 20
    assert node._driver.core.config is node.config
    with pytest.raises(dataclasses.FrozenInstanceError):
        node.config.mesh_wait = 9.0  # type: ignore[misc]


def test_an_unknown_or_impossible_option_is_refused_at_construction() -> None:
    with pytest.raises(TypeError, match="mesh_wiat"):
        Node(mesh_wiat=1.0)
    with pytest.raises(ValueError, match="warm_donors"):
        Node(warm_donors=3)
    with pytest.raises(ValueError, match="failure_timeout"):
        Node(failure_timeout=0)


def test_the_node_s_public_surface_is_small() -> None:
    public = {name for name in dir(Node(secret=SECRET)) if not name.startswith("_")}
    assert public == {
        "address", "answer", "cache", "config", "members", "node_id", "on_member_down", "on_member_up",
        "ready", "start", "stats", "stop", "wait_ready", "write_snapshot",
    }  # fmt: skip


def test_a_cache_name_the_wire_or_gossip_could_not_carry_is_refused_when_the_cache_is_made() -> None:
    node = Node(secret=SECRET)
    with pytest.raises(ValueError, match="255"):
        node.cache("n" * 256)
    with pytest.raises(TypeError):
        node.cache(b"bytes")  # type: ignore[arg-type]
    for i in range(64):
        node.cache(f"c{i}")
    with pytest.raises(ValueError, match="at most 64 caches"):
        node.cache("one-too-many")
