"""Warm boot: donor choice, the dump's contents, the merge by version, and real members booting from peers."""

from __future__ import annotations

import dataclasses
import math
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from conftest import FakeClock, hosted_cache
from sim.network import Sim
from sim.nodes import SimMember
from sim.nodes import member_of as node

from shoal.actions import Ready, Send
from shoal.cache import Cache, Replica, hosted
from shoal.clock import NODE_BITS, HybridClock
from shoal.dispatch import Config, Dispatcher
from shoal.errors import ProtocolError
from shoal.messages import DumpChunk, DumpEnd, DumpRequest, SizeReply, SizeRequest
from shoal.serializer import MsgpackSerializer
from shoal.store import DELETE, NEVER, WALK_SLICE, WRITE, Store, Walk
from shoal.validation import MAX_KEY_SIZE
from shoal.warmboot import CHUNK, CHUNK_SLICES, choose_donors, columns_from_wire, dump_columns, dump_stream
from shoal.wire import DEFAULT_MAX_FRAME, FrameDecoder
from tests.support.cluster import Cluster, Member, cluster, wait_until

__all__ = ["cluster"]  # the fixture, imported for the tests below

NOW = 1_700_000_000.0
DETECTORS = {"failure_timeout": 1.0, "heartbeat_interval": 0.2, "boot_wait": 1.0}


def version(hlc: int, node: int = 7) -> int:
    return (hlc << NODE_BITS) | node


# -- choosing donors ----------------------------------------------------------------------


def test_warm_donors_come_before_larger_ones_that_are_still_booting() -> None:
    sizes = {1: (10, True), 2: (5000, False), 3: (20, True)}
    assert choose_donors(sizes) == [3, 1, 2]


def test_among_warm_donors_the_largest_comes_first() -> None:
    sizes = {5: (100, True), 6: (300, True), 7: (200, True)}
    assert choose_donors(sizes) == [6, 7, 5]


def test_donors_of_equal_size_and_warmth_are_ordered_by_id_so_the_choice_is_stable() -> None:
    sizes = {9: (100, True), 4: (100, True), 8: (100, False), 2: (100, False)}
    assert choose_donors(sizes) == [4, 9, 2, 8]


def test_no_sizes_means_no_donors() -> None:
    assert choose_donors({}) == []


# -- what a donor sends ---------------------------------------------------------------------


def store_with(n: int) -> Store:
    store = Store()
    for i in range(n):
        assert store.write(f"k{i}", f"v{i}", NEVER, version(i + 1), NOW)
    return store


def test_a_dump_holds_every_current_entry_with_its_expiry_and_version() -> None:
    store = store_with(3)
    store.write("short", "s", NOW + 5.0, version(100, 9), NOW)

    keys, values, expires, hlcs, nodes = dump_columns(store.entries(), None, NOW)

    assert keys == ["k0", "k1", "k2", "short"]
    assert values == ["v0", "v1", "v2", "s"]
    assert expires == [NEVER, NEVER, NEVER, NOW + 5.0]
    assert [(h << NODE_BITS) | n for h, n in zip(hlcs, nodes, strict=True)] == [
        version(1),
        version(2),
        version(3),
        version(100, 9),
    ]


def test_a_dump_skips_entries_that_expired_since_the_slice_was_taken() -> None:
    store = store_with(2)
    store.write("soon", "x", NOW + 1.0, version(50), NOW)
    taken = store.entries()

    keys, *_ = dump_columns(taken, None, NOW + 1.0)

    assert keys == ["k0", "k1"]


def test_a_dump_sends_its_snapshot_as_taken_and_the_receiver_keeps_what_is_newer() -> None:
    donor = store_with(4)
    taken = donor.entries()  # the donor's cheap snapshot: references to the entries of that moment
    # Replaced and deleted after the snapshot; the receiver already got both by replication.
    donor.write("k1", "newer", NEVER, version(90), NOW)
    donor.delete("k2", version(91), NOW)
    receiver = Store(tombstone_ttl=60.0)
    receiver.write("k1", "newer", NEVER, version(90), NOW)
    receiver.delete("k2", version(91), NOW)

    keys, values, expires, hlcs, nodes = dump_columns(taken, None, NOW)
    assert keys == ["k0", "k1", "k2", "k3"]  # the old data goes as it was; checking each entry costs more
    versions = [(h << NODE_BITS) | n for h, n in zip(hlcs, nodes, strict=True)]
    receiver.load(keys, values, expires, versions, NOW)

    assert {k: e.value for k, e in receiver.data.items()} == {"k0": "v0", "k1": "newer", "k3": "v3"}


def test_a_dump_sends_serialized_values_when_the_cache_has_its_own_serializer() -> None:
    store = store_with(2)
    _, values, *_ = dump_columns(store.entries(), MsgpackSerializer().dumps, NOW)
    assert values == [MsgpackSerializer().dumps("v0"), MsgpackSerializer().dumps("v1")]


def chunk_of(store: Store, inline: bool = True) -> DumpChunk:
    keys, values, expires, hlcs, nodes = dump_columns(store.entries(), None, NOW)
    return DumpChunk("c", 1, keys, values, expires, hlcs, nodes, inline)


def test_a_chunk_read_from_the_wire_gives_back_the_donors_versions() -> None:
    store = store_with(3)
    keys, values, expires, versions, newest = columns_from_wire(chunk_of(store))
    assert versions == [store.data[k].version for k in keys]
    assert max(versions) <= newest and newest >> NODE_BITS == max(versions) >> NODE_BITS
    assert values == ["v0", "v1", "v2"] and expires == [NEVER] * 3


def load_chunk(view: Replica, chunk: DumpChunk, now: float) -> int:
    """What the booter does with a chunk: its columns from the wire, then the load."""
    keys, values, expires, versions, newest = columns_from_wire(chunk)
    return view.load(keys, values, expires, versions, not chunk.inline, now, newest)


@pytest.mark.parametrize(
    "change",
    [
        {"values": ["only one"]},
        {"keys": [("a", "tuple"), "k1", "k2"]},
        {"keys": ["k0", "k1", "x" * (MAX_KEY_SIZE + 1)]},
        {"expires": ["soon", NEVER, NEVER]},
        {"expires": [math.nan, NEVER, NEVER]},
        {"expires": [-math.inf, math.inf, NEVER]},
        {"hlcs": [-1, 1, 2]},
        {"hlcs": [1, 2, (2**63 - 1)]},  # a version from the future
        {"nodes": [1 << 64, 1, 2]},
        {"inline": False},  # then values must be serialized bytes
    ],
)
def test_a_malformed_chunk_is_a_protocol_error_and_nothing_of_it_is_applied(change: dict[str, Any]) -> None:
    chunk = dataclasses.replace(chunk_of(store_with(3)), **change)
    booter, view = member_cache(3)
    with pytest.raises(ProtocolError):
        load_chunk(view, chunk, time.time())
    assert len(booter) == 0


def test_an_older_dump_entry_never_overwrites_a_live_write_that_arrived_first() -> None:
    """The race the merge exists for: old data already on the wire, a live write overtaking it."""
    now = time.time()
    donor, donor_view = member_cache(1)
    donor.set_many({f"k{i}": f"old{i}" for i in range(10)})
    (chunk, _), _end = dump_stream(donor_view, 1, time.time, DEFAULT_MAX_FRAME)  # encoded before the writes below
    writer, writer_view = member_cache(2)  # a third member, which has the donor's data
    writer_view.apply(ops_of(donor_view), now)
    writer.set("k3", "live")
    writer.delete("k5")
    booter, booter_view = member_cache(3)
    booter_view.apply([op for op in ops_of(writer_view) if op[1] in ("k3", "k5")], now)  # the live writes arrive first

    assert isinstance(chunk, DumpChunk)
    applied = load_chunk(booter_view, chunk, now)

    assert applied == 8
    assert booter.get("k3") == "live"
    assert "k5" not in booter
    assert all(booter.get(f"k{i}") == f"old{i}" for i in range(10) if i not in (3, 5))


def member_cache(node_id: int) -> tuple[Cache, Replica]:
    return hosted("c", None, None, serializer=None, clock=HybridClock(node_id, time.time), tombstone_ttl=600.0)


def ops_of(replica: Replica) -> list[Any]:
    """What a cache's writes replicate as: a write per entry, a delete per tombstone."""
    dumps = MsgpackSerializer().dumps
    ops: list[Any] = [(WRITE, e.key, dumps(e.value), float(e), e.version) for e in replica.entries()]
    ops += [(DELETE, key, None, NEVER, v) for key, v in replica.tombstones()]
    return ops


# -- a dump is a walk of the donor's entries ------------------------------------------------------


class CountedWalk:
    """A replica's walk that counts the takes a dump makes between two of its frames."""

    def __init__(self, walk: Walk) -> None:
        self.walk = walk
        self.takes = 0

    @property
    def done(self) -> bool:
        return self.walk.done

    def take(self, n: int) -> list[Any]:
        self.takes += 1
        return self.walk.take(n)


def test_a_dump_through_a_long_run_of_stale_references_ends_and_sends_every_live_entry_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A run of stale references finds nothing for slice after slice: the dump sends a chunk short
    (empty, even) after ``CHUNK_SLICES`` of them rather than look through the whole run at once."""
    clock = FakeClock(NOW)
    cache, replica = hosted_cache(clock)
    cache.set_many({f"n{i}": i for i in range(6 * WALK_SLICE)}, ttl=None)  # enough that nothing compacts:
    cache.set_many({f"t{i}": i for i in range(12 * WALK_SLICE)}, ttl=600)  # one bucket...
    cache.delete_many(f"t{i}" for i in range(10 * WALK_SLICE))  # ...mostly stale references, first in it
    live = sorted(cache.keys())
    walks: list[CountedWalk] = []

    def counted() -> Any:
        walks.append(CountedWalk(Walk(replica._store)))
        return walks[-1]

    monkeypatch.setattr(replica, "walk", counted)
    messages, takes = [], []
    for _, frame in dump_stream(replica, 1, lambda: NOW, DEFAULT_MAX_FRAME):
        (decoded,) = FrameDecoder().feed(frame)
        messages.append(decoded)
        takes.append(walks[0].takes)
        walks[0].takes = 0
        assert len(messages) < 100, "the dump ends"
    *chunks, end = messages
    sent = sorted(k for m in chunks for k in m.keys)  # type: ignore[attr-defined]
    assert sent == live
    assert isinstance(end, DumpEnd) and end.entries == len(live)
    assert max(takes) <= CHUNK_SLICES
    assert any(not m.keys for m in chunks)  # type: ignore[attr-defined]


def booted(sim: Sim, node_id: int) -> bool:
    readiness = [a.ready for _, who, a in sim.effects if who == node_id and isinstance(a, Ready)]
    return bool(readiness) and readiness[-1]


def table(member: SimMember) -> dict[Any, tuple[Any, float, int]]:
    """What a member holds: value, expiry and version of every live entry."""
    now = member.sim.now
    return {k: (e.value, float(e), e.version) for k, e in member.cache._store.data.items() if e > now}


def test_a_member_booting_while_its_donor_writes_overwrites_and_deletes_ends_with_the_donors_entries() -> None:
    """Keys move to buckets the donor's walk has passed (or made since it began) while it streams,
    so the dump misses them: the live stream and the catch-up from the dump's positions bring them.
    No repair round runs (a huge interval), so nothing else could."""
    sim = Sim(seed=21)
    member = SimMember.factory(sim, interval=1e9, failure_timeout=60.0, heartbeat_interval=0.2, boot_wait=1.0)
    a = sim.add(member)
    assert sim.run_until(lambda: booted(sim, a), 10)
    donor = node(sim, a)
    third = 3 * CHUNK
    sim.act(a, lambda n, now: n.write(lambda c: c.set_many({f"n{i}": i for i in range(third)}, ttl=None)))
    sim.act(a, lambda n, now: n.write(lambda c: c.set_many({f"t{i}": i for i in range(third)}, ttl=500)))
    sim.act(a, lambda n, now: n.write(lambda c: c.set_many({f"u{i}": i for i in range(third)}, ttl=1000)))
    sim.run_for(0.5)
    donor.dump_pace = 0.3  # nine chunks and more: about three seconds of streaming
    b = sim.add(SimMember.factory(sim, seeds=["sim:1"], interval=1e9, failure_timeout=60.0, boot_wait=1.0))
    assert sim.run_until(lambda: node(sim, b).core.boot_stats("c").entries > 0, 30), "the stream began"

    rounds = 0
    while node(sim, b).core.boot_stats("c").state == "booting" and rounds < 40:
        lo, hi = 100 * rounds, 100 * (rounds + 1)

        def writes(cache: Cache, lo: int = lo, hi: int = hi) -> None:
            cache.set_many({f"n{i}": -i for i in range(lo, hi)}, ttl=300)  # out of LASTING, walked first
            cache.set_many({f"t{i}": -i for i in range(lo, hi)}, ttl=None)  # into LASTING, walked already
            cache.set_many({f"u{i}": -i for i in range(lo, hi)}, ttl=1000)  # overwritten in place
            cache.delete_many(f"u{i}" for i in range(third - hi, third - lo))
            cache.set_many({f"new{i}": i for i in range(lo, hi)}, ttl=700)

        sim.act(a, lambda n, now, writes=writes: n.write(writes))
        sim.run_for(0.2)
        rounds += 1
    assert rounds >= 5, "the donor wrote while its dump streamed"
    assert sim.run_until(lambda: booted(sim, b), 30)
    stats = node(sim, b).core.boot_stats("c")
    assert stats.state == "warm" and stats.donors_tried == 1
    assert sim.run_until(lambda: table(node(sim, b)) == table(donor), 10)


# -- real members booting (processes on loopback) ----------------------------------------------


def boot_of(member: Member) -> dict[str, Any]:
    return member.cmd("stats")["caches"]["c"]["warm_boot"]  # type: ignore[no-any-return]


def ready_pair(cluster: Cluster, count: int, **options: Any) -> tuple[Member, Member]:
    """Two warm members holding ``count`` entries each, written on the first."""
    a = cluster.start(**DETECTORS, **options)
    b = cluster.start(seeds=[a.address], **DETECTORS, **options)
    assert a.cmd("ready", timeout=10) is True and b.cmd("ready", timeout=10) is True
    wait_until(lambda: b.address in a.peers_up() and a.address in b.peers_up(), 10, what="the pair to form")
    a.cmd("set_range", prefix="k", start=0, count=count)
    wait_until(lambda: b.cmd("len") == count, 15, what="a's writes to reach b")
    return a, b


@pytest.mark.slow
def test_a_member_boots_from_a_donor_holding_100k_entries_with_identical_contents(cluster: Cluster) -> None:
    donor = cluster.start(**DETECTORS)
    donor.cmd("set_range", prefix="key", start=0, count=100_000, value="value-")
    assert donor.cmd("len") == 100_000

    booter = cluster.start(seeds=[donor.address], **DETECTORS)

    assert booter.cmd("ready", timeout=30) is True
    assert booter.cmd("len") == 100_000
    assert booter.cmd("keys_digest") == donor.cmd("keys_digest")
    boot = boot_of(booter)
    assert boot["state"] == "warm" and boot["donor"] == donor.id
    assert boot["entries"] == 100_000 and boot["donors_tried"] == 1
    assert boot["bytes"] > 100_000 * len("key99999value-99999")
    assert 0 < boot["seconds"] < 30
    assert boot_of(donor)["dumps_served"] == 1


@pytest.mark.slow
def test_when_the_donor_is_killed_mid_stream_the_boot_continues_from_the_next_largest(cluster: Cluster) -> None:
    """Both donors hold their dump after two chunks; the one streaming is killed, the other is let go."""
    count = 10 * CHUNK
    a, b = ready_pair(cluster, count)
    for donor in (a, b):
        donor.cmd("hold_dumps", after=2)

    booter = cluster.start(seeds=[a.address, b.address], **DETECTORS)

    first = wait_until(lambda: next((d for d in (a, b) if d.cmd("dumps_held")), None), 15, what="a dump to be held")
    other = b if first is a else a
    progress = wait_until(lambda: (boot := boot_of(booter))["entries"] > 0 and boot, 10, what="entries to arrive")
    assert progress["state"] == "booting" and progress["donor"] == first.id
    assert 0 < progress["entries"] < count  # mid-stream (its catch-up may hold the recent writes already)
    first.kill(signal.SIGKILL)
    other.cmd("release_dumps")

    assert booter.cmd("ready", timeout=20) is True
    assert booter.cmd("len") == count
    assert booter.cmd("keys_digest") == other.cmd("keys_digest")
    boot = boot_of(booter)
    assert boot["state"] == "warm" and boot["donor"] == other.id and boot["donors_tried"] == 2
    assert boot["entries"] >= count  # what the dead donor sent plus the whole second dump
    assert boot_of(other)["dumps_served"] == 1


@pytest.mark.slow
def test_four_members_booting_at_once_cause_one_dump_each_not_one_per_peer(cluster: Cluster) -> None:
    a, b = ready_pair(cluster, 3 * CHUNK)

    with ThreadPoolExecutor(4) as pool:
        booters = list(pool.map(lambda _: cluster.start(seeds=[a.address, b.address], **DETECTORS), range(4)))

    for booter in booters:
        assert booter.cmd("ready", timeout=20) is True
    digest = a.cmd("keys_digest")
    assert all(booter.cmd("keys_digest") == digest for booter in booters)
    boots = [boot_of(m) for m in (a, b, *booters)]
    assert all(boot["state"] == "warm" and boot["donors_tried"] == 1 for boot in boots[2:])  # warm_donors=1
    served = sum(boot["dumps_served"] for boot in boots)
    assert served == sum(boot["donors_tried"] for boot in boots[2:]) == 4


@pytest.mark.slow
def test_live_writes_made_during_a_boot_survive_the_older_dump_data(cluster: Cluster) -> None:
    """The dump's last chunks and its end are kept back at the booter (as if still on the wire)
    while the donor, another member and the booter itself overwrite and delete keys they hold."""
    count = 3 * CHUNK
    a, c = ready_pair(cluster, count, catchup_log_bytes=0)  # only the dump may carry the old data
    for donor in (a, c):
        donor.cmd("hold_dumps", after=1)
    booter = cluster.start(seeds=[a.address, c.address], **DETECTORS)
    donor = wait_until(lambda: next((d for d in (a, c) if d.cmd("dumps_held")), None), 15, what="a dump to be held")
    other = c if donor is a else a
    wait_until(lambda: booter.cmd("len") == CHUNK, 10, what="the first chunk to be applied")
    booter.cmd("hold_chunks")
    donor.cmd("release_dumps")
    wait_until(lambda: booter.cmd("chunks_held") == 3, 10, what="the rest of the dump to be sent with old values")

    # Keys from the first chunk (applied), and from the two still in flight.
    late, later, latest, last = (f"k{i}" for i in (5 * CHUNK // 4, 3 * CHUNK // 2, 9 * CHUNK // 4, 11 * CHUNK // 4))
    donor.cmd("set", key="k5", value="new on the donor")
    donor.cmd("set", key=latest, value="new on the donor")
    other.cmd("set", key=late, value="new on another member")
    other.cmd("delete", key=last)
    booter.cmd("set", key=later, value="new on the booter")
    booter.cmd("set", key="fresh", value="only live")
    expected = {
        "k5": "new on the donor",
        latest: "new on the donor",
        late: "new on another member",
        later: "new on the booter",
        "fresh": "only live",
        last: None,
    }
    for m in (donor, other, booter):
        wait_until(lambda m=m: all(m.cmd("get", key=k) == v for k, v in expected.items()), 10, what="live writes")
    assert boot_of(booter)["state"] == "booting"

    booter.cmd("release_chunks")

    assert booter.cmd("ready", timeout=10) is True
    assert all(booter.cmd("get", key=k) == v for k, v in expected.items())
    assert booter.cmd("len") == count  # one key more (fresh), one fewer (deleted)
    assert boot_of(booter)["state"] == "warm"
    digest = donor.cmd("keys_digest")
    assert booter.cmd("keys_digest") == digest == other.cmd("keys_digest")


@pytest.mark.slow
def test_a_member_with_no_peers_is_ready_at_once(cluster: Cluster) -> None:
    member = cluster.start()
    started = time.monotonic()
    assert member.cmd("ready", timeout=5) is True
    assert time.monotonic() - started < 1.0
    boot = boot_of(member)
    assert boot["state"] == "no peers" and boot["donor"] is None and boot["donors_tried"] == 0


@pytest.mark.slow
def test_a_boot_that_outlasts_warm_timeout_never_reports_ready_and_asks_again_while_reads_are_served(
    cluster: Cluster,
) -> None:
    """A member never reports ready with a boot that failed: it retries until a donor delivers."""
    donor = cluster.start(catchup_log_bytes=0, **DETECTORS)  # only the dump may carry the old data
    donor.cmd("set_range", prefix="k", start=0, count=4 * CHUNK)
    donor.cmd("hold_dumps", after=1)  # held until released: the dump stalls after its first chunk

    booter = cluster.start(seeds=[donor.address], warm_timeout=2.0, **DETECTORS)

    wait_until(lambda: donor.cmd("dumps_held"), 10, what="the dump to stall")
    wait_until(lambda: booter.cmd("len") == CHUNK, 10, what="the first chunk to arrive")
    assert booter.cmd("ready", timeout=0.1) is False
    assert boot_of(booter)["state"] == "booting"
    assert booter.cmd("get", key="k0") == "v0"  # a hit from the part already streamed
    assert booter.cmd("get", key=f"k{4 * CHUNK - 1}") is None  # a miss, not an error or a wait
    booter.cmd("set", key="live", value="written while warming")
    assert booter.cmd("get", key="live") == "written while warming"

    wait_until(lambda: boot_of(booter)["state"].startswith("retrying"), 10, what="the boot to give up on the donor")
    assert booter.cmd("ready", timeout=0.1) is False  # past warm_timeout, and still not ready
    wait_until(lambda: boot_of(booter)["donors_tried"] >= 2, 10, what="the boot to ask the donor again")
    assert booter.cmd("ready", timeout=0.1) is False

    donor.cmd("release_dumps")
    assert booter.cmd("ready", timeout=20) is True
    boot = boot_of(booter)
    assert boot["state"] == "warm" and boot["donor"] == donor.id
    assert booter.cmd("len") == 4 * CHUNK + 1
    assert booter.cmd("get", key="live") == "written while warming"


# -- chunks bounded in bytes ---------------------------------------------------------------------


@pytest.mark.parametrize("value_size", [10, 8 * 1024, 64 * 1024, 900 * 1024])
def test_dump_frames_stay_under_the_frame_limit_whatever_the_value_size(value_size: int) -> None:
    """Finding: values averaging 8 KB made 2,000-entry chunks exceed the 16 MiB frame limit; the dump died."""
    cache, replica = hosted_cache(FakeClock(NOW))
    count = min(3000, (64 * 1024 * 1024) // value_size)
    for i in range(count):
        cache.set(f"k{i}", b"x" * value_size)
    frames = [frame for _, frame in dump_stream(replica, 1, lambda: NOW, DEFAULT_MAX_FRAME)]
    assert all(len(frame) <= DEFAULT_MAX_FRAME + 4 for frame in frames)
    received = [m for frame in frames for m in FrameDecoder().feed(frame)]
    *chunks, end = received
    assert isinstance(end, DumpEnd) and end.entries == count
    assert sorted(k for m in chunks for k in m.keys) == sorted(f"k{i}" for i in range(count))  # type: ignore[attr-defined]


# -- a donor that claims entries and sends none (issue 20, row 15) ------------------------


def test_a_donor_that_claims_entries_and_dumps_none_is_passed_over_and_the_member_stays_unready() -> None:
    """Row 15: SizeReply(10**9) then an empty dump made the member ready, "warm", with 0 entries."""
    liar, honest = 2, 3
    core = Dispatcher(1, "sim:1", seeds=["sim:2"], config=Config(boot_wait=5.0, mesh_wait=0.0))
    cache, replica = member_cache(1)
    core.host("c", replica, 0.0)
    for peer in (liar, honest):  # both known before the boot starts: both are asked their size
        core.connected(peer, f"sim:{peer}", 0.0)
        core.membership.members[peer].caches = frozenset({"c"})
    sent = core.start(0.0, 1000.0) + core.tick(0.1, 1000.0)
    asked = {a.peer for a in sent if isinstance(a, Send) and isinstance(a.msg, SizeRequest)}
    assert asked == {liar, honest}
    sent = core.message(liar, SizeReply("c", 10**9, True), 0.2, 1000.0)
    sent += core.message(honest, SizeReply("c", 3, True), 0.2, 1000.0)
    request = next(a for a in sent if isinstance(a, Send) and isinstance(a.msg, DumpRequest))
    assert request.peer == liar  # the largest claim goes first
    sent = core.message(liar, DumpEnd("c", request.msg.stream, 0), 0.3, 1000.0)
    assert not core.ready and len(cache) == 0
    second = next(a for a in sent if isinstance(a, Send) and isinstance(a.msg, DumpRequest))
    assert second.peer == honest
    donor = store_with(3)
    keys, values, expires, hlcs, nodes = dump_columns(donor.entries(), None, 1000.0)
    chunk = DumpChunk("c", second.msg.stream, keys, values, expires, hlcs, nodes, True)
    core.message(honest, chunk, 0.4, 1000.0)
    core.message(honest, DumpEnd("c", second.msg.stream, 3), 0.5, 1000.0)
    stats = core.boot_stats("c")
    assert stats.state == "warm" and stats.entries == 3 and stats.donors_tried == 2
    assert len(cache) == 3 and core.ready


def test_a_boot_whose_only_donor_claims_entries_and_dumps_none_stays_unready_and_asks_again() -> None:
    core = Dispatcher(1, "sim:1", seeds=["sim:2"], config=Config(boot_wait=0.5, mesh_wait=0.0))
    cache, replica = member_cache(1)
    core.host("c", replica, 0.0)
    core.start(0.0, 1000.0)
    core.connected(2, "sim:2", 0.0)
    core.membership.members[2].caches = frozenset({"c"})
    core.tick(0.1, 1000.0)
    sent = core.message(2, SizeReply("c", 10**9, True), 0.2, 1000.0)
    request = next(a for a in sent if isinstance(a, Send) and isinstance(a.msg, DumpRequest))
    core.message(2, DumpEnd("c", request.msg.stream, 0), 0.3, 1000.0)
    asked_again = []
    now = 0.3
    while now < 5.0 and not asked_again:
        now += 0.1
        asked_again = [a for a in core.tick(now, 1000.0) if isinstance(a, Send) and isinstance(a.msg, SizeRequest)]
        assert not core.ready
    assert asked_again and core.boot_stats("c").state.startswith("retrying") and len(cache) == 0
