"""Bounds on what strangers and peers can make a member spend: log lines, loop rounds, concurrent work.

Each is a cost someone else chooses: strangers timing out at the door can write a
log line each (thousands a second), one bad entry can end a timer task (and with it
heartbeats and repair), and a peer asking for digests or dumps faster than it reads
them grows our memory. Time is passed in (a driver's clock, or the core's ``now``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any


class LogLimiter:
    """At most ``burst`` lines per ``interval`` seconds for one kind of event, then a count.

    Whoever causes the event (a stranger at the door, say) must not decide how much
    a member writes to its log: the first ``burst`` lines of a window are written
    whole, the rest only counted, and the count is written when the next line is.
    """

    def __init__(
        self,
        logger: logging.Logger,
        burst: int = 10,
        interval: float = 10.0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        """``clock``: seconds, read at each ``log``; without one, every ``log`` is given ``now``."""
        self.logger = logger
        self.burst = burst
        self.interval = interval
        self._clock = clock
        self._window_end = 0.0
        self._written = 0
        self.suppressed = 0
        """Lines counted but not written in the current window."""

    def log(self, level: int, msg: str, *args: Any, now: float | None = None, **kwargs: Any) -> bool:
        """Log like ``Logger.log`` unless this window's burst is spent; True if written."""
        if now is None:
            if self._clock is None:
                raise TypeError("a LogLimiter without a clock is given now")
            now = self._clock()
        if now >= self._window_end:
            if self.suppressed:
                self.logger.log(
                    level, "%d more like the last were not logged in %.0f s", self.suppressed, self.interval
                )
            self._window_end = now + self.interval
            self._written = self.suppressed = 0
        if self._written >= self.burst:
            self.suppressed += 1
            return False
        self._written += 1
        self.logger.log(level, msg, *args, **kwargs)
        return True


class Supervisor:
    """Runs the rounds of a background loop so that one failing round is logged and the loop goes on.

    A round that raises (a bug, or an entry that should never have got in) must not
    end the node's timer task: with it would go heartbeats, failure detection, gossip,
    re-dialing and repair, silently. The exception is logged (rate-limited, with its
    traceback) and counted, and the next round runs as usual.
    """

    def __init__(self, name: str, logger: logging.Logger, clock: Callable[[], float]) -> None:
        self.name = name
        self.failures = 0
        self._log = LogLimiter(logger, burst=5, interval=60.0, clock=clock)

    def run(self, round_: Callable[[], Any]) -> Any:
        """``round_()``, or None if it raised (an Exception; cancellation passes through)."""
        try:
            return round_()
        except Exception:
            self.failures += 1
            self._log.log(logging.ERROR, "a round of %s failed; it goes on", self.name, exc_info=True)
            return None


class PeerQuota:
    """How many of one kind of job (dumps served, scans queued) each peer has running.

    ``take`` says whether a peer may start one more; ``give`` returns it. A peer
    that asks for more than ``limit`` at once is not served the excess: an honest
    member never needs more (one dump per cache it boots, one scan per round).
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("a quota is at least 1")
        self.limit = limit
        self._held: dict[int, int] = {}

    def take(self, peer: int) -> bool:
        held = self._held.get(peer, 0)
        if held >= self.limit:
            return False
        self._held[peer] = held + 1
        return True

    def give(self, peer: int) -> None:
        held = self._held.get(peer, 0) - 1
        if held > 0:
            self._held[peer] = held
        else:
            self._held.pop(peer, None)

    def held(self, peer: int) -> int:
        return self._held.get(peer, 0)


def spans(sizes: Iterable[int], max_bytes: int, max_items: int) -> Iterator[tuple[int, int]]:
    """Cut a run of items into consecutive ``(start, end)`` spans for frames bounded in bytes.

    A span holds at most ``max_items`` items and at most ``max_bytes`` of their sizes,
    except a single item larger than ``max_bytes``, which gets a span of its own (the
    caller's ``max_value_size`` keeps that below the frame limit). A count alone does
    not bound a frame: 2,000 values of 8 KB would make a 16 MiB dump chunk.
    """
    start = end = total = 0
    for size in sizes:
        if end > start and (total + size > max_bytes or end - start >= max_items):
            yield start, end
            start, total = end, 0
        total += size
        end += 1
    if end > start:
        yield start, end
