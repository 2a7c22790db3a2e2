"""The asyncio edge of a member: its thread and loop, sockets and timers; it decides nothing.

Everything the cluster decides happens in ``dispatch.Dispatcher``, which takes
events and returns actions. The driver feeds it: connections (transport.py)
report handshakes, frames, bytes and losses; a ticker reports time; the outbox
wakes a flush; a cache's cluster fetch reports misses and loads. It carries out
what comes back, one handler per kind of action (``_ACTIONS``): sends (a batch
of writes broadcast encoded once), dials, closes, dump streams (paced by the peer's
back-pressure), snapshot reads, readiness, the GC pause, and the answers a
waiting fetch gets. Chores that are no protocol (the GC, snapshot files, DNS)
are housekeeping.py's.

Threads: application threads call ``Cache`` methods; a write queues its op on
the dispatcher's outbox and wakes the loop at most once per flush, so ``set``
never waits for the network. Everything else runs on the loop: its own thread
after ``start_thread()``, or the caller's loop under ``async with Node``. The
one other way in from application threads is ``ClusterFetches``, which only
posts to the loop.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import ssl as _ssl
import threading
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from typing import Any

from . import warmboot
from .actions import (
    Action,
    BootStreaming,
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
from .config import Config
from .dispatch import FLUSH_DELAY, Dispatcher
from .errors import LoaderError, ProtocolError, ShoalError
from .handshake import cluster_key
from .housekeeping import Collector, Resolver, Snapshots, discover
from .leases import longest_wait
from .limits import LogLimiter, Supervisor
from .membership import routable
from .messages import DumpEnd, Message, Query
from .queries import Queries
from .singleflight import LOAD, VALUE
from .store import Key
from .transport import Connection, is_loopback, parse_address
from .wire import encode

log = logging.getLogger("shoal")

SCAN_PAUSE = 0.002
CONNECT_TIMEOUT = 3.0
"""A dial gives up after this (a member behind a partition drops the SYN): the next one, after
a backoff of at most 2 s, is what reconnects soon after the partition heals."""


def _ends(conn: Connection) -> tuple[tuple[object, ...] | None, tuple[object, ...] | None]:
    """(local, remote) host and port of a connection's socket."""
    if conn.transport is None:
        return None, None
    here, there = conn.transport.get_extra_info("sockname"), conn.transport.get_extra_info("peername")
    if not isinstance(here, tuple) or not isinstance(there, tuple):
        return None, None
    return tuple(here[:2]), tuple(there[:2])


class Driver:
    """Runs one member's ``Dispatcher`` on asyncio (the ``transport.Owner`` of its connections)."""

    def __init__(
        self,
        core: Dispatcher,
        config: Config,
        *,
        host: str,
        port: int,
        advertise: str | None,
        secret: bytes,
        discovery: str | None,
        ssl: _ssl.SSLContext | None,
        client_ssl: _ssl.SSLContext | None,
        resolver: Resolver,
        snapshots: Snapshots | None,
        queries: Queries,
    ) -> None:
        self.core = core
        self.config = config
        self.node_id = core.node_id
        self.handshake_timeout = config.handshake_timeout
        self.max_frame_size = config.max_frame_size
        self.max_clock_skew = config.max_clock_skew
        self.protocol_max = config.protocol_max
        self._host, self._port = host, port
        # What this member tells the others to dial. Unset on a wildcard listen: then
        # it is learned from connected sockets (see _learn_address).
        self._advertise = advertise
        self._learned: str | None = None
        self._secret = secret
        self._discovery = discovery
        self._ssl = ssl
        self._client_ssl = client_ssl or ssl
        self._resolver = resolver
        self._snapshots = snapshots
        self._queries = queries
        self.door = LogLimiter(log, clock=time.monotonic)  # refusals of strangers: they choose how many there are
        self._ticks = Supervisor("the node's timer", log, time.monotonic)
        self._chores = LogLimiter(log, burst=5, interval=60.0, clock=time.monotonic)
        # Collecting everything frozen (housekeeping.Collector) stops the loop: not so long that peers take us for dead.
        self._gc = Collector(config.gc_freeze, self._held, max_stall=config.failure_timeout / 2)
        self.fetches = ClusterFetches(self)
        self.on_member_up: list[Callable[[int, str], None]] = []
        self.on_member_down: list[Callable[[int, str, str], None]] = []
        self.peers: dict[int, Connection] = {}
        self.pending: set[Connection] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.ready_flag = threading.Event()
        self._ready_event: asyncio.Event | None = None
        self.stopping = False

    # -- what the facade asks --------------------------------------------------------------

    @property
    def address(self) -> str:
        """The address this member advertises: ``advertise``, else the one it listens on."""
        if self._advertise is not None:
            return self._advertise
        if self._learned is not None:
            return self._learned
        return f"{self._host}:{self._port}"

    @property
    def secret(self) -> bytes:
        return self._secret

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None, "node not running"
        return self._loop

    def call(self, fn: Callable[[], None]) -> bool:
        """Run ``fn`` on the loop soon (from any thread); False if the loop is not running."""
        loop = self._loop
        if loop is None or self.stopping:
            return False
        try:
            loop.call_soon_threadsafe(fn)
        except RuntimeError:  # the loop is closed: the node is gone
            return False
        return True

    def host(self, name: str, replica: Any, single_flight: bool) -> None:
        """Host a cache: now if the loop does not run yet, else on the loop (and not ready until it booted)."""
        if self._loop is None:
            self.run(self.core.host(name, replica, time.monotonic(), single_flight))
            return
        # Not ready from this moment, not from when the loop gets to it: a caller
        # that asks right away must wait for this cache's warm boot.
        self._set_ready(False)
        self._loop.call_soon_threadsafe(
            lambda: self.run(self.core.host(name, replica, time.monotonic(), single_flight))
        )

    def start_thread(self, timeout: float) -> None:
        """Run the loop on a thread of its own; returns once the member listens."""
        if self._thread is not None:
            raise ShoalError("node already started")
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.open())
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

    def stop_thread(self, timeout: float) -> None:
        if self._thread is None or self._loop is None:
            return
        loop = self._loop
        future = asyncio.run_coroutine_threadsafe(self.close(), loop)
        try:
            future.result(timeout)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join(timeout)
            self._thread = None

    async def ready(self, timeout: float | None) -> bool:
        if self._ready_event is None:
            raise ShoalError("node not running")
        if self._ready_event.is_set():  # wait_for(timeout=0) would not even look
            return True
        try:
            await asyncio.wait_for(self._ready_event.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    def backlogs(self) -> dict[str, int]:
        return {f"{p:016x}": c.backlog() for p, c in list(self.peers.items())}

    async def write_snapshot(self) -> int:
        if self._snapshots is None:
            raise ShoalError("no snapshot_path was given")
        return await self._snapshots.write(self.core.replicas, not self.core.booting)

    # -- lifecycle ---------------------------------------------------------------------

    async def open(self) -> None:
        self._loop = loop = asyncio.get_running_loop()
        self._ready_event = asyncio.Event()
        if self.ready_flag.is_set():
            self._ready_event.set()
        # The slow key (scrypt, ~50 ms of CPU) now, before anyone connects: not on the loop when a
        # first peer does, which may find it streaming a dump to another.
        cluster_key(self._secret)
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
        core = self.core
        core.listening(self.address)  # the core was made before the port was known
        core.wake = functools.partial(loop.call_soon_threadsafe, self._flush_shortly)
        core.backlog = self._backlog  # the core produces answers only while a peer has room
        log.info("node %016x listening on %s", self.node_id, self.address)
        self.run(core.start(time.monotonic(), time.time()))
        self._spawn(self._ticker())
        if self._discovery:
            self._spawn(discover(self._discovery, self._resolver, self.config.dns_interval, self._discovered))
        if self._snapshots is not None:
            self._spawn(self._snapshot_periodically())

    async def close(self) -> None:
        if self.stopping or self._loop is None:
            return
        self.stopping = True
        self.fetches.stopped()  # from now on a miss loads here, without asking the cluster
        if self._snapshots is not None:
            await self.write_snapshot()
        self.run(self.core.stop(time.monotonic(), time.time()))
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline and any(c.backlog() for c in self.peers.values()):
            await asyncio.sleep(0.01)
        if self._server is not None:
            self._server.close()
        for conn in list(self.peers.values()) + list(self.pending):
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
        supervise = self._ticks.run  # a round that raises is logged; heartbeats and repair go on
        while True:
            now = time.monotonic()
            supervise(self._written)
            supervise(functools.partial(self._tick, now))
            # A scan in progress (anti-entropy) goes on a slice at a time, with a short
            # pause between slices: spread out, a round never takes a core away from
            # replication in one burst (a burst showed as lag spikes on a busy machine).
            await asyncio.sleep(SCAN_PAUSE if self.core.busy else self.config.tick_interval)

    def _written(self) -> None:
        if not self.core.booting:  # a boot freezes once, at its end (Ready): not every tick of it
            self._gc.written(self._entries(), self._writes())

    def _entries(self) -> int:
        return sum(r.size() for r in self.core.replicas.values())

    def _writes(self) -> int:
        return sum(r.writes() for r in self.core.replicas.values())

    def frozen_collections(self) -> dict[str, float]:
        """The collector's collections of everything frozen (housekeeping.Collector): how many, the
        garbage objects they found, their seconds in all and the longest; a leaking application shows here."""
        gc_ = self._gc
        return {
            "count": gc_.reclaims,
            "garbage_found": gc_.reclaimed,
            "seconds": gc_.reclaim_seconds,
            "longest_seconds": gc_.longest_reclaim,
        }

    def _held(self) -> int:
        return sum(r.approx_bytes() for r in self.core.replicas.values())

    def _tick(self, now: float) -> None:
        self.run(self.core.tick(now, time.time()))

    def _discovered(self, addresses: list[str]) -> None:
        self.core.discovered([a for a in addresses if a != self.address])

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
            self.ready_flag.set()
            if self._ready_event is not None:
                self._ready_event.set()
        else:
            self.ready_flag.clear()
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
        pending = self.pending
        if len(pending) >= self.config.max_pending:
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
        if self._advertise is not None or routable(f"{self._host}:{self._port}"):
            return
        local = conn.local_address(self._port)
        if local is None or local == self._learned:
            return
        if self._learned is None or (is_loopback(parse_address(self._learned)[0]) and not is_loopback(local)):
            self._learned = local
            log.info("node %016x advertises %s (learned from its connections)", self.node_id, local)
            self.core.advertise(local)
        else:
            self.core.own_address(local)  # another address of ours: never dialed either

    def _reached_self(self, conn: Connection) -> None:
        """A dial of ours that came back to us (DNS lists this pod too): never dial that address again.

        Both ends of such a connection are ours, so each is the other's mirror: the
        one we accepted came from the socket the one we dialed is bound to. (The
        handshake refuses our own node id anyway; this also stops the redials.)
        """
        here, there = _ends(conn)
        if here is None:
            return
        for other in list(self.pending):
            if other is conn or other.initiator == conn.initiator or _ends(other) != (there, here):
                continue
            dialed = conn.dialed if conn.initiator else other.dialed
            if dialed is not None:
                log.info("address %s leads to this member itself: not dialing it again", dialed)
                self.core.own_address(dialed)
            other.close("connected to itself")
            conn.close("connected to itself")
            return

    def conn_admitted(self, conn: Connection) -> None:
        self.pending.discard(conn)
        peer = conn.peer
        assert peer is not None
        if conn.handshake.peer_listen:
            refused = self.core.admits(peer, time.monotonic())
            if refused is not None:  # an id a live connection holds: the newcomer goes, the holder stays
                log.error("refusing a connection from %s: %s", conn.describe(), refused)
                conn.close(refused)
                return
        existing = self.peers.get(peer)
        if existing is not None and not existing.closed:
            # Both sides dialed: keep one connection, the same one on both ends.
            keep = existing if self.core.keep_first(existing.initiator_id(), conn.initiator_id()) else conn
            drop = conn if keep is existing else existing
            self.peers[peer] = keep
            drop.close("duplicate connection")
            if keep is existing:
                if conn.dialed:
                    self.core.alias(conn.dialed, peer)
                return
        if not conn.handshake.peer_listen:
            conn.observer = True  # an operator's client: answers only, no membership
            return
        self._learn_address(conn)
        self.peers[peer] = conn
        log.debug("connected to %016x at %s", peer, conn.handshake.peer_listen)
        self.run(
            self.core.connected(
                peer, conn.handshake.peer_listen, time.monotonic(), dialed=conn.dialed, protocol=conn.handshake.protocol
            )
        )

    def conn_lost(self, conn: Connection) -> None:
        if conn.lost:
            return
        conn.lost = True
        self.pending.discard(conn)
        if conn.peer is not None and self.peers.get(conn.peer) is conn:
            del self.peers[conn.peer]
            self.run(self.core.disconnected(conn.peer, time.monotonic()))
        elif conn.peer is None and conn.dialed and not self.stopping:
            self.run(self.core.dial_failed(conn.dialed, time.monotonic()))

    def conn_drained(self, conn: Connection) -> None:
        if conn.peer is not None and self.peers.get(conn.peer) is conn and not self.stopping:
            self.run(self.core.drained(conn.peer, time.monotonic(), time.time()))

    def conn_bytes(self, conn: Connection, count: int) -> None:
        if conn.peer is not None:
            self.core.received_bytes(conn.peer, count)

    def conn_received(self, conn: Connection, msg: Message) -> None:
        assert conn.peer is not None
        if conn.observer:
            if not isinstance(msg, Query):
                raise ProtocolError(f"a client may only send queries, not {type(msg).__name__}")
            conn.send(self._queries.answer(msg))
            return
        self.run(self.core.message(conn.peer, msg, time.monotonic(), time.time()))

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
            if not self.stopping:
                self.run(self.core.dial_failed(address, time.monotonic()))

    # -- carrying out actions ----------------------------------------------------------------

    def _flush_shortly(self) -> None:
        self.loop.call_later(FLUSH_DELAY, self.flush)

    def flush(self) -> None:
        """Send the queued writes now."""
        if not self.stopping:
            self.run(self.core.flush(None, time.time()))  # core.backlog is ours since open()

    def _backlog(self, peer: int) -> int:
        conn = self.peers.get(peer)
        return conn.backlog() if conn is not None else 0

    def run(self, actions: list[Action]) -> None:
        """Carry out every action (on the loop); one that raises is logged (rate-limited) and the rest still run."""
        for action in actions:
            try:
                _ACTIONS[type(action)](self, action)
            except Exception:
                self._chores.log(logging.ERROR, "carrying out %s failed", type(action).__name__, exc_info=True)

    def _broadcast(self, action: Broadcast) -> None:
        frame = b""
        for peer in action.peers:
            conn = self.peers.get(peer)
            if conn is not None and not conn.closed:
                frame = frame or encode(action.msg, self.max_frame_size)
                conn.write(frame)

    def _send(self, action: Send) -> None:
        conn = self.peers.get(action.peer)
        if conn is not None:
            conn.send(action.msg)

    def _dial_action(self, action: Dial) -> None:
        if not self.stopping:
            self._spawn(self._dial(action.address))

    def _close(self, action: Close) -> None:
        conn = self.peers.get(action.peer)
        if conn is not None:
            conn.close(action.reason)

    def _member_up(self, action: MemberUp) -> None:
        log.info("member %016x up at %s", action.peer, action.listen)
        for callback in self.on_member_up:
            callback(action.peer, action.listen)

    def _member_down(self, action: MemberDown) -> None:
        if not self.stopping:  # our own goodbye closes every connection: no news
            log.info("member %016x down (%s)", action.peer, action.reason)
        for callback in self.on_member_down:
            callback(action.peer, action.listen, action.reason)

    def _stream_dump(self, action: StreamDump) -> None:
        self._spawn(self._dump(action))

    def _read_snapshot(self, action: ReadSnapshot) -> None:
        self._spawn(self._snapshot_read(action.cache))

    def _ready(self, action: Ready) -> None:
        if action.ready:
            self._gc.written(self._entries(), self._writes())
        self._set_ready(action.ready)

    def _boot_streaming(self, action: BootStreaming) -> None:
        if not action.active:
            self._gc.streamed(self._entries(), self._writes())
        self._gc.pause(action.active)

    async def _dump(self, action: StreamDump) -> None:
        """The donor's streaming loop: one chunk at a time, waiting while the peer lags."""
        try:
            conn = self.peers.get(action.peer)
            replica = self.core.replicas.get(action.cache)
            if conn is None or replica is None:
                return
            stats = self.core.boot_stats(action.cache)
            try:
                dump = warmboot.dump_stream(replica, action.stream, time.time, self.max_frame_size)
                for _, frame in dump:
                    current = self.peers.get(action.peer)
                    if current is not conn:
                        # The connection was replaced (both sides dialed) or lost: chunks went with
                        # it, so tell the booter on the new one, if any, that this dump failed.
                        if current is not None:
                            current.send(DumpEnd(action.cache, action.stream, -1))
                        return
                    conn.write(frame)
                    stats.bytes_served += len(frame)
                    await conn.drained()
                    await after_due_timers()
            except Exception:
                # The booter must not wait out its timeout for a dump that died here: an end
                # whose count is not what it received tells it to try the next donor.
                log.exception("dump of %s to %016x failed", action.cache, action.peer)
                conn.send(DumpEnd(action.cache, action.stream, -1))
        finally:
            if not self.stopping:
                self.run(self.core.dump_done(action.peer, time.monotonic()))

    async def _snapshot_read(self, cache: str) -> None:
        ops = await self._snapshots.read(cache) if self._snapshots is not None else []
        self.run(self.core.snapshot_read(cache, ops, time.monotonic(), time.time()))


async def after_due_timers() -> None:
    """Yield to the loop behind every timer already due (heartbeats, the tick, a flush).

    ``sleep(0)`` queues the caller ahead of them: a timer due during a dump's chunk waited
    for that chunk and the next one (a donor's 1 ms probe saw gaps of two chunks). A timer
    due a microsecond from now is run in time order with the others, after them.
    """
    await asyncio.sleep(1e-6)


class ClusterFetches:
    """A hosted cache's way to the cluster's load leases (singleflight.Cluster), from any thread.

    Application threads only post to the loop; the table of waiting fetches is
    read and written on the loop alone. ``ask`` returns a future the loop settles
    with ``LOAD`` (load it here), ``VALUE`` (the value arrived) or ``LoaderError``.
    A member that does not run (not started, or stopping) answers ``LOAD`` at
    once: alone, it loads for itself.
    """

    def __init__(self, driver: Driver) -> None:
        self._driver = driver
        self._waiting: dict[tuple[str, Key], Future[str]] = {}
        self.limit = longest_wait(driver.config.load_timeout)

    def on_loop(self) -> bool:
        """True when called on the member's loop, which must not block waiting for its own answer."""
        try:
            return asyncio.get_running_loop() is self._driver._loop
        except RuntimeError:
            return False

    def ask(self, cache: str, key: Key) -> Future[str]:
        answer: Future[str] = Future()

        def asked() -> None:
            previous = self._waiting.get((cache, key))
            if previous is not None and not previous.done():
                previous.set_result(LOAD)  # a caller that gave up waiting asks again: one answer each
            self._waiting[cache, key] = answer
            self._driver.run(self._driver.core.miss(cache, key, time.monotonic()))

        if not self._driver.call(asked):
            answer.set_result(LOAD)
        return answer

    def report(self, cache: str, key: Key, error: BaseException | None = None) -> None:
        """The local loader ran after ``LOAD``: tell the cluster how it went."""
        driver = self._driver
        if error is None:

            def loaded() -> None:
                # The value is queued for the usual flush delay: send it now, ahead of our
                # report, so the waiters have it as soon as they hear the load is over.
                driver.flush()
                driver.run(driver.core.loaded(cache, key, time.monotonic()))

            driver.call(loaded)
        else:
            kind, text = type(error).__name__, str(error)
            driver.call(lambda: driver.run(driver.core.load_failed(cache, key, kind, text, time.monotonic())))

    def give_back(self, cache: str, key: Key) -> None:
        """The local callers went away (cancelled) before loading: the key's lease passes on."""
        driver = self._driver

        def abandoned() -> None:
            self._waiting.pop((cache, key), None)
            driver.run(driver.core.abandoned(cache, key, time.monotonic()))

        driver.call(abandoned)

    def settle(self, cache: str, key: Key, answer: str | BaseException) -> None:
        """On the loop: answer the fetch waiting on ``key``."""
        flight = self._waiting.pop((cache, key), None)
        if flight is None or flight.done():
            return
        if isinstance(answer, BaseException):
            flight.set_exception(answer)
        else:
            flight.set_result(answer)

    def stopped(self) -> None:
        """On the loop, as the member stops: whoever still waits loads for itself."""
        for cache, key in list(self._waiting):
            self.settle(cache, key, LOAD)

    def __len__(self) -> int:
        return len(self._waiting)


def _load(driver: Driver, action: Load) -> None:
    driver.fetches.settle(action.cache, action.key, LOAD)


def _deliver(driver: Driver, action: Deliver) -> None:
    driver.fetches.settle(action.cache, action.key, VALUE)


def _fail(driver: Driver, action: Fail) -> None:
    driver.fetches.settle(action.cache, action.key, LoaderError(action.error_type, action.error_text))


_ACTIONS: dict[type, Callable[[Driver, Any], None]] = {
    Broadcast: Driver._broadcast,
    Send: Driver._send,
    Dial: Driver._dial_action,
    Close: Driver._close,
    MemberUp: Driver._member_up,
    MemberDown: Driver._member_down,
    StreamDump: Driver._stream_dump,
    ReadSnapshot: Driver._read_snapshot,
    Ready: Driver._ready,
    BootStreaming: Driver._boot_streaming,
    Load: _load,
    Deliver: _deliver,
    Fail: _fail,
}
"""How the driver carries out each kind of action: one small handler each, no policy."""
