"""shoal: a replicated in-memory cache for Python services.

``shoal.Cache`` is a local cache and loads no networking; ``shoal.Node`` (a
cluster member) loads asyncio, sockets and ssl when it is first named.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .cache import DEFAULT, Cache
from .errors import BackingError, LoaderError, ProtocolError, ShoalError, WeakSecret
from .serializer import MsgpackSerializer, Serializer

if TYPE_CHECKING:
    from .node import Node

__all__ = [
    "DEFAULT",
    "BackingError",
    "Cache",
    "LoaderError",
    "MsgpackSerializer",
    "Node",
    "ProtocolError",
    "Serializer",
    "ShoalError",
    "WeakSecret",
]
__version__ = "0.3.0.dev0"  # the one place the release is written; pyproject.toml reads it


def __getattr__(name: str) -> Any:
    if name == "Node":
        from .node import Node

        return Node
    raise AttributeError(f"module 'shoal' has no attribute {name!r}")
