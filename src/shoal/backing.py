"""The shared tier: a hosted cache in front of Redis or Valkey, its local copy kept true by the server.

Theory of operation. A cache made with ``node.cache(name, ..., backing=URL)`` holds
everything in the backing store and the hot part in every member (the replicated
local tier, bounded by ``max_entries``). The cache (cache.py) calls this module at
three points: a local miss reads the store (``read``), a write goes to the store
before the local copy (``write``, ``add``, ``delete``, ``expire``), and a fetch
that misses in both calls the loader and writes its value to both. Keys are ``str``
and live in the store as ``prefix + key`` in UTF-8 (``shoal:<cache>:`` unless
``backing_prefix=`` says otherwise), so another service reads and writes the same
keys; values are the cache serializer's bytes, so whatever ``set`` accepts comes
back from the store as it went in.

Invalidation (Redis server-assisted client-side caching, broadcasting mode). Each
member keeps, per primary, two connections of its own: a *listener* subscribed to
``__redis__:invalidate`` and a *tracker* that ran ``CLIENT TRACKING on REDIRECT
<listener> BCAST PREFIX <prefix> NOLOOP``. Every change of a key under the prefix,
by anyone (another service, ``redis-cli``, another member, an expiry or an
eviction), is announced to every member's listener; the key is dropped from the
local tier there, on that member only (every member hears it). The member's own
writes go through its tracker, and NOLOOP spares it its own announcements, so the
writer keeps what it wrote; other members drop the key and read it again when asked.

Versions decide what an announcement overrides. A fill (a value read from the store)
is stamped before the read and a write before the store command, and a dropped key
leaves a tombstone past the millisecond the announcement arrived in
(``HybridClock.stamp_past``: above whatever counter another member reached in it);
the store rule (newer wins) then refuses a value read before a change whose
announcement came first, here and, within the members' clock skew, on every peer the
value replicates to. The price: a value read within that millisecond is returned but
not kept. A writer whose copy is refused (a peer's copy stamped later but read
earlier is held) drops the key rather than keep the older value. Another member's
write reaches a peer as a drop: its replicated copy is older than the announcement.

One exception keeps a cluster fetch at one read: while this member waits for a key
another member loads (``awaiting``, from the ask to the end of the fetch), the first
announcement of the key is taken for the holder's own write and does not drop the
value it replicates; a second one does. If the holder read the value from the store
instead (nothing written, nothing announced), one outside write announced during that
wait is taken for the holder's and the waiting members keep the value read before it:
the one known gap, a few milliseconds wide, until the key is written again or expires.

When a listener or tracker connection fails (a restart, a failover, ``CLIENT
KILL``), announcements may have been lost: the member drops its whole local tier
(``tracking_resets``), reads through without keeping values until it is tracking
again, and drops the tier once more then (what peers sent meanwhile, it could not
vouch for). A tracker is checked with PING every ``HEALTH_INTERVAL``, so one that
died silently is noticed within that. In a Redis Cluster, a primary that cannot be
reached for a few attempts makes the member ask the cluster for its primaries again (a
failover, a new node) and track the new ones. Blocking redis-py calls run on the caller's
thread (the cache API is called from application threads; ``aget`` and friends move
them off the loop) and on one listener thread per primary, never on the node's loop.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.exceptions import RedisClusterException
from redis.retry import Retry

from .errors import BackingError
from .singleflight import VALUE, Cluster
from .store import Key

__all__ = ["Backing", "connect"]

CHANNEL = b"__redis__:invalidate"
HEALTH_INTERVAL = 0.5  # seconds between PINGs of an idle tracker: a silent death is noticed within this
CONNECT_TIMEOUT = 2.0  # a connection attempt; also how long ``connect`` waits for tracking before going on
RETRY_MAX = 2.0  # longest wait between reconnection attempts (doubling from 50 ms)
SOCKET_TIMEOUT = 5.0  # a command on the tracker (writes and PINGs)


def connect(target: Any, prefix: str, on_key: Callable[[str], None], on_reset: Callable[[], None]) -> Backing:
    """A backing tier for ``target``: ``redis://``/``rediss://``/``unix://`` URL, ``redis+cluster://`` URL,
    or a redis-py ``Redis``/``RedisCluster`` client; tracking is started and waited for (bounded)."""
    if isinstance(target, str):
        if target.startswith(("redis+cluster://", "rediss+cluster://")):
            try:  # it asks a node for the slots at once
                client: Any = RedisCluster.from_url(target.replace("+cluster", "", 1))
            except (redis.RedisError, RedisClusterException) as exc:
                raise BackingError(f"the backing Redis Cluster could not be reached ({type(exc).__name__})") from exc
        else:
            client = redis.Redis.from_url(target)
    elif isinstance(target, (redis.Redis, RedisCluster)):
        client = target
        if client.get_encoder().decode_responses:
            raise ValueError("a backing client must return bytes (decode_responses=False): values are serialized")
    else:
        kind = type(target).__name__
        raise TypeError(f"backing is a redis:// or redis+cluster:// URL or a redis-py client, not {kind}")
    tier = Backing(client, prefix, on_key, on_reset, owns_client=isinstance(target, str))
    tier.start()
    return tier


class Backing:
    """One cache's way to its backing store: key mapping, reads, writes, and the tracking of every primary."""

    def __init__(
        self,
        client: Any,
        prefix: str,
        on_key: Callable[[str], None],
        on_reset: Callable[[], None],
        owns_client: bool = False,
    ) -> None:
        if not prefix:
            raise ValueError("a backing prefix must not be empty (tracking would announce every key of the store)")
        self.client = client
        self.prefix = prefix.encode()
        self._cluster = isinstance(client, RedisCluster)
        self._on_key = on_key
        self._on_reset = on_reset
        self._lock = threading.Lock()
        self._trackers: dict[str, _Tracker] = {}
        self._awaiting: dict[str, int] = {}  # key -> announcements heard while another member loads it
        self._lost = False  # a tracker went down (or never came up) since all were last up
        self._owns_client = owns_client  # made from a URL: closed with the cache; a caller's client is theirs
        self._counted = threading.Lock()  # figures counted from application and listener threads
        self._closing = False
        self.reads = self.hits = self.writes = self.errors = self.invalidations = self.resets = 0

    # -- keys ----------------------------------------------------------------------

    def key(self, key: Key) -> bytes:
        if type(key) is not str:
            kind = type(key).__name__
            raise TypeError(f"a cache with a backing store takes str keys (they are Redis keys), not {kind}")
        return self.prefix + key.encode()

    # -- the caller's commands (application threads) -------------------------------

    @property
    def vouched(self) -> bool:
        """Every primary is tracked now: what is read may be kept, announcements will come."""
        trackers = self._trackers
        return bool(trackers) and all(t.up for t in trackers.values())

    def read(self, key: Key) -> tuple[bytes, float | None] | None:
        """The stored bytes and seconds left (None: no expiry), or None when the store has no such key."""
        name = self.key(key)
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.get(name)
            pipe.pttl(name)
            packed, left = pipe.execute()
        except redis.RedisError as exc:
            raise self._failed("read", exc) from exc
        found = packed is not None and left != -2
        with self._counted:
            self.reads += 1
            self.hits += found
        if not found:
            return None
        return packed, None if left < 0 else left / 1000.0

    def write(self, key: Key, packed: bytes, ttl: float | None) -> None:
        args: list[Any] = ["SET", self.key(key), packed]
        if ttl is not None:
            args += ["PX", _ms(ttl)]
        self._command(args, "write")

    def add(self, key: Key, packed: bytes, ttl: float | None) -> bool:
        args: list[Any] = ["SET", self.key(key), packed, "NX"]
        if ttl is not None:
            args += ["PX", _ms(ttl)]
        return self._command(args, "write") is not None

    def delete(self, key: Key) -> bool:
        return bool(self._command(["DEL", self.key(key)], "delete"))

    def expire(self, key: Key, ttl: float | None) -> bool:
        name = self.key(key)
        if ttl is None:
            return bool(self._command(["PERSIST", name], "write")) or bool(self._command(["EXISTS", name], "read"))
        return bool(self._command(["PEXPIRE", name, _ms(ttl)], "write"))

    def _command(self, args: list[Any], what: str) -> Any:
        """Through the key's tracker when it is up (NOLOOP: no announcement back to us), else the pool."""
        tracker = self._tracker_for(args[1])
        try:
            if tracker is not None:
                try:
                    reply = tracker.command(args)
                except redis.ResponseError as exc:
                    if not str(exc).startswith(("MOVED", "ASK")):
                        raise
                    reply = self.client.execute_command(*args)  # a slot on the move: our own write is announced
            else:
                reply = self.client.execute_command(*args)
        except redis.RedisError as exc:
            raise self._failed(what, exc) from exc
        if what != "read":
            with self._counted:
                self.writes += 1
        return reply

    def _tracker_for(self, name: bytes) -> _Tracker | None:
        if self._cluster:
            try:
                node = self.client.get_node_from_key(name)
            except redis.RedisError:
                return None
            tracker = self._trackers.get(node.name) if node is not None else None
        else:
            tracker = next(iter(self._trackers.values()), None)
        return tracker if tracker is not None and tracker.up else None

    def _failed(self, what: str, exc: Exception) -> BackingError:
        with self._counted:
            self.errors += 1
        return BackingError(f"the backing store could not {what} ({type(exc).__name__}); the local copy is unchanged")

    # -- a cluster fetch waiting on another member's load ------------------------------

    def awaiting(self, cluster: Cluster) -> Cluster:
        """``cluster`` with this tier told which keys wait on another member's load (see the docstring)."""
        return _Awaiting(cluster, self._awaiting)

    def settled(self, key: Key) -> None:
        """A fetch of key ended on this member: it waits for no one's value any more."""
        if isinstance(key, str):
            self._awaiting.pop(key, None)

    # -- tracking (listener threads) -----------------------------------------------------

    def start(self) -> None:
        self._trackers = {name: _Tracker(self, name, pool) for name, pool in self._primaries()}
        for tracker in self._trackers.values():
            tracker.start()
        for tracker in self._trackers.values():
            tracker.established.wait(CONNECT_TIMEOUT)
        with self._lock:
            if not self.vouched:  # what peers send before tracking starts cannot be vouched for
                self._lost = True

    def refresh(self) -> None:
        """A primary cannot be reached (a cluster failover, a resharding): ask the cluster who the
        primaries are now, track the new ones, stop tracking the ones that are not any more."""
        if not self._cluster or self._closing:
            return
        with self._lock:
            try:
                self.client.nodes_manager.initialize()
                primaries = dict(self._primaries())
            except (redis.RedisError, BackingError):
                return
            old = self._trackers
            if set(primaries) == set(old):
                return
            kept = {name: tracker for name, tracker in old.items() if name in primaries}
            new = {name: _Tracker(self, name, pool) for name, pool in primaries.items() if name not in old}
            self._trackers = {**kept, **new}  # replaced whole: readers iterate it without the lock
            self._lost = True  # keys that moved were announced where no one listened
        for name, tracker in old.items():
            if name not in primaries:
                tracker.stop()
        for tracker in new.values():
            tracker.start()

    def _primaries(self) -> list[tuple[str, redis.ConnectionPool]]:
        if not self._cluster:
            pool = self.client.connection_pool
            kwargs = pool.connection_kwargs
            return [(f"{kwargs.get('host', kwargs.get('path'))}:{kwargs.get('port', '')}", pool)]
        try:
            nodes = self.client.get_primaries()
        except redis.RedisError as exc:
            raise self._failed("list its primaries", exc) from exc
        return [(node.name, node.redis_connection.connection_pool) for node in nodes]

    def announced(self, names: list[bytes] | None) -> None:
        """Keys changed in the store (None: all of them, a FLUSHALL): drop them here."""
        if names is None:
            with self._counted:
                self.invalidations += 1
            self._on_reset()
            return
        prefix, cut = self.prefix, len(self.prefix)
        for name in names:
            if not name.startswith(prefix):
                continue
            with self._counted:
                self.invalidations += 1
            try:
                key = name[cut:].decode()
            except UnicodeDecodeError:
                continue  # no str key maps there: nothing held
            heard = self._awaiting.get(key)
            if heard == 0:  # the load we wait for, written by its holder: its value is on its way
                self._awaiting[key] = 1
                continue
            self._on_key(key)

    def tracking_up(self) -> None:
        with self._lock:
            if not self._lost or not self.vouched:
                return
            self._lost = False
        self._on_reset()  # what arrived while we were deaf, we cannot vouch for

    def tracking_down(self) -> None:
        with self._lock:
            if not self._lost:
                self.resets += 1
            self._lost = True
        self._on_reset()

    def stats(self) -> dict[str, Any]:
        return {
            "backing_reads": self.reads,
            "backing_hits": self.hits,
            "backing_writes": self.writes,
            "backing_errors": self.errors,
            "invalidations": self.invalidations,
            "tracking_resets": self.resets,
            "tracking": self.vouched,
        }

    def close(self) -> None:
        self._closing = True
        for tracker in self._trackers.values():
            tracker.stop()
        for tracker in self._trackers.values():
            tracker.join(CONNECT_TIMEOUT + SOCKET_TIMEOUT)
        if self._owns_client:
            self.client.close()


class _Tracker(threading.Thread):
    """One primary: the listener connection (this thread reads it) and the tracker connection (writes, PINGs)."""

    def __init__(self, tier: Backing, name: str, pool: redis.ConnectionPool) -> None:
        super().__init__(name=f"shoal-tracking-{name}", daemon=True)
        self._tier = tier
        self._pool = pool
        self._stopping = threading.Event()
        self._lock = threading.Lock()  # the tracker connection: one command at a time
        self._listener: Any = None
        self._tracker: Any = None
        self.up = False
        self.established = threading.Event()

    def _connection(self) -> Any:
        own = {k: v for k, v in self._pool.connection_kwargs.items() if not k.startswith("maint_notifications")}
        kwargs = {
            **own,  # redis-py 8's maintenance notifications need RESP3; these connections speak RESP2
            "socket_timeout": SOCKET_TIMEOUT,
            "socket_connect_timeout": CONNECT_TIMEOUT,
            "decode_responses": False,
            "protocol": 2,
            "retry": Retry(NoBackoff(), 0),  # a retried command would reconnect without tracking
            "retry_on_error": [],
            "retry_on_timeout": False,
        }
        connection = self._pool.connection_class(**kwargs)
        connection.connect()
        return connection

    def run(self) -> None:
        wait = 0.05
        while not self._stopping.is_set():
            try:
                self._establish()
                wait = 0.05
                self._listen()
            except (redis.RedisError, OSError, ValueError):
                pass
            finally:
                self._down()
            if self._stopping.wait(wait):
                break
            if wait >= RETRY_MAX / 4:  # a few attempts failed: is this still a primary?
                self._tier.refresh()
            wait = min(wait * 2, RETRY_MAX)

    def _establish(self) -> None:
        listener = self._listener = self._connection()
        listener.send_command("CLIENT", "ID")
        listener_id = listener.read_response()
        listener.send_command("SUBSCRIBE", CHANNEL)
        listener.read_response()
        tracker = self._connection()
        tracker.send_command(
            "CLIENT", "TRACKING", "on", "REDIRECT", listener_id, "BCAST", "PREFIX", self._tier.prefix, "NOLOOP"
        )
        if tracker.read_response() != b"OK":
            raise ValueError("CLIENT TRACKING was refused")
        with self._lock:
            self._tracker = tracker
            self.up = True
        self._tier.tracking_up()
        self.established.set()

    def _listen(self) -> None:
        listener = self._listener
        while not self._stopping.is_set():
            if listener.can_read(timeout=HEALTH_INTERVAL):
                message = listener.read_response(timeout=SOCKET_TIMEOUT)
                if isinstance(message, list) and len(message) == 3 and message[0] == b"message":
                    self._tier.announced(message[2])
            else:
                self.command(["PING"])

    def command(self, args: list[Any]) -> Any:
        """A command on the tracker connection; any failure ends tracking (the thread reconnects)."""
        with self._lock:
            tracker = self._tracker
            if tracker is None:
                raise redis.ConnectionError("tracking connection is down")
            try:
                tracker.send_command(*args)
                return tracker.read_response()
            except redis.ResponseError:
                raise
            except BaseException:
                # never reused: redis-py would reconnect it silently, without tracking
                self._tracker = None
                self.up = False
                tracker.disconnect()
                if self._listener is not None:
                    self._listener.disconnect()  # wakes the listener thread, which resets and reconnects
                raise

    def _down(self) -> None:
        with self._lock:
            was_up = self.up or self._tracker is not None
            for connection in (self._tracker, self._listener):
                if connection is not None:
                    connection.disconnect()
            self._tracker = self._listener = None
            self.up = False
        if self._stopping.is_set():
            return  # closing: the node is stopping, nothing to vouch for any more
        if was_up or self.established.is_set():
            self._tier.tracking_down()

    def stop(self) -> None:
        self._stopping.set()
        listener = self._listener
        if listener is not None:
            listener.disconnect()


class _Awaiting:
    """A ``singleflight.Cluster`` that marks a key as awaited while its answer is pending."""

    def __init__(self, cluster: Cluster, awaiting: dict[str, int]) -> None:
        self._cluster = cluster
        self._awaiting = awaiting
        self.limit = cluster.limit

    def on_loop(self) -> bool:
        return self._cluster.on_loop()

    def ask(self, cache: str, key: Key) -> Future[str]:
        """Until the fetch ends (``Backing.settled``): told VALUE, the value may still be on its way,
        after the holder's announcement; told to load, this member reads for itself and is not waiting."""
        awaiting = self._awaiting
        if isinstance(key, str):
            awaiting.setdefault(key, 0)
        answer = self._cluster.ask(cache, key)

        def answered(done: Future[str]) -> None:
            if done.exception() is not None or done.result() != VALUE:
                awaiting.pop(key, None)  # type: ignore[arg-type]

        answer.add_done_callback(answered)
        return answer

    def report(self, cache: str, key: Key, error: BaseException | None = None) -> None:
        self._cluster.report(cache, key, error)

    def give_back(self, cache: str, key: Key) -> None:
        self._cluster.give_back(cache, key)


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))
