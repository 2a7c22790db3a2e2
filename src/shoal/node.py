"""The asyncio edge of a member: the thread and loop, sockets and timers around the protocol core.

Everything the cluster decides happens in ``dispatch.Dispatcher`` (membership,
replication, warm boot), which takes events and returns actions. This module
feeds it: connections (transport.py) report handshakes, frames and losses; a
ticker reports time; the outbox wakes a flush. It carries out what comes back:
sends (an Ops broadcast encoded once), dials, closes, dump streams (paced by the
peer's back-pressure), snapshot reads, readiness. Chores that are no protocol
(the GC, snapshot files, DNS) are housekeeping.py's; operator answers, queries.py's.

Threads: application threads call ``Cache`` methods; a write queues its op on
the dispatcher's outbox and wakes the loop at most once per flush, so ``set``
never waits for the network. Everything else runs on the node's loop: its own
thread after ``start()``, or the caller's loop under ``async with``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import ssl as _ssl
import threading
import time
from collections.abc import Callable, Coroutine
from datetime import timedelta
from types import TracebackType
from typing import Any

from . import warmboot
from .actions import (
    Action,
    Broadcast,
    Close,
    Deliver,
    Dial,
    Fail,
    Load,
    MemberDown,
    MemberUp,
    ReadSnapshot,
    Ready,
    Send,
    StreamDump,
)
from .cache import NOT_GIVEN, Cache, conflicting_options, hosted
from .clock import HybridClock
from .dispatch import FLUSH_DELAY, Config, Dispatcher
from .errors import ProtocolError, ShoalError
from .handshake import check_secret, cluster_key
from .housekeeping import Collector, Resolver, Snapshots, discover
from .leases import LEASE_TTL
from .limits import LogLimiter, PeerQuota, Supervisor
from .membership import routable
from .messages import DumpEnd, Message, Ops, Query
from .queries import Handler, Queries
from .replica import ReplicaView
from .replication import CATCHUP_LOG_BYTES
from .serializer import Serializer
from .singleflight import ClusterFlights
from .snapshot import snapshot_key
from .transport import Connection, dns_resolver, is_loopback, parse_address
from .validation import DEFAULT_MAX_CLOCK_SKEW, DEFAULT_MAX_VALUE_SIZE
from .wire import DEFAULT_MAX_FRAME, encode

log = logging.getLogger("shoal")

TICK = 0.1
SCAN_PAUSE = 0.002
DUMPS_AT_ONCE = 2
"""Dumps streaming to one peer at a time; more wait their turn (each holds a list of every entry)."""
DUMPS_QUEUED = 64
"""Dumps one peer may have requested and not yet received: an honest booter asks for one per
cache it boots; more at once is a peer making us hold entry lists (100 unread dumps: +300 MB)."""
CONNECT_TIMEOUT = 3.0
"""A dial gives up after this (a member behind a partition drops the SYN): the next one, after
a backoff of at most 2 s, is what reconnects soon after the partition heals."""

__all__ = ["Node", "parse_address"]


def _ends(conn: Connection) -> tuple[tuple[object, ...] | None, tuple[object, ...] | None]:
    """(local, remote) host and port of a connection's socket."""
    if conn.transport is None:
        return None, None
    here, there = conn.transport.get_extra_info("sockname"), conn.transport.get_extra_info("peername")
    if not isinstance(here, tuple) or not isinstance(there, tuple):
        return None, None
    return tuple(here[:2]), tuple(there[:2])


class Node:
    """One member of a shoal cluster: hosts named caches and keeps them replicated."""

    def __init__(
        self,
        listen: str = "127.0.0.1:0",
        seeds: list[str] | tuple[str, ...] = (),
        secret: str | bytes | None = None,
        *,
        advertise: str | None = None,
        discovery: str | None = None,
        ssl: _ssl.SSLContext | None = None,
        client_ssl: _ssl.SSLContext | None = None,
        failure_timeout: float = 5.0,
        heartbeat_interval: float = 0.5,
        handshake_timeout: float = 5.0,
        max_frame_size: int = DEFAULT_MAX_FRAME,
        max_peer_backlog: int = 64 * 1024 * 1024,
        anti_entropy_interval: float = 10.0,
        warm_donors: int = 1,
        warm_timeout: float = 30.0,
        boot_wait: float = 2.0,
        catchup_log_bytes: int = CATCHUP_LOG_BYTES,
        load_timeout: float = LEASE_TTL,
        resolver: Resolver | None = None,
        dns_interval: float = 10.0,
        snapshot_path: str | os.PathLike[str] | None = None,
        snapshot_interval: float = 60.0,
        gc_freeze: bool = True,
        max_pending: int = 128,
        max_clock_skew: float = DEFAULT_MAX_CLOCK_SKEW,
    ) -> None:
        host, port = parse_address(listen)
        if secret is None and not is_loopback(host):
            raise ShoalError(f"refusing to listen on non-loopback {host!r} without a cluster secret")
        if max_frame_size < DEFAULT_MAX_VALUE_SIZE * 2:
            raise ValueError(f"max_frame_size must be at least {DEFAULT_MAX_VALUE_SIZE * 2} (twice max_value_size)")
        if warm_donors not in (1, 2):
            raise ValueError("warm_donors is 1 or 2")
        self._host, self._port = host, port
        if advertise is not None and not routable(advertise):
            raise ValueError(f"advertise must be a host:port other members can dial, not {advertise!r}")
        # What this member tells the others to dial. Unset on a wildcard listen: then
        # it is learned from connected sockets (see _learn_address).
        self._advertise = advertise
        self._learned: str | None = None
        # No secret at all is a loopback-only convenience; a secret given must be strong.
        self._secret = b"" if secret is None else check_secret(secret)
        self.node_id = int.from_bytes(os.urandom(8), "big")
        self.seeds = list(seeds)
        self.discovery = discovery
        self._ssl = ssl
        self._client_ssl = client_ssl or ssl
        self.handshake_timeout = handshake_timeout
        self.max_frame_size = max_frame_size
        self.max_pending = max_pending
        self.max_clock_skew = max_clock_skew
        self.door = LogLimiter(log, clock=time.monotonic)  # refusals of strangers: they choose how many there are
        self._ticks = Supervisor("the node's timer", log, time.monotonic)
        self._chores = LogLimiter(log, burst=5, interval=60.0, clock=time.monotonic)
        self._dumps = PeerQuota(DUMPS_QUEUED)
        self._dump_slots: dict[int, asyncio.Semaphore] = {}
        self._config = Config(
            failure_timeout=failure_timeout,
            heartbeat_interval=heartbeat_interval,
            anti_entropy_interval=anti_entropy_interval,
            warm_donors=warm_donors,
            warm_timeout=warm_timeout,
            boot_wait=boot_wait,
            max_peer_backlog=max_peer_backlog,
            catchup_log_bytes=catchup_log_bytes,
            max_clock_skew=max_clock_skew,
            load_timeout=load_timeout,
        )
        self._resolver = resolver or dns_resolver
        self.dns_interval = dns_interval
        # With a secret the file carries a MAC: a member loads it with no peer to ask, so a
        # file someone else wrote must not pass for ours.
        snapshot_mac = snapshot_key(cluster_key(self._secret)) if self._secret else None
        self._snapshots = (
            Snapshots(snapshot_path, snapshot_interval, snapshot_mac, max_clock_skew)
            if snapshot_path is not None
            else None
        )
        self._gc = Collector(gc_freeze)
        self.on_member_up: list[Callable[[int, str], None]] = []
        self.on_member_down: list[Callable[[int, str, str], None]] = []

        self._caches: dict[str, Cache] = {}
        self._core: Dispatcher | None = None
        self._early: list[tuple[str, ReplicaView]] = []  # caches hosted before the core exists
        self._peers: dict[int, Connection] = {}
        self._pending: set[Connection] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready_flag = threading.Event()
        self._ready_event: asyncio.Event | None = None
        self._stopping = False
        self._queries = Queries(self.members, self.stats)
        self._core = self._new_core()
        self._cluster = ClusterFlights(self._core.leases, self._run, flush=self._flush)
        self._single_flight: dict[str, str] = {}

    # -- public API ------------------------------------------------------------------

    @property
    def address(self) -> str:
        """The address this member advertises: ``advertise``, else the one it listens on."""
        if self._advertise is not None:
            return self._advertise
        if self._learned is not None:
            return self._learned
        return f"{self._host}:{self._port}"

    @property
    def config(self) -> Config:
        """The protocol's timers and limits, as given to the constructor."""
        return self._config

    @property
    def secret(self) -> bytes:
        return self._secret

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None, "node not running"
        return self._loop

    def cache(
        self,
        name: str,
        ttl: float | timedelta | None = NOT_GIVEN,
        max_entries: int | None = NOT_GIVEN,
        *,
        serializer: Serializer | None = NOT_GIVEN,
        tombstone_ttl: float = 600.0,
        max_value_size: int = DEFAULT_MAX_VALUE_SIZE,
        single_flight: str = NOT_GIVEN,
    ) -> Cache:
        """The named cache on this node, created on first use; every member hosting it shares it.

        Asking again by name returns the same cache; options that differ from the
        ones it was created with are an error, not silently ignored.

        ``single_flight="cluster"`` (the default) makes ``fetch``/``afetch``/``memoize``
        call the loader once per key for the whole cluster (leases.py); ``"local"``,
        once per member.
        """
        if single_flight is not NOT_GIVEN and single_flight not in ("cluster", "local"):
            raise ValueError(f"single_flight is 'cluster' or 'local', not {single_flight!r}")
        existing = self._caches.get(name)
        if existing is not None:
            wrong = conflicting_options(existing, ttl, max_entries, serializer)
            if single_flight is not NOT_GIVEN and single_flight != self._single_flight[name]:
                wrong.append(f"single_flight={single_flight!r} (it has {self._single_flight[name]!r})")
            if wrong:
                raise ValueError(f"cache {name!r} already exists with other options: {', '.join(wrong)}")
            return existing
        if not 0 < max_value_size <= self.max_frame_size // 2:
            raise ValueError(f"max_value_size is 1 to max_frame_size / 2 ({self.max_frame_size // 2}) bytes")
        cache, replica = hosted(
            name,
            None if ttl is NOT_GIVEN else ttl,
            None if max_entries is NOT_GIVEN else max_entries,
            serializer=None if serializer is NOT_GIVEN else serializer,
            # one clock per cache: only called under that cache's lock
            clock=HybridClock(self.node_id, time.time, max_skew=self.max_clock_skew),
            tombstone_ttl=tombstone_ttl,
            max_value_size=max_value_size,
            max_clock_skew=self.max_clock_skew,
            cluster=self._cluster if single_flight in (NOT_GIVEN, "cluster") else None,
        )
        self._caches[name] = cache
        self._single_flight[name] = "local" if single_flight == "local" else "cluster"
        if self._loop is None:
            self._host_cache(name, replica)
        else:
            # Not ready from this moment, not from when the loop gets to it: a caller
            # that asks right away must wait for this cache's warm boot.
            self._set_ready(False)
            self._loop.call_soon_threadsafe(self._host_cache, name, replica)
        return cache

    def answer(self, what: str, handler: Handler) -> None:
        """Answer operator queries named ``what`` with ``handler(*args) -> dict``."""
        self._queries.handlers[what] = handler

    def start(self, timeout: float = 30.0) -> Node:
        """Run the node on a background thread; returns once it listens."""
        if self._thread is not None:
            raise ShoalError("node already started")
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._open())
            except BaseException as exc:
                failure.append(exc)
                started.set()
                loop.close()
                return
            started.set()
            try:
                loop.run_forever()
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name=f"shoal-node-{self.node_id:016x}", daemon=True)
        self._thread.start()
        if not started.wait(timeout):
            raise ShoalError("node did not start in time")
        if failure:
            self._thread = None
            raise failure[0]
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop: flush queued writes, say goodbye, close."""
        if self._thread is None or self._loop is None:
            return
        loop = self._loop
        future = asyncio.run_coroutine_threadsafe(self._close(), loop)
        try:
            future.result(timeout)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join(timeout)
            self._thread = None

    def wait_ready(self, timeout: float | None = None) -> bool:
        """True once the member can serve the cluster (a readiness probe): every cache booted,
        connected to every member known to be up, caught up from each (those two bounded)."""
        return self._ready_flag.wait(timeout)

    async def ready(self, timeout: float | None = None) -> bool:
        """``wait_ready`` for asyncio applications (``timeout=0`` answers at once)."""
        if self._ready_event is None:
            raise ShoalError("node not running")
        if self._ready_event.is_set():  # wait_for(timeout=0) would not even look
            return True
        try:
            await asyncio.wait_for(self._ready_event.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    async def __aenter__(self) -> Node:
        await self._open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._close()

    def members(self) -> list[dict[str, Any]]:
        """Every member this node knows, itself included."""
        now = time.monotonic()
        rows = [
            {
                "id": f"{self.node_id:016x}",
                "address": self.address,
                "state": "self",
                "last_heard": 0.0,
                "caches": sorted(self._caches),
            }
        ]
        if self._core is not None:
            for m in list(self._core.membership.members.values()):
                rows.append(
                    {
                        "id": f"{m.node_id:016x}",
                        "address": m.listen,
                        "state": m.state,
                        "last_heard": round(now - m.last_heard, 3),
                        "caches": sorted(m.caches or ()),
                    }
                )
        return rows

    def stats(self) -> dict[str, Any]:
        core = self._core
        caches = {}
        for name, cache in list(self._caches.items()):
            figures = cache.stats()
            if core is not None:
                figures.update(core.replicator.figures_of(name))
                figures["queue_depth"] = sum(1 for n, _ in list(core.outbox) if n == name)
                figures["warm_boot"] = core.boot_stats(name).as_dict()
            figures["single_flight"] = self._single_flight[name]
            caches[name] = figures
        return {
            "id": f"{self.node_id:016x}",
            "address": self.address,
            "ready": self._ready_flag.is_set(),
            "members_up": len(core.membership.up_peers()) if core is not None and self._loop is not None else 0,
            "peer_backlog_bytes": {f"{p:016x}": c.backlog() for p, c in list(self._peers.items())},
            "caches": caches,
            "leases": core.leases.figures() if core is not None else {},
        }

    async def write_snapshot(self) -> int:
        """Write every cache to ``snapshot_path`` now (also done periodically and on stop)."""
        assert self._snapshots is not None and self._core is not None
        return await self._snapshots.write(self._core.replicas, not self._core.booting)

    # -- lifecycle ---------------------------------------------------------------------

    def _new_core(self) -> Dispatcher:
        return Dispatcher(
            self.node_id, self.address, seeds=self.seeds, discovery=bool(self.discovery), config=self._config
        )

    def _host_cache(self, name: str, replica: ReplicaView) -> None:
        assert self._core is not None
        if self._single_flight[name] == "cluster":
            self._core.leases.caches.add(name)
        self._run(self._core.host(name, replica, time.monotonic()))

    async def _open(self) -> None:
        self._loop = loop = asyncio.get_running_loop()
        self._ready_event = asyncio.Event()
        self._server = await loop.create_server(
            lambda: Connection(self, initiator=False),
            self._host,
            self._port,
            ssl=self._ssl,
            reuse_address=True,
            # A stranger that stalls TLS gets the handshake's deadline, not asyncio's 60 s.
            ssl_handshake_timeout=self.handshake_timeout if self._ssl else None,
        )
        self._port = self._server.sockets[0].getsockname()[1]
        # The core was made before the port was known: give membership the real address.
        assert self._core is not None
        self._core.membership.listen = self.address
        self._core.membership.advertise(self.address)  # ours: never dialed (unless a wildcard: no-op)
        self._core.membership.seeds = [s for s in self.seeds if s != self.address]
        self._core.wake = functools.partial(loop.call_soon_threadsafe, self._flush_shortly)
        self._cluster.bind(loop)
        log.info("node %016x listening on %s", self.node_id, self.address)
        self._run(self._core.start(time.monotonic(), time.time()))
        self._spawn(self._ticker())
        if self.discovery:
            self._spawn(discover(self.discovery, self._resolver, self.dns_interval, self._discovered))
        if self._snapshots is not None:
            self._spawn(self._snapshot_periodically())

    async def _close(self) -> None:
        if self._stopping or self._core is None:
            return
        self._stopping = True
        self._cluster.bind(None)  # from now on a miss loads here, without asking the cluster
        core = self._core
        if self._snapshots is not None:
            await self.write_snapshot()
        self._run(core.stop(time.monotonic(), time.time()))
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline and any(c.backlog() for c in self._peers.values()):
            await asyncio.sleep(0.01)
        if self._server is not None:
            self._server.close()
        for conn in list(self._peers.values()) + list(self._pending):
            conn.close("node stopping")
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        self._gc.pause(False)
        log.info("node %016x stopped", self.node_id)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("node task failed", exc_info=task.exception())

    async def _ticker(self) -> None:
        assert self._core is not None
        next_freeze = 0.0
        supervise = self._ticks.run  # a round that raises is logged; heartbeats and repair go on
        while True:
            now = time.monotonic()
            if now >= next_freeze:
                next_freeze = now + 1.0
                supervise(self._grown)
            supervise(functools.partial(self._tick, now))
            # A scan in progress (anti-entropy) goes on a slice at a time, with a short
            # pause between slices: spread out, a round never takes a core away from
            # replication in one burst (a burst showed as lag spikes on a busy machine).
            await asyncio.sleep(SCAN_PAUSE if self._core.busy else TICK)

    def _grown(self) -> None:
        assert self._core is not None
        if not self._core.booting:  # a boot freezes once, at its end (Ready): not every second of it
            self._gc.grown(sum(r.size() for r in self._core.replicas.values()))

    def _tick(self, now: float) -> None:
        assert self._core is not None
        self._run(self._core.tick(now, time.time()))

    def _discovered(self, addresses: list[str]) -> None:
        if self._core is not None:
            self._core.membership.discovered([a for a in addresses if a != self.address])

    async def _snapshot_periodically(self) -> None:
        assert self._snapshots is not None
        while True:
            await asyncio.sleep(self._snapshots.interval)
            try:
                await self.write_snapshot()
            except Exception:  # one failed write (say an unserializable entry) must not end the task
                self._chores.log(logging.ERROR, "writing the snapshot failed; the next attempt follows", exc_info=True)

    def _set_ready(self, ready: bool) -> None:
        if ready:
            self._ready_flag.set()
            if self._ready_event is not None:
                self._ready_event.set()
        else:
            self._ready_flag.clear()
            if self._ready_event is not None:
                self._ready_event.clear()

    # -- connections (transport.Owner) ---------------------------------------------------

    def address_on(self, conn: Connection) -> str:
        """The address to tell the peer of ``conn`` in the handshake.

        Listening on a wildcard without ``advertise``, ``0.0.0.0:7600`` would tell it
        nothing: the local end of this very connection is an address of ours that the
        peer can reach, so that is what it gets.
        """
        if self._advertise is not None or routable(f"{self._host}:{self._port}"):
            return self.address
        return conn.local_address(self._port) or self.address

    def conn_opened(self, conn: Connection) -> None:
        pending = self._pending
        if len(pending) >= self.max_pending:
            # The oldest goes: an honest handshake takes a round trip or two, so what has
            # waited longest is most likely a stranger holding a slot (and its buffer).
            oldest = min(pending, key=lambda c: c.opened)
            self.door.log(
                logging.WARNING,
                "%d connections pending (max_pending): closing the oldest, %s",
                len(pending),
                oldest.describe(),
            )
            oldest.close("too many pending connections")
        pending.add(conn)
        self._reached_self(conn)

    def _learn_address(self, conn: Connection) -> None:
        """On a wildcard listen without ``advertise``: take an address a member reached us at as ours.

        Only from a member's connection (an operator's probe on 127.0.0.1 proves
        nothing to the cluster), and a loopback address gives way to a routable one.
        """
        if self._advertise is not None or routable(f"{self._host}:{self._port}") or self._core is None:
            return
        local = conn.local_address(self._port)
        if local is None or local == self._learned:
            return
        if self._learned is None or (is_loopback(parse_address(self._learned)[0]) and not is_loopback(local)):
            self._learned = local
            log.info("node %016x advertises %s (learned from its connections)", self.node_id, local)
            self._core.membership.advertise(local)
        else:
            self._core.membership.is_self(local)  # another address of ours: never dialed either

    def _reached_self(self, conn: Connection) -> None:
        """A dial of ours that came back to us (DNS lists this pod too): never dial that address again.

        Both ends of such a connection are ours, so each is the other's mirror: the
        one we accepted came from the socket the one we dialed is bound to. (The
        handshake refuses our own node id anyway; this also stops the redials.)
        """
        here, there = _ends(conn)
        if here is None or self._core is None:
            return
        for other in list(self._pending):
            if other is conn or other.initiator == conn.initiator or _ends(other) != (there, here):
                continue
            dialed = conn.dialed if conn.initiator else other.dialed
            if dialed is not None:
                log.info("address %s leads to this member itself: not dialing it again", dialed)
                self._core.membership.is_self(dialed)
            other.close("connected to itself")
            conn.close("connected to itself")
            return

    def conn_admitted(self, conn: Connection) -> None:
        assert self._core is not None
        self._pending.discard(conn)
        peer = conn.peer
        assert peer is not None
        existing = self._peers.get(peer)
        if existing is not None and not existing.closed:
            # Both sides dialed: keep one connection, the same one on both ends.
            keep = existing if self._core.keep_first(existing.initiator_id(), conn.initiator_id()) else conn
            drop = conn if keep is existing else existing
            self._peers[peer] = keep
            drop.close("duplicate connection")
            if keep is existing:
                if conn.dialed:
                    self._core.alias(conn.dialed, peer)
                return
        if not conn.handshake.peer_listen:
            conn.observer = True  # an operator's client: answers only, no membership
            return
        self._learn_address(conn)
        self._peers[peer] = conn
        log.debug("connected to %016x at %s", peer, conn.handshake.peer_listen)
        self._run(self._core.connected(peer, conn.handshake.peer_listen, time.monotonic(), dialed=conn.dialed))

    def conn_lost(self, conn: Connection) -> None:
        if conn.lost:
            return
        conn.lost = True
        self._pending.discard(conn)
        core = self._core
        if core is None:
            return
        if conn.peer is not None and self._peers.get(conn.peer) is conn:
            del self._peers[conn.peer]
            self._run(core.disconnected(conn.peer, time.monotonic()))
        elif conn.peer is None and conn.dialed and not self._stopping:
            self._run(core.dial_failed(conn.dialed, time.monotonic()))

    def conn_bytes(self, conn: Connection, count: int) -> None:
        if self._core is not None and self._core.booting and conn.peer is not None:
            self._core.booter.bytes_received(conn.peer, count)  # a boot's figures count the framing too

    def conn_received(self, conn: Connection, msg: Message) -> None:
        assert conn.peer is not None and self._core is not None
        if conn.observer:
            if not isinstance(msg, Query):
                raise ProtocolError(f"a client may only send queries, not {type(msg).__name__}")
            conn.send(self._queries.answer(msg))
            return
        self._run(self._core.message(conn.peer, msg, time.monotonic(), time.time()))

    async def _dial(self, address: str) -> None:
        try:
            host, port = parse_address(address)
            await asyncio.wait_for(
                self.loop.create_connection(
                    lambda: Connection(self, initiator=True, dialed=address),
                    host,
                    port,
                    ssl=self._client_ssl,
                    server_hostname=host if self._client_ssl else None,
                    ssl_handshake_timeout=self.handshake_timeout if self._client_ssl else None,
                ),
                min(self.handshake_timeout, CONNECT_TIMEOUT),
            )
        except (OSError, asyncio.TimeoutError, ValueError) as exc:
            log.debug("dial %s failed: %s", address, exc)
            if not self._stopping and self._core is not None:
                self._run(self._core.dial_failed(address, time.monotonic()))

    # -- carrying out actions ----------------------------------------------------------------

    def _flush_shortly(self) -> None:
        self.loop.call_later(FLUSH_DELAY, self._flush)

    def _flush(self) -> None:
        if self._core is not None and not self._stopping:
            self._run(self._core.flush(self._backlog, time.time()))

    def _backlog(self, peer: int) -> int:
        conn = self._peers.get(peer)
        return conn.backlog() if conn is not None else 0

    def _run(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Broadcast):
                frame = b""
                for peer in action.peers:
                    conn = self._peers.get(peer)
                    if conn is not None and not conn.closed:
                        frame = frame or encode(action.msg, self.max_frame_size)
                        conn.write(frame)
            elif isinstance(action, Send):
                conn = self._peers.get(action.peer)
                if conn is None:
                    continue
                if isinstance(action.msg, Ops) and conn.backlog() > self._config.max_peer_backlog:
                    # Answers to its Pulls and catch-ups that a peer does not read would pile up
                    # here without bound; what it asked for and never took, it can ask again.
                    self._chores.log(logging.WARNING, "%016x is not reading: answer dropped", action.peer)
                    continue
                conn.send(action.msg)
            elif isinstance(action, Dial):
                if not self._stopping:
                    self._spawn(self._dial(action.address))
            elif isinstance(action, Close):
                conn = self._peers.get(action.peer)
                if conn is not None:
                    conn.close(action.reason)
            elif isinstance(action, MemberUp):
                log.info("member %016x up at %s", action.peer, action.listen)
                for up_callback in self.on_member_up:
                    up_callback(action.peer, action.listen)
            elif isinstance(action, MemberDown):
                if not self._stopping:  # our own goodbye closes every connection: no news
                    log.info("member %016x down (%s)", action.peer, action.reason)
                for down_callback in self.on_member_down:
                    down_callback(action.peer, action.listen, action.reason)
            elif isinstance(action, StreamDump):
                if self._dumps.take(action.peer):
                    self._spawn(self._stream_dump(action))
                else:
                    conn = self._peers.get(action.peer)
                    if conn is not None:
                        conn.refuse(f"more than {DUMPS_QUEUED} dumps requested at once")
            elif isinstance(action, ReadSnapshot):
                self._spawn(self._read_snapshot(action.cache))
            elif isinstance(action, (Load, Deliver, Fail)):
                self._cluster.settle(action)
            elif isinstance(action, Ready):
                if action.ready:
                    self._gc.grown(sum(r.size() for r in self._core.replicas.values()) if self._core else 0)
                self._set_ready(action.ready)
        if self._core is not None:
            self._gc.pause(self._core.booting)

    async def _stream_dump(self, action: StreamDump) -> None:
        """Stream one dump; at most DUMPS_AT_ONCE to a peer at once, the rest wait their turn."""
        slots = self._dump_slots.setdefault(action.peer, asyncio.Semaphore(DUMPS_AT_ONCE))
        try:
            async with slots:
                await self._stream_one_dump(action)
        finally:
            self._dumps.give(action.peer)
            if not self._dumps.held(action.peer):
                self._dump_slots.pop(action.peer, None)

    async def _stream_one_dump(self, action: StreamDump) -> None:
        """The donor's streaming loop: one chunk at a time, waiting while the peer lags."""
        conn = self._peers.get(action.peer)
        assert self._core is not None
        replica = self._core.replicas.get(action.cache)
        if conn is None or replica is None:
            return
        stats = self._core.boot_stats(action.cache)
        try:
            for _, frame in warmboot.dump_stream(replica, action.stream, time.time, self.max_frame_size):
                if conn.closed:
                    return
                conn.write(frame)
                stats.bytes_served += len(frame)
                await conn.drained()
                await asyncio.sleep(0)
        except Exception:
            # The booter must not wait out its timeout for a dump that died here: an end
            # whose count is not what it received tells it to try the next donor.
            log.exception("dump of %s to %016x failed", action.cache, action.peer)
            conn.send(DumpEnd(action.cache, action.stream, -1))

    async def _read_snapshot(self, cache: str) -> None:
        ops = await self._snapshots.read(cache) if self._snapshots is not None else []
        if self._core is not None:
            self._run(self._core.snapshot_read(cache, ops, time.monotonic(), time.time()))

    def __repr__(self) -> str:
        return f"<shoal.Node {self.node_id:016x} {self.address}>"
