"""Which entry leaves when a cache is full: S3-FIFO, and LRU to compare it with.

The policies know entries, never the network or the clock. S3-FIFO was chosen
over LRU by measured hit ratio (``bench/local.py`` prints the comparison on a
Zipf-0.9 trace and on a trace with a one-off scan): a small probationary FIFO
keeps one-hit wonders and scans out of the main queue, and a read hit only bumps
a counter on the entry instead of reordering a list, which keeps ``get`` cheap
and lock-free.

Removal is lazy: an entry deleted or expired elsewhere is marked (``queue = 0``)
and its key skipped when it reaches the head of its queue; the queues are
compacted when such dead keys outnumber the live ones.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable
from operator import attrgetter
from typing import Any, Protocol

GONE, SMALL, MAIN = 0, 1, 2
_KEY = attrgetter("key")
MAX_FREQ = 3


class Evictable(Protocol):
    key: Any
    freq: int
    queue: int


class Policy(Protocol):
    def insert(self, entry: Any) -> None: ...

    def insert_many(self, entries: list[Any]) -> None: ...

    def replace(self, old: Any, new: Any) -> None: ...

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
    hands queue and frequency to the new entry, and the old entry is freed at
    once: holding replaced entries until a compaction kept them alive into the
    oldest GC generation, and the full collections that followed cost more than
    the writes themselves (``bench/local.py``, set on a bounded cache). A key
    removed and written again may be queued twice; its older position counts.
    Without ``lookup`` the policy keeps its own key -> entry table (tests, the
    hit-ratio simulator).
    """

    def __init__(self, capacity: int, small_ratio: float = 0.1, lookup: Callable[[Any], Any] | None = None) -> None:
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
        self._own: dict[Any, Any] | None = None if lookup is not None else {}
        self._lookup: Callable[[Any], Any] = lookup if lookup is not None else self._own.get  # type: ignore[union-attr]

    def insert(self, entry: Any) -> None:
        key = entry.key
        entry.freq = 0
        if self._own is not None:
            self._own[key] = entry
        if key in self._ghost:
            del self._ghost[key]
            entry.queue = MAIN
            self._main.append(key)
            self._main_live += 1
        else:
            entry.queue = SMALL
            self._small.append(key)
            self._small_live += 1

    def insert_many(self, entries: list[Any]) -> None:
        """``insert`` for a chunk of new keys (a warm boot): one ``extend`` when no key is a ghost."""
        ghost = self._ghost
        if self._own is not None or (ghost and not ghost.keys().isdisjoint(map(_KEY, entries))):
            for entry in entries:
                self.insert(entry)
            return
        for entry in entries:
            entry.freq = 0
            entry.queue = SMALL
        self._small.extend(map(_KEY, entries))
        self._small_live += len(entries)

    def replace(self, old: Any, new: Any) -> None:
        """A newer write for the same key takes the old entry's place and history."""
        new.freq = old.freq
        new.queue = old.queue
        old.queue = GONE
        if self._own is not None:
            self._own[new.key] = new

    def hit(self, entry: Any) -> None:
        if entry.freq < MAX_FREQ:
            entry.freq += 1

    def remove(self, entry: Any) -> None:
        if entry.queue == SMALL:
            self._small_live -= 1
        elif entry.queue == MAIN:
            self._main_live -= 1
        entry.queue = GONE
        key = entry.key
        if self._own is not None and self._own.get(key) is entry:
            del self._own[key]
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
                if self._own is not None:
                    del self._own[entry.key]
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
        if self._own is not None:
            self._own.clear()


class LRU:
    """Least recently used, for comparison: every hit reorders, so reads need a lock."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._order: OrderedDict[Any, Any] = OrderedDict()

    def insert(self, entry: Any) -> None:
        entry.queue = MAIN
        self._order[entry.key] = entry

    def insert_many(self, entries: list[Any]) -> None:
        for entry in entries:
            self.insert(entry)

    def replace(self, old: Any, new: Any) -> None:
        old.queue = GONE
        new.queue = MAIN
        self._order[new.key] = new
        self._order.move_to_end(new.key)  # a write is a use

    def hit(self, entry: Any) -> None:
        self._order.move_to_end(entry.key)

    def remove(self, entry: Any) -> None:
        entry.queue = GONE
        self._order.pop(entry.key, None)

    def victim(self) -> Any:
        if not self._order:
            return None
        _, entry = self._order.popitem(last=False)
        entry.queue = GONE
        return entry

    def clear(self) -> None:
        self._order.clear()
