"""Admission of a peer: mutual HMAC-SHA256 challenge-response over the cluster secret, no I/O.

Theory of operation
-------------------
Each side of a new connection holds one Handshake. The driver passes it every
message the peer sends and sends whatever it returns. No other message travels
on the connection until ``done``::

    initiator                                   acceptor
    Hello(min, max, id_c, nonce_c, listen)  -->
                                            <-- Challenge(protocol, id_s, nonce_s, listen, mac_s)
    Proof(mac_c)                            -->
                                            <-- Welcome()

    mac = HMAC-SHA256(secret, label + nonce_c + nonce_s + id_c + id_s + protocol)

with ids as 8-byte and the protocol as 4-byte big-endian unsigned integers, and
a different label per role. Each property rests on one ingredient:

- Both sides contribute a fresh 32-byte nonce, so a Proof or Challenge recorded
  from an earlier session proves nothing in this one.
- The acceptor's MAC carries another label than the initiator's, so the only
  MAC an acceptor ever hands a stranger cannot be reflected back as a Proof.
- Both ids and the chosen protocol are inside the MAC, so both ends agree on
  who is talking and in which version.

The acceptor picks the highest version both ranges share; the ``listen``
addresses are taken as the peer claims them (membership validates them).

What the driver owns: the clock, the socket and the reaction to failure. It
bounds the whole handshake with a timeout (a peer that stalls is never
``done``), keeps the FrameDecoder at HANDSHAKE_MAX_FRAME until ``done``, and
when ``receive`` raises it logs the reason, may send ``Refused(str(error))``,
and closes. ``receive`` raises HandshakeError when the peer cannot be admitted
(wrong secret, no common version, the node itself, a Refused from the peer) and
ProtocolError for a malformed or out-of-order message. A failed handshake
cannot be resumed.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
from typing import NamedTuple

from .errors import HandshakeError, ProtocolError
from .messages import Challenge, Hello, Message, Proof, Refused, Welcome
from .wire import PROTOCOL_MIN, PROTOCOL_VERSION

NONCE_SIZE = 32

_ACCEPTOR_LABEL = b"shoal acceptor\x00"
_INITIATOR_LABEL = b"shoal initiator\x00"


class _State(enum.Enum):
    START = "not started"
    AWAIT_HELLO = "awaiting Hello"
    AWAIT_CHALLENGE = "awaiting Challenge"
    AWAIT_PROOF = "awaiting Proof"
    AWAIT_WELCOME = "awaiting Welcome"
    DONE = "done"
    FAILED = "failed"


class _Peer(NamedTuple):
    node_id: int
    listen: str
    protocol: int


class Handshake:
    """One side of one connection's handshake; build it with ``initiator`` or ``acceptor``."""

    def __init__(
        self,
        initiator: bool,
        secret: bytes,
        node_id: int,
        listen: str,
        nonce: bytes | None,
        protocol_min: int,
        protocol_max: int,
    ) -> None:
        if not 0 <= node_id < 1 << 64:
            raise ValueError(f"node id {node_id} is not an unsigned 64-bit integer")
        if not 0 < protocol_min <= protocol_max < 1 << 32:
            raise ValueError(f"bad protocol range {protocol_min}..{protocol_max}")
        nonce = secrets.token_bytes(NONCE_SIZE) if nonce is None else nonce
        if len(nonce) != NONCE_SIZE:
            raise ValueError(f"a nonce is {NONCE_SIZE} bytes, got {len(nonce)}")
        self._secret = secret
        self._node_id = node_id
        self._listen = listen
        self._nonce = nonce
        self._min = protocol_min
        self._max = protocol_max
        self._state = _State.START if initiator else _State.AWAIT_HELLO
        self._peer: _Peer | None = None  # as claimed, until DONE
        self._transcript = b""  # what both MACs sign, once both nonces are known

    @classmethod
    def initiator(
        cls,
        secret: bytes,
        node_id: int,
        listen: str,
        nonce: bytes | None = None,
        *,
        protocol_min: int = PROTOCOL_MIN,
        protocol_max: int = PROTOCOL_VERSION,
    ) -> Handshake:
        """The side that opened the connection; it speaks first."""
        return cls(True, secret, node_id, listen, nonce, protocol_min, protocol_max)

    @classmethod
    def acceptor(
        cls,
        secret: bytes,
        node_id: int,
        listen: str,
        nonce: bytes | None = None,
        *,
        protocol_min: int = PROTOCOL_MIN,
        protocol_max: int = PROTOCOL_VERSION,
    ) -> Handshake:
        """The side that accepted the connection; it proves itself first."""
        return cls(False, secret, node_id, listen, nonce, protocol_min, protocol_max)

    def start(self) -> list[Message]:
        """Messages to send as soon as the connection is up."""
        if self._state is not _State.START:
            return []
        self._state = _State.AWAIT_CHALLENGE
        return [Hello(self._min, self._max, self._node_id, self._nonce, self._listen)]

    def receive(self, msg: Message) -> list[Message]:
        """Take the peer's next message; return the messages to send in reply."""
        state, self._state = self._state, _State.FAILED  # if we raise, nothing is left to resume
        if isinstance(msg, Refused):
            raise HandshakeError(f"peer refused the handshake: {msg.reason[:200]!r}")
        if state is _State.AWAIT_HELLO and isinstance(msg, Hello):
            return self._on_hello(msg)
        if state is _State.AWAIT_CHALLENGE and isinstance(msg, Challenge):
            return self._on_challenge(msg)
        if state is _State.AWAIT_PROOF and isinstance(msg, Proof):
            return self._on_proof(msg)
        if state is _State.AWAIT_WELCOME and isinstance(msg, Welcome):
            self._state = _State.DONE
            return []
        raise ProtocolError(f"unexpected {type(msg).__name__} in handshake ({state.value})")

    @property
    def done(self) -> bool:
        """True once both sides have proven the secret to each other."""
        return self._state is _State.DONE

    @property
    def peer_id(self) -> int:
        return self._admitted().node_id

    @property
    def peer_listen(self) -> str:
        return self._admitted().listen

    @property
    def protocol(self) -> int:
        return self._admitted().protocol

    def _admitted(self) -> _Peer:
        # Withheld until DONE so nothing acts on an identity the peer has not proven.
        if self._peer is None or self._state is not _State.DONE:
            raise RuntimeError("the handshake is not done: the peer is unproven")
        return self._peer

    def _on_hello(self, hello: Hello) -> list[Message]:
        self._check_peer(hello.node_id, hello.nonce)
        low = max(self._min, hello.protocol_min)
        high = min(self._max, hello.protocol_max)
        if low > high:
            raise HandshakeError(
                f"no common protocol version: ours {self._min}..{self._max}, "
                f"peer's {hello.protocol_min}..{hello.protocol_max}"
            )
        self._peer = _Peer(hello.node_id, hello.listen, high)
        self._transcript = _transcript(hello.nonce, self._nonce, hello.node_id, self._node_id, high)
        self._state = _State.AWAIT_PROOF
        mac = self._mac(_ACCEPTOR_LABEL)
        return [Challenge(high, self._node_id, self._nonce, self._listen, mac)]

    def _on_challenge(self, challenge: Challenge) -> list[Message]:
        self._check_peer(challenge.node_id, challenge.nonce)
        if not self._min <= challenge.protocol <= self._max:
            raise HandshakeError(
                f"peer chose protocol {challenge.protocol}, outside ours {self._min}..{self._max}"
            )
        self._transcript = _transcript(
            self._nonce, challenge.nonce, self._node_id, challenge.node_id, challenge.protocol
        )
        self._verify(challenge.mac, _ACCEPTOR_LABEL)
        self._peer = _Peer(challenge.node_id, challenge.listen, challenge.protocol)
        self._state = _State.AWAIT_WELCOME
        return [Proof(self._mac(_INITIATOR_LABEL))]

    def _on_proof(self, proof: Proof) -> list[Message]:
        self._verify(proof.mac, _INITIATOR_LABEL)
        self._state = _State.DONE
        return [Welcome()]

    def _check_peer(self, node_id: int, nonce: bytes) -> None:
        if not 0 <= node_id < 1 << 64:
            raise ProtocolError(f"peer's node id {node_id} is not an unsigned 64-bit integer")
        if len(nonce) != NONCE_SIZE:
            raise ProtocolError(f"peer's nonce is {len(nonce)} bytes, not {NONCE_SIZE}")
        if node_id == self._node_id:
            raise HandshakeError(f"connected to itself (node id {node_id})")

    def _mac(self, label: bytes) -> bytes:
        return hmac.new(self._secret, label + self._transcript, hashlib.sha256).digest()

    def _verify(self, mac: bytes, label: bytes) -> None:
        if not hmac.compare_digest(mac, self._mac(label)):
            raise HandshakeError("peer failed to prove the cluster secret")


def _transcript(nonce_c: bytes, nonce_s: bytes, id_c: int, id_s: int, protocol: int) -> bytes:
    return nonce_c + nonce_s + id_c.to_bytes(8, "big") + id_s.to_bytes(8, "big") + protocol.to_bytes(4, "big")
