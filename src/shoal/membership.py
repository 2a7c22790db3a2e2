"""Who is in the cluster: dialing, gossip of addresses, heartbeats, failure detection.

Theory of operation. Every member keeps one authenticated connection to every
other member it knows (a full mesh: replication broadcasts to everyone anyway).
A member is *up* while its connection is open and we have heard from it within
``failure_timeout``; heard means any frame, heartbeats included, which every
member sends every ``heartbeat_interval``. A member killed outright is caught by its
connection closing; one frozen or cut off, by its silence.

Telling slow from dead (phi accrual, as in Akka and Cassandra): each peer's heartbeat
inter-arrival times are kept in a window (``WINDOW``, running sums: O(1) per beat).
A peer silent for longer than it usually is becomes *suspected* (phi over
``SUSPECT_PHI``); it is declared down only once its silence is both past
``failure_timeout`` (the floor: a calm cluster behaves as before), stretched by how
far apart its latest beats came (a slow loop's timer fires late: ``STRETCH_CAP``),
and past what its whole history makes implausible (phi over ``PHI_THRESHOLD``), so
a peer whose beats have been arriving late and irregular gets a longer rope than
one that was punctual. Any frame counts as hearing from a peer, so a connection that delivers
frames is never declared down because its heartbeats are late. A member whose own
loop runs late measures it from the ``now`` of its ticks (gap over
``tick_interval``) and widens every allowance by its recent lateness; right after
a late tick (frames still unread in its sockets) it declares nobody down for a grace
period. Chose phi accrual over SWIM suspicion: it needs no new message and no
cooperation from third members, and it is a state machine per peer.

Addresses spread by gossip: each member periodically sends its up peers the list
of members it is connected to, with the caches each hosts (the pg2 model: a
member joins the group of each cache it hosts). Any address we learn and are not
connected to gets dialed, with exponential backoff and jitter, so one reachable
seed is enough and two groups that formed apart merge as soon as one member can
reach another. Seeds and the addresses discovery (DNS) lists now are dialed
forever; an address learned only by gossip, or dropped from DNS, is forgotten
after ``forget_after`` failed dials, but never while a member at that address is
still in the table (down members stay 600 s) after having been up for at least
``failure_timeout``: a partition longer than the backoff must not cost the cluster
the only address that leads across it, while thousands of connections that came
and went must not leave thousands of addresses redialed for ten minutes.

Identity is the node id, never the address. A member listening on a wildcard
(``0.0.0.0:7600`` in a pod) has no address of its own to tell until it learns
one (``advertise``): such an address, or any wildcard one a peer claims, is
never dialed, never gossiped to be dialed, and never taken as proof that another
member restarted. Addresses that lead to this member itself (its own, or a seed
or DNS name whose handshake reached it: ``is_self``) are never dialed again.

Bounded by construction (issue 20): the member table (``MAX_MEMBERS``; down members
go oldest first), dial targets learned from gossip or left by members that went down
before they were up ``failure_timeout`` (``MAX_TARGETS``), rumors (members
gossip names that we have not met: ``MAX_RUMORS``, ``MAX_RUMORS_PER_SENDER``), caches
per member and their names, entries read from one gossip, and our own gossip
(``GOSSIP_BYTES``: trimmed, never raised). Rumors hold readiness only until their
dial fails or ``mesh_wait`` passes, and a sender whose rumors keep coming to nothing
stops holding it at all. No per-message scan of any table: indexes and queues ordered
by time keep maintenance O(1) per message.

A node id already held by a live connection keeps it (``admits``); a member that
sees its own address claimed by another id logs an error and is not ready
(``conflicts``): two members given the same ``advertise`` must not flap each other.

This module does no I/O and reads no clock: time comes in as ``now``.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from .actions import Action, Close, Dial, MemberDown, MemberUp, Send
from .messages import Gossip, Heartbeat, Leave, Message
from .validation import MAX_NAME_SIZE
from .versions import speaks

log = logging.getLogger("shoal")

UP, DOWN = "up", "down"
FORGET_DOWN = 600.0
"""Seconds a member stays in the table once down (and its address is kept for redialing)."""
MAX_MEMBERS = 1024
"""Members held (up and down); at the limit the member down longest goes, and a newcomer
finding every entry up is refused."""
MAX_TARGETS = 1024
"""Addresses learned by gossip, or left by members that came and went, we keep dialing (seeds,
DNS, connected members and members that were up a while come on top)."""
MAX_RUMORS = 256
"""Members gossip names that we have not met yet, held at once."""
MAX_RUMORS_PER_SENDER = 64
MISLED_LIMIT = 3
"""A sender whose rumors came to nothing this many times in a row holds readiness no more."""
MAX_CACHES = 64
"""Caches per member taken from gossip (and told in ours): with MAX_CACHE_NAME, an entry of
at most some 13 KB, so a gossip always carries several."""
MAX_CACHE_NAME = MAX_NAME_SIZE  # the one rule for a cache name (validation.py); UTF-8 bytes bound characters
"""Characters of a cache name in gossip; a longer name is not taken."""
MAX_GOSSIP_ENTRIES = MAX_MEMBERS
"""Entries read from one gossip; the rest are ignored."""
GOSSIP_BYTES = 48 * 1024
"""Our own gossip stays under this (an estimate with margin): a view larger than that is
sent a rotating part at a time, so it spreads over a few rounds."""
GOSSIP_FANOUT = 3
"""Peers each periodic gossip goes to (all of them learn a change of ours at once)."""
WINDOW = 100
"""Heartbeat inter-arrival times kept per peer (phi accrual)."""
MIN_SAMPLES = 5
PHI_THRESHOLD = 8.0
"""Declared down above this phi (Akka's and Cassandra's default), and only past failure_timeout."""
SUSPECT_PHI = 3.0
STRETCH_CAP = 4.0
"""A peer whose latest beats came k times further apart than ``heartbeat_interval`` gets k times
``failure_timeout`` (at most this many) before it is declared down: its loop is slow, and a slow
loop's beats are as far apart as its timer fires."""
RECENT = 4
"""Beats that count as a peer's latest (for the stretch above)."""
LATENESS_MEMORY = 60.0
"""Seconds a late tick of ours keeps widening our allowances."""


@dataclass(slots=True)
class Arrivals:
    """A peer's heartbeat inter-arrival times: a window with running sums (O(1) per beat)."""

    intervals: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))
    total: float = 0.0
    squares: float = 0.0
    last: float | None = None

    def beat(self, now: float, measure: bool = True) -> None:
        """A heartbeat arrived; ``measure`` False when the gap says more about our loop than the peer's."""
        if self.last is not None and measure:
            gap = max(0.0, now - self.last)
            if len(self.intervals) == WINDOW:
                old = self.intervals[0]
                self.total -= old
                self.squares -= old * old
            self.intervals.append(gap)
            self.total += gap
            self.squares += gap * gap
        self.last = now

    def recent(self) -> float:
        """The longest of the latest RECENT intervals (0 before any)."""
        return max(itertools.islice(reversed(self.intervals), RECENT), default=0.0)

    def phi(self, silence: float, min_std: float) -> float:
        """-log10 of the chance that a beat still comes after ``silence`` (normal model,
        the logistic approximation Akka uses). Until enough beats were seen there is no history
        to extend the floor with: infinite, so ``failure_timeout`` alone decides."""
        count = len(self.intervals)
        if count < MIN_SAMPLES:
            return math.inf
        mean = self.total / count
        std = max(min_std, math.sqrt(max(0.0, self.squares / count - mean * mean)))
        y = (silence - mean) / std
        e = math.exp(-y * (1.5976 + 0.070566 * y * y))
        if silence > mean:
            return -math.log10(e / (1.0 + e)) if e > 0 else math.inf
        return -math.log10(1.0 - 1.0 / (1.0 + e))


@dataclass(slots=True)
class Member:
    node_id: int
    listen: str
    caches: frozenset[str] | None = None
    """What it hosts, once its first gossip told us; until then it counts as hosting everything,
    so no write made in that moment skips it (one it does not host, it ignores)."""
    state: str = UP
    last_heard: float = 0.0
    since: float = 0.0
    """When it last came up or went down."""
    settled: bool = False
    """It was up for at least ``failure_timeout`` before it went down: a member of the cluster
    (its address outlives failed dials while it is listed), not a passer-by."""
    suspected: bool = False
    beats: Arrivals = field(default_factory=Arrivals)
    entry: list[Any] | None = None  # its gossip entry, made once per change
    entry_bytes: int = 0
    protocol: int = 0
    """The protocol its connection speaks (versions.py), set by the dispatcher on each connect."""
    release: str = ""
    """Its shoal release, as it said (versions.UNKNOWN_RELEASE until it does)."""


@dataclass
class _Target:
    """An address we want a connection to."""

    permanent: bool
    failures: int = 0
    next_dial: float = 0.0
    dialing: bool = False
    peer: int | None = None


@dataclass(slots=True)
class _Rumor:
    node_id: int
    address: str
    since: float
    sender: int
    holds: bool  # holds readiness back (its sender is still credible)


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
    tick_interval: float = 0.1
    """How often the driver means to tick: a longer gap is our own loop running late."""
    rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        self.caches: set[str] = set()
        self.members: dict[int, Member] = {}
        self.conflicts: set[int] = set()
        """Up peers that claim one of our own addresses: we are not ready while any do."""
        self._at: dict[str, int] = {}  # routable address -> the member last seen there
        self._downs: deque[tuple[float, int]] = deque()  # (since, id) of members gone down, oldest first
        self._rumors: dict[int, _Rumor] = {}  # members a peer says are up, not connected to us
        self._rumor_order: deque[_Rumor] = deque()  # the same, oldest first (stale entries skipped)
        self._rumors_at: dict[str, set[int]] = {}
        self._rumors_of: dict[int, int] = {}  # rumors held per sender
        self._holding = 0  # rumors that hold readiness
        self._misled: dict[int, int] = {}  # senders' rumors that came to nothing, in a row
        self._given_up: dict[int, float] = {}  # rumors that outlived their patience: not waited for again
        self._given_up_order: deque[tuple[float, int]] = deque()
        self._targets: dict[str, _Target] = {}
        self._learned: set[str] = set()  # targets only gossip gave us (at most MAX_TARGETS)
        self._via: dict[int, set[str]] = {}  # the addresses that lead to each connected peer
        self._due: list[tuple[float, int, str]] = []  # dial schedule: (when, seq, address)
        self._seq = 0
        self._self_addresses: set[str] = set()
        self._discovered: set[str] = set()
        self._next_gossip = 0.0
        self._next_heartbeat = 0.0
        self._up: list[int] | None = None  # cached up_peers(), dropped on any change
        self._groups: dict[str, list[int]] = {}
        self._gossip_start = 0
        self._last_tick: float | None = None
        self._lateness = 0.0  # our recent worst tick lateness
        self._late_at = -math.inf
        self._grace_until = -math.inf
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
        self._forget_target(address)

    def dial_failed(self, address: str, now: float) -> None:
        for node_id in list(self._rumors_at.get(address, ())):  # nothing there to wait for
            self._give_up(self._rumors[node_id], now)
        target = self._targets.get(address)
        if target is None:
            return
        target.dialing = False
        target.failures += 1
        if not target.permanent and target.failures >= self.forget_after and not self._listed(address, now):
            self._forget_target(address)
            return
        delay = min(self.backoff_cap, self.backoff_base * 2 ** min(target.failures, 16))
        # Jitter only shortens the delay, so backoff_cap is a true bound.
        self._schedule(address, target, now + delay * self.rng.uniform(0.5, 1.0))

    def admits(self, peer: int, now: float) -> str | None:
        """Why a new connection claiming ``peer`` must be refused, or None to admit it.

        An id held by a live connection (up for a while and heard within
        ``failure_timeout``) keeps it: a newcomer claiming it is an impostor or a
        misconfiguration, and must not take the member's traffic. Right after the
        connection came up, a second one is two members dialing each other at once:
        admitted, and ``Dispatcher.keep_first`` picks one on both ends alike.
        """
        member = self.members.get(peer)
        if member is None or member.state != UP:
            return None
        if now - member.since < self.failure_timeout or now - member.last_heard > self.failure_timeout:
            return None
        return "node id already held by a live connection"

    def speaks(self, peer: int, feature: str) -> bool:
        """Does the connection to ``peer`` have ``feature`` (versions.FEATURES)? Ask before sending
        a message kind an older protocol does not know: such a peer would close the connection."""
        member = self.members.get(peer)
        return member is not None and speaks(member.protocol, feature)

    def connected(self, peer: int, listen: str, now: float, dialed: str | None = None) -> list[Action]:
        """A handshake with ``peer`` finished; it is up.

        ``dialed`` is the address we dialed to reach it, when that differs from
        the address it advertises (a seed named ``localhost:7600``, say).
        """
        member = self.members.get(peer)
        if member is None:
            if not self._room(now):
                return [Close(peer, f"member table full ({MAX_MEMBERS} members up)")]
            member = self.members[peer] = Member(peer, listen, since=now)
        ours = routable(listen) and listen in self._self_addresses
        for address in {listen, dialed or listen}:
            if not routable(address) or address in self._self_addresses:
                continue  # a wildcard leads nowhere; an address of ours leads back here
            target = self._want(address, permanent=False)
            target.dialing = False
            target.failures = 0
            target.peer = peer
            self._learned.discard(address)  # backed by a member now: bounded by the member table
            self._via.setdefault(peer, set()).add(address)
            for node_id in list(self._rumors_at.get(address, ())):
                if node_id != peer:  # that address leads to this member, not to the one rumored
                    self._give_up(self._rumors[node_id], now)
        if member.state != UP:
            member.since = now
        member.state, member.last_heard, member.listen = UP, now, listen
        member.suspected, member.beats = False, Arrivals()
        member.entry = None
        self._changed()
        rumor = self._rumors.get(peer)
        if rumor is not None:
            self._misled.pop(rumor.sender, None)  # its word proved good
            self._drop_rumor(rumor)
        self._given_up.pop(peer, None)
        actions: list[Action] = [MemberUp(peer, listen)]
        if ours:
            # Another id advertises our own address: two members were given one --advertise.
            # Neither is a restart of the other; we say so and stay unready until it is fixed.
            if peer not in self.conflicts:
                log.error(
                    "member %016x advertises this member's own address %s: each member needs its own "
                    "advertise address; not ready until this is fixed",
                    peer,
                    listen,
                )
            self.conflicts.add(peer)
        elif routable(listen):
            # A new id at a known address is a restart: the old incarnation is gone. Only a real
            # address proves it: two members that both claim 0.0.0.0:7600 are two members.
            previous = self.members.get(self._at.get(listen, peer))
            if previous is not None and previous.node_id != peer and previous.state == UP:
                actions += self._down(previous, "restarted with a new id", now)
            self._at[listen] = peer
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
        self._learned.discard(address)
        self._via.setdefault(peer, set()).add(address)

    def disconnected(self, peer: int, now: float, reason: str = "connection closed") -> list[Action]:
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
        member.suspected = False
        if isinstance(msg, Heartbeat):
            member.beats.beat(now, measure=now >= self._grace_until)
        elif isinstance(msg, Gossip):
            return self._on_gossip(member, msg.members, now)
        elif isinstance(msg, Leave):
            return self._down(member, "left", now)
        return []

    def heard(self, peer: int, now: float) -> None:
        member = self.members.get(peer)
        if member is not None:
            member.last_heard = now
            member.suspected = False

    def tick(self, now: float) -> list[Action]:
        """Heartbeats, gossip, failure detection and dials that are due."""
        self._measure_lateness(now)
        actions: list[Action] = []
        if now >= self._grace_until:
            floor = self.failure_timeout + self.lateness(now)
            for member in list(self.members.values()):
                if member.state != UP:
                    continue
                silence = now - member.last_heard
                if silence <= floor / 2:
                    continue
                stretch = min(STRETCH_CAP, max(1.0, member.beats.recent() / self.heartbeat_interval))
                phi = member.beats.phi(silence, self.heartbeat_interval / 4)
                if silence > floor * stretch and phi > PHI_THRESHOLD:
                    actions += self._down(member, f"silent for {silence:.1f}s", now)
                else:
                    member.suspected = member.suspected or phi > SUSPECT_PHI or silence > floor
        up = self.up_peers()
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + self.heartbeat_interval
            beat = Heartbeat(int(now * 1000))
            actions += [Send(peer, beat) for peer in up]
        if now >= self._next_gossip:
            self._next_gossip = now + self.gossip_interval
            fanout = up if len(up) <= GOSSIP_FANOUT else self.rng.sample(up, GOSSIP_FANOUT)
            actions += self._gossip_to(fanout)
        due = self._due
        while due and due[0][0] <= now:
            when, _, address = heapq.heappop(due)
            target = self._targets.get(address)
            if target is None or target.peer is not None or target.dialing or target.next_dial != when:
                continue  # stale: connected, dialing, rescheduled or forgotten meanwhile
            target.dialing = True
            actions.append(Dial(address))
        return actions

    def leave(self) -> list[Action]:
        """Graceful stop: tell every up peer we are going."""
        return [Send(peer, Leave()) for peer in self.up_peers()]

    # -- queries -----------------------------------------------------------------

    def unmet(self, now: float, patience: float) -> int:
        """How many members a credible peer told us are up, that we have not connected to, for less
        than ``patience`` and whose address has not failed a dial: the mesh is not complete yet.
        O(1) amortized: rumors expire from the front of a queue ordered by time."""
        order = self._rumor_order
        while order and (self._rumors.get(order[0].node_id) is not order[0] or now - order[0].since >= patience):
            rumor = order.popleft()
            if self._rumors.get(rumor.node_id) is rumor:
                self._give_up(rumor, now)
        given_up = self._given_up_order
        while given_up and now - given_up[0][0] > FORGET_DOWN:
            since, node_id = given_up.popleft()
            if self._given_up.get(node_id) == since:
                del self._given_up[node_id]
        return self._holding

    def lateness(self, now: float) -> float:
        """Our own loop's worst recent lateness: added to every peer's allowed silence."""
        return self._lateness if now - self._late_at < LATENESS_MEMORY else 0.0

    def suspects(self) -> list[int]:
        """Up peers silent for longer than their history makes likely: not yet declared down."""
        return [m.node_id for m in self.members.values() if m.state == UP and m.suspected]

    def up_peers(self) -> list[int]:
        if self._up is None:
            self._up = [m.node_id for m in self.members.values() if m.state == UP]
        return self._up

    def group(self, cache: str) -> list[int]:
        """Up peers that host ``cache``: the receivers of its writes (kept until membership changes)."""
        group = self._groups.get(cache)
        if group is None:
            if len(self._groups) >= 4 * MAX_CACHES:
                self._groups.clear()
            group = self._groups[cache] = [
                m.node_id for m in self.members.values() if m.state == UP and (m.caches is None or cache in m.caches)
            ]
        return group

    def view(self) -> dict[int, str]:
        """Up members (us included) by id: what converges across the cluster."""
        view = {m.node_id: m.listen for m in self.members.values() if m.state == UP}
        view[self.node_id] = self.listen
        return view

    # -- internals ---------------------------------------------------------------

    def _changed(self) -> None:
        self._up = None
        self._groups.clear()

    def _measure_lateness(self, now: float) -> None:
        last, self._last_tick = self._last_tick, now
        if last is None:
            return
        late = now - last - self.tick_interval
        if late <= self.heartbeat_interval:
            return
        # Frames that reached us while we were late are still unread: accuse nobody until they are.
        self._grace_until = max(self._grace_until, now + 2 * self.heartbeat_interval + min(late, self.failure_timeout))
        if late >= self.lateness(now):
            self._lateness, self._late_at = late, now

    def _listed(self, address: str, now: float) -> bool:
        """A member at ``address`` is still in the table: up, or down for less than FORGET_DOWN."""
        member = self.members.get(self._at.get(address, -1))
        return member is not None and (member.state == UP or (member.settled and now - member.since <= FORGET_DOWN))

    def _room(self, now: float) -> bool:
        """Make room for one more member: forget the one down longest; False if every one is up."""
        self._forget_old(now)
        downs = self._downs
        while len(self.members) >= MAX_MEMBERS and downs:
            since, node_id = downs.popleft()
            member = self.members.get(node_id)
            if member is not None and member.state == DOWN and member.since == since:
                self._forget(member)
        return len(self.members) < MAX_MEMBERS

    def _forget_old(self, now: float) -> None:
        """Forget long-dead incarnations so the table does not grow with restarts."""
        downs = self._downs
        while downs and now - downs[0][0] > FORGET_DOWN:
            since, node_id = downs.popleft()
            member = self.members.get(node_id)
            if member is not None and member.state == DOWN and member.since == since:
                self._forget(member)

    def _forget(self, member: Member) -> None:
        del self.members[member.node_id]
        if self._at.get(member.listen) == member.node_id:
            del self._at[member.listen]

    def _want(self, address: str, permanent: bool) -> _Target:
        target = self._targets.get(address)
        if target is None:
            target = self._targets[address] = _Target(permanent)
            self._schedule(address, target, 0.0)
        elif permanent:
            self._learned.discard(address)
            target.permanent = True
        return target

    def _learn(self, address: str) -> None:
        """An address gossip named: dialed, within MAX_TARGETS of them."""
        if address in self._targets or len(self._learned) >= MAX_TARGETS:
            return
        self._want(address, permanent=False)
        self._learned.add(address)

    def _forget_target(self, address: str) -> None:
        self._targets.pop(address, None)
        self._learned.discard(address)

    def _schedule(self, address: str, target: _Target, when: float) -> None:
        target.next_dial = when
        self._seq += 1
        heapq.heappush(self._due, (when, self._seq, address))

    def _down(self, member: Member, reason: str, now: float, close: bool = True) -> list[Action]:
        member.state = DOWN
        member.settled = now - member.since >= self.failure_timeout
        member.since = now
        member.suspected = False
        self._changed()
        self.conflicts.discard(member.node_id)
        self._downs.append((now, member.node_id))
        for address in self._via.pop(member.node_id, ()):
            target = self._targets.get(address)
            if target is None or target.peer != member.node_id:
                continue
            target.peer = None
            if not (target.permanent or member.settled):
                # A passer-by's address is worth what gossip's are and counts against the same
                # bound: 3,000 connections that came and went left 3,000 addresses redialed.
                if len(self._learned) >= MAX_TARGETS:
                    self._forget_target(address)
                    continue
                self._learned.add(address)
            self._schedule(address, target, now + self.backoff_base * self.rng.uniform(0.5, 1.5))
        actions: list[Action] = [Close(member.node_id, reason)] if close else []
        actions.append(MemberDown(member.node_id, member.listen, reason))
        self._forget_old(now)
        return actions

    def _gossip_to(self, peers: list[int]) -> list[Action]:
        if not peers:
            return []
        own = sorted(c for c in self.caches if len(c) <= MAX_CACHE_NAME)[:MAX_CACHES]
        view: list[Any] = [[self.node_id, self.listen, UP, own, 0]]
        budget = GOSSIP_BYTES - _entry_bytes(self.listen, own)
        up = self.up_peers()
        count = len(up)
        start = self._gossip_start % count if count else 0
        for i in range(count):
            member = self.members[up[(start + i) % count]]
            if member.entry is None:
                caches = sorted(member.caches or ())
                member.entry = [member.node_id, member.listen, UP, caches, 0]
                member.entry_bytes = _entry_bytes(member.listen, caches)
            if member.entry_bytes > budget:
                # Too large a view for one frame: the rest go in the next rounds, from here.
                self._gossip_start = start + i
                break
            budget -= member.entry_bytes
            view.append(member.entry)
        msg = Gossip(view)
        return [Send(peer, msg) for peer in peers]

    def _on_gossip(self, sender: Member, view: list[Any], now: float) -> list[Action]:
        for item in view[:MAX_GOSSIP_ENTRIES]:
            if not (
                type(item) is list
                and len(item) >= 4
                and type(item[0]) is int
                and type(item[1]) is str
                and type(item[3]) is list
                and len(item[3]) <= MAX_CACHES
                and all(type(c) is str and len(c) <= MAX_CACHE_NAME for c in item[3])
            ):
                continue  # a malformed (or oversized) entry teaches us nothing; the rest may still be good
            node_id, listen = item[0], item[1]
            if node_id == sender.node_id:
                sender.caches = frozenset(item[3])
                sender.entry = None
                self._groups.clear()
            elif node_id != self.node_id and listen not in self._self_addresses and routable(listen):
                member = self.members.get(node_id)
                if member is None or member.state != UP:
                    self._learn(listen)
                    if node_id not in self._given_up and node_id not in self._rumors:
                        self._rumor(node_id, listen, sender.node_id, now)
        return []

    def _rumor(self, node_id: int, address: str, sender: int, now: float) -> None:
        held = self._rumors_of.get(sender, 0)
        if len(self._rumors) >= MAX_RUMORS or held >= MAX_RUMORS_PER_SENDER or address not in self._targets:
            return
        rumor = _Rumor(node_id, address, now, sender, holds=self._misled.get(sender, 0) < MISLED_LIMIT)
        self._rumors[node_id] = rumor
        self._rumor_order.append(rumor)
        self._rumors_at.setdefault(address, set()).add(node_id)
        self._rumors_of[sender] = held + 1
        self._holding += rumor.holds

    def _drop_rumor(self, rumor: _Rumor) -> None:
        del self._rumors[rumor.node_id]
        ids = self._rumors_at.get(rumor.address)
        if ids is not None:
            ids.discard(rumor.node_id)
            if not ids:
                del self._rumors_at[rumor.address]
        held = self._rumors_of.get(rumor.sender, 1) - 1
        if held > 0:
            self._rumors_of[rumor.sender] = held
        else:
            self._rumors_of.pop(rumor.sender, None)
        self._holding -= rumor.holds

    def _give_up(self, rumor: _Rumor, now: float) -> None:
        """A rumor came to nothing: not waited for again, and its sender is trusted a little less."""
        self._drop_rumor(rumor)
        if len(self._given_up) < 4 * MAX_RUMORS:
            self._given_up[rumor.node_id] = now
            self._given_up_order.append((now, rumor.node_id))
        if rumor.sender in self.members:
            self._misled[rumor.sender] = self._misled.get(rumor.sender, 0) + 1
        if len(self._misled) > MAX_MEMBERS:
            self._misled.clear()


def _entry_bytes(listen: str, caches: list[str]) -> int:
    """An upper bound on a gossip entry's msgpack size."""
    return 32 + len(listen.encode()) + sum(5 + len(c.encode()) for c in caches)


WILDCARDS = frozenset({"", "0.0.0.0", "::", "[::]", "*"})


def routable(address: str) -> bool:
    """``address`` is host:port with a host another machine could dial (not a wildcard)."""
    host, sep, port = address.rpartition(":")
    return bool(sep) and port.isdigit() and host.strip("[]") not in WILDCARDS and host not in WILDCARDS
