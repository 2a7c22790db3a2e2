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
of work per call. Eviction (``max_entries``) is local and recorded in ``evicted``,
so anti-entropy can tell "evicted on purpose" from "never received".

The store does no locking and no I/O; ``Cache`` serialises writers around it.
"""

from __future__ import annotations

import heapq
import math
from collections import OrderedDict, deque
from typing import Any

from .eviction import S3FIFO, Policy

Key = str | bytes | int
NEVER = math.inf

# The kinds of mutation a store applies, as they travel between members.
WRITE, DELETE, CLEAR = 0, 1, 2


class Entry(float):
    """One cached value; the float itself is the absolute expiry.

    Subclassing float keeps the expiry inside the entry object, so the hot read
    path (``entry > now``) touches one object instead of two: on a large cache
    that is one cache miss less per ``get``. Key, value, version and expiry never
    change after creation (a newer write makes a new entry), so a reader on
    another thread never sees half a write; only the eviction bookkeeping
    (``freq``, ``queue``) is mutable. ``queue`` is set by the eviction policy when
    the store has one; its expiry-wheel bucket is ``int(entry)``, derived, not kept.
    """

    __slots__ = ("key", "value", "version", "freq", "queue")

    key: Key
    value: Any
    version: int
    freq: int
    queue: int

    def __new__(cls, key: Key, value: Any, expires: float, version: int) -> Entry:
        entry = float.__new__(cls, expires)
        entry.key = key
        entry.value = value
        entry.version = version
        entry.freq = 0
        return entry

    @property
    def expires(self) -> float:
        return float(self)

    def __repr__(self) -> str:
        return f"Entry({self.key!r}, {self.value!r}, expires={float(self)}, version={self.version})"


class Store:
    def __init__(
        self,
        max_entries: int | None = None,
        *,
        tombstone_ttl: float = 0.0,
        policy: Policy | None = None,
    ) -> None:
        if max_entries is not None and max_entries < 1:
            raise ValueError("max_entries must be a positive int or None")
        self.data: dict[Key, Entry] = {}
        self.max_entries = max_entries
        self.tombstone_ttl = tombstone_ttl
        self.tombstones: dict[Key, int] = {}
        self._tomb_queue: deque[tuple[float, Key, int]] = deque()
        self.watermark = 0
        self.policy: Policy | None = policy
        if policy is None and max_entries is not None:
            self.policy = S3FIFO(max_entries)
        # key -> version of entries evicted on purpose, bounded like a ghost queue.
        self.evicted: OrderedDict[Key, int] = OrderedDict()
        self._wheel: dict[int, dict[Key, Entry]] = {}
        self._wheel_due: list[int] = []
        self.evictions = 0
        self.expirations = 0

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
        return max(self.tombstones.get(key, 0), self.watermark)

    def entries(self) -> list[Entry]:
        """A cheap snapshot (references, no copies) of the current entries."""
        return list(self.data.values())

    # -- writing ---------------------------------------------------------------

    def write(self, key: Key, value: Any, expires: float, version: int, now: float) -> bool:
        """Apply a write if it is the newest the store has seen for key."""
        if version <= self.watermark:
            return False
        old = self.data.get(key)
        if old is not None:
            if version <= old.version:
                return False
            if expires <= now:  # newest, but already expired: the old entry goes, nothing stays
                self._unlink(old)
                self._bury(key, version, now)
                return True
            entry = Entry(key, value, expires, version)
            self.data[key] = entry
            if self.policy is not None:
                self.policy.replace(old, entry)
            self._file(entry, old)
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
        if expires <= now:
            self._bury(key, version, now)  # newest, but already expired: nothing to hold
            return True
        entry = Entry(key, value, expires, version)
        self.data[key] = entry
        self._file(entry)
        policy = self.policy
        if policy is not None:
            if self.evicted:
                self.evicted.pop(key, None)
            policy.insert(entry)
            if len(self.data) > self.max_entries:  # type: ignore[operator]
                self._evict()
        return True

    def load(self, keys: list[Key], values: list[Any], expires: list[float], versions: list[int], now: float) -> int:
        """Apply a chunk of a warm-boot dump; the same rule as ``write``, fewer steps per entry.

        Most dump entries are keys the store has never seen, so that case is inlined;
        anything else goes through ``write``. Returns how many were applied.
        """
        data, tombstones, evicted, watermark = self.data, self.tombstones, self.evicted, self.watermark
        policy, wheel = self.policy, self._wheel
        applied = 0
        for key, value, exp, version in zip(keys, values, expires, versions, strict=True):
            if exp <= now or version <= watermark:
                continue
            if key in data or (tombstones and key in tombstones) or (evicted and key in evicted):
                applied += self.write(key, value, exp, version, now)
                continue
            entry = Entry(key, value, exp, version)
            data[key] = entry
            if exp != NEVER:
                second = int(exp)
                bucket = wheel.get(second)
                if bucket is None:
                    bucket = wheel[second] = {}
                    heapq.heappush(self._wheel_due, second)
                bucket[key] = entry
            if policy is not None:
                policy.insert(entry)
                if len(data) > self.max_entries:  # type: ignore[operator]
                    self._evict()
            applied += 1
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
        self._wheel_due.clear()
        if self.policy is not None:
            self.policy.clear()
        self.evicted.clear()
        for entry in survivors:
            self.data[entry.key] = entry
            self._file(entry)
            if self.policy is not None:
                self.policy.insert(entry)
        self.tombstones = {k: v for k, v in self.tombstones.items() if v > version}
        return True

    # -- housekeeping ----------------------------------------------------------

    def sweep(self, now: float, limit: int = 2000) -> int:
        """Remove up to ``limit`` due entries and purge old tombstones.

        Bounded so a caller can hold its lock for a few milliseconds at most and
        call again.
        """
        removed = 0
        due = self._wheel_due
        while due and due[0] + 1 <= now and removed < limit:
            bucket = self._wheel.get(due[0])
            if not bucket:
                self._wheel.pop(heapq.heappop(due), None)
                continue
            while bucket and removed < limit:
                _, entry = bucket.popitem()
                self._expire(entry, now)
                removed += 1
        tombs = self._tomb_queue
        while tombs and tombs[0][0] <= now and removed < limit:
            _, key, version = tombs.popleft()
            if self.tombstones.get(key) == version:
                del self.tombstones[key]
            removed += 1
        return removed

    def count_live(self, now: float) -> int:
        """Exact number of unexpired entries: sweep what is due, then check this second."""
        while self.sweep(now, limit=1 << 30):
            pass
        current = self._wheel.get(int(now))
        expired = sum(1 for e in current.values() if e <= now) if current else 0
        return len(self.data) - expired

    # -- internals -------------------------------------------------------------

    def _file(self, entry: Entry, old: Entry | None = None) -> None:
        """Put the entry in the wheel bucket of its expiry second, in place of ``old`` (same key)."""
        if old is not None and old != NEVER and (entry == NEVER or int(entry) != int(old)):
            self._unfile(old)
        if entry != NEVER:
            second = int(entry)
            bucket = self._wheel.get(second)
            if bucket is None:
                bucket = self._wheel[second] = {}
                heapq.heappush(self._wheel_due, second)
            bucket[entry.key] = entry

    def _unfile(self, entry: Entry) -> None:
        if entry != NEVER:
            bucket = self._wheel.get(int(entry))
            if bucket is not None and bucket.get(entry.key) is entry:
                del bucket[entry.key]

    def _unlink(self, entry: Entry) -> None:
        if self.policy is not None:
            self.policy.remove(entry)
        self._forget(entry)

    def _forget(self, entry: Entry) -> None:
        """Take an entry out of the table and the wheel (not the policy's queues)."""
        del self.data[entry.key]
        self._unfile(entry)

    def _bury(self, key: Key, version: int, now: float) -> None:
        if self.tombstone_ttl <= 0:
            return
        self.tombstones[key] = version
        self._tomb_queue.append((now + self.tombstone_ttl, key, version))

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
