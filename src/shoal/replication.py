"""Writes between members: the op format, its validation, and anti-entropy digests.

Theory of operation. A local write is applied at once and queued; the
dispatcher drains the queue shortly after (``outgoing``) into one ``Writes``
message per cache and batch (the ops as six columns; a ``Stream``, an array per
op, to a peer on protocol 3 or 4), broadcast to every member of the cache's
group that follows its stream (the driver encodes it once). A receiver applies each
op only if it is newer than what it holds (store.py), so duplicates, reordering
and replays are harmless.

Writes lost on the way (a dropped connection, a partition, a full outbox) are
repaired by anti-entropy. Every ``interval`` a member sends a random peer the
digests of one cache: the keyspace is split into ``BUCKETS`` buckets by a stable
hash of the key, and a bucket's digest is the sum modulo 2**64 of a 64-bit hash
of (key, version, expiry) of each live entry in it. A sum, unlike a plain XOR,
does not cancel out pairs. The peer answers with a listing (key, version) of its
entries in the buckets that differ and asks for ours; each side then pulls the
keys for which the other holds a newer version. Each side only pulls, never
pushes: a member that evicted a key on purpose does not pull it back, and an
expired entry is in no digest or listing.

A hosted cache keeps its digests as writes apply (digest.py, ``ReplicaView.digests``),
so opening or answering a round reads them instead of scanning every entry; the scan,
a slice per tick, remains for a line older than the ledger keeps (a peer's clock far
behind) and while a warm boot's entries are still being folded in. A listing of the
buckets that differ walks the entries a slice per tick (``store.Walk``, no list of them
all); a key written during it may be left out (the next round lists it) or come twice (a
listing message names each key once, so the peer's Pull does).

Tombstones are in no digest, but they are listed: a key deleted on one side and
live on the other makes its bucket differ, the deleting side lists the key with
the delete's version, and the other pulls it like a write; the answer to a pull
of a deleted key is a delete op. Without that, a delete lost to a partition would
never reach the other side, and once the tombstone was purged the old value would
even be pulled back.

Catch-up (positions.py has the theory). Anti-entropy repairs anything, but slowly
and at the cost of a scan, so the common losses are covered first by exact
catch-up. Each member numbers its writes to a cache (positions) and logs what it
received of every member's stream, bounded in bytes. A member streams its writes
only to the peers that asked (``Resume``) from the position they hold: from its log
until the peer has them all, live (one broadcast per batch) from then on. So when two
members connect, each asks the other for the writes that followed the last one it
received, and gets each missed write once. Writes of a member that is down for the
asker are asked, by the same numbers, of one peer that holds them (a relay), one
relay per origin at a time. A catch-up ends with ``Resumed``; ``complete`` false
(the log no longer held a position asked for, or a stream arrived with a gap) makes
the asker open a repair round with that peer at once. While a cache is catching up,
repair rounds of that cache wait (ours are not opened, a peer's digests are not
answered), for at most one round interval after the ask: the digests would differ by
exactly the writes on their way, and listing and pulling them too made a 1M-entry
cache send every missed write twice and converge in 30-80 s instead of 2.

Flow control. Nothing that answers a peer is built whole: a catch-up, a relay, a
pull's answer and a repair scan's listing are pending work kept per peer (one feed
per origin, a few pulls, two scans) and produced a slice at a time while the peer's
unsent bytes (``backlog``, the driver's count) are below ``max_backlog``: when the
peer asks, when its driver reports it drained (``pump``) and on every tick. A batch
of live writes for a peer over its limit is not dropped: its stream falls behind,
and its feed sends the same writes from the log as the peer drains. So the core
never hands its driver a send the driver would have to drop, and a ``Resumed``
says complete only when every write it covers was sent.

Everything here is pure: a cache is seen only through ``replica.ReplicaView``,
and time comes in as arguments (``now`` monotonic for scheduling, ``wall`` for
expiry and versions).
"""

from __future__ import annotations

import logging
import random
from collections import deque
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import compress
from operator import itemgetter, not_
from typing import Any

from .actions import Action, Broadcast, Send
from .clock import NODE_BITS, NODE_MASK, version_ms
from .digest import BUCKETS, Behind, bucket_of, horizon_of
from .digest import digests as scan_digests
from .errors import ProtocolError
from .limits import LogLimiter, spans
from .membership import Membership
from .messages import CatchUp, CaughtUp, Digest, Listing, Message, Ops, Pull, Resume, Resumed, Stream, Writes
from .positions import LIVE, MAX_ORIGINS, WriteLog, vector_from_wire, vector_to_wire
from .replica import Op, ReplicaView
from .store import CLEAR, DELETE, NEVER, WRITE, Entry, Key, Walk
from .validation import check_key_types, versions_from_wire

log = logging.getLogger("shoal")

SETTLE = 1.0
CATCHUP_LOG_BYTES = 64 * 1024 * 1024
"""The write log of each cache (positions.py) is bounded by this many bytes, keys included."""
LISTING_MAX = 20_000
"""Keys per Listing message (with their versions, well under a megabyte)."""
PULL_MAX = 10_000
"""Keys per Pull message."""
PULLS_PENDING = 8
"""Pulls one peer may have waiting for their answer here; more are refused (the round repeats)."""
MAX_SCANS_PER_PEER = 2
"""Scans a peer's digests and listings may have queued here: a digest's holds a list of every
entry, so 300 digests in a row once took a member from 104 to 566 MB. An honest peer
runs one round at a time with us; what is over the limit is dropped (a later round repairs)."""
BATCH_BYTES = 4 * 1024 * 1024
"""Bytes of values and keys per Ops frame: with ``max_value_size`` (1 MiB by default) far
below the 16 MiB frame limit, no batch of writes can grow into a frame a peer refuses."""
PUMP_BYTES = 2 * BATCH_BYTES
"""Bytes of pending answers produced for one peer in one call: a peer that drains at once
still gets its answers spread over calls, so no call holds the loop long."""
_WIRE_OP_OVERHEAD = 40  # msgpack framing of one op besides its key and value
_PULL_SLICE = 16  # keys looked up between checks of the byte budget
_MASK64 = (1 << 64) - 1
_KINDS = frozenset((WRITE, DELETE, CLEAR))
_KEY, _VALUE = itemgetter(1), itemgetter(2)


def op_to_wire(op: Op) -> tuple[Any, ...]:
    return ops_to_wire([op])[0]


def ops_to_wire(ops: Sequence[Op]) -> list[tuple[Any, ...]]:
    """Ops in their wire form as rows (``Stream``, ``Ops``), ``[kind, key, value, expiry or nil, hlc,
    node]`` each: ``ops_to_columns`` turned, with no call per op (a flush converts every write, and
    the loop shares the writers' GIL). Tuples, packed as arrays as lists are: the cyclic collector
    stops tracking a tuple of atoms the first time it sees one, where it would walk a list again in
    every collection until the frame is sent."""
    return rows_of(ops_to_columns(ops))


def rows_of(columns: list[list[Any]]) -> list[tuple[Any, ...]]:
    """Ops given as ``Writes``'s columns, as the rows of a ``Stream`` (for a peer on protocol 3 or 4)."""
    return list(zip(*columns, strict=True))


def ops_to_columns(ops: Sequence[Op]) -> list[list[Any]]:
    """Ops as ``Writes`` carries them: ``[kinds, keys, values, expires or nil, hlcs, nodes]``."""
    if not ops:
        return [[], [], [], [], [], []]
    kinds, keys, values, expires, versions = map(list, zip(*ops, strict=True))
    never, mask = NEVER, NODE_MASK
    return [
        kinds,
        keys,
        values,
        [None if exp == never else exp for exp in expires],
        [v >> NODE_BITS for v in versions],
        [v & mask for v in versions],
    ]


def ops_from_columns_wire(raw: list[Any]) -> list[Op]:
    """Read a peer's ``Writes``: six arrays of one length, checked as ``ops_from_wire`` checks rows."""
    if type(raw) is not list or len(raw) != 6 or set(map(type, raw)) != {list} or len(set(map(len, raw))) != 1:
        raise ProtocolError("writes are six arrays of one length")
    return ops_from_columns(*raw) if raw[0] else []


def keys_of(msg: Stream | Writes | Ops) -> list[Any]:
    """The keys a batch of writes names, as they came (check the batch with ``ops_of`` first)."""
    return list(msg.ops[1]) if isinstance(msg, Writes) else [op[1] for op in msg.ops]


def ops_of(msg: Stream | Writes) -> list[Op]:
    """The ops of a peer's batch of writes, whichever form it came in; ProtocolError if malformed."""
    return ops_from_columns_wire(msg.ops) if isinstance(msg, Writes) else ops_from_wire(msg.ops)


def ops_from_wire(raw: list[Any]) -> list[Op]:
    """Read a peer's ops from their wire form; anything malformed fails the whole frame.

    Checked a column at a time (C-speed passes over a batch of up to a thousand ops,
    on every receiver). Keys, expiries and versions are refused here by type; what
    their values may be is validation.py's, applied before any op of the batch is.
    """
    if not raw:
        return []
    try:
        if set(map(type, raw)) != {list}:
            raise ValueError
        kinds, keys, values, expires, hlcs, nodes = zip(*raw, strict=True)  # ValueError: not all 6 long
    except ValueError:
        raise ProtocolError("an op is a 6-item array") from None
    return ops_from_columns(kinds, keys, values, expires, hlcs, nodes)


def ops_from_columns(
    kinds: Sequence[Any],
    keys: Sequence[Any],
    values: Sequence[Any],
    expires: Sequence[Any],
    hlcs: Sequence[Any],
    nodes: Sequence[Any],
) -> list[Op]:
    """``ops_from_wire`` of ops that came as columns, as long as one another (the caller's check)."""
    if set(map(type, kinds)) != {int}:  # first: a kind that is a list is not even hashable
        raise ProtocolError("unknown op kind")
    kind_set = set(kinds)
    if not kind_set <= _KINDS:
        raise ProtocolError("unknown op kind")
    written = values if kind_set == {WRITE} else compress(values, map(WRITE.__eq__, kinds))
    if not set(map(type, written)) <= {bytes}:
        raise ProtocolError("a write carries its value as bytes")
    # A delete or a clear carries none: one that did would be logged, and relaying it (sized by
    # its value's length) would fail for every peer catching up from the log.
    if kind_set != {WRITE} and not set(map(type, compress(values, map(WRITE.__ne__, kinds)))) <= {type(None)}:
        raise ProtocolError("a delete or a clear carries no value")
    if None in expires:
        expires = tuple(NEVER if e is None else e for e in expires)
    if not set(map(type, expires)) <= {float, int}:
        raise ProtocolError("op expiry must be a number or nil")
    try:
        floats = list(map(float, expires))
    except OverflowError:  # an int past any float: out of range like 1e306, refused here by type
        raise ProtocolError("op expiry must be a number or nil") from None
    check_key_types(keys)
    return list(zip(kinds, keys, values, floats, versions_from_wire(hlcs, nodes), strict=True))


def op_size(wire_op: Sequence[Any]) -> int:
    """Roughly the bytes of one op on the wire (its value and key dominate)."""
    return _op_size(wire_op[1], wire_op[2])


def _op_size(key: Any, packed: Any) -> int:
    return _WIRE_OP_OVERHEAD + (len(packed) if packed is not None else 0) + (len(key) if type(key) is not int else 8)


def ops_size(wire_ops: Sequence[Sequence[Any]]) -> int:
    """``sum(map(op_size, wire_ops))``: ``columns_size`` of their keys and values."""
    return columns_size(list(map(_KEY, wire_ops)), list(map(_VALUE, wire_ops)))


def frame_cuts(keys: Sequence[Any], values: Sequence[Any], max_bytes: int, max_ops: int) -> Iterable[tuple[int, int]]:
    """``spans`` of the ops' sizes (``op_size``; ``keys`` and ``values`` their columns): the ops cut
    into frames. When no op can take a frame's bytes past ``max_bytes`` before its count reaches
    ``max_ops`` (the largest key and the largest value together, the usual case), the cuts are
    by count alone, with no Python step per op: a busy writer's flush holds up to ``FLUSH_MAX_OPS``."""
    n = len(keys)
    try:
        largest = _WIRE_OP_OVERHEAD + max(map(len, keys)) + max(map(len, values))
    except (TypeError, ValueError):  # a delete's None, an int key; no ops
        largest = max_bytes + 1
    if largest * max_ops <= max_bytes:
        return [(i, min(i + max_ops, n)) for i in range(0, n, max_ops)]
    return spans(map(_op_size, keys, values), max_bytes, max_ops)


def columns_size(keys: Sequence[Any], values: Sequence[Any]) -> int:
    """The bytes of ops on the wire (``op_size`` each), given their key and value columns: in
    C-level passes when every op carries a value and a str or bytes key (a run of writes, what
    a flush holds): a flush sizes every write."""
    try:
        return _WIRE_OP_OVERHEAD * len(keys) + sum(map(len, values)) + sum(map(len, keys))
    except TypeError:  # a delete's None, an int key
        return sum(map(_op_size, keys, values))


def _split(version: int) -> list[int]:
    return [version >> NODE_BITS, version & NODE_MASK]


# -- digests -------------------------------------------------------------------


def settled_ms(wall: float) -> int:
    """Wall ms of ``SETTLE`` seconds ago: the line a repair round compares entries below."""
    return int((wall - SETTLE) * 1000)


def settled_before(wall: float) -> int:
    """The version of ``SETTLE`` seconds ago: newer writes are still in flight.

    Digests and listings leave them out, so a round run while writes stream does
    not see every bucket differ and list thousands of keys that live replication
    is delivering anyway; a write really lost is repaired a round later.
    """
    return horizon_of(settled_ms(wall))


def digests(entries: Iterable[Entry], wall: float, horizon: int | None = None) -> list[int]:
    """Per-bucket digests of the live, settled entries, by a scan (digest.py has the hash;
    a hosted cache keeps the same numbers as writes apply, ``ReplicaView.digests``)."""
    return scan_digests(entries, wall, settled_before(wall) if horizon is None else horizon)


def differing(mine: list[int], theirs: list[Any]) -> list[int]:
    if len(theirs) != BUCKETS or any(type(d) is not int for d in theirs):
        raise ProtocolError(f"a digest has {BUCKETS} ints")
    return [b for b in range(BUCKETS) if mine[b] != theirs[b]]


def listing(entries: Iterable[Entry], buckets: Iterable[int], wall: float, horizon: int | None = None) -> list[Any]:
    """Flattened [key, hlc, node, ...] of live entries in the given buckets."""
    wanted = set(buckets)
    flat: list[Any] = []
    if horizon is None:
        horizon = settled_before(wall)
    for entry in entries:
        if entry > wall and entry.version < horizon and bucket_of(entry.key) in wanted:
            flat += (entry.key, entry.version >> NODE_BITS, entry.version & NODE_MASK)
    return flat


def _each_key_once(flat: list[Any]) -> list[Any]:
    """A listing's triples with each key once (its first): a walk may yield a key twice, and the
    peer pulls the keys of one listing in one Pull, which must name each key once."""
    keys = flat[0::3]
    if len(set(keys)) == len(keys):
        return flat
    seen: set[Key] = set()
    once: list[Any] = []
    for i in range(0, len(flat), 3):
        if flat[i] not in seen:
            seen.add(flat[i])
            once += flat[i : i + 3]
    return once


def _check_listing(msg: Listing) -> None:
    """Bounds of a peer's listing, checked before any work: each bucket once, keys in triples."""
    buckets = msg.buckets
    if len(buckets) > BUCKETS or any(type(b) is not int or not 0 <= b < BUCKETS for b in buckets):
        raise ProtocolError("a listing names buckets that do not exist")
    if len(set(buckets)) != len(buckets):
        raise ProtocolError("a listing names each bucket once")
    if len(msg.entries) > 3 * LISTING_MAX:
        raise ProtocolError(f"a listing holds at most {LISTING_MAX} keys")


def tombstone_listing(tombstones: Iterable[tuple[Key, int]], buckets: Iterable[int]) -> list[Any]:
    """Flattened [key, hlc, node, ...] of the tombstones in the given buckets (see the module docstring)."""
    wanted = set(buckets)
    flat: list[Any] = []
    for key, version in tombstones:
        if bucket_of(key) in wanted:
            flat += (key, version >> NODE_BITS, version & NODE_MASK)
    return flat


def to_pull(replica: ReplicaView, flat: list[Any]) -> list[Key]:
    """Keys of a peer's listing for which the peer holds something newer than we know of.

    A key we evicted on purpose is not pulled back unless the peer's version is
    newer than the one we evicted.
    """
    if len(flat) % 3:
        raise ProtocolError("a listing is [key, hlc, node] triples")
    check_key_types(flat[0::3])
    keys: list[Key] = []
    for i in range(0, len(flat), 3):
        key, hlc, node = flat[i], flat[i + 1], flat[i + 2]
        if type(hlc) is not int or type(node) is not int:
            raise ProtocolError("malformed listing entry")
        version = (hlc << NODE_BITS) | node
        if replica.wants(key, version):
            keys.append(key)
    return keys


# -- the state machine ---------------------------------------------------------


def new_figures() -> dict[str, Any]:
    return {
        "ops_sent": 0,
        "ops_received": 0,
        "ops_applied": 0,
        "ops_ignored": 0,
        "ops_dropped": 0,
        "ops_deferred": 0,
        "ops_duplicate": 0,
        "repair_rounds": 0,
        "keys_repaired": 0,
        "last_repair_at": None,  # wall seconds when the last repair round opened, and with whom
        "last_repair_peer": None,
        "catchup_ops_sent": 0,
        "catchups_incomplete": 0,
        "last_lag_ms": None,
    }


@dataclass
class _Feed:
    """A catch-up of one origin's writes to one peer, sent from the log a batch at a time.

    The feed of our own stream to a peer lives as long as the peer's subscription: when its
    cursor reaches the end of our log the peer is live (flushes broadcast to it); when a flush
    finds the peer over its backlog, the feed takes over again from where it fell behind.
    """

    cache: str
    origin: int
    cursor: int
    live: bool  # our own stream: live once caught up (a relay ends there instead)
    report: bool = True  # asked for by a Resume: end with a Resumed
    complete: bool = True  # false once the log no longer held a position this feed had to send
    queued: bool = False  # in the peer's work queue now


@dataclass
class _PullAnswer:
    """A peer's Pull, answered a slice of keys at a time."""

    cache: str
    keys: list[Key]
    pos: int = 0


@dataclass
class _Scan:
    """A pass over one cache's entries, done a slice per tick so no tick runs long."""

    cache: str
    peer: int
    round: int
    then: str  # what to send when the pass is done: "digest", "listing" or "answer"
    entries: list[Entry]  # a digest's pass: every entry, as the round began
    walk: Walk | None = None  # a listing's: the entries a slice at a time (its pos counts tombstones)
    buckets: list[int] = field(default_factory=list)
    theirs: list[Any] = field(default_factory=list)
    reply: bool = False
    pos: int = 0
    sums: list[int] = field(default_factory=lambda: [0] * BUCKETS)
    flat: list[Any] = field(default_factory=list)
    tombs: list[tuple[Key, int]] = field(default_factory=list)  # a listing walks these after the entries
    settled_ms: int = 0  # the round's line (see ``Digest.settled_ms``), the same for both sides


def _their_line(ms: Any, wall: float) -> int:
    """A peer's ``settled_ms``, never past our own clock (a line from the future would take in
    writes still in flight here, and nothing more)."""
    if type(ms) is not int or ms < 0:
        raise ProtocolError("settled_ms is a time in ms")
    return min(ms, int(wall * 1000))


class Replicator:
    """Outgoing batches, incoming ops, catch-ups and anti-entropy rounds for every hosted cache.

    Feed it local writes (``outgoing``), peers' messages (``received``), drained peers
    (``pump``) and time (``tick``); it returns actions. Caches are the ``replicas``
    mapping the dispatcher shares with warm boot (one registry of hosted caches);
    ``backlog(peer)`` is the driver's count of bytes queued to a peer and not yet sent.
    """

    def __init__(
        self,
        membership: Membership,
        replicas: Mapping[str, ReplicaView],
        *,
        interval: float = 5.0,
        rng: random.Random | None = None,
        slice_size: int = 4000,
        batch: int = 1000,
        log_bytes: int = CATCHUP_LOG_BYTES,
        max_backlog: int = 64 * 1024 * 1024,
        backlog: Callable[[int], int] = lambda peer: 0,
    ) -> None:
        self.membership = membership
        self.node_id = membership.node_id
        self.replicas = replicas
        self.interval = interval
        self.rng = rng or random.Random()
        self.slice_size = slice_size
        self.batch = batch
        self.batch_bytes = BATCH_BYTES
        self.log_bytes = log_bytes
        self.max_backlog = max_backlog
        self.backlog = backlog
        self.figures: dict[str, dict[str, Any]] = {}
        self.logs: dict[str, WriteLog] = {}
        self.follows: dict[str, dict[int, _Feed]] = {}  # cache -> peer -> the feed of our own stream
        self.relays: dict[tuple[int, str, int], _Feed] = {}  # (peer, cache, origin) -> a relay feed
        self.work: dict[int, deque[_Feed | _PullAnswer]] = {}  # answers pending per peer, oldest first
        self.catching_up: dict[tuple[str, int], tuple[int, float]] = {}  # (cache, origin) -> (asked, when)
        self.needs_repair: set[int] = set()
        self.dumping_to: Container[int] = ()  # peers a dump of ours streams to (the dispatcher's count)
        # Caches whose warm boot is over: only they catch up and take part in repair rounds
        # (a booting cache is incomplete by design; its dump's positions say where to start).
        self.settled: set[str] = set()
        self._due: set[str] = set()  # caches just settled: ask every peer to resume
        self._live_from: dict[tuple[str, int], int] = {}  # while booting: where each live stream began
        self._resume_at: dict[tuple[str, int], int] = {}  # booted: where the dump ended, before a live stream
        self._flushing: dict[int, int] = {}  # bytes a flush adds per peer, before the driver writes any
        self._scans: deque[_Scan] = deque()
        self._next_round: float | None = None
        self._round = 0
        self._opened: deque[int] = deque(maxlen=64)  # rounds we opened, recent ones
        self._scan_errors = LogLimiter(log, burst=5, interval=60.0)  # this member's, on the time it is given
        self._refusals = LogLimiter(log, burst=5, interval=60.0)

    def figures_of(self, cache: str) -> dict[str, Any]:
        figures = self.figures.get(cache)
        if figures is None:
            figures = self.figures[cache] = new_figures()
        return figures

    @property
    def busy(self) -> bool:
        """True while a scan that may go on is in progress: tick again soon."""
        return any(self._room(scan.peer) > 0 for scan in self._scans)

    def _room(self, peer: int) -> int:
        return self.max_backlog - self.backlog(peer)

    # -- outgoing --------------------------------------------------------------

    def outgoing(self, name: str, ops: list[Op], wall: float) -> list[Broadcast]:
        """Local writes of one cache: logged at their positions, and broadcast to every peer whose
        stream is live and has room; a peer over its backlog falls behind, and its feed sends
        them from the log as it drains."""
        if not ops:
            return []
        log_ = self._log(name)
        first = log_.end(self.node_id)
        log_.add(self.node_id, first, ops)
        follows = self.follows.get(name)
        if not follows:
            return []
        backlog = self.backlog
        figures = self.figures_of(name)
        columns = ops_to_columns(ops)
        keys, values, n = columns[1], columns[2], len(ops)
        rows: list[tuple[Any, ...]] | None = None  # for a peer on a protocol before columns, if one follows
        actions: list[Broadcast] = []
        queued = self._flushing
        total = columns_size(keys, values)
        if total <= self.batch_bytes and n <= self.batch:
            cuts: Iterable[tuple[int, int]] = [(0, n)]  # one frame, the common case
        else:
            cuts = frame_cuts(keys, values, self.batch_bytes, self.batch)
        for i, j in cuts:
            size = total if j - i == n else columns_size(keys[i:j], values[i:j])
            peers: list[int] = []
            for peer, feed in follows.items():
                if feed.queued or feed.cursor != first + i:
                    continue  # behind: its feed sends these from the log
                if backlog(peer) + queued.get(peer, 0) > self.max_backlog:
                    figures["ops_deferred"] += len(ops) - i
                    self._enqueue(peer, feed)
                    continue
                feed.cursor = first + j
                queued[peer] = queued.get(peer, 0) + size
                peers.append(peer)
            if peers:
                by_columns = [self._columns(peer) for peer in peers]
                if any(by_columns):
                    batch = columns if j - i == n else [column[i:j] for column in columns]
                    to = tuple(compress(peers, by_columns))
                    actions.append(Broadcast(to, Writes(name, self.node_id, first + i, batch)))
                if not all(by_columns):
                    rows = rows_of(columns) if rows is None else rows
                    to = tuple(compress(peers, map(not_, by_columns)))
                    actions.append(Broadcast(to, Stream(name, self.node_id, first + i, rows[i:j])))
                figures["ops_sent"] += (j - i) * len(peers)
        return actions

    def _columns(self, peer: int) -> bool:
        """Does ``peer`` take a stream's writes as columns (``Writes``, protocol 5)?"""
        return self.membership.speaks(peer, "columns")

    def flushed(self) -> None:
        """A flush is over: the driver has queued its broadcasts (``backlog`` counts them now)."""
        self._flushing.clear()

    # -- incoming --------------------------------------------------------------

    def received(self, peer: int, msg: Message, now: float, wall: float) -> list[Action]:
        if isinstance(msg, (Stream, Writes)):
            self._stream(peer, msg, now, wall)
            return []
        if isinstance(msg, Ops):  # the answer to a Pull
            self.apply(msg.cache, ops_from_wire(msg.ops), wall)
            return []
        if isinstance(msg, Resume):
            return self._resume(peer, msg, now, wall)
        if isinstance(msg, Resumed):
            self._resumed(peer, msg, now)
            return []
        if isinstance(msg, CatchUp):  # a time window (the previous protocol): digests instead
            return [Send(peer, CaughtUp(msg.cache, False))]
        if isinstance(msg, CaughtUp):
            return []
        replica = self.replicas.get(getattr(msg, "cache", ""))
        if replica is None:
            return []  # a cache we do not host
        if msg.cache not in self.settled:  # type: ignore[attr-defined]
            return []
        if isinstance(msg, Digest) and (len(msg.digests) != BUCKETS or any(type(d) is not int for d in msg.digests)):
            raise ProtocolError(f"a digest has {BUCKETS} ints")
        if isinstance(msg, Listing):
            _check_listing(msg)
        if isinstance(msg, (Digest, Listing)):
            self._catch_up_clear(msg.cache, replica, msg.watermark, wall)
        wants_scan = isinstance(msg, Digest) or (isinstance(msg, Listing) and msg.reply)
        if wants_scan and self._queued_scans(peer) >= MAX_SCANS_PER_PEER:
            log.debug("%016x has %d repair scans queued here: dropping another", peer, MAX_SCANS_PER_PEER)
            return []
        if isinstance(msg, Digest) and self._catching_up(msg.cache, now):
            log.debug("repair round %d of %s from %016x: still catching up, not answered", msg.round, msg.cache, peer)
            return []
        if isinstance(msg, Digest):
            line = _their_line(msg.settled_ms, wall)
            try:
                sums = self._kept_digests(replica, wall, line)
            except Behind:
                log.debug("repair round %d of %s from %016x: digests still folding", msg.round, msg.cache, peer)
                return []
            if sums is not None:  # kept as writes applied: no scan, straight to the listing (if any)
                buckets = differing(sums, msg.digests)
                if buckets:
                    self._list(replica, peer, msg.round, buckets, line, reply=True, first=False)
                return self._advance(wall)
            scan = _Scan(msg.cache, peer, msg.round, "answer", replica.entries(), theirs=msg.digests)
            scan.settled_ms = line
            self._scans.append(scan)
            return self._advance(wall)
        if isinstance(msg, Listing):
            actions: list[Action] = []
            wanted = to_pull(replica, msg.entries)
            log.log(
                logging.INFO if wanted else logging.DEBUG,
                "repair round %d of %s with %016x: %d buckets differ, pulling %d keys",
                msg.round,
                msg.cache,
                peer,
                len(msg.buckets),
                len(wanted),
            )
            if wanted:
                self.figures_of(msg.cache)["keys_repaired"] += len(wanted)
                pulls = [wanted[i : i + PULL_MAX] for i in range(0, len(wanted), PULL_MAX)]
                actions += [Send(peer, Pull(msg.cache, keys)) for keys in pulls]
                if msg.round in self._opened:  # our round found real differences: another at once, until in sync
                    self.needs_repair.add(peer)
                    self._next_round = now
            if msg.reply:
                self._list(replica, peer, msg.round, msg.buckets, _their_line(msg.settled_ms, wall), reply=False)
                actions += self._advance(wall)
            return actions
        if isinstance(msg, Pull):
            check_key_types(msg.keys)
            if len(msg.keys) > PULL_MAX:
                raise ProtocolError(f"a pull names at most {PULL_MAX} keys")
            if len(set(msg.keys)) != len(msg.keys):
                raise ProtocolError("a pull names each key once")
            pending = self.work.get(peer, ())
            if sum(1 for job in pending if isinstance(job, _PullAnswer)) >= PULLS_PENDING:
                self._refusals.log(
                    logging.WARNING,
                    "%016x has %d pulls unanswered here: refusing another",
                    peer,
                    PULLS_PENDING,
                    now=wall,
                )
                return []  # its repair round asks again
            self.work.setdefault(peer, deque()).append(_PullAnswer(msg.cache, msg.keys))
            return self.pump(peer, wall)
        raise ProtocolError(f"unexpected {type(msg).__name__}")

    # -- catch-up ----------------------------------------------------------------

    def member_up(self, peer: int, now: float) -> list[Action]:
        """A connection to ``peer`` is up: ask it to resume its stream of every settled cache (a
        cache still booting takes its writes live from now: its dump brings the older ones).

        Asks made of ``peer`` before are asked again: they went out on a connection that is
        gone or being replaced (two members that dial each other keep one connection, and a
        Resume on the other one may never be read), and an ask of the same positions twice
        costs nothing (the second takes the first's place)."""
        self._forget_asks(peer)
        actions: list[Action] = [self._ask(name, peer, now) for name in self.replicas if self._asks(name, peer)]
        actions += [Send(peer, Resume(name, [peer, LIVE])) for name in self.replicas if name not in self.settled]
        return actions

    def hosting(self, cache: str) -> list[Action]:
        """A cache starts booting: its writes from every peer up, live from now."""
        return [Send(peer, Resume(cache, [peer, LIVE])) for peer in self.membership.up_peers()]

    def settle(self, cache: str, positions: Mapping[int, int]) -> None:
        """The boot of ``cache`` is over, with what it holds of each origin's stream (a dump's
        positions): from now it catches up, from there (``due`` asks every peer)."""
        log_ = self._log(cache)
        for origin, position in positions.items():
            if origin != self.node_id:
                log_.advance(origin, position)
        for (name, origin), live_from in list(self._live_from.items()):
            if name == cache:
                del self._live_from[(name, origin)]
                if positions.get(origin, 0) < live_from:  # writes between the dump and the live stream:
                    self._resume_at[(cache, origin)] = positions.get(origin, 0)  # from the dump's end
        self.settled.add(cache)
        self._due.add(cache)

    def due(self, now: float) -> list[Action]:
        """Catch-ups of caches that settled since the last call, from every peer up."""
        actions: list[Action] = []
        for name in sorted(self._due):
            if name in self.replicas:
                actions += [self._ask(name, peer, now) for peer in self.membership.up_peers() if self._asks(name, peer)]
        self._due.clear()
        return actions

    def _asks(self, cache: str, peer: int) -> bool:
        """A settled cache whose stream from ``peer`` is not asked for already (on this connection)."""
        asked = self.catching_up.get((cache, peer))
        return cache in self.settled and (asked is None or asked[0] != peer)

    def _ask(self, cache: str, peer: int, now: float) -> Send:
        """A Resume for ``peer``'s stream from where we are, and for the streams of origins that
        are down for us and asked of no one else (relays), each once."""
        log_ = self._log(cache)
        up = set(self.membership.up_peers())
        at = self._resume_at.pop((cache, peer), None)
        positions = {peer: log_.end(peer) if at is None else at}
        for origin, end in log_.vector().items():
            if len(positions) >= MAX_ORIGINS:
                break
            if origin not in up and origin != self.node_id and origin != peer:
                asked = self.catching_up.get((cache, origin))
                if asked is None or asked[0] not in up:
                    positions[origin] = end
        for origin in positions:
            self.catching_up[(cache, origin)] = (peer, now)
        return Send(peer, Resume(cache, vector_to_wire(positions)))

    def _resume(self, peer: int, msg: Resume, now: float, wall: float) -> list[Action]:
        positions = vector_from_wire(msg.positions)
        if msg.cache not in self.replicas:  # not hosted here: nothing to send, nothing missed
            return [Send(peer, Resumed(msg.cache, o, max(p, 0), True)) for o, p in positions.items()]
        log_ = self._log(msg.cache)
        for origin, position in positions.items():
            if origin == self.node_id:
                if position == LIVE:
                    position = log_.end(origin)
                if position > log_.end(origin):
                    raise ProtocolError("a resume asks for positions past the end of our stream")
                follows = self.follows.setdefault(msg.cache, {})
                feed = follows.get(peer)
                if feed is None:
                    feed = follows[peer] = _Feed(msg.cache, origin, position, live=True)
                feed.cursor, feed.report, feed.complete = position, True, True
            elif position == LIVE:
                raise ProtocolError("only our own stream starts live")
            else:  # a relay: a second ask for the same origin takes the place of the first
                key = (peer, msg.cache, origin)
                feed = self.relays.get(key) or _Feed(msg.cache, origin, position, live=False)
                self.relays[key] = feed
                feed.cursor, feed.report, feed.complete = position, True, True
            self._enqueue(peer, feed)
        actions = self.pump(peer, wall)
        # Our stream asked for live: the peer hosts the cache from now on (it started to, or it
        # boots it). Ask for its stream too, even if asked already: an ask made before it hosted
        # the cache found no stream there, and its writes would reach us only by a repair round
        # (an ask of the same positions twice costs nothing). An ask is never live, so two
        # members do not ask each other back and forth.
        if positions.get(self.node_id) == LIVE and msg.cache in self.settled:
            actions.append(self._ask(msg.cache, peer, now))
        return actions

    def _resumed(self, peer: int, msg: Resumed, now: float) -> None:
        key = (msg.cache, msg.origin)
        asked = self.catching_up.get(key)
        if asked is not None and asked[0] == peer:
            del self.catching_up[key]
            if self.needs_repair and not self._catching_up(msg.cache, now):
                self._next_round = now  # a round put off by this catch-up: now
        if not msg.complete:
            log.info(
                "catch-up of %s from %016x: its log did not hold every write asked for; comparing digests",
                msg.cache,
                peer,
            )
            self.figures_of(msg.cache)["catchups_incomplete"] += 1
            self.needs_repair.add(peer)
            self._next_round = now  # now, not in a full interval

    def _stream(self, peer: int, msg: Stream | Writes, now: float, wall: float) -> None:
        if type(msg.origin) is not int or not 0 <= msg.origin <= _MASK64 or msg.start < 0:
            raise ProtocolError("a stream names its origin by id and starts at a position")
        ops = ops_of(msg)
        if msg.cache not in self.replicas:
            return
        log_ = self._log(msg.cache)
        seen = log_.end(msg.origin) - msg.start
        if seen > 0:
            self.figures_of(msg.cache)["ops_duplicate"] += min(seen, len(ops))
        # All of them: positions say what is news to the log, versions what is news to the cache
        # (a stream that lost its order is still applied whole). Raises for ops the member refuses.
        self.apply(msg.cache, ops, wall)
        if msg.cache not in self.settled:  # booting: the live stream starts where it starts
            _, gap = log_.add(msg.origin, msg.start, ops)
            if gap:  # the dump must reach this far, or the catch-up starts where the dump ends
                self._live_from[(msg.cache, msg.origin)] = msg.start
            return
        _, gap = log_.add(msg.origin, msg.start, ops)
        if gap:  # writes of this origin went missing on the way: compare digests with the sender
            log.info("stream of %s from %016x skipped writes of %016x; comparing digests", msg.cache, peer, msg.origin)
            self.figures_of(msg.cache)["catchups_incomplete"] += 1
            self.needs_repair.add(peer)
            self._next_round = now
        if len(log_.origins) > MAX_ORIGINS:
            log_.forget([self.node_id, *self.membership.up_peers()])

    def member_down(self, peer: int) -> None:
        for follows in self.follows.values():
            follows.pop(peer, None)
        for key in [k for k in self.relays if k[0] == peer]:
            del self.relays[key]
        self.work.pop(peer, None)
        self._forget_asks(peer)
        if any(scan.peer == peer for scan in self._scans):
            self._scans = deque(scan for scan in self._scans if scan.peer != peer)

    def _catching_up(self, cache: str, now: float) -> bool:
        """Writes of ``cache`` missed while apart are on their way (asked for less than a round
        interval ago, so a peer that never ends its catch-up delays repair by one round at most)."""
        return any(name == cache and now - asked < self.interval for (name, _), (_, asked) in self.catching_up.items())

    def _forget_asks(self, peer: int) -> None:
        """Catch-ups asked of ``peer``: over (it is down) or to be asked again (a new connection)."""
        for caught in [k for k, (asked, _) in self.catching_up.items() if asked == peer]:
            del self.catching_up[caught]

    def waiting_for(self, now: float, patience: float) -> list[tuple[str, int]]:
        """Catch-ups (cache, origin) asked for less than ``patience`` ago and not over yet."""
        return [key for key, (_, asked) in self.catching_up.items() if now - asked < patience]

    def positions(self, cache: str) -> dict[int, int]:
        """How far this member has received each origin's stream of ``cache`` (a dump carries it)."""
        log_ = self.logs.get(cache)
        return log_.vector() if log_ is not None else {}

    def _log(self, name: str) -> WriteLog:
        found = self.logs.get(name)
        if found is None:
            found = self.logs[name] = WriteLog(self.log_bytes)
        return found

    # -- answers, as the peer drains ---------------------------------------------------

    def _enqueue(self, peer: int, job: _Feed) -> None:
        if not job.queued:
            job.queued = True
            self.work.setdefault(peer, deque()).append(job)

    def pump(self, peer: int, wall: float) -> list[Action]:
        """The next slices of ``peer``'s pending answers, as far as its backlog has room
        (and at most ``PUMP_BYTES``); the rest waits for the next call."""
        jobs = self.work.get(peer)
        if not jobs:
            return []
        room = min(self._room(peer), PUMP_BYTES)
        actions: list[Action] = []
        while jobs and room > 0:
            job = jobs[0]
            if isinstance(job, _Feed):
                sent, done = self._feed(peer, job, room, actions)
            else:
                sent, done = self._pull(peer, job, room, wall, actions)
            room -= sent
            if done:
                jobs.popleft()
                if isinstance(job, _Feed):
                    job.queued = False
        if not jobs:
            self.work.pop(peer, None)
        return actions

    def pump_all(self, wall: float) -> list[Action]:
        actions: list[Action] = []
        for peer in list(self.work):
            actions += self.pump(peer, wall)
        return actions

    def _feed(self, peer: int, feed: _Feed, room: int, out: list[Action]) -> tuple[int, bool]:
        """One batch of a feed (bytes sent, whether it is over)."""
        log_ = self.logs.get(feed.cache)
        end = log_.end(feed.origin) if log_ is not None else feed.cursor
        sent = 0
        if log_ is not None and feed.cursor < end:
            start, ops = log_.read(feed.origin, feed.cursor, min(room, self.batch_bytes), self.batch)
            figures = self.figures_of(feed.cache)
            if start > feed.cursor:  # the log no longer holds these: the peer compares digests
                figures["ops_dropped"] += start - feed.cursor
                feed.complete = False
            feed.cursor = start + len(ops)
            if ops:
                columns = ops_to_columns(ops)
                sent = columns_size(columns[1], columns[2])
                if self._columns(peer):
                    out.append(Send(peer, Writes(feed.cache, feed.origin, start, columns)))
                else:
                    out.append(Send(peer, Stream(feed.cache, feed.origin, start, rows_of(columns))))
                figures["catchup_ops_sent"] += len(ops)
                figures["ops_sent"] += len(ops)
        if feed.cursor < end:
            return sent, False
        if feed.report or not feed.complete:
            out.append(Send(peer, Resumed(feed.cache, feed.origin, feed.cursor, feed.complete)))
            if not feed.complete:
                log.info("catch-up of %s for %016x: the log no longer held every write", feed.cache, peer)
        feed.report, feed.complete = False, True
        if not feed.live:
            self.relays.pop((peer, feed.cache, feed.origin), None)
        return sent, True

    def _pull(self, peer: int, job: _PullAnswer, room: int, wall: float, out: list[Action]) -> tuple[int, bool]:
        """One Ops batch of a Pull's answer (bytes sent, whether it is over)."""
        replica = self.replicas.get(job.cache)
        if replica is None:
            return 0, True
        wire: list[Any] = []
        size = 0
        budget = min(room, self.batch_bytes)
        while job.pos < len(job.keys) and size < budget and len(wire) < self.batch:
            more = ops_to_wire(replica.ops_for(job.keys[job.pos : job.pos + _PULL_SLICE], wall))
            job.pos += _PULL_SLICE
            size += ops_size(more)
            wire += more
        if wire:
            out.append(Send(peer, Ops(job.cache, wire)))
        return max(size, 1), job.pos >= len(job.keys)

    def _queued_scans(self, peer: int) -> int:
        return sum(1 for scan in self._scans if scan.peer == peer and scan.then != "digest")

    def _catch_up_clear(self, name: str, replica: ReplicaView, mark: list[Any], wall: float) -> None:
        """A peer cleared the cache after we last did: apply its clear (lost on the way)."""
        if len(mark) != 2:
            raise ProtocolError("a watermark is [hlc, node]")
        (version,) = versions_from_wire(mark[:1], mark[1:])
        if version > replica.watermark():
            self.apply(name, [(CLEAR, b"", None, NEVER, version)], wall)

    def apply(self, name: str, ops: list[Op], wall: float) -> tuple[int, int]:
        replica = self.replicas.get(name)
        if replica is None:
            return 0, 0
        applied, ignored = replica.apply(ops, wall)
        figures = self.figures_of(name)
        figures["ops_received"] += len(ops)
        figures["ops_applied"] += applied
        figures["ops_ignored"] += ignored
        if ops:
            figures["last_lag_ms"] = max(0, int(wall * 1000) - version_ms(ops[-1][4]))
        return applied, ignored

    # -- time ------------------------------------------------------------------

    def tick(self, now: float, wall: float) -> list[Action]:
        """Start a repair round when one is due; advance scans in progress."""
        if self._next_round is None:
            self._next_round = now + self.interval * self.rng.uniform(0.5, 1.0)
        if now >= self._next_round:
            self._next_round = now + self.interval * self.rng.uniform(0.75, 1.25)
            return self._open_rounds(now, wall) + self._advance(wall) + self.pump_all(wall)
        return self._advance(wall) + self.pump_all(wall)

    def _open_rounds(self, now: float, wall: float) -> list[Action]:
        actions: list[Action] = []
        for name, replica in self.replicas.items():
            group = self.membership.group(name)
            if self.dumping_to:  # mid-boot, it drops digests: no scan of every entry for it, beside the dump
                group = [p for p in group if p not in self.dumping_to]
            if not group or name not in self.settled or self._catching_up(name, now):
                continue
            urgent = [p for p in group if p in self.needs_repair]
            peer = urgent[0] if urgent else self.rng.choice(group)
            line = settled_ms(wall)
            try:
                sums = self._kept_digests(replica, wall, line) if self._room(peer) > 0 else None
            except Behind:
                continue  # the next round: by then the tick has folded the writes
            self.needs_repair.discard(peer)
            self._round += 1
            self._opened.append(self._round)
            figures = self.figures_of(name)
            figures["repair_rounds"] += 1
            figures["last_repair_at"], figures["last_repair_peer"] = wall, f"{peer:016x}"
            if sums is not None:
                actions.append(Send(peer, Digest(name, self._round, sums, _split(replica.watermark()), line)))
                continue
            scan = _Scan(name, peer, self._round, "digest", replica.entries(), settled_ms=line)
            self._scans.append(scan)
        return actions

    def _kept_digests(self, replica: ReplicaView, wall: float, line: int) -> list[int] | None:
        """The cache's digests below ``line`` as its ledger keeps them (digest.py), or None: scan.
        ``Behind``: the ledger is still folding a burst; wait rather than scan."""
        try:
            return replica.digests(wall, horizon_of(line))
        except Behind:
            raise
        except Exception:
            self._scan_errors.log(
                logging.ERROR, "digests of %s failed; scanning", replica.name, now=wall, exc_info=True
            )
            return None

    def _list(
        self,
        replica: ReplicaView,
        peer: int,
        round_: int,
        buckets: list[int],
        line: int,
        reply: bool,
        first: bool = False,
    ) -> None:
        """Queue the listing of ``buckets`` for ``peer``: a scan in slices, entries then tombstones.
        The entries are walked (``store.Walk``), not listed whole on the loop: a key written during
        the scan may be left out (the next round lists it) or come twice (each message names it once)."""
        scan = _Scan(replica.name, peer, round_, "listing", [], replica.walk(), buckets=buckets, reply=reply)
        scan.tombs = replica.tombstones()
        scan.settled_ms = line
        if first:
            self._scans.appendleft(scan)
        else:
            self._scans.append(scan)

    def _advance(self, wall: float) -> list[Action]:
        """One slice of the oldest scan whose peer has room for what it sends; its message once
        it is complete. A peer that does not read holds back its own scans, not the others'."""
        for i, scan in enumerate(self._scans):
            if self._room(scan.peer) > 0:
                self._scans.rotate(-i)  # to the front: the scan steps below work on the first
                break
        else:
            return []
        replica = self.replicas.get(scan.cache)
        if replica is None:
            self._scans.popleft()
            return []
        try:
            return self._advance_scan(scan, replica, wall)
        except Exception:
            # Our own entries broke the scan, not the peer: drop this round (the next one
            # starts afresh) rather than fail the tick or the peer's connection every time.
            self._scans.popleft()
            self._scan_errors.log(
                logging.ERROR, "repair scan of %s failed; round dropped", scan.cache, now=wall, exc_info=True
            )
            return []

    def _advance_scan(self, scan: _Scan, replica: ReplicaView, wall: float) -> list[Action]:
        horizon = horizon_of(scan.settled_ms)
        out: list[Action] = []
        walk = scan.walk
        if walk is not None:  # a listing
            if not walk.done:
                scan.flat += listing(walk.take(self.slice_size), scan.buckets, wall, horizon)
            else:  # the entries are done: then the tombstones, a slice at a time too
                tombs = scan.tombs[scan.pos : scan.pos + self.slice_size]
                scan.flat += tombstone_listing(tombs, scan.buckets)
                scan.pos += len(tombs)
            step = 3 * LISTING_MAX
            while len(scan.flat) >= step:  # a full part goes now: a large listing is spread over the scan
                part_flat, scan.flat = scan.flat[:step], scan.flat[step:]
                mark = _split(replica.watermark())
                msg = Listing(
                    scan.cache, scan.round, scan.buckets, _each_key_once(part_flat), False, mark, scan.settled_ms
                )
                out.append(Send(scan.peer, msg))
            if not walk.done or scan.pos < len(scan.tombs):
                return out
        else:
            part = scan.entries[scan.pos : scan.pos + self.slice_size]
            sums = digests(part, wall, horizon)
            scan.sums = [(a + b) & _MASK64 for a, b in zip(scan.sums, sums, strict=True)]
            scan.pos += len(part)
            if scan.pos < len(scan.entries):
                return out
        self._scans.popleft()
        mark = _split(replica.watermark())
        if scan.then == "digest":
            return [Send(scan.peer, Digest(scan.cache, scan.round, scan.sums, mark, scan.settled_ms))]
        if scan.then == "answer":
            buckets = differing(scan.sums, scan.theirs)
            if not buckets:
                return []
            self._list(replica, scan.peer, scan.round, buckets, scan.settled_ms, reply=True, first=True)
            return []
        # The rest of the listing (full parts went as the scan filled them); only this last part
        # asks for the peer's listing in return.
        last = Listing(
            scan.cache, scan.round, scan.buckets, _each_key_once(scan.flat), scan.reply, mark, scan.settled_ms
        )
        return [*out, Send(scan.peer, last)]
