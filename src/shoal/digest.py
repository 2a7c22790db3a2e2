"""Anti-entropy digests: per-bucket sums of entry hashes, by a scan or kept as writes apply.

Theory of operation. The keyspace is split into ``BUCKETS`` buckets by a stable hash
of the key; a bucket's digest is the sum modulo 2**64 of a 64-bit hash of (key,
version, expiry) of each entry in it that is live (expiry after ``wall``) and settled
(version older than a line, ``horizon``, that the two members of a round agree on).
Two members holding the same entries compute the same digests, whatever order the
writes came in: a sum does not care, and, unlike XOR, does not cancel out pairs.

``digests`` computes them by a scan. A ``Ledger`` keeps them as writes apply, so that
opening a repair round reads 1,024 numbers instead of hashing millions of entries:

- ``sums`` holds the sum over the entries folded so far. Its owner (store.py) only
  appends, per write, the new entry's key and version to the ``added`` columns and the
  key, version and expiry of the entry it replaced or removed to the ``removed`` ones
  (a record is a slot per column, 16 or 24 bytes, not a tuple); ``fold`` hashes them
  into the sums later, a bounded slice per call (the node's housekeeping tick; the
  writer itself only when the tick falls far behind, ``store.FOLD_BACKSTOP``). An
  addition waits ``RIPE`` seconds first, and a removal waits for the addition of its
  entry: an entry replaced before it was folded (a hot key written again) is skipped
  there and cancels out here, never hashed. The queues hold records, never entries: a
  replaced entry and its value are freed at once (a flood of 4 KiB values once grew a
  writer by more than it wrote).
- An entry still unsettled for some round is one whose version is newer than about
  ``WINDOW`` seconds ago. Folded entries that young stay in ``recent`` with their hashes,
  and ``covered`` is a version such that every folded entry of the table newer than it
  is in ``recent`` (an entry folded or dropped from ``recent`` raises it to its version).
  ``read`` subtracts the live entries of ``recent`` at or past the round's line, adds
  the settled, live ones not folded yet (rarely any: a write of the last second is not
  settled), and subtracts the folded removals not folded yet. More pending work than
  ``READ_MAX``, or a backlog of ripe records over ``READ_BACKLOG`` (a warm boot just loaded,
  a burst of writes) raises ``Behind``: the caller
  waits for the tick to fold it (a scan would hash every entry to learn what the fold is
  about to tell). A line at or below ``covered`` (a peer's clock far behind, a burst over
  ``RECENT_MAX``) gets None, and the caller scans as before.
- Expired entries still in the table (not swept yet) are subtracted at read time:
  the owner names the keys due by ``wall`` (its expiry wheel), and each one whose entry
  has expired goes out of the copy of the sums.

The cost moves from the round to the writes: about two hashes (~1 us each) per write of
an entry that lives longer than ``RIPE``, on the loop's tick, instead of one per entry
held per round (2M entries: seconds of CPU every round, ``bench/results/repair.txt``).
So ``read`` costs the writes of the last few seconds plus the unswept expiries, and
equals the scan exactly (``tests/test_digest.py`` checks it against ``digests``).
"""

from __future__ import annotations

import zlib
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from itertools import chain, compress, repeat
from operator import le, not_
from typing import Any

from .clock import COUNTER_BITS, NODE_BITS

BUCKETS = 1024
_BUCKET_BITS = 10  # BUCKETS == 1 << _BUCKET_BITS
_MASK64 = (1 << 64) - 1

WINDOW = 5.0
"""Seconds of writes kept in ``recent``: a round's line is ``SETTLE`` (1 s) back, and a peer's
may be a clock skew further; a line older than the window makes ``read`` answer None."""
RECENT_MAX = 1 << 18
"""Entries ``recent`` holds at most: past it the oldest go, and ``covered`` rises with them."""
FOLD_SLICE = 512
"""Additions, and removals, hashed per ``fold`` call from the housekeeping tick: about 0.7 ms each
on the loop (2,048 took 2.8 ms, the longest step of a donor streaming a dump). A ledger with more
than that to fold is ``behind`` and the node ticks every few ms until it is not."""
SEGMENT = 1 << 15
"""Records per sealed segment of a queue: a segment is dropped whole once folded, so no fold
deletes the front of a long list (which moves the rest: 4 ms a call with 5M records queued, the
longest step of a donor's loop after a boot)."""
READ_MAX = 1 << 17
"""Additions or removals not folded yet that a ``read`` takes into account; more (a warm boot
just loaded, a burst) raises ``Behind``. Most are the last second's writes, newer than the
round's line, which a read passes over a column at a time (``READ_BACKLOG`` bounds the rest)."""
READ_BACKLOG = 1 << 12
"""Records the last ``fold`` left ripe for the next (``Ledger.backlog``) past which a ``read``
raises ``Behind``: a read hashes each settled one as a fold would (about 2 us each: 131,072
held a loop 300 ms), where the tick, ticking fast meanwhile, folds them in a few ms."""
KEEP_FROM = 250_000
"""Entries from which a hosted cache keeps its digests: keeping them costs about two hashes per
write (``bench/results/setcost.txt``), a scan one per entry per round, so a smaller cache scans
(in slices, as before) and a large one, whose scan stalled its loop for seconds, keeps them."""
RIPE = 1.0
"""Seconds an addition waits before it is hashed: a key written again meanwhile cancels out unhashed."""


class Behind(Exception):
    """A ledger has more writes to fold than a read takes into account (``READ_MAX``,
    ``READ_BACKLOG``): ask again once the tick has folded them, rather than scan. After a burst
    of a million writes, members holding 2M entries each scanned every entry while their tick
    folded the same writes."""


def key_hash(key: Any) -> int:
    """A stable 32-bit hash of a key (Python's hash() differs between processes).

    CRC-32 runs in C and is ample for spreading keys over buckets; the digest mixes
    it with the version and expiry into 64 bits.
    """
    if type(key) is str:
        return zlib.crc32(key.encode("utf-8", "surrogatepass"))
    if type(key) is bytes:
        return zlib.crc32(key, 0x62)  # a different seed keeps "a" and b"a" apart
    return zlib.crc32(str(key).encode(), 0x69)


def bucket_of(key: Any) -> int:
    return key_hash(key) % BUCKETS


def horizon_of(ms: int) -> int:
    """The smallest version stamped at wall-clock millisecond ``ms`` (clock.py's layout)."""
    return (ms << COUNTER_BITS) << NODE_BITS


def digests(entries: Iterable[Any], wall: float, horizon: int) -> list[int]:
    """Per-bucket digests of the live entries older than ``horizon``, by a scan.

    Each entry hashes (key, version, expiry) into 64 bits: both halves of the
    128-bit version (hlc << 64 | node) go in, then a splitmix64-style finaliser
    spreads every input bit over the word. Written inline: this loop is hot.
    """
    sums = [0] * BUCKETS
    crc = zlib.crc32
    mask = _MASK64
    never = float("inf")
    for entry in entries:
        if entry > wall and entry.version < horizon:
            key = entry.key
            khash = crc(key.encode("utf-8", "surrogatepass")) if type(key) is str else key_hash(key)
            exp = 0 if entry == never else int(entry * 1000)
            version = entry.version
            h = (
                khash * 0x9E3779B97F4A7C15 + (version >> 64) * 0xD6E8FEB86659FD93 + version + exp * 0xC2B2AE3D27D4EB4F
            ) & mask
            h = ((h ^ (h >> 31)) * 0xBF58476D1CE4E5B9) & mask
            sums[khash % BUCKETS] += h ^ (h >> 29)
    return [d & mask for d in sums]


def _marks(rows: Iterable[tuple[Any, int, float]]) -> list[int]:
    """The hash and bucket of each (key, version, expiry) as one int, ``hash << 10 | bucket``
    (the same hash as ``digests``)."""
    crc = zlib.crc32
    mask = _MASK64
    never = float("inf")
    out: list[int] = []
    append = out.append
    for key, version, expires in rows:
        khash = crc(key.encode("utf-8", "surrogatepass")) if type(key) is str else key_hash(key)
        exp = 0 if expires == never else int(expires * 1000)
        h = (
            khash * 0x9E3779B97F4A7C15 + (version >> 64) * 0xD6E8FEB86659FD93 + version + exp * 0xC2B2AE3D27D4EB4F
        ) & mask
        h = ((h ^ (h >> 31)) * 0xBF58476D1CE4E5B9) & mask
        append(((h ^ (h >> 29)) << _BUCKET_BITS) | (khash % BUCKETS))
    return out


def _rows(entries: Iterable[Any]) -> list[tuple[Any, int, float]]:
    return [(e.key, e.version, e) for e in entries]


class _Segments:
    """A queue of records kept as columns, in segments, oldest first.

    The owner appends to ``tail`` (a list, or an array, per column); ``seal`` makes the tail a
    segment and starts a new one, ``push`` queues a whole segment (a warm boot's chunk, as
    it came: no copy); ``take`` reads from the oldest segment on and drops each one once it
    was read through. Nothing is ever moved: the cost of a call is what it reads.
    """

    def __init__(self, make: Callable[[], tuple[Any, ...]]) -> None:
        self._make = make
        self.tail = make()
        self.sealed: deque[tuple[Any, ...]] = deque()
        self.sealed_len = 0  # records in the sealed segments, those read included
        self.pos = 0  # records read from the oldest segment (the tail while none is sealed)

    def __len__(self) -> int:
        """Records not read yet."""
        return self.sealed_len + len(self.tail[0]) - self.pos

    def seal(self) -> None:
        if len(self.tail[0]):
            self.sealed.append(self.tail)
            self.sealed_len += len(self.tail[0])
            self.tail = self._make()

    def push(self, columns: tuple[Any, ...]) -> None:
        """Queue ``columns`` as a segment, after what the tail holds (kept as they are: the caller
        must not change them)."""
        if len(columns[0]):
            self.seal()
            self.sealed.append(columns)
            self.sealed_len += len(columns[0])

    def take(self, n: int) -> Iterator[tuple[Any, ...]]:
        """The next ``n`` records at most, as rows."""
        parts: list[Iterator[tuple[Any, ...]]] = []
        while n > 0:
            segment = self.sealed[0] if self.sealed else self.tail
            pos, size = self.pos, len(segment[0])
            k = min(n, size - pos)
            if k > 0:
                parts.append(zip(*(column[pos : pos + k] for column in segment), strict=True))
                self.pos = pos = pos + k
                n -= k
            if pos < size:
                break
            if self.sealed:  # read through: dropped whole
                self.sealed.popleft()
                self.sealed_len -= size
                self.pos = 0
            else:  # the tail, read through: emptied in place (the owner appends to these columns)
                for column in segment:
                    del column[:]
                self.pos = 0
                break
        return chain.from_iterable(parts)

    def rest_columns(self) -> tuple[list[Any], ...]:
        """Every record not read yet, as one list per column (nothing is consumed)."""
        first, *others = [*self.sealed, self.tail]
        columns = []
        for i, column in enumerate(first):
            rest = list(column[self.pos :])
            for segment in others:
                rest += segment[i]
            columns.append(rest)
        return tuple(columns)

    def rest(self) -> Iterator[tuple[Any, ...]]:
        """Every record not read yet, as rows (nothing is consumed)."""
        return zip(*self.rest_columns(), strict=True)

    def clear(self) -> None:
        self.sealed.clear()
        self.sealed_len = self.pos = 0
        for column in self.tail:
            del column[:]


class Ledger:
    """The digests of one table, kept as it changes (theory of operation: the module docstring).

    It holds no entry, only (key, version) records: a replaced entry, and its value, is
    freed at once. A (key, version) names one write (a version is never applied twice to a
    key: tombstones and the eviction record refuse it), so the table says whether a record's
    entry is still there: ``table[key].version == version``.

    Additions and removals are queues of columns in segments (``_Segments``): the owner's
    writer appends to the tail's columns inline (``added_keys``, ``added_versions``;
    ``removed_keys``, ``removed_versions``, ``removed_expiries``), ``load`` queues a chunk's
    columns whole, ``fold`` reads from the oldest segment and seals the tail once it holds
    ``SEGMENT`` records. A removal is folded only after the addition of its entry was
    (``_ages``: what each queue held at each fold call), so an entry removed before its
    addition was folded is skipped there and cancels out here, unhashed.
    Not locked: its owner calls it under the same lock as its writes.
    """

    def __init__(self, table: Mapping[Any, Any]) -> None:
        """``table``: key -> entry, the owner's (the same mapping for the ledger's life)."""
        self.table = table
        self.sums = [0] * BUCKETS
        # The queues, as columns: a record costs a list slot per field (16 bytes an addition, 24 a
        # removal) instead of a tuple (64 and 96 with its float): a warm boot of a million entries
        # queued 64 MB of tuples, and ``load`` files a chunk's keys and versions with two extends.
        self._added = _Segments(lambda: ([], []))  # entries added: key, version
        self._removed = _Segments(lambda: ([], [], array("d")))  # entries gone: key, version, expiry
        self._tails()
        self._add_all(table.values())
        # Folded entries newer than WINDOW ago (or than covered), as columns: up to RECENT_MAX
        # (key, version) tuples were GC-tracked objects, and a young collection that met a
        # quarter million of them held a donor's loop 20 ms; strs and ints are not tracked.
        self.recent_keys: list[Any] = []
        self.recent_versions: list[int] = []
        self.recent_marks: list[int] = []  # their hashes, as _marks gives them
        self.covered = 0
        self.broken = False  # an entry no digest can hash (only by going around validation)
        self.backlog = 0  # ripe additions and safe removals the last fold left for the next one
        self._reset_queues()

    @property
    def behind(self) -> bool:
        """The last fold left ripe records for the next one: tick again soon."""
        return self.backlog > 0

    def _tails(self) -> None:
        """What the owner's writer reads, after any change to the queues: their current tails, which
        it appends to, and what their sealed segments hold (read records included), which with a
        tail's length bounds what is pending, for its backstop before it asks for the exact count
        (plain attributes: read on every write)."""
        self.added_keys, self.added_versions = self._added.tail
        self.removed_keys, self.removed_versions, self.removed_expiries = self._removed.tail
        self.added_sealed = self._added.sealed_len
        self.removed_sealed = self._removed.sealed_len

    def _add_all(self, entries: Iterable[Any]) -> None:
        rows = list(entries)
        for i in range(0, len(rows), SEGMENT):
            part = rows[i : i + SEGMENT]
            self._added.push(([e.key for e in part], [e.version for e in part]))
        self._tails()

    def load(self, keys: list[Any], versions: list[int]) -> None:
        """A chunk of entries entered the table (a warm boot): queued as it is, the lists kept."""
        self._added.push((keys, versions))
        self._tails()

    def _reset_queues(self) -> None:
        self._in = self._out = 0  # additions and removals folded since the last reset
        self._ages: deque[tuple[float, int, int]] = deque()  # (wall, appended, removed by then), per fold call
        self._skipped: dict[tuple[Any, int], int] = {}  # records gone before their addition was folded

    def remove(self, key: Any, version: int, expires: float) -> None:
        """The entry of ``key`` at ``version`` left the table (replaced, deleted, expired or evicted)."""
        self.removed_keys.append(key)
        self.removed_versions.append(version)
        self.removed_expiries.append(expires)

    @property
    def pending(self) -> int:
        return self.additions_pending() + self.removals_pending()

    def additions_pending(self) -> int:
        return len(self._added)

    def removals_pending(self) -> int:
        return len(self._removed)

    def reset(self, entries: Iterable[Any]) -> None:
        """The table was rebuilt (a clear): start over from its entries."""
        self.sums = [0] * BUCKETS
        self._added.clear()
        self._removed.clear()
        self._add_all(entries)
        self.recent_keys.clear()
        self.recent_versions.clear()
        self.recent_marks.clear()
        self._reset_queues()

    def fold(self, wall: float, limit: int = FOLD_SLICE, ripe: float = RIPE) -> int:
        """Hash up to ``limit`` additions and ``limit`` removals into the sums; returns how many were handled.

        An addition waits ``ripe`` seconds, so that a key written again meanwhile costs nothing.
        ``behind`` tells whether ripe records were left for the next call: the node then ticks
        every few ms instead of every ``tick_interval`` (at 2,048 a tick every 100 ms, the
        million records of a warm boot took the tick 50 s to fold, every repair round waiting).
        """
        if self.broken:
            self.backlog = 0
            self._added.clear()
            self._removed.clear()
            self._tails()
            self._reset_queues()
            return 0
        for queue in (self._added, self._removed):
            if len(queue.tail[0]) >= SEGMENT:
                queue.seal()
        self._tails()
        appended = self._in + len(self._added)
        gone = self._out + len(self._removed)
        ages = self._ages
        if not ages or ages[-1][1:] != (appended, gone):
            ages.append((wall, appended, gone))
        # What is ripe: the additions the last call at least ``ripe`` ago had seen; what is safe: the
        # removals made by the time the additions folded so far were. Each is read from its own end
        # of ``ages``, not by a pass over all of it per call (a fifth of a donor's tick time, while it
        # streamed 5M fresh from its fill): ``upto`` only grows, so the calls folded are a prefix.
        ready = safe = 0
        for at, upto, _ in reversed(ages):
            if at <= wall - ripe:
                ready = upto
                break
        for _, upto, removals in ages:
            if upto > self._in:
                break
            safe = removals
        cutoff = horizon_of(int((wall - WINDOW) * 1000))
        done = 0
        try:
            take = min(ready - self._in, limit)
            if take > 0:
                self._fold_in(take, cutoff)
                done += take
            take = min(safe - self._out, limit)
            if take > 0:
                self._fold_out(take)
                done += take
        except (OverflowError, ValueError):  # an expiry of inf-like size or NaN: see ``broken``
            self.broken = True
            self.backlog = 0
            self._tails()
            return done
        self._tails()  # the reads dropped segments
        self.backlog = max(0, ready - self._in) + max(0, safe - self._out)
        while len(ages) > 1 and ages[0][1] <= self._in and ages[0][2] <= self._out:
            ages.popleft()
        self._prune(cutoff)
        return done

    def _fold_in(self, take: int, cutoff: int) -> None:
        part = self._added.take(take)
        self._in += take
        get = self.table.get
        live: list[tuple[Any, int, float]] = []
        skipped = self._skipped
        for key, version in part:
            entry = get(key)
            if entry is not None and entry.version == version:
                live.append((key, version, entry))
            else:  # gone already: its removal, folded later, cancels out unhashed
                skipped[(key, version)] = skipped.get((key, version), 0) + 1
        sums, keys, versions, marks = self.sums, self.recent_keys, self.recent_versions, self.recent_marks
        covered = self.covered
        for (key, version, _), mark in zip(live, _marks(live), strict=True):
            sums[mark & (BUCKETS - 1)] += mark >> _BUCKET_BITS
            if version > cutoff:
                keys.append(key)
                versions.append(version)
                marks.append(mark)
            elif version > covered:
                covered = version
        self.covered = covered

    def _fold_out(self, take: int) -> None:
        part: Iterable[tuple[Any, int, float]] = self._removed.take(take)
        self._out += take
        skipped = self._skipped
        if skipped:
            hashed = []
            for row in part:
                record = row[:2]
                left = skipped.get(record)
                if left is None:
                    hashed.append(row)
                elif left > 1:
                    skipped[record] = left - 1
                else:
                    del skipped[record]
            part = hashed
        sums = self.sums
        for mark in _marks(part):
            sums[mark & (BUCKETS - 1)] -= mark >> _BUCKET_BITS

    def _prune(self, cutoff: int) -> None:
        """Drop from ``recent`` its oldest records that are past the window (or over the bound)."""
        versions = self.recent_versions
        over = len(versions) - RECENT_MAX
        n = 0
        covered = self.covered
        for version in versions:
            if n >= over and version > cutoff:
                break
            covered = max(covered, version)
            n += 1
        if n:
            self.covered = covered
            del self.recent_keys[:n], versions[:n], self.recent_marks[:n]

    def read(self, due: Callable[[float], Iterable[Any]], wall: float, horizon: int) -> list[int] | None:
        """The digests ``digests(table.values(), wall, horizon)`` would give, or None when this
        ledger cannot tell (then scan); ``Behind`` while it has too much to fold (then wait).
        ``due(wall)`` names the keys that may have expired.

        What is not folded yet is taken into account here: an addition when it is settled for
        this line (a write of the last second is not: its version is past the line, so this is
        mostly a comparison each), a removal when its addition was folded.
        """
        if self.additions_pending() > READ_MAX or self.removals_pending() > READ_MAX or self.backlog > READ_BACKLOG:
            raise Behind
        if self.broken or horizon <= self.covered:
            return None
        added_keys, added_versions = self._added.rest_columns()
        removed = self._removed.rest()
        get = self.table.get
        # An addition at or past the line (most: the last second's writes) is in no sum and in
        # none of this round's: all it does below is keep its entry out of the corrections for
        # the recent and the expired, as ``out``. Such records are found a column at a time,
        # not in the Python pass (1 us each); one queued twice (a forgotten eviction) takes it.
        added = list(zip(added_keys, added_versions, strict=True))
        young_mask = list(map(le, repeat(horizon), added_versions))
        young = set(compress(added, young_mask))
        if len(young) != sum(young_mask):
            young, young_mask = set(), [False] * len(added)
        # What is pending, as a net count per record: +1 per addition, -1 per removal not
        # cancelled by a skipped addition (a record may come twice: a forgotten eviction).
        net: dict[tuple[Any, int], int] = {}
        for record in compress(added, map(not_, young_mask)):
            net[record] = net.get(record, 0) + 1
        expiry: dict[tuple[Any, int], float] = {}
        skipped = dict(self._skipped)
        for key, version, expires in removed:
            record = (key, version)
            left = skipped.get(record)
            if left:
                skipped[record] = left - 1  # its addition was skipped: nothing was summed
                continue
            net[record] = net.get(record, 0) - 1
            expiry[record] = expires
        for record in young.intersection(net):  # its entry was replaced or removed since: counted as before
            net[record] += 1
        try:
            sums = list(self.sums)
            rows: list[tuple[Any, int, float]] = []
            counts: list[int] = []
            young.difference_update(net)  # those left: each one's entry is there
            out = young  # present entries left out here already
            for record, count in net.items():
                key, version = record
                entry = get(key)
                if entry is not None and entry.version == version:
                    if version >= horizon or entry <= wall:  # held, but not in this round's digest
                        out.add(record)
                        count -= 1
                    if count:
                        rows.append((key, version, entry))
                        counts.append(count)
                elif count:
                    rows.append((key, version, expiry[record]))
                    counts.append(count)
            for count, mark in zip(counts, _marks(rows), strict=True):
                sums[mark & (BUCKETS - 1)] += count * (mark >> _BUCKET_BITS)
            for key, version, mark in zip(self.recent_keys, self.recent_versions, self.recent_marks, strict=True):
                if version < horizon:
                    continue
                record = (key, version)
                if record not in out:
                    entry = get(key)
                    if entry is not None and entry.version == version and entry > wall:
                        sums[mark & (BUCKETS - 1)] -= mark >> _BUCKET_BITS
                        out.add(record)
            # Expired and still held: out (those pending were left out above).
            gone = [
                e for e in map(get, set(due(wall))) if e is not None and e <= wall and (e.key, e.version) not in out
            ]
            for mark in _marks(_rows(gone)):
                sums[mark & (BUCKETS - 1)] -= mark >> _BUCKET_BITS
        except (OverflowError, ValueError):
            self.broken = True
            return None
        mask = _MASK64
        return [s & mask for s in sums]
