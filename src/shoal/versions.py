"""Which protocol features a peer speaks, and what it says about a kind it does not know.

Members of two releases run side by side during a rolling upgrade (and its rollback).
The handshake gives every connection one protocol number: the highest both ends speak
(``wire.PROTOCOL_MIN`` .. ``Config.protocol_max``). Everything a later protocol added
is a *feature* here, named with the first protocol that has it; code that would send
such a message kind asks ``speaks(protocol, feature)`` for that peer first, so an
older peer is never sent a kind it does not know. A peer that does anyway (a bug, or
a release that broke these rules) gets a logged refusal of that one frame, not a
closed connection (``Refusals``): from protocol 4 on, the wire skips a frame of an
unknown kind once it is authenticated, and the dispatcher logs it, rate-limited.

Members tell each other their release (``shoal.__version__``) in a ``Version``
message right after the handshake, when the connection's protocol has it; a peer of
an older protocol is listed with the release ``UNKNOWN_RELEASE``.
"""

from __future__ import annotations

import logging

from .limits import LogLimiter
from .wire import PROTOCOL_MIN, PROTOCOL_VERSION

log = logging.getLogger("shoal")

FEATURES: dict[str, int] = {
    "release": 4,  # Version: the sender's release string, right after the handshake
    "columns": 5,  # Writes: a stream's writes as six columns instead of an array per op
}
"""Each feature a peer may lack and the first protocol that has it. Once PROTOCOL_MIN reaches a
feature's protocol every admitted peer speaks it: its entry and its checks go (wire.py's
PROTOCOL_VERSION says what each protocol brought)."""

UNKNOWN_RELEASE = "unknown"
"""The release listed for a peer whose protocol does not say it (protocol 3: 0.1.x)."""


def speaks(protocol: int, feature: str) -> bool:
    """Does a peer on ``protocol`` know ``feature``? (KeyError for a feature not in FEATURES)"""
    return protocol >= FEATURES[feature]


def check_protocol_max(protocol_max: int) -> None:
    """``protocol_max`` must be one this release speaks (Config's rollout knob)."""
    if not PROTOCOL_MIN <= protocol_max <= PROTOCOL_VERSION:
        raise ValueError(f"protocol_max is {PROTOCOL_MIN} to {PROTOCOL_VERSION}, the protocols this release speaks")


class Refusals:
    """Frames of a kind this release does not know: each is dropped and logged, at most
    ``burst`` lines a minute, so a peer that sends many cannot flood the log."""

    def __init__(self, burst: int = 5, interval: float = 60.0) -> None:
        self._log = LogLimiter(log, burst=burst, interval=interval)
        self.count = 0

    def refuse(self, peer: int, kind: int, protocol: int | None, now: float) -> None:
        self.count += 1
        self._log.log(
            logging.WARNING,
            "refused a message of kind %d from %016x on protocol %s: this release does not know that kind, and a "
            "peer must not send it on that protocol (versions.py); the frame is dropped, the connection kept",
            kind,
            peer,
            "?" if protocol is None else protocol,
            now=now,
        )
