"""Every message members exchange: small frozen dataclasses, each with a wire code.

A message travels as the msgpack array ``[code, field1, field2, ...]`` in field
order (framing is wire.py's job). Adding a message takes three lines::

    @message(11)
    class Heartbeat(Message):
        sent_ms: int

Codes are part of the wire format, so a code is never reused or renumbered, and
a new field goes at the end of a new message rather than into an old one. A peer of the
previous protocol closes the connection on a kind it does not know, so a new kind is
sent only where ``Dispatcher.speaks`` says the peer's protocol has it (versions.py).
Ranges keep each module's messages together:

    1-9    handshake        20-39  replication      60-69  operator queries
    10-19  membership       40-59  warm boot        70-79  load leases    80+  free

Field annotations are limited to msgpack's plain types (int, float, str, bytes,
bool, ``list[Any]``, ``dict[Any, Any]`` and ``X | None`` of those). That keeps
checking a decoded message down to one ``type(value) is`` per field, and means a
peer can only ever hand us plain data. The shape inside a list or dict (say the
members of a Gossip) is checked by the module that owns it.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, TypeVar

from .errors import ProtocolError

if TYPE_CHECKING:
    from typing_extensions import dataclass_transform
else:  # typing has it only from 3.11; at runtime it is a mere marker for type checkers

    def dataclass_transform(**_: Any) -> Callable[[Any], Any]:
        return lambda decorated: decorated


class Message:
    """Base of every message; ``code`` names the type on the wire."""

    __slots__ = ()
    code: ClassVar[int]
    # Tells mypy every message is a dataclass, so dataclasses.fields/replace accept one.
    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]


class _Field(NamedTuple):
    name: str
    type: type
    nullable: bool


M = TypeVar("M", bound=Message)

_PLAIN: dict[Any, type] = {
    int: int,
    float: float,
    str: str,
    bytes: bytes,
    bool: bool,
    list[Any]: list,
    dict[Any, Any]: dict,
}
_BY_CODE: dict[int, type[Message]] = {}
_FIELDS: dict[type[Message], tuple[_Field, ...]] = {}

MESSAGE_TYPES: Mapping[int, type[Message]] = types.MappingProxyType(_BY_CODE)
"""Every registered message type by code (a live, read-only view)."""


@dataclass_transform(frozen_default=True)
def message(code: int) -> Callable[[type[M]], type[M]]:
    """Make the decorated class a frozen, slotted message with wire code ``code``.

    Field types are checked here, at import time, so a message that could not be
    validated on arrival never reaches the wire.
    """

    def register(cls: type[M]) -> type[M]:
        if code in _BY_CODE:
            raise ValueError(f"message code {code} is taken by {_BY_CODE[code].__name__}")
        cls = dataclasses.dataclass(frozen=True, slots=True)(cls)
        cls.code = code
        hints = typing.get_type_hints(cls)
        _FIELDS[cls] = tuple(_field(cls, f.name, hints[f.name]) for f in dataclasses.fields(cls))
        _BY_CODE[code] = cls
        return cls

    return register


def _field(cls: type, name: str, hint: Any) -> _Field:
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    plain = [_PLAIN.get(option) for option in options if option is not type(None)]
    if len(plain) != 1 or plain[0] is None:
        raise TypeError(f"{cls.__name__}.{name}: {hint} is not a plain msgpack type")
    return _Field(name, plain[0], nullable=type(None) in options)


def to_array(msg: Message) -> list[Any]:
    """The msgpack array for ``msg``; the sender's types are trusted (mypy checks them)."""
    return [msg.code, *(getattr(msg, f.name) for f in _FIELDS[type(msg)])]


def from_array(obj: Any) -> Message:
    """Rebuild a message from a decoded array, refusing anything it is not.

    Error texts name types, never values: a value may be megabytes of a peer's choosing.
    """
    if type(obj) is not list or not obj:
        raise ProtocolError(f"a message is a non-empty array, got {type(obj).__name__}")
    code, *values = obj
    if type(code) is not int:
        raise ProtocolError(f"a message code is an int, got {type(code).__name__}")
    cls = _BY_CODE.get(code)
    if cls is None:
        raise ProtocolError(f"unknown message code {code}")
    fields = _FIELDS[cls]
    if len(values) != len(fields):
        raise ProtocolError(f"{cls.__name__} has {len(fields)} fields, got {len(values)}")
    for i, (f, value) in enumerate(zip(fields, values, strict=True)):
        kind = type(value)
        if kind is f.type or (value is None and f.nullable):
            continue
        if kind is int and f.type is float:
            values[i] = float(value)
            continue
        raise ProtocolError(f"{cls.__name__}.{f.name} must be {f.type.__name__}, got {kind.__name__}")
    return cls(*values)


@dataclasses.dataclass(frozen=True, slots=True)
class Unknown(Message):
    """Stands for an authenticated frame of a kind this release does not know (a newer peer's):
    the decoder skips its body unread and hands this on, for the dispatcher to log and drop
    (versions.py). It is never sent and has no code of its own."""

    kind: int
    code: ClassVar[int] = 0


# --- handshake (handshake.py) -------------------------------------------------


@message(1)
class Hello(Message):
    """Initiator's opening: the versions it speaks, who it is, and its challenge."""

    protocol_min: int
    protocol_max: int
    node_id: int
    nonce: bytes
    listen: str


# Codes 2, 3 and 4 were protocol 1's Challenge, Proof and Welcome, in which the
# acceptor proved itself first; retired, never to be reused.


@message(5)
class Refused(Message):
    """Sent just before closing a connection whose handshake failed, for the peer's log."""

    reason: str


@message(6)
class Challenge(Message):
    """Acceptor's answer: the chosen version, who it is, its nonce and wall clock; no proof yet."""

    protocol: int
    node_id: int
    nonce: bytes
    listen: str
    wall_ms: int


@message(7)
class Proof(Message):
    """Initiator's proof of the cluster secret, and its wall clock (inside the MAC)."""

    mac: bytes
    wall_ms: int


@message(8)
class Welcome(Message):
    """Acceptor's proof of the secret: the initiator is admitted; authenticated frames follow."""

    mac: bytes


# --- membership (membership.py) -----------------------------------------------


@message(10)
class Gossip(Message):
    """A member's view of the cluster.

    Each entry is ``[node_id, listen, state, caches, heartbeat]``; membership
    validates that shape, since only it knows what a valid view is. ``state`` is
    always "up" and ``heartbeat`` 0 (a member gossips only those it is connected to)
    and receivers ignore both: they stay because members of the released version
    read ``caches`` at index 3, so dropping them would need a protocol version step.
    """

    members: list[Any]


@message(11)
class Heartbeat(Message):
    """Proof of life for the failure detector, which times arrivals on its own clock.

    ``sent_ms`` (the sender's clock) is ignored; it stays because members of the released
    version refuse a Heartbeat without it (a protocol version step would drop it).
    """

    sent_ms: int


@message(12)
class Leave(Message):
    """A graceful goodbye, so peers mark the member gone without waiting for timeouts."""


@message(13)
class Version(Message):
    """The sender's release (``shoal.__version__``), sent once right after the handshake, and
    only on a connection whose protocol has it (versions.py: "release", protocol 4)."""

    release: str


# --- replication (replication.py) ---------------------------------------------


@message(20)
class Ops(Message):
    """A batch of writes to one cache, each ``[kind, key, value, expires, hlc, node]``."""

    cache: str
    ops: list[Any]


@message(21)
class Digest(Message):
    """Anti-entropy opening: the sender's per-bucket digests of one cache.

    ``watermark`` is the sender's clear watermark as ``[hlc, node]``: a ``clear()``
    lost on the way is repaired by it, since a cleared key is in no digest.
    """

    cache: str
    round: int
    digests: list[Any]
    watermark: list[Any]
    settled_ms: int
    """Entries stamped before this (the opener's wall ms less the settle window) are compared:
    both sides use the same line, so writes in flight meanwhile make no bucket differ."""


@message(22)
class Listing(Message):
    """Keys and versions the sender holds in buckets whose digests differ.

    ``entries`` is ``[key, hlc, node, ...]`` flattened, tombstones included (so a
    delete lost on the way is pulled like a write); ``reply`` asks the receiver to
    answer with its own listing of the same buckets.
    """

    cache: str
    round: int
    buckets: list[Any]
    entries: list[Any]
    reply: bool
    watermark: list[Any]
    settled_ms: int


@message(23)
class Pull(Message):
    """Send me these keys (as an Ops batch): you hold a newer version."""

    cache: str
    keys: list[Any]


@message(24)
class CatchUp(Message):
    """Send me the writes you hold that I may have missed: those you logged from ``since_ms``
    on (your wall clock, with a margin), answered by Ops batches and a ``CaughtUp``. Writes made
    by the members in ``skip`` (ones I am connected to and ask myself) need not be relayed."""

    cache: str
    since_ms: int
    skip: list[Any]


@message(25)
class CaughtUp(Message):
    """The end of a catch-up; ``complete`` is false when the log did not reach back to
    ``since_ms``, and the asker falls back to a digest comparison."""

    cache: str
    complete: bool


# CatchUp and CaughtUp asked for a time window of everything logged (the same writes again on
# every reconnect); positions replace them. A member still answers a CatchUp, as incomplete.


@message(26)
class Stream(Message):
    """Writes of ``origin`` (a node id) to one cache, at positions ``start``, ``start + 1``, ...
    of its stream: sent live by the origin, or by a catch-up (the origin's, or another member's
    relay of it). Each op is ``[kind, key, value, expires, hlc, node]`` as in ``Ops``."""

    cache: str
    origin: int
    start: int
    ops: list[Any]


@message(29)
class Writes(Message):
    """``Stream``'s writes as columns (protocol 5): ``ops`` is six arrays of one length,
    ``[kinds, keys, values, expires, hlcs, nodes]``. A receiver decodes six arrays, not one
    per op: each of those was an object the cyclic collector had to walk, and enough of them
    in every frame to set it going (half a receiver's time, ``bench/replication.py``)."""

    cache: str
    origin: int
    start: int
    ops: list[Any]


@message(27)
class Resume(Message):
    """Send me the writes of this cache from these positions on: ``positions`` is
    ``[origin, position, ...]``. The receiver's own stream then continues live; any other
    origin (one down for the asker) is relayed as far as the receiver holds it."""

    cache: str
    positions: list[Any]


@message(28)
class Resumed(Message):
    """A catch-up of ``origin``'s writes reached ``position`` (the receiver's own stream: it is
    live from here). ``complete`` is false when the log no longer held what was asked: the asker
    compares digests with the sender."""

    cache: str
    origin: int
    position: int
    complete: bool


# --- warm boot (warmboot.py) ----------------------------------------------------


@message(40)
class SizeRequest(Message):
    """How many entries do you hold of this cache? (a booting member choosing a donor)"""

    cache: str


@message(41)
class SizeReply(Message):
    cache: str
    entries: int
    ready: bool


@message(42)
class DumpRequest(Message):
    """Stream me your entries of this cache; ``stream`` names the stream in replies."""

    cache: str
    stream: int


@message(43)
class DumpChunk(Message):
    """One bounded chunk of a dump, as columns (checked a column at a time, not an entry at a time).

    ``values`` are the values themselves when ``inline`` (the cache uses the default
    msgpack serializer, so the frame's own decoding is the value's), else serialized bytes.
    """

    cache: str
    stream: int
    keys: list[Any]
    values: list[Any]
    expires: list[Any]
    hlcs: list[Any]
    nodes: list[Any]
    inline: bool


@message(44)
class DumpEnd(Message):
    cache: str
    stream: int
    entries: int


@message(45)
class DumpFrom(Message):
    """Ahead of a dump's chunks: the donor's positions (``[origin, position, ...]``) when it took
    the snapshot; the booting member's catch-up starts there, where the dump ends."""

    cache: str
    stream: int
    positions: list[Any]


# --- operator queries (client.py) -------------------------------------------------


@message(60)
class Query(Message):
    """An operator's question (``shoal members``, ``shoal stats``, ``shoal demo``'s probes).

    Sent by an authenticated client that is not a member (it advertises no listen
    address), so it never joins membership or receives cache traffic.
    """

    what: str
    args: list[Any]


@message(61)
class Answer(Message):
    ok: bool
    data: dict[Any, Any]


# --- load leases (leases.py): one loader call per key for the whole cluster ----------
# ``keys`` is a list of str/bytes/int keys of ``cache``; leases.py checks that shape.


@message(70)
class LeaseRequest(Message):
    """To a key's owner: I missed these keys; may I load them?"""

    cache: str
    keys: list[Any]


@message(71)
class LeaseGrant(Message):
    """From the owner: load these keys now; the lease lapses after ``ttl_ms`` and passes on."""

    cache: str
    keys: list[Any]
    ttl_ms: int


@message(72)
class LeaseWait(Message):
    """From the owner: member ``holder`` is loading these keys; wait for the value (re-ask after ``ttl_ms``).

    Knowing the holder lets a waiter that becomes the keys' owner (the old one
    went down) keep the lease where it is instead of granting a second load.
    """

    cache: str
    keys: list[Any]
    ttl_ms: int
    holder: int


@message(73)
class LeaseDone(Message):
    """A load is over: holder to owner, then owner to each waiter.

    ``error_type`` is None when the value was stored (it reaches waiters by
    replication); otherwise the loader raised, and waiters raise an error carrying
    the type's name and ``error_text``. Only these two strings cross the wire:
    an exception object is never sent, so nothing is unpickled.
    """

    cache: str
    keys: list[Any]
    error_type: str | None
    error_text: str | None


@message(74)
class LeaseReturn(Message):
    """Holder to owner: I give these leases back without loading (my caller went away); pass them on."""

    cache: str
    keys: list[Any]
