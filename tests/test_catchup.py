"""Exact catch-up by positions, and answers paced by what the peer drains (issue 19).

Whole members in the simulated network (the same ``Dispatcher`` a ``Node`` runs): a
member that was cut off gets each write it missed once, from the position it had
reached; a peer that does not read gets nothing built for it, and a catch-up is never
reported complete before every write it covers went out.
"""

from __future__ import annotations

import time
from typing import Any

from sim.network import Sim
from sim.nodes import SimMember, batch_len
from sim.nodes import member_of as node

from shoal.actions import Broadcast, Send
from shoal.messages import Message, Stream, Writes

FAST: dict[str, Any] = {"failure_timeout": 1.0, "heartbeat_interval": 0.2, "boot_wait": 0.5}


def cluster(sim: Sim, size: int, **config: Any) -> list[int]:
    seeds = tuple(f"sim:{i + 1}" for i in range(size))
    factory = SimMember.factory(sim, seeds=seeds, **{"interval": 1000.0, **FAST, **config})
    ids = [sim.add(factory) for _ in range(size)]
    assert sim.run_until(lambda: all(node(sim, i).core.ready for i in ids), 20)
    return ids


class Ledger:
    """What went over the wire, as the network saw it: ops broadcast live and how many of those
    were lost, against ops sent by catch-ups (Stream messages sent to one peer)."""

    def __init__(self, sim: Sim) -> None:
        self.live_ops = 0
        self.live_lost = 0
        self.catchup_ops = 0
        self._live: set[int] = set()
        sim.on_lost = self.lost
        for node_id in sim.running():
            member = node(sim, node_id)
            drive = member.drive

            def counted(actions: list[Any], drive: Any = drive) -> list[Any]:
                for action in actions:
                    if isinstance(action, Broadcast):
                        self.live_ops += batch_len(action.msg) * len(action.peers)
                        self._live.add(id(action.msg))
                    elif isinstance(action, Send) and isinstance(action.msg, (Stream, Writes)):
                        self.catchup_ops += batch_len(action.msg)
                return drive(actions)  # type: ignore[no-any-return]

            member.drive = counted  # type: ignore[method-assign]

    def lost(self, msg: Message) -> None:
        if id(msg) in self._live and isinstance(msg, (Stream, Writes)):
            self.live_lost += batch_len(msg)


def test_after_blips_each_member_gets_the_writes_it_missed_once_not_a_window_of_everyone_s() -> None:
    """Five members write all along; one at a time is cut off for 1.5 to 3 s (long enough to be
    declared down, and to reconnect). Writes missed: every write times the members it must reach,
    less the live broadcasts that arrived. Catch-ups may send at most 1.5 times that."""
    sim = Sim(seed=41)
    ids = cluster(sim, 5)
    ledger = Ledger(sim)
    written = [0]

    def write(step: int) -> None:
        if step >= 1200:
            return
        writer = ids[step % len(ids)]
        sim.act(writer, lambda n, now: n.write(lambda c: c.set(f"k{step}", step)))
        written[0] += 1
        sim.call_later(0.01, lambda: write(step + 1))

    write(0)
    for blip, victim in enumerate([ids[1], ids[3], ids[0], ids[2]]):
        sim.run_for(0.5)
        sim.partition([victim])
        sim.run_for(1.5 + 0.5 * blip)
        sim.heal()
    expected = {f"k{i}": i for i in range(1200)}
    assert sim.run_until(lambda: all(dict(node(sim, i).cache.items()) == expected for i in ids), 30)
    missed = written[0] * (len(ids) - 1) - (ledger.live_ops - ledger.live_lost)
    repaired = sum(node(sim, i).core.replicator.figures_of("c")["keys_repaired"] for i in ids)
    print(f"\nwrites {written[0]}, missed {missed}, catch-up ops sent {ledger.catchup_ops}, keys repaired {repaired}")
    assert missed > 500  # the blips cost writes: there was something to catch up
    assert ledger.catchup_ops <= 1.5 * missed


def test_a_catch_up_held_back_by_a_peer_that_does_not_read_is_not_reported_complete() -> None:
    """The answer to a catch-up is not dropped while the asker's backlog is high, and its end is
    not sent: the asker is not ready until it holds the writes; the driver never drops a send."""
    sim = Sim(seed=42, reorder=False)  # one connection keeps its order (TCP): a Resumed follows its Stream
    a, b = cluster(sim, 2)
    sim.partition([a], [b])
    sim.act(a, lambda n, now: n.write(lambda c: c.set_many({f"a{i}": i for i in range(300)})))
    assert sim.run_until(lambda: not node(sim, b).core.membership.up_peers(), 10)
    sim.act(a, lambda n, now: n.hold(b, 10**9))  # a's queue to b stays full: b reads nothing
    sim.heal()
    assert sim.run_until(lambda: node(sim, b).core.membership.up_peers() == [a], 10)
    sim.run_for(2.0)
    assert not node(sim, b).core.ready
    assert len(node(sim, b).cache) == 0
    sim.act(a, lambda n, now: n.release(b))
    assert sim.run_until(lambda: node(sim, b).core.ready, 10)
    assert len(node(sim, b).cache) == 300  # ready means caught up
    assert sim.stats["driver dropped"] == 0


def test_a_reconnect_is_answered_a_slice_at_a_time_however_long_the_log() -> None:
    """Finding: one 26-byte catch-up against a member holding 200k writes built a 23.7 MB answer
    in 3.3 s of CPU. Asked from position 0, the answer comes in calls bounded in bytes."""
    sim = Sim(seed=43)
    a, b = cluster(sim, 2)
    sim.partition([a], [b])
    sim.act(a, lambda n, now: n.write(lambda c: c.set_many({i: "x" * 100 for i in range(200_000)})))
    assert sim.run_until(lambda: not node(sim, b).core.membership.up_peers(), 10)
    sim.act(a, lambda n, now: n.hold(b, 10**9))
    sim.heal()
    core = node(sim, a).core
    assert sim.run_until(lambda: bool(core.replicator.work.get(b)), 10)
    node(sim, a).held.clear()
    started = time.process_time()
    first = core.drained(b, sim.now, sim.now)
    cpu = time.process_time() - started
    sent = sum(batch_len(action.msg) for action in first if isinstance(action.msg, (Stream, Writes)))
    print(f"\nfirst slice: {sent} of 200,000 ops in {cpu * 1000:.0f} ms CPU")
    assert 0 < sent < 100_000
    sim.act(a, lambda n, now: n.drive(first))
    assert sim.run_until(lambda: len(node(sim, b).cache) == 200_000, 60)
