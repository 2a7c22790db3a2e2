#!/usr/bin/env python3
"""Replication, three members on loopback: shoal side by side with Redis (and pysyncobj).

    python3 run.py bench replication [--quick] [--profile] [--no-redis] [--no-plain] [--pysyncobj]
                                     [--shapes str,dict]

What users run: every cache has ``ttl=3600`` and a bound (``max_entries``, above
what the run writes, so the bookkeeping is paid and nothing is evicted), values
are short strings or small dicts of four fields, the cyclic GC is on. A shoal
cluster whose caches have neither TTL nor bound is a second line, not the headline.

1. Throughput: one writer does N writes as fast as it can; the clock stops when
   every member holds all of them. The figure is N / that time: writes applied on
   every member per second, the median [min-max] of 5 bursts per value shape.
   - shoal: three member processes (one writer, two receivers). A receiver notes
     the moment its store reaches N from inside ``Replica.apply`` (wrapped here, in
     the bench's member process only), so nothing polls.
   - Redis: a master and one replica (``--save "" --appendonly no``, ``maxmemory``
     with ``allkeys-lru`` as the bound); the writer is redis-py with a pipeline of
     1,000 ``SET key value EX 3600`` (dict values msgpack-packed, as a client caching
     them stores them), and, as a second row, one SET per round trip; the clock
     stops when the replica's DBSIZE reaches N.
   - pysyncobj (``--pysyncobj``): ``ReplDict`` on three processes, writes async on
     the leader. Async writes beyond its command queue (100,000) are dropped
     silently, so the row counts what arrived and divides that by the time.
2. Lag at 10,000 writes/s: the writer paces its writes and puts ``time.time()``
   into each one; the receiving member takes ``time.time()`` once the write is
   applied and visible there (shoal: after ``Replica.apply``; Redis: a keyspace
   notification from the replica to a subscriber process; pysyncobj: inside the
   replicated method on a follower). All processes share one machine clock.
3. Where a shoal write's time goes: the same pipeline in one process, stage by
   stage (set, batching into Writes, frame encode; decode, validate, apply), in
   microseconds per op. ``--profile`` adds cProfile of the live members (the
   writer's application thread and loop thread, a receiver's loop thread).

Every process is started here and stopped before the next system runs, so the
systems never compete for the two cores. A member's stderr goes to a file and is
summarized (tracebacks counted by exception, warnings kept), not pasted into the
results. The default run takes about a minute and a half; ``--quick`` is a smoke
run of a few seconds per system.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import os
import pstats
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from harness import (
    STDERR_NOTES,
    Cleanup,
    Member,
    RedisServer,
    StepWatch,
    as_child,
    environment,
    format_table,
    free_port,
    pct,
    redis_binary,
    serve,
    spread,
    wait_for,
)
from harness import child as _child
from harness import quantile as _quantile

CACHE = "bench"
LAG_RATE = 10_000  # writes/s for the lag measurement
TTL = 3600  # every cache has a TTL and a bound, as users configure them
BOUND = 3_000_000  # above what the runs write (2.1M): the policy's bookkeeping is paid, no eviction
ROUNDS = 5  # throughput bursts per system (median reported with min-max)


def value_of(i: int, shape: str = "str") -> Any:
    """A short string, or a small dict as an identity lookup returns."""
    if shape == "dict":
        return {"id": i, "name": f"User {i}", "email": f"user{i}@example.com", "active": i % 7 != 0}
    return f"acct-{i:08d}"


VALUE = value_of(1)  # for the lag runs

# SPEC section 7 bars for replication.
BAR_RATE = 100_000  # writes/s applied on every member
BAR_P99_MS = 10.0  # lag p99 at 10k writes/s


@dataclass(frozen=True)
class Sizes:
    burst: int  # writes in the throughput run (shoal, redis pipelined, pysyncobj)
    burst_roundtrip: int  # writes in the one-SET-per-round-trip redis run
    lag_seconds: float  # length of the paced run
    micro: int  # ops in the in-process stage breakdown
    rounds: int  # throughput bursts per system (median with min-max)


FULL = Sizes(200_000, 50_000, 5.0, 200_000, 5)
QUICK = Sizes(20_000, 5_000, 1.0, 20_000, 2)


# -- processes -------------------------------------------------------------------------------


Handlers = dict[str, Callable[..., Any]]


def child(target: Callable[..., None], **args: Any) -> Member:
    return _child("bench/replication.py", target, **args)


def all_results(procs: list[Member], timeout: float = 120.0) -> list[Any]:
    return [p.result(timeout) for p in procs]


def paced(n: int, rate: float, write: Callable[[int], object]) -> tuple[float, float]:
    """Call ``write(i)`` n times at ``rate`` per second (sleeping only when a millisecond ahead)."""
    start = time.time()
    for i in range(n):
        ahead = start + i / rate - time.time()
        if ahead > 0.001:
            time.sleep(ahead)
        write(i)
    return start, time.time()


def profile_text(profile: cProfile.Profile, top: int = 14) -> str:
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    lines = out.getvalue().splitlines()
    start = next((i for i, line in enumerate(lines) if "ncalls" in line), 0)
    return "\n".join(line.rstrip() for line in lines[start:] if line.strip())


# -- shoal member ------------------------------------------------------------------------------


def shoal_member(seeds: list[str], freeze: bool, plain: bool = False) -> None:
    """One member (``plain``: a cache with no TTL and no bound); ``freeze``: gc.freeze() before each phase."""
    from shoal.node import Node

    def maybe_freeze() -> None:
        if freeze:
            gc.freeze()

    from shoal.cache import Replica

    state: dict[str, Any] = {"target": None, "reached": None, "lags": None, "applied": 0}
    reached = threading.Event()
    original_apply = Replica.apply

    def apply(self: Replica, ops: Any, now: float) -> tuple[int, int]:
        """Replica.apply, plus the moment the store reached the target and the lag of stamped writes."""
        result = original_apply(self, ops, now)
        if self.name != CACHE:
            return result
        now = time.time()
        lags = state["lags"]
        if lags is not None:
            data = self._store.data
            for op in ops:
                entry = data.get(op[1])
                if entry is not None and type(entry.value) is float:
                    lags.append(now - entry.value)
        state["applied"] += result[0]
        target = state["target"]
        if target is not None and state["applied"] >= target:
            state["target"], state["reached"] = None, now
            reached.set()
        return result

    Replica.apply = apply  # type: ignore[method-assign]  # this bench process only
    node = Node(listen="127.0.0.1:0", seeds=seeds, **json.loads(os.environ.get("SHOAL_BENCH_NODE", "{}")))
    cache = node.cache(CACHE, ttl=TTL if plain is False else None, max_entries=BOUND if plain is False else None)
    store = cache._store
    full_gcs: list[float] = []  # milliseconds of each full (generation 2) collection
    gc_began = [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if info["generation"] == 2:
            if phase == "start":
                gc_began[0] = time.perf_counter()
            else:
                full_gcs.append((time.perf_counter() - gc_began[0]) * 1000)

    gc.callbacks.append(on_gc)

    def take_full_gcs() -> list[float]:
        taken = list(full_gcs)
        full_gcs.clear()
        return taken

    node.start()
    loop_profile = cProfile.Profile()
    steps = StepWatch()
    gc_ms = [0.0, 0.0, 0.0]  # per generation, while ``steps`` watches
    gc_at = [0.0]

    def on_any_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            gc_at[0] = time.thread_time()
        else:
            gc_ms[info["generation"]] += (time.thread_time() - gc_at[0]) * 1000

    gc.callbacks.append(on_any_gc)

    def watch_steps(on: bool) -> str:
        """From ``on`` to off: the loop's long steps and the collector's CPU ms by generation."""
        if on:
            node._driver.loop.call_soon_threadsafe(steps.reset)
            gc_ms[:] = [0.0, 0.0, 0.0]
            return ""
        return f"long loop steps (CPU, >= {StepWatch.LONG_MS:g} ms): {steps.summary()}; GC CPU ms by generation " + (
            "/".join(f"{x:.0f}" for x in gc_ms)
        )

    def meshed(peers: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        node.wait_ready(timeout)
        while time.monotonic() < deadline:
            up = [m for m in node.members() if m["state"] == "up" and CACHE in m["caches"]]
            if len(up) >= peers:
                return True
            time.sleep(0.02)
        return False

    def expect(n: int) -> None:
        maybe_freeze()
        reached.clear()
        state["reached"] = None
        state["target"] = state["applied"] + n

    def wait_reached(timeout: float) -> float | None:
        reached.wait(timeout)
        return state["reached"]  # type: ignore[no-any-return]

    def burst(prefix: str, n: int, profile: bool, shape: str = "str") -> tuple[float, float, str]:
        keys = [f"{prefix}{i}" for i in range(n)]
        values = [value_of(i, shape) for i in range(n)]
        set_ = cache.set
        prof = cProfile.Profile() if profile else None
        if prof is not None:
            prof.enable()
        start = time.time()
        for key, value in zip(keys, values, strict=True):
            set_(key, value)
        end = time.time()
        if prof is not None:
            prof.disable()
        return start, end, profile_text(prof) if prof is not None else ""

    def stamped(n: int, rate: float) -> tuple[float, float]:
        maybe_freeze()
        set_ = cache.set
        return paced(n, rate, lambda i: set_(f"lag{i}", time.time()))

    def record_lags(on: bool) -> list[float]:
        maybe_freeze()
        lags = state["lags"] or []
        state["lags"] = [] if on else None
        return lags

    def profile_loop(on: bool) -> str:
        node._driver.loop.call_soon_threadsafe(loop_profile.enable if on else loop_profile.disable)
        if on:
            return ""
        time.sleep(0.05)
        return profile_text(loop_profile)

    def figures() -> dict[str, Any]:
        return node.stats()["caches"][CACHE]  # type: ignore[no-any-return]

    handlers: Handlers = {
        "meshed": meshed,
        "expect": expect,
        "wait_reached": wait_reached,
        "burst": burst,
        "stamped": stamped,
        "record_lags": record_lags,
        "lag_count": lambda: len(state["lags"] or ()),
        "profile_loop": profile_loop,
        "figures": figures,
        "count": lambda: len(store.data),
        "cpu": time.process_time,  # this process, every thread
        "full_gcs": take_full_gcs,
        "watch_steps": watch_steps,
    }
    try:
        serve(node.address, handlers)
    finally:
        node.stop()


@dataclass
class RateRow:
    system: str
    writes: int  # per round
    arrived: list[int]  # per round
    seconds: list[float]  # per round: first write to last arrival everywhere
    writer_rate: list[float]  # per round

    @property
    def rates(self) -> list[float]:
        return [a / s for a, s in zip(self.arrived, self.seconds, strict=True) if s > 0]

    @property
    def rate(self) -> float:
        return statistics.median(self.rates) if self.rates else 0.0


@dataclass
class LagRow:
    system: str
    writes: int
    seconds: float
    lags: list[float]
    note: str = ""
    per_receiver: list[list[float]] = field(default_factory=list)  # in arrival order

    def quantile(self, q: float) -> float | None:
        return quantile(self.lags, q)

    def window_p99s(self, windows: int) -> list[float]:
        """p99 of each of ``windows`` consecutive slices of the run, per receiver: the spread over time."""
        out = []
        for lags in self.per_receiver or [self.lags]:
            step = max(1, len(lags) // windows)
            for i in range(0, len(lags) - step + 1, step):
                p = quantile(lags[i : i + step], 0.99)
                if p is not None:
                    out.append(p)
        return out


def quantile(xs: list[float], q: float) -> float | None:
    """In milliseconds, of samples in seconds."""
    value = _quantile(xs, q)
    return None if value is None else value * 1000


def bench_shoal(
    sizes: Sizes, profile: bool = False, freeze: bool = False, plain: bool = False, shapes: tuple[str, ...] = ("str",)
) -> tuple[list[RateRow], LagRow | None, dict[str, str], list[str]]:
    label = "shoal, 3 members" + (", gc.freeze() between phases" if freeze else "")
    label += ", no TTL/bound" if plain else f", ttl={TTL} bound={BOUND:,}"
    with Cleanup() as run:
        options = {"freeze": freeze, "plain": plain}
        first = run.add(child(shoal_member, seeds=[], **options))
        procs = [first, *(run.add(child(shoal_member, seeds=[first.hello], **options)) for _ in range(2))]
        writer, receivers = procs[0], procs[1:]
        for p in procs:
            p.send("meshed", peers=2, timeout=30.0)
        if not all(all_results(procs)):
            raise RuntimeError("shoal members did not form a full mesh")

        def burst(prefix: str, n: int, prof: bool = False, shape: str = "str") -> tuple[float, float, float, str]:
            for r in receivers:
                r.call("expect", n=n)
            start, end, text = writer.call("burst", prefix=prefix, n=n, profile=prof, shape=shape)
            for r in receivers:
                r.send("wait_reached", timeout=120.0)
            done = all_results(receivers, 130.0)
            if any(t is None for t in done):
                raise RuntimeError(f"receivers did not get all {n} writes: {[r.call('count') for r in receivers]}")
            return start, end, max(done), text

        burst("warm", min(20_000, sizes.burst))
        rates: list[RateRow] = []
        notes: list[str] = []
        for shape in shapes:
            row = RateRow(f"{label}, {shape} values", sizes.burst, [], [], [])
            cpu = [p.call("cpu") for p in procs]
            for round_no in range(sizes.rounds):
                start, end, done, _ = burst(f"{shape}{round_no}:", sizes.burst, shape=shape)
                row.arrived.append(sizes.burst)
                row.seconds.append(done - start)
                row.writer_rate.append(sizes.burst / (end - start))
            writes = sizes.burst * sizes.rounds
            cpu = [(p.call("cpu") - c) / writes * 1e6 for p, c in zip(procs, cpu, strict=True)]
            rates.append(row)
            notes.append(
                f"{row.system}: CPU per write (process time, all threads): writer {cpu[0]:.1f} us, "
                f"receivers {cpu[1]:.1f} and {cpu[2]:.1f} us"
            )
        if plain:
            return rates, None, {}, notes

        for p in procs:
            p.call("full_gcs")
        watched = ("ops_dropped", "repair_rounds", "keys_repaired", "catchup_ops_sent")
        before = [{k: p.call("figures").get(k, 0) for k in watched} for p in procs]
        for r in receivers:
            r.call("record_lags", on=True)
        for p in procs:
            p.call("watch_steps", on=True)
        n = int(LAG_RATE * sizes.lag_seconds)
        start, end = writer.call("stamped", n=n, rate=LAG_RATE, wait=sizes.lag_seconds * 10 + 30)
        deadline = time.monotonic() + 60  # every write's lag is counted, however late it arrives
        while time.monotonic() < deadline and any(r.call("lag_count") < n for r in receivers):
            time.sleep(0.05)
        lags = [r.call("record_lags", on=False) for r in receivers]
        lag = LagRow(label, n, end - start, [x for part in lags for x in part], "lag seen on both receivers", lags)
        watched_steps = [p.call("watch_steps", on=False) for p in procs]
        pauses = [x for p in procs for x in p.call("full_gcs")]
        after = [{k: p.call("figures").get(k, 0) for k in watched} for p in procs]
        moved = {k: sum(a[k] - b[k] for a, b in zip(after, before, strict=True)) for k in watched}
        notes.append(
            f"{label}: members held {procs[1].call('count'):,} entries during the paced run; full (gen 2) "
            f"garbage collections meanwhile: {len(pauses)}, longest {max(pauses, default=0):.0f} ms; "
            + ", ".join(f"{k} {v:,}" for k, v in moved.items())
            + " (all members, during the paced run)"
            + "".join(
                f"\n  {who} during the paced run: {text}"
                for who, text in zip(("writer", "receiver 1", "receiver 2"), watched_steps, strict=False)
            )
        )

        profiles: dict[str, str] = {}
        if profile:
            for p in (writer, receivers[0]):
                p.call("profile_loop", on=True)
            _, _, _, profiles["writer: application thread (Cache.set loop)"] = burst("prof", sizes.burst // 3, True)
            profiles["writer: node loop thread (flush, encode, send)"] = writer.call("profile_loop", on=False)
            receiver_loop = receivers[0].call("profile_loop", on=False)
            profiles["receiver: node loop thread (decode, validate, apply)"] = receiver_loop
        return rates, lag, profiles, notes


# -- redis -------------------------------------------------------------------------------------


def redis_writer(port: int) -> None:
    import redis

    client = redis.Redis(port=port)

    def stamped(n: int, rate: float) -> tuple[float, float]:
        set_ = client.set
        return paced(n, rate, lambda i: set_(f"lag:{i}:{time.time()!r}", VALUE, ex=TTL))

    serve(None, {"stamped": stamped})
    client.close()


def redis_reader(port: int) -> None:
    """Subscribes to the replica's keyspace notifications; a key carries its write's timestamp."""
    import redis

    client = redis.Redis(port=port)
    client.config_set("notify-keyspace-events", "K$")
    pubsub = client.pubsub()  # type: ignore[no-untyped-call]
    pubsub.psubscribe("__keyspace@0__:lag:*")
    while pubsub.get_message(timeout=1.0) is None:  # the subscription confirmation
        pass
    lags: list[float] = []
    stop = threading.Event()

    def listen() -> None:
        while not stop.is_set():
            msg = pubsub.get_message(timeout=0.1)
            if msg is not None and msg["type"] == "pmessage":
                now = time.time()
                lags.append(now - float(msg["channel"].rsplit(b":", 1)[1]))

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()

    def collect() -> list[float]:
        stop.set()
        thread.join(5)
        return lags

    serve(None, {"collect": collect})


def bench_redis(binary: str, sizes: Sizes, shapes: tuple[str, ...]) -> tuple[list[RateRow], LagRow, str]:
    import msgpack

    bound = ["--maxmemory", "4gb", "--maxmemory-policy", "allkeys-lru"]  # a bound, as the shoal caches have
    with Cleanup() as run:
        master = run.add(RedisServer(binary, *bound))
        replica = run.add(RedisServer(binary, *bound, "--replicaof", "127.0.0.1", str(master.port)))
        m, r = master.client(), replica.client()
        deadline = time.monotonic() + 20
        while r.info("replication").get("master_link_status") != "up":
            if time.monotonic() > deadline:
                raise RuntimeError("redis replica did not link to its master")
            time.sleep(0.05)
        version = m.info("server")["redis_version"]

        def until_replica_has(n: int, exact: bool = False) -> float:
            deadline = time.monotonic() + 120
            while (r.dbsize() != n) if exact else (r.dbsize() < n):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis replica stuck at {r.dbsize()} of {n} keys")
                time.sleep(0.0005)
            return time.time()

        rows = []
        for shape in shapes:
            row = RateRow(f"redis, master + replica, pipeline of 1000, {shape} values", sizes.burst, [], [], [])
            for round_no in range(sizes.rounds):
                m.flushall()
                until_replica_has(0, exact=True)
                keys = [f"{shape}{round_no}:{i}" for i in range(sizes.burst)]
                values = [value_of(i, shape) for i in range(sizes.burst)]
                if shape == "dict":  # what a client caching a dict stores: its encoding
                    values = [msgpack.packb(v) for v in values]
                start = time.time()
                pipe = m.pipeline(transaction=False)
                for i in range(0, len(keys), 1000):
                    for key, value in zip(keys[i : i + 1000], values[i : i + 1000], strict=True):
                        pipe.set(key, value, ex=TTL)
                    pipe.execute()
                end = time.time()
                done = until_replica_has(sizes.burst)
                row.arrived.append(sizes.burst)
                row.seconds.append(done - start)
                row.writer_rate.append(sizes.burst / (end - start))
            rows.append(row)

        m.flushall()
        until_replica_has(0, exact=True)
        n = sizes.burst_roundtrip
        set_ = m.set
        start = time.time()
        for i in range(n):
            set_(f"k{i}", VALUE, ex=TTL)
        end = time.time()
        done = until_replica_has(n)
        rows.append(
            RateRow("redis, master + replica, one SET per round trip, str", n, [n], [done - start], [n / (end - start)])
        )

        m.flushall()
        reader = run.add(child(redis_reader, port=replica.port))
        writer = run.add(child(redis_writer, port=master.port))
        n = int(LAG_RATE * sizes.lag_seconds)
        start, end = writer.call("stamped", n=n, rate=LAG_RATE, wait=sizes.lag_seconds * 10 + 30)
        time.sleep(0.5)
        lags = reader.call("collect")
        lag = LagRow("redis, master -> replica", n, end - start, lags, "keyspace notification from the replica")
        return rows, lag, version


# -- pysyncobj ---------------------------------------------------------------------------------


def pysyncobj_member(me: str, partners: list[str]) -> None:
    from pysyncobj import SyncObj, SyncObjConf, replicated
    from pysyncobj.batteries import ReplDict

    lags: list[float] = []
    recording = threading.Event()

    class StampedDict(ReplDict):  # type: ignore[misc]
        """ReplDict plus one replicated write that records its lag where it is applied."""

        @replicated  # type: ignore[untyped-decorator]
        def put(self, key: str, value: str, ts: float) -> None:
            ReplDict.set(self, key, value, _doApply=True)
            if recording.is_set():
                lags.append(time.time() - ts)

    d = StampedDict()
    obj = SyncObj(me, partners, conf=SyncObjConf(dynamicMembershipChange=False), consumers=[d])

    def leader() -> str | None:
        found = obj._getLeader()
        return None if found is None or not obj.isReady() else str(found)

    def burst(n: int) -> tuple[float, float]:
        keys = [f"k{i}" for i in range(n)]
        set_ = d.set
        start = time.time()
        for key in keys:
            set_(key, VALUE)
        return start, time.time()

    def wait_count(n: int, idle: float) -> tuple[int, float]:
        """Wait until n entries or none new for ``idle`` seconds: (count, time of the last arrival)."""
        count, last = len(d), time.time()
        while count < n and time.time() - last < idle:
            time.sleep(0.002)
            now_count = len(d)
            if now_count != count:
                count, last = now_count, time.time()
        return count, last

    def stamped(n: int, rate: float) -> tuple[float, float]:
        put = d.put
        return paced(n, rate, lambda i: put(f"lag{i}", VALUE, time.time()))

    def record_lags(on: bool) -> list[float]:
        if on:
            lags.clear()
            recording.set()
            return []
        recording.clear()
        return list(lags)

    handlers: Handlers = {
        "leader": leader,
        "burst": burst,
        "wait_count": wait_count,
        "stamped": stamped,
        "record_lags": record_lags,
        "count": lambda: len(d),
    }
    try:
        serve(me, handlers)
    finally:
        obj.destroy()


def bench_pysyncobj(sizes: Sizes) -> tuple[RateRow, LagRow]:
    addresses = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    with Cleanup() as run:
        procs = [run.add(child(pysyncobj_member, me=a, partners=[b for b in addresses if b != a])) for a in addresses]

        def one_leader() -> set[str | None] | None:
            leaders = {p.call("leader") for p in procs}
            return leaders if len(leaders) == 1 and None not in leaders else None

        (leader,) = wait_for(one_leader, 30, "pysyncobj to elect a leader", 0.1)
        writer = next(p for p in procs if p.hello == leader)
        followers = [p for p in procs if p is not writer]

        # The paced run comes first: after the burst, pysyncobj spends a long time
        # working off its queue, and the lag would measure that backlog instead.
        for p in followers:
            p.call("record_lags", on=True)
        n = int(LAG_RATE * sizes.lag_seconds)
        start, end = writer.call("stamped", n=n, rate=LAG_RATE, wait=sizes.lag_seconds * 10 + 30)
        for p in procs:
            p.send("wait_count", n=n, idle=5.0)
        all_results(procs, 300.0)
        lags = [x for p in followers for x in p.call("record_lags", on=False)]
        got = len(lags) // len(followers)
        lag = LagRow(
            "pysyncobj ReplDict, leader -> followers",
            n,
            end - start,
            lags,
            f"{got:,} of {n:,} writes arrived on each follower" if got < n else "seen on both followers",
        )

        base = min(p.call("count") for p in procs)
        n = sizes.burst
        start, end = writer.call("burst", n=n)
        for p in procs:
            p.send("wait_count", n=base + n, idle=5.0)
        arrived = all_results(procs, 300.0)
        count = min(c for c, _ in arrived) - base
        last = max(t for _, t in arrived)
        rate = RateRow("pysyncobj ReplDict, 3 members (async)", n, [count], [last - start], [n / (end - start)])
        return rate, lag


# -- shoal, stage by stage ---------------------------------------------------------------------


class _Group:
    """Membership stand-in: this member is 0, and two peers, 1 and 2, host every cache and
    speak ``protocol`` (5: writes as columns, ``Writes``; 4: as rows, ``Stream``)."""

    node_id = 0

    def __init__(self, protocol: int) -> None:
        self.members = {peer: SimpleNamespace(protocol=protocol) for peer in (1, 2)}

    def group(self, cache: str) -> list[int]:
        return [1, 2]

    def up_peers(self) -> list[int]:
        return [1, 2]


def stages(n: int, collect: bool, protocol: int) -> list[tuple[str, str, float]]:
    """Microseconds per op of each step a write takes, measured in one process without sockets.

    With ``collect`` false the cyclic garbage collector is off (as timeit does);
    the difference is what collections cost on a growing heap.
    """
    gc.collect()
    if not collect:
        gc.disable()
    try:
        return _stages(n, protocol)
    finally:
        gc.enable()


def _stages(n: int, protocol: int) -> list[tuple[str, str, float]]:
    from shoal.cache import Cache, Replica
    from shoal.messages import Resume, Stream, Writes
    from shoal.positions import LIVE, vector_to_wire
    from shoal.replication import Replicator, ops_of
    from shoal.wire import FrameDecoder, encode

    keys = [f"k{i}" for i in range(n)]
    writer = Cache(ttl=TTL, max_entries=BOUND, name=CACHE)
    replicator = Replicator(_Group(protocol), {CACHE: Replica(writer)})  # type: ignore[arg-type]
    for peer in (1, 2):  # both follow the writer's stream live, as after their Resume
        replicator.received(peer, Resume(CACHE, vector_to_wire({0: LIVE})), 0.0, time.time())
    outbox: list[Any] = []
    Replica(writer).connect(outbox.append)

    def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
        start = time.perf_counter()
        result = fn()
        return (time.perf_counter() - start) / n * 1e6, result

    def set_all() -> None:
        set_ = writer.set
        for key in keys:
            set_(key, VALUE)

    t_set, _ = timed(set_all)
    t_flush, actions = timed(lambda: replicator.outgoing(CACHE, outbox, time.time()))
    msgs = [a.msg for a in actions]  # one message per batch, broadcast to both peers
    t_encode, frames = timed(lambda: [encode(m) for m in msgs])
    stream = b"".join(frames)
    t_decode, decoded = timed(lambda: FrameDecoder().feed(stream))
    assert all(isinstance(m, Writes if protocol >= 5 else Stream) for m in decoded)
    t_validate, batches = timed(lambda: [ops_of(m) for m in decoded])
    receiver = Replica(Cache(ttl=TTL, max_entries=BOUND, name=CACHE))
    t_apply, _ = timed(lambda: [receiver.apply(ops, time.time()) for ops in batches])
    assert receiver.size() == n
    return [
        ("writer", "Cache.set (dumps, stamp, store.write, enqueue)", t_set),
        ("writer", "Replicator.outgoing (wire form, batching, catch-up log)", t_flush),
        ("writer", "wire.encode of each frame (msgpack)", t_encode),
        ("receiver", "FrameDecoder.feed (msgpack, message checks)", t_decode),
        ("receiver", "ops_of (validation)", t_validate),
        ("receiver", "Replica.apply (loads, store.write)", t_apply),
    ]


# -- report ------------------------------------------------------------------------------------


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.2f}"


def rate_text(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def main(argv: list[str] | None = None) -> int:
    if as_child(globals()):
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds per system")
    parser.add_argument("--profile", action="store_true", help="also cProfile the live shoal members")
    parser.add_argument("--no-redis", action="store_true", help="skip redis even if redis-server is installed")
    parser.add_argument("--pysyncobj", action="store_true", help="add pysyncobj (its members' stderr is summarized)")
    parser.add_argument("--no-plain", action="store_true", help="skip the no-TTL/bound shoal line")
    parser.add_argument("--shapes", default="str,dict", help="value shapes of the throughput bursts: str, dict")
    parser.add_argument(
        "--gc-freeze", action="store_true", help="add a shoal run whose members call gc.freeze() between phases"
    )
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    began = time.perf_counter()
    print(f"{environment()}; {'quick' if args.quick else 'full'} run", flush=True)

    rates: list[RateRow] = []
    lags: list[LagRow] = []
    notes: list[str] = []

    shapes = tuple(args.shapes.split(","))
    print("shoal: three members ...", flush=True)
    shoal_rates, shoal_lag, profiles, shoal_notes = bench_shoal(sizes, args.profile, shapes=shapes)
    assert shoal_lag is not None
    rates += shoal_rates
    lags.append(shoal_lag)
    rate_notes, lag_notes = shoal_notes[:-1], shoal_notes[-1:]
    if args.gc_freeze:
        print("shoal: three members calling gc.freeze() ...", flush=True)
        frozen_rates, frozen_lag, _, frozen_notes = bench_shoal(sizes, freeze=True, shapes=shapes)
        assert frozen_lag is not None
        rates += frozen_rates
        lags.append(frozen_lag)
        rate_notes += frozen_notes[:-1]
        lag_notes += frozen_notes[-1:]

    binary = redis_binary(args.no_redis)
    if binary is None:
        notes.append("redis: skipped" + ("" if args.no_redis else " (no redis-server on PATH)"))
    else:
        print("redis: master + replica ...", flush=True)
        redis_rates, redis_lag, version = bench_redis(binary, sizes, shapes)
        rates += redis_rates
        lags.append(redis_lag)
        notes.append(
            f"redis-server {version}, redis-py client; SET ... EX {TTL}, maxmemory 4gb allkeys-lru (a bound); "
            "dict values msgpack-packed"
        )

    if not args.no_plain:
        print("shoal: three members, caches without TTL or bound ...", flush=True)
        plain_rates, _, _, plain_notes = bench_shoal(sizes, plain=True, shapes=("str",))
        rates += plain_rates
        rate_notes += plain_notes

    if args.pysyncobj:
        try:
            import pysyncobj  # noqa: F401
        except ImportError:
            notes.append("pysyncobj: skipped (not installed)")
        else:
            print("pysyncobj: three members ...", flush=True)
            sync_rate, sync_lag = bench_pysyncobj(sizes)
            rates.append(sync_rate)
            lags.append(sync_lag)
            notes.append(
                "pysyncobj: counted once nothing new arrived for 5 s; async writes beyond its command queue "
                "(100,000) are dropped without an error"
            )

    print("shoal, stage by stage ...", flush=True)
    by_protocol = {
        protocol: (stages(sizes.micro, collect=True, protocol=protocol), stages(sizes.micro, False, protocol))
        for protocol in (5, 4)
    }
    print()

    print(
        format_table(
            ["system", "writes x rounds", "applied everywhere", "writes/s applied on every member", "writer writes/s"],
            [
                [
                    r.system,
                    f"{r.writes:,} x {len(r.arrived)}",
                    "all"
                    if min(r.arrived) == r.writes
                    else f"{min(r.arrived):,} ({pct(1 - min(r.arrived) / r.writes)} lost)",
                    spread(r.rates, ",.0f"),
                    spread(r.writer_rate, ",.0f"),
                ]
                for r in rates
            ],
            title="1. throughput: one writer, as fast as it can; clock stops when every member has every write\n"
            "   median [min-max] over the rounds",
            notes=["writer writes/s: how fast the writer's own loop issued them", *rate_notes, *notes],
        )
    )
    print()
    windows = max(1, int(sizes.lag_seconds))
    print(
        format_table(
            [
                "system",
                "writes",
                "achieved writes/s",
                "samples",
                "p50 ms",
                "p99 ms",
                "p99 per 1 s window [min-max]",
                "max ms",
                "how it is seen",
            ],
            [
                [
                    row.system,
                    f"{row.writes:,}",
                    rate_text(row.writes / row.seconds),
                    f"{len(row.lags):,}",
                    ms(row.quantile(0.50)),
                    ms(row.quantile(0.99)),
                    (lambda w: f"{min(w):.2f}-{max(w):.2f}" if w else "-")(row.window_p99s(windows)),
                    ms(row.quantile(1.0)),
                    row.note,
                ]
                for row in lags
            ],
            title=f"2. lag at {LAG_RATE:,} writes/s: set on the writer -> visible on another member",
            notes=lag_notes,
        )
    )
    print()
    runs = list(by_protocol.values())
    rows: list[list[object] | None] = [
        [f"{side}: {stage}"] + [f"{t[i][2]:.2f}" for run in runs for t in run]
        for i, (side, stage, _) in enumerate(runs[0][0])
    ]
    rows.append(None)
    for side in ("writer", "receiver"):
        totals = [sum(t for s, _, t in breakdown if s == side) for run in runs for breakdown in run]
        rows.append([f"{side}: total (writes/s one core could do)"] + [f"{t:.2f} ({1e6 / t:,.0f})" for t in totals])
    print(
        format_table(
            ["stage"] + ["us/op", "us/op, gc off"] * len(runs),
            rows,
            title=f"3. where a shoal write's time goes ({sizes.micro:,} ops, one process, no sockets)",
            groups=[("", 1)]
            + [(f"peers on protocol {p} ({'Writes' if p >= 5 else 'Stream'})", 2) for p in by_protocol],
            notes=[
                "Per write, three members spend the writer's total plus two receivers' totals of CPU, "
                "before sockets and the event loop; the machine has "
                f"{os.cpu_count()} cores for them. Protocol 5 sends a batch of writes as six columns, "
                "4 (0.2.0) as an array per op."
            ],
        )
    )
    print()
    p99 = shoal_lag.quantile(0.99)
    bar_rows: list[list[object] | None] = []
    for row in shoal_rates:
        bar_rows.append(
            [
                f"{row.system}: writes/s applied on every member",
                f">= {BAR_RATE:,}",
                spread(row.rates, ",.0f"),
                "MET" if row.rate >= BAR_RATE else "MISSED",
            ]
        )
    bar_rows.append(
        [
            f"{shoal_lag.system}: lag p99 at {LAG_RATE:,} writes/s",
            f"<= {BAR_P99_MS:g} ms",
            ms(p99),
            "MET" if p99 is not None and p99 <= BAR_P99_MS else "MISSED",
        ]
    )
    redis_rows = [r for r in rates if r.system.startswith("redis") and "pipeline" in r.system]
    for row, other in zip(shoal_rates, redis_rows, strict=False):
        bar_rows.append([f"  ratio to {other.system}", "", f"{row.rate / other.rate:.2f}x", ""])
    print(
        format_table(
            ["bar (issue 15)", "target", "shoal (median [min-max])", "status"],
            bar_rows,
            title="bars (same run; the machine is shared and noisy)",
        )
    )
    for line in STDERR_NOTES:
        print(line)
    for title, text in profiles.items():
        print(f"\ncProfile, {title}, by own time:\n{text}")
    print(f"\ntook {time.perf_counter() - began:.0f}s; load average at the end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
