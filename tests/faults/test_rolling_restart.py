"""A rolling restart of every member of a five-member cluster under continuous writes.

One step per member: the writer moves to the next member, the member is stopped
(gracefully, or with SIGKILL), and a new process listens on its address, seeded with
the others. The writer only ever writes through a member that stays up during the
step, so every key it got an answer for must be on every member at the end.
"""

from __future__ import annotations

import signal

import pytest

from tests.faults.harness import FAST, SharedMember, Writer, meshed, record, settle, start, start_cluster
from tests.support.cluster import Cluster, wait_until

pytestmark = pytest.mark.slow

MEMBERS = 5


@pytest.mark.parametrize("how", ["graceful", "kill -9"])
def test_a_rolling_restart_of_five_members_under_writes_loses_no_acknowledged_key(cluster: Cluster, how: str) -> None:
    members = start_cluster(cluster, MEMBERS, **FAST)
    writer = Writer(members[-1], prefix="roll").start()
    writer.wait_for(200)
    steps: list[tuple[str, int, str]] = []  # (address, keys acknowledged while it was away, warm boot)
    try:
        for i in range(MEMBERS):
            victim, survivor = members[i], members[(i + 1) % MEMBERS]
            writer.through(survivor)
            writer.flushed_from(victim, witness=survivor)
            before = writer.acked
            if how == "graceful":
                victim.stop()
            else:
                victim.kill(signal.SIGKILL)
            writer.wait_for(50)  # writes the victim cannot see live
            others = [m for m in members if m is not victim]
            reborn = start(cluster, listen=victim.address, seeds=[m.address for m in others], **FAST)
            assert reborn.address == victim.address and reborn.id != victim.id
            if reborn.cmd("ready", timeout=30) is not True:  # say why, for whoever debugs it next
                stats = reborn.cmd("stats")
                raise AssertionError(f"{reborn.address} not ready: {stats}\n{''.join(list(reborn.log)[-40:])}")
            members[i] = reborn
            wait_until(lambda: meshed(members), 20, what=f"the mesh after restarting {victim.address}")
            boot = reborn.cmd("stats")["caches"]["c"]["warm_boot"]
            steps.append((victim.address, writer.acked - before, f"{boot['state']} {boot['entries']}"))
    finally:
        acked = writer.stop()

    lost = settle(members, [writer])
    print(f"\nrolling restart ({how}): {acked} keys acknowledged")
    for address, during, boot in steps:
        print(f"  restarted {address}: {during} keys acknowledged during the step, warm boot {boot}")
    for address, count in lost.items():
        print(f"  keys lost on {address}: {count}")
    tracebacks = sum(m.logged("Traceback") for m in members if isinstance(m, SharedMember))
    record(
        f"rolling restart of {MEMBERS} members ({how}) under writes",
        tried=MEMBERS,
        survived=len(steps),
        acked=acked,
        lost_keys=max(lost.values()),
        notes=f"lost per member {sorted(lost.values())}; tracebacks logged {tracebacks}",
    )
    assert lost == {m.address: 0 for m in members}
