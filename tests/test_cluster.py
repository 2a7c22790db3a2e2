"""Real member processes on loopback: gossip discovery, crashes, freezes, restarts and catching up."""

from __future__ import annotations

import signal
import time

import pytest

from tests.support.cluster import Cluster, Member, cluster, wait_until

__all__ = ["cluster"]  # the fixture, imported for the tests below

pytestmark = pytest.mark.slow

FAILURE_TIMEOUT = 1.0
DETECTORS = {"failure_timeout": FAILURE_TIMEOUT, "heartbeat_interval": 0.2, "handshake_timeout": 1.0}
SLACK = 2.0  # the ticker's period, a loaded CI machine


def sees_up(observer: Member, *others: Member) -> bool:
    return {m.address for m in others} <= observer.peers_up()


def sees_down(observer: Member, other: Member) -> bool:
    return other.address not in observer.peers_up()


def test_a_member_that_knows_only_the_second_still_finds_the_first(cluster: Cluster) -> None:
    first = cluster.start()
    second = cluster.start(seeds=[first.address])
    third = cluster.start(seeds=[second.address])
    wait_until(lambda: sees_up(third, first, second), 10, what="third to find first through gossip")
    wait_until(lambda: sees_up(first, second, third), 10, what="first to see third")
    first.cmd("set", key="k", value="written on first")
    wait_until(lambda: third.cmd("get", key="k") == "written on first", 10, what="the write to reach third")


def test_a_killed_member_is_reported_down_and_a_new_process_at_its_address_rejoins_caught_up(
    cluster: Cluster,
) -> None:
    a = cluster.start(**DETECTORS)
    b = cluster.start(seeds=[a.address], **DETECTORS)
    c = cluster.start(seeds=[a.address], **DETECTORS)
    wait_until(lambda: sees_up(a, b, c) and sees_up(b, a, c), 10, what="the cluster to form")
    a.cmd("set_range", prefix="before", start=0, count=200)
    wait_until(lambda: c.cmd("get_range", prefix="before", start=0, count=200) == 200, 10)

    c.kill(signal.SIGKILL)
    killed = time.monotonic()
    wait_until(lambda: sees_down(a, c) and sees_down(b, c), FAILURE_TIMEOUT + SLACK, what="c reported down")
    assert time.monotonic() - killed <= FAILURE_TIMEOUT + SLACK
    a.cmd("set_range", prefix="while_down", start=0, count=100)

    reborn = cluster.start(listen=c.address, seeds=[a.address], **DETECTORS)
    assert reborn.address == c.address and reborn.id != c.id
    assert reborn.cmd("ready", timeout=10) is True
    wait_until(lambda: sees_up(a, reborn) and sees_up(b, reborn), 10, what="all to see the new process")
    wait_until(lambda: sees_up(reborn, a, b), 10, what="the new process to see all")
    # Caught up by warm boot: what was written before the crash and while it was down.
    assert reborn.cmd("get_range", prefix="before", start=0, count=200) == 200
    assert reborn.cmd("get_range", prefix="while_down", start=0, count=100) == 100
    boot = reborn.cmd("stats")["caches"]["c"]["warm_boot"]
    assert boot["state"] == "warm" and boot["entries"] == 300
    assert [m["id"] for m in a.cmd("members") if m["address"] == c.address] == [reborn.id]


def test_a_frozen_member_is_reported_down_and_comes_back_after_it_resumes(cluster: Cluster) -> None:
    a = cluster.start(**DETECTORS)
    b = cluster.start(seeds=[a.address], **DETECTORS)
    wait_until(lambda: sees_up(a, b) and sees_up(b, a), 10, what="the pair to form")

    b.kill(signal.SIGSTOP)
    try:
        frozen = time.monotonic()
        wait_until(lambda: sees_down(a, b), FAILURE_TIMEOUT + SLACK, what="a to report the frozen b down")
        assert time.monotonic() - frozen >= FAILURE_TIMEOUT * 0.5  # by silence, not by a closed socket
    finally:
        b.kill(signal.SIGCONT)
    wait_until(lambda: sees_up(a, b) and sees_up(b, a), 15, what="b to come back up")
    b.cmd("set", key="k", value="after the freeze")
    wait_until(lambda: a.cmd("get", key="k") == "after the freeze", 10)


def test_a_write_made_while_a_member_was_down_reaches_it_after_it_returns(cluster: Cluster) -> None:
    options = {**DETECTORS, "anti_entropy_interval": 0.5}
    a = cluster.start(**options)
    b = cluster.start(seeds=[a.address], **options)
    wait_until(lambda: sees_up(a, b) and sees_up(b, a), 10, what="the pair to form")
    assert b.cmd("ready", timeout=10)

    b.kill(signal.SIGSTOP)
    try:
        wait_until(lambda: sees_down(a, b), FAILURE_TIMEOUT + SLACK, what="b reported down")
        a.cmd("set", key="missed", value="written while b was down")
        a.cmd("delete", key="never-there")
    finally:
        b.kill(signal.SIGCONT)
    # b did not restart, so no warm boot: anti-entropy repairs what it missed.
    wait_until(lambda: b.cmd("get", key="missed") == "written while b was down", 15, what="the repair")
    assert b.cmd("stats")["caches"]["c"]["warm_boot"]["entries"] == 0
    assert a.cmd("keys_digest") == b.cmd("keys_digest")
