"""shoal: a replicated in-memory cache for Python services."""

from __future__ import annotations

from .cache import DEFAULT, Cache
from .errors import HandshakeError, ProtocolError, ShoalError
from .node import Node
from .serializer import MsgpackSerializer, Serializer

__all__ = [
    "DEFAULT",
    "Cache",
    "HandshakeError",
    "MsgpackSerializer",
    "Node",
    "ProtocolError",
    "Serializer",
    "ShoalError",
]
__version__ = "0.1.0"
