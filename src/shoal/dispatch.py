"""One member's protocol core: events in, actions out, the same for every driver.

Theory of operation. A member is four state machines over one registry of
hosted caches (their ``Replica`` views): membership (who is up), replication
(writes and repair), warm boot, and load leases (cluster single flight). The dispatcher routes each event to the
parts that care and returns every action they ask for, so a driver never needs
to know which part said what:

    connected / disconnected / dial_failed   a connection came up or went away
    message(peer, msg)                       a frame arrived from an admitted peer
    tick(now, wall)                          time passed
    flush(backlog)                           local writes are waiting in the outbox
    drained(peer)                            a peer's unsent bytes fell below the low-water mark
    host(name, replica) / stop()             the member's own life

``node.py`` drives it over asyncio sockets; ``tests/sim`` drives it over a
simulated network. Both call exactly this code, so what the simulator shows
(back-pressure drops, early writes, warm boot, readiness) is what a node does.

Local writes reach the dispatcher from application threads: ``Cache`` appends
each op to ``outbox`` (a deque: appends are atomic) and the first op after a
flush calls ``wake``, the driver's hook to call ``flush`` soon (node.py: after
``FLUSH_DELAY`` on its loop). Everything else runs on the driver's one thread.

Flow control: ``backlog(peer)`` is the driver's count of bytes queued to a peer and
not yet written (set by the driver, like ``wake``). Answers to a peer (catch-ups,
relays, pulls, repair listings) are produced a slice at a time while that count is
below ``max_peer_backlog``: when the peer asks, on ``drained`` and on every tick. So
every Send the core returns is one the driver carries out; it never has to drop one.

Time comes in twice: ``now`` is monotonic (timeouts, schedules), ``wall`` is
wall-clock seconds (expiry and versions, which travel between members).
"""

from __future__ import annotations

import functools
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from .actions import Action, MemberDown, MemberUp, Ready
from .errors import ProtocolError
from .leases import LEASE_TTL, Leases, is_lease_message
from .membership import Membership
from .messages import (
    CatchUp,
    CaughtUp,
    Digest,
    DumpChunk,
    DumpEnd,
    DumpFrom,
    DumpRequest,
    Gossip,
    Heartbeat,
    Leave,
    Listing,
    Message,
    Ops,
    Pull,
    Resume,
    Resumed,
    SizeReply,
    SizeRequest,
    Stream,
)
from .replica import Op, ReplicaView
from .replication import CATCHUP_LOG_BYTES, Replicator
from .store import Key
from .validation import DEFAULT_MAX_CLOCK_SKEW
from .warmboot import Booter, BootStats

FLUSH_DELAY = 0.001
"""Writes gather this long before a flush: fewer, larger frames, and far fewer wake-ups
(each costs the writing thread a syscall and a GIL hand-off)."""
FLUSH_MAX_OPS = 20_000
"""At most this many ops per flush, so one flush never holds the driver's thread long."""

_REPLICATION = (Stream, Resume, Resumed, Ops, Digest, Listing, Pull, CatchUp, CaughtUp)
_WARMBOOT = (SizeRequest, SizeReply, DumpRequest, DumpFrom, DumpChunk, DumpEnd)
_MEMBERSHIP = (Gossip, Heartbeat, Leave)


@dataclass
class Config:
    """The protocol's timers and limits (``Node`` takes them as keyword arguments)."""

    failure_timeout: float = 5.0
    heartbeat_interval: float = 0.5
    anti_entropy_interval: float = 10.0
    warm_donors: int = 1
    warm_timeout: float = 30.0
    boot_wait: float = 2.0
    max_peer_backlog: int = 64 * 1024 * 1024
    """Bytes queued to a peer and not yet sent past which nothing more is produced for it."""
    catchup_log_bytes: int = CATCHUP_LOG_BYTES
    """Recent writes kept per cache for members that reconnect (catch-up), keys included; 0 keeps none."""
    max_clock_skew: float = DEFAULT_MAX_CLOCK_SKEW
    """Members' clocks agree this closely (the handshake refuses others)."""
    mesh_wait: float = 5.0
    """How long readiness waits for a gossiped member to connect, or a peer to answer a catch-up."""
    load_timeout: float = LEASE_TTL
    """Cluster single flight: a lease holder's loader gets this long before the lease passes on."""


class Dispatcher:
    def __init__(
        self,
        node_id: int,
        listen: str,
        *,
        seeds: list[str] | tuple[str, ...] = (),
        discovery: bool = False,
        config: Config | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.node_id = node_id
        self.config = config = config or Config()
        self.rng = rng or random.Random()
        self.replicas: dict[str, ReplicaView] = {}
        """Every hosted cache, by name: the one registry the parts share."""
        self.membership = Membership(
            node_id,
            listen,
            seeds=[s for s in seeds if s != listen],
            failure_timeout=config.failure_timeout,
            heartbeat_interval=config.heartbeat_interval,
            rng=self.rng,
        )
        self.replicator = Replicator(
            self.membership,
            self.replicas,
            interval=config.anti_entropy_interval,
            rng=self.rng,
            log_bytes=config.catchup_log_bytes,
            max_backlog=config.max_peer_backlog,
            backlog=lambda peer: self.backlog(peer),
        )
        self.booter = Booter(
            self.membership,
            self.replicas,
            on_done=self._booted,
            has_seeds=bool(seeds) or discovery,
            warm_donors=config.warm_donors,
            boot_wait=config.boot_wait,
            warm_timeout=config.warm_timeout,
            patience=config.mesh_wait,
            rng=self.rng,
            positions=self.replicator.positions,
        )
        self.leases = Leases(node_id, self.membership.group, self._holds, ttl=config.load_timeout)
        """Cluster single flight; the driver adds the caches that take part to ``leases.caches``
        and feeds it the local events (a miss, a load done) directly."""
        self._wall = 0.0  # the last wall-clock time given: what ``leases`` checks values against
        self.outbox: deque[tuple[str, Op]] = deque()
        self.wake: Callable[[], object] = lambda: None
        self.backlog: Callable[[int], int] = lambda peer: 0
        """The driver's count of bytes queued to ``peer`` and not yet written (flow control)."""
        self.ready = False
        self.running = False
        self._flush_pending = False
        self._booted_caches: set[str] = set()

    # -- the member's own life ------------------------------------------------------

    def host(self, name: str, replica: ReplicaView, now: float) -> list[Action]:
        """Start hosting a cache: its writes replicate, and it boots once running."""
        if name in self.replicas:
            raise ValueError(f"cache {name!r} is already hosted")
        self.replicas[name] = replica
        connect: Callable[[Callable[[Op], None]], None] | None = getattr(replica, "connect", None)
        if connect is not None:
            connect(functools.partial(self.local_write, name))  # C-level: one Python frame less per write
        if not self.running:
            return []
        actions = self.membership.host(name) + self.replicator.hosting(name) + self.booter.start(name, now)
        return self._after(actions, now)

    def start(self, now: float, wall: float) -> list[Action]:
        """The driver is listening: boot every cache hosted so far, send early writes."""
        self.running = True
        actions: list[Action] = []
        for name in self.replicas:
            actions += self.membership.host(name)
            actions += self.booter.start(name, now)
        if self.outbox:
            self._flush_pending = True
            self.wake()
        return self._after(actions, now)

    def stop(self, now: float, wall: float) -> list[Action]:
        """Graceful stop: every queued write goes out, then a goodbye to each peer."""
        actions = self.flush(None, wall, everything=True)
        self.running = False
        return actions + self.membership.leave()

    # -- writes ---------------------------------------------------------------------

    def local_write(self, name: str, op: Op) -> None:
        """Called on application threads: queue the op, wake the driver once per flush."""
        self.outbox.append((name, op))
        if not self._flush_pending and self.running:
            self._flush_pending = True
            self.wake()

    def flush(self, backlog: Callable[[int], int] | None, wall: float, everything: bool = False) -> list[Action]:
        """Queued writes as Stream broadcasts to the peers whose streams are live; a peer over
        ``max_peer_backlog`` falls behind and gets them from the log as it drains. ``backlog``,
        if given, becomes ``self.backlog`` (a driver that passes it here need not set it)."""
        # Clear the flag before draining: an op queued after this point wakes the
        # driver again instead of being stranded.
        self._flush_pending = False
        if backlog is not None:
            self.backlog = backlog
        outbox = self.outbox
        budget = len(outbox) if everything else min(len(outbox), FLUSH_MAX_OPS)
        batches: dict[str, list[Op]] = {}
        for _ in range(budget):
            name, op = outbox.popleft()
            batches.setdefault(name, []).append(op)
        actions: list[Action] = []
        for name, ops in batches.items():
            actions += self.replicator.outgoing(name, ops, wall)
        self.replicator.flushed()
        if outbox and not self._flush_pending and self.running:
            self._flush_pending = True
            self.wake()
        return actions

    def drained(self, peer: int, now: float, wall: float) -> list[Action]:
        """The driver's queue to ``peer`` fell below its low-water mark: the next slices of
        what is pending for it (nothing if none is)."""
        return self._after(self.replicator.pump(peer, wall), now)

    # -- connections ----------------------------------------------------------------

    def connected(self, peer: int, listen: str, now: float, dialed: str | None = None) -> list[Action]:
        return self._after(self.membership.connected(peer, listen, now, dialed=dialed), now, membership=True)

    def disconnected(self, peer: int, now: float) -> list[Action]:
        return self._after(self.membership.disconnected(peer, now), now)

    def dial_failed(self, address: str, now: float) -> list[Action]:
        self.membership.dial_failed(address, now)
        return []

    def alias(self, address: str, peer: int) -> None:
        """``address`` also leads to ``peer`` (a duplicate connection was dropped)."""
        self.membership.alias(address, peer)

    @staticmethod
    def keep_first(first_initiator: int, second_initiator: int) -> bool:
        """Two connections to one peer (both sides dialed): keep the one the smaller id
        initiated, which both ends decide alike without a word."""
        return first_initiator <= second_initiator

    # -- messages and time ------------------------------------------------------------

    def message(self, peer: int, msg: Message, now: float, wall: float) -> list[Action]:
        """A message from an admitted peer; raises ProtocolError for one it may not send."""
        if isinstance(msg, _MEMBERSHIP):
            return self._after(self.membership.received(peer, msg, now), now, membership=isinstance(msg, Gossip))
        self.membership.heard(peer, now)
        self._wall = wall
        if isinstance(msg, _REPLICATION):
            actions = self._after(self.replicator.received(peer, msg, now, wall), now)
            if isinstance(msg, (Stream, Ops)) and self.leases.wants:  # callers here may be waiting for these keys
                actions += self.leases.arrived(msg.cache, [op[1] for op in msg.ops], now)
            return actions
        if isinstance(msg, _WARMBOOT):
            return self._after(self.booter.received(peer, msg, now, wall), now)
        if is_lease_message(msg):
            return self.leases.received(peer, msg, now)
        raise ProtocolError(f"unexpected {type(msg).__name__} after the handshake")

    def tick(self, now: float, wall: float) -> list[Action]:
        """Timers: heartbeats, failure detection, dials, boots, repair; a bounded sweep."""
        self._wall = wall
        actions = self.membership.tick(now)
        actions += self.booter.tick(now)
        actions += self.replicator.tick(now, wall)
        actions += self.leases.tick(now)
        for replica in self.replicas.values():
            replica.sweep(wall)
        return self._after(actions, now)

    def snapshot_read(self, cache: str, ops: list[Op], now: float, wall: float) -> list[Action]:
        self.booter.snapshot_read(cache, ops, now, wall)
        return self._after([], now)

    @property
    def busy(self) -> bool:
        """Work is in progress (a repair scan): tick again soon."""
        return self.replicator.busy

    @property
    def booting(self) -> bool:
        return self.booter.booting

    def boot_stats(self, cache: str) -> BootStats:
        return self.booter.stats.setdefault(cache, BootStats())

    # -- internals --------------------------------------------------------------------

    def _after(self, actions: list[Action], now: float, membership: bool = False) -> list[Action]:
        """React to what membership reported, then to a change of readiness."""
        if membership and self.booter.booting:
            actions += self.booter.tick(now)  # a boot waiting for peers need not wait for a tick
        actions += self.replicator.due(now)  # caches that just booted catch up from their dump's positions
        for action in list(actions):
            if isinstance(action, MemberUp):
                actions += self.replicator.member_up(action.peer, now)  # what it missed, and what we did
            elif isinstance(action, MemberDown):
                self.replicator.member_down(action.peer)
                actions += self.booter.member_down(action.peer, now)
                actions += self.leases.member_down(action.peer, now)
        ready = self._ready(now)
        if ready != self.ready:
            self.ready = ready
            actions.append(Ready(ready))
        return actions

    def _holds(self, cache: str, key: Key) -> bool:
        replica = self.replicas.get(cache)
        return replica is not None and replica.holds(key, self._wall)

    def _ready(self, now: float) -> bool:
        """Ready to serve the cluster: every cache booted, connected to every member known to be
        up and caught up from each. The last two are bounded by ``mesh_wait``, so a member that
        is gossiped but dead, or one that never answers, cannot hold readiness back for long."""
        if not self.running or not all(name in self._booted_caches for name in self.replicas):
            return False
        patience = self.config.mesh_wait
        return not self.membership.unmet(now, patience) and not self.replicator.waiting_for(now, patience)

    def _booted(self, cache: str, stats: BootStats) -> None:
        self._booted_caches.add(cache)
        self.replicator.settle(cache, self.booter.positions.pop(cache, {}))
