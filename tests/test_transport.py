"""The connection's write path: membership frames go ahead of bulk data, every frame still authenticated in order.

A real ``Connection`` over a transport that holds what it is given until the test
drains it, as a socket whose peer reads slowly does.
"""

from __future__ import annotations

from typing import Any

from shoal.messages import CaughtUp, Heartbeat, Message, Ops
from shoal.transport import BULK_HIGH_WATER, Connection
from shoal.wire import FrameDecoder, FrameSealer

KEY = b"k" * 32


class SlowSocket:
    """The parts of asyncio.Transport a Connection writes through, with pause/resume_writing as asyncio does."""

    def __init__(self, protocol: Connection) -> None:
        self.protocol = protocol
        self.sent = bytearray()  # what the peer has taken
        self.buffer = bytearray()
        self.high = 64 * 1024
        self.paused = False

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.high = high if high is not None else self.high

    def get_write_buffer_size(self) -> int:
        return len(self.buffer)

    def write(self, data: bytes) -> None:
        self.buffer += data
        if not self.paused and len(self.buffer) > self.high:
            self.paused = True
            self.protocol.pause_writing()

    def drain(self, count: int) -> None:
        self.sent += self.buffer[:count]
        del self.buffer[:count]
        if self.paused and len(self.buffer) <= self.high // 4:
            self.paused = False
            self.protocol.resume_writing()

    def close(self) -> None:
        pass


class Owner:
    max_frame_size = 16 * 1024 * 1024

    def conn_lost(self, conn: Connection) -> None:
        pass


def admitted() -> tuple[Connection, SlowSocket]:
    conn = Connection(Owner(), initiator=True)  # type: ignore[arg-type]
    socket = SlowSocket(conn)
    conn.transport = socket  # type: ignore[assignment]
    socket.set_write_buffer_limits(high=BULK_HIGH_WATER)
    conn.sealer = FrameSealer(KEY)
    return conn, socket


def ops(i: int) -> Ops:
    return Ops("c", [[0, f"k{i}", b"v" * 100_000, 0.0, i, 1]])  # a write of a 100 kB value


def received(data: bytes) -> list[Message]:
    decoder = FrameDecoder()
    decoder.authenticate(KEY)
    return decoder.feed(bytes(data))


def names(msgs: list[Message]) -> list[Any]:
    return [m.ops[0][1] if isinstance(m, Ops) else type(m).__name__ for m in msgs]


def test_a_heartbeat_goes_ahead_of_queued_bulk_frames_and_every_frame_still_authenticates_in_order() -> None:
    conn, socket = admitted()
    for i in range(40):  # some 4 MB of writes to a peer that reads slowly
        conn.send(ops(i))
    assert len(socket.buffer) < BULK_HIGH_WATER + 200_000, "bulk frames wait in the connection, not the socket"
    assert conn.backlog() > 40 * 100_000
    conn.send(Heartbeat(1))
    conn.send(CaughtUp("c", True))  # not membership: keeps its place behind the Ops it ends
    while socket.buffer:
        socket.drain(64 * 1024)
    order = names(received(socket.sent))
    ahead = order.index("Heartbeat")
    assert ahead <= 4, f"the heartbeat waited behind {ahead} bulk frames"
    assert [n for n in order if n != "Heartbeat"] == [f"k{i}" for i in range(40)] + ["CaughtUp"]
    assert conn.backlog() == 0


def test_closing_sends_what_was_queued_first() -> None:
    conn, socket = admitted()
    for i in range(10):
        conn.send(ops(i))
    conn.close("done")
    assert names(received(socket.buffer)) == [f"k{i}" for i in range(10)]
