"""A real partition (network namespaces, iptables DROP) with writes on both sides, then the heal.

Needs root and the ``ip`` and ``iptables`` commands; skips otherwise (tests/support/netns.py).
"""

from __future__ import annotations

import pytest

from tests.faults.harness import FAST, SharedMember, Writer, meshed, record, settle, start
from tests.support.cluster import Cluster, wait_until
from tests.support.netns import Netns
from tests.test_replication_cluster import cut_off

pytestmark = pytest.mark.slow


def test_a_partition_with_writes_on_both_sides_heals_to_every_acknowledged_key_on_every_member(
    netns: Netns, cluster: Cluster
) -> None:
    hosts = [netns.add() for _ in range(3)]
    members: list[SharedMember] = []
    for host in hosts:
        seeds = [h.address() for h in hosts if h is not host]
        members.append(
            start(cluster, listen=host.address(), seeds=seeds, secret="netns-test-secret", prefix=host.prefix, **FAST)
        )
    for member in members:
        assert member.cmd("ready", timeout=30) is True
    wait_until(lambda: meshed(members), 30, what="a full mesh across namespaces")
    a, b, c = members
    majority = Writer(a, prefix="maj").start()
    minority = Writer(c, prefix="min").start()
    majority.wait_for(100)
    minority.wait_for(100)

    cut_off(netns, hosts[2], c, [a, b])
    try:
        majority.wait_for(300)  # both sides keep acknowledging writes while apart
        minority.wait_for(300)
        assert b.cmd("get", key=f"min{minority.acked - 1}") is None  # the partition is real
        assert c.cmd("get", key=f"maj{majority.acked - 1}") is None
    finally:
        netns.heal(hosts[2])
    wait_until(lambda: meshed(members), 30, what="the mesh after the heal")
    majority.wait_for(100)
    minority.wait_for(100)
    acked = majority.stop() + minority.stop()

    lost = settle(members, [majority, minority], timeout=40)
    print(f"\npartition: {majority.acked} keys acknowledged by the majority, {minority.acked} by the minority")
    print(f"  keys lost per member: {lost}")
    record(
        "partition (netns + iptables DROP), writes on both sides, heal",
        tried=1,
        survived=1,
        acked=acked,
        lost_keys=max(lost.values()),
        notes=f"acked {majority.acked} by the majority and {minority.acked} by the minority",
    )
    assert lost == {m.address: 0 for m in members}
