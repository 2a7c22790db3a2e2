"""Under load the cluster slows down, it never falls apart: slow members are not declared dead.

One hundred whole members (the same Dispatcher a Node runs) on the simulated network,
1% packet loss (TCP: a lost message arrives a retransmission timeout late, and what
follows it on that connection waits), one member in ten made 20 times slower for 30 s (its loop handles
one thing at a time at 20 times the cost, its timer fires 20 times less often), while
every member writes. Members that were only slow stay up, every write reaches every
member, and a member that says it is ready holds every write made before.
"""

from __future__ import annotations

import pytest
from sim.network import Sim
from sim.nodes import SimMember, member_of

from shoal.actions import MemberDown, Ready

MEMBERS = 100
SLOWDOWN = 20.0
SLOW_FOR = 30.0
KEYS_EACH = 10


@pytest.mark.slow
def test_a_hundred_members_with_one_in_ten_twenty_times_slower_declare_none_down_and_every_write_arrives() -> None:
    sim = Sim(7, delay=(0.001, 0.02), reorder=False, tick_interval=0.1, work=(300e-6, 200e-9))
    ids = [sim.add(SimMember.factory(sim, ["sim:1"] if i else [], interval=2.0)) for i in range(MEMBERS)]

    def formed() -> bool:
        return all(
            member_of(sim, i).core.ready and len(member_of(sim, i).membership.up_peers()) == MEMBERS - 1 for i in ids
        )

    assert sim.run_until(formed, timeout=30)
    sim.loss = 0.01
    t0 = sim.now
    slow = ids[5::10]
    for node_id in slow:
        sim.slow(node_id, SLOWDOWN, SLOW_FOR)
    written: dict[str, str] = {}
    for n, node_id in enumerate(ids):
        values = {f"n{n}k{j}": f"v{n}.{j}" for j in range(KEYS_EACH)}
        written.update(values)
        sim.call_later(
            1 + (n % 20),
            lambda node_id=node_id, values=values: sim.act(
                node_id, lambda m, now: m.write(lambda c: c.set_many(values))
            ),
        )
    most_behind = 0.0
    for _ in range(int(SLOW_FOR)):
        sim.run_for(1.0)
        most_behind = max(most_behind, *(sim.late(node_id) for node_id in slow))
    assert most_behind > 1.0, "the slow members' loops were never behind: the test would show nothing"

    def holds_all(node_id: int) -> bool:
        cache = member_of(sim, node_id).cache
        return all(cache.get(key) == value for key, value in written.items())

    assert sim.run_until(lambda: all(holds_all(i) for i in ids), timeout=60)
    downs = [
        (round(when - t0, 1), action.reason)
        for when, _, action in sim.effects
        if isinstance(action, MemberDown) and when >= t0
    ]
    assert downs == [], f"{len(downs)} members declared down, first: {downs[:3]}"
    assert all(member_of(sim, i).core.ready for i in ids)
    # Ready means caught up: a member that turned ready after the writes holds every one of them.
    late_ready = {
        node for when, node, action in sim.effects if isinstance(action, Ready) and action.ready and when > t0 + 21
    }
    assert all(holds_all(i) for i in late_ready)
