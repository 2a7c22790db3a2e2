#!/usr/bin/env python3
"""Repair after a partition: seconds to converge after the heal, and bytes sent, shoal beside a Redis replica.

    python3 run.py bench converge [--quick] [--entries N[,N...]] [--cap SECONDS] [--partition SECONDS]

Needs root, ``ip``, ``iptables`` and ``redis-server``: every process runs in its own
network namespace on a private bridge (tests/support/netns.py), and the cut is
real: iptables DROP in and out of one namespace, what a pulled cable looks like.

shoal   three members (``Node`` defaults, as deployed), each in its namespace,
        seeded with the other two. Member A is filled with N entries (keys ``k0``..,
        values ``v0``..) and every member holds them all; ``QUIET`` seconds later
        (a running cluster, not one cut mid-fill) C is cut off for
        ``--partition`` seconds (10); while apart, A overwrites 10% of the keys
        (``k0``.. with ``a`` values) and C another 10% (from ``k{N/2}``, ``c``
        values): 10% of the keys written on each side. At the heal the clock
        starts; ``converge s`` is when every member holds every one of those
        writes (polled every 0.5 s), checked once more at the end by a digest
        of each member's whole cache.
redis   a master and a replica (``--replicaof``), each in its namespace, with
        ``repl-timeout 5`` (shoal's failure timeout: the replica notices the cut
        and drops the link, so the heal is a reconnection) and a 256 MB backlog
        (so the reconnection is a partial resync, PSYNC, and not a full one).
        Master filled with N keys; the replica cut off as C was; the master
        overwrites 10% of the keys (a replica takes no writes: this is the
        volume one side missed in the shoal run). ``converge s`` is from the heal
        until the replica's replication offset reaches the master's at the heal;
        the table says whether the master counted a partial resync.

``bytes sent`` is what left every member's (or both Redis servers') network
interface from the heal to convergence, counted by an iptables rule in each
namespace: data, heartbeats and protocol overhead alike. A run that has not
converged after ``--cap`` seconds (300) shows ``> cap``. ``--quick``: 20,000
entries and a 60 s cap. The issue's bar: <= 3 s at 200k, <= 5 s at 1M.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any

from harness import (
    ROOT,
    Cleanup,
    RedisServer,
    as_child,
    child,
    format_table,
    redis_binary,
    save,
    serve,
    wait_for,
)

sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from tests.faults.harness import SharedMember  # noqa: E402
from tests.support.netns import Host, Netns, unavailable  # noqa: E402

PORT = 7600
REDIS_PORT = 6379
SECRET = "converge-bench-secret-0123456789"
POLL = 0.2
CHUNK = 25_000


@dataclass
class Row:
    system: str
    entries: int
    written: str
    seconds: float | None  # None: not converged within the cap
    bytes_sent: int
    note: str
    reconnected: float | None = None  # heal to the cut-off member connected again (None: not seen)


QUIET = 3.0  # seconds between the end of the fill and the cut


def fmt_seconds(seconds: float | None, cap: float) -> str:
    return f"> {cap:.0f}" if seconds is None else f"{seconds:.1f}"


def fmt_bytes(n: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def step(what: str) -> None:
    """Progress on stderr: a long run shows where it is."""
    print(f"    {time.strftime('%H:%M:%S')} {what}", file=sys.stderr, flush=True)


# -- byte counters: one iptables rule per namespace --------------------------------------


def count_bytes(host: Host) -> None:
    """A rule with no target in front of everything: it only counts what leaves eth0."""
    host.run("iptables", "-w", "-I", "OUTPUT", "1", "-o", "eth0")


def zero_bytes(hosts: list[Host]) -> None:
    for host in hosts:
        host.run("iptables", "-w", "-Z", "OUTPUT")


def bytes_out(hosts: list[Host]) -> int:
    total = 0
    for host in hosts:
        for line in host.run("iptables", "-w", "-L", "OUTPUT", "1", "-v", "-x", "-n").splitlines():
            fields = line.split()
            if fields and fields[0].isdigit():
                total += int(fields[1])
    return total


# -- shoal ---------------------------------------------------------------------------------


def member_up_peers(member: SharedMember) -> int:
    return sum(1 for m in member.cmd("members") if m["state"] == "up")


def fill(member: SharedMember, prefix: str, start: int, count: int, value: str) -> None:
    for first in range(start, start + count, 50_000):
        member.cmd("set_range", prefix=prefix, start=first, count=min(50_000, start + count - first), value=value)


def lacking(member: SharedMember, start: int, count: int, value: str, stop_at_first: bool = True) -> int:
    """Keys ``k{start}``.. that do not hold the value written while cut (0 or 1 with ``stop_at_first``)."""
    missing = 0
    for first in range(start, start + count, CHUNK):
        n = min(CHUNK, start + count - first)
        values = member.cmd("values", prefix="k", start=first, count=n)
        missing += sum(v != f"{value}{first + i}" for i, v in enumerate(values))
        if missing and stop_at_first:
            return missing
    return missing


def run_shoal(net: Netns, n: int, partition: float, cap: float) -> Row:
    hosts = [net.add() for _ in range(3)]
    members: list[SharedMember] = []
    with Cleanup() as run:
        run.callback(lambda: [net.remove(host) for host in hosts])
        for host in hosts:
            count_bytes(host)
            seeds = [h.address(PORT) for h in hosts if h is not host]
            # SharedMember reads the member's log all along: a full pipe would stall it.
            member = SharedMember(listen=host.address(PORT), seeds=seeds, secret=SECRET, prefix=host.prefix)
            members.append(member)
            run.callback(stop_member, member)
        for member in members:
            assert member.cmd("ready", timeout=60) is True
        wait_for(lambda: all(member_up_peers(m) == 2 for m in members), 30, "a full mesh")
        a, _, c = members
        step(f"shoal: filling with {n:,} entries")
        fill(a, "k", 0, n, "v")
        wait_for(lambda: all(m.cmd("len") == n for m in members), 300, f"{n:,} entries on every member", 0.5)
        # A running cluster, not one cut in the middle of its fill: the fill is older than the
        # catch-up margin (max_clock_skew + 1 s), as the writes before a real partition would be.
        time.sleep(QUIET)
        tenth = n // 10
        step(f"shoal: C cut off for {partition:.0f} s")
        net.partition(hosts[2])
        cut = time.monotonic()
        fill(a, "k", 0, tenth, "a")
        fill(c, "k", n // 2, tenth, "c")
        assert c.cmd("get", key="k0") == "v0" and a.cmd("get", key=f"k{n // 2}") == f"v{n // 2}", "not cut off"
        time.sleep(max(0.0, partition - (time.monotonic() - cut)))  # the length of the cut is the experiment
        zero_bytes(hosts)
        net.heal(hosts[2])
        healed = time.monotonic()
        step("shoal: healed")
        pending = {(i, r) for i in range(3) for r in ("a", "c")}
        ranges = {"a": (0, "a"), "c": (n // 2, "c")}
        seconds: float | None = None
        reconnected: float | None = None
        next_check = healed
        while time.monotonic() - healed < cap:
            if reconnected is None and member_up_peers(c) == 2:
                reconnected = time.monotonic() - healed
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + POLL
                for i, r in sorted(pending):
                    start, value = ranges[r]
                    if not lacking(members[i], start, tenth, value):
                        pending.discard((i, r))
                if not pending:
                    seconds = time.monotonic() - healed
                    break
            time.sleep(0.05)
        sent = bytes_out(hosts)
        catchup = repaired = 0
        for name, member in zip("ABC", members, strict=True):
            figures = member.cmd("stats")["caches"]["c"]
            catchup += figures["catchup_ops_sent"]
            repaired += figures["keys_repaired"]
            wanted = ("ops_sent", "catchup_ops_sent", "ops_duplicate", "ops_dropped", "repair_rounds", "keys_repaired")
            step(f"shoal: {name} " + " ".join(f"{k}={figures.get(k)}" for k in wanted))
            if os.environ.get("CONVERGE_LOGS"):  # what each member said, to see where the time went
                for line in list(member.log)[-200:]:
                    print(f"      {name}| {line.rstrip()}", file=sys.stderr)
        # Missed while cut: C missed A's writes, A and B missed C's.
        work = f"; catch-up ops sent {catchup:,} for {3 * tenth:,} writes missed, {repaired:,} keys repaired"
        if seconds is not None:
            digests = {tuple(m.cmd("keys_digest")) for m in members}
            note = "identical caches" if len(digests) == 1 else "members still differ outside the writes"
            note += work
        else:
            left = sum(lacking(members[i], ranges[r][0], tenth, ranges[r][1], stop_at_first=False) for i, r in pending)
            note = f"at the cap, {left:,} (member, key) pairs still lack a write made while cut{work}"
        return Row("shoal", n, f"{tenth:,} + {tenth:,}", seconds, sent, note, reconnected)


def stop_member(member: SharedMember) -> None:
    """Gracefully if it still answers, else killed."""
    with contextlib.suppress(Exception):
        member.stop()
    with contextlib.suppress(Exception):
        member.proc.kill()
        member.proc.wait(10)


# -- redis ---------------------------------------------------------------------------------


def agent() -> None:
    """A redis-py client in one namespace (the bench process cannot reach 10.77.0.x), for the server there."""
    import redis

    client = redis.Redis("127.0.0.1", REDIS_PORT, socket_timeout=30)

    def fill(start: int, count: int, value: str) -> None:
        pipe = client.pipeline(transaction=False)
        for first in range(start, start + count, 1000):
            pipe.mset({f"k{i}": f"{value}{i}" for i in range(first, min(first + 1000, start + count))})
            if len(pipe) >= 50:
                pipe.execute()
        pipe.execute()

    def info(section: str = "replication") -> dict[str, Any]:
        return {k: v for k, v in client.info(section).items() if isinstance(v, (str, int, float))}

    def get(key: str) -> str | None:
        value = client.get(key)
        return None if value is None else value.decode()

    wait_for(lambda: _pings(client), 30, "redis-server")
    serve(None, {"fill": fill, "info": info, "dbsize": client.dbsize, "get": get})


def _pings(client: Any) -> bool:
    try:
        return bool(client.ping())
    except Exception:
        return False


def redis_server(host: Host, binary: str, *extra: str) -> RedisServer:
    flags = ["--protected-mode", "no", "--repl-timeout", "5", "--repl-ping-replica-period", "1"]
    flags += ["--repl-backlog-size", "256mb", "--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0"]
    return RedisServer(binary, *flags, *extra, port=REDIS_PORT, bind=("127.0.0.1", host.ip), prefix=host.prefix)


def run_redis(net: Netns, binary: str, n: int, partition: float, cap: float) -> Row:
    master_host, replica_host = net.add(), net.add()
    with Cleanup() as run:
        run.callback(lambda: [net.remove(host) for host in (master_host, replica_host)])
        for host in (master_host, replica_host):
            count_bytes(host)
        run.add(redis_server(master_host, binary))
        run.add(redis_server(replica_host, binary, "--replicaof", master_host.ip, str(REDIS_PORT)))
        master = run.add(child("bench/converge.py", agent, prefix=master_host.prefix))
        replica = run.add(child("bench/converge.py", agent, prefix=replica_host.prefix))
        step(f"redis: filling the master with {n:,} keys")
        master.call("fill", start=0, count=n, value="v")

        def synced() -> bool:
            info = replica.call("info")
            return info.get("master_link_status") == "up" and replica.call("dbsize") == n

        wait_for(synced, 300, f"the replica to hold {n:,} keys", 0.2)
        tenth = n // 10
        step(f"redis: replica cut off for {partition:.0f} s")
        net.partition(replica_host)
        cut = time.monotonic()
        master.call("fill", start=0, count=tenth, value="a")
        time.sleep(max(0.0, partition - (time.monotonic() - cut)))
        link = replica.call("info").get("master_link_status")
        before = master.call("info")
        target = int(before["master_repl_offset"])
        syncs = master.call("info", section="stats")
        zero_bytes([master_host, replica_host])
        net.heal(replica_host)
        healed = time.monotonic()
        step("redis: healed")
        seconds: float | None = None
        reconnected: float | None = None
        while time.monotonic() - healed < cap:
            info = replica.call("info")
            offset = int(info.get("slave_repl_offset", info.get("master_repl_offset", 0)))
            if reconnected is None and info.get("master_link_status") == "up":
                reconnected = time.monotonic() - healed
            if info.get("master_link_status") == "up" and offset >= target:
                seconds = time.monotonic() - healed
                break
            time.sleep(0.05)
        sent = bytes_out([master_host, replica_host])
        after = master.call("info", section="stats")
        partial = int(after.get("sync_partial_ok", 0)) - int(syncs.get("sync_partial_ok", 0))
        full = int(after.get("sync_full", 0)) - int(syncs.get("sync_full", 0))
        correct = replica.call("get", key=f"k{tenth - 1}") == f"a{tenth - 1}"
        note = f"link {link} at the heal; then {partial} partial resync(s), {full} full"
        if seconds is not None and not correct:
            note += "; replica lacks the last write"
        return Row("redis", n, f"{tenth:,} (master)", seconds, sent, note, reconnected)


# -- main ----------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="20,000 entries, a 60 s cap")
    parser.add_argument("--entries", default=None, help="comma-separated entry counts (default 200000,1000000)")
    parser.add_argument("--cap", type=float, default=None, help="give up waiting after this many seconds (300)")
    parser.add_argument("--partition", type=float, default=10.0, help="seconds the member is cut off (10)")
    parser.add_argument("--systems", default="shoal,redis")
    parser.add_argument("--no-save", action="store_true", help="do not write bench/results/converge.txt")
    parser.add_argument("--append", action="store_true", help="add this run to the results file (before/after)")
    if as_child(globals()):
        return 0
    args = parser.parse_args()
    sizes = [int(s) for s in (args.entries or ("20000" if args.quick else "200000,1000000")).split(",")]
    cap = args.cap if args.cap is not None else (60.0 if args.quick else 300.0)
    reason = unavailable()
    binary = redis_binary()
    systems = args.systems.split(",")
    if reason is None and "redis" in systems and binary is None:
        reason = "redis-server is not installed"
    if reason is not None:
        print(f"converge: {reason}", file=sys.stderr)
        return 1

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(f"converge: stopped by signal {signum}")  # the finally blocks clean up

    signal.signal(signal.SIGTERM, stop)
    rows: list[Row] = []
    with Cleanup() as run:
        net = Netns()
        run.callback(net.close)
        net.open()
        for n in sizes:
            for system in systems:
                began = time.monotonic()
                if system == "shoal":
                    row = run_shoal(net, n, args.partition, cap)
                else:
                    assert binary is not None
                    row = run_redis(net, binary, n, args.partition, cap)
                rows.append(row)
                print(
                    f"  {n:>9,} {system:<5} converged in {fmt_seconds(row.seconds, cap)} s "
                    f"({time.monotonic() - began:.0f} s run)",
                    flush=True,
                )

    table_rows: list[list[object] | None] = []
    for i, row in enumerate(rows):
        if i and row.entries != rows[i - 1].entries:
            table_rows.append(None)
        table_rows.append(
            [
                f"{row.entries:,}",
                row.system,
                row.written,
                fmt_seconds(row.reconnected, cap),
                fmt_seconds(row.seconds, cap),
                fmt_bytes(row.bytes_sent),
            ]
        )
    text = format_table(
        ["entries", "system", "written while cut", "reconnect s", "converge s", "bytes sent"],
        table_rows,
        title=f"Repair after a {args.partition:.0f} s partition (iptables DROP in one namespace), then the heal",
        notes=[
            *(f"{row.entries:>9,} {row.system}: {row.note}" for row in rows),
            "reconnect s: from the heal until the cut-off member is connected to the others again (shoal, polled",
            "  every 0.05 s) or the replica's link is up (redis): the part of converge s no repair can shorten.",
            "converge s: from the heal until every member holds every write made while cut (shoal, polled every",
            f"  {POLL} s), or until the replica's offset reaches the master's at the heal (redis); > {cap:.0f}: not",
            "  within the cap. bytes sent: out of every member's interface, heal to convergence (or to the cap).",
            "shoal: 3 members with Node defaults, 10% of the keys overwritten on each side of the cut. redis: master",
            "  and replica, repl-timeout 5, backlog 256 MB; 10% of the keys overwritten on the master.",
            "Bar (issue 13): <= 3 s at 200,000 entries, <= 5 s at 1,000,000.",
        ],
    )
    print()
    print(text)
    if not args.no_save:
        print(f"\nwritten to {save('converge', text, append=args.append).relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
