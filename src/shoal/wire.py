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

Limits per kind of message
--------------------------
``max_frame_size`` is what the largest kind may use: Ops, dump chunks, listings
and pulls carry entries and keys. Every other kind is small, and ``BOUNDS`` says
how small, so an admitted peer cannot make a member decode 16 MiB of Gossip (a
probe's 16M empty arrays stalled the loop 12 s and took 1.2 GB). The kind is read
from the first bytes of the body, before the rest arrives: a message is a msgpack
array of at most 15 items (one byte, 0x91-0x9f) whose first item is the code (a
positive int). That is what msgpack's packer writes for every message, so the
wire format is unchanged; only a longer spelling of the same array (array16 for a
short array) is refused now. So a frame over its kind's limit is refused when its
first 6 bytes arrive, and a kind that is not registered before its body is read.

Unknown kinds
-------------
Before the handshake is done a frame of a kind this release does not know is refused like any
other malformation. Once it is (``authenticate``), such a frame is a newer peer's: its tag is
checked, its body is skipped unread (up to ``max_frame_size``), and ``feed`` returns an
``Unknown(kind)`` in its place, which the dispatcher logs and drops (versions.py), so one frame
an older member cannot read does not cut it off from the cluster.

Each kind also bounds msgpack itself (``Bounds``): the longest str, bin, array and
map any one item may claim, and how many arrays and maps a frame may hold (one per
``per_container`` bytes), counted while decoding so that the count stops it.
Messages naming a cache carry a name of at most ``MAX_NAME_SIZE`` bytes.

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
from typing import Any, NamedTuple, NoReturn

import msgpack

from .errors import FrameTooLarge, ProtocolError
from .messages import MESSAGE_TYPES, Message, Unknown, from_array, to_array
from .validation import MAX_KEY_SIZE, MAX_NAME_SIZE

PROTOCOL_VERSION = 5
"""The newest protocol this release speaks (2: the initiator proves first, clocks are
compared at the handshake, every later frame is authenticated; 3: writes travel with their
positions in the writer's stream, Stream/Resume/Resumed/DumpFrom, and catch-up is by position;
4: members say their release (Version), and an authenticated frame of an unknown kind is
dropped and logged instead of closing the connection; 5: a stream's writes travel as columns,
Writes). versions.py lists what each added."""
PROTOCOL_MIN = 3
"""The oldest protocol this release still speaks: the 0.1 development trees' (they speak only 3;
0.2.0, the previous release, speaks 4 and 3)."""

DEFAULT_MAX_FRAME = 16 * 1024 * 1024
HANDSHAKE_MAX_FRAME = 4 * 1024
"""Ample for handshake messages, small enough that a stranger cannot cost us much."""

_LENGTH = struct.Struct(">I")
TAG_SIZE = 16
_SEQ = struct.Struct(">Q")


class Bounds(NamedTuple):
    """What one kind of message may cost to decode; None: as much as the frame holds.

    ``frame`` is the most body bytes (never more than the connection's ``max_frame_size``);
    ``text``, ``binary``, ``items`` and ``pairs`` the most bytes of any one str or bin and
    items of any one array or map; ``per_container`` the fewest frame bytes per array or
    map (a frame of n bytes holds at most n // per_container + 8 of them).
    """

    frame: int | None
    text: int | None
    binary: int | None
    items: int | None
    pairs: int | None
    per_container: int = 1


CONTROL_MAX_FRAME = 1024
"""Heartbeats, goodbyes, size and dump requests and replies, catch-up ends: a name and a few ints."""
GOSSIP_MAX_FRAME = 1024 * 1024
"""A view of the cluster: every member's id, address, state and cache names."""
LEASE_MAX_FRAME = 256 * 1024
"""Lease messages: a cache, keys (up to 1,000, each at most 4 KiB) and an error text."""
SMALL_MAX_FRAME = 64 * 1024
"""Any kind not listed in BOUNDS (a test's, or a new one): small until it is listed."""
DECODE_HOOK_MIN = 64 * 1024
"""Frames up to this size are decoded without counting containers: the worst they can cost
is some 5 MB, and the count costs a Python call per array (a 25% slower Ops decode)."""
_ADDRESS = 512  # host:port; a DNS name is at most 253 bytes
_TEXT = 8192  # an error text of 2,000 characters in UTF-8


def _bounds() -> dict[int, Bounds]:
    from . import messages as m  # every kind by name; the table is keyed by code

    handshake = Bounds(HANDSHAKE_MAX_FRAME, text=1024, binary=64, items=16, pairs=0)  # a Refused reason
    control = Bounds(CONTROL_MAX_FRAME, text=MAX_NAME_SIZE * 4, binary=0, items=16, pairs=0)
    lease = Bounds(LEASE_MAX_FRAME, text=_TEXT, binary=MAX_KEY_SIZE, items=1024, pairs=0)
    positions = Bounds(64 * 1024, text=MAX_NAME_SIZE * 4, binary=0, items=2 * 1024, pairs=0)
    keys = Bounds(None, text=MAX_KEY_SIZE, binary=MAX_KEY_SIZE, items=None, pairs=0, per_container=1 << 20)
    table: dict[type[Message], Bounds] = {
        m.Hello: handshake,
        m.Refused: handshake,
        m.Challenge: handshake,
        m.Proof: handshake,
        m.Welcome: handshake,
        m.Gossip: Bounds(GOSSIP_MAX_FRAME, text=_ADDRESS, binary=64, items=4096, pairs=64, per_container=8),
        m.Heartbeat: control,
        m.Leave: control,
        m.Version: control,
        # An op (one array) is at least 15 bytes; values are bin, str keys bounded.
        m.Ops: Bounds(None, text=MAX_KEY_SIZE, binary=None, items=None, pairs=0, per_container=12),
        m.Stream: Bounds(None, text=MAX_KEY_SIZE, binary=None, items=None, pairs=0, per_container=12),
        # Six arrays of scalars, whatever the count of ops: a nested array is a peer's malice. A column
        # packs to a byte or two an op, so the count of ops is bounded as such (a sender's batch is
        # 1,000); the message itself and its six columns are 8 arrays, the count's slack (``+ 8``).
        m.Writes: Bounds(None, text=MAX_KEY_SIZE, binary=None, items=1 << 16, pairs=0, per_container=1 << 16),
        # [origin, position, ...] for at most positions.MAX_ORIGINS origins
        m.Resume: positions,
        m.Resumed: control,
        m.DumpFrom: positions,
        m.Digest: Bounds(64 * 1024, text=MAX_NAME_SIZE * 4, binary=0, items=1024, pairs=0),
        m.Listing: keys,
        m.Pull: keys,
        m.CatchUp: Bounds(16 * 1024, text=MAX_NAME_SIZE * 4, binary=0, items=1024, pairs=0),
        m.CaughtUp: control,
        m.SizeRequest: control,
        m.SizeReply: control,
        m.DumpRequest: control,
        # Inline values are the application's own data: pairs of small ints are 3 bytes a list.
        m.DumpChunk: Bounds(None, text=None, binary=None, items=None, pairs=None, per_container=3),
        m.DumpEnd: control,
        # An operator's question and its answer: programs add their own (the demo's set_many).
        m.Query: Bounds(None, text=None, binary=None, items=None, pairs=None, per_container=8),
        m.Answer: Bounds(None, text=None, binary=None, items=None, pairs=None, per_container=8),
        m.LeaseRequest: lease,
        m.LeaseGrant: lease,
        m.LeaseWait: lease,
        m.LeaseDone: lease,
        m.LeaseReturn: lease,
    }
    return {cls.code: bounds for cls, bounds in table.items()}


BOUNDS = _bounds()
"""Every kind's Bounds by wire code (the table in docs/design.md)."""
_OTHER = Bounds(SMALL_MAX_FRAME, text=None, binary=None, items=None, pairs=None)
_NAMED = frozenset(code for code, cls in MESSAGE_TYPES.items() if "cache" in cls.__dataclass_fields__)


def bounds_of(code: int) -> Bounds:
    return BOUNDS.get(code, _OTHER)


def frame_limit(code: int, max_frame_size: int) -> int:
    """The most body bytes a frame of kind ``code`` may have on a connection allowing ``max_frame_size``."""
    frame = bounds_of(code).frame
    return max_frame_size if frame is None else min(frame, max_frame_size)


def encode(msg: Message, max_frame_size: int = DEFAULT_MAX_FRAME) -> bytes:
    """Return ``msg`` as one frame (unauthenticated; after the handshake, FrameSealer.seal it).

    An oversized message fails here, naming itself, rather than at the receiver,
    which could only drop the connection.
    """
    body: bytes = msgpack.packb(to_array(msg), use_bin_type=True)
    limit = frame_limit(msg.code, max_frame_size)
    if len(body) > limit:
        raise FrameTooLarge(f"{type(msg).__name__} needs a {len(body)}-byte frame, over the {limit}-byte limit")
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
        self._checked = -1  # offset in the buffer of the frame whose kind passed its limit
        self._unknown: int | None = None  # that frame's kind, when this release does not know it

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
            if size - overhead < 2:
                raise ProtocolError("a frame is too short to hold a message")
            end = start + _LENGTH.size + size
            if self._checked != start:  # the kind's own limit, as soon as the body's first bytes are in
                code = _peek_code(buffer, start + _LENGTH.size, min(end - overhead, len(buffer)), key is not None)
                if code is None:
                    break
                known = code in MESSAGE_TYPES  # if not, the frame limit above is its only one
                kind_limit = frame_limit(code, self.max_frame_size) if known else self.max_frame_size
                if size - overhead > kind_limit:
                    raise FrameTooLarge(
                        f"peer announced a {size - overhead}-byte {MESSAGE_TYPES[code].__name__} frame, "
                        f"over the {kind_limit}-byte limit for that kind"
                    )
                self._checked = start
                self._unknown = None if known else code
            if end > len(buffer):
                break
            if key is None:
                messages.append(_decode(buffer[start + _LENGTH.size : end]))
            else:
                body = buffer[start + _LENGTH.size : end - TAG_SIZE]
                if not hmac.compare_digest(_tag(key, self._seq, body), buffer[end - TAG_SIZE : end]):
                    raise ProtocolError("a frame failed authentication (forged, replayed, reordered or damaged)")
                self._seq += 1
                messages.append(_decode(body) if self._unknown is None else Unknown(self._unknown))
            start = end
            self._checked = -1
            self._unknown = None
        # Consumed frames go once per feed, not once per frame. What stays is the
        # start of a single frame, which the next deletion consumes, so every byte
        # is moved at most once however the stream is chopped up.
        del buffer[:start]
        if self._checked >= 0:
            self._checked -= start  # the frame whose kind was checked is now at the front
        return messages


def _peek_code(buffer: bytearray, start: int, end: int, admitted: bool = False) -> int | None:
    """The message code at the start of a body (``buffer[start:end]`` has arrived), None until
    enough has; ProtocolError if the body is no message array or (before ``admitted``) the code
    is not registered. An admitted peer's unknown code is returned as it is, unchecked."""
    if end - start < 2:
        if end - start == 1 and not 0x91 <= buffer[start] <= 0x9F:
            raise ProtocolError("a message is a msgpack array of 1 to 15 items")
        return None
    head, first = buffer[start], buffer[start + 1]
    if not 0x91 <= head <= 0x9F:
        raise ProtocolError("a message is a msgpack array of 1 to 15 items")
    if first <= 0x7F:
        code = first
    else:
        width = {0xCC: 1, 0xCD: 2, 0xCE: 4}.get(first)
        if width is None:
            raise ProtocolError("a message code is an unsigned int")
        if end - start < 2 + width:
            return None
        code = int.from_bytes(buffer[start + 2 : start + 2 + width], "big")
    cls = MESSAGE_TYPES.get(code)
    if cls is None:
        if admitted:
            return code
        raise ProtocolError(f"unknown message code {code}")
    if head - 0x90 != len(cls.__dataclass_fields__) + 1:
        raise ProtocolError(f"{cls.__name__} has {len(cls.__dataclass_fields__)} fields, got {head - 0x91}")
    return code


class _Counter:
    """Counts the arrays and maps msgpack builds and stops it past ``limit`` (list_hook, object_hook)."""

    __slots__ = ("left",)

    def __init__(self, limit: int) -> None:
        self.left = limit

    def __call__(self, obj: Any) -> Any:
        self.left -= 1
        if self.left < 0:
            raise ProtocolError("a frame holds more arrays and maps than its size allows for its kind")
        return obj


def _decode(body: bytearray) -> Message:
    size = len(body)
    # The kind was read and checked by _peek_code before the body arrived.
    code = body[1] if body[1] <= 0x7F else int.from_bytes(body[2 : 2 + {0xCC: 1, 0xCD: 2, 0xCE: 4}[body[1]]], "big")
    bounds = bounds_of(code)
    hooks: dict[str, Any] = {}
    if size > DECODE_HOOK_MIN and bounds.per_container > 1:
        counter = _Counter(size // bounds.per_container + 8)
        hooks = {"list_hook": counter, "object_hook": counter}
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
            max_str_len=_within(bounds.text, size),
            max_bin_len=_within(bounds.binary, size),
            max_array_len=_within(bounds.items, size),
            max_map_len=_within(bounds.pairs, size // 2),
            **hooks,
        )
    except ProtocolError:
        raise
    except Exception as exc:
        raise ProtocolError(f"undecodable frame ({type(exc).__name__}) {exc}".rstrip()) from exc
    msg = from_array(obj)
    if code in _NAMED:
        _check_name(msg.cache)  # type: ignore[attr-defined]
    return msg


def _within(bound: int | None, size: int) -> int:
    return size if bound is None else min(bound, size)


def _check_name(name: str) -> None:
    if len(name) > MAX_NAME_SIZE or (not name.isascii() and len(name.encode("utf-8")) > MAX_NAME_SIZE):
        raise ProtocolError(f"a cache name is at most {MAX_NAME_SIZE} bytes")


def _refuse_ext(code: int, data: bytes) -> NoReturn:
    raise ProtocolError(f"msgpack ext type {code} is not allowed")
