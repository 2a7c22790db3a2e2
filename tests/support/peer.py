"""A raw, authenticated connection to a member, for tests that play a buggy or hostile peer.

It proves the secret like a member would, then lets the test send any bytes: each
whole frame in them is sealed with the connection's frame key (so what the member
judges is the frame's content, not its MAC), and a trailing partial frame (a bare
length prefix, say) goes out with its length counting the tag, as a real peer's would.
"""

from __future__ import annotations

import socket
import struct
import time

from shoal.handshake import Handshake
from shoal.messages import Message
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
