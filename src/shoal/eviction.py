"""Which entry leaves when a cache is full: S3-FIFO, and LRU to compare it with.

The policies know entries, never the network or the clock. S3-FIFO was chosen
over LRU by measured hit ratio (``bench/local.py`` prints the comparison on a
Zipf-0.9 trace and on a trace with a one-off scan): a small probationary FIFO
keeps one-hit wonders and scans out of the main queue, and a read hit only bumps
a counter on the entry instead of reordering a list, which keeps ``get`` cheap
and lock-free.

Removal is lazy: an entry deleted or expired elsewhere is marked (``queue =
GONE``) and its key skipped when it reaches the head of its queue; the queues are
compacted when such dead keys outnumber the live ones.

The owner (``store.Store``) drives a policy only through the ``Policy`` methods,
with entries it has just made: ``freq`` and ``queue`` 0, as ``Entry`` makes them.
S3-FIFO's SMALL is 0 so that a new entry already stands where a new key goes,
and a warm-boot chunk of thousands of new keys is queued in one ``extend``. The
queues hold keys and find entries through the owner's ``lookup``, so a newer
write for a key needs no call: the owner gives the new entry the old one's
``freq`` and ``queue``, and to the policy it is the same key, where it was.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any, Protocol

SMALL, MAIN, GONE = 0, 1, 2
MAX_FREQ = 3


class Policy(Protocol):
    def insert(self, entry: Any) -> None: ...

    def insert_many(self, keys: list[Any], entries: list[Any]) -> None: ...

    def hit(self, entry: Any) -> None: ...

    def remove(self, entry: Any) -> None: ...

    def victim(self) -> Any: ...

    def clear(self) -> None: ...


class S3FIFO:
    """S3-FIFO (Yang et al., SOSP 2023): small FIFO, main FIFO, ghost of small's victims.

    ``victim()`` picks the entry to evict; the caller removes it from its table. A
    read hit is ``entry.freq = min(entry.freq + 1, 3)``, done by the caller inline.

    The queues hold keys, not entries, and ``lookup`` (the owner's ``dict.get``)
    finds a key's current entry when it reaches the head. So an overwrite only
    hands queue and frequency to the new entry (the owner does), and the old entry is
    freed at once: holding replaced entries until a compaction would keep them alive
    into the oldest GC generation, where the full collections cost more than the
    writes themselves (``bench/local.py``, set on a bounded cache). A key
    removed and written again may be queued twice; its older position counts.
    """

    def __init__(self, capacity: int, lookup: Callable[[Any], Any], small_ratio: float = 0.1) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._small_target = max(1, int(capacity * small_ratio))
        self._small: deque[Any] = deque()
        self._main: deque[Any] = deque()
        self._small_live = 0
        self._main_live = 0
        self._ghost: OrderedDict[Any, None] = OrderedDict()
        self._ghost_cap = max(1, capacity - self._small_target)
        self._lookup = lookup

    def insert(self, entry: Any) -> None:
        """A new entry, as its owner made it (``queue`` 0: SMALL already, unless its key is a ghost)."""
        key = entry.key
        if key in self._ghost:
            del self._ghost[key]
            entry.queue = MAIN
            self._main.append(key)
            self._main_live += 1
        else:
            self._small.append(key)
            self._small_live += 1

    def insert_many(self, keys: list[Any], entries: list[Any]) -> None:
        """``insert`` for a chunk of new entries (a warm boot) and their keys, in the same order:
        one ``extend`` when no key is a ghost.

        The entries are as their owner made them (``freq`` and ``queue`` 0, that is, SMALL).
        """
        ghost = self._ghost
        if ghost and not ghost.keys().isdisjoint(keys):
            for entry in entries:
                self.insert(entry)
            return
        self._small.extend(keys)
        self._small_live += len(entries)

    def hit(self, entry: Any) -> None:
        if entry.freq < MAX_FREQ:
            entry.freq += 1

    def remove(self, entry: Any) -> None:
        if entry.queue == SMALL:
            self._small_live -= 1
        elif entry.queue == MAIN:
            self._main_live -= 1
        entry.queue = GONE
        self._maybe_compact()

    def _maybe_compact(self) -> None:
        """Compact once dead keys exceed the live ones (and 1024)."""
        if len(self._small) + len(self._main) > 2 * (self._small_live + self._main_live) + 1024:
            self._compact()

    def victim(self) -> Any:
        """The entry to evict, already unlinked from the queues; None if empty."""
        while self._small_live or self._main_live:
            if self._small_live >= self._small_target or not self._main_live:
                entry = self._from_small()
            else:
                entry = self._from_main()
            if entry is not None:
                return entry
        return None

    def _from_small(self) -> Any:
        small, lookup = self._small, self._lookup
        while small:
            key = small.popleft()
            entry = lookup(key)
            if entry is None or entry.queue != SMALL:
                continue  # removed, moved to main, or a second position of a key written again
            self._small_live -= 1
            if entry.freq > 0:
                entry.freq = 0
                entry.queue = MAIN
                self._main.append(key)
                self._main_live += 1
                continue
            entry.queue = GONE
            self._ghost[key] = None
            if len(self._ghost) > self._ghost_cap:
                self._ghost.popitem(last=False)
            return entry
        return None

    def _from_main(self) -> Any:
        main, lookup = self._main, self._lookup
        while main:
            key = main.popleft()
            entry = lookup(key)
            if entry is None or entry.queue != MAIN:
                continue
            if entry.freq > 0:
                entry.freq -= 1
                main.append(key)
                continue
            self._main_live -= 1
            entry.queue = GONE
            return entry
        return None

    def _compact(self) -> None:
        """Keep each live key once, at its oldest position in its queue."""
        lookup = self._lookup
        for name, queue in (("_small", SMALL), ("_main", MAIN)):
            kept: dict[Any, None] = {}
            for key in getattr(self, name):
                entry = lookup(key)
                if entry is not None and entry.queue == queue and key not in kept:
                    kept[key] = None
            setattr(self, name, deque(kept))

    def clear(self) -> None:
        lookup = self._lookup
        for key in (*self._small, *self._main):
            entry = lookup(key)
            if entry is not None:
                entry.queue = GONE
        self._small.clear()
        self._main.clear()
        self._small_live = self._main_live = 0
        self._ghost.clear()


class LRU:
    """Least recently used, for comparison: every hit reorders, so reads need a lock."""

    def __init__(self, capacity: int, lookup: Callable[[Any], Any]) -> None:
        self.capacity = capacity
        self._order: OrderedDict[Any, None] = OrderedDict()
        self._lookup = lookup

    def insert(self, entry: Any) -> None:
        entry.queue = MAIN
        self._order[entry.key] = None

    def insert_many(self, keys: list[Any], entries: list[Any]) -> None:
        for entry in entries:
            self.insert(entry)

    def hit(self, entry: Any) -> None:
        self._order.move_to_end(entry.key)

    def remove(self, entry: Any) -> None:
        entry.queue = GONE
        self._order.pop(entry.key, None)

    def victim(self) -> Any:
        if not self._order:
            return None
        key, _ = self._order.popitem(last=False)
        entry = self._lookup(key)
        entry.queue = GONE
        return entry

    def clear(self) -> None:
        self._order.clear()
