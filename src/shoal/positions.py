"""Write logs with positions: how far a member has received each member's writes.

Theory of operation (Redis's replication offsets and PSYNC are the model). Each
member numbers its own writes to a cache 0, 1, 2, ... as it makes them: a write's
*position* in its *origin*'s stream (an origin is a node id, so positions are per
incarnation). Every member keeps, per cache, what it received of every origin's
stream: the position after the last one received (``end``) and, bounded in bytes,
the recent writes themselves, so it can serve them again: its own to a member that
reconnects, another's as a relay for a member whose origin is down.

A stream reaches a receiver in order (one TCP connection, fed from the origin's
log), so what a member received of an origin is one number. A catch-up asks for
what follows it and gets each missed write once; a dump carries the donor's
numbers (``vector``), so a booting member asks for exactly what followed its dump.
When the log no longer holds a position asked for, the answer says so and the
asker compares digests (anti-entropy) instead.

The bound counts what the log really holds: each op's key and value objects as
Python sizes them, plus the tuples around them.
"""

from __future__ import annotations

import bisect
import sys
from collections import deque
from collections.abc import Iterable, Sequence
from operator import itemgetter
from typing import Any

from .errors import ProtocolError
from .replica import Op

OP_OVERHEAD = 56 + 24 + 40 + 16
"""Bytes a logged op costs besides its key and value objects: its 5-tuple, the expiry float,
the version int and its slot in a batch."""
MAX_ORIGINS = 1024
"""Origins whose positions a cache's log keeps (a cluster is far smaller; incarnations come and
go): past it, the one that wrote least recently is forgotten (a later catch-up of it falls back
to digests)."""
LIVE = -1
"""The position a booting member resumes a stream at: from the sender's end (its dump brings the rest)."""
_MASK64 = (1 << 64) - 1


def op_bytes(op: Op) -> int:
    """What holding ``op`` in a log costs in memory, keys included (a 4 KiB key is 4 KiB)."""
    packed = op[2]
    return OP_OVERHEAD + sys.getsizeof(op[1]) + (sys.getsizeof(packed) if packed is not None else 0)


def ops_bytes(ops: Sequence[Op]) -> int:
    """``sum(map(op_bytes, ops))`` in C-level passes, no Python call per op: every flush
    logs its writes."""
    values = list(map(_VALUE, ops))
    return (
        OP_OVERHEAD * len(ops)
        + sum(map(sys.getsizeof, map(_KEY, ops)))
        + sum(map(sys.getsizeof, values))
        - values.count(None) * _NONE_SIZE
    )


_KEY, _VALUE = itemgetter(1), itemgetter(2)
_NONE_SIZE = sys.getsizeof(None)


class _Origin:
    """One origin's stream as held here: batches ``(start, ops)`` oldest first, and ``end``."""

    __slots__ = ("batches", "head", "end", "forgotten")

    def __init__(self, end: int) -> None:
        self.batches: list[tuple[int, tuple[Op, ...]]] = []
        self.head = 0  # batches before this index were evicted (compacted now and then)
        self.end = end
        self.forgotten = False

    @property
    def first(self) -> int:
        """The oldest position held (``end`` when none is)."""
        return self.batches[self.head][0] if self.head < len(self.batches) else self.end

    def evict_oldest(self) -> None:
        start, _ = self.batches[self.head]
        self.batches[self.head] = (start, ())  # its ops go now, the slot with the list's compaction
        self.head += 1
        if self.head > 64 and self.head * 2 > len(self.batches):
            del self.batches[: self.head]
            self.head = 0


class WriteLog:
    """The writes of one cache by every origin, with positions, bounded by ``limit`` bytes in all."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self.origins: dict[int, _Origin] = {}  # least recently written first
        self._order: deque[tuple[_Origin, int]] = deque()  # every batch held, oldest first: (origin, bytes)

    def end(self, origin: int) -> int:
        """The position after the last write of ``origin`` received here (0: none)."""
        found = self.origins.get(origin)
        return found.end if found is not None else 0

    def vector(self) -> dict[int, int]:
        """How far each origin's stream has been received here (what a dump carries)."""
        return {origin: state.end for origin, state in self.origins.items()}

    def advance(self, origin: int, position: int) -> None:
        """What precedes ``position`` of ``origin`` is held here by other means (a dump)."""
        state = self._origin(origin)
        state.end = max(state.end, position)

    def add(self, origin: int, start: int, ops: list[Op]) -> tuple[list[Op], bool]:
        """Log ``origin``'s ``ops`` at ``start``...; returns the ops that are news here (an
        overlap with what was held is left out) and whether they left a gap after ``end``."""
        state = self._origin(origin)
        skip = state.end - start
        if skip > 0:
            ops = ops[skip:]
            start = state.end
        gap = start > state.end
        if not ops:
            return ops, gap
        state.end = start + len(ops)
        if self.limit > 0:
            batch = tuple(ops)
            size = ops_bytes(batch)
            state.batches.append((start, batch))
            self._order.append((state, size))
            self.size += size
            while self.size > self.limit and self._order:
                oldest, old_size = self._order.popleft()
                if not oldest.forgotten:  # a forgotten origin's bytes were taken off when it was
                    self.size -= old_size
                    oldest.evict_oldest()
        return ops, gap

    def read(self, origin: int, position: int, max_bytes: int, max_ops: int) -> tuple[int, list[Op]]:
        """Ops of ``origin`` from ``position`` on, as many as fit ``max_bytes``/``max_ops`` (at least
        one); returns where they start: past ``position`` when the log no longer holds it."""
        state = self.origins.get(origin)
        if state is None or position >= state.end:
            return position, []
        batches = state.batches
        i = max(state.head, bisect.bisect_right(batches, position, lo=state.head, key=lambda b: b[0]) - 1)
        while i < len(batches) and batches[i][0] + len(batches[i][1]) <= position:
            i += 1
        if i >= len(batches):  # not held here (evicted, or known from a dump): nothing to serve
            return state.end, []
        position = max(position, batches[i][0])  # past an eviction or a gap: the oldest held next
        start = position
        out: list[Op] = []
        size = 0
        while i < len(batches) and len(out) < max_ops and size < max_bytes:
            begin, batch = batches[i]
            if begin > position:  # a gap inside the log: what follows it is the next read's
                break
            for op in batch[position - begin :]:
                out.append(op)
                size += op_bytes(op)
                position += 1
                if len(out) >= max_ops or size >= max_bytes:
                    break
            i += 1
        return start, out

    def forget(self, keep: Iterable[int]) -> None:
        """Over ``MAX_ORIGINS``: forget the origins that wrote least recently, except ``keep``."""
        protected = set(keep)
        for origin in list(self.origins):
            if len(self.origins) <= MAX_ORIGINS:
                return
            if origin not in protected:
                state = self.origins.pop(origin)
                state.forgotten = True
                self.size -= sum(op_bytes(op) for _, batch in state.batches[state.head :] for op in batch)

    def _origin(self, origin: int) -> _Origin:
        state = self.origins.pop(origin, None)
        if state is None:
            state = _Origin(0)
        self.origins[origin] = state  # most recently written last
        return state


def vector_to_wire(vector: dict[int, int]) -> list[int]:
    return [x for origin, position in vector.items() for x in (origin, position)]


def vector_from_wire(flat: list[Any]) -> dict[int, int]:
    """A peer's ``[origin, position, ...]``; repeated origins or bad numbers are refused."""
    if len(flat) % 2 or len(flat) > 2 * MAX_ORIGINS:
        raise ProtocolError(f"positions are [origin, position] pairs, at most {MAX_ORIGINS}")
    vector: dict[int, int] = {}
    for i in range(0, len(flat), 2):
        origin, position = flat[i], flat[i + 1]
        if type(origin) is not int or type(position) is not int or not 0 <= origin <= _MASK64 or position < LIVE:
            raise ProtocolError("a position is an unsigned node id and a count")
        if origin in vector:
            raise ProtocolError("positions name each origin once")
        vector[origin] = position
    return vector
