"""Who is in the cluster: dialing, gossip of addresses, heartbeats, failure detection.

Theory of operation. Every member keeps one authenticated connection to every
other member it knows (a full mesh: replication broadcasts to everyone anyway).
A member is *up* while its connection is open and we have heard from it within
``failure_timeout``; heard means any frame, heartbeats included, which every
member sends every ``heartbeat_interval``. Silence past the timeout closes the
connection and reports the member down; a member frozen by SIGSTOP is caught that
way, one killed outright by the connection closing.

Addresses spread by gossip: each member periodically sends its up peers the list
of members it is connected to, with the caches each hosts (the pg2 model: a
member joins the group of each cache it hosts). Any address we learn and are not
connected to gets dialed, with exponential backoff and jitter, so one reachable
seed is enough and two groups that formed apart merge as soon as one member can
reach another. Seeds and the addresses discovery (DNS) lists now are dialed
forever; an address learned only by gossip, or dropped from DNS, is forgotten
after ``forget_after`` failed dials, but never while a member at that address is
still in the table (down members stay 600 s): a partition longer than the
backoff must not cost the cluster the only address that leads across it.

Identity is the node id, never the address. A member listening on a wildcard
(``0.0.0.0:7600`` in a pod) has no address of its own to tell until it learns
one (``advertise``): such an address, or any wildcard one a peer claims, is
never dialed, never gossiped to be dialed, and never taken as proof that another
member restarted. Addresses that lead to this member itself (its own, or a seed
or DNS name whose handshake reached it: ``is_self``) are never dialed again.

This module does no I/O and reads no clock: time comes in as ``now``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from .actions import Action, Close, Dial, MemberDown, MemberUp, Send
from .messages import Gossip, Heartbeat, Leave, Message

UP, DOWN = "up", "down"
FORGET_DOWN = 600.0
"""Seconds a member stays in the table once down (and its address is kept for redialing)."""


@dataclass
class Member:
    node_id: int
    listen: str
    caches: frozenset[str] | None = None
    """What it hosts, once its first gossip told us; until then it counts as hosting everything,
    so no write made in that moment skips it (one it does not host, it ignores)."""
    state: str = UP
    last_heard: float = 0.0
    since: float = 0.0


@dataclass
class _Target:
    """An address we want a connection to."""

    permanent: bool
    failures: int = 0
    next_dial: float = 0.0
    dialing: bool = False
    peer: int | None = None


@dataclass
class Membership:
    node_id: int
    listen: str
    seeds: list[str] = field(default_factory=list)
    failure_timeout: float = 5.0
    heartbeat_interval: float = 0.5
    gossip_interval: float = 1.0
    backoff_base: float = 0.1
    backoff_cap: float = 2.0
    forget_after: int = 10
    rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        self.caches: set[str] = set()
        self.members: dict[int, Member] = {}
        self._rumors: dict[int, float] = {}  # members a peer says are up, not connected to us: since when
        self._given_up: dict[int, float] = {}  # rumors that outlived their patience: not waited for again
        self._targets: dict[str, _Target] = {}
        self._self_addresses: set[str] = set()
        self._discovered: set[str] = set()
        self._next_gossip = 0.0
        self._next_heartbeat = 0.0
        if routable(self.listen):
            self._self_addresses.add(self.listen)
        for seed in self.seeds:
            if seed not in self._self_addresses:
                self._want(seed, permanent=True)

    # -- inputs ------------------------------------------------------------------

    def host(self, cache: str) -> list[Action]:
        """We now host ``cache``: tell every up peer at once."""
        if cache in self.caches:
            return []
        self.caches.add(cache)
        return self._gossip_to(self.up_peers())

    def discovered(self, addresses: list[str]) -> None:
        """What discovery (DNS) lists now; dialed like seeds while listed.

        An address that is no longer listed (a pod gone in a rolling update) is
        dialed like one learned by gossip: forgotten once it keeps failing.
        """
        listed = set(addresses)
        seeds = set(self.seeds)
        for address in self._discovered - listed - seeds:
            target = self._targets.get(address)
            if target is not None:
                target.permanent = False
        self._discovered = listed
        for address in addresses:
            if address not in self._self_addresses:  # DNS lists this pod too
                self._want(address, permanent=True)

    def advertise(self, address: str) -> None:
        """This member's own address, once learned (listening on a wildcard) or set."""
        if not routable(address):
            return
        self.listen = address
        self.is_self(address)

    def is_self(self, address: str) -> None:
        """``address`` leads to this member (a handshake reached itself): never dial it again."""
        self._self_addresses.add(address)
        self._targets.pop(address, None)

    def dial_failed(self, address: str, now: float) -> None:
        target = self._targets.get(address)
        if target is None:
            return
        target.dialing = False
        target.failures += 1
        if not target.permanent and target.failures >= self.forget_after and not self._listed(address, now):
            del self._targets[address]
            return
        delay = min(self.backoff_cap, self.backoff_base * 2 ** min(target.failures, 16))
        # Jitter only shortens the delay, so backoff_cap is a true bound.
        target.next_dial = now + delay * self.rng.uniform(0.5, 1.0)

    def connected(self, peer: int, listen: str, now: float, dialed: str | None = None) -> list[Action]:
        """A handshake with ``peer`` finished; it is up.

        ``dialed`` is the address we dialed to reach it, when that differs from
        the address it advertises (a seed named ``localhost:7600``, say).
        """
        for address in {listen, dialed or listen}:
            if not routable(address) or address in self._self_addresses:
                continue  # a wildcard leads nowhere; an address of ours leads back here
            target = self._want(address, permanent=False)
            target.dialing = False
            target.failures = 0
            target.peer = peer
        member = self.members.get(peer)
        if member is None:
            member = self.members[peer] = Member(peer, listen, since=now)
        member.state, member.last_heard, member.listen = UP, now, listen
        self._rumors.pop(peer, None)
        self._given_up.pop(peer, None)
        actions: list[Action] = [MemberUp(peer, listen)]
        # A new id at a known address is a restart: the old incarnation is gone. Only a real
        # address proves it: two members that both claim 0.0.0.0:7600 are two members.
        if routable(listen):
            for other in list(self.members.values()):
                if other.node_id != peer and other.listen == listen and other.state == UP:
                    actions += self._down(other, "restarted with a new id", now)
        actions += self._gossip_to([peer])
        return actions

    def alias(self, address: str, peer: int) -> None:
        """``address`` also leads to ``peer`` (a seed by another name): stop dialing it."""
        if address in self._self_addresses:
            return
        target = self._want(address, permanent=False)
        target.dialing = False
        target.failures = 0
        target.peer = peer

    def disconnected(self, peer: int, now: float, reason: str = "connection closed") -> list[Action]:
        for target in self._targets.values():
            if target.peer == peer:
                target.peer = None
                target.next_dial = now + self.backoff_base * self.rng.uniform(0.5, 1.5)
        member = self.members.get(peer)
        if member is None or member.state != UP:
            return []
        return self._down(member, reason, now, close=False)

    def received(self, peer: int, msg: Message, now: float) -> list[Action]:
        """Any frame from an up peer counts as hearing from it; membership messages are handled."""
        member = self.members.get(peer)
        if member is None or member.state != UP:
            return []
        member.last_heard = now
        if isinstance(msg, Gossip):
            return self._on_gossip(member, msg.members, now)
        if isinstance(msg, Leave):
            return self._down(member, "left", now)
        return []

    def heard(self, peer: int, now: float) -> None:
        member = self.members.get(peer)
        if member is not None:
            member.last_heard = now

    def tick(self, now: float) -> list[Action]:
        """Heartbeats, gossip, failure detection and dials that are due."""
        actions: list[Action] = []
        for member in list(self.members.values()):
            if member.state == UP and now - member.last_heard > self.failure_timeout:
                actions += self._down(member, f"silent for {now - member.last_heard:.1f}s", now)
        up = self.up_peers()
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + self.heartbeat_interval
            beat = Heartbeat(int(now * 1000))
            actions += [Send(peer, beat) for peer in up]
        if now >= self._next_gossip:
            self._next_gossip = now + self.gossip_interval
            actions += self._gossip_to(up)
        for address, target in self._targets.items():
            if target.peer is None and not target.dialing and now >= target.next_dial:
                target.dialing = True
                actions.append(Dial(address))
        return actions

    def leave(self) -> list[Action]:
        """Graceful stop: tell every up peer we are going."""
        return [Send(peer, Leave()) for peer in self.up_peers()]

    # -- queries -----------------------------------------------------------------

    def unmet(self, now: float, patience: float) -> list[int]:
        """Members a peer told us are up that we have not connected to, for less than ``patience``:
        the mesh is not complete yet (a member gossiped longer ago is taken for gone)."""
        for node_id in [n for n, since in self._rumors.items() if now - since >= patience]:
            del self._rumors[node_id]
            self._given_up[node_id] = now
        for node_id in [n for n, since in self._given_up.items() if now - since > 600]:
            del self._given_up[node_id]
        return list(self._rumors)

    def up_peers(self) -> list[int]:
        return [m.node_id for m in self.members.values() if m.state == UP]

    def group(self, cache: str) -> list[int]:
        """Up peers that host ``cache``: the receivers of its writes."""
        return [
            m.node_id for m in self.members.values() if m.state == UP and (m.caches is None or cache in m.caches)
        ]

    def view(self) -> dict[int, str]:
        """Up members (us included) by id: what converges across the cluster."""
        view = {m.node_id: m.listen for m in self.members.values() if m.state == UP}
        view[self.node_id] = self.listen
        return view

    # -- internals ---------------------------------------------------------------

    def _listed(self, address: str, now: float) -> bool:
        """A member at ``address`` is still in the table: up, or down for less than FORGET_DOWN."""
        return any(
            m.listen == address and (m.state == UP or now - m.since <= FORGET_DOWN) for m in self.members.values()
        )

    def _want(self, address: str, permanent: bool) -> _Target:
        target = self._targets.get(address)
        if target is None:
            target = self._targets[address] = _Target(permanent)
        elif permanent:
            target.permanent = True
        return target

    def _down(self, member: Member, reason: str, now: float, close: bool = True) -> list[Action]:
        member.state = DOWN
        member.since = now
        actions: list[Action] = [Close(member.node_id, reason)] if close else []
        actions.append(MemberDown(member.node_id, member.listen, reason))
        # Forget long-dead incarnations so the table does not grow with restarts.
        for other in [m for m in self.members.values() if m.state == DOWN and now - m.since > FORGET_DOWN]:
            del self.members[other.node_id]
        return actions

    def _gossip_to(self, peers: list[int]) -> list[Action]:
        if not peers:
            return []
        view: list[Any] = [[self.node_id, self.listen, UP, sorted(self.caches), 0]]
        view += [
            [m.node_id, m.listen, UP, sorted(m.caches or ()), 0] for m in self.members.values() if m.state == UP
        ]
        msg = Gossip(view)
        return [Send(peer, msg) for peer in peers]

    def _on_gossip(self, sender: Member, view: list[Any], now: float) -> list[Action]:
        for item in view:
            if not (
                type(item) is list
                and len(item) >= 4
                and type(item[0]) is int
                and type(item[1]) is str
                and type(item[3]) is list
                and all(type(c) is str for c in item[3])
            ):
                continue  # a malformed entry teaches us nothing; the rest may still be good
            node_id, listen, caches = item[0], item[1], item[3]
            if node_id == sender.node_id:
                sender.caches = frozenset(caches)
            elif node_id != self.node_id and listen not in self._self_addresses and routable(listen):
                member = self.members.get(node_id)
                if member is None or member.state != UP:
                    self._want(listen, permanent=False)
                    if node_id not in self._given_up:
                        self._rumors.setdefault(node_id, now)
        return []


WILDCARDS = frozenset({"", "0.0.0.0", "::", "[::]", "*"})


def routable(address: str) -> bool:
    """``address`` is host:port with a host another machine could dial (not a wildcard)."""
    host, sep, port = address.rpartition(":")
    return bool(sep) and port.isdigit() and host.strip("[]") not in WILDCARDS and host not in WILDCARDS
