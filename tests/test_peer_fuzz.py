"""Hypothesis plays an admitted peer gone bad: whatever it sends, the member only ever refuses it.

A peer that proved the secret is past every handshake check, so what it may send
is the protocol core's to judge. Any sequence of messages, well-formed or not, with
the edge values known attacks use (version 2**63-1, clear watermark
2**64-1, expiry 1e306, keys msgpack cannot carry back), must end in either nothing
or ProtocolError (the driver closes that connection), and after it the member's
timer runs, it heartbeats, it replicates, and nothing it holds is poisoned.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import struct
import types
import typing
from typing import Any

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shoal.actions import Broadcast, Send
from shoal.cache import hosted
from shoal.clock import HybridClock, version_ms
from shoal.dispatch import Config, Dispatcher
from shoal.errors import ProtocolError
from shoal.messages import (
    MESSAGE_TYPES,
    Digest,
    DumpChunk,
    DumpEnd,
    Heartbeat,
    Listing,
    Message,
    Ops,
    Pull,
    Resume,
    SizeReply,
    to_array,
)
from shoal.positions import LIVE
from shoal.replication import BUCKETS
from shoal.validation import MAX_TTL
from shoal.wire import DEFAULT_MAX_FRAME, FrameDecoder

WALL = 1_700_000_000.0
PEER = 2
HONEST = 3

INTS = st.sampled_from([0, 1, -1, 2**63 - 1, 2**63, 2**64 - 1, int(WALL * 1000) << 16]) | st.integers(
    -(2**63), 2**64 - 1
)
FLOATS = st.sampled_from([1e306, math.inf, -math.inf, math.nan, -1.0, 0.0, WALL + 60, WALL + 11 * 365 * 86400])
KEYS = st.text(max_size=8) | st.binary(max_size=8) | INTS | st.lists(INTS, max_size=2)  # what msgpack can carry
VALUES = st.sampled_from([msgpack.packb("v"), msgpack.packb({"a": [1]}), b"\x81\x92\x01\x02\x03", b"\xc1", b""])
OP = st.tuples(st.integers(0, 3), KEYS, VALUES | st.none(), FLOATS | st.none(), INTS, INTS).map(list)
WATERMARK = st.tuples(INTS, INTS).map(list) | st.lists(INTS, max_size=3)
CACHE = st.sampled_from(["c", "other"])
PLAIN = st.none() | st.booleans() | INTS | FLOATS | st.text(max_size=5) | st.binary(max_size=5)

CRAFTED: st.SearchStrategy[Message] = st.one_of(
    st.builds(Ops, CACHE, st.lists(OP, max_size=4)),
    st.builds(
        Digest,
        CACHE,
        INTS,
        st.lists(INTS, min_size=BUCKETS, max_size=BUCKETS) | st.lists(INTS, max_size=3),
        WATERMARK,
        INTS,
    ),
    st.builds(
        Listing,
        CACHE,
        INTS,
        st.lists(st.integers(0, BUCKETS), max_size=3),
        st.lists(KEYS | INTS, max_size=9),
        st.booleans(),
        WATERMARK,
        INTS,
    ),
    st.builds(Pull, CACHE, st.lists(KEYS, max_size=4)),
    st.builds(SizeReply, CACHE, INTS, st.booleans()),
    st.builds(
        DumpChunk,
        CACHE,
        INTS,
        st.lists(KEYS, max_size=3),
        st.lists(VALUES | PLAIN, max_size=3),
        st.lists(FLOATS, max_size=3),
        st.lists(INTS, max_size=3),
        st.lists(INTS, max_size=3),
        st.booleans(),
    ),
    st.builds(DumpEnd, CACHE, INTS, INTS),
    st.builds(Heartbeat, INTS),
)


_BY_TYPE: dict[Any, st.SearchStrategy[Any]] = {
    int: INTS,
    float: FLOATS,
    str: st.text(max_size=8),
    bytes: st.binary(max_size=8),
    bool: st.booleans(),
    list[Any]: st.lists(PLAIN | st.lists(PLAIN, max_size=6), max_size=6),
    dict[Any, Any]: st.dictionaries(st.text(max_size=3), PLAIN, max_size=2),
}


def _field(hint: Any) -> st.SearchStrategy[Any]:
    if isinstance(hint, types.UnionType):  # X | None
        return st.one_of([st.none() if o is type(None) else _BY_TYPE[o] for o in typing.get_args(hint)])
    return _BY_TYPE[hint]


def _messages_of(cls: type[Message]) -> st.SearchStrategy[Message]:
    hints = typing.get_type_hints(cls)
    return st.builds(cls, *[_field(hints[f.name]) for f in dataclasses.fields(cls)])


ANY_MESSAGE = st.one_of(
    [_messages_of(cls) for _, cls in sorted(MESSAGE_TYPES.items()) if cls.__module__ == "shoal.messages"]
)


def booted_member() -> tuple[Dispatcher, Any]:
    clock = lambda: WALL  # noqa: E731
    core = Dispatcher(1, "sim:1", config=Config(boot_wait=0.0, heartbeat_interval=0.5, anti_entropy_interval=1.0))
    cache, replica = hosted(
        "c", None, None, serializer=None, clock=HybridClock(1, clock), tombstone_ttl=60, timer=clock
    )
    core.host("c", replica, 0.0)
    core.start(0.0, WALL)
    core.tick(0.0, WALL)  # no peers yet: the boot ends at once and the cache takes part in repair
    core.connected(PEER, "sim:2", 0.0)
    core.membership.members[PEER].caches = frozenset({"c"})
    for i in range(50):
        cache.set(f"k{i}", i)
    core.flush(lambda peer: 0, WALL)
    return core, cache


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(CRAFTED | ANY_MESSAGE, min_size=1, max_size=12))
def test_any_messages_from_an_admitted_peer_are_refused_or_harmless_and_the_member_goes_on(msgs: list[Message]) -> None:
    core, cache = booted_member()
    now = 0.0
    for msg in msgs:
        now += 0.05
        with contextlib.suppress(ProtocolError):  # the driver closes that connection, the reason logged
            core.message(PEER, msg, now, WALL)
    for _ in range(40):  # two seconds of timer after the storm: it must never raise
        now += 0.05
        core.tick(now, WALL)
    core.connected(HONEST, "sim:3", now)  # whatever the bad peer did, an honest one is served
    core.membership.members[HONEST].caches = frozenset({"c"})
    core.message(HONEST, Resume("c", [1, LIVE]), now, WALL)  # it asks for our writes from now on
    beats = []
    for _ in range(20):
        now += 0.05
        beats += core.tick(now, WALL)
    assert any(isinstance(a, Send) and a.peer == HONEST and isinstance(a.msg, Heartbeat) for a in beats)
    cache.set("after", "the storm")
    sent = core.flush(lambda peer: 0, WALL)
    assert any(isinstance(a, Broadcast) and HONEST in a.peers for a in sent)
    for entry in cache._store.entries():  # nothing poisoned got in
        assert entry == math.inf or float(entry) <= WALL + MAX_TTL + 2
        assert version_ms(entry.version) <= int((WALL + cache.max_clock_skew) * 1000)
    assert version_ms(cache._clock.stamp()) <= int((WALL + cache.max_clock_skew) * 1000)


# -- every kind, with oversized and repeated fields, through the wire (issue 20) -----------------

BIG_TEXT = st.sampled_from(["n" * 256, "é" * 200, "x" * 5000, "k" * (64 * 1024)])
BIG_BYTES = st.sampled_from([b"x" * 65, b"x" * 5000, b"\x90" * (64 * 1024)])
OVERSIZED: dict[Any, st.SearchStrategy[Any]] = {
    int: INTS,
    float: FLOATS,
    str: st.text(max_size=8) | st.just("c") | BIG_TEXT,
    bytes: st.binary(max_size=8) | BIG_BYTES,
    bool: st.booleans(),
    list[Any]: (
        st.lists(PLAIN | st.lists(PLAIN, max_size=6), max_size=6)
        | st.tuples(PLAIN | BIG_TEXT | OP, st.integers(0, 20_000)).map(lambda t: [t[0]] * t[1])  # one item, repeated
        | st.integers(0, 70_000).map(lambda n: [[]] * n)  # empty arrays, one per byte
        | st.lists(BIG_TEXT | BIG_BYTES, max_size=3)
    ),
    dict[Any, Any]: st.dictionaries(st.text(max_size=3), PLAIN, max_size=2)
    | st.integers(0, 5000).map(lambda n: {i: [] for i in range(n)}),
}


def _oversized(hint: Any) -> st.SearchStrategy[Any]:
    if isinstance(hint, types.UnionType):
        return st.one_of([st.none() if o is type(None) else OVERSIZED[o] for o in typing.get_args(hint)])
    return OVERSIZED[hint]


EVERY_KIND_OVERSIZED = st.one_of(
    [
        st.builds(cls, *[_oversized(typing.get_type_hints(cls)[f.name]) for f in dataclasses.fields(cls)])
        for _, cls in sorted(MESSAGE_TYPES.items())
        if cls.__module__ == "shoal.messages"
    ]
)
RSS_BOUND_MB = 64
"""What a storm of these frames may add to the member's resident memory (each frame is at most 16 MiB)."""


def _framed(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def _rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(EVERY_KIND_OVERSIZED, min_size=1, max_size=6))
def test_frames_of_every_kind_with_oversized_or_repeated_fields_are_refused_or_harmless_within_a_memory_bound(
    msgs: list[Message],
) -> None:
    core, cache = booted_member()
    core.connected(HONEST, "sim:3", 0.0)  # an honest peer, connected all along
    core.membership.members[HONEST].caches = frozenset({"c"})
    core.message(HONEST, Resume("c", [1, LIVE]), 0.0, WALL)  # it asks for our writes from now on
    # As a peer would send them (no sender check), packed before measuring: the test's own
    # bytes are not the member's memory.
    frames = [_framed(msgpack.packb(to_array(msg), use_bin_type=True)) for msg in msgs]
    rss = _rss_mb()
    now = 0.0
    for frame in frames:
        now += 0.05
        try:
            for decoded in FrameDecoder(DEFAULT_MAX_FRAME).feed(frame):
                core.message(PEER, decoded, now, WALL)
        except ProtocolError:  # the driver closes that connection, the reason logged
            core.disconnected(PEER, now)
            core.connected(PEER, "sim:2", now)
            core.membership.members[PEER].caches = frozenset({"c"})
        assert _rss_mb() - rss < RSS_BOUND_MB
    beats = []
    for _ in range(20):  # the timer runs and heartbeats keep flowing
        now += 0.05
        beats += core.tick(now, WALL)
    assert any(isinstance(a, Send) and a.peer == HONEST and isinstance(a.msg, Heartbeat) for a in beats)
    cache.set("after", "the storm")
    assert any(isinstance(a, Broadcast) and HONEST in a.peers for a in core.flush(lambda peer: 0, WALL))
    assert _rss_mb() - rss < RSS_BOUND_MB
