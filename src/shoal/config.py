"""A member's settings: every timer and limit a ``Node`` takes, with its default, in one place.

``Node(listen, seeds, secret, **options)`` builds one ``Config`` from ``options``;
an unknown option is a ``TypeError`` naming it, a value out of range a
``ValueError``. It is frozen: the core and the driver read it and nothing
changes it while the member runs, so what ``Node.config`` shows is what runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .validation import DEFAULT_MAX_CLOCK_SKEW, DEFAULT_MAX_VALUE_SIZE
from .versions import check_protocol_max
from .wire import DEFAULT_MAX_FRAME, PROTOCOL_VERSION

if TYPE_CHECKING:
    import os


@dataclass(frozen=True)
class Config:
    """The protocol's timers and limits, and the driver's."""

    # -- membership
    failure_timeout: float = 5.0
    """A peer silent this long (at the least; the detector adapts to what it observes) is down."""
    heartbeat_interval: float = 0.5
    mesh_wait: float = 5.0
    """How long readiness waits for a gossiped member to connect, or a peer to answer a catch-up."""
    max_clock_skew: float = DEFAULT_MAX_CLOCK_SKEW
    """Members' clocks agree this closely; the handshake refuses a peer off by more."""
    tick_interval: float = 0.1
    """How often the driver calls ``tick``: a longer gap is this member's own loop running late,
    and widens its failure detector's allowances instead of accusing its peers."""

    # -- replication and repair
    anti_entropy_interval: float = 10.0
    max_peer_backlog: int = 64 * 1024 * 1024
    """Bytes a peer may leave unread; past it nothing more is produced for it (its writes wait in
    the log, answers and repair scans wait their turn) until it drains."""
    catchup_log_bytes: int = 64 * 1024 * 1024
    """Recent writes kept per cache for members that reconnect (catch-up), keys and per-op overhead
    counted; 0 keeps none."""

    # -- warm boot
    warm_donors: int = 1
    warm_timeout: float = 30.0
    """A donor that sends nothing for this long is replaced by the next largest."""
    boot_wait: float = 2.0
    """How long a booting member waits for its first peers before it counts itself alone."""

    # -- cluster single flight
    load_timeout: float = 10.0
    """A lease holder's loader gets this long before the key's lease passes on."""

    # -- the driver: connections, files, chores
    handshake_timeout: float = 5.0
    protocol_max: int = PROTOCOL_VERSION
    """The newest protocol this member offers in its handshakes: a rollout and test knob. Lowered
    to an older release's (4: 0.2.0; 3: the 0.1 trees), the member talks like one, with the newer
    protocol features switched off (versions.py); the compatibility tests run it that way."""
    max_frame_size: int = DEFAULT_MAX_FRAME
    max_pending: int = 128
    """Connections still in their handshake; past it the oldest is closed."""
    dns_interval: float = 10.0
    snapshot_path: str | os.PathLike[str] | None = None
    snapshot_interval: float = 60.0
    gc_freeze: bool = True
    """Freeze the cached entries out of the cyclic GC's sight (housekeeping.Collector). Process-wide:
    the application's objects alive at a freeze are frozen with them, and its garbage among them
    waits for the node's next collection of everything frozen (once the process grew beside its
    caches, or the last one found garbage); on a node too large to collect within half
    ``failure_timeout`` it stays."""

    def __post_init__(self) -> None:
        check_protocol_max(self.protocol_max)
        if self.warm_donors not in (1, 2):
            raise ValueError("warm_donors is 1 or 2")
        if self.max_frame_size < DEFAULT_MAX_VALUE_SIZE * 2:
            raise ValueError(f"max_frame_size must be at least {DEFAULT_MAX_VALUE_SIZE * 2} (twice max_value_size)")
        positive = ("failure_timeout", "heartbeat_interval", "tick_interval", "handshake_timeout", "load_timeout")
        for name in (*positive, "warm_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")
        for name in ("max_peer_backlog", "catchup_log_bytes", "max_pending", "mesh_wait", "boot_wait"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
