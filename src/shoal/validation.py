"""The one check for what enters a member: keys, values, expiries and versions, from anywhere.

Theory of operation
-------------------
An entry reaches a member three ways: the local API (``set``, ``add``, ``touch``),
a peer's frames (ops, repair, dumps) and a snapshot file at boot. Whatever one of
them lets in, the others must be able to carry: a key the API accepts but the wire
cannot encode breaks the flush that carries it, and a version from far in the future
that a peer or a file slips in pulls every member's clock after it. So each rule is
written once, here, and each entry point calls it:

- keys are str (strict UTF-8, no lone surrogates), bytes, or an int msgpack carries
  (-2**63 .. 2**64-1), at most ``MAX_KEY_SIZE`` bytes;
- a cache name is a str of at most ``MAX_NAME_SIZE`` bytes of UTF-8 (a peer's is
  refused while its frame is decoded, wire.py);
- values are serialized at ``set`` and refused there: a ``TypeError`` when a peer
  could not decode them (``{(1, 2): 3}``, nesting the decoder cannot follow), a
  ``ValueError`` over ``max_value_size`` bytes, so no single value can fill a frame;
- a ttl is finite and at most ``MAX_TTL`` (ten years); an expiry from a peer or a
  file is a finite time no further ahead than that;
- a version is at most ``max_clock_skew`` ahead of the local wall clock (the model is
  CockroachDB's max-offset rule: the handshake refuses a peer whose clock is further
  off, so an honest peer never trips this, and a forged op cannot drag the clock).

The local API raises ``TypeError``/``ValueError`` like any Python container; input
from a peer or a file raises ``InvalidEntry`` (a ``ProtocolError``), whose text names
the rule and never the data.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from datetime import timedelta
from itertools import repeat
from operator import lshift, or_
from typing import Any

from .clock import COUNTER_BITS, MAX_HLC, NODE_BITS, NODE_MASK
from .errors import InvalidEntry

MAX_KEY_SIZE = 4096
"""Bytes of a key (UTF-8 for str): keys travel in every listing and pull, so they stay small."""
MAX_NAME_SIZE = 255
"""Bytes of a cache name (UTF-8): names travel in every message about a cache and in gossip."""
DEFAULT_MAX_VALUE_SIZE = 1024 * 1024
"""Serialized bytes of one value: far below the 16 MiB frame limit, so batches can be cut by bytes."""
MAX_TTL = 10 * 365.25 * 86400.0
"""Ten years: the furthest expiry a member accepts (``float('inf')`` means never, ``None`` in the API)."""
DEFAULT_MAX_CLOCK_SKEW = 1.0
"""Seconds two members' wall clocks may differ by; a peer further off is refused at the handshake."""
INT_KEY_MIN = -(1 << 63)
INT_KEY_MAX = (1 << 64) - 1

KEY_TYPES = frozenset((str, bytes, int))


def check_key(key: object) -> None:
    """Refuse a key the wire cannot carry: ``TypeError`` for its type, ``ValueError`` for its content."""
    kind = type(key)
    if kind is str:
        text: str = key  # type: ignore[assignment]
        if text.isascii():
            size = len(text)
        else:
            try:
                size = len(text.encode("utf-8"))
            except UnicodeEncodeError:
                raise ValueError("a str key must be valid UTF-8 (it holds a lone surrogate)") from None
    elif kind is bytes:
        size = len(key)  # type: ignore[arg-type]
    elif kind is int:
        if not INT_KEY_MIN <= key <= INT_KEY_MAX:  # type: ignore[operator]
            raise ValueError("an int key must lie within -2**63 .. 2**64-1 (what msgpack carries)")
        return
    else:
        raise TypeError(f"cache keys are str, bytes or int, not {kind.__name__}")
    if size > MAX_KEY_SIZE:
        raise ValueError(f"a key is at most {MAX_KEY_SIZE} bytes, this one is {size}")


def check_cache_name(name: object) -> None:
    """Refuse a cache name that is not a str of 1 to ``MAX_NAME_SIZE`` UTF-8 bytes."""
    if type(name) is not str:
        raise TypeError(f"a cache name is a str, not {type(name).__name__}")
    try:
        size = len(name) if name.isascii() else len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError("a cache name must be valid UTF-8 (it holds a lone surrogate)") from None
    if not 0 < size <= MAX_NAME_SIZE:
        raise ValueError(f"a cache name is 1 to {MAX_NAME_SIZE} bytes, this one is {size}")


def ttl_seconds(ttl: float | int | timedelta | None) -> float | None:
    """A ttl as seconds (None: never expires), refusing one no expiry could represent."""
    if ttl is None:
        return None
    if isinstance(ttl, timedelta):
        seconds = ttl.total_seconds()
    elif isinstance(ttl, (int, float)) and not isinstance(ttl, bool):
        try:
            seconds = float(ttl)
        except OverflowError:
            raise ValueError(f"a ttl is at most {MAX_TTL:.0f} seconds (ten years), or None") from None
    else:
        raise TypeError(f"a ttl is seconds (int, float), a timedelta or None, not {type(ttl).__name__}")
    if not 0 <= seconds <= MAX_TTL:  # NaN fails both comparisons
        raise ValueError(f"a ttl is 0 to {MAX_TTL:.0f} seconds (ten years), or None; got {ttl!r}")
    return seconds


def check_value_size(packed: bytes, max_value_size: int) -> None:
    if type(packed) is not bytes:
        raise TypeError(f"a serializer must return bytes, not {type(packed).__name__}")
    if len(packed) > max_value_size:
        raise ValueError(f"the value serializes to {len(packed)} bytes, over max_value_size ({max_value_size})")


def version_limit(now: float, max_clock_skew: float) -> int:
    """The newest version a member accepts at wall time ``now``: ``max_clock_skew`` ahead."""
    hlc = min(int((now + max_clock_skew) * 1000) << COUNTER_BITS | ((1 << COUNTER_BITS) - 1), MAX_HLC)
    return (hlc << NODE_BITS) | NODE_MASK


def check_version(version: object, limit: int) -> None:
    """Refuse a peer's version that is malformed or ahead of ``limit`` (see ``version_limit``)."""
    if type(version) is not int or not 0 <= version <= limit:
        raise InvalidEntry("a version must be unsigned and no further ahead of our clock than max_clock_skew")


def check_expiry(expires: object, now: float) -> float:
    """A peer's absolute expiry as a float (``inf``: never), refusing a non-finite or far one."""
    if type(expires) is float or type(expires) is int:
        if math.isinf(expires) and expires > 0:
            return math.inf
        if 0 <= expires <= now + MAX_TTL + DEFAULT_MAX_CLOCK_SKEW * 2:  # NaN fails
            return float(expires)
    raise InvalidEntry("an expiry must be a time from 1970 to ten years ahead, or never")


def check_key_types(keys: Iterable[object]) -> None:
    """Refuse a peer's message that names a key of a type no cache holds, before it is used.

    The key's content (size, encoding, int range) is ``check_peer_entries``' part, where
    entries are applied; a key only looked up (a pull, a listing) finds nothing if it is bad.
    """
    if not set(map(type, keys)) <= KEY_TYPES:
        raise InvalidEntry("a key must be str, bytes or int")


def versions_from_wire(hlcs: Sequence[Any], nodes: Sequence[Any]) -> list[int]:
    """A peer's versions, which travel as (hlc, node id), joined; refused whole unless each is
    two unsigned 64-bit ints with the hlc below 2**63 (``clock.MAX_HLC``: observing one closer
    to 2**64 would make our next stamps overflow the 64 bits a version travels in)."""
    return joined_versions(hlcs, nodes)[0]


def joined_versions(hlcs: Sequence[Any], nodes: Sequence[Any]) -> tuple[list[int], int]:
    """``versions_from_wire``, and a bound of the versions for ``check_peer_entries``' ``newest``
    (the largest hlc with the largest node id: ``version <= limit`` of each comes down to the
    hlc, found in the pass over the 64-bit column instead of another over the 128-bit one)."""
    if len(hlcs) != len(nodes):
        raise InvalidEntry("a version is an hlc and a node id")
    if not hlcs:
        return [], 0
    top = max(hlcs) if set(map(type, hlcs)) == {int} == set(map(type, nodes)) else -1
    if not (0 <= top <= MAX_HLC and min(hlcs) >= 0 and min(nodes) >= 0 and max(nodes) <= NODE_MASK):
        raise InvalidEntry("a version is two unsigned 64-bit ints (hlc below 2**63)")
    # C-speed: a dump joins millions.
    return list(map(or_, map(lshift, hlcs, repeat(NODE_BITS)), nodes)), top << NODE_BITS | NODE_MASK


def check_peer_key(key: object) -> None:
    try:
        check_key(key)
    except (TypeError, ValueError) as exc:
        raise InvalidEntry(f"peer's key refused: {exc}") from None


def _ascii_strs(keys: Sequence[Any]) -> bool:
    """Every key is an ASCII str: joined (a TypeError if one is not a str) and checked as one
    string, half the time of a type pass and an ``isascii`` call per key. A str subclass would
    pass too; keys from msgpack, the only ones checked here, are plain str."""
    try:
        return "".join(keys).isascii()
    except TypeError:
        return False


def check_peer_entries(
    keys: Sequence[Any],
    expires: Sequence[Any],
    versions: Sequence[Any],
    now: float,
    max_clock_skew: float,
    newest: int | None = None,
) -> list[float]:
    """Check a batch of a peer's (or a snapshot's) entries; returns the expiries as floats.

    The whole batch is checked before any of it is applied (see ``InvalidEntry``).
    ``newest``: the bound ``joined_versions`` gave for ``versions``, which it has checked are
    unsigned ints; then only the bound is held against our clock.
    """
    limit = version_limit(now, max_clock_skew)
    # Column at a time first, in C (a warm boot checks a million entries): the common case,
    # ASCII str keys, int versions, float expiries, passes in a few passes over each column;
    # only a column that does not is checked entry by entry, for its precise refusal.
    if not keys:
        return []
    if not (_ascii_strs(keys) and max(map(len, keys)) <= MAX_KEY_SIZE):
        for key in keys:
            if type(key) is not str or not key.isascii() or len(key) > MAX_KEY_SIZE:
                check_peer_key(key)
    # With a ``newest`` within the limit every version is known good; else each column pass, or
    # each version for the precise refusal.
    if (newest is None or newest > limit) and not (
        set(map(type, versions)) == {int} and min(versions) >= 0 and max(versions) <= limit
    ):
        for version in versions:
            check_version(version, limit)
    # The sum is NaN if any is NaN (or both infinities are there), which min and max would not see.
    total = sum(expires) if set(map(type, expires)) == {float} else math.nan
    if total == total and min(expires) >= 0:
        latest = max(expires)
        if latest == math.inf:
            latest = max(filter(math.inf.__ne__, expires), default=0.0)
        if latest <= now + MAX_TTL + DEFAULT_MAX_CLOCK_SKEW * 2:
            return list(expires)
    return [check_expiry(e, now) for e in expires]
