"""What replication and warm boot may see of a cache: the narrow interface between them.

A hosted ``Cache`` hands the protocol core a ``Replica``, never itself: the core
reads entries, versions, tombstones and the clear watermark, and applies writes,
dump chunks and clears, all through these few calls. Time comes in as ``wall``
(wall-clock seconds, the clock expiry is measured on; the core's ``now`` is the
monotonic clock), so the simulator can pass its own. The implementation (``cache.Replica``) takes the cache's write lock
where it changes or must read a consistent state; everything returned is plain
data or immutable entries.
"""

from __future__ import annotations

from typing import Any, Protocol

from .store import Entry, Key, Walk

# (kind, key, packed value, absolute expiry, version): one mutation as it travels.
Op = tuple[int, Key, bytes | None, float, int]


class ReplicaView(Protocol):
    name: str
    inline: bool
    """Values may travel as they are inside a msgpack frame (the default serializer)."""

    def size(self) -> int:
        """Entries held (a donor's size for warm boot)."""
        ...

    def writes(self) -> int:
        """Writes applied since the cache was made, local and a peer's: how many entries were made."""
        ...

    def approx_bytes(self) -> int:
        """Memory the entries hold, estimated from a sample (``store.Store.approx_bytes``)."""
        ...

    def entries(self) -> list[Entry]:
        """A snapshot: references to the current entries, which never change (10-14 ms per
        million on the caller's loop: a large cache is read with ``walk``)."""
        ...

    def walk(self) -> Walk:
        """The entries a slice at a time, without a lock and without a list of them all
        (``store.Walk``: what it yields and what it may miss)."""
        ...

    def tombstones(self) -> list[tuple[Key, int]]: ...

    def digests(self, wall: float, horizon: int) -> list[int] | None:
        """``digest.digests`` of the entries, kept as writes apply; None when only a scan can tell."""
        ...

    def watermark(self) -> int:
        """The version of the last ``clear()`` applied."""
        ...

    def wants(self, key: Key, version: int) -> bool:
        """A write of ``key`` at ``version`` would be news: newer than held, deleted or evicted."""
        ...

    def holds(self, key: Key, wall: float) -> bool:
        """A live value of ``key`` is held (cluster single flight: no need to load it)."""
        ...

    def ops_for(self, keys: list[Key], wall: float) -> list[Op]:
        """What we hold for ``keys`` as ops: live entries as writes, tombstones as deletes."""
        ...

    def dumps(self, value: Any) -> bytes: ...

    def apply(self, ops: list[Op], wall: float) -> tuple[int, int]:
        """Apply a peer's ops by version; returns (applied, ignored as older)."""
        ...

    def load(
        self,
        keys: list[Key],
        values: list[Any],
        expires: list[Any],
        versions: list[int],
        packed: bool,
        wall: float,
        newest: int | None = None,
    ) -> int:
        """Check a warm-boot dump chunk whole (``check_peer_entries``; ``newest`` as it takes it),
        then merge it by version; returns how many entries were applied."""
        ...

    def sweep(self, wall: float) -> int:
        """Remove a bounded number of expired entries and old tombstones (and fold kept digests)."""
        ...

    def behind(self) -> bool:
        """Sweeping has work left that should not wait a tick (the kept digests after a boot or a burst)."""
        ...
