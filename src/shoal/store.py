"""The entries of one cache: versions, expiry, tombstones, clear watermark, eviction.

Theory of operation. Every entry carries the version of the write that made it
(``clock.py``) and an absolute wall-clock expiry (``math.inf`` for none). A write,
local or replicated, is applied only if its version is newer than everything the
store knows about the key: the live entry, the key's tombstone, and the clear
watermark. That one rule is why members converge whatever order writes arrive in.

Deletes, and entries that expire, leave a tombstone (key -> version) for
``tombstone_ttl`` seconds, long enough that a late or repaired older write cannot
bring the key back; then it is purged. A local-only cache keeps none.

Expired entries are removed lazily when read and by ``sweep``, which walks a wheel
of one-second buckets so it touches only what is due and does a bounded amount
of work per call. A bucket is a plain list of keys (one pointer per entry, an
append per write): when an entry leaves the table early (overwritten, deleted,
evicted) its key stays in the bucket as a stale reference, looked up and skipped
when its second comes due, and the buckets are compacted when stale references
outnumber the entries. Keys, not entries: a replaced entry is freed at once
instead of being kept alive into the oldest GC generation. A per-key dict per
bucket would cost 30-60 bytes and a dict insert per write; the list is one of the
reasons a member's memory stays close to a plain dict of the same items
(``bench/boot.py``).

Every entry is filed, one without expiry too: under ``LASTING``, a bucket that never
comes due. So the wheel is an index of the whole table, and ``Walk`` reads the
entries through it a slice at a time, without a lock and without the list of every
entry that ``entries()`` makes (10-14 ms at a million, a stall of the caller's
loop): that is how a donor streams a warm-boot dump and a member lists its keys for
a repair round. A cache whose entries never expire pays one list slot (8 bytes) per
entry for it. Compaction builds a bucket's new list beside it and swaps it in, and
sweep only pops what is due off a bucket's end, so a key never moves to a position
of its bucket that a walk has passed.

A warm boot streams thousands of fresh keys per chunk into a store that has
never seen them; ``load`` recognises such a chunk with a few C-speed set
operations and files it in bulk (``dict.update``, ``list.extend``) instead of
entry by entry. Eviction (``max_entries``) is local and recorded in ``evicted``,
so anti-entropy can tell "evicted on purpose" from "never received".

Tombstones are bounded per cache: at most ``max_tombstones`` (by default
``max_entries``, at least ``MIN_TOMBSTONES``) and ``TOMBSTONE_BYTES`` counted with
their keys, oldest dropped first (a million deletes of absent keys once kept a
million tombstones, +320 MB, for ten minutes). A dropped tombstone must not let
an older write bring its key back, so its version raises a floor: the key hashes
to one of ``FLOOR_SLOTS`` slots, and a write for an absent key whose slot's floor
is at or above its version is refused, like one a tombstone refuses. Older than
a dropped delete or not, such a write is already old (the floor trails the
oldest tombstones kept), and a slot is shared by 1/4096 of the keys, so little
else is refused; anti-entropy sees the floor as the key's version and does not
pull what it would refuse.

A hosted cache keeps its anti-entropy digests as it changes (``keep_digests``,
digest.py): every entry that enters or leaves the table is appended to the ledger's
queues, and ``sweep`` (the node's tick) folds a bounded slice of them into the sums, so
``digests`` answers a repair round without a scan.

The store does no locking and no I/O; ``Cache`` serialises writers around it.
"""

from __future__ import annotations

import heapq
import math
from collections import OrderedDict, deque
from collections.abc import Iterator
from itertools import chain, compress, islice, repeat
from operator import and_, is_, not_
from sys import getsizeof
from typing import Any

from .digest import FOLD_SLICE, Ledger
from .eviction import S3FIFO, Policy

Key = str | bytes | int
NEVER = math.inf
LASTING = 1 << 62
"""The wheel's bucket of the entries without expiry: past any second, so it never comes due."""

# Stale wheel references tolerated before ``sweep`` compacts them away (and, as a
# backstop when nothing sweeps, the writer itself at twice the live entries).
STALE_BACKSTOP = 1024
COMPACT_STEPS = 8  # a bucket is compacted in at most this many steps (see Store._compact_some)

MIN_TOMBSTONES = 1024
TOMBSTONE_BYTES = 32 * 1024 * 1024
"""Bytes of tombstones per cache, each counted as its key's length plus ``TOMBSTONE_OVERHEAD``."""
TOMBSTONE_OVERHEAD = 250  # a dict slot, the version, the queue's record: what a tombstone costs past its key
FLOOR_SLOTS = 4096  # a power of two
FOLD_BACKSTOP = 1 << 17
"""Records of removed entries waiting for the digests (digest.py), or of added ones past the
table's size, at which a write folds a slice itself: the node's tick folds as it
goes, so only a store nobody sweeps, or writes faster than the tick folds, reach this."""

ENTRY_BYTES = 170
"""What an entry costs past its key and value objects: the entry, its version, a table slot and
its wheel reference (tracemalloc over 100,000 writes; an eviction queue slot adds about 8)."""
WALK_SLICE = 1000
"""Keys of a bucket a ``Walk`` looks up at a time: 0.2-0.4 ms on a table of a million (a
lookup, then the entry itself, each a cache miss)."""
SIZE_SAMPLE = 32  # entries looked at by ``approx_bytes``
VALUE_WALK = 64  # objects of one value looked at by ``approx_bytes``

# The kinds of mutation a store applies, as they travel between members.
WRITE, DELETE, CLEAR = 0, 1, 2


class Entry(float):
    """One cached value; the float itself is the absolute expiry.

    Subclassing float keeps the expiry inside the entry object, so the hot read
    path (``entry > now``) touches one object instead of two: on a large cache
    that is one cache miss less per ``get``. Key, value, version and expiry never
    change after creation (a newer write makes a new entry), so a reader on
    another thread never sees half a write; only the eviction bookkeeping
    (``freq``, ``queue``) is mutable, and it is the eviction policy's: an entry is
    made with both 0, as the policy expects a new one. Its expiry-wheel bucket is
    ``int(entry)``, derived, not kept.
    """

    __slots__ = ("key", "value", "version", "freq", "queue")

    key: Key
    value: Any
    version: int
    freq: int
    queue: int

    def __new__(cls, key: Key, value: Any, expires: float, version: int) -> Entry:
        return _new_entry(key, value, expires, version)

    @property
    def expires(self) -> float:
        return float(self)

    def __repr__(self) -> str:
        return f"Entry({self.key!r}, {self.value!r}, expires={float(self)}, version={self.version})"


def _new_entry(key: Key, value: Any, expires: float, version: int) -> Entry:
    """``Entry(...)``, without the class call's detour through ``__new__``."""
    entry = float.__new__(Entry, expires)
    entry.key = key
    entry.value = value
    entry.version = version
    entry.freq = entry.queue = 0
    return entry


def _new_entries(keys: list[Key], values: list[Any], expires: list[float], versions: list[int]) -> list[Entry]:
    """The entries of a warm-boot chunk: one loop in one frame, 20% faster than mapping
    ``_new_entry`` over the columns (a call from C into Python per entry)."""
    entries: list[Entry] = []
    append, new = entries.append, float.__new__
    for key, value, expire, version in zip(keys, values, expires, versions, strict=True):
        entry = new(Entry, expire)
        entry.key = key
        entry.value = value
        entry.version = version
        entry.freq = entry.queue = 0
        append(entry)
    return entries


_GONE = _new_entry("", None, -1.0, 0)
"""What looking up a key that left the table finds in a bucket's pass: an entry at home in no bucket."""


def _at_home(second: int, found: list[Entry]) -> Iterator[bool]:
    """For the entries the keys of bucket ``second`` look up (``_GONE`` for a key not in the
    table): whether each is filed in that bucket, so its key there is its current reference
    and not a stale one (the entry was overwritten, deleted, evicted). At C speed, no Python
    call per key: compaction and walks run over whole buckets with it."""
    if second == LASTING:
        return map(NEVER.__eq__, found)
    return map(and_, map(float(second).__le__, found), map(float(second + 1).__gt__, found))


class _Wheel(dict[int, list[Key]]):
    """Expiry second -> keys due then; ``due`` is a heap of the seconds that come due.

    ``wheel[second].append(key)`` is the one way a key is filed: a missing bucket
    is made and scheduled here, and a present one costs a C-level dict lookup.
    ``LASTING`` is never scheduled.
    """

    def __init__(self) -> None:
        super().__init__()
        self.due: list[int] = []

    def __missing__(self, second: int) -> list[Key]:
        bucket: list[Key] = []
        self[second] = bucket
        if second != LASTING:
            heapq.heappush(self.due, second)
        return bucket

    def clear(self) -> None:
        super().clear()
        self.due.clear()


class Store:
    def __init__(
        self,
        max_entries: int | None = None,
        *,
        tombstone_ttl: float = 0.0,
        max_tombstones: int | None = None,
        tombstone_bytes: int = TOMBSTONE_BYTES,
    ) -> None:
        if max_entries is not None and max_entries < 1:
            raise ValueError("max_entries must be a positive int or None")
        # One table for the store's life, emptied in place by clear(): Cache's lock-free
        # readers and the eviction policy hold its ``get``.
        self.data: dict[Key, Entry] = {}
        self.max_entries = max_entries
        self.tombstone_ttl = tombstone_ttl
        self.tombstones: dict[Key, int] = {}
        self._tomb_queue: deque[tuple[float, Key, int]] = deque()
        self.max_tombstones = max_tombstones or (max(max_entries, MIN_TOMBSTONES) if max_entries else None)
        self.tombstone_bytes = tombstone_bytes
        self._tomb_size = 0  # bytes of the records in _tomb_queue (see TOMBSTONE_OVERHEAD)
        self._floors: list[int] | None = None  # per key slot: versions of dropped tombstones (see above)
        self.tombstones_dropped = 0
        self.watermark = 0
        self.policy: Policy | None = S3FIFO(max_entries, self.data.get) if max_entries is not None else None
        # key -> version of entries evicted on purpose, bounded like a ghost queue.
        self.evicted: OrderedDict[Key, int] = OrderedDict()
        self._wheel = _Wheel()
        self._stale = 0  # keys in the wheel whose entry there left the table
        self._compacting: list[int] = []  # buckets left in the current compaction pass
        self._compact_pos = 0  # where in the last of them it goes on
        self._compact_from: list[Key] | None = None  # that bucket's list, as the pass found it
        self._compact_into: list[Key] = []  # its keys kept so far: the list swapped in at its end
        self.evictions = 0
        self.expirations = 0
        self._ledger: Ledger | None = None  # digests kept as writes apply (keep_digests)
        self._keep_from: int | None = None  # entries from which to keep them

    def __len__(self) -> int:
        return len(self.data)

    # -- reading ---------------------------------------------------------------

    def live(self, key: Key, now: float) -> Entry | None:
        """The unexpired entry for key; an expired one is removed on the way."""
        entry = self.data.get(key)
        if entry is None:
            return None
        if entry > now:
            return entry
        self._expire(entry, now)
        return None

    def version_of(self, key: Key) -> int:
        """Newest version known for key: entry, tombstone or clear watermark."""
        entry = self.data.get(key)
        if entry is not None:
            return entry.version
        floor = 0 if self._floors is None else self._floors[hash(key) & (FLOOR_SLOTS - 1)]
        return max(self.tombstones.get(key, 0), self.watermark, floor)

    def entries(self) -> list[Entry]:
        """A snapshot (references, no copies) of the current entries: 10-14 ms per million
        with the caller's thread holding the GIL; ``walk`` reads a large table without it."""
        return list(self.data.values())

    def walk(self) -> Walk:
        """A walk over the entries a slice at a time, without a lock (``Walk``)."""
        return Walk(self)

    def approx_bytes(self) -> int:
        """Memory the entries hold, estimated from the oldest ``SIZE_SAMPLE`` of them.

        A figure for the operator at a bounded cost per call (a status page or a scrape must
        not walk a million entries), not an account: entries much larger or smaller than the
        sampled ones skew it. ``list(islice(...))`` takes the sample in one C call, so a writer
        on another thread cannot change the table in the middle of it; it skips the slots of
        removed entries at the table's front at C speed (2 ms with 999,000 of 1,000,000 removed).
        """
        sample = list(islice(self.data.values(), SIZE_SAMPLE))
        if not sample:
            return 0
        per_entry = sum(getsizeof(e.key) + _value_bytes(e.value) for e in sample) / len(sample)
        return int(len(self.data) * (ENTRY_BYTES + per_entry))

    def keep_digests(self, from_entries: int = 0) -> None:
        """Keep anti-entropy digests as writes apply (digest.py) once the table holds
        ``from_entries`` entries; a hosted cache does, from ``digest.KEEP_FROM``."""
        self._keep_from = from_entries
        self._start_ledger()

    def _start_ledger(self) -> None:
        if self._ledger is None and self._keep_from is not None and len(self.data) >= self._keep_from:
            self._ledger = Ledger(self.data)  # what the table holds now is folded by the tick

    def digests(self, wall: float, horizon: int) -> list[int] | None:
        """``digest.digests`` of the entries without a scan, or None when it must scan (see digest.py)."""
        if self._ledger is None:
            return None
        return self._ledger.read(self._due, wall, horizon)

    @property
    def digests_behind(self) -> bool:
        """The kept digests have ripe records left to fold: sweep again soon (see ``Ledger.behind``)."""
        return self._ledger is not None and self._ledger.behind

    def _due(self, wall: float) -> list[Key]:
        """Keys in the wheel's buckets due by ``wall``: every entry expired by then and still held is among them."""
        return [key for second, bucket in self._wheel.items() if second <= wall for key in bucket]

    # -- writing ---------------------------------------------------------------

    def write(self, key: Key, value: Any, expires: float, version: int, now: float) -> bool:
        """Apply a write if it is the newest the store has seen for key."""
        if version <= self.watermark:
            return False
        data = self.data
        old = data.get(key)
        if old is not None:
            if version <= old.version:
                return False
            if expires <= now:  # newest, but already expired: the old entry goes, nothing stays
                self._unlink(old)
                self._bury(key, version, now)
                return True
            entry = float.__new__(Entry, expires)  # Entry(...), inlined: one Python call less per write
            entry.key = key
            entry.value = value
            entry.version = version
            entry.freq = old.freq  # the key's eviction history passes to its new entry
            entry.queue = old.queue
            data[key] = entry
            ledger = self._ledger
            if ledger is not None:
                ledger.removed_keys.append(key)  # ledger.remove and ledger.add, inlined
                ledger.removed_versions.append(old.version)
                ledger.removed_expiries.append(old)
                ledger.added_keys.append(key)
                ledger.added_versions.append(version)
                if (
                    ledger.removed_sealed + len(ledger.removed_keys) > FOLD_BACKSTOP
                    and ledger.removals_pending() > FOLD_BACKSTOP
                ):
                    ledger.fold(now, FOLD_SLICE, ripe=0.0)  # see FOLD_BACKSTOP
            second = int(expires) if expires != NEVER else LASTING
            if second != (int(old) if old != NEVER else LASTING):  # else the key is filed there already
                self._wheel[second].append(key)
                self._stale += 1
                if self._stale > STALE_BACKSTOP + 2 * len(data):
                    self._compact_some(1 << 62)
            return True
        if self.evicted:
            gone = self.evicted.get(key)
            if gone is not None and version <= gone:
                return False  # an older write arriving late must not bring back a stale value
        if self.tombstones:
            dead = self.tombstones.get(key)
            if dead is not None:
                if version <= dead:
                    return False
                del self.tombstones[key]
        if self._floors is not None and version <= self._floors[hash(key) & (FLOOR_SLOTS - 1)]:
            return False  # its tombstone may have been dropped (see the module docstring)
        if expires <= now:
            self._bury(key, version, now)  # newest, but already expired: nothing to hold
            return True
        entry = float.__new__(Entry, expires)
        entry.key = key
        entry.value = value
        entry.version = version
        entry.freq = entry.queue = 0
        data[key] = entry
        self._wheel[int(expires) if expires != NEVER else LASTING].append(key)
        ledger = self._ledger
        if ledger is None:
            if self._keep_from is not None and len(data) >= self._keep_from:
                self._start_ledger()
        else:
            ledger.added_keys.append(key)
            ledger.added_versions.append(version)
            most = FOLD_BACKSTOP + len(data)
            if ledger.added_sealed + len(ledger.added_keys) > most and ledger.additions_pending() > most:
                ledger.fold(now, FOLD_SLICE, ripe=0.0)  # see FOLD_BACKSTOP
        policy = self.policy
        if policy is not None:
            if self.evicted:
                self.evicted.pop(key, None)
            policy.insert(entry)
            if len(data) > self.max_entries:  # type: ignore[operator]
                self._evict()
        return True

    def load(self, keys: list[Key], values: list[Any], expires: list[float], versions: list[int], now: float) -> int:
        """Apply a chunk of a warm-boot dump; the same rule as ``write``. Returns how many were applied.

        An entry that expired on the way is skipped (no tombstone: it is no delete).
        A chunk with room under the bound, newer than the watermark and naming no
        tombstone or eviction record is filed in bulk; the few keys the table
        already holds (a second donor, a live write) then go through ``write``.
        Anything else goes entry by entry. The lists are the store's from then on (the
        kept digests queue ``keys`` and ``versions`` as they are).
        """
        n = len(keys)
        if not n:
            return 0
        if self._ledger is None and self._keep_from is not None:
            self._start_ledger()
        data = self.data
        if (
            (not self.watermark or min(versions) > self.watermark)
            and (self.max_entries is None or len(data) + n <= self.max_entries)
            and (not self.tombstones or self.tombstones.keys().isdisjoint(keys))
            and (not self.evicted or self.evicted.keys().isdisjoint(keys))
            and self._floors is None
        ):
            first = min(expires)
            if first <= now:  # drop what expired on the way
                alive = [exp > now for exp in expires]
                keys, values = list(compress(keys, alive)), list(compress(values, alive))
                expires, versions = list(compress(expires, alive)), list(compress(versions, alive))
                if not keys:
                    return 0
                first = min(expires)
            entries = _new_entries(keys, values, expires, versions)
            # The chunk as a dict of its own (hashed once, in a small table), then one C-level
            # merge into the table if none of its keys is there: 20% faster than a setdefault
            # per key, the table's largest cost in a boot.
            chunk = dict(zip(keys, entries, strict=True))
            if len(chunk) == len(keys) and data.keys().isdisjoint(chunk):
                data.update(chunk)
                if self._ledger is not None:
                    self._ledger.load(keys, versions)
                self._file_keys(keys, expires, first, max(expires))
                if self.policy is not None:
                    self.policy.insert_many(keys, entries)
                return len(entries)
            # A key twice in the chunk, or held already. setdefault inserts a key the table lacks
            # and leaves a present one alone: one C-level pass that both files the fresh keys and
            # finds the others.
            placed = list(map(data.setdefault, keys, entries))
            fresh = list(map(is_, placed, entries))
            new = list(compress(entries, fresh))
            new_keys, new_expires = list(compress(keys, fresh)), [float(e) for e in new]
            if new:
                if self._ledger is not None:
                    self._ledger.load(new_keys, [e.version for e in new])
                self._file_keys(new_keys, new_expires, min(new_expires), max(new_expires))
            if self.policy is not None:
                self.policy.insert_many(new_keys, new)
            applied = len(new)
            write = self.write
            for key, value, exp, version in compress(
                zip(keys, values, expires, versions, strict=True), map(not_, fresh)
            ):
                applied += write(key, value, exp, version, now)  # a key held already, or twice in the chunk
            return applied
        applied = 0
        write = self.write
        watermark = self.watermark
        for key, value, exp, version in zip(keys, values, expires, versions, strict=True):
            if exp > now and version > watermark:
                applied += write(key, value, exp, version, now)
        return applied

    def delete(self, key: Key, version: int, now: float) -> bool:
        """Apply a delete if it is the newest the store has seen for key."""
        if version <= self.version_of(key):
            return False
        entry = self.data.get(key)
        if entry is not None:
            self._unlink(entry)
        self._bury(key, version, now)
        return True

    def clear(self, version: int) -> bool:
        """Raise the watermark: every entry and tombstone older than version goes."""
        if version <= self.watermark:
            return False
        self.watermark = version
        survivors = [e for e in self.data.values() if e.version > version]
        self.data.clear()  # in place: readers hold a reference to this dict
        self._wheel.clear()
        self._stale = 0
        self._compacting.clear()
        self._compact_pos = 0
        self._compact_from, self._compact_into = None, []
        if self.policy is not None:
            self.policy.clear()
        self.evicted.clear()
        for entry in survivors:
            self.data[entry.key] = entry
            self._wheel[int(entry) if entry != NEVER else LASTING].append(entry.key)
            if self.policy is not None:
                entry.freq = entry.queue = 0  # the policy starts over: a survivor is a new key to it
                self.policy.insert(entry)
        self.tombstones = {k: v for k, v in self.tombstones.items() if v > version}
        if self._ledger is not None:
            self._ledger.reset(survivors)
        return True

    # -- housekeeping ----------------------------------------------------------

    def sweep(self, now: float, limit: int = 2000) -> int:
        """Remove up to ``limit`` due entries (stale references count) and purge old tombstones.

        Bounded so a caller can hold its lock for a few milliseconds at most and
        call again; returns the work done, 0 when nothing is due.
        """
        removed = 0
        wheel, data = self._wheel, self.data
        due = wheel.due
        while due and due[0] + 1 <= now and removed < limit:
            bucket = wheel.get(due[0])
            if not bucket:
                wheel.pop(heapq.heappop(due), None)
                continue
            while bucket and removed < limit:
                entry = data.get(bucket.pop())
                self._stale -= 1  # the reference is gone either way; _expire counts it again
                if entry is not None and entry <= now:  # else: stale, the key's entry expires later
                    self._expire(entry, now)
                removed += 1
        tombs = self._tomb_queue
        while tombs and tombs[0][0] <= now and removed < limit:
            _, key, version = tombs.popleft()
            self._tomb_size -= _tomb_cost(key)
            if self.tombstones.get(key) == version:
                del self.tombstones[key]
            removed += 1
        if removed < limit and self._stale > STALE_BACKSTOP and self._stale > len(self.data):
            removed += self._compact_some(limit - removed)
        if self._ledger is not None and self._ledger.pending:
            removed += self._ledger.fold(now)
        return removed

    # -- internals -------------------------------------------------------------

    def _file_keys(self, keys: list[Key], expires: list[float], first: float, last: float) -> None:
        """File a chunk's keys: one ``extend`` when it all expires in one second, or never (the
        usual warm-boot chunk)."""
        wheel = self._wheel
        if first == NEVER:
            wheel[LASTING].extend(keys)
        elif last != NEVER and int(first) == int(last):
            wheel[int(first)].extend(keys)
        else:
            for key, exp in zip(keys, expires, strict=True):
                wheel[int(exp) if exp != NEVER else LASTING].append(key)

    def _compact_some(self, budget: int) -> int:
        """Drop stale references from the buckets until about ``budget`` references were examined.

        A pass starts from a list of the buckets as they are and works through it
        over as many calls as it takes; returns the references examined. A key
        stays once (within a step), in the bucket where its current entry expires.
        The filter runs at C speed (about 50 ns a reference): compaction is what an
        overwrite costs the wheel, paid later and in bulk. A large bucket (a second
        of fast writes) is done in up to ``COMPACT_STEPS`` steps, so no call holds
        the caller's lock for long.

        A bucket is never shrunk in place: the keys it keeps gather in a new list,
        swapped in by the call that reads its last part (writers hold the lock the
        caller holds, so none appends in between). A ``Walk`` in that bucket reads
        on in the old list, where no key moved. A bucket that sweep took from below
        where the pass got (it was due) or that ``clear`` replaced is left as it is.
        """
        data, wheel, todo = self.data, self._wheel, self._compacting
        if not todo:
            todo.extend(wheel)
            self._compact_pos = 0
            self._compact_from = None
        get = data.get
        work = 0
        while todo and work < budget:
            second = todo[-1]
            bucket = wheel.get(second)
            pos = self._compact_pos
            if bucket is not None and pos == 0:
                self._compact_from, self._compact_into = bucket, []
            if bucket is None or bucket is not self._compact_from or pos > len(bucket):
                self._next_bucket()
                continue
            end = min(len(bucket), pos + max(budget - work, len(bucket) // COMPACT_STEPS + 1))
            part = bucket[pos:end]
            found = list(map(get, part, repeat(_GONE)))
            self._compact_into += dict.fromkeys(compress(part, _at_home(second, found)))
            self._compact_pos = end
            work += len(part)
            if end == len(bucket):
                kept = self._compact_into
                if len(kept) < len(bucket):
                    wheel[second] = kept
                    self._stale -= len(bucket) - len(kept)
                self._next_bucket()
        return work

    def _next_bucket(self) -> None:
        """The compaction pass is done with its current bucket."""
        self._compacting.pop()
        self._compact_pos = 0
        self._compact_from, self._compact_into = None, []

    def _unlink(self, entry: Entry) -> None:
        if self.policy is not None:
            self.policy.remove(entry)
        self._forget(entry)

    def _forget(self, entry: Entry) -> None:
        """Take an entry out of the table; its wheel reference goes stale (not the policy's queues)."""
        del self.data[entry.key]
        if self._ledger is not None:
            self._ledger.remove(entry.key, entry.version, entry)
        self._stale += 1
        if self._stale > STALE_BACKSTOP + 2 * len(self.data):  # no sweeper: a bare Store
            self._compact_some(1 << 62)

    def _bury(self, key: Key, version: int, now: float) -> None:
        if self.tombstone_ttl <= 0:
            return
        self.tombstones[key] = version
        tombs = self._tomb_queue
        tombs.append((now + self.tombstone_ttl, key, version))
        self._tomb_size += _tomb_cost(key)
        cap = self.max_tombstones
        while (cap is not None and len(tombs) > cap) or self._tomb_size > self.tombstone_bytes:
            self._drop_oldest_tombstone()

    def _drop_oldest_tombstone(self) -> None:
        """Over the bound: the oldest record goes, and a live tombstone's version raises its key's floor."""
        _, key, version = self._tomb_queue.popleft()
        self._tomb_size -= _tomb_cost(key)
        if self.tombstones.get(key) != version:
            return  # stale: the key was written or buried again since
        del self.tombstones[key]
        self.tombstones_dropped += 1
        floors = self._floors
        if floors is None:
            floors = self._floors = [0] * FLOOR_SLOTS
        slot = hash(key) & (FLOOR_SLOTS - 1)
        if version > floors[slot]:
            floors[slot] = version

    def _expire(self, entry: Entry, now: float) -> None:
        if self.data.get(entry.key) is not entry:
            return
        self._unlink(entry)
        self._bury(entry.key, entry.version, now)
        self.expirations += 1

    def _evict(self) -> None:
        victim = self.policy.victim()  # type: ignore[union-attr]
        if victim is None:
            return
        self._forget(victim)  # the policy already took it off its queues
        self.evicted[victim.key] = victim.version
        if len(self.evicted) > self.max_entries:  # type: ignore[operator]
            self.evicted.popitem(last=False)
        self.evictions += 1


class Walk:
    """The entries of a store, a slice at a time, read through its wheel without a lock.

    What a donor streams a dump from and a member lists its keys from, instead of a
    list of every entry (``Store.entries``: 10-14 ms per million, on the loop). It
    takes the list of the wheel's seconds when it starts and walks the buckets from
    the latest expiry back (the earliest last: by then sweep may have taken them),
    each in slices of at most ``WALK_SLICE`` keys: ``bucket[i:i + n]`` is one C call, safe
    while writers append, and no key moves to a position of a list that the walk has
    passed (store.py's theory of operation). Each key is looked up in the table, and
    its entry is taken if it is at home in that bucket; stale references are skipped.

    What it yields: every entry that was in the table when the walk started and was
    neither changed nor removed while it ran; only entries that were in the table. A
    write made while it runs may be missed (the key moved to a bucket already walked,
    or to one made since), and a key filed twice in one bucket may come twice: a dump
    is applied by version, so a duplicate costs nothing, and the catch-up that follows
    a dump (from the positions of its ``DumpFrom``, sent before the walk began) brings
    every write made since; a listing misses a write made during it until the next
    repair round, and sends each key at most once per message (replication.py).

    Each bucket is walked as far as it reached when the walk came to it, so keys
    filed since do not keep a walk going however fast writers append.
    """

    def __init__(self, store: Store) -> None:
        self._wheel = store._wheel
        self._get = store.data.get
        self._seconds = sorted(store._wheel)  # one C-level copy of the keys, then the sort
        self._second = 0
        self._bucket: list[Key] = []
        self._pos = self._end = 0
        self._found: list[Entry] = []  # at home, not taken yet

    @property
    def done(self) -> bool:
        """Nothing left to yield. A walk whose last bucket was swept short may say so only
        after a ``take`` that found nothing."""
        return not self._found and not self._seconds and self._pos >= self._end

    def take(self, n: int) -> list[Entry]:
        """Up to ``n`` entries, looking up at most ``max(n, WALK_SLICE)`` keys, a bucket's
        slice at a time (and moving past ``WALK_SLICE`` empty buckets at most): a call costs
        what its ``n`` asks for however many references are stale, and an empty list while
        not ``done`` means it found only stale ones."""
        budget = max(n, WALK_SLICE)
        while len(self._found) < n and budget > 0:
            looked = self._step(min(budget, WALK_SLICE))
            if not looked:
                break  # the end of the walk, or a run of empty buckets
            budget -= looked
        taken = self._found[:n]
        del self._found[:n]
        return taken

    def __iter__(self) -> Iterator[list[Entry]]:
        """The rest of the walk, a slice at a time (some slices may be empty)."""
        while not self.done:
            yield self.take(WALK_SLICE)

    def _step(self, most: int) -> int:
        """Look up the next slice of at most ``most`` keys, moving on to the next bucket if this
        one is done; returns the keys looked up, 0 at the end or after ``WALK_SLICE`` moves."""
        for _ in range(WALK_SLICE):
            if self._pos < self._end:
                part = self._bucket[self._pos : min(self._pos + most, self._end)]
                if part:
                    self._pos += len(part)
                    found = list(map(self._get, part, repeat(_GONE)))
                    self._found += compress(found, _at_home(self._second, found))
                    return len(part)
                # else sweep popped the rest of this bucket (it was due): its entries expired
            if not self._seconds:
                self._pos = self._end = 0
                return 0
            self._second = self._seconds.pop()
            self._bucket = self._wheel.get(self._second) or []
            self._pos, self._end = 0, len(self._bucket)
        return 0


def _value_bytes(value: Any) -> int:
    """``getsizeof`` of a value and what it holds, the first ``VALUE_WALK`` objects of it."""
    total, todo, seen = 0, [value], 0
    while todo and seen < VALUE_WALK:
        item = todo.pop()
        seen += 1
        total += getsizeof(item)
        if isinstance(item, dict):
            todo.extend(islice(chain.from_iterable(item.items()), VALUE_WALK))
        elif isinstance(item, (list, tuple)):
            todo.extend(islice(item, VALUE_WALK))
    return total


def _tomb_cost(key: Key) -> int:
    return TOMBSTONE_OVERHEAD + (8 if isinstance(key, int) else len(key))
