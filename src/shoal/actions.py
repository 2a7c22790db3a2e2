"""What the protocol state machines ask the driver to do; the driver does the I/O.

Membership, replication and warm boot never touch a socket or a timer: they
return these, and ``node.py`` (or the simulated network in the tests) carries
them out. A peer is named by its node id; an address is ``host:port``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .messages import Message


@dataclass(frozen=True, slots=True)
class Send:
    peer: int
    msg: Message


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


Action = Send | Dial | Close | MemberUp | MemberDown | Any
