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

``driver.py`` drives it over asyncio sockets; ``tests/sim`` drives it over a
simulated network. Both call exactly this code, so what the simulator shows
(back-pressure drops, early writes, warm boot, readiness) is what a node does.

Local writes reach the dispatcher from application threads: ``Cache`` appends
each op to its queue in ``outbox`` (a deque per cache: appends are atomic) and the
first op after a flush calls ``wake``, the driver's hook to call ``flush`` soon
(driver.py: after ``FLUSH_DELAY`` on its loop). Everything else runs on the
driver's one thread.

Flow control: ``backlog(peer)`` is the driver's count of bytes queued to a peer and
not yet written (set by the driver, like ``wake``). Answers to a peer (catch-ups,
relays, pulls, repair listings) are produced a slice at a time while that count is
below ``max_peer_backlog``: when the peer asks, on ``drained`` and on every tick. So
every Send the core returns is one the driver carries out; it never has to drop one.

Time comes in twice: ``now`` is monotonic (timeouts, schedules), ``wall`` is
wall-clock seconds (expiry and versions, which travel between members).
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from itertools import repeat, starmap

from .actions import Action, BootStreaming, MemberDown, MemberUp, Ready, Send, StreamDump
from .config import Config
from .errors import ProtocolError
from .leases import Leases, is_lease_message
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
    Unknown,
    Version,
    Writes,
)
from .replica import Op, ReplicaView
from .replication import Replicator, keys_of
from .store import Key
from .versions import UNKNOWN_RELEASE, Refusals
from .warmboot import Booter, BootStats
from .wire import PROTOCOL_VERSION

FLUSH_DELAY = 0.001
"""Writes gather this long before a flush: fewer, larger frames, and far fewer wake-ups
(each costs the writing thread a syscall and a GIL hand-off)."""
FLUSH_MAX_OPS = 20_000
"""At most this many ops per flush, so one flush never holds the driver's thread long."""
DUMPS_AT_ONCE = 2
"""Dumps streaming to one peer at a time; more wait their turn (each holds a list of every entry)."""
DUMPS_QUEUED = 64
"""Dumps one peer may have asked for and not yet received: an honest booter asks for one per
cache it boots; more at once is a peer making us hold entry lists (100 unread dumps: +300 MB)."""

MAX_RELEASE = 64
"""The longest release string a peer may tell (a version like 0.2.0.dev0+g1a2b3c4 fits)."""

_REPLICATION = (Stream, Writes, Resume, Resumed, Ops, Digest, Listing, Pull, CatchUp, CaughtUp)
_WARMBOOT = (SizeRequest, SizeReply, DumpRequest, DumpFrom, DumpChunk, DumpEnd)
_MEMBERSHIP = (Gossip, Heartbeat, Leave)


def _unhosted(peer: int, msg: Message) -> list[Action]:
    """A message about a cache this member does not host: no work, and the fixed answer a
    request needs so the asker does not wait (its name is at most 255 bytes, wire.py)."""
    if isinstance(msg, SizeRequest):
        return [Send(peer, SizeReply(msg.cache, 0, False))]
    if isinstance(msg, DumpRequest):
        return [Send(peer, DumpEnd(msg.cache, msg.stream, 0))]
    if isinstance(msg, CatchUp):
        return [Send(peer, CaughtUp(msg.cache, True))]  # nothing logged: nothing was missed
    return []


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
        release: str = UNKNOWN_RELEASE,
    ) -> None:
        self.node_id = node_id
        self.release = release
        """This member's release (``shoal.__version__``), told to peers whose protocol has it."""
        self.refusals = Refusals()
        """Frames of kinds this release does not know, logged and dropped (versions.py)."""
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
            tick_interval=config.tick_interval,
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
        """Cluster single flight: ``miss``, ``loaded``, ``load_failed`` and ``abandoned`` feed it."""
        self._wall = 0.0  # the last wall-clock time given: what ``leases`` checks values against
        self.outbox: dict[str, deque[Op]] = {}
        """Per hosted cache, its local writes not yet flushed (a queue per cache: a write is queued
        as the op it is, with no pair naming its cache, and a flush takes a cache's ops in bulk)."""
        self._writers: dict[str, Callable[[Op], None]] = {}  # per hosted cache: what queues its writes
        self._flush_from = 0  # the cache whose queue the next flush starts with, round-robin
        self.wake: Callable[[], object] = lambda: None
        self.backlog: Callable[[int], int] = lambda peer: 0
        """The driver's count of bytes queued to ``peer`` and not yet written (flow control)."""
        self.ready = False
        self.running = False
        self._flush_pending = False
        self._booted_caches: set[str] = set()
        self._streaming_in = False
        self._dumps_out: dict[int, int] = {}  # per peer: dumps streaming to it now
        self.replicator.dumping_to = self._dumps_out
        self._dumps_waiting: dict[int, deque[StreamDump]] = {}  # per peer: their turn comes

    # -- the member's own life ------------------------------------------------------

    def host(self, name: str, replica: ReplicaView, now: float, single_flight: bool = True) -> list[Action]:
        """Start hosting a cache: its writes replicate, it boots once running, and (with
        ``single_flight``) its loads take part in the cluster's load leases."""
        if name in self.replicas:
            raise ValueError(f"cache {name!r} is already hosted")
        self.replicas[name] = replica
        self.outbox[name] = deque()
        self._writers[name] = self._writer(self.outbox[name])
        if single_flight:
            self.leases.caches.add(name)
        connect: Callable[[Callable[[Op], None]], None] | None = getattr(replica, "connect", None)
        if connect is not None:
            connect(self._writers[name])
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
        if any(self.outbox.values()):
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
        """Called on application threads: queue a write of hosted cache ``name``, wake the driver
        once per flush. (A cache's ``connect`` gets the same, bound to its queue: ``_writer``.)"""
        self._writers[name](op)

    def _writer(self, queue: deque[Op]) -> Callable[[Op], None]:
        append = queue.append

        def local_write(op: Op) -> None:
            """Called on application threads: queue a write of this cache, wake the driver once per flush."""
            append(op)
            if not self._flush_pending and self.running:
                self._flush_pending = True
                self.wake()

        return local_write

    def flush(self, backlog: Callable[[int], int] | None, wall: float, everything: bool = False) -> list[Action]:
        """Queued writes as broadcasts (Writes; Stream to a peer on protocol 3 or 4) to the peers
        whose streams are live; a peer over ``max_peer_backlog`` falls behind and gets them from
        the log as it drains. ``backlog``, if given, becomes ``self.backlog`` (a driver that
        passes it here need not set it)."""
        # Clear the flag before draining: an op queued after this point wakes the
        # driver again instead of being stranded.
        self._flush_pending = False
        if backlog is not None:
            self.backlog = backlog
        names = list(self.outbox)
        first = self._flush_from % len(names) if names else 0
        self._flush_from = first + 1  # a cache that fills a flush's budget does not starve the others
        budget = FLUSH_MAX_OPS
        actions: list[Action] = []
        for name in names[first:] + names[:first]:
            queue = self.outbox[name]
            n = len(queue) if everything else min(len(queue), budget)
            if n:
                ops = list(starmap(queue.popleft, repeat((), n)))  # in C: no Python step per op
                actions += self.replicator.outgoing(name, ops, wall)
                budget -= n
        self.replicator.flushed()
        if any(self.outbox.values()) and not self._flush_pending and self.running:
            self._flush_pending = True
            self.wake()
        return actions

    def drained(self, peer: int, now: float, wall: float) -> list[Action]:
        """The driver's queue to ``peer`` fell below its low-water mark: the next slices of
        what is pending for it (nothing if none is)."""
        return self._after(self.replicator.pump(peer, wall), now)

    # -- connections ----------------------------------------------------------------

    def connected(
        self, peer: int, listen: str, now: float, dialed: str | None = None, protocol: int = PROTOCOL_VERSION
    ) -> list[Action]:
        """A handshake with ``peer`` finished on ``protocol``: what may be sent to it depends on it."""
        actions = self.membership.connected(peer, listen, now, dialed=dialed)
        member = self.membership.members.get(peer)
        if member is not None:  # None: refused (the member table is full)
            member.protocol, member.release = protocol, UNKNOWN_RELEASE
            if self.speaks(peer, "release"):
                actions.insert(0, Send(peer, Version(self.release)))
        return self._after(actions, now, membership=True)

    def speaks(self, peer: int, feature: str) -> bool:
        """Does the connection to ``peer`` have ``feature`` (versions.FEATURES)? Ask before sending
        a message kind an older protocol does not know: such a peer would close the connection."""
        return self.membership.speaks(peer, feature)

    def disconnected(self, peer: int, now: float) -> list[Action]:
        return self._after(self.membership.disconnected(peer, now), now)

    def dial_failed(self, address: str, now: float) -> list[Action]:
        self.membership.dial_failed(address, now)
        return []

    def admits(self, peer: int, now: float) -> str | None:
        """Before taking a newly admitted connection claiming ``peer``: the reason to refuse it
        (log it as an error and close that connection), or None to go on as before (the
        ``keep_first`` rule for two connections dialed at once)."""
        return self.membership.admits(peer, now)

    def alias(self, address: str, peer: int) -> None:
        """``address`` also leads to ``peer`` (a duplicate connection was dropped)."""
        self.membership.alias(address, peer)

    def listening(self, address: str) -> None:
        """The driver listens now, at ``address`` (the port is known): the address membership
        tells the others, never dials, and leaves out of its seeds."""
        membership = self.membership
        membership.listen = address
        membership.advertise(address)  # a wildcard address is not routable: not taken as ours
        membership.seeds = [s for s in membership.seeds if s != address]

    def advertise(self, address: str) -> None:
        """This member's address for the others (given, or learned from its own sockets)."""
        self.membership.advertise(address)

    def own_address(self, address: str) -> None:
        """``address`` leads to this member itself: never dial it."""
        self.membership.is_self(address)

    def discovered(self, addresses: list[str]) -> None:
        """DNS discovery names these addresses (seeds, re-resolved)."""
        self.membership.discovered(addresses)

    def received_bytes(self, peer: int, count: int) -> None:
        """Bytes a peer sent, framing included: a boot's figures count what its donor sent."""
        if self.booter.booting:
            self.booter.bytes_received(peer, count)

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
        if isinstance(msg, (Version, Unknown)):
            self._versions(peer, msg, now)
            return []
        self._wall = wall
        if isinstance(msg, _REPLICATION + _WARMBOOT) and msg.cache not in self.replicas:
            return _unhosted(peer, msg)
        if isinstance(msg, _REPLICATION):
            actions = self._after(self.replicator.received(peer, msg, now, wall), now)
            if isinstance(msg, (Stream, Ops, Writes)) and self.leases.wants:  # callers here may wait for these keys
                actions += self.leases.arrived(msg.cache, keys_of(msg), now)
            return actions
        if isinstance(msg, _WARMBOOT):
            return self._after(self.booter.received(peer, msg, now, wall), now)
        if is_lease_message(msg):
            return self.leases.received(peer, msg, now)
        raise ProtocolError(f"unexpected {type(msg).__name__} after the handshake")

    def _versions(self, peer: int, msg: Version | Unknown, now: float) -> None:
        member = self.membership.members.get(peer)
        if isinstance(msg, Unknown):
            self.refusals.refuse(peer, msg.kind, None if member is None else member.protocol, now)
            return
        release = msg.release
        if not (0 < len(release) <= MAX_RELEASE and release.isascii() and release.isprintable()):
            raise ProtocolError(f"a release is 1 to {MAX_RELEASE} printable ASCII characters")
        if member is not None:
            member.release = release

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

    def dump_done(self, peer: int, now: float) -> list[Action]:
        """The driver finished (or abandoned) one dump to ``peer``: the next waiting one may start."""
        waiting = self._dumps_waiting.get(peer)
        if waiting:
            action = waiting.popleft()
            if not waiting:
                del self._dumps_waiting[peer]
            return [action]
        out = self._dumps_out.get(peer, 0) - 1
        if out > 0:
            self._dumps_out[peer] = out
        else:
            self._dumps_out.pop(peer, None)
        return []

    # -- cluster single flight: a local fetch's events (leases.py) ----------------------

    def miss(self, cache: str, key: Key, now: float) -> list[Action]:
        """A local fetch of ``key`` missed and no local caller is loading it yet."""
        return self.leases.miss(cache, key, now)

    def loaded(self, cache: str, key: Key, now: float) -> list[Action]:
        """The local loader ran after a ``Load`` and its value is set: waiters everywhere get it."""
        return self.leases.loaded(cache, key, now)

    def load_failed(self, cache: str, key: Key, error_type: str, error_text: str, now: float) -> list[Action]:
        """The local loader raised after a ``Load``: every waiter in the cluster raises it too."""
        return self.leases.failed(cache, key, error_type, error_text, now)

    def abandoned(self, cache: str, key: Key, now: float) -> list[Action]:
        """The local callers went away before loading: the key's lease passes on."""
        return self.leases.abandoned(cache, key, now)

    # -- what an operator sees ------------------------------------------------------------

    def members(self, now: float) -> list[dict[str, object]]:
        """Every other member this one knows of: its state, how long since it was heard, its release
        (``version``) and the protocol its connection speaks (``protocol``, 0 before it ever connected)."""
        return [
            {
                "id": f"{m.node_id:016x}",
                "address": m.listen,
                "state": m.state,
                "last_heard": round(now - m.last_heard, 3),
                "caches": sorted(m.caches or ()),
                "version": m.release,
                "protocol": m.protocol,
            }
            for m in list(self.membership.members.values())
        ]

    def figures(self, cache: str) -> dict[str, object]:
        """A cache's replication and warm-boot figures, for ``Node.stats``."""
        figures: dict[str, object] = dict(self.replicator.figures_of(cache))
        queue = self.outbox.get(cache)
        figures["queue_depth"] = 0 if queue is None else len(queue)
        figures["warm_boot"] = self.boot_stats(cache).as_dict()
        return figures

    def member_figures(self) -> dict[str, object]:
        return {"members_up": len(self.membership.up_peers()) if self.running else 0, "leases": self.leases.figures()}

    @property
    def busy(self) -> bool:
        """Work is in progress (a repair scan, digests to fold): tick again soon. Not for the
        digests while a dump streams in or out: folding at that pace took a quarter of the
        receiver's loop from the dump (a boot of 5M took 1.4x the time per entry of 1M), and a
        fifth of a donor's (fresh from a fill of 1M, it kept the receiver waiting 13% of its
        boot); the tick folds them at its own pace meanwhile, and fast after."""
        if self.replicator.busy:
            return True
        if self.booter.receiving or self._dumps_out:
            return False
        return any(replica.behind() for replica in self.replicas.values())

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
                actions += self.booter.member_up(action.peer, now)
            elif isinstance(action, MemberDown):
                self._dumps_out.pop(action.peer, None)
                self._dumps_waiting.pop(action.peer, None)
                self.replicator.member_down(action.peer)
                actions += self.booter.member_down(action.peer, now)
                actions += self.leases.member_down(action.peer, now)
        if any(isinstance(action, StreamDump) for action in actions):
            actions = [a for action in actions for a in self._take_turn(action)]
        streaming = self.booter.receiving
        if streaming != self._streaming_in:
            self._streaming_in = streaming
            actions.append(BootStreaming(streaming))
        ready = self._ready(now)
        if ready != self.ready:
            self.ready = ready
            actions.append(Ready(ready))
        return actions

    def _take_turn(self, action: Action) -> list[Action]:
        """A dump asked for streams now if the peer has fewer than DUMPS_AT_ONCE out, else waits its turn."""
        if not isinstance(action, StreamDump):
            return [action]
        peer = action.peer
        out = self._dumps_out.get(peer, 0)
        if out < DUMPS_AT_ONCE:
            self._dumps_out[peer] = out + 1
            return [action]
        waiting = self._dumps_waiting.setdefault(peer, deque())
        if len(waiting) >= DUMPS_QUEUED:
            raise ProtocolError(f"more than {DUMPS_QUEUED} dumps requested at once")
        waiting.append(action)
        return []

    def _holds(self, cache: str, key: Key) -> bool:
        replica = self.replicas.get(cache)
        return replica is not None and replica.holds(key, self._wall)

    def _ready(self, now: float) -> bool:
        """Ready to serve the cluster: every cache booted, connected to every member known to be
        up and caught up from each. The last two are bounded by ``mesh_wait``, so a member that
        is gossiped but dead, or one that never answers, cannot hold readiness back for long."""
        if not self.running or not all(name in self._booted_caches for name in self.replicas):
            return False
        if self.membership.conflicts:  # another member advertises our address: logged, never ready
            return False
        patience = self.config.mesh_wait
        return not self.membership.unmet(now, patience) and not self.replicator.waiting_for(now, patience)

    def _booted(self, cache: str, stats: BootStats) -> None:
        self._booted_caches.add(cache)
        self.replicator.settle(cache, self.booter.positions.pop(cache, {}))
