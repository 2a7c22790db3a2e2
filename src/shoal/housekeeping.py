"""The node's chores beside the protocol: the garbage collector, snapshot files, DNS discovery.

None of these decide anything about the cluster; each is a policy around one
resource of the process (the cyclic GC, a file, the resolver), run by the node.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable
from itertools import chain

from . import snapshot
from .replica import Op, ReplicaView
from .status import rss_bytes
from .transport import parse_address

log = logging.getLogger("shoal")

GC_FREEZE_MIN = 50_000
FREEZE_EVERY = 16_384
"""Writes (local or replicated) after which the entries they made are frozen, checked every tick.
Each freeze follows a full collection, which walks what the last one left in sight: every 32,768
writes that took up to 12 ms (replication lag at 10k writes/s with 1M held, p99 6.7 ms and worst
15 ms, against 5.1 and 7.8 after a young collection), every 16,384 at most 5 ms (p99 5.3 ms, worst
9 ms; bench/results/replication.txt). More often freezes more of what the application holds."""
RECLAIM_FIRST = 300.0
"""Seconds after its first freeze before a node may first collect everything frozen (``Collector``)."""
RECLAIM_GROWTH = 64 * 1024 * 1024
"""Growth of the process's resident memory past what its caches hold (these bytes at least, and a
quarter of it) since the last collection of everything frozen, that makes the next worth its cost."""
RECLAIM_GARBAGE = 0.01
"""Frozen garbage, in objects per entry held, that a collection of everything frozen must find for
the next to be worth its cost without that growth."""
RECLAIM_SHARE = 0.01
"""The share of the time that collections of everything frozen may take: one that took 1 s is
followed by another 100 s later at the soonest."""
RECLAIM_COST = 1.5e-6
"""Seconds a collection of everything frozen takes per entry held, at least: 1.3 s at 5M entries
just filled, 7.3 s once they were overwritten (hosted, on a 2-core VM); the last one's, if more."""

Resolver = Callable[[str, int], Awaitable[list[str]]]


class Collector:
    """Keeps Python's cyclic GC off the cached entries.

    A full collection walks every object: with a million entries that is ~0.2 s
    with every thread stopped, the main cause of replication lag spikes. Entries
    never form cycles, so ``gc.freeze()`` (after a full collection, so garbage is
    not frozen with them) moves them out of the collector's sight.
    It is done every ``FREEZE_EVERY`` writes, counted, not by the caches' growth:
    an overwrite makes a new entry as an insert does, and the entries not frozen yet
    are what every full collection walks. After a freeze the oldest generation is
    nearly empty, so CPython's rule for a full collection (a quarter more than the
    oldest generation held) fires often: freezing by 5% of growth once let 100,000
    entries pile up there and be walked every few thousand writes (37% of a
    receiver's time in the collector at 2M entries, pauses of 100 ms).
    While a dump streams in the collector is paused: each collection would walk the
    entries loaded so far. Process-wide, so ``Node(gc_freeze=False)`` turns both off.

    A freeze is process-wide too: it takes the application's objects with the entries,
    and what is frozen is never collected, so a frozen object that later becomes cyclic
    garbage stays. The periodic freeze therefore follows a full collection, not a young
    one: garbage cycles that reached the oldest generation (where they wait for the rare
    full collection) were frozen with the rest, 107,000 of them in 8 s of a test writing
    a million times beside an application dropping one cycle a write. The full
    collection walks what the last freeze left in sight, as the one it replaces would
    have; the collection as a dump begins (``pause``) is a full one for the same reason.

    What stays is what was alive at a freeze and becomes cyclic garbage after it: an
    application's requests in flight at a freeze, dropped later with a cycle among them (a
    traceback, a future's callbacks), 1,200 in 20 s at 10k writes/s with 100 such requests
    in flight. Nothing counts frozen garbage cheaply (``gc.get_freeze_count()`` walks every
    frozen object), so now and then a freeze first unfreezes and collects everything, and
    counts the garbage it found: the one exact count there is. That collection walks every
    entry with every thread stopped, 0.3-1.5 s at 1M entries and 1.3-7.3 s at 5M (more
    the longer they were overwritten; ``bench/results/freeze_leak.txt``). So it comes only
    when it is likely to pay: when the process's resident memory past what its caches hold
    (``held``, their estimate) grew by ``RECLAIM_GROWTH`` and a quarter of it since the last
    one, or that one found garbage objects of ``RECLAIM_GARBAGE`` per entry held or more (an
    application leaking into freezes); not in the first ``RECLAIM_FIRST`` after the first
    freeze, nor more than ``RECLAIM_SHARE`` of the time; and never when it is estimated to
    stop the node longer than ``max_stall`` (``RECLAIM_COST`` per entry, or what the last one
    took per entry if more, the application's objects walked with them): half the failure
    timeout, past which peers take the node for dead. An application that leaks nothing and
    does not grow beside its caches never pays it, unless the caches' estimate of what they
    hold (a sample of 32 entries) is off by a quarter of the process. Frozen garbage is at
    most what the application leaks into freezes between two such collections, or what
    grows the process by a quarter if it leaks slowly; and it is not bounded on a node too
    large to collect within ``max_stall`` (above 1.6M entries with the default 5 s failure
    timeout).
    """

    def __init__(
        self,
        enabled: bool,
        held: Callable[[], int] = lambda: 0,
        *,
        max_stall: float = math.inf,
        clock: Callable[[], float] = time.monotonic,
        rss: Callable[[], int | None] = rss_bytes,
    ) -> None:
        """``held``: bytes the caches hold (their estimate); ``max_stall``: seconds a collection of
        everything frozen may stop the process; ``rss``: the process's resident memory."""
        self.enabled = enabled
        self._held = held
        self.max_stall = max_stall
        self._clock = clock
        self._rss = rss
        self._writes_at = 0
        self._paused = False
        self._was_enabled = True
        self._reclaim_at: float | None = None  # no collection of everything frozen before then
        self._mark: int | None = None  # resident memory past what the caches hold, after the last one
        self._held_most = 0  # the most the caches were read to hold since
        self._leaking = False  # the last one found garbage worth it
        self._cost = RECLAIM_COST  # its seconds per entry
        self.reclaims = 0  # collections of everything frozen, the seconds they took, the longest
        self.reclaim_seconds = 0.0
        self.longest_reclaim = 0.0
        self.reclaimed = 0  # frozen garbage objects they found

    def written(self, total_entries: int, total_writes: int) -> None:
        """The node's tick: the caches hold ``total_entries`` after ``total_writes`` writes ever."""
        if (
            self.enabled
            and not self._paused
            and total_entries >= GC_FREEZE_MIN
            and total_writes - self._writes_at >= FREEZE_EVERY
        ):
            gc.collect()  # a full one: dead cycles must not be frozen (see the class docstring)
            now = self._clock()
            if self._reclaim_at is None:
                self._start(now)
            elif (
                now >= self._reclaim_at
                and self._cost * total_entries <= self.max_stall
                and (self._leaking or self._grown())
            ):
                self._reclaim(now, total_entries)
            # Other threads may run between two calls, the more likely the longer the call before
            # took (a thread waiting for the GIL asks for it after 5 ms): what they dropped meanwhile
            # is young, and a young collection is short, so the freeze right after it keeps half as
            # much garbage (4,300-6,000 cycles left frozen instead of 10,700-11,900 by the leaking
            # application of tests/test_housekeeping.py).
            gc.collect(1)
            gc.freeze()
            self._writes_at = total_writes
            log.debug("gc.freeze() at %d entries, %d writes", total_entries, total_writes)

    def _start(self, now: float) -> None:
        """The first freeze: a collection of everything frozen may come from a while after it."""
        self._reclaim_at = now + RECLAIM_FIRST
        self._mark = self._excess()

    def _grown(self) -> bool:
        """The process grew past what its caches hold since the last collection of everything frozen
        (the caches' own growth is no reason: a cache filling up would pay for one finding nothing).
        What they held at most since counts: memory they gave back stays with the process."""
        rss = self._rss()
        if rss is None:
            return False
        self._held_most = max(self._held_most, self._held())
        if self._mark is None:  # no reading at the last mark: this one is the mark
            self._mark = rss - self._held_most
            return False
        return rss - self._held_most - self._mark >= max(RECLAIM_GROWTH, rss // 4)

    def _excess(self) -> int | None:
        """Resident memory past what the caches hold, now: the mark growth is measured from."""
        rss = self._rss()
        self._held_most = self._held()
        return None if rss is None else rss - self._held_most

    def _reclaim(self, began: float, entries: int) -> None:
        """Collect what is frozen and garbage now (class docstring)."""
        gc.unfreeze()
        found = gc.collect()
        took = self._clock() - began
        self._reclaim_at = began + took / RECLAIM_SHARE
        self._mark = self._excess()
        self._leaking = found >= RECLAIM_GARBAGE * entries
        self._cost = max(RECLAIM_COST, took / entries)
        self.reclaims += 1
        self.reclaim_seconds += took
        self.longest_reclaim = max(self.longest_reclaim, took)
        self.reclaimed += found
        log.info("collected everything frozen: %d garbage objects in %.0f ms", found, took * 1000)

    def streamed(self, total_entries: int, total_writes: int) -> None:
        """A dump finished streaming in, the collector paused since it began: freeze what it brought
        now, before the collector runs again (its first young collection would walk every entry,
        and the freeze at Ready, a catch-up round trip later, all of them again). No collection
        first: ``pause`` collected young garbage as the stream began, and a boot makes next to none
        (none of 200,000 entries' worth), so walking a million entries to find it is not worth it."""
        if self.enabled and total_entries >= GC_FREEZE_MIN:
            gc.freeze()
            self._writes_at = total_writes
            if self._reclaim_at is None:
                self._start(self._clock())
            log.debug("gc.freeze() at %d entries (a dump streamed in)", total_entries)

    def pause(self, paused: bool) -> None:
        """Pause (True) or resume (False) the collector; repeated calls are harmless."""
        if not self.enabled or paused == self._paused:
            return
        self._paused = paused
        if paused:
            self._was_enabled = gc.isenabled()
            gc.collect()  # what ``streamed`` freezes is then what the stream brought, and no dead cycle
            gc.disable()
        elif self._was_enabled:
            gc.enable()


class Snapshots:
    """The snapshot file (snapshot.py) of a node: written periodically and on stop, read at boot."""

    def __init__(
        self, path: str | os.PathLike[str], interval: float, key: bytes | None = None, max_clock_skew: float = 1.0
    ) -> None:
        """``key`` (snapshot.snapshot_key of the cluster key) signs the file and is required to read it."""
        self.path = path
        self.interval = interval
        self._key = key
        self._max_clock_skew = max_clock_skew
        self._read: dict[str, list[Op]] | None = None

    async def write(self, replicas: dict[str, ReplicaView], complete: bool) -> int:
        """Write every cache (on a worker thread: the loop keeps serving).

        Each cache is read by a walk (``store.Walk``), so the file holds every entry that did
        not change while it was written; a key written meanwhile may be in it in its old
        version, its new one, or not at all (a miss after a restart from the file, which is
        the last resort of a cluster that went down whole), and a key may be in it twice
        (the reader applies by version).
        """
        if not complete:
            # A cache still booting holds part of the data at most: keep the last good file.
            log.warning("not writing snapshot %s: a cache has not finished its warm boot", self.path)
            return 0
        # Walks, started here and read on the worker thread: a list of every entry taken here
        # would hold the loop 10-14 ms per million entries.
        caches = [(name, chain.from_iterable(r.walk()), r.dumps) for name, r in replicas.items()]
        try:
            count = await asyncio.to_thread(snapshot.write, self.path, caches, time.time(), self._key)
        except OSError as exc:
            log.error("writing snapshot %s failed: %s", self.path, exc)
            return 0
        log.info("snapshot of %d entries written to %s", count, self.path)
        return count

    async def read(self, name: str) -> list[Op]:
        """Entries of ``name`` from the file, read once; [] if none or corrupt."""
        if self._read is None:
            try:
                self._read = await asyncio.to_thread(
                    snapshot.read, self.path, time.time(), self._key, self._max_clock_skew
                )
            except FileNotFoundError:
                self._read = {}
            except (snapshot.CorruptSnapshot, OSError) as exc:
                log.error("ignoring snapshot: %s", exc)
                self._read = {}
        return self._read.pop(name, [])


async def discover(discovery: str, resolver: Resolver, interval: float, found: Callable[[list[str]], None]) -> None:
    """Re-resolve ``dns:NAME:PORT`` every ``interval`` and report what it names."""
    kind, _, rest = discovery.partition(":")
    if kind != "dns":
        raise ValueError(f"unknown discovery {discovery!r}; expected dns:NAME:PORT")
    name, port = parse_address(rest)
    while True:
        try:
            found(await resolver(name, port))
        except OSError as exc:
            log.warning("DNS discovery of %s failed: %s", name, exc)
        await asyncio.sleep(interval)
