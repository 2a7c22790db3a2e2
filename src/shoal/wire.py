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
"""

from __future__ import annotations

import struct
from typing import NoReturn

import msgpack

from .errors import FrameTooLarge, ProtocolError
from .messages import Message, from_array, to_array

PROTOCOL_VERSION = 1
"""The newest protocol this release speaks."""
PROTOCOL_MIN = 1
"""The oldest protocol this release still speaks."""

DEFAULT_MAX_FRAME = 16 * 1024 * 1024
HANDSHAKE_MAX_FRAME = 64 * 1024
"""Ample for handshake messages, small enough that a stranger cannot cost us much."""

_LENGTH = struct.Struct(">I")


def encode(msg: Message, max_frame_size: int = DEFAULT_MAX_FRAME) -> bytes:
    """Return ``msg`` as one frame.

    An oversized message fails here, naming itself, rather than at the receiver,
    which could only drop the connection.
    """
    body: bytes = msgpack.packb(to_array(msg), use_bin_type=True)
    if len(body) > max_frame_size:
        raise FrameTooLarge(
            f"{type(msg).__name__} needs a {len(body)}-byte frame, over the {max_frame_size}-byte limit"
        )
    return _LENGTH.pack(len(body)) + body


class FrameDecoder:
    """Turns one connection's incoming bytes into messages.

    After ``feed`` raises, the stream is out of step and the connection must be
    closed. ``max_frame_size`` may be changed between feeds (see module docstring).
    """

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame_size = max_frame_size
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Message]:
        """Buffer ``data`` and return every message it completes, in order."""
        buffer = self._buffer
        buffer += data
        messages: list[Message] = []
        start = 0
        while len(buffer) - start >= _LENGTH.size:
            (size,) = _LENGTH.unpack_from(buffer, start)
            if size > self.max_frame_size:
                raise FrameTooLarge(
                    f"peer announced a {size}-byte frame, over the {self.max_frame_size}-byte limit"
                )
            end = start + _LENGTH.size + size
            if end > len(buffer):
                break
            messages.append(_decode(buffer[start + _LENGTH.size : end]))
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
