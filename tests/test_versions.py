"""The compatibility window (versions.py): a member speaks each peer's protocol, says its release
only to peers whose protocol has it, and refuses a kind it does not know without hanging up.

Real releases side by side are tests/test_upgrade.py's; these check the rules one at a time,
in the core, the wire, the simulator and a real member.
"""

from __future__ import annotations

import logging
import struct
import time
from typing import Any

import msgpack
import pytest

from shoal.actions import Send
from shoal.cache import hosted
from shoal.clock import HybridClock
from shoal.config import Config
from shoal.dispatch import Dispatcher
from shoal.errors import FrameTooLarge, ProtocolError
from shoal.messages import Heartbeat, Stream, Unknown, Version, Writes
from shoal.node import Node
from shoal.versions import FEATURES, UNKNOWN_RELEASE, speaks
from shoal.wire import PROTOCOL_MIN, PROTOCOL_VERSION, SMALL_MAX_FRAME, FrameDecoder, FrameSealer, encode
from tests.sim.network import Sim
from tests.sim.nodes import SimMember, fill, member_of
from tests.support.cluster import wait_until
from tests.support.peer import RawPeer

KEY = b"k" * 32
SECRET = "versions-test-secret-0123456789"
UNKNOWN_KIND = 99  # no release has it


def unknown_frame(payload: bytes = b"\xa3abc") -> bytes:
    """A frame of a kind this release does not know: a two-item message array, code 99."""
    body = b"\x92" + msgpack.packb(UNKNOWN_KIND) + payload
    return struct.pack(">I", len(body)) + body


def core(**config: Any) -> Dispatcher:
    d = Dispatcher(1, "sim:1", config=Config(**config), release="9.9.9")
    _, replica = hosted("c", None, None, serializer=None, clock=HybridClock(1, time.time), tombstone_ttl=60)
    d.host("c", replica, 0.0)
    d.start(0.0, 0.0)
    return d


def member_entry(d: Dispatcher, peer: int) -> dict[str, object]:
    return next(m for m in d.members(0.0) if m["id"] == f"{peer:016x}")


# -- the table --------------------------------------------------------------------------


def test_every_feature_is_one_some_admitted_peer_may_lack_and_is_spoken_from_its_protocol_on() -> None:
    assert all(PROTOCOL_MIN < first <= PROTOCOL_VERSION for first in FEATURES.values())
    assert not speaks(3, "release") and speaks(4, "release")


@pytest.mark.parametrize("protocol_max", [PROTOCOL_MIN - 1, PROTOCOL_VERSION + 1])
def test_protocol_max_outside_the_protocols_this_release_speaks_is_refused(protocol_max: int) -> None:
    with pytest.raises(ValueError, match="protocol_max"):
        Config(protocol_max=protocol_max)


# -- the core -----------------------------------------------------------------------------


def test_a_peer_on_protocol_4_is_told_this_members_release_first_and_one_on_protocol_3_never() -> None:
    d = core()
    new = d.connected(2, "sim:2", 0.0, protocol=4)
    old = d.connected(3, "sim:3", 0.0, protocol=3)
    assert new[0] == Send(2, Version("9.9.9"))
    assert not any(isinstance(a, Send) and isinstance(a.msg, Version) for a in old)
    assert d.speaks(2, "release") and not d.speaks(3, "release")


def test_members_list_each_peers_protocol_and_the_release_it_said() -> None:
    d = core()
    d.connected(2, "sim:2", 0.0, protocol=4)
    d.connected(3, "sim:3", 0.0, protocol=3)
    assert (member_entry(d, 2)["protocol"], member_entry(d, 2)["version"]) == (4, UNKNOWN_RELEASE)
    assert d.message(2, Version("0.2.0"), 0.0, 0.0) == []
    assert (member_entry(d, 2)["protocol"], member_entry(d, 2)["version"]) == (4, "0.2.0")
    assert (member_entry(d, 3)["protocol"], member_entry(d, 3)["version"]) == (3, UNKNOWN_RELEASE)


@pytest.mark.parametrize("release", ["", "x" * 65, "0.2.0\n", "0.2.0\x00", "0.2.0é"])
def test_a_release_that_is_not_1_to_64_printable_ascii_characters_is_a_protocol_error(release: str) -> None:
    d = core()
    d.connected(2, "sim:2", 0.0, protocol=4)
    with pytest.raises(ProtocolError, match="a release is 1 to 64 printable ASCII characters"):
        d.message(2, Version(release), 0.0, 0.0)
    assert member_entry(d, 2)["version"] == UNKNOWN_RELEASE


def test_a_message_of_an_unknown_kind_is_logged_rate_limited_and_dropped_and_the_peer_stays_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="shoal")
    d = core()
    d.connected(2, "sim:2", 0.0, protocol=4)
    for i in range(100):
        assert d.message(2, Unknown(UNKNOWN_KIND), i * 0.01, 0.0) == []
    lines = [r.getMessage() for r in caplog.records if "refused a message of kind 99" in r.getMessage()]
    assert 1 <= len(lines) <= 5
    assert "from 0000000000000002 on protocol 4" in lines[0] and "the connection kept" in lines[0]
    assert d.refusals.count == 100
    assert d.membership.members[2].state == "up"


# -- the wire -------------------------------------------------------------------------------


def test_an_admitted_peers_frame_of_an_unknown_kind_is_skipped_unread_and_the_next_one_decodes() -> None:
    sealer, decoder = FrameSealer(KEY), FrameDecoder()
    decoder.authenticate(KEY)
    big = unknown_frame(msgpack.packb(b"x" * (2 * SMALL_MAX_FRAME)))  # over what an unlisted known kind may use
    stream = b"".join(sealer.seal(f) for f in (unknown_frame(), big, encode(Heartbeat(7))))
    got = [m for i in range(0, len(stream), 1000) for m in decoder.feed(stream[i : i + 1000])]
    assert got == [Unknown(UNKNOWN_KIND), Unknown(UNKNOWN_KIND), Heartbeat(7)]


def test_an_unknown_kind_still_may_not_exceed_the_connections_frame_limit() -> None:
    sealer, decoder = FrameSealer(KEY), FrameDecoder(max_frame_size=SMALL_MAX_FRAME)
    decoder.authenticate(KEY)
    with pytest.raises(FrameTooLarge, match=f"over the {SMALL_MAX_FRAME}-byte limit"):
        decoder.feed(sealer.seal(unknown_frame(msgpack.packb(b"x" * SMALL_MAX_FRAME))))


def test_before_the_handshake_a_frame_of_an_unknown_kind_is_refused() -> None:
    with pytest.raises(ProtocolError, match="unknown message code 99"):
        FrameDecoder().feed(unknown_frame())


# -- the simulator: one member speaks the previous protocol ------------------------------------


def test_members_on_protocols_3_and_4_are_never_sent_what_they_lack_and_replicate_and_boot_with_this_release() -> None:
    sim = Sim(seed=5, reorder=False)
    fast: dict[str, Any] = {"failure_timeout": 2.0, "heartbeat_interval": 0.2, "boot_wait": 1.0, "interval": 1.0}
    seeds = ("sim:1",)
    old = sim.add(SimMember.factory(sim, seeds=seeds, protocol_max=3, **fast))
    sim.run_for(1.5)
    fill(sim, old, 300)
    mid = sim.add(SimMember.factory(sim, seeds=seeds, protocol_max=4, **fast))
    received: dict[int, list[Any]] = {old: [], mid: []}
    for member, seen in received.items():
        spied = member_of(sim, member)

        def spy(peer: int, msg: Any, now: float, seen: list[Any] = seen, on_message: Any = spied.on_message) -> Any:
            seen.append(msg)
            return on_message(peer, msg, now)

        spied.on_message = spy  # type: ignore[method-assign]
    new = [sim.add(SimMember.factory(sim, seeds=seeds, **fast)) for _ in range(2)]
    assert sim.run_until(lambda: all(member_of(sim, i).core.ready for i in [old, mid, *new]), 30)
    for i in [mid, *new]:  # warm from the old donor, or from another member
        assert len(member_of(sim, i).cache) == 300
    fill_new = member_of(sim, new[0])
    sim.act(new[0], lambda n, now: fill_new.write(lambda c: c.set("from-new", 1)))
    assert sim.run_until(lambda: all("from-new" in member_of(sim, i).cache for i in (old, mid, new[1])), 5)
    assert received[old] and not any(isinstance(m, (Version, Writes)) for m in received[old])
    assert any(isinstance(m, Stream) for m in received[mid]) and not any(isinstance(m, Writes) for m in received[mid])
    listed = {m["id"]: m["protocol"] for m in member_of(sim, new[0]).core.members(sim.now)}
    assert listed == {f"{old:016x}": 3, f"{mid:016x}": 4, f"{new[1]:016x}": PROTOCOL_VERSION}
    # (sim members were built without a release string: what they said is the default)


# -- a real member ------------------------------------------------------------------------------


def test_a_real_member_refuses_an_unknown_kind_in_its_log_and_keeps_the_connection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="shoal")
    node = Node(secret=SECRET, heartbeat_interval=0.1)
    node.cache("c")
    node.start()
    try:
        with RawPeer(node.address, SECRET, 0x2D, "127.0.0.1:1") as peer:
            wait_until(lambda: any(m["id"] == f"{0x2D:016x}" for m in node.members()), 10, what="the peer up")
            peer.send(unknown_frame())
            wait_until(
                lambda: any("refused a message of kind 99" in r.getMessage() for r in caplog.records),
                10,
                what="the refusal in the log",
            )
            peer.send(encode(Heartbeat(0)))  # the connection still carries frames, both ways
            peer.sock.settimeout(5)
            assert peer.sock.recv(65536) != b""
            listed = next(m for m in node.members() if m["id"] == f"{0x2D:016x}")
            assert (listed["state"], listed["protocol"]) == ("up", PROTOCOL_VERSION)
        assert not any("closing connection" in r.getMessage() for r in caplog.records)
    finally:
        node.stop()


def test_members_of_this_release_list_each_others_release_and_protocol_and_one_at_protocol_3_says_neither() -> None:
    from shoal import __version__

    options: dict[str, Any] = {"secret": SECRET, "heartbeat_interval": 0.1, "boot_wait": 0.3}
    a = Node(**options)
    a.cache("c")
    a.start()
    b = Node(seeds=[a.address], **options)
    b.cache("c")
    b.start()
    c = Node(seeds=[a.address], protocol_max=3, **options)
    c.cache("c")
    c.start()
    try:
        for n in (a, b, c):
            assert n.wait_ready(10)

        def seen(by: Node) -> dict[str, tuple[object, object]]:
            return {m["address"]: (m["protocol"], m["version"]) for m in by.members() if m["state"] == "up"}

        want_a = {b.address: (PROTOCOL_VERSION, __version__), c.address: (3, UNKNOWN_RELEASE)}
        wait_until(lambda: seen(a) == want_a, 10, what=f"a's view {want_a}")
        wait_until(lambda: seen(c) == {a.address: (3, UNKNOWN_RELEASE), b.address: (3, UNKNOWN_RELEASE)}, 10)
        assert next(m for m in c.members() if m["state"] == "self")["protocol"] == 3
    finally:
        for n in (c, b, a):
            n.stop()
