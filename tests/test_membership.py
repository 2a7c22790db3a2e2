"""Membership: members that each know one seed agree on who is up, through faults.

Cluster-level tests run five members on the simulated network (tests/sim) in
virtual time; rules that need no network drive one ``Membership`` directly.
"""

from __future__ import annotations

import functools
import itertools
import random
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sim.network import Sim
from sim.nodes import MembershipNode

from shoal.actions import Close, Dial, MemberDown, MemberUp
from shoal.membership import FORGET_DOWN, Membership
from shoal.messages import Gossip, Heartbeat, Message, Ops
from shoal.wire import FrameDecoder, encode

FAILURE_TIMEOUT = 5.0
HEARTBEAT_INTERVAL = 0.5
TICK = 0.1
DELAY = (0.001, 0.02)
DETECTION_SLACK = HEARTBEAT_INTERVAL + TICK + DELAY[1]
"""How late after ``failure_timeout`` of silence a member may be reported down."""


# -- helpers -----------------------------------------------------------------------------


def chain(sim: Sim, size: int = 5, **config: Any) -> list[int]:
    """Start ``size`` members, each seeded with the address of the one before it only."""
    ids = []
    for i in range(size):
        seeds = [f"sim:{i}"] if i else []
        ids.append(sim.add(MembershipNode.factory(seeds, **config)))
    return ids


def membership(sim: Sim, node_id: int) -> Membership:
    node = sim.nodes[node_id]
    assert isinstance(node, MembershipNode)
    return node.membership


def live(sim: Sim) -> dict[int, str]:
    return {node_id: sim.address_of[node_id] for node_id in sim.running()}


def views(sim: Sim) -> dict[int, dict[int, str]]:
    return {node_id: membership(sim, node_id).view() for node_id in sim.running()}


def converged(sim: Sim) -> bool:
    """Every running member's view is exactly the set of running members."""
    expected = live(sim)
    return all(view == expected for view in views(sim).values())


def downs(sim: Sim, peer: int, since: float = 0.0) -> dict[int, tuple[float, str]]:
    """When and why each member first reported ``peer`` down (at or after ``since``)."""
    reported: dict[int, tuple[float, str]] = {}
    for when, observer, action in sim.effects:
        if isinstance(action, MemberDown) and action.peer == peer and when >= since:
            reported.setdefault(observer, (when, action.reason))
    return reported


def formed(seed: int = 1, size: int = 5, **options: Any) -> tuple[Sim, list[int]]:
    """A converged cluster of ``size`` members seeded in a chain."""
    sim = Sim(seed, delay=DELAY, tick_interval=TICK, **options)
    ids = chain(sim, size)
    assert sim.run_until(lambda: converged(sim), timeout=30), views(sim)
    return sim, ids


def over_the_wire(msg: Message) -> Message:
    (decoded,) = FrameDecoder().feed(encode(msg))
    return decoded


def dials(actions: list[Any]) -> list[str]:
    return [a.address for a in actions if isinstance(a, Dial)]


# -- forming a cluster -------------------------------------------------------------------


def test_a_chain_of_single_seeds_converges_to_one_full_mesh_view() -> None:
    sim = Sim(1, delay=DELAY, tick_interval=TICK)
    ids = chain(sim, 5)
    assert sim.run_until(lambda: converged(sim), timeout=10), views(sim)
    assert all(sim.connected(a, b) for a in ids for b in ids if a != b)
    up_events = [(node, a.peer) for _, node, a in sim.effects if isinstance(a, MemberUp)]
    assert {(a, b) for a in ids for b in ids if a != b} <= set(up_events)


@pytest.mark.parametrize("seed", range(4))
def test_the_view_converges_and_holds_through_dropped_duplicated_and_reordered_messages(seed: int) -> None:
    sim = Sim(seed, delay=(0.001, 0.3), drop=0.25, duplicate=0.1, reorder=True, tick_interval=TICK)
    chain(sim, 5)
    assert sim.run_until(lambda: converged(sim), timeout=30), views(sim)
    for _ in range(30):
        sim.run_for(1.0)
        assert converged(sim), views(sim)
    assert sim.stats["dropped"] > 0 and sim.stats["delivered"] > 0


def test_a_member_that_hosts_a_cache_is_in_that_caches_group_on_every_peer() -> None:
    sim, ids = formed()
    sim.act(ids[2], lambda node, now: node.membership.host("accounts"))
    sim.run_for(0.1)  # host() tells every up peer at once, not at the next gossip round
    for node_id in ids:
        expected = [] if node_id == ids[2] else [ids[2]]
        assert membership(sim, node_id).group("accounts") == expected


def test_a_member_that_joins_late_is_in_the_hosting_group_of_caches_hosted_before() -> None:
    sim, ids = formed(size=3)
    sim.act(ids[0], lambda node, now: node.membership.host("accounts"))
    sim.run_for(1.0)
    late = sim.add(MembershipNode.factory([sim.address_of[ids[2]]]))
    assert sim.run_until(lambda: converged(sim), timeout=10)
    # Until a member's first gossip says what it hosts, it counts as hosting everything.
    assert sim.run_until(lambda: membership(sim, late).group("accounts") == [ids[0]], timeout=10)


def test_two_groups_formed_apart_merge_once_one_member_learns_an_address_of_the_other() -> None:
    sim = Sim(3, delay=DELAY, tick_interval=TICK)
    west = [sim.add(MembershipNode.factory(["sim:1"] if i else [])) for i in range(3)]
    east = [sim.add(MembershipNode.factory(["sim:4"] if i else [])) for i in range(2)]
    sim.run_for(20)
    for group in (west, east):
        for node_id in group:
            assert set(membership(sim, node_id).view()) == set(group)

    sim.act(west[1], lambda node, now: node.membership.discovered([sim.address_of[east[1]]]))
    assert sim.run_until(lambda: converged(sim), timeout=10), views(sim)
    assert set(membership(sim, east[0]).view()) == set(west + east)


# -- failures ----------------------------------------------------------------------------


def test_a_crashed_member_is_reported_down_by_every_peer_as_soon_as_its_connections_close() -> None:
    sim, ids = formed()
    victim, t0 = ids[2], sim.now
    sim.crash(victim)
    sim.run_for(1.0)
    reported = downs(sim, victim, since=t0)
    assert set(reported) == set(ids) - {victim}
    for when, reason in reported.values():
        assert when - t0 <= 2 * DELAY[1]
        assert reason == "connection closed"
    assert converged(sim)


def test_a_member_that_vanishes_without_closing_is_reported_down_within_failure_timeout() -> None:
    sim, ids = formed()
    victim, t0 = ids[1], sim.now
    sim.crash(victim, fin=False)  # power cut: nobody hears a FIN, only silence
    sim.run_for(FAILURE_TIMEOUT + 2 * DETECTION_SLACK)
    reported = downs(sim, victim, since=t0)
    assert set(reported) == set(ids) - {victim}
    for when, reason in reported.values():
        assert FAILURE_TIMEOUT - DETECTION_SLACK <= when - t0 <= FAILURE_TIMEOUT + DETECTION_SLACK
        assert reason.startswith("silent")
    assert converged(sim)


def test_a_frozen_member_is_reported_down_and_comes_back_when_it_thaws() -> None:
    sim, ids = formed()
    victim, t0 = ids[3], sim.now
    sim.freeze(victim)  # SIGSTOP: no ticks, no sends, its connections stay open
    sim.run_for(FAILURE_TIMEOUT + 2 * DETECTION_SLACK)
    reported = downs(sim, victim, since=t0)
    assert set(reported) == set(ids) - {victim}
    for when, reason in reported.values():
        assert when - t0 <= FAILURE_TIMEOUT + DETECTION_SLACK
        assert reason.startswith("silent")
    for node_id in set(ids) - {victim}:
        assert victim not in membership(sim, node_id).view()

    sim.thaw(victim)
    assert sim.run_until(lambda: converged(sim), timeout=15), views(sim)
    assert victim in membership(sim, ids[0]).view()


@pytest.mark.parametrize("fin", [True, False], ids=["closed", "power-cut"])
def test_a_restarted_member_with_a_new_id_at_the_same_address_replaces_the_old_one(fin: bool) -> None:
    sim, ids = formed()
    old, t0 = ids[2], sim.now
    sim.crash(old, fin=fin)
    new = sim.boot(sim.address_of[old])
    assert new != old and sim.address_of[new] == sim.address_of[old]
    # Faster than the failure detector: the new incarnation itself proves the old one gone.
    assert sim.run_until(lambda: converged(sim), timeout=FAILURE_TIMEOUT - 1), views(sim)
    assert set(downs(sim, old, since=t0)) == set(ids) - {old}
    for node_id in sim.running():
        assert membership(sim, node_id).view()[new] == sim.address_of[old]
        assert old not in membership(sim, node_id).up_peers()


def test_leave_makes_every_peer_mark_the_member_down_at_once() -> None:
    sim, ids = formed(reorder=False)
    leaver, t0 = ids[0], sim.now
    sim.stop(leaver)
    sim.run_for(2 * DELAY[1])
    reported = downs(sim, leaver, since=t0)
    assert set(reported) == set(ids) - {leaver}
    assert all(reason == "left" for _, reason in reported.values())
    sim.run_for(10)
    assert converged(sim) and leaver not in live(sim)


def test_a_partitioned_cluster_reports_the_other_side_down_and_remerges_when_healed() -> None:
    sim, ids = formed()
    west, east = ids[:2], ids[2:]
    sim.partition(west, east)
    sim.run_for(FAILURE_TIMEOUT + 2 * DETECTION_SLACK)
    for side in (west, east):
        for node_id in side:
            assert set(membership(sim, node_id).view()) == set(side)
    sim.run_for(60)  # long enough for gossip-learned addresses to be forgotten
    sim.heal()
    assert sim.run_until(lambda: converged(sim), timeout=15), views(sim)


def test_the_simulation_replays_exactly_for_a_seed() -> None:
    def run() -> tuple[list[Any], dict[str, int]]:
        sim = Sim(42, delay=(0.001, 0.2), drop=0.1, duplicate=0.05, tick_interval=TICK)
        ids = chain(sim, 4)
        sim.call_later(5, lambda: sim.crash(ids[1], fin=False))
        sim.call_later(7, lambda: sim.partition(ids[:2]))
        sim.call_later(15, sim.heal)
        sim.run_for(30)
        return [(round(t, 9), n, a) for t, n, a in sim.effects], dict(sim.stats)

    assert run() == run()


# -- convergence under random faults ------------------------------------------------------

SLOTS = [f"sim:{i}" for i in range(1, 6)]


@dataclass(frozen=True)
class Fault:
    kind: str  # "partition", "crash", "power-cut" or "freeze"
    at: float
    lasting: float
    slots: frozenset[int]  # the members that crash or freeze, or one side of the partition


faults = st.builds(
    Fault,
    kind=st.sampled_from(["partition", "crash", "power-cut", "freeze"]),
    at=st.integers(0, 300).map(lambda tenths: tenths / 10),
    lasting=st.integers(5, 250).map(lambda tenths: tenths / 10),
    slots=st.frozensets(st.integers(0, len(SLOTS) - 1), min_size=1, max_size=len(SLOTS) - 1),
)


def inject(sim: Sim, fault: Fault) -> None:
    """Schedule ``fault`` and its end (the heal, restart or thaw)."""
    addresses = [SLOTS[i] for i in sorted(fault.slots)]
    if fault.kind == "partition":
        sim.call_later(fault.at, lambda: sim.partition(addresses))
        sim.call_later(fault.at + fault.lasting, sim.heal)
        return

    def begin(address: str) -> None:
        node_id = sim.node_at(address)
        if node_id is None:
            return
        if fault.kind == "freeze":
            sim.freeze(node_id)
            sim.call_later(fault.lasting, lambda: sim.thaw(node_id))
        else:
            sim.crash(node_id, fin=fault.kind == "crash")
            sim.call_later(fault.lasting, lambda: end(address))

    def end(address: str) -> None:
        if sim.node_at(address) is None:  # an overlapping fault may have restarted it already
            sim.boot(address)

    for address in addresses:
        sim.call_later(fault.at, functools.partial(begin, address))


@settings(max_examples=50, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    drop=st.floats(0.0, 0.3),
    duplicate=st.floats(0.0, 0.1),
    schedule=st.lists(faults, max_size=5),
)
def test_after_faults_heal_every_live_member_sees_exactly_the_live_members(
    seed: int, drop: float, duplicate: float, schedule: list[Fault]
) -> None:
    sim = Sim(seed, delay=(0.001, 0.1), drop=drop, duplicate=duplicate, tick_interval=TICK)
    chain(sim, len(SLOTS))
    sim.run_for(5)
    for fault in schedule:
        inject(sim, fault)
    sim.run_for(max((f.at + f.lasting for f in schedule), default=0) + 1)
    # Everything has healed by now; make sure of it, then let the cluster settle.
    sim.heal()
    for node_id in list(sim.nodes):
        sim.thaw(node_id)
    for address in SLOTS:
        if sim.node_at(address) is None:
            sim.boot(address)
    assert sim.run_until(lambda: converged(sim), timeout=60), views(sim)
    assert set(live(sim).values()) == set(SLOTS)
    sim.run_for(10)
    assert converged(sim), views(sim)


# -- one member, driven directly ----------------------------------------------------------


def connected_member(**config: Any) -> Membership:
    """A member at ``me:1`` connected to peer 7 at ``p:7``, at time 0."""
    member = Membership(1, "me:1", rng=random.Random(0), **config)
    member.connected(7, "p:7", 0.0)
    return member


def test_malformed_gossip_entries_are_ignored_and_the_well_formed_ones_still_count() -> None:
    member = connected_member()
    entries: list[Any] = [
        "not a list",
        None,
        {"node_id": 9},
        [],
        [9],
        [9, "short:9", "up"],  # too few fields
        ["9", "str-id:9", "up", []],
        [True, "bool-id:9", "up", []],
        [2**64 - 1, 5, "up", []],  # listen not a string
        [10, "no-port", "up", []],  # not host:port
        [11, "caches-not-list:11", "up", "accounts"],
        [12, "caches-not-str:12", "up", [b"accounts"]],
        [13, "caches-nested:13", "up", [["accounts"]]],
        [1, "impostor:1", "up", []],  # our own id at another address
        [14, "me:1", "up", []],  # our own address under another id
        [7, "p:7", "up", [3]],  # the sender's own entry, malformed: its caches stay as they were
        [7, "p:7", "up", ["accounts"], 0],  # ... and well formed
        [8, "good:8", "up", ["accounts"], 0, "a field from a later release"],
    ]
    gossip = over_the_wire(Gossip(entries))
    assert member.received(7, gossip, 1.0) == []
    assert dials(member.tick(1.0)) == ["good:8"]
    assert member.group("accounts") == [7]
    assert member.view() == {1: "me:1", 7: "p:7"}


def test_gossip_from_a_member_that_is_not_up_is_ignored() -> None:
    member = connected_member()
    member.disconnected(7, 1.0)
    assert member.received(7, Gossip([[8, "new:8", "up", [], 0]]), 2.0) == []
    assert "new:8" not in dials(member.tick(2.0))


def ticks(member: Membership, start: float, end: float) -> list[Any]:
    """Tick on time (every TICK) from ``start`` to ``end``; what the ticks returned."""
    actions: list[Any] = []
    for i in range(round((end - start) / TICK) + 1):
        actions += member.tick(start + i * TICK)
    return actions


def test_any_frame_from_a_peer_counts_as_proof_of_life() -> None:
    member = connected_member()
    last = beat_every(member, [HEARTBEAT_INTERVAL] * 20)
    for second in range(1, 20):  # no heartbeat for 19 s, but other frames (Ops, say) keep coming
        member.received(7, Ops("c", []), last + second)
        assert closes(ticks(member, last + second - 1 + TICK, last + second)) == []
    actions = ticks(member, last + 19 + TICK, last + 19 + FAILURE_TIMEOUT + 2 * TICK)
    assert [a.reason[:12] for a in closes(actions)] == ["silent for 5"]
    assert 7 not in member.view()


def test_a_dead_seed_is_redialed_with_growing_delays_capped_at_backoff_cap() -> None:
    base, cap = 0.1, 2.0
    member = Membership(1, "me:1", seeds=["dead:1"], backoff_base=base, backoff_cap=cap, rng=random.Random(3))
    dial_times = []
    step = 0.01
    for i in range(int(120 / step)):
        now = i * step
        if "dead:1" in dials(member.tick(now)):
            dial_times.append(now)
            member.dial_failed("dead:1", now + 0.005)  # connection refused
    gaps = [b - a for a, b in itertools.pairwise(dial_times)]
    assert len(gaps) > 40, "a seed is dialed forever"
    for failures, gap in enumerate(gaps, start=1):
        assert gap <= cap + step, f"gap {gap:.3f}s after {failures} failures exceeds the cap"
        assert gap >= 0.5 * min(cap, base * 2**failures) - step
    assert gaps[0] < 4 * base < cap / 2 < min(gaps[-10:])
    assert len({round(gap, 2) for gap in gaps[-10:]}) > 1, "dials at the cap keep their jitter"


def test_an_address_learned_only_by_gossip_is_forgotten_after_forget_after_failed_dials() -> None:
    member = connected_member(forget_after=4, backoff_cap=1.0)
    member.received(7, Gossip([[8, "gone:8", "up", [], 0]]), 0.0)
    attempts = 0
    for i in range(6000):
        now = i * 0.01
        if "gone:8" in dials(member.tick(now)):
            attempts += 1
            member.dial_failed("gone:8", now)
        member.received(7, Heartbeat(0), now)
    assert attempts == 4


def test_a_peer_that_comes_back_is_up_again_after_being_reported_down() -> None:
    member = connected_member()
    assert [a for a in member.disconnected(7, 1.0) if isinstance(a, MemberDown)]
    assert "p:7" in dials(member.tick(2.0))
    actions = member.connected(7, "p:7", 2.1)
    assert MemberUp(7, "p:7") in actions
    assert member.up_peers() == [7]


def test_a_new_id_at_a_known_address_replaces_the_old_incarnation_at_once() -> None:
    member = connected_member()
    actions = member.connected(8, "p:7", 1.0)
    assert Close(7, "restarted with a new id") in actions
    assert MemberDown(7, "p:7", "restarted with a new id") in actions
    assert member.view() == {1: "me:1", 8: "p:7"}


def test_a_seed_reached_under_another_name_is_not_dialed_again_while_connected() -> None:
    member = Membership(1, "me:1", seeds=["localhost:7"], rng=random.Random(0))
    assert dials(member.tick(0.0)) == ["localhost:7"]
    member.connected(7, "p:7", 0.1, dialed="localhost:7")
    for second in range(1, 4):
        member.received(7, Heartbeat(0), float(second))
        assert dials(member.tick(float(second))) == []


# -- addresses in a pod: wildcards, our own address, addresses that must not be forgotten ------


def dials_over(member: Membership, start: float, seconds: float, fail: bool = True) -> list[str]:
    """Every address dialed over ``seconds`` of ticks; each dial fails (refused) when ``fail``."""
    dialed: list[str] = []
    for i in range(int(seconds / 0.05)):
        now = start + i * 0.05
        for address in dials(member.tick(now)):
            dialed.append(address)
            if fail:
                member.dial_failed(address, now + 0.001)
    return dialed


def test_two_members_that_both_claim_a_wildcard_address_are_two_members_and_neither_is_dialed_there() -> None:
    member = Membership(1, "0.0.0.0:7600", rng=random.Random(0))
    member.connected(7, "0.0.0.0:7600", 0.0)
    actions = member.connected(8, "0.0.0.0:7600", 0.1)
    assert not [a for a in actions if isinstance(a, (Close, MemberDown))]
    assert sorted(member.up_peers()) == [7, 8]
    member.disconnected(7, 0.2)
    assert "0.0.0.0:7600" not in dials_over(member, 0.3, 5.0)


def test_wildcard_addresses_in_gossip_are_never_dialed() -> None:
    member = connected_member()
    gossip = Gossip(
        [[8, "0.0.0.0:7600", "up", [], 0], [9, "[::]:7600", "up", [], 0], [10, "10.1.0.3:7600", "up", [], 0]]
    )
    member.received(7, gossip, 0.5)
    assert dials(member.tick(0.5)) == ["10.1.0.3:7600"]


def test_a_member_on_a_wildcard_that_learns_its_address_advertises_it_and_never_dials_it() -> None:
    member = Membership(1, "0.0.0.0:7600", rng=random.Random(0))
    assert member.view() == {1: "0.0.0.0:7600"}
    member.advertise("10.1.0.1:7600")
    assert member.view() == {1: "10.1.0.1:7600"}
    member.discovered(["10.1.0.1:7600", "10.1.0.2:7600"])  # DNS lists this pod too
    assert sorted(set(dials_over(member, 0.0, 3.0))) == ["10.1.0.2:7600"]
    member.connected(7, "10.1.0.2:7600", 3.0)
    member.received(7, Gossip([[8, "10.1.0.1:7600", "up", [], 0]]), 3.1)  # our address under another id
    assert "10.1.0.1:7600" not in dials_over(member, 3.2, 3.0)


def test_an_address_whose_handshake_reached_this_member_is_never_dialed_again() -> None:
    member = Membership(1, "0.0.0.0:7600", seeds=["pod-a:7600"], rng=random.Random(0))
    member.discovered(["10.1.0.1:7600", "10.1.0.2:7600"])
    assert sorted(dials(member.tick(0.0))) == ["10.1.0.1:7600", "10.1.0.2:7600", "pod-a:7600"]
    member.is_self("10.1.0.1:7600")  # the dial came back to us
    member.is_self("pod-a:7600")
    for address in ("10.1.0.1:7600", "10.1.0.2:7600", "pod-a:7600"):
        member.dial_failed(address, 0.01)
    member.discovered(["10.1.0.1:7600", "10.1.0.2:7600"])  # the next DNS answer still lists it
    member.alias("pod-a:7600", 7)
    dialed = set(dials_over(member, 0.1, 10.0))
    assert dialed == {"10.1.0.2:7600"}


def test_an_address_learned_by_gossip_is_redialed_as_long_as_its_member_is_listed() -> None:
    member = connected_member(forget_after=3, backoff_cap=0.5)
    member.received(7, Gossip([[8, "p:8", "up", [], 0]]), 0.0)
    assert dials(member.tick(0.0)) == ["p:8"]
    member.connected(8, "p:8", 0.01, dialed="p:8")
    member.disconnected(8, FAILURE_TIMEOUT + 0.5)  # a member for a while, partitioned away: still in the table
    for second in range(1, 60):
        member.received(7, Heartbeat(0), float(second))
    dialed = dials_over(member, FAILURE_TIMEOUT + 0.6, 30.0)
    assert dialed.count("p:8") > 3 * 3, "forgotten while its member is still listed"


def test_an_address_no_longer_listed_by_dns_is_forgotten_after_forget_after_failed_dials() -> None:
    member = Membership(1, "10.1.0.1:7600", forget_after=3, backoff_cap=0.5, rng=random.Random(0))
    member.discovered(["10.1.0.2:7600", "10.1.0.9:7600"])
    member.discovered(["10.1.0.2:7600"])  # the pod at .9 is gone
    dialed = dials_over(member, 0.0, 30.0)
    assert dialed.count("10.1.0.9:7600") == 3
    assert dialed.count("10.1.0.2:7600") > 10, "an address DNS still lists is dialed forever"


def test_an_address_whose_member_has_been_down_for_forget_down_is_forgotten_after_forget_after_failed_dials() -> None:
    member = connected_member(forget_after=3, backoff_cap=0.5)
    member.received(7, Gossip([[8, "p:8", "up", [], 0]]), 0.0)
    member.connected(8, "p:8", 0.01, dialed="p:8")
    member.disconnected(8, 0.5)
    later = 0.5 + FORGET_DOWN + 1
    member.received(7, Heartbeat(0), later)
    dialed = dials_over(member, later, 30.0)
    assert dialed.count("p:8") <= 3


# -- telling slow from dead ---------------------------------------------------------------


def beat_every(member: Membership, gaps: list[float], start: float = 0.0) -> float:
    """Heartbeats from peer 7 after each of ``gaps``, ticking on time throughout; the last beat's time."""
    now = start
    for gap in gaps:
        ticks(member, now + TICK, now + gap)
        now += gap
        member.received(7, Heartbeat(int(now * 1000)), now)
    return now


def closes(actions: list[Any]) -> list[Close]:
    return [a for a in actions if isinstance(a, Close)]


def test_a_peer_whose_heartbeats_come_late_and_irregular_is_given_longer_than_failure_timeout() -> None:
    member = connected_member()
    last = beat_every(member, [0.5, 4.5] * 20)  # a slow peer: beats 0.5 s and 4.5 s apart
    # 6 s of silence is past failure_timeout but within this peer's history: suspected, not down.
    assert closes(ticks(member, last + TICK, last + 6.0)) == []
    assert member.suspects() == [7] and member.up_peers() == [7]
    member.received(7, Heartbeat(0), last + 6.0)
    assert member.suspects() == []
    # A peer that stops for good is still declared down, once its silence is implausible.
    actions = ticks(member, last + 6.0 + TICK, last + 6.0 + 30.0)
    assert [c.reason.startswith("silent") for c in closes(actions)] == [True]


def test_a_punctual_peer_that_falls_silent_is_declared_down_at_failure_timeout_as_before() -> None:
    member = connected_member()
    last = beat_every(member, [HEARTBEAT_INTERVAL] * 40)
    actions = ticks(member, last + TICK, last + FAILURE_TIMEOUT - TICK)
    assert closes(actions) == [] and member.suspects() == [7]
    assert [c.peer for c in closes(ticks(member, last + FAILURE_TIMEOUT, last + FAILURE_TIMEOUT + 2 * TICK))] == [7]


def test_a_member_whose_own_tick_comes_late_accuses_no_peer_until_it_has_read_what_arrived() -> None:
    member = connected_member()
    last = beat_every(member, [HEARTBEAT_INTERVAL] * 10)
    # Our loop stalls 8 s (a GC pause, a CPU-throttled pod): the peer's beats wait unread in the socket.
    stalled = last + 8.0
    assert closes(member.tick(stalled)) == []
    member.received(7, Heartbeat(0), stalled + 0.01)  # the loop reads them now
    assert member.lateness(stalled) > 7.0
    assert closes(ticks(member, stalled + TICK, stalled + 3.0)) == []
    # And a peer that really is gone is still declared down, later by what our lateness allows.
    actions = ticks(member, stalled + 3.0 + TICK, stalled + 30.0)
    assert [c.peer for c in closes(actions)] == [7]


# -- bounded tables: what gossip and connections can make a member hold ---------------------


def test_gossip_naming_members_that_never_answer_stops_holding_readiness_once_their_dials_fail() -> None:
    member = connected_member()
    now, held = 0.0, []
    for round_ in range(20):  # 5 new fake ids every 4 s, as a buggy or hostile peer might
        fakes = [[1000 + 5 * round_ + i, f"10.9.{round_}.{i}:7600", "up", [], 0] for i in range(5)]
        member.received(7, Gossip(fakes), now)
        for _ in range(40):
            now += TICK
            member.received(7, Heartbeat(0), now)
            for address in dials(member.tick(now)):
                member.dial_failed(address, now + 0.01)  # nothing listens there
            held.append(member.unmet(now, 5.0) > 0)
    # A rumor holds readiness until its dial fails; a sender whose rumors keep failing, not at all.
    assert sum(held[-200:]) == 0
    assert sum(held) < 10


def test_gossip_tables_stay_bounded_whatever_a_peer_names() -> None:
    member = connected_member()
    fakes = [[2000 + i, f"10.8.{i // 250}.{i % 250}:7600", "up", [], 0] for i in range(3000)]
    for start in range(0, 3000, 500):
        member.received(7, Gossip(fakes[start : start + 500]), 0.1)
    from shoal.membership import MAX_RUMORS_PER_SENDER, MAX_TARGETS

    assert len(member._rumors) <= MAX_RUMORS_PER_SENDER
    assert len(member._targets) <= MAX_TARGETS + 1
    assert len(set(dials_over(member, 0.2, 1.0, fail=True))) <= MAX_TARGETS


def test_our_gossip_stays_within_its_frame_budget_however_many_caches_peers_claim() -> None:
    from shoal.membership import GOSSIP_BYTES

    member = connected_member()
    huge = ["x" * (1 << 20) + str(i) for i in range(9)]  # 1 MiB names: never taken
    member.connected(8, "p:8", 0.1)
    member.received(8, Gossip([[8, "p:8", "up", huge, 0]]), 0.2)
    many = [f"cache-{i:04d}-" + "n" * 90 for i in range(20)]
    for peer in range(100, 400):
        member.connected(peer, f"p:{peer}", 0.3)
        member.received(peer, Gossip([[peer, f"p:{peer}", "up", many, 0]]), 0.3)
    seen: set[int] = set()
    for second in range(1, 60):
        for action in member.tick(float(second)):
            if isinstance(action.msg if hasattr(action, "msg") else None, Gossip):
                frame = encode(action.msg)
                assert len(frame) <= GOSSIP_BYTES
                seen.update(entry[0] for entry in action.msg.members)
    assert member.members[8].caches is None  # its claim was refused whole: it counts as hosting anything
    assert set(range(100, 400)) <= seen, "a view too large for one gossip goes out a part at a time"


def test_a_node_id_held_by_a_live_connection_keeps_it_and_a_newcomer_claiming_it_is_refused() -> None:
    member = connected_member()
    assert member.admits(7, 0.2) is None  # both ends dialing at once: keep_first decides
    beat_every(member, [HEARTBEAT_INTERVAL] * 20)
    assert member.admits(7, 10.1) == "node id already held by a live connection"
    assert member.admits(8, 10.1) is None
    ticks(member, 10.1, 10.1 + FAILURE_TIMEOUT + 1)  # the holder went silent: the id is free again
    assert member.admits(7, 16.5) is None


def test_members_given_our_own_advertise_address_are_a_conflict_not_restarts_and_we_are_not_ready() -> None:
    member = Membership(1, "10.0.0.1:7600", rng=random.Random(0))
    actions = member.connected(8, "10.0.0.1:7600", 0.1) + member.connected(9, "10.0.0.1:7600", 0.2)
    assert not [a for a in actions if isinstance(a, (Close, MemberDown))]
    assert member.conflicts == {8, 9}
    member.disconnected(8, 1.0)
    member.disconnected(9, 1.0)
    assert member.conflicts == set()


def test_members_that_come_and_go_within_failure_timeout_leave_at_most_max_targets_addresses_to_redial() -> None:
    """Found with member processes: 3,000 connections with fresh ids left 3,001 dial targets."""
    from shoal.membership import MAX_TARGETS

    member = connected_member()
    now = 0.0
    most = 0
    for i in range(3000):
        now += 0.001
        member.connected(10_000 + i, f"10.7.{i // 250}.{i % 250}:7600", now)
        member.disconnected(10_000 + i, now + 0.0005)
        most = max(most, len(member._targets))
    assert most <= MAX_TARGETS + 1  # and p:7, which is up
    for i in range(20):  # a member that was up a while keeps its address, whatever passers-by left
        member.connected(20_000 + i, f"10.6.0.{i}:7600", now)
    member.received(7, Heartbeat(0), now + FAILURE_TIMEOUT)
    for i in range(20):
        member.disconnected(20_000 + i, now + FAILURE_TIMEOUT)
    assert all(f"10.6.0.{i}:7600" in member._targets for i in range(20))


def test_thousands_of_connections_with_fresh_ids_leave_bounded_tables_and_no_addresses_redialed() -> None:
    from shoal.membership import MAX_MEMBERS

    member = connected_member(forget_after=3, backoff_cap=0.5)
    now = 0.0
    for i in range(3000):
        now += 0.001
        member.connected(10_000 + i, f"10.7.{i // 250}.{i % 250}:7600", now)
        member.disconnected(10_000 + i, now + 0.0005)
    assert len(member.members) <= MAX_MEMBERS
    for second in range(1, 30):
        member.received(7, Heartbeat(0), now + second)
    first = dials_over(member, now + 1.0, 20.0)
    assert len(first) <= 3 * 3000  # forget_after dials each, then forgotten
    late = dials_over(member, now + 21.0, 10.0)
    assert late == [], f"{len(set(late))} dead addresses still redialed"
    assert len(member._targets) <= 1
