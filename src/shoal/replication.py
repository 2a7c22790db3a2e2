"""Writes between members: the op format, its validation, and anti-entropy digests.

Theory of operation. A local write is applied at once and queued; the
dispatcher drains the queue shortly after (``outgoing``) into one ``Ops``
message per cache and batch, broadcast to every member of the cache's group
(the driver encodes it once). A receiver applies each
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

Tombstones are in no digest, but they are listed: a key deleted on one side and
live on the other makes its bucket differ, the deleting side lists the key with
the delete's version, and the other pulls it like a write; the answer to a pull
of a deleted key is a delete op. Without that, a delete lost to a partition would
never reach the other side, and once the tombstone was purged the old value would
even be pulled back.

Catch-up. Anti-entropy repairs anything, but slowly and at the cost of a scan,
so the common losses are covered first by a bounded log of recent writes per
cache (every write a member applied, its own and its peers', with the wall time
it was logged), as Redis's replication backlog covers a replica that
reconnects. When two members connect (the first time, or again after a loss)
each asks the other for the writes it logged since the asker last heard from
it (a member it never heard of: since the asker started), less a margin for
clock skew; the answer is Ops batches then ``CaughtUp``. If the log no longer
reaches back that far, ``CaughtUp(complete=False)`` makes the asker open a
repair round with that peer at once. Replays are harmless: ops apply by version.

Everything here is pure: a cache is seen only through ``replica.ReplicaView``,
and time comes in as arguments (``now`` monotonic for scheduling, ``wall`` for
expiry and versions).
"""

from __future__ import annotations

import logging
import random
import zlib
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from itertools import compress
from typing import Any

from .actions import Action, Broadcast, Send
from .clock import COUNTER_BITS, NODE_BITS, NODE_MASK, version_ms
from .errors import ProtocolError
from .limits import LogLimiter, spans
from .membership import Membership
from .messages import CatchUp, CaughtUp, Digest, Listing, Message, Ops, Pull
from .replica import Op, ReplicaView
from .store import CLEAR, DELETE, NEVER, WRITE, Entry, Key
from .validation import check_key_types, versions_from_wire

log = logging.getLogger("shoal")

BUCKETS = 1024
SETTLE = 1.0
CATCHUP_LOG_BYTES = 64 * 1024 * 1024
"""The recent-writes log of each cache is bounded by this many bytes (estimated)."""
MAX_SKIP = 1024
"""Members a catch-up request may name as asked directly (a cluster is far smaller)."""
LISTING_MAX = 20_000
"""Keys per Listing message (with their versions, well under a megabyte)."""
PULL_MAX = 10_000
"""Keys per Pull message."""
_OP_OVERHEAD = 120  # bytes a logged op costs beyond its key and value, roughly
MAX_SCANS_PER_PEER = 2
"""Scans a peer's digests and listings may have queued here: each holds a list of every
entry, so 300 digests in a row once took a member from 104 to 566 MB. An honest peer
runs one round at a time with us; what is over the limit is dropped (a later round repairs)."""
BATCH_BYTES = 4 * 1024 * 1024
"""Bytes of values and keys per Ops frame: with ``max_value_size`` (1 MiB by default) far
below the 16 MiB frame limit, no batch of writes can grow into a frame a peer refuses."""
PULL_BYTES = 32 * 1024 * 1024
"""Bytes one Pull is answered with at most; the puller pulls the rest in its next round."""
_WIRE_OP_OVERHEAD = 40  # msgpack framing of one op besides its key and value
_PULL_SLICE = 16  # keys looked up between checks of PULL_BYTES
_MASK64 = (1 << 64) - 1
_KINDS = frozenset((WRITE, DELETE, CLEAR))


def op_to_wire(op: Op) -> list[Any]:
    kind, key, packed, expires, version = op
    return [kind, key, packed, None if expires == NEVER else expires, version >> NODE_BITS, version & NODE_MASK]


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
    kind_set = set(kinds)
    if not kind_set <= _KINDS or set(map(type, kinds)) != {int}:
        raise ProtocolError("unknown op kind")
    written = values if kind_set == {WRITE} else compress(values, map(WRITE.__eq__, kinds))
    if not set(map(type, written)) <= {bytes}:
        raise ProtocolError("a write carries its value as bytes")
    if None in expires:
        expires = tuple(NEVER if e is None else e for e in expires)
    if not set(map(type, expires)) <= {float, int}:
        raise ProtocolError("op expiry must be a number or nil")
    check_key_types(keys)
    return list(zip(kinds, keys, values, map(float, expires), versions_from_wire(hlcs, nodes), strict=True))


def op_size(wire_op: list[Any]) -> int:
    """Roughly the bytes of one op on the wire (its value and key dominate)."""
    key, packed = wire_op[1], wire_op[2]
    return _WIRE_OP_OVERHEAD + (len(packed) if packed is not None else 0) + (len(key) if type(key) is not int else 8)


def _split(version: int) -> list[int]:
    return [version >> NODE_BITS, version & NODE_MASK]


# -- digests -------------------------------------------------------------------


def key_hash(key: Key) -> int:
    """A stable 32-bit hash of a key (Python's hash() differs between processes).

    CRC-32 runs in C and is ample for spreading keys over buckets; the digest mixes
    it with the version and expiry into 64 bits.
    """
    if type(key) is str:
        return zlib.crc32(key.encode("utf-8", "surrogatepass"))
    if type(key) is bytes:
        return zlib.crc32(key, 0x62)  # a different seed keeps "a" and b"a" apart
    return zlib.crc32(str(key).encode(), 0x69)


def bucket_of(key: Key) -> int:
    return key_hash(key) % BUCKETS


def settled_ms(wall: float) -> int:
    """Wall ms of ``SETTLE`` seconds ago: the line a repair round compares entries below."""
    return int((wall - SETTLE) * 1000)


def _horizon(ms: int) -> int:
    return (ms << COUNTER_BITS) << NODE_BITS


def settled_before(wall: float) -> int:
    """The version of ``SETTLE`` seconds ago: newer writes are still in flight.

    Digests and listings leave them out, so a round run while writes stream does
    not see every bucket differ and list thousands of keys that live replication
    is delivering anyway; a write really lost is repaired a round later.
    """
    return _horizon(settled_ms(wall))


def digests(entries: Iterable[Entry], wall: float, horizon: int | None = None) -> list[int]:
    """Per-bucket digests of the live, settled entries.

    Each entry hashes (key, version, expiry) into 64 bits: both halves of the
    128-bit version (hlc << 64 | node) go in, then a splitmix64-style finaliser
    spreads every input bit over the word. Written inline: this loop is hot.
    """
    sums = [0] * BUCKETS
    crc = zlib.crc32
    mask = _MASK64
    if horizon is None:
        horizon = settled_before(wall)
    for entry in entries:
        if entry > wall and entry.version < horizon:
            key = entry.key
            khash = crc(key.encode("utf-8", "surrogatepass")) if type(key) is str else key_hash(key)
            exp = 0 if entry == NEVER else int(entry * 1000)
            version = entry.version
            h = (
                khash * 0x9E3779B97F4A7C15 + (version >> 64) * 0xD6E8FEB86659FD93 + version + exp * 0xC2B2AE3D27D4EB4F
            ) & mask
            h = ((h ^ (h >> 31)) * 0xBF58476D1CE4E5B9) & mask
            sums[khash % BUCKETS] += h ^ (h >> 29)
    return [d & mask for d in sums]


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
        "repair_rounds": 0,
        "keys_repaired": 0,
        "catchup_ops_sent": 0,
        "catchups_incomplete": 0,
        "last_lag_ms": None,
    }


class _Log:
    """Recent writes of one cache, oldest first, bounded in bytes (see the module docstring).

    Kept as the batches they came in (a flush's, a peer's Ops): one append per batch, as
    tuples of ops, which are tuples of plain values: the cyclic GC stops tracking them, so a
    log of a few hundred thousand writes adds nothing to a full collection's walk.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.batches: deque[tuple[int, tuple[Op, ...], int]] = deque()  # (logged at ms, ops, size)
        self.size = 0
        self.dropped_ms: int | None = None  # newest logging time ever dropped: complete after it

    def add(self, ops: list[Op], ms: int) -> None:
        size = _OP_OVERHEAD * len(ops) + sum(len(op[2]) for op in ops if op[2] is not None)
        self.batches.append((ms, tuple(ops), size))
        self.size += size
        while self.size > self.limit and self.batches:
            old_ms, _, old_size = self.batches.popleft()
            self.size -= old_size
            self.dropped_ms = old_ms

    def since(self, ms: int) -> tuple[list[Op], bool]:
        """Ops logged at ``ms`` or later, and whether the log is complete that far back."""
        ops = [op for logged, batch, _ in self.batches if logged >= ms for op in batch]
        return ops, self.dropped_ms is None or self.dropped_ms < ms


@dataclass
class _Scan:
    """A pass over one cache's entries, done a slice per tick so no tick runs long."""

    cache: str
    peer: int
    round: int
    then: str  # what to send when the pass is done: "digest", "listing" or "answer"
    entries: list[Entry]
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
    """Outgoing batches, incoming ops and anti-entropy rounds for every hosted cache.

    Feed it local writes (``outgoing``), peers' messages (``received``) and time
    (``tick``); it returns actions. Caches are the ``replicas`` mapping the
    dispatcher shares with warm boot (one registry of hosted caches).
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
        margin: float = 2.0,
    ) -> None:
        """``margin``: how much further back than "last heard" a catch-up reaches, in seconds
        (clocks of members differ by up to max_clock_skew; writes settle within SETTLE)."""
        self.membership = membership
        self.replicas = replicas
        self.interval = interval
        self.rng = rng or random.Random()
        self.slice_size = slice_size
        self.batch = batch
        self.batch_bytes = BATCH_BYTES
        self.log_bytes = log_bytes
        self.margin_ms = int(margin * 1000)
        self.figures: dict[str, dict[str, Any]] = {}
        self.logs: dict[str, _Log] = {}
        self.started_ms = 0
        self.heard_ms: dict[int, int] = {}  # wall ms of the last message from each peer
        self.catching_up: dict[tuple[str, int], float] = {}  # (cache, peer) -> when we asked (monotonic)
        self.needs_repair: set[int] = set()
        # Caches whose warm boot is over: only they take part in repair rounds
        # (a booting cache is incomplete by design, and its scan would slow the boot).
        self.settled: set[str] = set()
        self._scans: deque[_Scan] = deque()
        self._next_round: float | None = None
        self._round = 0
        self._opened: deque[int] = deque(maxlen=64)  # rounds we opened, recent ones
        self._scan_errors = LogLimiter(log, burst=5, interval=60.0)  # this member's, on the time it is given

    def figures_of(self, cache: str) -> dict[str, Any]:
        figures = self.figures.get(cache)
        if figures is None:
            figures = self.figures[cache] = new_figures()
        return figures

    @property
    def busy(self) -> bool:
        """True while a scan is in progress: tick again soon."""
        return bool(self._scans)

    # -- outgoing --------------------------------------------------------------

    def outgoing(self, name: str, ops: list[Op], wall: float) -> list[Broadcast]:
        """Local writes of one cache as Ops messages, each broadcast to the cache's group,
        and logged for the members that are not connected now (catch-up)."""
        if not ops:
            return []
        self._log(name).add(ops, int(wall * 1000))
        peers = tuple(self.membership.group(name))
        if not peers:
            return []
        figures = self.figures_of(name)
        wire_ops = [op_to_wire(op) for op in ops]
        actions: list[Broadcast] = []
        for i, j in spans(map(op_size, wire_ops), self.batch_bytes, self.batch):
            msg = Ops(name, wire_ops[i:j])
            actions.append(Broadcast(peers, msg))
            figures["ops_sent"] += len(msg.ops) * len(peers)
        return actions

    def dropped(self, peer: int, msg: Ops) -> None:
        """The driver could not queue ``msg`` for ``peer`` (it is not reading): repair it later."""
        figures = self.figures_of(msg.cache)
        figures["ops_sent"] -= len(msg.ops)
        figures["ops_dropped"] += len(msg.ops)
        self.needs_repair.add(peer)

    # -- incoming --------------------------------------------------------------

    def received(self, peer: int, msg: Message, now: float, wall: float) -> list[Action]:
        if isinstance(msg, Ops):
            ops = ops_from_wire(msg.ops)
            self.apply(msg.cache, ops, wall)  # raises for ops the member refuses: those are not relayed
            if msg.cache in self.replicas:
                self._log(msg.cache).add(ops, int(wall * 1000))
            return []
        if isinstance(msg, CatchUp):
            return self._catch_up(peer, msg)
        if isinstance(msg, CaughtUp):
            if self.catching_up.pop((msg.cache, peer), None) is not None and not msg.complete:
                log.info("catch-up of %s from %016x: its log does not reach back; comparing digests", msg.cache, peer)
                self.figures_of(msg.cache)["catchups_incomplete"] += 1
                self.needs_repair.add(peer)
                self._next_round = now  # now, not in a full interval
            return []
        replica = self.replicas.get(getattr(msg, "cache", ""))
        if replica is None:
            return []  # a cache we do not host
        if msg.cache not in self.settled:  # type: ignore[attr-defined]
            return []
        if isinstance(msg, (Digest, Listing)):
            self._catch_up_clear(msg.cache, replica, msg.watermark, wall)
        wants_scan = isinstance(msg, Digest) or (isinstance(msg, Listing) and msg.reply)
        if wants_scan and self._queued_scans(peer) >= MAX_SCANS_PER_PEER:
            log.debug("%016x has %d repair scans queued here: dropping another", peer, MAX_SCANS_PER_PEER)
            return []
        if isinstance(msg, Digest):
            if len(msg.digests) != BUCKETS:
                raise ProtocolError(f"a digest has {BUCKETS} buckets")
            scan = _Scan(msg.cache, peer, msg.round, "answer", replica.entries(), theirs=msg.digests)
            scan.settled_ms = _their_line(msg.settled_ms, wall)
            self._scans.append(scan)
            return self._advance(wall)
        if isinstance(msg, Listing):
            if any(type(b) is not int or not 0 <= b < BUCKETS for b in msg.buckets):
                raise ProtocolError("a listing names buckets that do not exist")
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
                scan = _Scan(msg.cache, peer, msg.round, "listing", replica.entries(), buckets=msg.buckets)
                scan.tombs = replica.tombstones()
                scan.settled_ms = _their_line(msg.settled_ms, wall)
                self._scans.append(scan)
                actions += self._advance(wall)
            return actions
        if isinstance(msg, Pull):
            check_key_types(msg.keys)
            wire: list[Any] = []
            total = 0
            for k in range(0, len(msg.keys), _PULL_SLICE):
                if total > PULL_BYTES:
                    break  # the rest at the next round: one Pull must not cost us unbounded memory
                more = [op_to_wire(op) for op in replica.ops_for(msg.keys[k : k + _PULL_SLICE], wall)]
                total += sum(map(op_size, more))
                wire += more
            return self._batches(peer, msg.cache, wire)
        raise ProtocolError(f"unexpected {type(msg).__name__}")

    # -- catch-up ----------------------------------------------------------------

    def start(self, wall: float) -> None:
        self.started_ms = int(wall * 1000)

    def heard(self, peer: int, wall: float) -> None:
        """Any message from ``peer``: what it sent until now has reached us (catch-up starts there)."""
        self.heard_ms[peer] = int(wall * 1000)

    def member_up(self, peer: int, now: float) -> list[Action]:
        """A connection to ``peer`` is up: ask it for what we may have missed, cache by cache."""
        since = self.heard_ms.get(peer, self.started_ms) - self.margin_ms
        actions: list[Action] = []
        for name in self.replicas:
            # The members we are connected to answer for their own writes: only relays of the
            # others' are wanted from this one (without it, each write came once per member).
            skip = [p for p in self.membership.group(name) if p != peer][:MAX_SKIP]
            self.catching_up[(name, peer)] = now
            actions.append(Send(peer, CatchUp(name, max(0, since), skip)))
        return actions

    def member_down(self, peer: int) -> None:
        for key in [k for k in self.catching_up if k[1] == peer]:
            del self.catching_up[key]
        if len(self.heard_ms) > 1000:  # incarnations long gone: keep the recent ones
            for old in sorted(self.heard_ms, key=self.heard_ms.__getitem__)[:500]:
                del self.heard_ms[old]

    def waiting_for(self, now: float, patience: float) -> list[tuple[str, int]]:
        """Catch-ups asked for less than ``patience`` ago and not answered yet."""
        return [key for key, asked in self.catching_up.items() if now - asked < patience]

    def _catch_up(self, peer: int, msg: CatchUp) -> list[Action]:
        log_ = self.logs.get(msg.cache)
        if msg.cache not in self.replicas or log_ is None:
            return [Send(peer, CaughtUp(msg.cache, True))]  # nothing logged: nothing was missed
        if len(msg.skip) > MAX_SKIP or any(type(n) is not int for n in msg.skip):
            raise ProtocolError(f"a catch-up skips at most {MAX_SKIP} members, named by id")
        ops, complete = log_.since(msg.since_ms)
        if msg.skip:
            skip = set(msg.skip)
            ops = [op for op in ops if op[4] & NODE_MASK not in skip]
        actions = self._batches(peer, msg.cache, [op_to_wire(op) for op in ops])
        if ops:
            self.figures_of(msg.cache)["catchup_ops_sent"] += len(ops)
            log.info("catch-up of %s for %016x: %d writes, log complete: %s", msg.cache, peer, len(ops), complete)
        return [*actions, Send(peer, CaughtUp(msg.cache, complete))]

    def _log(self, name: str) -> _Log:
        found = self.logs.get(name)
        if found is None:
            found = self.logs[name] = _Log(self.log_bytes)
        return found

    def _batches(self, peer: int, cache: str, wire_ops: list[Any]) -> list[Action]:
        """Ops messages to one peer, bounded in bytes as well as in ops."""
        cuts = spans(map(op_size, wire_ops), self.batch_bytes, self.batch)
        return [Send(peer, Ops(cache, wire_ops[i:j])) for i, j in cuts]

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
            self._open_rounds(wall)
        return self._advance(wall)

    def _open_rounds(self, wall: float) -> None:
        for name, replica in self.replicas.items():
            group = self.membership.group(name)
            if not group or name not in self.settled:
                continue
            urgent = [p for p in group if p in self.needs_repair]
            peer = urgent[0] if urgent else self.rng.choice(group)
            self.needs_repair.discard(peer)
            self._round += 1
            self._opened.append(self._round)
            self.figures_of(name)["repair_rounds"] += 1
            scan = _Scan(name, peer, self._round, "digest", replica.entries(), settled_ms=settled_ms(wall))
            self._scans.append(scan)

    def _advance(self, wall: float) -> list[Action]:
        """One slice of the oldest scan; its message once it is complete."""
        if not self._scans:
            return []
        scan = self._scans[0]
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
        part = scan.entries[scan.pos : scan.pos + self.slice_size]
        horizon = _horizon(scan.settled_ms)
        out: list[Action] = []
        if scan.then == "listing":
            scan.flat += listing(part, scan.buckets, wall, horizon)
            if not part:  # the entries are done: then the tombstones, a slice at a time too
                tomb_pos = scan.pos - len(scan.entries)
                tombs = scan.tombs[tomb_pos : tomb_pos + self.slice_size]
                scan.flat += tombstone_listing(tombs, scan.buckets)
                scan.pos += len(tombs)
            step = 3 * LISTING_MAX
            while len(scan.flat) >= step:  # a full part goes now: a large listing is spread over the scan
                part_flat, scan.flat = scan.flat[:step], scan.flat[step:]
                mark = _split(replica.watermark())
                msg = Listing(scan.cache, scan.round, scan.buckets, part_flat, False, mark, scan.settled_ms)
                out.append(Send(scan.peer, msg))
        else:
            sums = digests(part, wall, horizon)
            scan.sums = [(a + b) & _MASK64 for a, b in zip(scan.sums, sums, strict=True)]
        scan.pos += len(part)
        if scan.pos < len(scan.entries) + len(scan.tombs):
            return out
        self._scans.popleft()
        mark = _split(replica.watermark())
        if scan.then == "digest":
            return [Send(scan.peer, Digest(scan.cache, scan.round, scan.sums, mark, scan.settled_ms))]
        if scan.then == "answer":
            buckets = differing(scan.sums, scan.theirs)
            if not buckets:
                return []
            follow = _Scan(scan.cache, scan.peer, scan.round, "listing", scan.entries, buckets=buckets, reply=True)
            follow.tombs = replica.tombstones()
            follow.settled_ms = scan.settled_ms
            self._scans.appendleft(follow)
            return []
        # The rest of the listing (full parts went as the scan filled them); only this last part
        # asks for the peer's listing in return.
        last = Listing(scan.cache, scan.round, scan.buckets, scan.flat, scan.reply, mark, scan.settled_ms)
        return [*out, Send(scan.peer, last)]
