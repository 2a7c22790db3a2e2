"""Exceptions shoal raises, so callers can tell a misbehaving peer from a bug of their own."""

from __future__ import annotations


class ShoalError(Exception):
    """Base of every error shoal raises on purpose; catch this to catch them all."""


class ProtocolError(ShoalError):
    """A peer broke the protocol (malformed, oversized or unexpected frame).

    The only sound reaction is to log the reason and close that one connection;
    the node itself carries on.
    """


class FrameTooLarge(ProtocolError):
    """A frame's length prefix exceeds the limit, raised before its body is buffered."""


class HandshakeError(ProtocolError):
    """The peer could not be admitted: wrong secret, no common version, or a timeout."""


class LoaderError(ShoalError):
    """The loader of a ``fetch`` raised on another member that held the key's load lease.

    Only the exception's type name and text cross the wire (never the object),
    so this stands in for it: ``type_name`` says what was raised, ``str()`` its text.
    """

    def __init__(self, type_name: str, text: str) -> None:
        super().__init__(f"{type_name}: {text}" if text else type_name)
        self.type_name = type_name
        self.text = text


class BackingError(ShoalError):
    """A cache's backing store (Redis, Valkey) could not be read or written.

    Raised before the local copy is touched: a write that fails in the store is not
    kept locally either, so the members never hold what the store does not.
    """


class InvalidEntry(ProtocolError):
    """A peer or a snapshot file offered an entry the local API would have refused.

    Raised for a whole batch before any of it is applied: a peer that sends one such
    entry is broken or hostile, and nothing else it sent in that frame is trusted.
    """


class ClockSkewError(HandshakeError):
    """The peer's wall clock differs from ours by more than ``max_clock_skew``.

    Expiries are absolute wall-clock times and versions follow the wall clock, so a
    member whose clock is far off would expire entries early or late everywhere, or
    pull every member's versions into the future; it is refused instead.
    """


class WeakSecret(ShoalError, ValueError):
    """The cluster secret is empty or too short to resist guessing (``shoal secret`` prints one)."""
