"""A member frozen with SIGSTOP past the failure timeout while the others keep writing."""

from __future__ import annotations

import signal
import time
from functools import partial

import pytest

from tests.faults.harness import FAST, Writer, record, settle, start_cluster
from tests.support.cluster import Cluster, Member, wait_until
from tests.test_cluster import sees_down, sees_up

pytestmark = pytest.mark.slow

FREEZES = 2


def down_everywhere(victim: Member, others: list[Member]) -> bool:
    return all(sees_down(o, victim) for o in others)


def back_everywhere(victim: Member, others: list[Member]) -> bool:
    return all(sees_up(o, victim) for o in others) and sees_up(victim, *others)


def test_a_member_frozen_past_the_failure_timeout_is_reported_down_and_after_it_resumes_converges_with_no_loss(
    cluster: Cluster,
) -> None:
    members = start_cluster(cluster, 3, **FAST)
    writer = Writer(members[0], prefix="frz").start()
    writer.wait_for(100)
    survived = 0
    detected: list[float] = []
    try:
        for victim in members[1:][:FREEZES]:
            others: list[Member] = [m for m in members if m is not victim]
            victim.kill(signal.SIGSTOP)
            try:
                frozen = time.monotonic()
                wait_until(partial(down_everywhere, victim, others), 10, what="the frozen member down")
                detected.append(time.monotonic() - frozen)
                writer.wait_for(200)  # writes go on while it is down
                assert victim.alive
            finally:
                victim.kill(signal.SIGCONT)
            wait_until(partial(back_everywhere, victim, others), 15, what="the resumed member back up")
            survived += 1
    finally:
        acked = writer.stop()

    lost = settle(members, [writer])
    print(f"\nfreeze: down after {[round(s, 2) for s in detected]} s; keys lost per member {lost}")
    record(
        "member frozen (SIGSTOP) past the failure timeout, then SIGCONT",
        tried=FREEZES,
        survived=survived,
        acked=acked,
        lost_keys=max(lost.values()),
        notes=f"reported down after {', '.join(f'{s:.1f}' for s in detected)} s (timeout {FAST['failure_timeout']} s)",
    )
    # Down by silence (the socket stays open), so not long before the timeout.
    assert all(s >= FAST["failure_timeout"] * 0.5 for s in detected)
    assert lost == {m.address: 0 for m in members}
