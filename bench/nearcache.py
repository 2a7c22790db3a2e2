#!/usr/bin/env python3
"""shoal as the near cache in front of Redis: what the local tier saves, against plain redis-py GETs.

    python3 run.py bench nearcache [--keys 2000000] [--hot 100000] [--reads 200000] [--quick]

One ``redis-server`` (no persistence) holds ``--keys`` keys (msgpack values of about
20 bytes, a TTL of an hour), filled with pipelined SETs. Three member processes each
host ``node.cache("nc", ttl=3600, max_entries=--hot, backing=redis://...)`` and read keys
drawn from one Zipf distribution (s = ``--zipf``) over all the keys, as an application
would: first ``--warm`` reads to warm the local tier, then ``--reads`` timed reads. In
the same run, the same members read the same number of keys from the same distribution
with plain redis-py ``GET`` (one client each, no cache): that is the store without a
near cache. Reported per mode: get p50/p99, reads/s per member, and the store's reads
per second (with the near cache: reads the members sent to Redis after a local miss).

Then a burst: the three members each start 100 threads that ``fetch`` 10 new keys (10
callers a key a member) with a loader standing in for a 200 ms upstream; counted are
the loader calls and the backing reads of the whole cluster (the bar: 10 and 10).
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import random
import sys
import threading
import time
from typing import Any

from harness import (
    Cleanup,
    RedisServer,
    as_child,
    child,
    environment,
    format_table,
    quantile,
    redis_binary,
    save,
    serve,
    wait_for,
)

CACHE = "nc"
PREFIX = f"shoal:{CACHE}:"


def zipf_ranks(n: int, s: float, count: int, seed: int) -> list[int]:
    """``count`` ranks in 0..n-1 drawn from Zipf(s): rank r with weight 1 / (r + 1) ** s."""
    cumulative = list(itertools.accumulate(1.0 / (r + 1) ** s for r in range(n)))
    total = cumulative[-1]
    rng = random.Random(seed)
    return [bisect.bisect_left(cumulative, rng.random() * total) for _ in range(count)]


def percentile_us(samples: list[int], q: float) -> float:
    value = quantile(sorted(samples), q)
    return 0.0 if value is None else value / 1000.0


# -- a member process -----------------------------------------------------------------------


def member(url: str, seed: str, hot: int, keys: int, zipf: float, index: int) -> None:
    import redis

    from shoal import Node

    node = Node(seeds=[seed] if seed else [], gc_freeze=True)
    cache = node.cache(CACHE, ttl=3600, max_entries=hot, backing=url)
    node.start()
    plain = redis.Redis.from_url(url)
    draws: dict[str, list[int]] = {}

    def ready() -> dict[str, Any]:
        return {"ready": node.wait_ready(0), "address": node.address, "peers": len(node.members()) - 1}

    def draw(count: int, seed: int) -> int:
        draws[f"{count}:{seed}"] = zipf_ranks(keys, zipf, count, seed)
        return count

    def near(count: int, seed: int, timed: bool) -> dict[str, Any]:
        """Reads through the near cache; latency of each get in ns (when timed)."""
        ranks = draws[f"{count}:{seed}"]
        before = cache.stats()
        samples: list[int] = []
        clock = time.perf_counter_ns
        get = cache.get
        started = time.perf_counter()
        for r in ranks:
            if timed:
                t = clock()
                get(f"k{r}")
                samples.append(clock() - t)
            else:
                get(f"k{r}")
        elapsed = time.perf_counter() - started
        after = cache.stats()
        return {
            "elapsed": elapsed,
            "samples": samples,
            "backing_reads": after["backing_reads"] - before["backing_reads"],
            "entries": after["entries"],
        }

    def direct(count: int, seed: int) -> dict[str, Any]:
        """The same reads with plain redis-py GET (and msgpack decoding, as the cache does)."""
        import msgpack

        ranks = draws[f"{count}:{seed}"]
        samples: list[int] = []
        clock = time.perf_counter_ns
        get = plain.get
        started = time.perf_counter()
        for r in ranks:
            t = clock()
            msgpack.unpackb(get(f"{PREFIX}k{r}"))
            samples.append(clock() - t)
        return {"elapsed": time.perf_counter() - started, "samples": samples}

    def burst(keys: list[str], callers: int, load_ms: float) -> dict[str, Any]:
        calls = 0
        lock = threading.Lock()

        def upstream(key: str) -> str:
            nonlocal calls
            with lock:
                calls += 1
            time.sleep(load_ms / 1000)  # the upstream's own latency
            return f"loaded {key}"

        right = 0
        start = threading.Barrier(callers)  # a burst: every caller in before the first load ends
        entered: list[float] = []

        def caller(key: str) -> None:
            nonlocal right
            start.wait()
            entered.append(time.perf_counter())
            if cache.fetch(key, upstream) == f"loaded {key}":
                with lock:
                    right += 1

        threads = [threading.Thread(target=caller, args=(keys[i % len(keys)],)) for i in range(callers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        return {"calls": calls, "right": right, "spread_ms": (max(entered) - min(entered)) * 1000}

    def reads() -> int:
        return int(cache.stats()["backing_reads"])

    serve(
        {"address": node.address},
        {
            "ready": ready,
            "draw": draw,
            "near": near,
            "direct": direct,
            "burst": burst,
            "reads": reads,
            "stats": lambda: cache.stats(),
        },
    )
    node.stop()


# -- the run --------------------------------------------------------------------------------


def fill(client: Any, keys: int) -> float:
    import msgpack

    started = time.perf_counter()
    batch = 10_000
    for first in range(0, keys, batch):
        pipe = client.pipeline(transaction=False)
        for i in range(first, min(first + batch, keys)):
            pipe.set(f"{PREFIX}k{i}", msgpack.packb(f"value-{i:012d}"), px=3600_000)
        pipe.execute()
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=2_000_000, help="keys in Redis (default 2,000,000)")
    parser.add_argument("--hot", type=int, default=100_000, help="max_entries of each member's local tier")
    parser.add_argument("--zipf", type=float, default=1.0, help="Zipf exponent of the reads (default 1.0)")
    parser.add_argument("--warm", type=int, default=300_000, help="untimed reads per member first")
    parser.add_argument("--reads", type=int, default=200_000, help="timed reads per member and mode")
    parser.add_argument("--quick", action="store_true", help="100k keys, 10k hot, 20k reads: a smoke run")
    parser.add_argument("--no-save", action="store_true", help="print only; do not write bench/results/")
    args = parser.parse_args()
    if args.quick:
        args.keys, args.hot, args.warm, args.reads = 100_000, 10_000, 30_000, 20_000
    binary = redis_binary()
    if binary is None:
        print("redis-server is not installed (apt-get install redis-server)")
        return 1
    out = [environment(), "the machine is shared with other work: figures move between runs"]
    print(out[0])

    with Cleanup() as run:
        server = run.add(RedisServer(binary))
        client = server.client()
        seconds = fill(client, args.keys)
        line = f"filled {args.keys:,} keys into Redis with pipelined SETs in {seconds:.1f} s"
        out.append(line)
        print(line, flush=True)
        url = f"redis://127.0.0.1:{server.port}/0"
        common = {"url": url, "hot": args.hot, "keys": args.keys, "zipf": args.zipf}
        first = run.add(child("bench/nearcache.py", member, seed="", index=0, **common))
        members = [first] + [
            run.add(child("bench/nearcache.py", member, seed=first.hello["address"], index=i, **common)) for i in (1, 2)
        ]
        wait_for(lambda: all(m.call("ready")["ready"] and m.call("ready")["peers"] == 2 for m in members), 60, "mesh")

        for i, m in enumerate(members):  # every member draws its own keys, from one distribution
            m.send("draw", count=args.warm, seed=100 + i)
            m.send("draw", count=args.reads, seed=200 + i)
        for m in members:
            m.result(300)
            m.result(300)

        for i, m in enumerate(members):
            m.send("near", count=args.warm, seed=100 + i, timed=False)
        warm = [m.result(1800) for m in members]
        for i, m in enumerate(members):
            m.send("near", count=args.reads, seed=200 + i, timed=True)
        near = [m.result(1800) for m in members]
        for i, m in enumerate(members):
            m.send("direct", count=args.reads, seed=200 + i)
        direct = [m.result(1800) for m in members]

        keys = [f"burst-{i}" for i in range(10)]
        reads_before = [m.call("reads") for m in members]
        for m in members:
            m.send("burst", keys=keys, callers=100, load_ms=200)
        bursts = [m.result(120) for m in members]
        burst_reads = sum(m.call("reads") - b for m, b in zip(members, reads_before, strict=True))
        stats = [m.call("stats") for m in members]

    near_samples = [s for r in near for s in r["samples"]]
    direct_samples = [s for r in direct for s in r["samples"]]
    total = args.reads * len(members)
    backing = sum(r["backing_reads"] for r in near)
    near_rate = sum(args.reads / r["elapsed"] for r in near)
    direct_rate = sum(args.reads / r["elapsed"] for r in direct)
    near_backing_rate = sum(r["backing_reads"] / r["elapsed"] for r in near)
    rows = [
        [
            "shoal near cache (backing=redis://)",
            f"{1 - backing / total:.1%}",
            f"{percentile_us(near_samples, 0.5):.1f}",
            f"{percentile_us(near_samples, 0.99):.1f}",
            f"{near_rate / len(members):,.0f}",
            f"{near_backing_rate:,.0f}",
        ],
        [
            "plain redis-py GET (no near cache)",
            "-",
            f"{percentile_us(direct_samples, 0.5):.1f}",
            f"{percentile_us(direct_samples, 0.99):.1f}",
            f"{direct_rate / len(members):,.0f}",
            f"{direct_rate:,.0f}",
        ],
    ]
    table = format_table(
        ["reads from 3 members", "local hits", "get p50 us", "get p99 us", "reads/s a member", "Redis reads/s"],
        rows,
        title=(
            f"{args.keys:,} keys in Redis, {args.hot:,} hot a member, Zipf {args.zipf} over all keys, "
            f"{args.reads:,} timed reads a member after {args.warm:,} to warm; one loop a member"
        ),
    )
    out += ["", table]
    out.append(
        f"\nwith the near cache: {backing:,} of {total:,} reads went to Redis "
        f"({1000 * backing / total:.0f} per 1,000 reads; without it: 1,000); local entries after the warm-up: "
        + ", ".join(f"{r['entries']:,}" for r in warm)
    )
    calls = sum(b["calls"] for b in bursts)
    answered = sum(b["right"] for b in bursts)
    out.append(
        f"\nburst: 3 members x 100 fetches of 10 new keys (a 200 ms loader): {calls} loader calls, "
        f"{burst_reads} backing reads, {answered} of 300 callers answered with the loaded value (bar: 10 and 10); "
        f"callers entered within {max(b['spread_ms'] for b in bursts):.0f} ms on each member"
    )
    out.append(
        "member figures: "
        + "; ".join(
            f"invalidations {s['invalidations']}, tracking resets {s['tracking_resets']}, errors {s['backing_errors']}"
            for s in stats
        )
    )
    text = "\n".join(out)
    print("\n".join(out[3:]))
    if not args.no_save and not args.quick:
        print(f"\nsaved to {save('nearcache', text)}")
    return 0


if __name__ == "__main__":
    if not as_child(globals()):
        sys.exit(main())
