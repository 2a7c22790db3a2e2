"""Admission of a peer: mutual HMAC-SHA256 challenge-response over the cluster secret, no I/O.

Theory of operation
-------------------
Each side of a new connection holds one Handshake. The driver passes it every
message the peer sends and sends whatever it returns. No other message travels
on the connection until ``done``::

    initiator                                   acceptor
    Hello(min, max, id_c, nonce_c, listen_c)  -->
                                            <-- Challenge(protocol, id_s, nonce_s, listen_s, wall_s)
    Proof(mac_c, wall_c)                      -->
                                            <-- Welcome(mac_s)

    key        = scrypt(secret, salt=KEY_SALT, n=2**14, r=8, p=1, dklen=32)   once per process
    transcript = nonce_c + nonce_s + id_c + id_s + protocol + wall_s + wall_c + listen_c + listen_s
    mac_c      = HMAC-SHA256(key, INITIATOR_LABEL + transcript)
    mac_s      = HMAC-SHA256(key, ACCEPTOR_LABEL + transcript)
    frame keys = HMAC-SHA256(key, FRAMES_C2S + transcript), HMAC-SHA256(key, FRAMES_S2C + transcript)

with ids, walls (milliseconds since the epoch) as 8-byte and the protocol as
4-byte big-endian unsigned integers, and each listen address as its length
then its UTF-8 (lengths as 4 bytes). Each property rests on one ingredient:

- Both sides contribute a fresh 32-byte nonce, so a Proof or Welcome recorded
  from an earlier session proves nothing in this one.
- **The initiator proves first.** Protocol 1 had the acceptor send its MAC in
  the Challenge, to anyone who sent a Hello: a stranger could collect a MAC over
  data it chose and guess the secret offline at some 570k guesses a second.
  Now an acceptor hands out nothing derived from the secret until the peer has
  proven it. The initiator's MAC still goes to whoever it dials, so a party that
  can make a member dial it (a hijacked seed address) could guess offline; the
  scrypt step makes each guess cost ~50 ms and 16 MiB instead of a microsecond,
  and it is paid once per process by members, not per connection. Both, rather
  than either: proving first closes the open door; the slow key derivation
  covers the door that stays (the dialled side) and secrets weaker than
  ``shoal secret``'s, which is why short ones are still refused outright.
- The two MACs carry different labels, so one side's MAC reflected back is not
  the other's.
- Both ids, both listen addresses, both wall clocks and the chosen protocol are
  inside both MACs, so a relay can change none of them.
- Each side's wall clock is checked against its own once the other side has
  proven the secret: a peer more than ``max_clock_skew`` off is refused with
  ClockSkewError (expiries are absolute times and versions follow the wall clock;
  CockroachDB's max-offset rule is the model).
- Every frame after the handshake carries a MAC under a key of this connection
  and direction (wire.py), so a relay that passed the handshake through can
  still not inject, replay, reorder or reflect a frame.

The acceptor picks the highest version both ranges share.

Once done, a Handshake holds the two frame keys and nothing derived from the
secret that would admit a peer: the scrypt key and the transcript are dropped.

What the driver owns: the socket, the wall clock (``wall``, read when a Challenge
or Proof is made or checked) and the reaction to failure. It bounds the whole
handshake with a timeout, keeps the FrameDecoder at HANDSHAKE_MAX_FRAME until
``done``, then switches both directions to ``send_key``/``receive_key``. When
``receive`` raises it logs the reason, may send ``Refused(str(error))``, and
closes. ``receive`` raises HandshakeError when the peer cannot be admitted (wrong
secret, clock skew, no common version, the node itself, a Refused from the peer)
and ProtocolError for a malformed or out-of-order message. A failed handshake
cannot be resumed.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import hmac
import secrets
from collections.abc import Callable
from typing import NamedTuple

from .errors import ClockSkewError, HandshakeError, ProtocolError, WeakSecret
from .messages import Challenge, Hello, Message, Proof, Refused, Welcome
from .validation import DEFAULT_MAX_CLOCK_SKEW
from .wire import PROTOCOL_MIN, PROTOCOL_VERSION

NONCE_SIZE = 32
MIN_SECRET_SIZE = 16
"""Bytes. ``shoal secret`` prints 32 random bytes (43 characters of URL-safe base64)."""
KEY_SALT = b"shoal cluster key v2"
SCRYPT = {"n": 2**14, "r": 8, "p": 1, "dklen": 32, "maxmem": 64 * 1024 * 1024}

_ACCEPTOR_LABEL = b"shoal acceptor\x00"
_INITIATOR_LABEL = b"shoal initiator\x00"
_FRAMES_C2S = b"shoal frames initiator to acceptor\x00"
_FRAMES_S2C = b"shoal frames acceptor to initiator\x00"
_MAX_WALL_MS = (1 << 63) - 1


def check_secret(secret: str | bytes | None) -> bytes:
    """The secret as bytes, refusing one that is empty or shorter than ``MIN_SECRET_SIZE``.

    Surrounding whitespace is not part of a secret: a file holding only a newline
    is an empty secret, and refused, not a one-byte one.
    """
    raw = (secret.encode() if isinstance(secret, str) else secret or b"").strip()
    if len(raw) < MIN_SECRET_SIZE:
        raise WeakSecret(
            f"the cluster secret is {len(raw)} bytes; at least {MIN_SECRET_SIZE} are required "
            "(`shoal secret` prints a strong one)"
        )
    return raw


@functools.lru_cache(maxsize=8)
def cluster_key(secret: bytes) -> bytes:
    """The key every MAC uses: scrypt of the secret, slow on purpose (see the module docstring)."""
    return hashlib.scrypt(secret, salt=KEY_SALT, **SCRYPT)


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
        max_clock_skew: float,
        wall: Callable[[], float],
    ) -> None:
        if not 0 <= node_id < 1 << 64:
            raise ValueError(f"node id {node_id} is not an unsigned 64-bit integer")
        if not 0 < protocol_min <= protocol_max < 1 << 32:
            raise ValueError(f"bad protocol range {protocol_min}..{protocol_max}")
        if not max_clock_skew >= 0:
            raise ValueError("max_clock_skew must be >= 0")
        nonce = secrets.token_bytes(NONCE_SIZE) if nonce is None else nonce
        if len(nonce) != NONCE_SIZE:
            raise ValueError(f"a nonce is {NONCE_SIZE} bytes, got {len(nonce)}")
        self._initiator = initiator
        self._key: bytes | None = cluster_key(secret)  # dropped once the frame keys are made
        self._frame_keys: tuple[bytes, bytes] | None = None  # (send, receive), once DONE
        self._node_id = node_id
        self._listen = listen
        self._nonce = nonce
        self._min = protocol_min
        self._max = protocol_max
        self._skew_ms = int(max_clock_skew * 1000)
        self._wall = wall
        self._state = _State.START if initiator else _State.AWAIT_HELLO
        self._peer: _Peer | None = None  # as claimed, until DONE
        self._hello: Hello | None = None
        self._challenge: Challenge | None = None
        self._skew = (0, 0)  # ms: the peer's wall clock minus ours, at least and at most
        self._asked_ms = 0  # our wall clock when we sent what the peer's clock reading answers
        self._transcript = b""  # what both MACs sign, once both walls are known

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
        max_clock_skew: float = DEFAULT_MAX_CLOCK_SKEW,
        wall: Callable[[], float],
    ) -> Handshake:
        """The side that opened the connection; it speaks and proves first."""
        return cls(True, secret, node_id, listen, nonce, protocol_min, protocol_max, max_clock_skew, wall)

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
        max_clock_skew: float = DEFAULT_MAX_CLOCK_SKEW,
        wall: Callable[[], float],
    ) -> Handshake:
        """The side that accepted the connection; it proves itself only to a proven peer."""
        return cls(False, secret, node_id, listen, nonce, protocol_min, protocol_max, max_clock_skew, wall)

    def start(self) -> list[Message]:
        """Messages to send as soon as the connection is up."""
        if self._state is not _State.START:
            return []
        self._state = _State.AWAIT_CHALLENGE
        self._asked_ms = self._now_ms()
        self._hello = Hello(self._min, self._max, self._node_id, self._nonce, self._listen)
        return [self._hello]

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
            return self._on_welcome(msg)
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

    @property
    def clock_skew(self) -> float:
        """Seconds the admitted peer's wall clock was ahead of ours (negative: behind), the middle
        of what the round trip allows."""
        self._admitted()
        return (self._skew[0] + self._skew[1]) / 2000

    @property
    def send_key(self) -> bytes:
        """Key of the MAC on every frame this side sends from now on (wire.FrameSealer)."""
        self._admitted()
        assert self._frame_keys is not None
        return self._frame_keys[0]

    @property
    def receive_key(self) -> bytes:
        """Key of the MAC on every frame the peer sends from now on (FrameDecoder.authenticate)."""
        self._admitted()
        assert self._frame_keys is not None
        return self._frame_keys[1]

    def _finish(self) -> None:
        """DONE: derive the frame keys, then forget the cluster key and the transcript.

        A connection lives for days; the cluster key alone would admit anyone, so an
        admitted connection holds only what authenticates its own frames.
        """
        c2s, s2c = self._mac(_FRAMES_C2S), self._mac(_FRAMES_S2C)
        self._frame_keys = (c2s, s2c) if self._initiator else (s2c, c2s)
        self._key = None
        self._transcript = b""
        self._state = _State.DONE

    def _admitted(self) -> _Peer:
        # Withheld until DONE so nothing acts on an identity the peer has not proven.
        if self._peer is None or self._state is not _State.DONE:
            raise RuntimeError("the handshake is not done: the peer is unproven")
        return self._peer

    def _now_ms(self) -> int:
        return int(self._wall() * 1000)

    def _on_hello(self, hello: Hello) -> list[Message]:
        self._check_peer(hello.node_id, hello.nonce)
        low = max(self._min, hello.protocol_min)
        high = min(self._max, hello.protocol_max)
        if low > high:
            raise HandshakeError(
                f"no common protocol version: ours {self._min}..{self._max}, "
                f"peer's {hello.protocol_min}..{hello.protocol_max}"
            )
        self._hello = hello
        self._peer = _Peer(hello.node_id, hello.listen, high)
        self._asked_ms = self._now_ms()
        self._challenge = Challenge(high, self._node_id, self._nonce, self._listen, self._asked_ms)
        self._state = _State.AWAIT_PROOF
        return [self._challenge]

    def _on_challenge(self, challenge: Challenge) -> list[Message]:
        self._check_peer(challenge.node_id, challenge.nonce)
        if not self._min <= challenge.protocol <= self._max:
            raise HandshakeError(f"peer chose protocol {challenge.protocol}, outside ours {self._min}..{self._max}")
        now = self._now_ms()
        _check_wall(challenge.wall_ms)
        self._skew = _skew_between(challenge.wall_ms, self._asked_ms, now)  # checked once the peer proves the secret
        self._challenge = challenge
        self._peer = _Peer(challenge.node_id, challenge.listen, challenge.protocol)
        self._transcript = self._sign(now)
        self._state = _State.AWAIT_WELCOME
        return [Proof(self._mac(_INITIATOR_LABEL), now)]

    def _on_proof(self, proof: Proof) -> list[Message]:
        _check_wall(proof.wall_ms)
        self._transcript = self._sign(proof.wall_ms)
        self._verify(proof.mac, _INITIATOR_LABEL)
        self._skew = _skew_between(proof.wall_ms, self._asked_ms, self._now_ms())
        self._check_skew()
        welcome = Welcome(self._mac(_ACCEPTOR_LABEL))
        self._finish()
        return [welcome]

    def _on_welcome(self, welcome: Welcome) -> list[Message]:
        self._verify(welcome.mac, _ACCEPTOR_LABEL)
        self._check_skew()
        self._finish()
        return []

    def _check_peer(self, node_id: int, nonce: bytes) -> None:
        if not 0 <= node_id < 1 << 64:
            raise ProtocolError(f"peer's node id {node_id} is not an unsigned 64-bit integer")
        if len(nonce) != NONCE_SIZE:
            raise ProtocolError(f"peer's nonce is {len(nonce)} bytes, not {NONCE_SIZE}")
        if node_id == self._node_id:
            raise HandshakeError(f"connected to itself (node id {node_id})")

    def _check_skew(self) -> None:
        least, most = self._skew
        if least > self._skew_ms or most < -self._skew_ms:
            off = least if least > 0 else most
            raise ClockSkewError(
                f"peer's wall clock is {off / 1000:+.3f} s from ours, more than "
                f"max_clock_skew ({self._skew_ms / 1000:g} s): fix its time sync (NTP) before it may join"
            )

    def _sign(self, wall_c: int) -> bytes:
        hello, challenge = self._hello, self._challenge
        assert hello is not None and challenge is not None
        return transcript(hello, challenge, wall_c)

    def _mac(self, label: bytes) -> bytes:
        """HMAC of the transcript under a label: each side's proof, and each direction's frame key."""
        assert self._key is not None, "the handshake is over"
        return hmac.new(self._key, label + self._transcript, hashlib.sha256).digest()

    def _verify(self, mac: bytes, label: bytes) -> None:
        if not hmac.compare_digest(mac, self._mac(label)):
            raise HandshakeError("peer failed to prove the cluster secret")


def transcript(hello: Hello, challenge: Challenge, wall_c: int) -> bytes:
    """What both MACs and both frame keys sign (layout in the module docstring)."""
    listen_c, listen_s = (
        hello.listen.encode("utf-8", "surrogatepass"),
        challenge.listen.encode("utf-8", "surrogatepass"),
    )
    return b"".join(
        (
            hello.nonce,
            challenge.nonce,
            hello.node_id.to_bytes(8, "big"),
            challenge.node_id.to_bytes(8, "big"),
            challenge.protocol.to_bytes(4, "big"),
            challenge.wall_ms.to_bytes(8, "big"),
            wall_c.to_bytes(8, "big"),
            len(listen_c).to_bytes(4, "big"),
            listen_c,
            len(listen_s).to_bytes(4, "big"),
            listen_s,
        )
    )


def _skew_between(theirs: int, asked: int, now: int) -> tuple[int, int]:
    """The peer read its clock (``theirs``) after we sent at ``asked`` and before its answer
    arrived ``now``: its offset from ours lies between these two (as NTP reasons). A loaded
    host that took a second to answer is late, not off by a second."""
    return theirs - now, theirs - asked


def _check_wall(wall_ms: int) -> None:
    if not 0 <= wall_ms <= _MAX_WALL_MS:
        raise ProtocolError("a wall clock is unsigned milliseconds since 1970")
