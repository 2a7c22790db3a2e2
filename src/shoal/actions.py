"""What the protocol core asks its driver to do: the driver does the I/O.

Membership, replication and warm boot never touch a socket or a timer: they
return these through the dispatcher (dispatch.py), and a driver carries them
out: ``driver.py`` over asyncio sockets, the simulated network in the tests. A peer
is named by its node id; an address is ``host:port``.
"""

from __future__ import annotations

from dataclasses import dataclass

from .messages import Message, Ops, Stream, Writes
from .store import Key


@dataclass(frozen=True, slots=True)
class Send:
    peer: int
    msg: Message


@dataclass(frozen=True, slots=True)
class Broadcast:
    """Local writes to many peers: a driver encodes them once."""

    peers: tuple[int, ...]
    msg: Stream | Writes | Ops


@dataclass(frozen=True, slots=True)
class Dial:
    address: str


@dataclass(frozen=True, slots=True)
class Close:
    peer: int
    reason: str


@dataclass(frozen=True, slots=True)
class MemberUp:
    peer: int
    listen: str


@dataclass(frozen=True, slots=True)
class MemberDown:
    peer: int
    listen: str
    reason: str


@dataclass(frozen=True, slots=True)
class StreamDump:
    """Serve a warm-boot dump of ``cache`` to ``peer``: the driver runs the stream
    (``warmboot.dump_stream``), pacing it by the connection's back-pressure."""

    peer: int
    cache: str
    stream: int


@dataclass(frozen=True, slots=True)
class ReadSnapshot:
    """No peer could donate ``cache``: read the snapshot file (I/O) and hand its ops
    back through ``Dispatcher.snapshot_read``."""

    cache: str


@dataclass(frozen=True, slots=True)
class Ready:
    """The member just became ready (True) or stopped being ready (False)."""

    ready: bool


@dataclass(frozen=True, slots=True)
class BootStreaming:
    """A warm-boot dump started (True) or stopped (False) streaming in. While one does, the
    driver pauses the cyclic GC: each collection would walk every entry loaded so far."""

    active: bool


@dataclass(frozen=True, slots=True)
class Load:
    """Cluster single flight (leases.py): run the local loader for ``key`` of ``cache``, then
    report how it went (``Leases.loaded`` or ``Leases.failed``)."""

    cache: str
    key: Key


@dataclass(frozen=True, slots=True)
class Deliver:
    """The value of ``key`` is in the local cache now: give it to the local callers waiting on it."""

    cache: str
    key: Key


@dataclass(frozen=True, slots=True)
class Fail:
    """The loader raised on the lease holder: raise ``LoaderError(error_type, error_text)`` to local callers."""

    cache: str
    key: Key
    error_type: str
    error_text: str


Action = (
    Send
    | Broadcast
    | Dial
    | Close
    | MemberUp
    | MemberDown
    | StreamDump
    | ReadSnapshot
    | Ready
    | BootStreaming
    | Load
    | Deliver
    | Fail
)
