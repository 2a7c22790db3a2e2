"""Warm boot: a joining member fills a cache from its largest live peer.

Theory of operation. A member that starts hosting a cache waits briefly for its
first peers (``boot_wait``), asks every member of the cache's group for its size,
and streams a dump from the largest one that is itself warm (``warm_donors`` of
them, 1 by default). So N members booting together cause N dumps in total, one
each, never N dumps each. The donor streams from a walk of its entries
(``store.Walk``: no lock, no copy of the values, no list of them all, no
serialisation up front) in chunks of ``CHUNK`` entries, yielding to its loop and
to TCP back-pressure between chunks; the receiver applies each chunk as it
arrives, merging by version, so a live write that arrived during the boot is
never overwritten by older dump data. If the donor goes down, or sends nothing
for ``warm_timeout`` (a stall: a healthy dump may take far longer), the next
largest takes over: entries already applied stay, and the merge makes the
overlap harmless.

A dump is no snapshot of one moment. It holds every entry the donor held when it
began and did not change while it streamed; a write made meanwhile may be in it
or not, and a key may come twice (applied by version, the second is a no-op).
The booter does not depend on it: the donor sends its positions (``DumpFrom``)
before the walk begins, and when the dump ends the booter resumes every stream
from there (replication.py's catch-up), so each write made after them reaches it
that way, whatever the dump held of it.

``Booter`` is a sans-IO state machine, one per member, like membership: events
in (a cache to boot, a size reply, a chunk, the end of a dump, a member down,
time), actions out (send this, stream a dump to that peer, read the snapshot
file) and ``done`` callbacks to the dispatcher. The donor's streaming loop and
the GC pause during a boot belong to the driver; ``dump_stream`` is the pure
generator it runs.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from .actions import Action, ReadSnapshot, Send, StreamDump
from .clock import NODE_BITS, NODE_MASK
from .errors import FrameTooLarge, ProtocolError
from .membership import Membership
from .messages import DumpChunk, DumpEnd, DumpFrom, DumpRequest, Message, SizeReply, SizeRequest
from .positions import vector_from_wire, vector_to_wire
from .replica import Op, ReplicaView
from .store import Entry, Key
from .validation import joined_versions
from .wire import encode

log = logging.getLogger("shoal")

CHUNK = 1000
"""Entries of a dump chunk, at most: a chunk is one step of the donor's loop (walk, columns,
encode: ~0.6 ms for 1,000 small entries), and a timer on that loop may wait out two steps
(the one it fell due in, and the next, queued before it): 2,000 made ~1.2 ms steps."""
CHUNK_BYTES = 4 * 1024 * 1024
"""What a dump chunk aims at: a count alone does not bound a frame (1,000 values of 20 KB
would make a chunk over the 16 MiB frame limit, which the donor could not send)."""
CHUNK_SLICES = 2
"""Takes from the walk a chunk may make (each looks up as many keys as the chunk still needs,
``store.WALK_SLICE`` at least) before it goes out short: a run of stale references costs a
step about what a chunk of entries does."""
RETRY = 1.0
"""Seconds before a boot whose every donor failed asks the cluster again (doubling, to 30 s)."""
SHORT_DUMP = 0.5
"""A dump that brought less than this share of the entries its donor claimed is no warm copy
(a donor answered SizeReply(10**9) and then an empty dump, and the member said "warm" with 0)."""
SIZE_WAIT = 1.0


@dataclass
class BootStats:
    state: str = "pending"
    donor: str | None = None
    entries: int = 0
    bytes: int = 0
    seconds: float = 0.0
    donors_tried: int = 0
    dumps_served: int = 0
    bytes_served: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def choose_donors(sizes: dict[int, tuple[int, bool]]) -> list[int]:
    """Peers in the order to ask for a dump: warm ones first, then the largest."""
    return sorted(sizes, key=lambda peer: (not sizes[peer][1], -sizes[peer][0], peer))


def dump_columns(
    entries: list[Entry], dumps: Callable[[Any], bytes] | None, wall: float
) -> tuple[list[Any], list[Any], list[float], list[int], list[int]]:
    """Columns (keys, values, expires, hlcs, nodes) of the unexpired entries of a slice of a dump.

    ``dumps`` None sends values as they are (the default msgpack serializer: the
    frame's encoding is the value's encoding, so nothing is encoded twice).
    """
    # An entry replaced or deleted since the walk took it is still sent: the receiver
    # merges by version and holds the delete's tombstone, so it costs nothing, and
    # checking each entry against the table would double the donor's work.
    live = [e for e in entries if e > wall]
    keys = [e.key for e in live]
    values = [e.value for e in live] if dumps is None else [dumps(e.value) for e in live]
    expires = [float(e) for e in live]
    hlcs = [e.version >> NODE_BITS for e in live]
    nodes = [e.version & NODE_MASK for e in live]
    return keys, values, expires, hlcs, nodes


def columns_from_wire(msg: DumpChunk) -> tuple[list[Key], list[Any], list[Any], list[int], int]:
    """A chunk's columns (keys, values, expires, versions, newest): the versions joined and
    checked (``joined_versions``), the values' type checked. Keys and expiries are only
    passed on, to the one check that they meet before anything is applied
    (``ReplicaView.load``: ``check_peer_entries``), not passed over twice."""
    n = len(msg.keys)
    if not len(msg.values) == len(msg.expires) == len(msg.hlcs) == len(msg.nodes) == n:
        raise ProtocolError("dump chunk columns differ in length")
    if not msg.inline and not set(map(type, msg.values)) <= {bytes}:
        raise ProtocolError("serialized dump values must be bytes")
    versions, newest = joined_versions(msg.hlcs, msg.nodes)
    return msg.keys, msg.values, msg.expires, versions, newest


def dump_stream(
    replica: ReplicaView, stream: int, wall: Callable[[], float], max_frame_size: int
) -> Iterator[tuple[Message, bytes]]:
    """The donor's side of a dump: chunks of columns, then the end, each as (message, frame).

    Taken from a walk of the entries (``replica.walk()``: no lock, no copy, no list of them
    all); the wall clock ``wall`` is read per chunk, so what expires during a long stream is
    not sent. The node writes the frames; the simulator sends the messages. What the walk
    misses of the writes made while it runs, and what it sends twice, is the catch-up's and
    the merge's (the module docstring).

    A chunk starts at ``CHUNK`` entries and is resized after each frame to aim at
    ``CHUNK_BYTES``; one that still comes out over ``max_frame_size`` is cut to a
    quarter and encoded again (one wasted encode, once per dump of large values). An
    entry too large for a frame on its own (only if a peer was configured with a larger
    ``max_value_size`` than our frames allow) is left out and logged. A chunk makes
    ``CHUNK_SLICES`` takes from the walk at most and goes out short (empty, even: a run of
    stale references) rather than hold the donor's loop.
    """
    dumps = None if replica.inline else replica.dumps
    walk = replica.walk()
    held: list[Entry] = []  # taken from the walk, not sent yet
    size, sent = CHUNK, 0
    while True:
        for _ in range(CHUNK_SLICES):
            if len(held) >= size or walk.done:
                break
            held += walk.take(size - len(held))
        if not held and walk.done:
            break
        part = held[:size]
        keys, values, expires, hlcs, nodes = dump_columns(part, dumps, wall())
        chunk = DumpChunk(replica.name, stream, keys, values, expires, hlcs, nodes, replica.inline)
        try:
            frame = encode(chunk, max_frame_size)
        except FrameTooLarge:
            if len(part) == 1:
                log.error("dump of %s: an entry does not fit a %d-byte frame; left out", replica.name, max_frame_size)
                del held[:1]
            else:
                size = max(1, len(part) // 4)
            continue
        del held[: len(part)]
        sent += len(keys)
        yield chunk, frame
        if part:  # an empty chunk says nothing of the entries' size
            size = max(1, min(CHUNK, CHUNK_BYTES * len(part) // max(1, len(frame))))
    end = DumpEnd(replica.name, stream, sent)
    yield end, encode(end, max_frame_size)


WAITING, SIZING, STREAMING, RETRYING, DONE = "waiting for peers", "asking sizes", "streaming", "retrying", "done"


@dataclass
class _Boot:
    """The boot of one cache."""

    cache: str
    started: float
    stats: BootStats
    phase: str = WAITING
    sizes: dict[int, tuple[int, bool]] = field(default_factory=dict)
    asked: set[int] = field(default_factory=set)
    sizes_due: float = 0.0
    donors: list[int] = field(default_factory=list)
    tried: set[int] = field(default_factory=set)
    finished: int = 0
    stream: int | None = None
    donor: int | None = None
    stream_due: float = 0.0  # when the donor has stalled: warm_timeout after its last chunk
    streamed: int = 0
    wait_until: float = 0.0
    retries: int = 0
    retry_at: float = 0.0
    answered: set[int] = field(default_factory=set)  # sizes actually received (a silent peer may hold data)
    stream_from: dict[int, int] = field(default_factory=dict)  # the current donor's positions (DumpFrom)
    positions: dict[int, int] = field(default_factory=dict)  # what the finished dumps hold of each stream
    had_data: bool = False  # some peer reported entries: if none delivered, the boot failed


class Booter:
    """Warm boot of every cache a member hosts (theory of operation: the module docstring).

    ``on_done(cache, stats)`` is called once per cache when its boot is over, whatever
    the outcome; the snapshot fallback runs before it.
    """

    def __init__(
        self,
        membership: Membership,
        replicas: dict[str, ReplicaView],
        *,
        on_done: Callable[[str, BootStats], None],
        has_seeds: bool,
        warm_donors: int = 1,
        boot_wait: float = 2.0,
        warm_timeout: float = 30.0,
        size_wait: float = SIZE_WAIT,
        patience: float = 5.0,
        rng: random.Random | None = None,
        positions: Callable[[str], dict[int, int]] = lambda cache: {},
    ) -> None:
        """``positions(cache)``: how far this member has received each member's stream (a dump
        we serve starts with them)."""
        self.membership = membership
        self.replicas = replicas
        self.on_done = on_done
        self.has_seeds = has_seeds
        self.warm_donors = warm_donors
        self.boot_wait = boot_wait
        self.warm_timeout = warm_timeout
        self.size_wait = size_wait
        self.patience = patience  # how long a member that gossip names may take to connect
        self.rng = rng or random.Random()
        self.positions_of = positions
        self.positions: dict[str, dict[int, int]] = {}
        """Per cache whose warm boot is over: the positions its dumps ended at (the catch-up's start)."""
        self.boots: dict[str, _Boot] = {}
        self.stats: dict[str, BootStats] = {}
        self._streams: dict[int, _Boot] = {}

    @property
    def booting(self) -> bool:
        return bool(self.boots)

    @property
    def receiving(self) -> bool:
        """A dump is streaming in (not merely waiting for sizes or a retry)."""
        return bool(self._streams)

    # -- events ------------------------------------------------------------------------

    def start(self, cache: str, now: float) -> list[Action]:
        stats = self.stats.setdefault(cache, BootStats())
        stats.state = "booting"
        self.boots[cache] = _Boot(cache, now, stats, wait_until=now + self.boot_wait)
        return self.tick(now)

    def tick(self, now: float) -> list[Action]:
        actions: list[Action] = []
        for boot in list(self.boots.values()):
            actions += self._step(boot, now)
        return actions

    def received(self, peer: int, msg: Message, now: float, wall: float) -> list[Action]:
        if isinstance(msg, SizeRequest):
            replica = self.replicas.get(msg.cache)
            warm = replica is not None and msg.cache not in self.boots
            return [Send(peer, SizeReply(msg.cache, replica.size() if replica is not None else 0, warm))]
        if isinstance(msg, DumpRequest):
            if msg.cache not in self.replicas:
                return [Send(peer, DumpEnd(msg.cache, msg.stream, 0))]
            self.stats.setdefault(msg.cache, BootStats()).dumps_served += 1
            # Positions taken before the driver's walk of the entries begins: a write made after
            # them is in the catch-up that follows the dump (and maybe in the dump: merged by
            # version), never in neither.
            start = DumpFrom(msg.cache, msg.stream, vector_to_wire(self.positions_of(msg.cache)))
            return [Send(peer, start), StreamDump(peer, msg.cache, msg.stream)]
        if isinstance(msg, DumpFrom):
            boot = self._streams.get(msg.stream)
            if boot is not None and boot.donor == peer:
                boot.stream_from = vector_from_wire(msg.positions)
            return []
        if isinstance(msg, SizeReply):
            boot = self.boots.get(msg.cache)
            if boot is not None and boot.phase == SIZING and peer in boot.asked:
                boot.sizes[peer] = (max(0, msg.entries), msg.ready)
                boot.answered.add(peer)
                return self._step(boot, now)
            return []
        if isinstance(msg, DumpChunk):
            boot = self._streams.get(msg.stream)
            if boot is None or boot.donor != peer:
                return []  # a stream we gave up on
            # A chunk we refuse (InvalidEntry) raises: the driver closes the connection, the
            # donor is down for us, and member_down moves the boot on to the next donor.
            keys, values, expires, versions, newest = columns_from_wire(msg)
            self.replicas[boot.cache].load(keys, values, expires, versions, not msg.inline, wall, newest)
            before = boot.streamed
            boot.streamed += len(keys)
            boot.stream_due = now + self.warm_timeout  # a stall timeout: a long healthy dump is not cut off
            boot.stats.entries += len(keys)  # live: stats() shows a boot's progress
            if boot.streamed // 100_000 != before // 100_000:
                log.info("warm boot of %s: %d entries so far", boot.cache, boot.streamed)
            return []
        if isinstance(msg, DumpEnd):
            boot = self._streams.get(msg.stream)
            if boot is None or boot.donor != peer:
                return []
            stream_from = boot.stream_from  # the donor's positions: _end_stream forgets them
            self._end_stream(boot)
            claimed = boot.sizes.get(peer, (0, False))[0]
            if msg.entries != boot.streamed:  # the donor's dump failed (it says -1), or chunks went missing
                log.warning("warm boot of %s: donor %016x ended its dump early; trying the next", boot.cache, peer)
            elif boot.streamed < claimed * SHORT_DUMP:
                # It claimed entries and sent (next to) none: a donor that lies, or lost its data
                # meanwhile. Either way this is no warm copy; if every donor does so, the boot
                # asks the cluster again and the member stays unready.
                log.warning(
                    "warm boot of %s: donor %016x claimed %d entries and sent %d; trying the next",
                    boot.cache,
                    peer,
                    claimed,
                    boot.streamed,
                )
            else:
                boot.finished += 1
                for origin, position in stream_from.items():
                    boot.positions[origin] = max(position, boot.positions.get(origin, 0))
            return self._step(boot, now)
        raise ProtocolError(f"unexpected {type(msg).__name__}")

    def member_down(self, peer: int, now: float, why: str = "went down mid-stream") -> list[Action]:
        actions: list[Action] = []
        for boot in list(self.boots.values()):
            if boot.donor == peer:
                log.warning("warm boot donor %016x %s; trying the next", peer, why)
                self._end_stream(boot)
                actions += self._step(boot, now)
        return actions

    def member_up(self, peer: int, now: float) -> list[Action]:
        """A member came up. If it is a donor already, its connection was replaced (both sides
        dialed, one connection kept): the request or the stream may have gone with the old one."""
        return self.member_down(peer, now, why="reconnected mid-stream")

    def snapshot_read(self, cache: str, ops: list[Op], now: float, wall: float) -> None:
        """The driver read the snapshot file (``ReadSnapshot``): apply what it held, finish."""
        boot = self.boots.get(cache)
        if boot is None:
            return
        if ops:
            self.replicas[cache].apply(ops, wall)
            boot.stats.state, boot.stats.donor = "snapshot", "snapshot file"
            boot.stats.entries = len(ops)
            boot.stats.bytes = sum(len(op[2] or b"") for op in ops)
        self._done(boot, now)

    def bytes_received(self, peer: int, count: int) -> None:
        """The driver counts what a donor sent us, framing included."""
        for boot in self.boots.values():
            if boot.donor == peer:
                boot.stats.bytes += count

    # -- the steps of one boot ---------------------------------------------------------

    def _step(self, boot: _Boot, now: float) -> list[Action]:
        if boot.phase == RETRYING:
            if now < boot.retry_at:
                return []
            boot.phase, boot.wait_until = WAITING, now + self.boot_wait
        if boot.phase == WAITING:
            fresh = [p for p in self.membership.group(boot.cache) if p not in boot.asked]
            if fresh:
                return self._ask_sizes(boot, fresh, now)
            if now >= boot.wait_until or not (self.has_seeds or boot.asked):
                return self._give_up(boot, now)
            return []
        if boot.phase == SIZING:
            if now < boot.sizes_due and not boot.asked <= set(boot.sizes):
                return []
            for peer in boot.asked:
                boot.sizes.setdefault(peer, (0, False))  # no answer: asked, not a donor
            boot.had_data = boot.had_data or any(entries for entries, _ in boot.sizes.values())
            boot.donors = [p for p in choose_donors(boot.sizes) if boot.sizes[p][0] > 0 and p not in boot.tried]
            return self._next_donor(boot, now)
        if boot.phase == STREAMING:
            if boot.stream is None:  # the last stream ended (or failed): next
                if boot.finished >= self.warm_donors:
                    boot.stats.state = "warm"
                    return self._finish(boot, now)
                return self._next_donor(boot, now)
            if now >= boot.stream_due:
                log.warning("warm boot of %s: donor %016x timed out; trying the next", boot.cache, boot.donor)
                self._end_stream(boot)
                return self._next_donor(boot, now)
        return []

    def _ask_sizes(self, boot: _Boot, group: list[int], now: float) -> list[Action]:
        boot.phase = SIZING
        boot.asked.update(group)
        boot.sizes_due = now + self.size_wait
        return [Send(peer, SizeRequest(boot.cache)) for peer in group]

    def _next_donor(self, boot: _Boot, now: float) -> list[Action]:
        boot.phase = STREAMING
        group = set(self.membership.group(boot.cache))
        while boot.donors:
            donor = boot.donors.pop(0)
            if donor not in group:
                continue
            boot.tried.add(donor)
            boot.stats.donors_tried += 1
            boot.stats.donor = f"{donor:016x}"
            boot.stream = self.rng.getrandbits(62)
            boot.donor = donor
            boot.streamed = 0  # what this stream brought, checked against its end
            boot.stream_due = now + self.warm_timeout
            self._streams[boot.stream] = boot
            return [Send(donor, DumpRequest(boot.cache, boot.stream))]
        if boot.finished:
            boot.stats.state = "warm"
            return self._finish(boot, now)
        # Every donor of this round is done or failed. Peers come up one by one, so the first
        # round may have known only the first seed: wait for (and ask) those still coming, as
        # long as membership knows of some (a donor killed mid-stream, say, before we met the next).
        boot.phase = WAITING
        boot.wait_until = now + (self.boot_wait if self.membership.unmet(now, self.patience) else 0.0)
        return self._step(boot, now)

    def _give_up(self, boot: _Boot, now: float) -> list[Action]:
        if not boot.asked:
            boot.stats.state = "no peers"
        elif not boot.had_data and boot.asked <= boot.answered:
            boot.stats.state = "peers empty"
        else:
            # Peers hold data and none could give it: this boot failed. A member that said
            # ready now would serve misses for everything; it asks again, and stays unready.
            # (Once those peers are down for good, it has "no peers" and is ready.)
            boot.retries += 1
            delay = min(RETRY * 2 ** (boot.retries - 1), 30.0)
            boot.phase, boot.retry_at = RETRYING, now + delay
            boot.asked.clear()
            boot.sizes.clear()
            boot.tried.clear()
            boot.answered.clear()
            boot.had_data = False  # what the peers hold now decides the next attempt, not what they held
            boot.stats.state = f"retrying (every donor failed, attempt {boot.retries})"
            log.warning("warm boot of %s: every donor failed; asking again in %.0f s", boot.cache, delay)
            return []
        return self._finish(boot, now)

    def _end_stream(self, boot: _Boot) -> None:
        if boot.stream is not None:
            self._streams.pop(boot.stream, None)
        boot.stream = boot.donor = None
        boot.stream_from = {}

    def _finish(self, boot: _Boot, now: float) -> list[Action]:
        boot.phase = DONE
        if boot.stats.state != "warm":
            return [ReadSnapshot(boot.cache)]  # snapshot_read() finishes it
        self._done(boot, now)
        return []

    def _done(self, boot: _Boot, now: float) -> None:
        self.boots.pop(boot.cache, None)
        self.positions[boot.cache] = boot.positions
        self._end_stream(boot)
        boot.stats.seconds = round(now - boot.started, 3)
        log.info(
            "warm boot of %s: %s, %d entries (%d bytes) from %s in %.2fs",
            boot.cache,
            boot.stats.state,
            boot.stats.entries,
            boot.stats.bytes,
            boot.stats.donor,
            boot.stats.seconds,
        )
        self.on_done(boot.cache, boot.stats)
