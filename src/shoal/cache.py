"""The cache a caller uses: reads from local memory, writes stamped and handed on.

A ``Cache`` works alone (local only) or hosted by a ``Node`` (``hosted()``), which
connects its ``Replica`` so every local write is also queued for the other
members. The public class is only the caller's API; what the protocol core sees
of a cache is the ``Replica`` (replica.py), a separate object. Reads take no
lock: the GIL makes a dict lookup atomic, and entries are only changed under the
write lock. Everything that must happen at most once per key per process (the
loader in ``fetch``) goes through ``singleflight``; on a Node, once per key per
cluster (the node's ``singleflight.Cluster``).

Expired entries go lazily on read; a hosted cache is swept by its node's
housekeeping, a local one a bounded slice every ``_SWEEP_EVERY`` writes, so a
plain ``Cache()`` starts no thread.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import os
import threading
import time
from collections.abc import Callable, Generator, Hashable, Iterable, Iterator, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar, cast

from . import singleflight
from .clock import HybridClock
from .digest import KEEP_FROM
from .errors import BackingError, InvalidEntry
from .replica import Op
from .serializer import MsgpackSerializer, Serializer
from .singleflight import Cluster, Flights
from .store import CLEAR, DELETE, NEVER, WRITE, Entry, Key, Store, Walk
from .validation import (
    DEFAULT_MAX_CLOCK_SKEW,
    DEFAULT_MAX_VALUE_SIZE,
    MAX_KEY_SIZE,
    check_key,
    check_peer_entries,
    check_value_size,
    ttl_seconds,
)

if TYPE_CHECKING:
    from .backing import Backing

__all__ = ["DEFAULT", "Cache"]

F = TypeVar("F", bound=Callable[..., Any])

_SWEEP_EVERY = 1024  # a local cache sweeps a bounded slice once per this many writes
_SWEEP_SLICE = 256


class _Default:
    def __repr__(self) -> str:
        return "DEFAULT"


DEFAULT: Any = _Default()
"""Use the cache's own ttl."""

_MISSING: Any = singleflight.MISSING
TTL = float | int | timedelta | None
_check_key = check_key  # validation.py: the one check every entry point shares
_seconds = ttl_seconds


class Cache:
    """A TTL cache with bounded size, single-flight loads and (in a Node) replication.

    Values returned by ``get`` are the stored objects themselves, shared by every
    caller: treat them as immutable. On other members they arrive through the
    serializer (msgpack turns tuples into lists).
    """

    def __init__(
        self,
        ttl: TTL = None,
        max_entries: int | None = None,
        *,
        serializer: Serializer | None = None,
        name: str = "default",
        timer: Callable[[], float] = time.time,
        max_value_size: int = DEFAULT_MAX_VALUE_SIZE,
        max_clock_skew: float = DEFAULT_MAX_CLOCK_SKEW,
    ) -> None:
        """``timer`` is the wall clock expiry is measured on (seconds since the epoch:
        expiries travel between members as absolute times); pass a fake one in tests."""
        self.name = name
        self._ttl = _seconds(ttl)
        self._max_entries = max_entries
        self._serializer: Serializer = serializer or MsgpackSerializer()
        self._wall = timer
        self.max_value_size = max_value_size
        self.max_clock_skew = max_clock_skew
        self._clock = HybridClock(int.from_bytes(os.urandom(8), "big"), timer, max_clock_skew)
        self._store = Store(max_entries)
        self._data = self._store.data
        self._lock = threading.Lock()
        self._flights = Flights()
        self._replicate: Callable[[Op], None] | None = None
        self._cluster: Cluster | None = None  # a Node's: single flight across members
        self._backing: Backing | None = None  # a Node's shared tier (backing.py): Redis behind the local copy
        self._hosted = False
        # itertools.count: next() is atomic under the GIL and allocates nothing lasting,
        # so the hit path counts exactly without a lock.
        self._hits = itertools.count()
        self._misses = self._sets = self._deletes = 0
        self._loads = self._load_errors = 0
        self.get = self._fast_get()  # type: ignore[method-assign,assignment]

    @property
    def serializer(self) -> Serializer:
        return self._serializer

    # -- reads -----------------------------------------------------------------

    def get(self, key: Key, default: Any = None) -> Any:
        """The live value for key, or default. (Replaced per instance by ``_fast_get``.)"""
        return self._fast_get()(key, default)

    def _fast_get(self) -> Callable[[Key, Any], Any]:
        """``get`` as a closure: the hot path reads locals instead of attributes (~20% faster)."""
        lookup = self._data.get
        wall = self._wall
        hit = self._hits.__next__
        miss = self._miss

        def get(key: Key, default: Any = None) -> Any:
            entry = lookup(key)
            if entry is not None and entry > wall():  # an entry is its own expiry
                if entry.freq < 3:
                    entry.freq += 1
                hit()
                return entry.value
            return miss(key, default)

        get.__doc__ = Cache.get.__doc__
        return get

    def _miss(self, key: Key, default: Any) -> Any:
        with self._lock:
            entry = self._store.live(key, self._wall())
            if entry is not None:  # written between our lookup and the lock
                next(self._hits)
                return entry.value
            self._misses += 1
        if self._backing is not None:
            return self._read_through(key, default)
        return default

    def get_many(self, keys: Iterable[Key]) -> dict[Key, Any]:
        found = {}
        for key in keys:
            value = self.get(key, _MISSING)
            if value is not _MISSING:
                found[key] = value
        return found

    def __contains__(self, key: object) -> bool:
        entry = self._data.get(key)  # type: ignore[call-overload]
        return entry is not None and entry > self._wall()

    def ttl(self, key: Key) -> float | None:
        """Seconds left before key expires; None if it never does."""
        now = self._wall()
        entry = self._data.get(key)
        if entry is None or entry <= now:
            raise KeyError(key)
        return None if entry == NEVER else entry - now

    def __len__(self) -> int:
        """Entries held: O(1), so it may count entries that expired since the last sweep
        (``keys()``, ``items()`` and ``in`` never show those)."""
        return len(self._data)

    def keys(self) -> list[Key]:
        now = self._wall()
        return [e.key for e in self._store.entries() if e > now]

    def items(self) -> list[tuple[Key, Any]]:
        now = self._wall()
        return [(e.key, e.value) for e in self._store.entries() if e > now]

    # -- writes ----------------------------------------------------------------

    def _expires(self, ttl: TTL, now: float) -> float:
        seconds = self._ttl if ttl is DEFAULT else _seconds(ttl)
        return NEVER if seconds is None else now + seconds

    def set(self, key: Key, value: Any, ttl: TTL = DEFAULT) -> None:
        if type(key) is not str or len(key) > MAX_KEY_SIZE or not key.isascii():  # the common case inline
            _check_key(key)
        packed = self._serializer.dumps(value)
        if type(packed) is not bytes or len(packed) > self.max_value_size:
            check_value_size(packed, self.max_value_size)
        if self._backing is not None:
            self._write_through(key, value, packed, ttl)
            return
        with self._lock:
            now = self._wall()
            if ttl is DEFAULT:
                expires = NEVER if self._ttl is None else now + self._ttl
            else:
                expires = self._expires(ttl, now)
            version = self._clock.stamp()
            self._store.write(key, value, expires, version, now)
            self._sets += 1
            if not self._sets % _SWEEP_EVERY and not self._hosted:
                self._store.sweep(now, _SWEEP_SLICE)
        if self._replicate is not None:
            self._replicate((WRITE, key, packed, expires, version))

    def add(self, key: Key, value: Any, ttl: TTL = DEFAULT) -> bool:
        """Set key only if this member holds no live value for it."""
        _check_key(key)
        packed = self._serializer.dumps(value)
        check_value_size(packed, self.max_value_size)
        if self._backing is not None:  # absent in the shared store, not just here
            return self._write_through(key, value, packed, ttl, only_new=True)
        with self._lock:
            now = self._wall()
            if self._store.live(key, now) is not None:
                return False
            expires = self._expires(ttl, now)
            version = self._clock.stamp()
            self._store.write(key, value, expires, version, now)
            self._sets += 1
        if self._replicate is not None:
            self._replicate((WRITE, key, packed, expires, version))
        return True

    def set_many(self, mapping: Mapping[Key, Any], ttl: TTL = DEFAULT) -> None:
        for key, value in mapping.items():
            self.set(key, value, ttl)

    def delete(self, key: Key) -> bool:
        """Delete everywhere; True if this member held a live value."""
        _check_key(key)  # the delete travels to every member
        stored = False
        if self._backing is not None:
            with self._lock:
                version = self._clock.stamp()  # before the store: a change announced after it wins
            stored = self._backing.delete(key)
        with self._lock:
            now = self._wall()
            removed = self._store.live(key, now) is not None
            if self._backing is None:
                version = self._clock.stamp()
            self._store.delete(key, version, now)
            if removed:
                self._deletes += 1
        if self._replicate is not None:
            self._replicate((DELETE, key, None, NEVER, version))
        return removed or stored

    def delete_many(self, keys: Iterable[Key]) -> int:
        return sum(self.delete(key) for key in keys)

    def touch(self, key: Key, ttl: TTL = DEFAULT) -> bool:
        """Give a live entry a new expiry, everywhere; False if there is none."""
        if self._backing is not None:
            now = self._wall()
            expires = self._expires(ttl, now)
            if not self._backing.expire(key, None if expires == NEVER else expires - now):
                return False
        with self._lock:
            now = self._wall()
            entry = self._store.live(key, now)
            if entry is None:
                return self._backing is not None  # touched in the store, not held here
            value = entry.value
            expires = self._expires(ttl, now)
            version = self._clock.stamp()
            self._store.write(key, value, expires, version, now)
        if self._replicate is not None:
            self._replicate((WRITE, key, self._serializer.dumps(value), expires, version))
        return True

    def clear(self) -> None:
        """Remove every entry older than now, on every member (the local tier only: a backing
        store is shared with others and is not shoal's to empty)."""
        with self._lock:
            version = self._clock.stamp()
            self._store.clear(version)
        if self._replicate is not None:
            self._replicate((CLEAR, b"", None, NEVER, version))

    # -- loads -----------------------------------------------------------------

    def fetch(self, key: Key, loader: Callable[[Key], Any], ttl: TTL = DEFAULT) -> Any:
        """The cached value, or ``loader(key)``'s, called once per key however many wait.

        On a Node (``single_flight="cluster"``) once for the whole cluster: callers on
        other members wait for the value to replicate, and a loader that raised there
        raises ``errors.LoaderError`` here (its type name and text).
        """
        # with a backing store, a local miss is read from it once for the cluster, by the flight
        value = self.get(key, _MISSING) if self._backing is None else self._held(key)
        if value is not _MISSING:
            return value
        flight, leader = self._flights.join(key)
        if not leader:
            return flight.result()
        # Waiting on the node's own loop would stop the answer from coming: local only there.
        cluster = self._cluster if self._cluster is not None and not self._cluster.on_loop() else None
        load = (lambda: loader(key)) if self._backing is None else (lambda: self._load_through(key, loader, ttl))
        try:
            value = singleflight.run(self._lead(key, ttl, cluster), load, _limit(cluster))
        except BaseException as exc:
            self._load_errors += 1
            self._flights.land(key, flight, error=exc)
            raise
        finally:
            if self._backing is not None:
                self._backing.settled(key)
        self._flights.land(key, flight, value)
        return value

    async def afetch(self, key: Key, loader: Callable[[Key], Any], ttl: TTL = DEFAULT) -> Any:
        """``fetch`` for asyncio: an async loader is awaited, a sync one runs off the loop."""
        import asyncio  # here, not at the top: a local Cache loads no asyncio

        # with a backing store, a local miss is read from it once for the cluster, by the flight
        value = self.get(key, _MISSING) if self._backing is None else self._held(key)
        if value is not _MISSING:
            return value
        flight, leader = self._flights.join(key)
        if not leader:
            # shield: one waiter's cancellation must not cancel the flight for all.
            return await asyncio.shield(asyncio.wrap_future(flight))
        cluster = self._cluster
        if self._backing is None:
            load = lambda: _call_loader(loader, key)  # noqa: E731
        else:
            load = lambda: self._aload_through(key, loader, ttl)  # noqa: E731
        try:
            value = await singleflight.arun(self._lead(key, ttl, cluster), load, _limit(cluster))
        except BaseException as exc:
            self._load_errors += 1
            self._flights.land(key, flight, error=exc)
            raise
        finally:
            if self._backing is not None:
                self._backing.settled(key)
        self._flights.land(key, flight, value)
        return value

    def _lead(self, key: Key, ttl: TTL, cluster: Cluster | None) -> Generator[singleflight.Step, Any, Any]:
        # with a backing store the load step stored the value itself (in both tiers)
        store = functools.partial(self._load, key, ttl=ttl) if self._backing is None else self._loaded
        return singleflight.lead(self.name, key, functools.partial(self._peek, key), store, cluster)

    def _peek(self, key: Key) -> Any:
        """A hit that does not count as a read (a leader re-checking before it loads)."""
        entry = self._data.get(key)
        if entry is not None and entry > self._wall():
            return entry.value
        return _MISSING

    def _load(self, key: Key, value: Any, ttl: TTL = DEFAULT) -> Any:
        self.set(key, value, ttl)  # an unserializable result fails the load for all
        self._loads += 1
        return value

    def _loaded(self, value: Any) -> Any:
        self._loads += 1
        return value

    # -- the shared tier (backing.py): a store behind the local copy ----------------------

    def _attach(self, backing: Backing) -> None:
        """Put ``backing`` behind this cache (a Node does, before the cache is used)."""
        self._backing = backing
        if self._cluster is not None:
            self._cluster = backing.awaiting(self._cluster)

    def _held(self, key: Key) -> Any:
        """``get`` of the local copy only: a hit, or a miss counted and MISSING."""
        value = self._peek(key)
        if value is _MISSING:
            self._misses += 1
            return value
        return self.get(key, _MISSING)

    def _read_through(self, key: Key, default: Any) -> Any:
        backing = self._backing
        assert backing is not None
        vouched = backing.vouched
        with self._lock:
            version = self._clock.stamp()  # before the read: a change announced during it is newer
        found = backing.read(key)
        if found is None:
            return default
        return self._fill(key, found, version, vouched)

    def _fill(self, key: Key, found: tuple[bytes, float | None], version: int, vouched: bool) -> Any:
        packed, left = found
        try:
            value = self._serializer.loads(packed)
        except Exception as exc:
            raise BackingError(
                f"a value in the backing store is not in this cache's serializer format ({type(exc).__name__})"
            ) from None
        if vouched:  # else tracking is down: an announcement could be missed, so nothing is kept
            now = self._wall()
            expires = self._expires(DEFAULT, now) if left is None else now + left
            self._keep(key, value, packed, expires, version)
        return value

    def _write_through(self, key: Key, value: Any, packed: bytes, ttl: TTL, only_new: bool = False) -> bool:
        """The backing store first (a failure raises and changes nothing here), then this copy and the peers."""
        backing = self._backing
        assert backing is not None
        now = self._wall()
        with self._lock:
            expires = self._expires(ttl, now)
            version = self._clock.stamp()  # before the store: a change announced after it wins
        left = None if expires == NEVER else expires - now
        if only_new:
            if not backing.add(key, packed, left):
                return False
        else:
            backing.write(key, packed, left)
        if not self._keep(key, value, packed, expires, version):
            # something stamped later is held (a peer's copy read before our write, say): the store
            # has ours now, and no announcement of it will come here (NOLOOP), so hold nothing
            self._invalidated(key)
        return True

    def _keep(self, key: Key, value: Any, packed: bytes, expires: float, version: int) -> bool:
        """Hold and replicate a value at ``version``, unless something newer (an announcement) is held."""
        with self._lock:
            kept = self._store.write(key, value, expires, version, self._wall())
            self._sets += kept
        if kept and self._replicate is not None:
            self._replicate((WRITE, key, packed, expires, version))
        return kept

    def _load_through(self, key: Key, loader: Callable[[Key], Any], ttl: TTL) -> Any:
        """A fetch's load with a backing store: its value if it has one, else the loader's, written to both."""
        backing = self._backing
        assert backing is not None
        vouched = backing.vouched
        with self._lock:
            version = self._clock.stamp()
        found = backing.read(key)
        if found is not None:
            return self._fill(key, found, version, vouched)
        return self._store_loaded(key, loader(key), ttl)

    async def _aload_through(self, key: Key, loader: Callable[[Key], Any], ttl: TTL) -> Any:
        import asyncio

        loop = asyncio.get_running_loop()
        backing = self._backing
        assert backing is not None
        vouched = backing.vouched
        with self._lock:
            version = self._clock.stamp()
        found = await loop.run_in_executor(None, backing.read, key)
        if found is not None:
            return self._fill(key, found, version, vouched)
        value = await _call_loader(loader, key)
        return await loop.run_in_executor(None, self._store_loaded, key, value, ttl)

    def _store_loaded(self, key: Key, value: Any, ttl: TTL) -> Any:
        packed = self._serializer.dumps(value)  # an unserializable result fails the load for all
        check_value_size(packed, self.max_value_size)
        self._write_through(key, value, packed, ttl)
        return value

    def _invalidated(self, key: Key) -> None:
        """The backing store announced a change of key: drop it here only (every member hears it)."""
        with self._lock:  # past this millisecond: outranks a copy any member read before the change
            store = self._store
            store.delete(key, max(self._clock.stamp_past(), store.version_of(key) + 1), self._wall())

    def _untrusted(self) -> None:
        """Announcements may have been lost: drop the whole local copy, here only."""
        with self._lock:  # everything held goes, a copy stamped by a clock running ahead included
            store = self._store
            newest = max((entry.version for entry in store.data.values()), default=0)
            store.clear(max(self._clock.stamp_past(), newest + 1))

    def memoize(self, ttl: TTL = DEFAULT, key: Callable[..., Key] | None = None) -> Callable[[F], F]:
        """Cache a function's results through ``fetch`` (``afetch`` for async functions).

        ``key(*args, **kwargs)`` builds the cache key; by default the function's
        qualified name and the repr of its arguments.
        """

        def decorate(fn: F) -> F:
            make_key = key or functools.partial(_call_key, f"{fn.__module__}.{fn.__qualname__}")
            if inspect.iscoroutinefunction(fn):

                @functools.wraps(fn)
                async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                    async def load(_: Key) -> Any:
                        return await fn(*args, **kwargs)

                    return await self.afetch(make_key(*args, **kwargs), load, ttl)

                return cast(F, async_wrapper)

            @functools.wraps(fn)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                return self.fetch(make_key(*args, **kwargs), lambda _: fn(*args, **kwargs), ttl)

            return cast(F, wrapper)

        return decorate

    def stats(self) -> dict[str, Any]:
        store = self._store
        return {
            "hits": int(repr(self._hits)[6:-1]),  # "count(N)": reading does not advance it
            "misses": self._misses,
            "sets": self._sets,
            "deletes": self._deletes,
            "evictions": store.evictions,
            "expirations": store.expirations,
            "entries": len(store.data),
            "approx_bytes": store.approx_bytes(),
            "tombstones": len(store.tombstones),
            "loads": self._loads,
            "load_errors": self._load_errors,
            "loading": len(self._flights),
            **({} if self._backing is None else self._backing.stats()),
        }

    # -- async twins -------------------------------------------------------------
    # Local operations never wait on the network, so the twins run inline; with a
    # backing store, what may reach it runs off the loop (redis-py blocks).

    async def _off_loop(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._backing is None:
            return fn(*args)
        import asyncio

        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    async def aget(self, key: Key, default: Any = None) -> Any:
        if self._backing is None or self._peek(key) is not _MISSING:
            return self.get(key, default)
        return await self._off_loop(self.get, key, default)

    async def aset(self, key: Key, value: Any, ttl: TTL = DEFAULT) -> None:
        await self._off_loop(self.set, key, value, ttl)

    async def aadd(self, key: Key, value: Any, ttl: TTL = DEFAULT) -> bool:
        return bool(await self._off_loop(self.add, key, value, ttl))

    async def adelete(self, key: Key) -> bool:
        return bool(await self._off_loop(self.delete, key))

    async def aget_many(self, keys: Iterable[Key]) -> dict[Key, Any]:
        return cast("dict[Key, Any]", await self._off_loop(self.get_many, list(keys)))

    async def aset_many(self, mapping: Mapping[Key, Any], ttl: TTL = DEFAULT) -> None:
        await self._off_loop(self.set_many, mapping, ttl)

    async def adelete_many(self, keys: Iterable[Key]) -> int:
        return int(await self._off_loop(self.delete_many, list(keys)))

    async def atouch(self, key: Key, ttl: TTL = DEFAULT) -> bool:
        return bool(await self._off_loop(self.touch, key, ttl))

    async def attl(self, key: Key) -> float | None:
        return self.ttl(key)

    async def aclear(self) -> None:
        self.clear()


class Replica:
    """The protocol core's side of a hosted cache (the ``replica.ReplicaView`` interface).

    Changes go through the cache's write lock, like the caller's own writes; reads of
    the table take none (a snapshot of references or a walk; entries never change).
    """

    def __init__(self, cache: Cache) -> None:
        self._cache = cache
        self._store = cache._store
        self.name = cache.name
        self.inline = type(cache._serializer) is MsgpackSerializer
        self.dumps = cache._serializer.dumps
        self._applied = 0  # a peer's writes applied (``writes``); read and written on the node's loop

    def connect(self, replicate: Callable[[Op], None]) -> None:
        """Every local write from now on is also handed to ``replicate`` (on the writer's thread)."""
        self._cache._replicate = replicate

    def size(self) -> int:
        return len(self._store.data)

    def writes(self) -> int:
        return self._cache._sets + self._applied

    def approx_bytes(self) -> int:
        return self._store.approx_bytes()

    def entries(self) -> list[Entry]:
        return self._store.entries()

    def walk(self) -> Walk:
        return self._store.walk()

    def tombstones(self) -> list[tuple[Key, int]]:
        return list(self._store.tombstones.items())

    def digests(self, wall: float, horizon: int) -> list[int] | None:
        with self._cache._lock:
            return self._store.digests(wall, horizon)

    def watermark(self) -> int:
        return self._store.watermark

    def wants(self, key: Key, version: int) -> bool:
        store = self._store
        return version > store.version_of(key) and version > store.evicted.get(key, 0)

    def holds(self, key: Key, wall: float) -> bool:
        entry = self._store.data.get(key)
        return entry is not None and entry > wall

    def ops_for(self, keys: list[Key], wall: float) -> list[Op]:
        data, tombstones, dumps = self._store.data, self._store.tombstones, self.dumps
        ops: list[Op] = []
        for key in keys:
            entry = data.get(key)
            if entry is not None and entry > wall:
                ops.append((WRITE, key, dumps(entry.value), float(entry), entry.version))
            elif entry is None and key in tombstones:  # a delete the peer missed
                ops.append((DELETE, key, None, NEVER, tombstones[key]))
        return ops

    def apply(self, ops: list[Op], wall: float) -> tuple[int, int]:
        """The whole batch is validated and decoded first (InvalidEntry), so a bad op
        applies nothing and cannot leave half a batch behind."""
        applied = ignored = 0
        cache = self._cache
        if not ops:
            return 0, 0
        keys, expiries, versions = [op[1] for op in ops], [op[3] for op in ops], [op[4] for op in ops]
        check_peer_entries(keys, expiries, versions, wall, cache.max_clock_skew)
        values = _decode(cache._serializer, [op[2] for op in ops if op[0] == WRITE])
        with cache._lock:
            store = self._store
            cache._clock.observe(max(versions))
            for kind, key, _, expires, version in ops:
                if kind == WRITE:
                    ok = store.write(key, next(values), expires, version, wall)
                elif kind == DELETE:
                    ok = store.delete(key, version, wall)
                else:
                    ok = store.clear(version)
                if ok:
                    applied += 1
                else:
                    ignored += 1
        self._applied += applied
        return applied, ignored

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
        cache = self._cache
        checked = check_peer_entries(keys, expires, versions, wall, cache.max_clock_skew, newest)
        if packed:
            values = list(_decode(cache._serializer, values))
        with cache._lock:
            if versions:
                cache._clock.observe(max(versions) if newest is None else newest)  # its hlc is the newest's
            applied = self._store.load(keys, values, checked, versions, wall)
        self._applied += applied
        return applied

    def sweep(self, wall: float) -> int:
        with self._cache._lock:
            return self._store.sweep(wall)

    def behind(self) -> bool:
        return self._store.digests_behind


def _decode(serializer: Serializer, packed: list[Any]) -> Iterator[Any]:
    loads = serializer.loads
    try:
        return iter([loads(p) for p in packed])
    except Exception as exc:
        raise InvalidEntry(f"a peer's value could not be decoded ({type(exc).__name__})") from None


def hosted(
    name: str,
    ttl: TTL,
    max_entries: int | None,
    *,
    serializer: Serializer | None,
    clock: HybridClock,
    tombstone_ttl: float,
    timer: Callable[[], float] = time.time,
    max_value_size: int = DEFAULT_MAX_VALUE_SIZE,
    max_clock_skew: float = DEFAULT_MAX_CLOCK_SKEW,
    cluster: Cluster | None = None,
) -> tuple[Cache, Replica]:
    """A cache for a Node: the node's clock stamps its writes, deletes keep tombstones,
    the node's housekeeping sweeps it, and (with ``cluster``) its loads are single-flight
    across the members."""
    cache = Cache(
        ttl,
        max_entries,
        serializer=serializer,
        name=name,
        timer=timer,
        max_value_size=max_value_size,
        max_clock_skew=max_clock_skew,
    )
    cache._cluster = cluster
    cache._clock = clock
    cache._store.tombstone_ttl = tombstone_ttl
    cache._store.keep_digests(KEEP_FROM)
    cache._hosted = True
    return cache, Replica(cache)


def conflicting_options(cache: Cache, ttl: Any, max_entries: Any, serializer: Any) -> list[str]:
    """Options given for an existing hosted cache that differ from its own (``_MISSING``: not given)."""
    wrong = []
    if ttl is not _MISSING and _seconds(ttl) != cache._ttl:
        wrong.append(f"ttl={ttl!r} (it has {cache._ttl!r})")
    if max_entries is not _MISSING and max_entries != cache._max_entries:
        wrong.append(f"max_entries={max_entries!r} (it has {cache._max_entries!r})")
    if serializer is not _MISSING and type(serializer or MsgpackSerializer()) is not type(cache._serializer):
        wrong.append(f"serializer {type(serializer).__name__} (it has {type(cache._serializer).__name__})")
    return wrong


NOT_GIVEN: Any = _MISSING
"""Default of ``Node.cache`` options, so asking for an existing cache by name alone is no conflict."""


def _limit(cluster: Cluster | None) -> float:
    return cluster.limit if cluster is not None else 0.0


async def _call_loader(loader: Callable[[Key], Any], key: Key) -> Any:
    """An async loader awaited; a sync one run off the loop (and awaited if it returned an awaitable)."""
    import asyncio

    if _is_async(loader):
        return await loader(key)
    loaded = await asyncio.get_running_loop().run_in_executor(None, loader, key)
    if inspect.isawaitable(loaded):
        loaded = await loaded
    return loaded


def _is_async(fn: Callable[..., Any]) -> bool:
    call = type(fn).__call__ if not inspect.isfunction(fn) and not inspect.ismethod(fn) else None
    return inspect.iscoroutinefunction(fn) or (call is not None and inspect.iscoroutinefunction(call))


def _call_key(prefix: str, *args: Hashable, **kwargs: Hashable) -> str:
    return f"{prefix}:{args!r}:{sorted(kwargs.items())!r}"
