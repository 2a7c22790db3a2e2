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
