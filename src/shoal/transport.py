"""Connections between members: TCP (optionally TLS), framing, the handshake, back-pressure.

One ``Connection`` per socket. It feeds received bytes to ``wire.FrameDecoder``;
until the HMAC handshake is done the frames go to ``handshake.Handshake`` (with
a small frame limit and a deadline), afterwards every message goes to its
``Owner`` (the node). From the handshake on, every frame in both directions is
authenticated under this connection's keys (wire.py's FrameSealer and
``FrameDecoder.authenticate``), so a relay that passed the handshake through can
add, replay or reorder nothing. A stranger's refusal is logged through the
owner's rate-limited ``door``: strangers decide how often it happens.

Membership frames never wait behind bulk data. Heartbeats and gossip (``URGENT``)
go straight into the socket's buffer; every other frame after the handshake waits
in the connection's own queue and moves into the buffer only while it holds less
than ``BULK_HIGH_WATER`` (asyncio's pause/resume_writing say when), so a heartbeat
queues behind at most that plus one frame, never behind megabytes of Ops. Frames
are sealed (their sequence number and MAC) as they enter the socket's buffer, so
the peer sees them in sealed order whatever overtook what. Only heartbeats and
gossip overtake: the order of everything else (Ops before the CaughtUp that ends
them, dump chunks before their DumpEnd, a Leave after the last Ops) is kept.
``backlog()`` counts both the queue and the buffer; ``drained()`` waits until
both have room, which is all the flow control a member needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from collections import deque
from typing import Protocol, cast

from .errors import ProtocolError
from .handshake import Handshake
from .limits import LogLimiter
from .messages import Gossip, Heartbeat, Message, Refused
from .wire import HANDSHAKE_MAX_FRAME, FrameDecoder, FrameSealer, encode

log = logging.getLogger("shoal")

URGENT = (Heartbeat, Gossip)
"""Frames that go ahead of queued bulk data: what a peer's failure detector waits for."""
BULK_HIGH_WATER = 256 * 1024
"""Bulk frames move into the socket's buffer while it holds less than this."""


def parse_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"address must be host:port, not {address!r}")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Owner(Protocol):
    """What a connection needs from the node that owns it."""

    node_id: int
    handshake_timeout: float
    max_frame_size: int
    max_clock_skew: float
    protocol_max: int
    door: LogLimiter

    @property
    def secret(self) -> bytes: ...

    @property
    def address(self) -> str: ...

    def address_on(self, conn: Connection) -> str:
        """The address to tell the peer of ``conn`` in the handshake (it may depend on the socket's local end)."""
        ...

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    def conn_opened(self, conn: Connection) -> None:
        """A connection is up and pending its handshake (the owner may close others: max_pending)."""
        ...

    def conn_admitted(self, conn: Connection) -> None: ...

    def conn_bytes(self, conn: Connection, count: int) -> None: ...

    def conn_received(self, conn: Connection, msg: Message) -> None: ...

    def conn_lost(self, conn: Connection) -> None: ...

    def conn_drained(self, conn: Connection) -> None:
        """The peer took what was queued for it: there is room for more."""
        ...


class Connection(asyncio.Protocol):
    """One TCP connection: framing, handshake, then hands messages to its owner."""

    def __init__(self, owner: Owner, initiator: bool, dialed: str | None = None) -> None:
        self.owner = owner
        self.initiator = initiator
        self.dialed = dialed
        self.transport: asyncio.Transport | None = None
        self.decoder = FrameDecoder(HANDSHAKE_MAX_FRAME)
        self.handshake: Handshake  # made in connection_made, once the socket's local end is known
        self.sealer: FrameSealer | None = None  # once admitted, every frame we write carries a MAC
        self.peer: int | None = None
        self.observer = False
        self.closed = False
        self.lost = False  # the owner has been told (close() and connection_lost both report)
        self.bytes_in = 0
        self.opened = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._writable = asyncio.Event()
        self._writable.set()
        self._paused = False  # the socket's buffer is over BULK_HIGH_WATER
        self._bulk: deque[bytes] = deque()  # frames waiting for room, not yet sealed
        self._bulk_bytes = 0

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # cast, not isinstance: uvloop's transports are not asyncio.Transport subclasses
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=BULK_HIGH_WATER)
        owner = self.owner
        factory = Handshake.initiator if self.initiator else Handshake.acceptor
        self.handshake = factory(
            owner.secret,
            owner.node_id,
            owner.address_on(self),
            max_clock_skew=owner.max_clock_skew,
            protocol_max=owner.protocol_max,
            wall=time.time,
        )
        self.opened = self.owner.loop.time()
        self.owner.conn_opened(self)
        self._timer = self.owner.loop.call_later(self.owner.handshake_timeout, self._handshake_timeout)
        for msg in self.handshake.start():
            self.send(msg)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.bytes_in += len(data)
        if self.peer is not None:
            self.owner.conn_bytes(self, len(data))
        try:
            if self.peer is None:
                # One frame at a time: the frames behind the last handshake message are
                # authenticated, and the decoder needs the new key before it reads them.
                msgs = self.decoder.feed(data, limit=1)
                while msgs and not self.closed and self.peer is None:
                    self._handshake(msgs[0])
                    msgs = self.decoder.feed(b"", limit=1) if self.peer is None else []
                if self.closed or self.peer is None:
                    return
                data = b""
            for msg in self.decoder.feed(data):
                if self.closed:
                    return
                self.owner.conn_received(self, msg)
        except ProtocolError as exc:
            self.refuse(str(exc))
        except Exception as exc:  # nothing a peer sends may take the node down
            log.exception("error handling a frame from %s", self.describe())
            self.close(f"internal error: {exc!r}")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._bulk.clear()
        self._bulk_bytes = 0
        self._writable.set()
        if self._timer is not None:
            self._timer.cancel()
        self.owner.conn_lost(self)

    def pause_writing(self) -> None:
        self._paused = True
        self._writable.clear()

    def resume_writing(self) -> None:
        self._paused = False
        self._pump()
        if not self._paused and not self._bulk and self.peer is not None and not self.closed:
            self.owner.conn_drained(self)

    # handshake

    def _handshake(self, msg: Message) -> None:
        for reply in self.handshake.receive(msg):
            self.send(reply)
        if self.handshake.done:
            if self._timer is not None:
                self._timer.cancel()
            self.sealer = FrameSealer(self.handshake.send_key)
            self.decoder.authenticate(self.handshake.receive_key)
            self.decoder.max_frame_size = self.owner.max_frame_size
            self.peer = self.handshake.peer_id
            self.owner.conn_admitted(self)

    def _handshake_timeout(self) -> None:
        if self.peer is None and not self.closed:
            self.refuse("handshake did not finish in time")

    # sending

    def send(self, msg: Message) -> None:
        frame = encode(msg, self.owner.max_frame_size)
        if isinstance(msg, URGENT):
            self._put(frame)
        else:
            self.write(frame)

    def write(self, frame: bytes) -> None:
        """Queue a frame made by ``encode`` behind the other bulk frames (see the module docstring)."""
        if self.transport is None or self.closed:
            return
        if self.sealer is None:  # the handshake: nothing to overtake
            self._put(frame)
            return
        self._bulk.append(frame)
        self._bulk_bytes += len(frame)
        self._pump()

    def _put(self, frame: bytes) -> None:
        """Into the socket's buffer now; sealed here, so sequence numbers follow the buffer's order."""
        if self.transport is not None and not self.closed:
            self.transport.write(frame if self.sealer is None else self.sealer.seal(frame))

    def _pump(self) -> None:
        """Move queued bulk frames into the socket's buffer while it has room."""
        bulk = self._bulk
        while bulk and not self._paused and not self.closed:
            frame = bulk.popleft()
            self._bulk_bytes -= len(frame)
            self._put(frame)  # may call pause_writing, which ends the loop
        if bulk or self._paused:
            self._writable.clear()
        else:
            self._writable.set()

    def backlog(self) -> int:
        """Bytes the peer has not taken yet: our queue and the socket's buffer."""
        buffered = self.transport.get_write_buffer_size() if self.transport is not None else 0
        return buffered + self._bulk_bytes

    async def drained(self) -> None:
        await self._writable.wait()

    def refuse(self, reason: str) -> None:
        if self.peer is None:  # a stranger decides how often this happens: rate-limited
            self.owner.door.log(logging.WARNING, "closing connection %s: %s", self.describe(), reason)
        else:
            log.warning("closing connection %s: %s", self.describe(), reason)
        if self.peer is None:
            with contextlib.suppress(Exception):
                self.send(Refused(reason[:200]))
        self.close(reason)

    def close(self, reason: str) -> None:
        if not self.closed and self.transport is not None:
            while self._bulk:  # what was queued goes out before the close, as it would have unqueued
                self._put(self._bulk.popleft())
            self._bulk_bytes = 0
            self.closed = True
            self.transport.close()
            self.owner.conn_lost(self)

    def describe(self) -> str:
        addr = self.transport.get_extra_info("peername") if self.transport else None
        who = f"{self.peer:016x}" if self.peer is not None else "unauthenticated"
        return f"{who} at {addr}"

    def local_address(self, port: int) -> str | None:
        """This end's IP with ``port`` (the owner's listen port): an address of ours the peer reached."""
        sock = self.transport.get_extra_info("sockname") if self.transport is not None else None
        if not isinstance(sock, tuple) or not sock or not isinstance(sock[0], str):
            return None
        ip = sock[0].removeprefix("::ffff:")  # an IPv4 peer on a dual-stack socket
        return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"

    def initiator_id(self) -> int:
        assert self.peer is not None
        return self.owner.node_id if self.initiator else self.peer


async def dns_resolver(name: str, port: int) -> list[str]:
    """Every address ``name`` resolves to (a headless Service lists every pod)."""
    infos = await asyncio.get_running_loop().getaddrinfo(name, port, type=1)
    return sorted({f"{info[4][0]}:{port}" for info in infos})
