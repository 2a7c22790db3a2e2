"""Replication between real member processes: concurrent writers, deletes, lost writes, partitions.

Members run as separate processes (tests/support/member.py). The partition tests
put each member in its own network namespace and cut one off with iptables
(tests/support/netns.py), so TCP sees real silence, not a closed socket; they
need root and skip otherwise.
"""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

import pytest

from tests.support.cluster import Cluster, Member, cluster, wait_until
from tests.support.netns import Host, Netns, netns

pytestmark = pytest.mark.slow
FIXTURES = (cluster, netns)  # imported for pytest to find; the tests take them by name

# Short timers so a failure is noticed, and repaired, within seconds.
FAST: dict[str, Any] = {
    "anti_entropy_interval": 0.5,
    "failure_timeout": 1.0,
    "heartbeat_interval": 0.2,
    "handshake_timeout": 2.0,
}
CACHE = "c"


def meshed(members: list[Member]) -> bool:
    """Every member sees every other one up and hosting the cache (so writes reach it)."""
    for member in members:
        others = {m.address for m in members if m is not member}
        peers = {m["address"] for m in member.cmd("members") if m["state"] == "up" and CACHE in m["caches"]}
        if peers != others:
            return False
    return True


def start_three(cluster: Cluster, **options: Any) -> list[Member]:
    first = cluster.start(**options)
    members = [first] + [cluster.start(seeds=[first.address], **options) for _ in range(2)]
    for member in members:
        assert member.cmd("ready", timeout=30)
    wait_until(lambda: meshed(members), timeout=20, what="a full mesh of three")
    return members


def digests(members: list[Member]) -> list[tuple[int, str]]:
    return [(count, sha) for count, sha in (m.cmd("keys_digest") for m in members)]


def converged(members: list[Member]) -> bool:
    return len(set(digests(members))) == 1


def figures(member: Member) -> dict[str, Any]:
    return member.cmd("stats")["caches"][CACHE]  # type: ignore[no-any-return]


def everywhere(members: list[Member], key: str) -> list[Any]:
    return [m.cmd("get", key=key) for m in members]


# -- loopback --------------------------------------------------------------------------


def test_concurrent_writers_on_three_members_converge_to_identical_contents(cluster: Cluster) -> None:
    members = start_three(cluster, **FAST)
    errors: list[BaseException] = []

    def writer(i: int, member: Member) -> None:
        try:
            # Every member writes the same 5,000 keys, each starting at a different point,
            # so the same key is written by several members within milliseconds.
            offset = 1700 * i
            member.cmd("set_range", prefix="k", start=offset, count=5000 - offset, value=f"m{i}-")
            member.cmd("set_range", prefix="k", start=0, count=offset, value=f"m{i}-")
            member.cmd("set_range", prefix=f"own{i}-", start=0, count=500)
            for j in range(300):
                member.cmd("set", key=f"hot{j % 10}", value=f"m{i}-{j}")
        except BaseException as exc:  # reported on the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i, m)) for i, m in enumerate(members)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors

    wait_until(lambda: converged(members), timeout=30, what="identical keys_digest on all three")
    count, _ = members[0].cmd("keys_digest")
    assert count == 5000 + 3 * 500 + 10
    items = dict(members[1].cmd("items"))
    assert all(items[f"k{j}"] in {f"m{i}-{j}" for i in range(3)} for j in range(5000))
    assert {items[f"hot{j}"] for j in range(10)} <= {f"m{i}-{n}" for i in range(3) for n in range(300)}


def test_deletes_replicate_and_an_older_write_does_not_bring_the_key_back(cluster: Cluster) -> None:
    a, b, c = members = start_three(cluster, **FAST)
    a.cmd("set_range", prefix="d", start=0, count=100)
    wait_until(lambda: all(m.cmd("get_range", prefix="d", start=0, count=100) == 100 for m in members))

    for i in range(0, 100, 2):
        assert b.cmd("delete", key=f"d{i}") is True
    wait_until(
        lambda: all(m.cmd("get_range", prefix="d", start=0, count=100) == 50 for m in members),
        what="deletes on every member",
    )
    assert everywhere(members, "d0") == [None, None, None]
    assert everywhere(members, "d1") == ["v1"] * 3

    # Anti-entropy rounds run on: the tombstones keep the older writes from being pulled back.
    rounds = [figures(m)["repair_rounds"] for m in members]
    wait_until(lambda: all(figures(m)["repair_rounds"] >= r + 2 for m, r in zip(members, rounds, strict=True)))
    assert all(m.cmd("get_range", prefix="d", start=0, count=100) == 50 for m in members)
    assert converged(members)
    assert c.cmd("len") == 50


def test_writes_a_frozen_member_missed_reach_it_by_catch_up_when_it_returns(cluster: Cluster) -> None:
    a, b, c = members = start_three(cluster, **FAST)
    a.cmd("set_range", prefix="before", start=0, count=100)
    wait_until(lambda: converged(members))

    # SIGSTOP: c stops reading; the others declare it down and stop sending to it,
    # so what they write meanwhile never reaches it over the replication stream.
    c.kill(signal.SIGSTOP)
    try:
        wait_until(lambda: c.address not in a.peers_up() and c.address not in b.peers_up(), what="c down")
        a.cmd("set_range", prefix="missed", start=0, count=300)
        b.cmd("set", key="before0", value="newer")
        assert b.cmd("delete", key="before1") is True
    finally:
        c.kill(signal.SIGCONT)

    wait_until(lambda: converged(members), timeout=30, what="c caught up")
    assert c.cmd("get_range", prefix="missed", start=0, count=300) == 300
    assert c.cmd("get", key="before0") == "newer"
    assert c.cmd("get", key="before1") is None  # a missed delete is repaired too
    # From the others' logs of recent writes (a's own, relayed by b), not a scan of digests.
    assert figures(a)["catchup_ops_sent"] + figures(b)["catchup_ops_sent"] >= 300 + 2


# -- real partitions (network namespaces) ------------------------------------------------------


def start_in_namespaces(netns: Netns, cluster: Cluster, n: int = 3) -> tuple[list[Host], list[Member]]:
    hosts = [netns.add() for _ in range(n)]
    members = []
    for host in hosts:
        seeds = [h.address() for h in hosts if h is not host]
        members.append(
            cluster.start(listen=host.address(), seeds=seeds, secret="netns-test-secret", prefix=host.prefix, **FAST)
        )
    for member in members:
        assert member.cmd("ready", timeout=30)
    wait_until(lambda: meshed(members), timeout=30, what="a full mesh across namespaces")
    return hosts, members


def cut_off(netns: Netns, host: Host, member: Member, others: list[Member]) -> None:
    """Partition ``host`` and wait until both sides have noticed."""
    netns.partition(host)
    wait_until(
        lambda: all(member.address not in m.peers_up() for m in others) and not member.peers_up(),
        what="both sides of the partition to notice",
    )


def test_writes_lost_to_a_partition_reach_the_cut_off_member_after_the_heal(netns: Netns, cluster: Cluster) -> None:
    hosts, (a, b, c) = start_in_namespaces(netns, cluster)
    members = [a, b, c]
    cut_off(netns, hosts[2], c, [a, b])
    try:
        a.cmd("set_range", prefix="lost", start=0, count=300)
        wait_until(lambda: b.cmd("get_range", prefix="lost", start=0, count=300) == 300)
        assert c.cmd("get_range", prefix="lost", start=0, count=300) == 0  # the partition is real
    finally:
        netns.heal(hosts[2])

    wait_until(lambda: converged(members), timeout=40, what="convergence after the heal")
    assert c.cmd("get_range", prefix="lost", start=0, count=300) == 300
    assert figures(a)["catchup_ops_sent"] + figures(b)["catchup_ops_sent"] >= 300


def test_partition_heals_to_last_writer_wins_on_both_sides(netns: Netns, cluster: Cluster) -> None:
    hosts, (a, b, c) = start_in_namespaces(netns, cluster)
    members = [a, b, c]
    a.cmd("set_range", prefix="base", start=0, count=100)
    wait_until(lambda: converged(members))

    cut_off(netns, hosts[2], c, [a, b])
    try:
        # Each side writes keys the other does not see, and both write the same keys;
        # whichever write came later must win everywhere once the partition heals.
        a.cmd("set_range", prefix="majority", start=0, count=100)
        c.cmd("set_range", prefix="minority", start=0, count=100)
        c.cmd("set", key="x", value="c-early")
        a.cmd("set", key="y", value="a-early")
        time.sleep(0.02)  # versions carry wall-clock milliseconds: make "later" unambiguous
        a.cmd("set", key="x", value="a-late")
        c.cmd("set", key="y", value="c-late")
        b.cmd("set", key="base1", value="b-during")
        c.cmd("set", key="base2", value="c-during")
        time.sleep(0.02)
        c.cmd("set", key="base1", value="c-after-b")
        assert b.cmd("delete", key="base3") is True
        assert c.cmd("delete", key="base4") is True
        assert a.cmd("get", key="x") == "a-late" and c.cmd("get", key="x") == "c-early"
        assert a.cmd("get_range", prefix="minority", start=0, count=100) == 0
    finally:
        netns.heal(hosts[2])

    wait_until(lambda: converged(members), timeout=40, what="convergence after the heal")
    assert everywhere(members, "x") == ["a-late"] * 3
    assert everywhere(members, "y") == ["c-late"] * 3
    assert everywhere(members, "base1") == ["c-after-b"] * 3
    assert everywhere(members, "base2") == ["c-during"] * 3
    assert everywhere(members, "base3") == [None] * 3
    assert everywhere(members, "base4") == [None] * 3
    for member in members:
        assert member.cmd("get_range", prefix="majority", start=0, count=100) == 100
        assert member.cmd("get_range", prefix="minority", start=0, count=100) == 100
    assert a.cmd("len") == 100 + 100 + 100 + 2 - 2
