"""One validation at every entry point: what the API accepts, the wire carries; what a peer sends is bounded.

Each test here stands for an attack or a bug of bad input reproduced at the level of one
member: the local API refuses what peers could not take, and a peer's batch
that breaks a rule is refused whole, before it touches the store or the clock.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from conftest import FakeClock
from hypothesis import example, given, settings
from hypothesis import strategies as st

from shoal import Cache
from shoal.cache import hosted
from shoal.clock import MAX_HLC, NODE_BITS, NODE_MASK, HybridClock, version_ms
from shoal.errors import InvalidEntry
from shoal.messages import Ops
from shoal.replication import digests, op_to_wire, ops_from_wire
from shoal.store import CLEAR, NEVER, WRITE
from shoal.validation import MAX_KEY_SIZE, MAX_TTL, check_key, ttl_seconds
from shoal.wire import FrameDecoder, encode

YEAR = 365.25 * 86400


class Member:
    """A hosted cache and its protocol-side view, as a Node holds them; time from the test's clock."""

    def __init__(self, clock: FakeClock, node_id: int, **kw: Any) -> None:
        skew = kw.get("max_clock_skew", 1.0)
        self.cache, self.replica = hosted(
            "c",
            None,
            None,
            serializer=None,
            clock=HybridClock(node_id, clock, skew),
            tombstone_ttl=600.0,
            timer=clock,
            **kw,
        )
        self.clock = clock

    def apply(self, ops: list[Any]) -> tuple[int, int]:
        return self.replica.apply(list(ops), self.clock())

    def load(self, keys: list[Any], values: list[Any], expires: list[float], versions: list[int], packed: bool) -> int:
        return self.replica.load(keys, values, expires, versions, packed, self.clock())

    def entry(self, key: Any) -> Any:
        return self.cache._store.data[key]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.cache, name)

    def __len__(self) -> int:
        return len(self.cache)

    def __contains__(self, key: object) -> bool:
        return key in self.cache


def pair(fake_clock: FakeClock, **kw: Any) -> tuple[Member, Member, list[Any]]:
    """A writer whose ops are captured and a peer to deliver them to, on one clock."""
    writer, peer = Member(fake_clock, 1, **kw), Member(fake_clock, 2, **kw)
    ops: list[Any] = []
    writer.replica.connect(ops.append)
    return writer, peer, ops


def over_the_wire(ops: list[Any]) -> list[Any]:
    """What a peer's replicator hands its cache: encode, frame, decode, validate the op format."""
    (msg,) = FrameDecoder().feed(encode(Ops("default", [op_to_wire(op) for op in ops])))
    assert isinstance(msg, Ops)
    return ops_from_wire(msg.ops)


def forged(key: Any = "k", value: Any = b"\xa1v", expires: float = NEVER, hlc: int = 1, node: int = 9) -> Any:
    return (WRITE, key, value, expires, (hlc << NODE_BITS) | node)


def hlc_at(seconds: float) -> int:
    return int(seconds * 1000) << 16


# -- keys ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [2**64, -(2**63) - 1, "\ud800", "a\udfffb", "x" * (MAX_KEY_SIZE + 1), b"x" * (MAX_KEY_SIZE + 1)],
    ids=["int 2**64", "int below -2**63", "lone surrogate", "surrogate inside", "long str", "long bytes"],
)
def test_a_key_the_wire_cannot_carry_is_refused_by_set_add_and_delete_with_value_error(
    fake_clock: FakeClock, key: Any
) -> None:
    writer, _, ops = pair(fake_clock)
    for call in (lambda: writer.set(key, 1), lambda: writer.add(key, 1), lambda: writer.delete(key)):
        with pytest.raises(ValueError):
            call()
    assert ops == [] and len(writer) == 0


@pytest.mark.parametrize("key", [1.5, None, True, ("a",), ["a"]])
def test_a_key_of_another_type_is_refused_with_type_error(fake_clock: FakeClock, key: Any) -> None:
    with pytest.raises(TypeError):
        Cache(timer=fake_clock).set(key, 1)


@pytest.mark.parametrize("key", [2**64 - 1, -(2**63), "é" * (MAX_KEY_SIZE // 2), b"x" * MAX_KEY_SIZE, ""])
def test_keys_at_the_edges_of_what_the_wire_carries_are_accepted(key: Any, fake_clock: FakeClock) -> None:
    check_key(key)
    writer, peer, ops = pair(fake_clock)
    writer.set(key, "edge")
    peer.apply(over_the_wire(ops))  # encoded, framed, decoded and validated as a peer's op
    assert peer.get(key) == "edge"


def test_a_bad_key_among_good_ones_no_longer_loses_the_good_ones(fake_clock: FakeClock) -> None:
    """Finding: an int >= 2**64 or a lone surrogate in a batch lost all 50 good keys flushed with it."""
    writer, peer, ops = pair(fake_clock)
    for i in range(50):
        writer.set(f"good{i}", i)
        for bad in (2**64 + i, "\ud800" + str(i)):
            with pytest.raises(ValueError):
                writer.set(bad, i)
    peer.apply(over_the_wire(ops))
    assert sorted(peer.keys()) == sorted(f"good{i}" for i in range(50))


# -- values -------------------------------------------------------------------------


def nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    "value",
    [{(1, 2): 3}, {"a": {(1,): 2}}, [{("x", "y"): 1}], nested(1020)],
    ids=["tuple map key", "nested tuple key", "tuple key in a list", "lists 1,020 deep"],
)
def test_a_value_msgpack_packs_but_a_peer_cannot_decode_is_refused_at_set_with_type_error(
    fake_clock: FakeClock, value: Any
) -> None:
    writer, _, ops = pair(fake_clock)
    with pytest.raises(TypeError, match="could not decode"):
        writer.set("k", value)
    assert ops == [] and "k" not in writer


def test_a_value_over_max_value_size_is_refused_with_a_value_error_naming_the_limit(fake_clock: FakeClock) -> None:
    writer, _, ops = pair(fake_clock, max_value_size=1000)
    writer.set("fits", b"x" * 990)
    with pytest.raises(ValueError, match="max_value_size"):
        writer.set("big", b"x" * 1000)
    with pytest.raises(ValueError, match="max_value_size"):
        writer.add("big", "x" * 5000)
    assert [op[1] for op in ops] == ["fits"] and "big" not in writer


def test_a_value_over_the_default_max_value_size_is_refused(fake_clock: FakeClock) -> None:
    """Finding: a single value over 16 MiB was accepted and lost the small writes flushed with it."""
    with pytest.raises(ValueError, match="max_value_size"):
        Cache(timer=fake_clock).set("k", b"x" * (17 * 1024 * 1024))


def test_a_peer_batch_holding_an_undecodable_value_is_refused_whole(fake_clock: FakeClock) -> None:
    peer = Member(fake_clock, 2)
    batch = [forged("a", b"\xa1a", hlc=hlc_at(fake_clock.now)), forged("b", b"\x81\x92\x01\x02\x03")]
    with pytest.raises(InvalidEntry):
        peer.apply(batch)
    assert len(peer) == 0


# -- ttls and expiries ----------------------------------------------------------------


@pytest.mark.parametrize("ttl", [1e306, math.inf, math.nan, -1, MAX_TTL + 1, 10**400, timedelta(days=20 * 365)])
def test_a_ttl_that_is_not_finite_and_within_ten_years_is_refused_with_value_error(
    fake_clock: FakeClock, ttl: Any
) -> None:
    """Finding: ttl=1e306 made digests() compute int(inf) and killed the timer task."""
    writer, _, ops = pair(fake_clock)
    writer.set("k", 1)
    for call in (lambda: writer.set("x", 1, ttl), lambda: writer.add("x", 1, ttl), lambda: writer.touch("k", ttl)):
        with pytest.raises(ValueError):
            call()
    with pytest.raises(ValueError):
        Cache(ttl=ttl)
    assert len(ops) == 1


@pytest.mark.parametrize("ttl", ["60", b"1", [1], True])
def test_a_ttl_of_another_type_is_refused_with_type_error(ttl: Any) -> None:
    with pytest.raises(TypeError):
        ttl_seconds(ttl)


def test_a_ttl_of_ten_years_is_accepted_and_digested(fake_clock: FakeClock) -> None:
    writer, _, _ = pair(fake_clock)
    writer.set("k", 1, ttl=MAX_TTL)
    fake_clock.advance(5)
    assert sum(digests(writer.replica.entries(), fake_clock.now)) > 0


@pytest.mark.parametrize("expires", [1e306, -math.inf, math.nan, -1.0], ids=["1e306", "-inf", "nan", "negative"])
def test_a_peer_op_with_an_expiry_beyond_ten_years_or_not_a_time_is_refused(
    fake_clock: FakeClock, expires: float
) -> None:
    peer = Member(fake_clock, 2)
    with pytest.raises(InvalidEntry, match="expiry"):
        peer.apply([forged("good", hlc=hlc_at(fake_clock.now)), forged("bad", expires=expires)])
    assert len(peer) == 0
    fake_clock.advance(5)
    digests(peer.replica.entries(), fake_clock.now)  # the finding: int(inf) raised here


def test_a_dump_chunk_with_an_expiry_of_1e306_is_refused_whole(fake_clock: FakeClock) -> None:
    peer = Member(fake_clock, 2)
    with pytest.raises(InvalidEntry):
        peer.load(["a", "b"], ["x", "y"], [NEVER, 1e306], [1 << 64, 2 << 64], packed=False)
    assert len(peer) == 0


# -- versions and the clock -------------------------------------------------------------


@pytest.mark.parametrize("hlc", [2**63 - 1, hlc_at(1_700_000_000 + 10 * YEAR)], ids=["2**63-1", "ten years ahead"])
def test_a_peer_op_with_a_version_beyond_max_clock_skew_is_refused_and_leaves_the_clock_alone(
    fake_clock: FakeClock, hlc: int
) -> None:
    """Finding: one op with version 2**63-1 overflowed the member's next writes; a future one froze repair."""
    writer, peer, ops = pair(fake_clock)
    with pytest.raises(InvalidEntry, match="max_clock_skew"):
        peer.apply([forged("poison", hlc=hlc)])
    assert "poison" not in peer
    peer_ops: list[Any] = []
    peer.replica.connect(peer_ops.append)
    peer.set("after", 2)  # stamped by the peer's own clock, which the poison did not move
    assert version_ms(peer_ops[0][4]) == int(fake_clock.now * 1000)
    writer.apply(over_the_wire(peer_ops))
    assert writer.get("after") == 2
    assert ops == []


def test_a_clear_watermark_from_the_future_wipes_nothing(fake_clock: FakeClock) -> None:
    """Finding: a repair message with clear watermark 2**63-1 wiped 200 entries to 5."""
    peer = Member(fake_clock, 2)
    for i in range(200):
        peer.set(i, i)
    with pytest.raises(InvalidEntry):
        peer.apply([(CLEAR, b"", None, NEVER, ((2**63 - 1) << NODE_BITS) | 7)])
    assert len(peer) == 200


def test_a_version_within_max_clock_skew_is_accepted(fake_clock: FakeClock) -> None:
    peer = Member(fake_clock, 2, max_clock_skew=2.0)
    assert peer.apply([forged("k", hlc=hlc_at(fake_clock.now + 1.9))]) == (1, 0)
    with pytest.raises(InvalidEntry):
        peer.apply([forged("k2", hlc=hlc_at(fake_clock.now + 2.1))])


def test_the_clock_never_observes_further_than_max_skew_ahead(fake_clock: FakeClock) -> None:
    clock = HybridClock(1, fake_clock, max_skew=1.0)
    clock.observe(((2**63 - 1) << NODE_BITS) | 5)
    stamped = clock.stamp()
    assert version_ms(stamped) <= int((fake_clock.now + 1.0) * 1000)
    fake_clock.advance(2)
    assert version_ms(clock.stamp()) == int(fake_clock.now * 1000)


def test_a_dump_chunk_with_a_version_from_the_future_is_refused(fake_clock: FakeClock) -> None:
    peer = Member(fake_clock, 2)
    with pytest.raises(InvalidEntry):
        peer.load(["a"], ["x"], [NEVER], [(2**63 - 1) << NODE_BITS], packed=False)
    with pytest.raises(InvalidEntry):
        peer.load([["list key"]], ["x"], [NEVER], [1 << NODE_BITS], packed=False)
    assert len(peer) == 0


# -- what the API accepts crosses the wire --------------------------------------------------

KEYS = st.one_of(
    st.text(max_size=50),
    st.binary(max_size=50),
    st.integers(min_value=-(2**70), max_value=2**70),
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.text(max_size=30),
    st.binary(max_size=30),
)
MAP_KEYS = st.one_of(SCALARS, st.tuples(st.integers()), st.lists(st.integers(), max_size=2).map(tuple))
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(MAP_KEYS, inner, max_size=4),
    ),
    max_leaves=12,
)
TTLS = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True), st.integers(-(2**70), 2**70))


def plain(value: Any) -> Any:
    """What a peer rebuilds: tuples arrive as lists."""
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


@settings(max_examples=400, deadline=None)
@given(key=KEYS, value=VALUES, ttl=TTLS)
def test_every_write_the_api_accepts_crosses_the_wire_and_gives_the_peer_an_equal_entry(
    key: Any, value: Any, ttl: Any
) -> None:
    clock = FakeClock()
    writer, peer, ops = pair(clock)
    try:
        writer.set(key, value, ttl)
    except (TypeError, ValueError):
        assert ops == []
        return
    assert peer.apply(over_the_wire(ops)) == (1, 0)
    if key in writer:  # not written with ttl 0
        assert peer.get(key, "<absent>") == plain(value)
        mine, theirs = writer.entry(key), peer.entry(key)
        assert (theirs.version, float(theirs)) == (mine.version, float(mine))


CHECKED_AT = 1_700_000_000.0
EXPIRIES = st.one_of(
    # Good ones (half the draws, so a batch of good entries is common) and each edge of a bad one.
    st.sampled_from([math.inf, 0.0, 5, CHECKED_AT + 1.0, CHECKED_AT + 3600.0, CHECKED_AT + MAX_TTL]),
    st.sampled_from([math.nan, -math.inf, -1.0, -1, CHECKED_AT + 2 * MAX_TTL, 1e306, "soon", None]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-5, 2**40),
)


@given(
    st.lists(
        st.tuples(
            st.one_of(st.text(max_size=8), st.binary(max_size=4), st.integers(-(2**70), 2**70)),
            EXPIRIES,
            st.one_of(
                st.builds(
                    lambda h, n: h << NODE_BITS | n, st.integers(0, hlc_at(CHECKED_AT + 3)), st.integers(0, NODE_MASK)
                ),
                st.integers(-5, 2**130),
            ),
        ),
        max_size=6,
    )
)
def test_a_batch_checked_a_column_at_a_time_is_refused_exactly_when_one_entry_alone_would_be(
    rows: list[tuple[Any, Any, int]],
) -> None:
    from shoal.validation import check_expiry, check_peer_entries, check_peer_key, check_version, version_limit

    now = CHECKED_AT
    keys, expires, versions = [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]

    def one_by_one() -> list[float]:
        for key in keys:
            check_peer_key(key)
        for version in versions:
            check_version(version, version_limit(now, 1.0))
        return [check_expiry(e, now) for e in expires]

    assert refused_or(lambda: check_peer_entries(keys, expires, versions, now, 1.0)) == refused_or(one_by_one)


GOOD_EXPIRIES = st.sampled_from([math.inf, 0.0, 5.0, CHECKED_AT + 1.0, CHECKED_AT + 3600.0, CHECKED_AT + MAX_TTL])
BAD_EXPIRIES = st.sampled_from([math.nan, -math.inf, -1.0, -1, CHECKED_AT + 2 * MAX_TTL, 1e306, "soon", None])
AT_LIMIT, BEYOND = "at the limit", "a millisecond beyond it"  # the hlc max_clock_skew allows, and one past


@given(
    st.lists(
        st.tuples(GOOD_EXPIRIES, st.integers(0, hlc_at(CHECKED_AT)) | st.just(AT_LIMIT), st.integers(0, NODE_MASK)),
        max_size=6,
    ),
    st.none()
    | st.tuples(st.just(0), BAD_EXPIRIES)
    | st.tuples(st.just(1), st.sampled_from([BEYOND, MAX_HLC + 1, -1, 2**64, 1.5, True, "hlc"]))
    | st.tuples(st.just(2), st.sampled_from([-1, NODE_MASK + 1, 1.5, "node"])),
    st.integers(0, 5),
    st.floats(0.0, 5.0),
)
@example([(5.0, 0, 1), (5.0, 0, 1)], (0, math.nan), 1, 1.0)  # a NaN past a finite expiry: min and max miss it
@example([(math.inf, 0, 1), (math.inf, 0, 1)], (0, -math.inf), 1, 1.0)  # both infinities: their sum is NaN
@settings(max_examples=300)
def test_a_chunk_checked_on_its_hlc_column_is_refused_exactly_when_one_entry_alone_would_be(
    good: list[tuple[Any, Any, Any]], defect: tuple[int, Any] | None, where: int, skew: float
) -> None:
    """The warm boot's path (``joined_versions``, then ``check_peer_entries`` with its bound)
    against the plain one: each version joined and checked on its own, then the batch. Good
    rows, at most one of them with one bad column, and versions at and past the clock's limit."""
    from shoal.validation import check_expiry, check_peer_entries, check_version, joined_versions, version_limit

    now = CHECKED_AT
    limit_hlc = version_limit(now, skew) >> NODE_BITS
    rows = [list(row) for row in good]
    if defect is not None and rows:
        column, bad = defect
        rows[where % len(rows)][column] = bad
    for row in rows:
        row[1] = {AT_LIMIT: limit_hlc, BEYOND: limit_hlc + 1}.get(row[1], row[1]) if type(row[1]) is str else row[1]
    expires, hlcs, nodes = [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]
    keys = [f"k{i}" for i in range(len(rows))]

    def one_by_one() -> list[float]:
        versions = []
        for hlc, node in zip(hlcs, nodes, strict=True):
            if not (type(hlc) is int and type(node) is int and 0 <= hlc <= MAX_HLC and 0 <= node <= NODE_MASK):
                raise InvalidEntry("a version is two unsigned 64-bit ints")
            versions.append(hlc << NODE_BITS | node)
        for version in versions:
            check_version(version, version_limit(now, skew))
        return [check_expiry(e, now) for e in expires]

    def on_the_hlc_column() -> list[float]:
        versions, newest = joined_versions(hlcs, nodes)
        return check_peer_entries(keys, expires, versions, now, skew, newest)

    assert refused_or(on_the_hlc_column) == refused_or(one_by_one)


def refused_or(check: Callable[[], list[float]]) -> list[float] | None:
    """What a check gives back, or None if it refused (``InvalidEntry``)."""
    try:
        return check()
    except InvalidEntry:
        return None
