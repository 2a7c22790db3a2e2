"""How values become bytes: msgpack by default, or any object with dumps/loads.

The serializer runs at ``set`` time, so a value the wire could not carry is refused
in the caller's stack frame with a ``TypeError`` rather than failing later on a
background thread. Pickle is never the default: a cache is shared by every member,
and unpickling what a peer sent would let that peer run code.
"""

from __future__ import annotations

import threading
from typing import Any, Protocol, runtime_checkable

import msgpack


@runtime_checkable
class Serializer(Protocol):
    def dumps(self, value: Any) -> bytes: ...

    def loads(self, data: bytes) -> Any: ...


def _refuse_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"msgpack ext type {code} is not accepted")


_CONTAINERS = (list, tuple, dict)
NEST_MARGIN = 16
"""Array levels a frame may wrap around a value (a dump chunk carries values inline,
inside its own arrays), so a value that decodes alone decodes inside any frame too."""
_MARGIN = b"\x91" * NEST_MARGIN  # msgpack: a one-item array, NEST_MARGIN levels deep


class MsgpackSerializer:
    """None, bool, int (64-bit), float, str, bytes, list/tuple and dict.

    Tuples come back as lists on the other members: treat values as immutable data,
    not as the exact object that was stored.
    """

    def __init__(self) -> None:
        # A Packer per thread: packb builds a new one per call (several times the cost
        # of packing a short string), and a Packer is not thread-safe.
        self._local = threading.local()

    def dumps(self, value: Any) -> bytes:
        """The value's bytes, or TypeError when a peer could not rebuild the value from them.

        msgpack packs more than it unpacks: a map keyed by tuples packs (the keys become
        arrays) but decodes to unhashable lists, and nesting near the decoder's 1,024-level
        stack packs but cannot be read back. A container is therefore decoded once here,
        as a peer would, under ``NEST_MARGIN`` extra levels. Scalars need no such check.
        """
        try:
            pack = self._local.pack
        except AttributeError:
            pack = self._local.pack = msgpack.Packer(use_bin_type=True).pack
        try:
            packed: bytes = pack(value)
        except (TypeError, ValueError, OverflowError) as exc:
            raise TypeError(f"value of type {type(value).__name__} cannot be serialized: {exc}") from None
        if isinstance(value, _CONTAINERS):
            try:
                self.loads(_MARGIN + packed)
            except Exception as exc:
                raise TypeError(
                    f"a {type(value).__name__} value packs but a peer could not decode it "
                    f"({type(exc).__name__}: {exc}); map keys must be str, bytes, int, float, bool or None"
                ) from None
        return packed

    def loads(self, data: bytes) -> Any:
        return msgpack.unpackb(data, raw=False, strict_map_key=False, ext_hook=_refuse_ext)
