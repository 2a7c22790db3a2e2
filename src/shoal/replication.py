"""Writes between members: the op format, its validation, and anti-entropy digests.

Theory of operation. A local write is applied at once and queued; the node
flushes the queue once per loop tick into one ``Ops`` frame per cache, encoded
once and written to every member of the cache's group. A receiver applies each
op only if it is newer than what it holds (store.py), so duplicates, reordering
and replays are harmless.

Writes lost on the way (a dropped connection, a partition, a full outbox) are
repaired by anti-entropy. Every ``interval`` a member sends a random peer the
digests of one cache: the keyspace is split into ``BUCKETS`` buckets by a stable
hash of the key, and a bucket's digest is the sum modulo 2**64 of a 64-bit hash
of (key, version, expiry) of each live entry in it. A sum, unlike a plain XOR,
does not cancel out pairs. The peer answers with a listing (key, version) of its
entries in the buckets that differ and asks for ours; each side then pulls the
keys for which the other holds a newer version. Each side only pulls, never
pushes: a member that evicted a key on purpose does not pull it back, and an
expired entry is in no digest or listing.

Everything here is pure: the node supplies entries and time.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from typing import Any

from .cache import Op
from .clock import NODE_BITS, NODE_MASK
from .errors import ProtocolError
from .store import CLEAR, DELETE, NEVER, WRITE, Entry, Key, Store

BUCKETS = 1024
MAX_BUCKETS_PER_ROUND = 64
_MASK64 = (1 << 64) - 1


def op_to_wire(op: Op) -> list[Any]:
    kind, key, packed, expires, version = op
    return [kind, key, packed, None if expires == NEVER else expires, version >> NODE_BITS, version & NODE_MASK]


def ops_from_wire(raw: list[Any]) -> list[Op]:
    """Validate a peer's ops; anything malformed fails the whole frame."""
    ops: list[Op] = []
    for item in raw:
        if type(item) is not list or len(item) != 6:
            raise ProtocolError("an op is a 6-item array")
        kind, key, packed, expires, hlc, node = item
        if kind not in (WRITE, DELETE, CLEAR) or type(kind) is not int:
            raise ProtocolError("unknown op kind")
        if type(key) not in (str, bytes, int):
            raise ProtocolError("op key must be str, bytes or int")
        if kind == WRITE and type(packed) is not bytes:
            raise ProtocolError("a write carries its value as bytes")
        if expires is None:
            expires = NEVER
        elif type(expires) not in (float, int) or math.isnan(expires):
            raise ProtocolError("op expiry must be a number or nil")
        if type(hlc) is not int or type(node) is not int or not 0 <= hlc <= _MASK64 or not 0 <= node <= _MASK64:
            raise ProtocolError("op version must be two unsigned 64-bit ints")
        ops.append((kind, key, packed, float(expires), (hlc << NODE_BITS) | node))
    return ops


def entry_op(entry: Entry, packed: bytes) -> Op:
    return (WRITE, entry.key, packed, float(entry), entry.version)


# -- digests -------------------------------------------------------------------


def _key_bytes(key: Key) -> bytes:
    if type(key) is str:
        return b"s" + key.encode("utf-8", "surrogatepass")
    if type(key) is bytes:
        return b"b" + key
    return b"i" + str(key).encode()


def key_hash(key: Key) -> int:
    """A stable 64-bit hash of a key (Python's hash() differs between processes)."""
    return int.from_bytes(hashlib.blake2b(_key_bytes(key), digest_size=8).digest(), "big")


def bucket_of(key: Key) -> int:
    return key_hash(key) % BUCKETS


def _entry_hash(khash: int, version: int, expires: float) -> int:
    exp = 0 if expires == NEVER else int(expires * 1000)
    h = (khash ^ (version * 0x9E3779B97F4A7C15) ^ (exp * 0xC2B2AE3D27D4EB4F)) & _MASK64
    # splitmix64 finaliser: spreads every input bit over the whole word
    h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK64
    return h ^ (h >> 31)


def digests(entries: Iterable[Entry], now: float) -> list[int]:
    sums = [0] * BUCKETS
    for entry in entries:
        if entry > now:
            khash = key_hash(entry.key)
            b = khash % BUCKETS
            sums[b] = (sums[b] + _entry_hash(khash, entry.version, float(entry))) & _MASK64
    return sums


def differing(mine: list[int], theirs: list[Any]) -> list[int]:
    if len(theirs) != BUCKETS or any(type(d) is not int for d in theirs):
        raise ProtocolError(f"a digest has {BUCKETS} ints")
    diff = [b for b in range(BUCKETS) if mine[b] != theirs[b]]
    return diff[:MAX_BUCKETS_PER_ROUND]


def listing(entries: Iterable[Entry], buckets: Iterable[int], now: float) -> list[Any]:
    """Flattened [key, hlc, node, ...] of live entries in the given buckets."""
    wanted = set(buckets)
    flat: list[Any] = []
    for entry in entries:
        if entry > now and bucket_of(entry.key) in wanted:
            flat += (entry.key, entry.version >> NODE_BITS, entry.version & NODE_MASK)
    return flat


def to_pull(store: Store, flat: list[Any]) -> list[Key]:
    """Keys of a peer's listing for which the peer holds something newer than we know of.

    A key we evicted on purpose is not pulled back unless the peer's version is
    newer than the one we evicted.
    """
    if len(flat) % 3:
        raise ProtocolError("a listing is [key, hlc, node] triples")
    keys: list[Key] = []
    for i in range(0, len(flat), 3):
        key, hlc, node = flat[i], flat[i + 1], flat[i + 2]
        if type(key) not in (str, bytes, int) or type(hlc) is not int or type(node) is not int:
            raise ProtocolError("malformed listing entry")
        version = (hlc << NODE_BITS) | node
        if version > store.version_of(key) and version > store.evicted.get(key, 0):
            keys.append(key)
    return keys
