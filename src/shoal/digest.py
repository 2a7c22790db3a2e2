"""Anti-entropy digests: per-bucket sums of entry hashes, by a scan or kept as writes apply.

Theory of operation. The keyspace is split into ``BUCKETS`` buckets by a stable hash
of the key; a bucket's digest is the sum modulo 2**64 of a 64-bit hash of (key,
version, expiry) of each entry in it that is live (expiry after ``wall``) and settled
(version older than a line, ``horizon``, that the two members of a round agree on).
Two members holding the same entries compute the same digests, whatever order the
writes came in: a sum does not care, and, unlike XOR, does not cancel out pairs.

``digests`` computes them by a scan. A ``Ledger`` keeps them as writes apply, so that
opening a repair round reads 1,024 numbers instead of hashing millions of entries:

- ``sums`` holds the sum over every entry of the table. Its owner (store.py) only
  appends, per write, the new entry to ``added`` and the entry it replaced or removed
  to ``removed``; ``fold`` hashes them into the sums later, a bounded slice per call
  (the node's housekeeping tick). A sum folds in any order, so a removal folded before
  the addition it undoes is harmless.
- An entry still unsettled for some round is one whose version is newer than about
  ``WINDOW`` seconds ago. Folded entries that young stay in ``recent`` with their hashes,
  and ``covered`` is a version such that every entry of the table newer than it is in
  ``recent`` (an entry folded or dropped from ``recent`` raises it to its version).
  ``read`` subtracts the live entries of ``recent`` at or past the round's line; a line
  at or below ``covered`` (a peer's clock far behind, a burst over ``RECENT_MAX``) gets
  None, and the caller scans as before.
- Expired entries still in the table (not swept yet) are subtracted at read time:
  the owner names the keys due by ``wall`` (its expiry wheel), and each one whose entry
  has expired goes out of the copy of the sums.

So ``read`` costs the writes of the last few seconds plus the unswept expiries, and
equals the scan exactly (``tests/test_digest.py`` checks it against ``digests``).
"""

from __future__ import annotations

import zlib
from collections import deque
from collections.abc import Callable, Iterable, Mapping
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
FOLD_SLICE = 8192
"""Entries hashed per ``fold`` call from the housekeeping tick (about 5 ms)."""
READ_FOLD_MAX = 32768
"""Entries a ``read`` hashes at most (removals not folded yet, settled additions not folded yet);
more (a warm boot just loaded) makes it answer None, so the round scans while the tick folds."""
RIPE = 1.0
"""Seconds an addition waits before it is hashed: a key written again meanwhile cancels out unhashed."""


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


def _marks(entries: Iterable[Any]) -> list[int]:
    """Each entry's hash and bucket as one int, ``hash << 10 | bucket`` (the same hash as ``digests``)."""
    crc = zlib.crc32
    mask = _MASK64
    never = float("inf")
    out: list[int] = []
    append = out.append
    for entry in entries:
        key = entry.key
        khash = crc(key.encode("utf-8", "surrogatepass")) if type(key) is str else key_hash(key)
        exp = 0 if entry == never else int(entry * 1000)
        version = entry.version
        h = (
            khash * 0x9E3779B97F4A7C15 + (version >> 64) * 0xD6E8FEB86659FD93 + version + exp * 0xC2B2AE3D27D4EB4F
        ) & mask
        h = ((h ^ (h >> 31)) * 0xBF58476D1CE4E5B9) & mask
        append(((h ^ (h >> 29)) << _BUCKET_BITS) | (khash % BUCKETS))
    return out


class Ledger:
    """The digests of one table, kept as it changes (theory of operation: the module docstring).

    Not locked: its owner calls it under the same lock as its writes.
    """

    def __init__(self, entries: Iterable[Any] = ()) -> None:
        self.sums = [0] * BUCKETS
        self.added: list[Any] = list(entries)  # entries new to the table, not folded yet (oldest first)
        self.removed: list[Any] = []  # entries gone from the table, not folded yet
        self.recent: list[Any] = []  # folded entries newer than WINDOW ago (or than covered)
        self.recent_marks: list[int] = []  # their hashes, as _marks gives them
        self.covered = 0
        self.broken = False  # an entry no digest can hash (only by going around validation)
        self._folded = 0  # entries taken from ``added`` so far (folded or cancelled)
        self._ages: deque[tuple[float, int]] = deque()  # (wall, entries appended by then), per fold call

    @property
    def pending(self) -> int:
        return len(self.added) + len(self.removed)

    def reset(self, entries: Iterable[Any]) -> None:
        """The table was rebuilt (a clear): start over from its entries."""
        self.sums = [0] * BUCKETS
        self._folded += len(self.added)
        self.added = list(entries)
        self._folded -= len(self.added)  # they count as appended now
        self.removed.clear()
        self.recent.clear()
        self.recent_marks.clear()

    def fold(self, wall: float, limit: int = FOLD_SLICE, ripe: float = RIPE) -> int:
        """Hash up to about ``limit`` pending entries into the sums; returns how many were handled.

        An entry removed before it was folded cancels out with its addition, unhashed; so
        additions wait ``ripe`` seconds (a key written again meanwhile costs nothing).
        """
        if self.broken:
            self.added.clear()
            self.removed.clear()
            return 0
        appended = self._folded + len(self.added)
        ages = self._ages
        if not ages or ages[-1][1] != appended:
            ages.append((wall, appended))
        done = 0
        try:
            if self.removed:
                done += self._fold_out(limit)
            ready = 0
            while ages and ages[0][0] <= wall - ripe:
                ready = ages.popleft()[1] - self._folded
            if ready > 0 and done < limit:
                take = min(ready, limit - done)
                part = self.added[:take]
                del self.added[:take]
                self._folded += take
                self._fold_in(part, horizon_of(int((wall - WINDOW) * 1000)))
                done += take
        except (OverflowError, ValueError):  # an expiry of inf-like size or NaN: see ``broken``
            self.broken = True
            return done
        self._prune(horizon_of(int((wall - WINDOW) * 1000)))
        return done

    def _fold_out(self, limit: int) -> int:
        """Removals: those of entries still pending cancel out; the others are hashed out of the sums."""
        part = self.removed[-limit:]
        del self.removed[-limit:]
        if self.added:
            pending = set(map(id, self.added))
            cancelled = {id(e) for e in part if id(e) in pending}
            if cancelled:
                part = [e for e in part if id(e) not in cancelled]
                kept = [e for e in self.added if id(e) not in cancelled]
                self._folded += len(self.added) - len(kept)
                self.added = kept
        sums = self.sums
        for mark in _marks(part):
            sums[mark & (BUCKETS - 1)] -= mark >> _BUCKET_BITS
        return len(part)

    def _fold_in(self, part: list[Any], cutoff: int) -> None:
        sums, recent, marks = self.sums, self.recent, self.recent_marks
        covered = self.covered
        for entry, mark in zip(part, _marks(part), strict=True):
            sums[mark & (BUCKETS - 1)] += mark >> _BUCKET_BITS
            version = entry.version
            if version > cutoff:
                recent.append(entry)
                marks.append(mark)
            elif version > covered:
                covered = version
        self.covered = covered

    def _prune(self, cutoff: int) -> None:
        """Drop from ``recent`` its oldest entries that are past the window (or over the bound)."""
        recent = self.recent
        over = len(recent) - RECENT_MAX
        n = 0
        covered = self.covered
        for entry in recent:
            if n >= over and entry.version > cutoff:
                break
            covered = max(covered, entry.version)
            n += 1
        if n:
            self.covered = covered
            del recent[:n]
            del self.recent_marks[:n]

    def read(
        self, data: Mapping[Any, Any], due: Callable[[float], Iterable[Any]], wall: float, horizon: int
    ) -> list[int] | None:
        """The digests ``digests(data.values(), wall, horizon)`` would give, or None when this
        ledger cannot tell (then scan). ``due(wall)`` names the keys that may have expired.

        Entries not folded yet are added here when settled for this line: a write of the last
        second is not (its version is past the line), so this is mostly a comparison each.
        """
        if self.broken or len(self.removed) > READ_FOLD_MAX:
            return None
        try:
            while self.removed:
                self._fold_out(READ_FOLD_MAX)
            if horizon <= self.covered:
                return None
            get = data.get
            added = [e for e in self.added if e.version < horizon and e > wall and get(e.key) is e]
            if len(added) > READ_FOLD_MAX:  # a warm boot just loaded: the tick folds it, scan meanwhile
                return None
            sums = list(self.sums)
            for mark in _marks(added):
                sums[mark & (BUCKETS - 1)] += mark >> _BUCKET_BITS
            for entry, mark in zip(self.recent, self.recent_marks, strict=True):
                if entry.version >= horizon and entry > wall and get(entry.key) is entry:
                    sums[mark & (BUCKETS - 1)] -= mark >> _BUCKET_BITS
            pending = set(map(id, self.added))
            gone = [
                e for e in map(get, set(due(wall))) if e is not None and e <= wall and id(e) not in pending
            ]  # expired, still held, and in the sums
            for mark in _marks(gone):
                sums[mark & (BUCKETS - 1)] -= mark >> _BUCKET_BITS
        except (OverflowError, ValueError):
            self.broken = True
            return None
        mask = _MASK64
        return [s & mask for s in sums]
