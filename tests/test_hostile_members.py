"""What an authenticated peer can do to real member processes (issue 20, the rows the probe ran with processes).

Each test plays the probe's hostile or misconfigured peer against member processes on
127.0.0.1 (tests/support/member.py), with ``RawPeer`` / ``FakeMember`` speaking the
protocol after a real handshake, and checks what the member does: which connection it
keeps, what it dials, what it reports, how ready it says it is, what it costs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import msgpack
import pytest
from sim.nodes import batch_keys

from shoal.handshake import Handshake
from shoal.leases import owner_of
from shoal.membership import MAX_CACHE_NAME, MAX_CACHES, MAX_MEMBERS, MAX_RUMORS_PER_SENDER, MAX_TARGETS
from shoal.messages import (
    DumpEnd,
    DumpRequest,
    Gossip,
    LeaseDone,
    LeaseRequest,
    LeaseWait,
    Message,
    SizeReply,
    SizeRequest,
    Welcome,
    to_array,
)
from shoal.transport import parse_address
from shoal.wire import FrameDecoder, encode
from tests.support.cluster import Cluster, Member, cluster, free_port, wait_until
from tests.support.peer import FakeMember, RawPeer
from tests.test_singleflight_cluster import loader_calls
from tests.test_singleflight_cluster import start as start_fetch_members

__all__ = ["cluster"]  # the fixture

pytestmark = pytest.mark.slow

SECRET = "shoal-test-secret"  # tests/support/member.py's default
FETCH_SECRET = "the single-flight tests' cluster secret"  # tests/support/fetch_member.py's
FAST = {"failure_timeout": 1.0, "heartbeat_interval": 0.1, "boot_wait": 0.3}


def logs(member: Member) -> str:
    """Everything the member logged, once it has stopped."""
    member.stop()
    if member.log_to is not None:
        return member.log_to.read_text()
    assert member.proc.stderr is not None
    return member.proc.stderr.read()


def written_keys(received: list[Message]) -> list[object]:
    """The keys of the writes (Stream, Writes or Ops) among the messages a fake member received."""
    return [key for msg in received for key in batch_keys(msg)]


def stay_up_together(a: Member, b: Member, seconds: float) -> None:
    """a and b see each other up for ``seconds`` without a break."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert b.address in a.peers_up() and a.address in b.peers_up()
        time.sleep(0.05)


# -- row 8: a peer that claims a live member's id and address -------------------------------


def pair_whose_dialer_has_the_larger_id(cluster: Cluster) -> tuple[Member, Member]:
    """(dialer, dialed): the dialer's id is the larger one.

    The hardest case for the id: both ends keep the connection the smaller id initiated
    when two exist, so an impostor claiming the dialed member's (smaller) id at the dialer
    is the one a bare tie-break would keep.
    """
    for _ in range(20):  # ids are random: one in the lower half, then a dialer above it
        dialed = cluster.start(**FAST)
        if int(dialed.id, 16) < 1 << 63:
            break
        dialed.stop()
    for _ in range(20):
        dialer = cluster.start(seeds=[dialed.address], **FAST)
        if int(dialer.id, 16) > int(dialed.id, 16):
            break
        dialer.stop()
    assert int(dialer.id, 16) > int(dialed.id, 16), "twenty members in a row drew a smaller id"
    wait_until(lambda: dialed.address in dialer.peers_up() and dialer.address in dialed.peers_up(), 10, what="pair")
    return dialer, dialed


def test_a_peer_claiming_a_live_members_id_and_address_is_refused_and_the_member_keeps_its_connection_and_traffic(
    cluster: Cluster,
) -> None:
    """Row 8. Before: the real member was dropped and its redials refused (128 in 20 s); the writes for it went
    to the impostor."""
    a, b = pair_whose_dialer_has_the_larger_id(cluster)
    stay_up_together(a, b, 1.5 * FAST["failure_timeout"])  # b's connection is live, not one just made
    impostor = FakeMember(a.address, SECRET, int(b.id, 16), b.address)
    try:
        wait_until(impostor.closed.is_set, 10, what="a to close the impostor's connection")
        a.cmd("set", key="after", value="for the real member")
        wait_until(lambda: b.cmd("get", key="after") == "for the real member", 10, what="the write to reach b")
        stay_up_together(a, b, 1.0)
        assert "after" not in written_keys(impostor.received)
    finally:
        impostor.close()
    b_logs, a_logs = logs(b), logs(a)  # b first: a's goodbye is no loss
    refusals = [line for line in a_logs.splitlines() if "node id already held by a live connection" in line]
    assert refusals and all(" ERROR " in line for line in refusals), a_logs[-3000:]
    downs = b_logs.count(f"member {a.id} down")
    assert downs == 0, f"b lost its connection to a {downs} times"


# -- row 12: members given one advertise address -----------------------------------------


def test_members_given_the_same_advertise_address_say_so_in_an_error_log_report_no_restarts_and_none_is_ready(
    cluster: Cluster,
) -> None:
    """Row 12. Before: 516 "restarted with a new id" downs in 20 s, the mesh never formed, all three ready."""
    ports = [free_port() for _ in range(3)]
    shared = f"127.0.0.1:{free_port()}"  # one address for all three (copied from one member's settings, say)
    addresses = [f"127.0.0.1:{port}" for port in ports]
    members = [
        cluster.start(listen=address, seeds=[a for a in addresses if a != address], advertise=shared, **FAST)
        for address in addresses
    ]
    wait_until(lambda: all(m.cmd("tables")["up"] == 2 for m in members), 10, what="each to connect to the others")
    for member in members:
        assert member.cmd("ready", timeout=1.0) is False
    assert all(m.cmd("tables")["up"] == 2 for m in members)  # still connected: nobody took another for a restart
    for member in members:
        text = logs(member)
        conflicts = [line for line in text.splitlines() if "advertises this member's own address" in line]
        assert conflicts and all(" ERROR " in line for line in conflicts), text[-3000:]
        restarts = text.count("restarted with a new id")
        assert restarts == 0, f"{restarts} members taken for restarts"


# -- row 11: thousands of connections, each with a fresh node id ------------------------------


def cpu_seconds(member: Member) -> float:
    """CPU time (user and system) the member's process has used so far."""
    with open(f"/proc/{member.proc.pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def dead_address(i: int) -> str:
    """An address of the loopback network where nothing listens (a connection there is refused)."""
    return f"127.1.{i // 250}.{i % 250 + 1}:9"


def connect_once(address: str, node_id: int, listen: str) -> None:
    RawPeer(address, SECRET, node_id, listen).close()


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="reads a process's CPU time from /proc")
def test_three_thousand_connections_with_fresh_ids_leave_bounded_tables_an_idle_member_and_heartbeats_flowing(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Row 11. Before: 19 CPU-s, then 3,001 members and 2,001 dead dial targets kept and redialed for 600 s:
    0.62 CPU-s/s while idle."""
    options = {"failure_timeout": 2.0, "heartbeat_interval": 0.2, "boot_wait": 0.3}
    a = cluster.start(log_to=tmp_path / "a.log", **options)  # two lines per connection: more than a pipe holds
    honest = cluster.start(seeds=[a.address], **options)
    wait_until(lambda: honest.address in a.peers_up() and a.address in honest.peers_up(), 10, what="the pair")
    most = {"members": 0, "targets": 0}
    with ThreadPoolExecutor(8) as pool:
        for start in range(0, 3000, 250):
            ids = range(start, start + 250)
            for future in [pool.submit(connect_once, a.address, 1 << 40 | i, dead_address(i)) for i in ids]:
                future.result()
            tables = a.cmd("tables")
            tables["targets"] -= tables["up"]  # those of members connected now (the honest one among them)
            most = {name: max(most[name], tables[name]) for name in most}
    assert most["members"] <= MAX_MEMBERS and most["targets"] <= MAX_TARGETS, most
    # What the fake ids left behind is forgotten once their addresses fail a few dials.
    wait_until(lambda: a.cmd("tables")["targets"] <= 1, 20, what="the dead addresses to be forgotten")
    used = cpu_seconds(a)
    started = time.monotonic()
    dials = a.cmd("tables")["dials"]
    time.sleep(2.0)  # the window the idle cost is measured over
    idle = (cpu_seconds(a) - used) / (time.monotonic() - started)
    assert a.cmd("tables")["dials"] == dials, "dead addresses still redialed"
    assert idle < 0.2, f"{idle:.2f} CPU-s/s while idle"
    assert honest.address in a.peers_up() and a.address in honest.peers_up()
    honest_logs = logs(honest)
    assert f"member {a.id} down" not in honest_logs, honest_logs[-2000:]


# -- row 15: a donor that claims entries and sends none ----------------------------------------


def lying_donor(msg: Message) -> list[Message]:
    """Claims a billion entries, then streams none."""
    if isinstance(msg, SizeRequest):
        return [SizeReply(msg.cache, 10**9, True)]
    if isinstance(msg, DumpRequest):
        return [DumpEnd(msg.cache, msg.stream, 0)]
    return []


def boot_state(member: Member) -> str:
    return str(member.cmd("stats")["caches"]["c"]["warm_boot"]["state"])


def test_a_booting_member_whose_first_donor_claims_entries_and_dumps_none_stays_unready_and_boots_from_the_next(
    cluster: Cluster,
) -> None:
    """Row 15. Before: ready, "warm", with 0 of 20,000 entries (repaired ~5 s later)."""
    donor_address = f"127.0.0.1:{free_port()}"  # the honest donor comes later, at this address
    booting = cluster.start(seeds=[donor_address], boot_wait=1.0, failure_timeout=2.0, heartbeat_interval=0.2)
    liar = FakeMember(booting.address, SECRET, 0x5EED, dead_address(0), answer=lying_donor)
    try:
        wait_until(lambda: liar.kinds["DumpRequest"] >= 1, 10, what="the booting member to ask the liar for a dump")
        wait_until(lambda: boot_state(booting) != "booting", 10, what="the boot to get past the liar's empty dump")
        assert boot_state(booting).startswith("retrying")
        assert booting.cmd("ready", timeout=0.5) is False and booting.cmd("len") == 0
        donor = cluster.start(listen=donor_address, failure_timeout=2.0, heartbeat_interval=0.2)
        for start in range(0, 20_000, 5_000):
            donor.cmd("set_range", prefix="k", start=start, count=5_000)
        assert booting.cmd("ready", timeout=20) is True
        assert booting.cmd("len") == 20_000
        assert boot_state(booting) == "warm"
    finally:
        liar.close()


# -- rows 5 and 6: gossip about members that do not exist, and caches nobody could host ---------------


def fake_entries(ids: range, first_address: int, caches: list[str] = ()) -> list[list[object]]:  # type: ignore[assignment]
    """Gossip entries for members that do not exist, at dead addresses from ``first_address`` on (2,000 of them)."""
    return [[node_id, dead_address((first_address + i) % 2000), "up", list(caches), 0] for i, node_id in enumerate(ids)]


def test_gossip_naming_members_that_do_not_exist_holds_no_readiness_and_fills_no_table_past_its_bound(
    cluster: Cluster,
) -> None:
    """Row 5. Before: never ready (readiness waited on rumors: 5 new ids every 4 s); 2,000 fake addresses
    dialed; 300k fake ids x 3 kept 902k table entries 600 s."""
    a = cluster.start(boot_wait=0.3, failure_timeout=2.0, heartbeat_interval=0.2)
    liar = FakeMember(a.address, SECRET, 0xFA4E, dead_address(2999))
    try:
        for batch in range(20):  # 20,000 ids that do not exist, at 2,000 addresses where nothing listens
            liar.send(encode(Gossip(fake_entries(range((1 << 41) + batch * 1000, (1 << 41) + (batch + 1) * 1000), 0))))
        sizes = []
        ready: list[bool] = []
        fresh = 1 << 42
        deadline = time.monotonic() + 15.0  # a rumor holds readiness mesh_wait (5 s) at most
        while time.monotonic() < deadline and ready[-10:] != [True] * 10:
            liar.send(encode(Gossip(fake_entries(range(fresh, fresh + 5), fresh))))  # and 5 new ones, on and on
            fresh += 5
            ready.append(a.cmd("ready", timeout=0.2))
            sizes.append(a.cmd("tables"))
        assert ready[-10:] == [True] * 10, f"ready in {sum(ready)} of {len(ready)} looks"
        assert max(s["rumors"] for s in sizes) <= MAX_RUMORS_PER_SENDER, max(s["rumors"] for s in sizes)
        assert max(s["targets"] - s["up"] for s in sizes) <= MAX_TARGETS, max(s["targets"] for s in sizes)
        assert max(s["members"] for s in sizes) == 1  # only the liar: nobody it named ever answered
    finally:
        liar.close()


def unchecked_frame(msg: Message) -> bytes:
    """``msg`` as a frame, whatever its size (``encode`` refuses one over its kind's limit)."""
    body = msgpack.packb(to_array(msg), use_bin_type=True)
    return struct.pack(">I", len(body)) + body


def test_fake_members_claiming_caches_nobody_could_host_leave_our_gossip_sendable_and_a_restarted_member_rejoins(
    cluster: Cluster,
) -> None:
    """Row 6. Before: two fakes claiming 9 caches with 1 MiB names each put our gossip over the frame limit
    (FrameTooLarge every tick); an honest member that restarted was admitted and closed ~8 times a second."""
    a = cluster.start(**FAST)
    b = cluster.start(seeds=[a.address], **FAST)
    wait_until(lambda: b.address in a.peers_up(), 10, what="the pair")
    huge = [f"{i}" + "x" * (1 << 20) for i in range(9)]
    at_the_limits = [f"{i:03d}" + "n" * (MAX_CACHE_NAME - 3) for i in range(MAX_CACHES)]
    fakes = []
    try:
        for i in range(82):  # 2 with huge names, 80 with as many and as long names as are taken
            fake = FakeMember(a.address, SECRET, 0xC0DE00 + i, dead_address(i))
            fakes.append(fake)
            claim = huge if i < 2 else at_the_limits
            with contextlib.suppress(OSError):  # refused at its first bytes
                fake.send(unchecked_frame(Gossip([[0xC0DE00 + i, dead_address(i), "up", claim, 0]])))
        wait_until(lambda: a.cmd("tables")["up"] >= 81, 10, what="the fakes to be up")
        b.kill()
        again = cluster.start(seeds=[a.address], **FAST)
        wait_until(lambda: again.address in a.peers_up() and a.address in again.peers_up(), 10, what="the rejoin")
        stay_up_together(a, again, 2.0)
        a.cmd("set", key="after", value="reaches the member that restarted")
        wait_until(lambda: again.cmd("get", key="after") == "reaches the member that restarted", 10)
    finally:
        for fake in fakes:
            fake.close()
    text = logs(again)
    assert "over the" not in text, text[-2000:]  # none of our gossip was over the Gossip frame limit


# -- row 9: lease answers from a peer that does not own the key, or owns it only in our view ------------


def test_lease_answers_forged_by_a_peer_owning_the_key_or_not_neither_fail_a_fetch_nor_hold_it_past_one_lease(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Row 9. Before: a forged LeaseDone made fetch raise LoaderError without the loader ever running; a
    LeaseWait with a 1 h ttl blocked fetch 18 s.

    The forger connects to a alone and says it hosts the cache, so by a's view it owns a
    third of the keys (b never meets it). For those, it answers every ask with an hour's
    wait or with an error; for a key b owns and loads, it sends a both, unasked.
    """
    calls = tmp_path / "calls"
    a, b = start_fetch_members(cluster, calls, size=2, load_ms=2000)
    forger_id = 0xF0F0
    members = [int(a.id, 16), int(b.id, 16), forger_id]
    keys = [f"user:{i}" for i in range(1000)]
    held_key = next(k for k in keys if owner_of(k, members) == int(b.id, 16) == int(b.cmd("owner", key=k), 16))
    wait_key, error_key = [k for k in keys if owner_of(k, members) == forger_id][:2]

    def answer(msg: Message) -> list[Message]:
        if not isinstance(msg, LeaseRequest):
            return []
        if msg.keys == [wait_key]:
            return [LeaseWait("u", msg.keys, 3_600_000, int(b.id, 16))]
        return [LeaseDone("u", msg.keys, "LoaderError", "forged by the key's owner in a's view")]

    forger = FakeMember(a.address, FETCH_SECRET, forger_id, dead_address(0), answer=answer)
    try:
        forger.send(encode(Gossip([[forger_id, dead_address(0), "up", ["u"], 0]])))
        wait_until(lambda: a.cmd("owner", key=wait_key) == f"{forger_id:016x}", 10, what="the forger to own keys")
        b.cmd("burst", id="holder", keys=[held_key], callers=1)  # b loads held_key for 2 s: it holds the lease
        wait_until(lambda: loader_calls(calls)[held_key] == 1, 10, what="b's loader to start")
        started = time.monotonic()
        a.cmd("burst", id="waiter", keys=[held_key, wait_key, error_key], callers=3)
        unasked = encode(LeaseDone("u", [held_key], "LoaderError", "forged by a member that does not own the key"))
        unasked += encode(LeaseWait("u", [held_key], 3_600_000, forger_id))
        while time.monotonic() - started < 1.5:  # a waits on b's load meanwhile
            forger.send(unasked)
            time.sleep(0.02)
        results = a.cmd("results", id="waiter", timeout=60)
        waited = time.monotonic() - started
    finally:
        forger.close()
    assert results == {key: {f"value:value of {key}": 3} for key in (held_key, wait_key, error_key)}
    # One lease (a's load_timeout, 10 s) waited out, then the next in rank and a 2 s load; not the STUCK bound.
    assert waited < 16.0, f"a's fetch waited {waited:.1f} s"
    assert loader_calls(calls) == {held_key: 1, wait_key: 1, error_key: 1}


# -- found on the way: a member whose loop ran late refused joiners for clock skew --------------------


def next_message(sock: socket.socket, decoder: FrameDecoder) -> Message:
    while not (msgs := decoder.feed(b"", limit=1)):
        data = sock.recv(65536)
        assert data, "the member closed the connection"
        decoder.feed(data, limit=0)
    return msgs[0]


def test_a_joiner_whose_proof_a_stalled_member_reads_late_is_admitted_not_refused_for_clock_skew(
    cluster: Cluster,
) -> None:
    """Before: during the row 11 flood a member refused a joiner, "peer's wall clock is -1.359 s from ours, more
    than max_clock_skew (1 s)": the joiner's Proof had waited in the busy member's socket."""
    a = cluster.start(**FAST)  # max_clock_skew: 1 s
    handshake = Handshake.initiator(SECRET.encode(), 0x5107, dead_address(0), wall=time.time)
    decoder = FrameDecoder(1 << 20)
    with socket.create_connection(parse_address(a.address), timeout=10) as sock:
        sock.sendall(b"".join(encode(msg) for msg in handshake.start()))
        [proof] = handshake.receive(next_message(sock, decoder))
        a.kill(signal.SIGSTOP)
        try:
            sock.sendall(encode(proof))
            time.sleep(2.0)  # the member's loop stands still: the Proof waits in its socket
        finally:
            a.kill(signal.SIGCONT)
        answer = next_message(sock, decoder)
        assert isinstance(answer, Welcome), answer
        assert handshake.receive(answer) == [] and handshake.done
