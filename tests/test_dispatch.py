"""The dispatcher: whole members (membership, replication, warm boot) in the simulated network.

These run the same ``Dispatcher`` a ``Node`` runs, through ``tests/sim``'s
driver, so what they show (boots, readiness, early writes, back-pressure) is
the composition a real member carries out, not its parts one by one.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from sim.network import Sim
from sim.nodes import SimMember, batch_keys, fill
from sim.nodes import member_of as node

from shoal import dispatch
from shoal.actions import BootStreaming, Broadcast, Ready, Send, StreamDump
from shoal.cache import hosted
from shoal.clock import HybridClock
from shoal.digest import FOLD_SLICE, digests, horizon_of
from shoal.dispatch import DUMPS_AT_ONCE, DUMPS_QUEUED, Config, Dispatcher
from shoal.errors import ProtocolError
from shoal.messages import CatchUp, CaughtUp, DumpEnd, DumpRequest, Ops, Resume, SizeReply, SizeRequest, Stream, Writes
from shoal.warmboot import CHUNK

IN_FLIGHT = 0.05  # the simulated network's worst delay (0.02 s) and the flush delay, with room
FAST: dict[str, Any] = {"failure_timeout": 2.0, "heartbeat_interval": 0.2, "boot_wait": 1.0}


def member(sim: Sim, seeds: tuple[str, ...] = ("sim:1",), **config: Any) -> int:
    return sim.add(SimMember.factory(sim, seeds=seeds, **{"interval": 1.0, **FAST, **config}))


def became_ready(sim: Sim, node_id: int) -> bool:
    return any(who == node_id and isinstance(a, Ready) and a.ready for _, who, a in sim.effects)


def test_a_member_that_joins_boots_from_its_peer_and_then_reports_ready() -> None:
    sim = Sim(seed=3)
    a = member(sim)
    assert sim.run_until(lambda: became_ready(sim, a), 5)  # alone: ready once boot_wait finds nobody
    fill(sim, a, 5 * CHUNK)
    sim.run_for(0.5)
    b = member(sim)
    assert sim.run_until(lambda: became_ready(sim, b), 30)
    stats = node(sim, b).core.boot_stats("c")
    assert stats.state == "warm" and stats.donor == f"{a:016x}" and stats.entries == 5 * CHUNK
    assert dict(node(sim, b).cache.items()) == dict(node(sim, a).cache.items())


def test_when_the_donor_crashes_mid_stream_the_boot_goes_on_from_the_next_largest() -> None:
    sim = Sim(seed=5)
    a = member(sim)
    c = member(sim)
    assert sim.run_until(lambda: became_ready(sim, a) and became_ready(sim, c), 10)
    assert sim.run_until(lambda: node(sim, a).core.membership.group("c") == [c], 10)
    fill(sim, a, 10 * CHUNK)  # replicated to c: two donors of the same size, a first (smaller id)
    assert sim.run_until(lambda: len(node(sim, c).cache) == 10 * CHUNK, 10)
    b = member(sim)
    assert sim.run_until(lambda: node(sim, b).core.boot_stats("c").entries > 0, 30), "the stream never began"
    sim.crash(a)
    assert node(sim, b).core.boot_stats("c").entries < 10 * CHUNK  # mid-stream
    assert not became_ready(sim, b)
    assert sim.run_until(lambda: became_ready(sim, b), 30)
    stats = node(sim, b).core.boot_stats("c")
    assert stats.state == "warm" and stats.donors_tried == 2 and stats.donor == f"{c:016x}"
    assert dict(node(sim, b).cache.items()) == dict(node(sim, c).cache.items())


def test_a_member_is_not_ready_until_every_cache_it_hosts_has_booted() -> None:
    sim = Sim(seed=7)
    a = member(sim)
    fill(sim, a, 100)
    assert sim.run_until(lambda: became_ready(sim, a), 5)
    b = member(sim)
    sim.run_until(lambda: bool(node(sim, b).core.membership.up_peers()), 5)
    assert not node(sim, b).core.ready  # connected, still booting
    assert sim.run_until(lambda: node(sim, b).core.ready, 30)
    assert len(node(sim, b).cache) == 100


def core_with_peers(peers: list[int], **config: Any) -> tuple[Dispatcher, Any, list[int]]:
    core = Dispatcher(1, "sim:1", config=Config(**config))
    cache, replica = hosted("c", None, None, serializer=None, clock=HybridClock(1, time.time), tombstone_ttl=60)
    core.host("c", replica, 0.0)
    wakes: list[int] = []
    core.wake = lambda: wakes.append(1)
    return core, cache, wakes


def join(core: Dispatcher, peer: int, at: int = 0) -> list[Any]:
    """``peer`` connects and asks for our stream of "c" from position ``at``."""
    core.connected(peer, f"sim:{peer}", 0.0)
    core.membership.members[peer].caches = frozenset({"c"})
    return core.message(peer, Resume("c", [1, at]), 0.0, 0.0)


def test_writes_made_before_the_member_runs_are_sent_once_it_does() -> None:
    core, cache, wakes = core_with_peers([])
    cache.set("early", 1)
    assert wakes == [] and len(core.outbox["c"]) == 1  # nobody to wake yet
    core.start(0.0, 0.0)
    assert wakes == [1]
    join(core, 2)
    (sent,) = core.flush(lambda peer: 0, 0.0)
    assert isinstance(sent, Broadcast) and sent.peers == (2,) and isinstance(sent.msg, Writes)
    assert batch_keys(sent.msg) == ["early"] and sent.msg.start == 0


def test_many_writes_wake_the_driver_once_per_flush() -> None:
    core, cache, wakes = core_with_peers([])
    core.start(0.0, 0.0)
    for i in range(100):
        cache.set(i, i)
    assert wakes == [1]
    core.flush(lambda peer: 0, 0.0)
    cache.set("after", 1)
    assert wakes == [1, 1]


def test_a_cache_whose_writes_fill_every_flush_does_not_hold_back_another_caches(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(dispatch, "FLUSH_MAX_OPS", 10)
    core, busy, _ = core_with_peers([])
    quiet, replica = hosted("q", None, None, serializer=None, clock=HybridClock(1, time.time), tombstone_ttl=60)
    core.host("q", replica, 0.0)
    core.start(0.0, 0.0)
    join(core, 2)
    core.membership.members[2].caches = frozenset({"c", "q"})
    core.message(2, Resume("q", [1, 0]), 0.0, 0.0)
    for i in range(100):
        busy.set(i, i)
    quiet.set("the quiet one", 1)
    flushes = [core.flush(lambda peer: 0, 0.0) for _ in range(2)]
    sent = [[(a.msg.cache, key) for a in actions for key in batch_keys(a.msg)] for actions in flushes]
    assert all(len(ops) <= 10 for ops in sent)
    assert ("q", "the quiet one") in sent[0] + sent[1]
    assert core.figures("c")["queue_depth"] == 100 - sum(cache == "c" for ops in sent for cache, _ in ops)
    flushes.append(core.flush(lambda peer: 0, 0.0, everything=True))
    batches = [(a.msg.start, batch_keys(a.msg)) for actions in flushes for a in actions if a.msg.cache == "c"]
    assert [key for _, keys in batches for key in keys] == list(range(100))  # in order, each once
    assert all(start == sum(len(keys) for _, keys in batches[:i]) for i, (start, _) in enumerate(batches))


def streamed(actions: list[Any], peer: int) -> list[Any]:
    """Keys sent to ``peer`` in batches of writes (broadcast or sent)."""
    keys: list[Any] = []
    for action in actions:
        to = action.peers if isinstance(action, Broadcast) else (getattr(action, "peer", None),)
        if peer in to and isinstance(action.msg, (Stream, Writes)):
            keys += batch_keys(action.msg)
    return keys


def test_a_peer_over_its_backlog_gets_no_writes_now_and_each_of_them_once_it_drains() -> None:
    core, cache, _ = core_with_peers([], max_peer_backlog=1000)
    core.start(0.0, 0.0)
    join(core, 2)
    join(core, 3)
    backlog = {3: 5000}
    core.backlog = lambda peer: backlog.get(peer, 0)
    cache.set("k", "v")
    (sent,) = core.flush(None, 0.0)
    assert isinstance(sent, Broadcast) and sent.peers == (2,)
    assert core.tick(1.0, 1.0) == [] or streamed(core.tick(1.0, 1.0), 3) == []  # still over: nothing
    cache.set("k2", "v")
    core.flush(None, 0.0)
    del backlog[3]
    assert streamed(core.drained(3, 1.0, 1.0), 3) == ["k", "k2"]  # from the log, in order, once
    cache.set("k3", "v")
    (live,) = core.flush(None, 0.0)
    assert live.peers == (2, 3)  # live again


def test_one_flush_queues_no_more_than_the_backlog_allows_even_in_many_batches() -> None:
    core, cache, _ = core_with_peers([], max_peer_backlog=100_000)
    core.start(0.0, 0.0)
    join(core, 2)
    for i in range(5000):  # five batches of 1000 ops, 100 bytes a value: ~0.1 MB each for a 0.1 MB budget
        cache.set(i, "x" * 100)
    sent = core.flush(lambda peer: 0, 0.0)
    assert [a.peers for a in sent if isinstance(a, Broadcast)] == [(2,)]
    assert core.replicator.figures_of("c")["ops_deferred"] == 4000


def holds(sim: Sim, node_id: int, keys: list[str]) -> int:
    cache = node(sim, node_id).cache
    return sum(1 for key in keys if key in cache)


@pytest.mark.parametrize("graceful", [True, False], ids=["graceful", "crash"])
@pytest.mark.parametrize("seed", [11, 12, 13, 14])
def test_through_a_rolling_restart_every_member_holds_every_acknowledged_key_when_one_becomes_ready(
    seed: int, graceful: bool
) -> None:
    """What an orchestrator does: stop a member while a survivor keeps taking writes, start its
    successor, and stop the next one the moment the successor reports ready.

    Replication is asynchronous, so a write made a few milliseconds before the ready is still
    on its way; every write older than the network's worst delay (and the flush delay) counts.
    """
    sim = Sim(seed=seed, reorder=False)  # one connection keeps its order (TCP), as catch-up relies on
    ids = [member(sim, seeds=("sim:1", "sim:2", "sim:3")) for _ in range(3)]  # as DNS would list them
    assert sim.run_until(lambda: all(node(sim, i).core.ready for i in ids), 20)
    written: list[tuple[float, str]] = []
    active = [0]  # the step whose writer is writing: it stops before it is itself the next victim

    def write_on(node_id: int, step: int, count: int) -> None:
        """One write every 5 ms on ``node_id`` while it runs: acknowledged once set returns."""
        if count >= 200 or node_id not in sim.nodes or active[0] != step:
            return
        key = f"s{step}-k{count}"
        sim.act(node_id, lambda n, now: n.write(lambda c: c.set(key, key)))
        written.append((sim.now, key))
        sim.call_later(0.005, lambda: write_on(node_id, step, count + 1))

    for step in range(3):
        active[0] = step
        sim.run_for(IN_FLIGHT)  # the last writer's writes have reached the others (it may be the victim)
        victim = ids[step]
        address = sim.address_of[victim]
        write_on(ids[(step + 1) % 3], step, 0)
        sim.run_for(0.1)
        if graceful:
            sim.stop(victim)
        else:
            sim.crash(victim)
        sim.run_for(0.2)
        successor = sim.boot(address)
        ids[step] = successor
        assert sim.run_until(lambda s=successor: node(sim, s).core.ready, 30), f"step {step}: never ready"
        acked = [key for when, key in written if when <= sim.now - IN_FLIGHT]
        missing = {i: len(acked) - holds(sim, i, acked) for i in ids}
        assert missing == {i: 0 for i in ids}, f"step {step}: keys missing at ready"


def test_a_member_cut_off_gets_the_writes_it_missed_from_the_log_when_it_reconnects() -> None:
    """No anti-entropy round can run here (its interval is longer than the test): the catch-up
    on reconnecting carries the writes made on the other side of the partition."""
    sim = Sim(seed=21)
    a, b = (member(sim, seeds=("sim:1", "sim:2"), interval=1000.0) for _ in range(2))
    assert sim.run_until(lambda: node(sim, a).core.ready and node(sim, b).core.ready, 10)
    sim.partition([a], [b])
    sim.act(a, lambda n, now: n.write(lambda c: c.set_many({f"a{i}": i for i in range(300)})))
    sim.act(b, lambda n, now: n.write(lambda c: c.set_many({f"b{i}": i for i in range(300)})))
    assert sim.run_until(lambda: not node(sim, a).core.membership.up_peers(), 10)  # the cut is noticed
    sim.heal()
    assert sim.run_until(lambda: len(node(sim, a).cache) == len(node(sim, b).cache) == 600, 10)
    assert node(sim, a).core.replicator.figures_of("c")["repair_rounds"] == 0


def test_when_the_log_no_longer_reaches_back_a_digest_comparison_repairs_instead() -> None:
    sim = Sim(seed=22)
    a, b = (member(sim, seeds=("sim:1", "sim:2"), interval=1000.0) for _ in range(2))
    for member_id in (a, b):
        node(sim, member_id).core.replicator.log_bytes = 2_000  # a dozen writes
    assert sim.run_until(lambda: node(sim, a).core.ready and node(sim, b).core.ready, 10)
    sim.partition([a], [b])
    sim.act(a, lambda n, now: n.write(lambda c: c.set_many({f"a{i}": i for i in range(300)})))
    assert sim.run_until(lambda: not node(sim, a).core.membership.up_peers(), 10)
    sim.run_for(2.0)  # the writes settle: a digest round takes them in
    sim.heal()
    assert sim.run_until(lambda: len(node(sim, b).cache) == 300, 20)
    assert node(sim, b).core.replicator.figures_of("c")["repair_rounds"] >= 1


def test_a_repair_round_records_when_it_opened_and_with_which_peer_for_the_status_page() -> None:
    sim = Sim(seed=23)
    a, b = (member(sim, seeds=("sim:1", "sim:2"), interval=1.0) for _ in range(2))
    assert sim.run_until(lambda: node(sim, a).core.ready and node(sim, b).core.ready, 10)
    figures = node(sim, a).core.figures("c")
    assert figures["last_repair_at"] is None and figures["last_repair_peer"] is None  # no round yet
    before = sim.now
    assert sim.run_until(lambda: node(sim, a).core.figures("c")["repair_rounds"] >= 1, 10)
    figures = node(sim, a).core.figures("c")
    assert before < figures["last_repair_at"] <= sim.now  # type: ignore[operator]
    assert figures["last_repair_peer"] == f"{b:016x}"


def dump_requests(core: Dispatcher, peer: int, count: int, first: int = 0) -> list[Any]:
    actions: list[Any] = []
    for stream in range(first, first + count):
        actions += core.message(peer, DumpRequest("c", stream), 0.0, 0.0)
    return [a for a in actions if isinstance(a, StreamDump)]


def test_a_peer_gets_two_dumps_at_a_time_and_the_next_when_one_is_done() -> None:
    core, _, _ = core_with_peers([])
    core.start(0.0, 0.0)
    join(core, 2)
    started = dump_requests(core, 2, 5)
    assert [a.stream for a in started] == [0, 1]
    assert [a.stream for a in core.dump_done(2, 0.0)] == [2]
    assert [a.stream for a in core.dump_done(2, 0.0)] == [3]
    assert [a.stream for a in core.dump_done(2, 0.0)] == [4]
    assert core.dump_done(2, 0.0) == [] and core.dump_done(2, 0.0) == []
    assert [a.stream for a in dump_requests(core, 2, 3, first=5)] == [5, 6]  # both slots free again


def test_a_peer_that_asks_for_more_dumps_than_it_could_take_is_refused() -> None:
    core, _, _ = core_with_peers([])
    core.start(0.0, 0.0)
    join(core, 2)
    dump_requests(core, 2, DUMPS_AT_ONCE + DUMPS_QUEUED)
    with pytest.raises(ProtocolError, match="dumps requested at once"):
        dump_requests(core, 2, 1)


def test_the_collector_pauses_only_while_a_dump_streams_in_not_while_a_failed_boot_retries() -> None:
    sim = Sim(seed=11)
    a = member(sim)
    assert sim.run_until(lambda: became_ready(sim, a), 5)
    fill(sim, a, 4 * CHUNK)
    b = member(sim)
    assert sim.run_until(lambda: node(sim, b).core.boot_stats("c").entries > 0, 30)
    sim.crash(a)  # the only donor, mid-stream: the boot fails, and asks the cluster again later
    assert sim.run_until(lambda: node(sim, b).core.boot_stats("c").state.startswith("retrying"), 30)
    streaming = [act.active for _, who, act in sim.effects if who == b and isinstance(act, BootStreaming)]
    assert streaming == [True, False], "paused while the dump streamed in, resumed when it broke off"
    assert node(sim, b).core.booting and not node(sim, b).core.ready  # retrying, with the collector running


def test_a_message_about_a_cache_the_member_does_not_host_gets_no_work_only_the_fixed_answer_a_request_needs() -> None:
    """A name a member does not host is refused before any work (no op is validated or logged)."""
    core = Dispatcher(1, "sim:1", config=Config(boot_wait=0.0))
    core.start(0.0, 1000.0)
    core.connected(2, "sim:2", 0.0)
    bad_ops = [["not an op"]] * 1000  # a hosted cache's batch like this would be refused
    assert core.message(2, Ops("elsewhere", bad_ops), 0.1, 1000.0) == []
    assert core.replicator.logs == {} and core.replicator.figures == {}
    answers = [
        core.message(2, SizeRequest("elsewhere"), 0.2, 1000.0),
        core.message(2, DumpRequest("elsewhere", 7), 0.2, 1000.0),
        core.message(2, CatchUp("elsewhere", 0, []), 0.2, 1000.0),
    ]
    assert [[(a.peer, a.msg) for a in actions if isinstance(a, Send)] for actions in answers] == [
        [(2, SizeReply("elsewhere", 0, False))],
        [(2, DumpEnd("elsewhere", 7, 0))],
        [(2, CaughtUp("elsewhere", True))],
    ]


def test_every_kind_of_message_a_member_may_send_counts_as_proof_of_life() -> None:
    import contextlib
    import dataclasses

    from shoal.errors import ProtocolError
    from shoal.messages import MESSAGE_TYPES

    blank = {int: 0, float: 0.0, str: "c", bytes: b"", bool: False}
    kinds = [k for code, k in sorted(MESSAGE_TYPES.items()) if code >= 10 and not 60 <= code < 70]
    assert len(kinds) > 15  # membership, replication, warm boot, leases
    for kind in kinds:
        core = Dispatcher(1, "me:1", config=Config())
        core.connected(7, "p:7", 0.0)
        values = [blank.get(f.type, []) for f in dataclasses.fields(kind)]  # type: ignore[call-overload]
        with contextlib.suppress(ProtocolError, TypeError, ValueError, KeyError, IndexError):
            core.message(7, kind(*values), 3.0, 3.0)  # a blank it refuses is heard all the same
        member = core.membership.members[7]
        assert member.last_heard == 3.0, kind.__name__


def test_a_member_warm_booted_from_a_dump_is_sent_none_of_the_writes_the_dump_held() -> None:
    """The dump carries the donor's positions, so the boot's catch-up starts where the dump ended
    (it once restarted from 0: every write the dump held came again as catch-up)."""
    sim = Sim(seed=13)
    a = member(sim)
    assert sim.run_until(lambda: became_ready(sim, a), 5)
    fill(sim, a, 3 * CHUNK)
    sim.run_for(0.5)
    b = member(sim)
    assert sim.run_until(lambda: became_ready(sim, b), 30)
    sim.run_for(1.0)
    assert len(node(sim, b).cache) == 3 * CHUNK
    assert node(sim, a).core.replicator.figures_of("c")["catchup_ops_sent"] == 0


def test_a_member_whose_kept_digests_have_a_backlog_to_fold_ticks_fast_until_it_is_folded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("shoal.cache.KEEP_FROM", 0)  # keep digests from the first entry, as a large cache does
    sim = Sim(seed=5)
    a = member(sim)
    assert sim.run_until(lambda: became_ready(sim, a), 5)
    core = node(sim, a).core
    assert not core.busy
    fill(sim, a, 4 * FOLD_SLICE)  # more than a tick folds: the driver must tick again soon, not in 100 ms
    assert sim.run_until(lambda: core.busy, 5)
    assert sim.run_until(lambda: not core.busy, 5)
    replica, wall = core.replicas["c"], sim.now
    horizon = horizon_of(int((wall - 1.0) * 1000))
    assert replica.digests(wall, horizon) == digests(replica.entries(), wall, horizon)  # folded, and right


def test_a_member_receiving_a_dump_folds_its_digests_at_the_tick_pace_and_fast_only_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Folding every few ms while a dump streams in took a quarter of the receiver's loop from
    the dump: a boot of 5M took 1.4x the time per entry of 1M."""
    monkeypatch.setattr("shoal.cache.KEEP_FROM", 0)
    sim = Sim(seed=7)
    a = member(sim)
    assert sim.run_until(lambda: became_ready(sim, a), 5)
    fill(sim, a, 6 * CHUNK)
    node(sim, a).dump_pace = 0.4  # about 2.4 s of streaming: the first chunks ripen meanwhile
    b = member(sim)
    core = node(sim, b).core
    behind_while_receiving = 0

    def watch() -> bool:
        nonlocal behind_while_receiving
        if core.booter.receiving and core.replicas["c"].behind():
            behind_while_receiving += 1
            assert not core.busy, "folding at the fast pace while a dump streams in"
        return became_ready(sim, b)

    assert sim.run_until(watch, 30)
    assert behind_while_receiving  # the case arose: ripe records left while the dump streamed
    assert sim.run_until(lambda: not core.busy, 10)  # and the tick folds them once it is in
    replica, wall = core.replicas["c"], sim.now
    horizon = horizon_of(int((wall - 1.0) * 1000))
    assert replica.digests(wall, horizon) == digests(replica.entries(), wall, horizon)


def test_a_member_streaming_a_dump_folds_its_digests_at_the_tick_pace_and_fast_only_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A donor fresh from a fill of 1M folded its digests every few ms while it streamed: a fifth
    of its loop, and the booting member waited on it for 13% of its boot."""
    monkeypatch.setattr("shoal.cache.KEEP_FROM", 0)
    sim = Sim(seed=7)
    a = member(sim)
    assert sim.run_until(lambda: became_ready(sim, a), 5)
    core = node(sim, a).core
    node(sim, a).dump_pace = 0.4  # about 2.4 s of streaming: the fill's records ripen meanwhile
    fill(sim, a, 6 * CHUNK)
    b = member(sim)
    behind_while_streaming = 0

    def watch() -> bool:
        nonlocal behind_while_streaming
        if core._dumps_out and core.replicas["c"].behind():
            behind_while_streaming += 1
            assert not core.busy, "folding at the fast pace while a dump streams out"
        return became_ready(sim, b)

    assert sim.run_until(watch, 30)
    assert behind_while_streaming  # the case arose: ripe records left while the dump streamed out
    assert sim.run_until(lambda: not core.busy, 10)  # and the tick folds them once it is out
    replica, wall = core.replicas["c"], sim.now
    horizon = horizon_of(int((wall - 1.0) * 1000))
    assert replica.digests(wall, horizon) == digests(replica.entries(), wall, horizon)
