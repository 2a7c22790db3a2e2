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
        try:
            pack = self._local.pack
        except AttributeError:
            pack = self._local.pack = msgpack.Packer(use_bin_type=True).pack
        try:
            return pack(value)  # type: ignore[no-any-return]
        except (TypeError, ValueError, OverflowError) as exc:
            raise TypeError(f"value of type {type(value).__name__} cannot be serialized: {exc}") from None

    def loads(self, data: bytes) -> Any:
        return msgpack.unpackb(data, raw=False, strict_map_key=False, ext_hook=_refuse_ext)
