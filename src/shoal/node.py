"""The asyncio driver: sockets, timers and the background thread around the sans-IO core.

Only this module does I/O. A connection feeds bytes to ``wire.FrameDecoder``;
until the HMAC handshake is done the frames go to ``handshake.Handshake`` (with a
small frame limit), afterwards to membership, replication and warm boot, whose
actions this module carries out. One connection per peer carries every cache.

Threads: application threads call ``Cache`` methods; a write queues its op on a
thread-safe deque and wakes the loop at most once per flush, so ``set`` never
waits for the network. Everything else runs on the node's loop: its own thread
after ``start()``, or the caller's loop under ``async with``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import ipaddress
import logging
import os
import ssl as _ssl
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from types import TracebackType
from typing import Any, cast

from . import replication as rep
from . import snapshot, warmboot
from .actions import Action, Close, Dial, MemberDown, MemberUp, Send
from .cache import Cache, Op
from .clock import HybridClock
from .errors import ProtocolError, ShoalError
from .handshake import Handshake
from .membership import Membership
from .messages import (
    Answer,
    Digest,
    DumpChunk,
    DumpEnd,
    DumpRequest,
    Gossip,
    Heartbeat,
    Leave,
    Listing,
    Message,
    Ops,
    Pull,
    Query,
    Refused,
    SizeReply,
    SizeRequest,
)
from .serializer import Serializer
from .wire import DEFAULT_MAX_FRAME, HANDSHAKE_MAX_FRAME, FrameDecoder, encode

log = logging.getLogger("shoal")

Resolver = Callable[[str, int], Awaitable[list[str]]]

TICK = 0.1
FLUSH_DELAY = 0.001
SCAN_PAUSE = 0.002
GC_FREEZE_MIN = 50_000
FLUSH_MAX_OPS = 1000


def parse_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"address must be host:port, not {address!r}")
    return host.strip("[]"), int(port)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def _dns_resolver(name: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(name, port, type=1)
    return sorted({f"{info[4][0]}:{port}" for info in infos})


class _Conn(asyncio.Protocol):
    """One TCP connection: framing, handshake, then hands messages to the node."""

    def __init__(self, node: Node, initiator: bool, dialed: str | None = None) -> None:
        self.node = node
        self.initiator = initiator
        self.dialed = dialed
        self.transport: asyncio.Transport | None = None
        self.decoder = FrameDecoder(HANDSHAKE_MAX_FRAME)
        factory = Handshake.initiator if initiator else Handshake.acceptor
        self.handshake = factory(node._secret, node.node_id, node.address)
        self.peer: int | None = None
        self.observer = False
        self.closed = False
        self.lost = False  # the node has been told (close() and connection_lost both report)
        self.bytes_in = 0
        self._timer: asyncio.TimerHandle | None = None
        self._writable = asyncio.Event()
        self._writable.set()

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # cast, not isinstance: uvloop's transports are not asyncio.Transport subclasses
        self.transport = cast(asyncio.Transport, transport)
        self.node._pending.add(self)
        self._timer = self.node._loop.call_later(self.node.handshake_timeout, self._handshake_timeout)
        for msg in self.handshake.start():
            self.send(msg)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.bytes_in += len(data)
        try:
            for msg in self.decoder.feed(data):
                if self.closed:
                    return
                if self.peer is None:
                    self._handshake(msg)
                else:
                    self.node._on_message(self, msg)
        except ProtocolError as exc:
            self.refuse(str(exc))
        except Exception as exc:  # nothing a peer sends may take the node down
            log.exception("error handling a frame from %s", self.describe())
            self.close(f"internal error: {exc!r}")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._writable.set()
        if self._timer is not None:
            self._timer.cancel()
        self.node._lost(self)

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    # handshake

    def _handshake(self, msg: Message) -> None:
        for reply in self.handshake.receive(msg):
            self.send(reply)
        if self.handshake.done:
            if self._timer is not None:
                self._timer.cancel()
            self.decoder.max_frame_size = self.node.max_frame_size
            self.peer = self.handshake.peer_id
            self.node._admitted(self)

    def _handshake_timeout(self) -> None:
        if self.peer is None and not self.closed:
            self.refuse("handshake did not finish in time")

    # sending

    def send(self, msg: Message) -> None:
        self.write(encode(msg, self.node.max_frame_size))

    def write(self, frame: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(frame)

    def backlog(self) -> int:
        return self.transport.get_write_buffer_size() if self.transport is not None else 0

    async def drained(self) -> None:
        await self._writable.wait()

    def refuse(self, reason: str) -> None:
        log.warning("closing connection %s: %s", self.describe(), reason)
        if self.peer is None:
            with contextlib.suppress(Exception):
                self.send(Refused(reason[:200]))
        self.close(reason)

    def close(self, reason: str) -> None:
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.close()
            self.node._lost(self)

    def describe(self) -> str:
        addr = self.transport.get_extra_info("peername") if self.transport else None
        who = f"{self.peer:016x}" if self.peer is not None else "unauthenticated"
        return f"{who} at {addr}"

    def initiator_id(self) -> int:
        assert self.peer is not None
        return self.node.node_id if self.initiator else self.peer


class _CacheState:
    """A hosted cache plus its replication and warm-boot figures."""

    def __init__(self, cache: Cache) -> None:
        self.cache = cache
        self.booted = False
        self.boot = warmboot.BootStats()


class Node:
    """One member of a shoal cluster: hosts named caches and keeps them replicated."""

    def __init__(
        self,
        listen: str = "127.0.0.1:0",
        seeds: list[str] | tuple[str, ...] = (),
        secret: str | bytes | None = None,
        *,
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
        resolver: Resolver | None = None,
        dns_interval: float = 10.0,
        snapshot_path: str | os.PathLike[str] | None = None,
        snapshot_interval: float = 60.0,
        gc_freeze: bool = True,
    ) -> None:
        host, port = parse_address(listen)
        if secret is None and not _is_loopback(host):
            raise ShoalError(f"refusing to listen on non-loopback {host!r} without a cluster secret")
        if warm_donors not in (1, 2):
            raise ValueError("warm_donors is 1 or 2")
        self._host, self._port = host, port
        self._secret = secret.encode() if isinstance(secret, str) else (secret or b"")
        self.node_id = int.from_bytes(os.urandom(8), "big")
        self.seeds = list(seeds)
        self.discovery = discovery
        self._ssl = ssl
        self._client_ssl = client_ssl or ssl
        self.failure_timeout = failure_timeout
        self.heartbeat_interval = heartbeat_interval
        self.handshake_timeout = handshake_timeout
        self.max_frame_size = max_frame_size
        self.max_peer_backlog = max_peer_backlog
        self.anti_entropy_interval = anti_entropy_interval
        self.warm_donors = warm_donors
        self.warm_timeout = warm_timeout
        self.boot_wait = boot_wait
        self._resolver = resolver or _dns_resolver
        self.dns_interval = dns_interval
        self.snapshot_path = snapshot_path
        self.gc_freeze = gc_freeze
        self._frozen_at = 0
        self.snapshot_interval = snapshot_interval
        self._snapshot: dict[str, list[Op]] | None = None
        self.on_member_up: list[Callable[[int, str], None]] = []
        self.on_member_down: list[Callable[[int, str, str], None]] = []

        self._caches: dict[str, _CacheState] = {}
        self._flush_pending = False
        self._early_ops: list[tuple[str, Op]] = []
        self._peers: dict[int, _Conn] = {}
        self._pending: set[_Conn] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self._thread: threading.Thread | None = None
        self._ready_flag = threading.Event()
        self._ready_event: asyncio.Event | None = None
        self._stopping = False
        self._started_at = 0.0
        self.replicator: rep.Replicator = None  # type: ignore[assignment]
        self.membership: Membership = None  # type: ignore[assignment]
        self._boot = warmboot.Booter(self)

    # -- public API ------------------------------------------------------------------

    @property
    def address(self) -> str:
        return f"{self._host}:{self._port}"

    def cache(
        self,
        name: str,
        ttl: float | timedelta | None = None,
        max_entries: int | None = None,
        *,
        serializer: Serializer | None = None,
        tombstone_ttl: float = 600.0,
    ) -> Cache:
        """The named cache on this node, created on first use; every member hosting it shares it."""
        state = self._caches.get(name)
        if state is not None:
            return state.cache
        clock = HybridClock(self.node_id)  # one per cache: it is only called under that cache's lock
        cache = Cache(ttl, max_entries, serializer=serializer, name=name, clock=clock, tombstone_ttl=tombstone_ttl)
        cache.replicate = functools.partial(self._enqueue, name)  # C-level: one Python frame less per write
        self._caches[name] = _CacheState(cache)
        if self._loop is not None and self.membership is not None:
            # Not ready from this moment, not from when the loop gets to _host_cache:
            # a caller that asks right away must wait for this cache's warm boot.
            self._ready_flag.clear()
            if self._ready_event is not None:
                self._ready_event.clear()
            self._loop.call_soon_threadsafe(self._host_cache, name)
        return cache

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
        if self._thread is None:
            return
        future = asyncio.run_coroutine_threadsafe(self._close(), self._loop)
        try:
            future.result(timeout)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)
            self._thread = None

    def wait_ready(self, timeout: float | None = None) -> bool:
        """True once every cache finished its warm boot (a readiness probe)."""
        return self._ready_flag.wait(timeout)

    async def ready(self, timeout: float | None = None) -> bool:
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
        if self.membership is not None:
            for m in list(self.membership.members.values()):
                rows.append(
                    {
                        "id": f"{m.node_id:016x}",
                        "address": m.listen,
                        "state": m.state,
                        "last_heard": round(now - m.last_heard, 3),
                        "caches": sorted(m.caches),
                    }
                )
        return rows

    def stats(self) -> dict[str, Any]:
        caches = {}
        for name, state in list(self._caches.items()):
            figures = state.cache.stats()
            if self.replicator is not None:
                figures.update(self.replicator.figures_of(name))
                figures["queue_depth"] = sum(1 for n, _ in list(self.replicator.outbox) if n == name)
            figures["warm_boot"] = state.boot.as_dict()
            caches[name] = figures
        return {
            "id": f"{self.node_id:016x}",
            "address": self.address,
            "ready": self._ready_flag.is_set(),
            "members_up": len(self.membership.up_peers()) if self.membership else 0,
            "peer_backlog_bytes": {f"{p:016x}": c.backlog() for p, c in list(self._peers.items())},
            "caches": caches,
        }

    # -- lifecycle ---------------------------------------------------------------------

    async def _open(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._ready_event = asyncio.Event()
        self._server = await self._loop.create_server(
            lambda: _Conn(self, initiator=False), self._host, self._port, ssl=self._ssl, reuse_address=True
        )
        sock = self._server.sockets[0]
        self._port = sock.getsockname()[1]
        self._started_at = time.monotonic()
        self.membership = Membership(
            self.node_id,
            self.address,
            seeds=[s for s in self.seeds if s != self.address],
            failure_timeout=self.failure_timeout,
            heartbeat_interval=self.heartbeat_interval,
        )
        for name in self._caches:
            self.membership.caches.add(name)
        self.replicator = rep.Replicator(
            self.membership,
            {name: state.cache for name, state in self._caches.items()},
            interval=self.anti_entropy_interval,
        )
        log.info("node %016x listening on %s", self.node_id, self.address)
        self._spawn(self._ticker())
        if self.discovery:
            self._spawn(self._discover())
        for name in list(self._caches):
            self._spawn(self._boot.boot(name))
        self._check_ready()
        if self.snapshot_path is not None:
            self._spawn(self._snapshots())
        if self._early_ops:
            self.replicator.outbox.extend(self._early_ops)
            self._early_ops.clear()
            self._schedule_flush()

    async def _close(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        self._flush(everything=True)
        if self.snapshot_path is not None:
            await self.write_snapshot()
        for action in self.membership.leave():
            self._do(action)
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
        log.info("node %016x stopped", self.node_id)

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("node task failed", exc_info=task.exception())

    def freeze_grown_heap(self) -> None:
        """Hide the cached entries from Python's cyclic GC once they have grown.

        A full collection walks every object: with a million entries that is
        ~0.2 s with the loop (and every thread) stopped, the main cause of
        replication lag spikes. Entries never form cycles, so the collector has
        nothing to find among them; ``gc.freeze()`` moves everything alive into
        a generation it skips. A young collection first, so recent garbage is not
        frozen with them. Process-wide: ``Node(gc_freeze=False)`` turns it off.
        """
        if not self.gc_freeze:
            return
        total = sum(len(state.cache.store.data) for state in self._caches.values())
        if total >= GC_FREEZE_MIN and total > self._frozen_at * 1.25:
            gc.collect(1)
            gc.freeze()
            self._frozen_at = total
            log.debug("gc.freeze() at %d entries", total)

    async def _ticker(self) -> None:
        next_freeze = 0.0
        while True:
            now = time.monotonic()
            if now >= next_freeze:
                next_freeze = now + 1.0
                self.freeze_grown_heap()
            self._run(self.membership.tick(now))
            self._run(self.replicator.tick(now))
            # A scan in progress (anti-entropy) goes on a slice at a time, with a short
            # pause between slices: spread out, a round never takes a core away from
            # replication in one burst (a burst showed as lag spikes on a busy machine).
            await asyncio.sleep(SCAN_PAUSE if self.replicator.busy else TICK)

    async def _discover(self) -> None:
        kind, _, rest = (self.discovery or "").partition(":")
        if kind != "dns":
            raise ShoalError(f"unknown discovery {self.discovery!r}; expected dns:NAME:PORT")
        name, port = parse_address(rest)
        while True:
            try:
                addresses = await self._resolver(name, port)
                self.membership.discovered([a for a in addresses if a != self.address])
            except OSError as exc:
                log.warning("DNS discovery of %s failed: %s", name, exc)
            await asyncio.sleep(self.dns_interval)

    # -- snapshots ------------------------------------------------------------------------

    async def write_snapshot(self) -> int:
        """Write every cache to ``snapshot_path`` (on a worker thread: the loop keeps serving)."""
        assert self.snapshot_path is not None
        if not all(state.booted for state in self._caches.values()):
            # A cache still booting holds part of the data at most: keep the last good file.
            log.warning("not writing snapshot %s: a cache has not finished its warm boot", self.snapshot_path)
            return 0
        caches = [(n, s.cache.store.entries(), s.cache.serializer.dumps) for n, s in self._caches.items()]
        try:
            count = await asyncio.to_thread(snapshot.write, self.snapshot_path, caches, time.time())
        except OSError as exc:
            log.error("writing snapshot %s failed: %s", self.snapshot_path, exc)
            return 0
        log.info("snapshot of %d entries written to %s", count, self.snapshot_path)
        return count

    async def load_snapshot(self, name: str) -> list[Op]:
        """Entries of ``name`` from the snapshot file, read once; [] if none or corrupt."""
        if self.snapshot_path is None:
            return []
        if self._snapshot is None:
            try:
                self._snapshot = await asyncio.to_thread(snapshot.read, self.snapshot_path, time.time())
            except FileNotFoundError:
                self._snapshot = {}
            except (snapshot.CorruptSnapshot, OSError) as exc:
                log.error("ignoring snapshot: %s", exc)
                self._snapshot = {}
        return self._snapshot.pop(name, [])

    async def _snapshots(self) -> None:
        while True:
            await asyncio.sleep(self.snapshot_interval)
            await self.write_snapshot()

    def _check_ready(self) -> None:
        """Ready once every hosted cache has booted (called as each boot ends)."""
        if all(s.booted for s in self._caches.values()):
            self._ready_flag.set()
            if self._ready_event is not None:
                self._ready_event.set()

    def _host_cache(self, name: str) -> None:
        self.replicator.caches[name] = self._caches[name].cache  # type: ignore[index]
        self._ready_flag.clear()
        if self._ready_event is not None:
            self._ready_event.clear()
        for action in self.membership.host(name):
            self._do(action)
        self._spawn(self._boot.boot(name))

    # -- connections ---------------------------------------------------------------------

    async def _dial(self, address: str) -> None:
        try:
            host, port = parse_address(address)
            await asyncio.wait_for(
                self._loop.create_connection(
                    lambda: _Conn(self, initiator=True, dialed=address),
                    host,
                    port,
                    ssl=self._client_ssl,
                    server_hostname=host if self._client_ssl else None,
                ),
                self.handshake_timeout,
            )
        except (OSError, asyncio.TimeoutError, ValueError) as exc:
            log.debug("dial %s failed: %s", address, exc)
            if not self._stopping:
                self.membership.dial_failed(address, time.monotonic())

    def _admitted(self, conn: _Conn) -> None:
        self._pending.discard(conn)
        peer = conn.peer
        assert peer is not None
        existing = self._peers.get(peer)
        if existing is not None and not existing.closed:
            # Both sides dialed: keep the connection the smaller id initiated, on both ends.
            keep = existing if existing.initiator_id() <= conn.initiator_id() else conn
            drop = conn if keep is existing else existing
            self._peers[peer] = keep
            drop.close("duplicate connection")
            if keep is existing:
                if conn.dialed:
                    self.membership.alias(conn.dialed, peer)
                return
        if not conn.handshake.peer_listen:
            conn.observer = True  # an operator's client: answers only, no membership
            return
        self._peers[peer] = conn
        log.debug("connected to %016x at %s", peer, conn.handshake.peer_listen)
        now = time.monotonic()
        for action in self.membership.connected(peer, conn.handshake.peer_listen, now, dialed=conn.dialed):
            self._do(action)

    def _lost(self, conn: _Conn) -> None:
        if conn.lost:
            return
        conn.lost = True
        self._pending.discard(conn)
        if conn.peer is not None and self._peers.get(conn.peer) is conn:
            del self._peers[conn.peer]
            if self.membership is not None:
                for action in self.membership.disconnected(conn.peer, time.monotonic()):
                    self._do(action)
        elif conn.peer is None and conn.dialed and self.membership is not None and not self._stopping:
            self.membership.dial_failed(conn.dialed, time.monotonic())

    def _do(self, action: Action) -> None:
        if isinstance(action, Send):
            conn = self._peers.get(action.peer)
            if conn is not None:
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
            self.replicator.needs_repair.add(action.peer)  # a member that comes back is caught up first
        elif isinstance(action, MemberDown):
            if not self._stopping:  # our own goodbye closes every connection: no news
                log.info("member %016x down (%s)", action.peer, action.reason)
            for down_callback in self.on_member_down:
                down_callback(action.peer, action.listen, action.reason)
            self._boot.member_down(action.peer)

    def send(self, peer: int, msg: Message) -> bool:
        conn = self._peers.get(peer)
        if conn is None or conn.closed:
            return False
        conn.send(msg)
        return True

    def peer_conn(self, peer: int) -> _Conn | None:
        return self._peers.get(peer)

    # -- messages ----------------------------------------------------------------------

    def _on_message(self, conn: _Conn, msg: Message) -> None:
        peer = conn.peer
        assert peer is not None
        if conn.observer:
            if not isinstance(msg, Query):
                raise ProtocolError(f"a client may only send queries, not {type(msg).__name__}")
            conn.send(self._answer(msg))
            return
        now = time.monotonic()
        if isinstance(msg, (Gossip, Heartbeat, Leave)):
            for action in self.membership.received(peer, msg, now):
                self._do(action)
            return
        self.membership.heard(peer, now)
        if isinstance(msg, (Ops, Digest, Listing, Pull)):
            self._run(self.replicator.received(peer, msg))
        elif isinstance(msg, SizeRequest):
            self._boot.on_size_request(peer, msg)
        elif isinstance(msg, SizeReply):
            self._boot.on_size_reply(peer, msg)
        elif isinstance(msg, DumpRequest):
            self._spawn(self._boot.serve_dump(peer, msg))
        elif isinstance(msg, DumpChunk):
            self._boot.on_chunk(peer, msg)
        elif isinstance(msg, DumpEnd):
            self._boot.on_end(peer, msg)
        else:
            raise ProtocolError(f"unexpected {type(msg).__name__} after the handshake")

    # -- replication ---------------------------------------------------------------------

    def _enqueue(self, name: str, op: Op) -> None:
        """Called on application threads: queue the op, wake the loop once per flush."""
        if self.replicator is None:  # not started: nobody to send to yet
            self._early_ops.append((name, op))
            return
        self.replicator.outbox.append((name, op))
        if not self._flush_pending and self._loop is not None and not self._stopping:
            self._schedule_flush()

    def _schedule_flush(self) -> None:
        self._flush_pending = True
        try:
            self._loop.call_soon_threadsafe(self._flush_shortly)
        except RuntimeError:  # loop closed: the node is gone, ops stay local
            self._flush_pending = False

    def _flush_shortly(self) -> None:
        """Let writes gather for FLUSH_DELAY: fewer, larger frames, and far fewer wake-ups
        (each costs the writing thread a syscall and a GIL hand-off)."""
        self._loop.call_later(FLUSH_DELAY, self._flush)

    def _flush(self, everything: bool = False) -> None:
        # Clear the flag before draining: an op queued after this point schedules
        # another flush instead of being stranded.
        self._flush_pending = False
        self._run(self.replicator.flush(None if everything else FLUSH_MAX_OPS * 20))
        if self.replicator.outbox and not self._flush_pending:
            self._schedule_flush()

    def _run(self, actions: list[Action]) -> None:
        """Carry out actions; an Ops message sent to many peers is encoded once."""
        last: Message | None = None
        frame = b""
        for action in actions:
            if not isinstance(action, Send) or not isinstance(action.msg, Ops):
                self._do(action)
                continue
            conn = self._peers.get(action.peer)
            if conn is None or conn.closed:
                continue
            if conn.backlog() > self.max_peer_backlog:
                if action.peer not in self.replicator.needs_repair:
                    log.warning("member %016x is not reading: dropping its writes, repair will follow", action.peer)
                self.replicator.dropped(action.peer, action.msg)  # not reading: repair later
                continue
            if action.msg is not last:
                last, frame = action.msg, encode(action.msg, self.max_frame_size)
            conn.write(frame)

    def _answer(self, msg: Query) -> Answer:
        """Operator queries: members, stats; probe and set_many (read and write keys, for shoal demo)."""
        if msg.what == "members":
            return Answer(True, {"members": self.members()})
        if msg.what == "stats":
            return Answer(True, self.stats())
        if msg.what == "probe" and len(msg.args) == 2 and type(msg.args[1]) is list:
            state = self._caches.get(msg.args[0]) if type(msg.args[0]) is str else None
            if state is None:
                return Answer(False, {"error": f"no cache {msg.args[0]!r} here"})
            hits = sum(1 for key in msg.args[1] if type(key) in (str, bytes, int) and key in state.cache)
            return Answer(True, {"hits": hits, "entries": len(state.cache.store.data), "ready": state.booted})
        if msg.what == "set_many" and len(msg.args) == 2 and type(msg.args[1]) is dict:
            state = self._caches.get(msg.args[0]) if type(msg.args[0]) is str else None
            if state is None:
                return Answer(False, {"error": f"no cache {msg.args[0]!r} here"})
            try:
                state.cache.set_many(msg.args[1])
            except (TypeError, ValueError) as exc:
                return Answer(False, {"error": str(exc)})
            return Answer(True, {"set": len(msg.args[1])})
        return Answer(False, {"error": f"unknown query {msg.what!r}"})

    def __repr__(self) -> str:
        return f"<shoal.Node {self.node_id:016x} {self.address}>"
