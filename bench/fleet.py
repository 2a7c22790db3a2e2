#!/usr/bin/env python3
"""A fleet under a write burst: N members each write K keys at once; when does every member hold every write?

    python3 run.py bench fleet [--members 10,20,30,40] [--keys 5000] [--timeout 120] [--rounds 1]
                               [--no-redis] [--save [--label TEXT]]

The full run (issue 19's figures; about 15-25 minutes on 2 cores, run it when the
machine is quiet):

    python3 run.py bench fleet --members 10,20,30,40 --keys 5000 --timeout 120 --save

(``--save`` appends the table to bench/results/fleet.txt, headed by the date and
the commit; ``--label TEXT`` adds a line above it, e.g. "before" or "after".)

shoal   N member processes (bench/member.py fleet), all in one cluster seeded
        from the first, each cache ``ttl=3600`` and ``max_entries=--bound``, Node
        defaults otherwise. Once every member lists all the others up, each one
        writes K distinct keys (``set_many``) at the same wall-clock moment; the
        clock stops when every member holds all N x K keys (each polls its own
        ``len(cache)`` every 10 ms). After ``--timeout`` seconds the run is
        "never", with the key copies still missing.
redis   the same workload through a primary and N-1 replicas (``--replicaof``,
        ``maxmemory`` with ``allkeys-lru`` as the bound, ``SET ... EX 3600``): N
        clients (threads of this process, one connection each, pipelines of
        1,000) write K keys each at the same moment; the clock stops when every
        replica's DBSIZE is N x K. The reference for what this host can carry.

Columns: ``down`` is how many times a member marked a peer down during the run
(counted from each member's log; redis: resyncs of a replica after the initial
sync); ``fewest up`` is the fewest peers any member saw up while the writes
spread; ``catch-up ops`` is ``catchup_ops_sent`` summed over the members (from
``stats()``), shown beside ``ops dropped`` (live writes a member did not send to
a peer that was not reading) and ``redundant`` (copies received that changed
nothing: ``ops_ignored``). ``stats()`` has no count of the writes a member
missed, so "catch-up ops sent over writes missed" is not measured directly:
``ops dropped`` is the lower bound of what was missed (writes lost with a closed
connection are not counted anywhere). ``peak RSS`` is each member's VmHWM.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from dataclasses import dataclass, field

from harness import (
    MB,
    ROOT,
    STDERR_NOTES,
    Cleanup,
    Member,
    RedisServer,
    environment,
    format_table,
    redis_binary,
    redis_version,
    rss,
    save,
    spread,
    wait_for,
)

TTL = 3600
START_IN = 1.0  # seconds from sending the write command to the moment every member writes


@dataclass
class Row:
    system: str
    members: int
    keys: int  # per member
    seconds: float | None = None  # None: not within the timeout
    missing: int = 0  # key copies missing at the timeout
    downs: int = 0
    fewest_up: int | None = None
    catchup: int | None = None
    dropped: int | None = None
    redundant: int | None = None
    peak_mb: list[float] = field(default_factory=list)
    note: str = ""


def run_shoal(n: int, k: int, bound: int, timeout: float) -> Row:
    row = Row("shoal", n, k)
    argv = ["bench/member.py", "fleet", "--ttl", str(TTL), "--bound", str(bound)]
    with Cleanup() as run:
        first = run.add(Member(*argv))
        members = [first] + [
            run.add(Member(*argv, "--seed", first.hello["address"], hello=False)) for _ in range(n - 1)
        ]
        for m in members[1:]:
            m.greeted()

        def meshed() -> bool:
            for m in members:
                m.send("peers_up")
            return [m.result() for m in members] == [n - 1] * n

        wait_for(meshed, 60 + n, f"{n} members to list each other up", 0.2)
        at = time.time() + START_IN
        prefixes = [f"m{j}" for j in range(n)]
        for m, prefix in zip(members, prefixes, strict=True):
            m.send("write", at=at, prefix=prefix, k=k)
        for m in members:
            m.result(START_IN + 60 + timeout)
        for m in members:
            m.send("wait_held", total=n * k, deadline=at + timeout)
        done = [m.result(timeout + 30) for m in members]
        if all(t is not None for t in done):
            row.seconds = max(done) - at
        else:
            for m, t in zip(members, done, strict=True):
                if t is None:
                    m.send("missing", prefixes=prefixes, k=k)
            row.missing = sum(m.result() for m, t in zip(members, done, strict=True) if t is None)
        figures = [m.call("figures") for m in members]
        row.peak_mb = [rss(m.pid, "VmHWM") / MB for m in members]
    row.downs = sum(f["downs"] for f in figures)
    row.fewest_up = min((f["min_up"] for f in figures if f["min_up"] is not None), default=None)
    row.catchup = sum(f["catchup_ops_sent"] for f in figures)
    row.dropped = sum(f["ops_dropped"] for f in figures)
    row.redundant = sum(f["ops_ignored"] for f in figures)
    row.note = f"catchups_incomplete {sum(f['catchups_incomplete'] for f in figures)}"
    return row


def run_redis(binary: str, n: int, k: int, timeout: float) -> Row:
    row = Row("redis", n, k)
    bound = ["--maxmemory", "4gb", "--maxmemory-policy", "allkeys-lru"]
    with Cleanup() as run:
        primary = run.add(RedisServer(binary, *bound))
        replicas = [
            run.add(RedisServer(binary, *bound, "--replicaof", "127.0.0.1", str(primary.port))) for _ in range(n - 1)
        ]
        clients = [r.client() for r in replicas]
        wait_for(
            lambda: all(c.info("replication").get("master_link_status") == "up" for c in clients),
            60 + n,
            f"{n - 1} redis replicas to link",
            0.1,
        )
        syncs = primary.client().info("stats")
        writers = [primary.client() for _ in range(n)]
        at = time.time() + START_IN
        errors: list[BaseException] = []

        def write(j: int) -> None:
            try:
                time.sleep(max(0.0, at - time.time()))
                pipe = writers[j].pipeline(transaction=False)
                for i in range(k):
                    pipe.set(f"m{j}:{i}", f"acct-{i:08d}", ex=TTL)
                    if len(pipe) >= 1000:
                        pipe.execute()
                pipe.execute()
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=write, args=(j,)) for j in range(n)]
        for thread in threads:
            thread.start()
        pending, reached = set(range(n - 1)), [at]
        while pending and time.time() < at + timeout and not errors:
            for i in sorted(pending):
                if clients[i].dbsize() >= n * k:
                    pending.discard(i)
                    reached.append(time.time())
            time.sleep(0.005)
        for thread in threads:
            thread.join(timeout)
        if errors:
            raise errors[0]
        if pending:
            row.missing = sum(n * k - clients[i].dbsize() for i in pending)
        else:
            row.seconds = max(reached) - at
        after = primary.client().info("stats")
        row.downs = sum(int(after.get(f, 0)) - int(syncs.get(f, 0)) for f in ("sync_full", "sync_partial_ok"))
        row.fewest_up = sum(c.info("replication").get("master_link_status") == "up" for c in clients)
        row.peak_mb = [rss(r.pid, "VmHWM") / MB for r in replicas]
        row.note = f"primary peak RSS {rss(primary.pid, 'VmHWM') / MB:.0f} MB"
    return row


def held(rows: list[Row], timeout: float) -> str:
    """Seconds, median [min-max] over the rounds; the rounds that never got there, with what was missing."""
    done = spread([r.seconds for r in rows], ".1f") if any(r.seconds is not None for r in rows) else ""
    never = [r.missing for r in rows if r.seconds is None]
    if not never:
        return done
    many = f" in {len(never)} of {len(rows)}" if len(rows) > 1 else ""
    return f"{done + '; ' if done else ''}never{many} ({max(never):,} missing after {timeout:.0f} s)"


def table(rows: list[Row], timeout: float) -> str:
    def figure(runs: list[Row], name: str) -> str:
        values = [getattr(r, name) for r in runs]
        return "-" if None in values else spread(values, ",.0f")

    runs: dict[tuple[str, int], list[Row]] = {}
    for r in rows:
        runs.setdefault((r.system, r.members), []).append(r)
    body: list[list[object] | None] = []
    for (system, n), same in runs.items():
        if body and body[-1] is not None and body[-1][1] != n:
            body.append(None)
        body.append(
            [
                system,
                n,
                f"{n * same[0].keys:,}",
                held(same, timeout),
                *(figure(same, name) for name in ("downs", "fewest_up", "catchup", "dropped", "redundant")),
                spread([mb for r in same for mb in r.peak_mb], ".0f"),
                "; ".join(sorted({r.note for r in same})),
            ]
        )
    return format_table(
        [
            "system",
            "members",
            "writes",
            "all held after s",
            "down",
            "fewest up",
            "catch-up ops",
            "ops dropped",
            "redundant",
            "peak RSS MB",
            "note",
        ],
        body,
        title="A fleet under a write burst: every member writes K keys at once; until every member holds every write",
        notes=[
            "all held after s: from the moment of the writes until every member (redis: every replica) holds all;",
            "  with --rounds, this and the next five columns are median [min-max] over the rounds.",
            "down: peers marked down, summed over the members (redis: resyncs after the initial sync).",
            "fewest up: the fewest peers one member saw up while the writes spread (redis: replicas linked at the end)",
            "catch-up ops / ops dropped / redundant: catchup_ops_sent, ops_dropped, ops_ignored summed over members;",
            "  stats() has no count of writes missed: ops dropped is its lower bound.",
            "peak RSS MB: VmHWM per member (redis: per replica), median [min-max].",
        ],
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", default="10,20,30,40", help="comma-separated member counts")
    parser.add_argument("--keys", type=int, default=5000, help="keys each member writes")
    parser.add_argument("--bound", type=int, default=1_000_000, help="max_entries of every cache")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds before a run is 'never'")
    parser.add_argument("--rounds", type=int, default=1, help="runs per member count (median [min-max])")
    parser.add_argument("--no-redis", action="store_true")
    parser.add_argument("--save", action="store_true", help="append the table to bench/results/fleet.txt")
    parser.add_argument("--label", default="", help="a line saved above the table (e.g. 'smoke run')")
    args = parser.parse_args()
    binary = redis_binary(args.no_redis)
    print(environment(), flush=True)
    rows: list[Row] = []
    for n in (int(x) for x in args.members.split(",")):
        if n * args.keys > args.bound:
            parser.error(f"--bound {args.bound:,} is below the {n * args.keys:,} keys of {n} members")
        for _ in range(args.rounds):
            began = time.monotonic()
            rows.append(run_shoal(n, args.keys, args.bound, args.timeout))
            print(
                f"  shoal {n} members: {held(rows[-1:], args.timeout)} ({time.monotonic() - began:.0f} s)", flush=True
            )
            if binary:
                began = time.monotonic()
                rows.append(run_redis(binary, n, args.keys, args.timeout))
                print(f"  redis {n}: {held(rows[-1:], args.timeout)} ({time.monotonic() - began:.0f} s)", flush=True)
    text = table(rows, args.timeout)
    versions = f"redis-server {redis_version(binary)}" if binary else "redis: skipped"
    text += f"\n{environment()}; {versions}; K = {args.keys:,}, bound {args.bound:,}, timeout {args.timeout:.0f} s"
    print("\n" + text)
    for line in STDERR_NOTES:
        print(line)
    if args.save:
        saved = save("fleet", (args.label + "\n" if args.label else "") + text, append=True)
        print(f"appended to {saved.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
