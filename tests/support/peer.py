"""A raw, authenticated connection to a member, for tests that play a buggy or hostile peer.

It proves the secret like a member would, then lets the test send any bytes: each
whole frame in them is sealed with the connection's frame key (so what the member
judges is the frame's content, not its MAC), and a trailing partial frame (a bare
length prefix, say) goes out with its length counting the tag, as a real peer's would.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable

from shoal.handshake import Handshake
from shoal.messages import Heartbeat, Message
from shoal.transport import parse_address
from shoal.wire import TAG_SIZE, FrameDecoder, FrameSealer, encode


class RawPeer:
    def __init__(self, address: str, secret: str, node_id: int, listen: str, timeout: float = 10.0) -> None:
        host, port = parse_address(address)
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.decoder = FrameDecoder(1 << 24)
        self.early: list[Message] = []  # what the member sent right after the handshake
        hs = Handshake.initiator(secret.encode(), node_id, listen, wall=time.time)
        for msg in hs.start():
            self.sock.sendall(encode(msg))
        while not hs.done:
            data = self.sock.recv(65536)
            assert data, "the member closed the connection during the handshake"
            msgs = self.decoder.feed(data, limit=1)
            while msgs and not hs.done:
                for reply in hs.receive(msgs[0]):
                    self.sock.sendall(encode(reply))
                msgs = [] if hs.done else self.decoder.feed(b"", limit=1)
        self.sealer = FrameSealer(hs.send_key)
        self.decoder.authenticate(hs.receive_key)
        self.early = self.decoder.feed(b"")

    def sealed(self, payload: bytes) -> bytes:
        out = []
        pos = 0
        while len(payload) - pos >= 4:
            (size,) = struct.unpack_from(">I", payload, pos)
            end = pos + 4 + size
            if end > len(payload):
                out.append(struct.pack(">I", min(size + TAG_SIZE, 2**32 - 1)) + payload[pos + 4 :])
                pos = len(payload)
                break
            out.append(self.sealer.seal(payload[pos:end]))
            pos = end
        out.append(payload[pos:])
        return b"".join(out)

    def send(self, payload: bytes) -> None:
        self.sock.sendall(self.sealed(payload))

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawPeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FakeMember(RawPeer):
    """A RawPeer that passes for a live member: it beats, reads everything the member sends, and
    may answer (``answer(msg)`` returns the messages to send back).

    What it received is counted by kind in ``kinds`` and kept in ``received``; ``closed`` is set
    once the member closes the connection. Sends from the test and from its threads are sealed
    one at a time (the sealer counts frames).
    """

    def __init__(
        self,
        address: str,
        secret: str,
        node_id: int,
        listen: str,
        answer: Callable[[Message], list[Message]] | None = None,
        heartbeat: float = 0.1,
    ) -> None:
        super().__init__(address, secret, node_id, listen)
        self._lock = threading.Lock()
        self._answer = answer
        self.received: list[Message] = []
        self.kinds: Counter[str] = Counter()
        self.closed = threading.Event()
        self._stopped = threading.Event()
        for msg in self.early:
            self._note(msg)
        self.sock.settimeout(0.2)
        self._threads = [
            threading.Thread(target=self._read, daemon=True),
            threading.Thread(target=self._beat, args=(heartbeat,), daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def send(self, payload: bytes) -> None:
        with self._lock:
            self.sock.sendall(self.sealed(payload))

    def _note(self, msg: Message) -> None:
        self.received.append(msg)
        self.kinds[type(msg).__name__] += 1
        if self._answer is not None:
            replies = self._answer(msg)
            if replies:
                with contextlib.suppress(OSError):
                    self.send(b"".join(encode(reply) for reply in replies))

    def _read(self) -> None:
        while not self._stopped.is_set():
            try:
                data = self.sock.recv(1 << 20)
            except TimeoutError:
                continue
            except OSError:
                break
            if not data:
                break
            for msg in self.decoder.feed(data):
                self._note(msg)
        self.closed.set()

    def _beat(self, interval: float) -> None:
        while not self._stopped.wait(interval) and not self.closed.is_set():
            with contextlib.suppress(OSError):
                self.send(encode(Heartbeat(int(time.time() * 1000))))

    def close(self) -> None:
        self._stopped.set()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(2)
        super().close()
