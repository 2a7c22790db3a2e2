"""Framing of the member-to-member byte stream: length-prefixed msgpack, limits, no I/O.

A frame is a 4-byte big-endian unsigned length, then that many bytes of msgpack
holding one message array (see messages.py). Strangers' bytes reach the decoder
before any handshake, so it turns every malformation into ProtocolError and
bounds what a frame can cost:

- a length prefix over the limit is refused as soon as its 4 bytes arrive, so a
  peer cannot make us wait for, and buffer, a body of gigabytes;
- no msgpack string, array or map may claim more items than the frame has bytes;
- ext types, msgpack's built-in Timestamp included, are refused, so a peer can
  only ever produce plain data.

Nested empty containers still decode to some 70 bytes of Python objects per byte
of input, so until the handshake is done the driver should keep the decoder at
HANDSHAKE_MAX_FRAME and raise ``max_frame_size`` only for an admitted peer.

Cache keys may be str, bytes or int, so str and bin stay distinct on the wire.

Authenticated frames
--------------------
Once the handshake is done, every frame in each direction carries a 16-byte tag
after its body, and the length prefix counts the tag::

    tag = BLAKE2b-128(key=direction key, data=sequence number (8 bytes, big-endian) + body)

The direction keys come from the handshake (derived from the cluster secret and
both nonces), so a relay that passed a valid handshake through cannot forge a
frame; the sequence number, counted by both ends and never sent, makes a replayed,
dropped or reordered frame fail too; and the two directions' keys differ, so a
frame cannot be reflected back to its sender. A frame that fails is a
ProtocolError like any other malformation: the connection closes. Keyed BLAKE2b,
not HMAC, because it is one pass with no inner and outer hash, and frames are the
hot path (``bench/replication.py`` measures the cost).
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from typing import NoReturn

import msgpack

from .errors import FrameTooLarge, ProtocolError
from .messages import Message, from_array, to_array

PROTOCOL_VERSION = 2
"""The newest protocol this release speaks (2: the initiator proves first, clocks are
compared at the handshake, every later frame is authenticated)."""
PROTOCOL_MIN = 2
"""The oldest protocol this release still speaks."""

DEFAULT_MAX_FRAME = 16 * 1024 * 1024
HANDSHAKE_MAX_FRAME = 4 * 1024
"""Ample for handshake messages, small enough that a stranger cannot cost us much."""

_LENGTH = struct.Struct(">I")
TAG_SIZE = 16
_SEQ = struct.Struct(">Q")


def encode(msg: Message, max_frame_size: int = DEFAULT_MAX_FRAME) -> bytes:
    """Return ``msg`` as one frame (unauthenticated; after the handshake, FrameSealer.seal it).

    An oversized message fails here, naming itself, rather than at the receiver,
    which could only drop the connection.
    """
    body: bytes = msgpack.packb(to_array(msg), use_bin_type=True)
    if len(body) > max_frame_size:
        raise FrameTooLarge(
            f"{type(msg).__name__} needs a {len(body)}-byte frame, over the {max_frame_size}-byte limit"
        )
    return _LENGTH.pack(len(body)) + body


def _tag(key: bytes, seq: int, body: bytes | bytearray | memoryview) -> bytes:
    mac = hashlib.blake2b(_SEQ.pack(seq), key=key, digest_size=TAG_SIZE)
    mac.update(body)
    return mac.digest()


class FrameSealer:
    """Authenticates one connection's outgoing frames, in the order they are written.

    ``seal`` takes a frame made by ``encode`` (so a message broadcast to many peers is
    encoded once and sealed per connection) and returns it with its tag. Frames must
    reach the socket in the order they were sealed.
    """

    def __init__(self, key: bytes) -> None:
        if not 16 <= len(key) <= 64:
            raise ValueError("a frame key is 16 to 64 bytes")
        self._key = key
        self._seq = 0

    def seal(self, frame: bytes) -> bytes:
        body = memoryview(frame)[_LENGTH.size :]
        tag = _tag(self._key, self._seq, body)
        self._seq += 1
        return b"".join((_LENGTH.pack(len(body) + TAG_SIZE), body, tag))


class FrameDecoder:
    """Turns one connection's incoming bytes into messages.

    After ``feed`` raises, the stream is out of step and the connection must be
    closed. ``max_frame_size`` may be changed between feeds (see module docstring).
    """

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame_size = max_frame_size
        self._buffer = bytearray()
        self._key: bytes | None = None
        self._seq = 0

    @property
    def buffered(self) -> int:
        """Bytes held for frames not yet complete (a driver may cap it per pending peer)."""
        return len(self._buffer)

    def authenticate(self, key: bytes) -> None:
        """From the next frame on, require each frame's tag under ``key`` (see the module docstring)."""
        if not 16 <= len(key) <= 64:
            raise ValueError("a frame key is 16 to 64 bytes")
        self._key = key
        self._seq = 0

    def feed(self, data: bytes, limit: int | None = None) -> list[Message]:
        """Buffer ``data`` and return the messages it completes, in order.

        ``limit`` stops after that many messages and keeps the rest buffered (``feed(b"")``
        resumes): during the handshake the driver takes one message at a time, since the
        frames behind the last handshake message are authenticated and need the new key.
        """
        buffer = self._buffer
        buffer += data
        messages: list[Message] = []
        start = 0
        key = self._key
        overhead = 0 if key is None else TAG_SIZE
        while len(buffer) - start >= _LENGTH.size and (limit is None or len(messages) < limit):
            (size,) = _LENGTH.unpack_from(buffer, start)
            if size - overhead > self.max_frame_size:
                raise FrameTooLarge(
                    f"peer announced a {size - overhead}-byte frame, over the {self.max_frame_size}-byte limit"
                )
            if size < overhead:
                raise ProtocolError("an authenticated frame is shorter than its tag")
            end = start + _LENGTH.size + size
            if end > len(buffer):
                break
            if key is None:
                messages.append(_decode(buffer[start + _LENGTH.size : end]))
            else:
                body = buffer[start + _LENGTH.size : end - TAG_SIZE]
                if not hmac.compare_digest(_tag(key, self._seq, body), buffer[end - TAG_SIZE : end]):
                    raise ProtocolError("a frame failed authentication (forged, replayed, reordered or damaged)")
                self._seq += 1
                messages.append(_decode(body))
            start = end
        # Consumed frames go once per feed, not once per frame. What stays is the
        # start of a single frame, which the next deletion consumes, so every byte
        # is moved at most once however the stream is chopped up.
        del buffer[:start]
        return messages


def _decode(body: bytearray) -> Message:
    size = len(body)
    # msgpack signals bad input with ValueError, TypeError (an unhashable map key),
    # StackError, UnicodeDecodeError...; a peer must only ever cause ProtocolError.
    try:
        obj = msgpack.unpackb(
            body,
            raw=False,
            use_list=True,
            strict_map_key=False,
            ext_hook=_refuse_ext,
            max_ext_len=0,  # Timestamp bypasses ext_hook; this refuses it first
            max_str_len=size,
            max_bin_len=size,
            max_array_len=size,
            max_map_len=size // 2,
        )
    except Exception as exc:
        raise ProtocolError(f"undecodable frame ({type(exc).__name__}) {exc}".rstrip()) from exc
    return from_array(obj)


def _refuse_ext(code: int, data: bytes) -> NoReturn:
    raise ProtocolError(f"msgpack ext type {code} is not allowed")
