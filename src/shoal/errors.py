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
