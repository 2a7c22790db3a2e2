"""Hybrid logical clock: versions that order the writes to a cache across members.

A version is one int, ``hlc << 64 | node_id``, so replicas compare versions with a
single integer comparison and the node id breaks ties between writes stamped in
the same millisecond by different members. ``hlc`` is ``wall_ms << 16 | counter``:
it follows the wall clock when the wall clock moves forward, and the counter keeps
versions strictly increasing when it does not (same millisecond, a clock stepped
back, or a peer whose clock runs ahead of ours).
"""

from __future__ import annotations

from collections.abc import Callable

COUNTER_BITS = 16
NODE_BITS = 64
NODE_MASK = (1 << NODE_BITS) - 1
MAX_HLC = (1 << 63) - 1
"""The largest hlc accepted from a peer (a wall clock around the year 6400): observing one
closer to 2**64 would make our next stamps overflow the 64 bits every version travels in."""

Version = int


def version_ms(version: Version) -> int:
    """Wall-clock milliseconds at which the version was stamped (lag figures use it)."""
    return version >> (NODE_BITS + COUNTER_BITS)


class HybridClock:
    """Stamps local writes and absorbs the versions of remote ones.

    Not locked: each cache has its own clock and calls it only under the cache's
    write lock (versions need only order the writes of one cache). A second lock
    per write would cost as much as the rest of the stamp.
    """

    def __init__(self, node_id: int, wall: Callable[[], float], max_skew: float = 1.0) -> None:
        """``wall``: the wall clock in seconds since the epoch (the driver's, or a test's)."""
        if not 0 <= node_id <= NODE_MASK:
            raise ValueError("node_id must be an unsigned 64-bit int")
        if not 0 <= max_skew < 86400:
            raise ValueError("max_skew is 0 to 86400 seconds")
        self.node_id = node_id
        self._wall = wall
        self._last = 0
        self._skew_hlc = int(max_skew * 1000) << COUNTER_BITS

    def stamp(self) -> Version:
        """A version newer than every version this clock has stamped or observed."""
        hlc = int(self._wall() * 1000) << COUNTER_BITS
        if hlc <= self._last:
            hlc = self._last + 1
        self._last = hlc
        return (hlc << NODE_BITS) | self.node_id

    def stamp_past(self) -> Version:
        """A version newer than every version stamped by now on any member (clocks in sync): past
        this millisecond, whatever counter another member reached in it. For what must outrank
        all that came before it in real time (a change announced by a backing store). The clock
        does not move to it: our next stamps must not outrank what other members stamp after now."""
        hlc = max((int(self._wall() * 1000) + 1) << COUNTER_BITS, self._last + 1)
        return (hlc << NODE_BITS) | self.node_id

    def observe(self, version: Version) -> None:
        """Move past a remote version, so our next write orders after it.

        Never further than ``max_skew`` ahead of our own wall clock: entry points
        refuse versions beyond that (validation.py), and this clamp is the last line,
        so no peer can drag our versions into the future (where repair, which skips
        what is newer than a second ago, would never look at them) or towards overflow.
        """
        hlc = version >> NODE_BITS
        if hlc > self._last:
            ceiling = (int(self._wall() * 1000) << COUNTER_BITS) + self._skew_hlc
            self._last = min(hlc, max(ceiling, self._last), MAX_HLC - (1 << 32))
