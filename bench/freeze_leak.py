#!/usr/bin/env python3
"""What a node's gc.freeze() keeps of an application's garbage, with and without its bound.

    python3 run.py bench freeze_leak [--keys 1000000] [--seconds 300] [--payload 20000] [--first 30]
    python3 run.py bench freeze_leak --cost 1000000,5000000

A node holding ``--keys`` entries is written 10,000 times a second (10 overwrites a
millisecond) beside an application whose requests, 100 in flight at any time, each
hold a reference cycle with ``--payload`` bytes: a request finishes 10 ms after it began
and its cycle is garbage only the cyclic collector frees. Every request alive at one of
the node's periodic freezes (every ``FREEZE_EVERY`` writes) is frozen with the entries and
never collected: the leak the bound is for (housekeeping.Collector). Each variant runs in
a fresh process:

  bounded      the node as it is: now and then a freeze first collects everything frozen,
               when the process grew beside its caches or the last such collection found
               garbage, at most ``RECLAIM_SHARE`` of the time; the first may come ``--first``
               seconds after the first freeze (``RECLAIM_FIRST``, 300 s in a node, is
               shortened so that a run shows the steady state)
  unbounded    the same without those collections: the code before them
  acyclic      bounded, beside requests that make no cycle: what an application that leaks
               nothing pays for the bound

``--cost SIZES`` measures instead what one collection of everything frozen costs (what
``housekeeping.RECLAIM_COST`` stands for): a hosted cache of each size is filled through
``set_many`` in a fresh process and frozen, then ``gc.unfreeze(); gc.collect(); gc.freeze()``
is timed there, after as many random overwrites as half the entries, and after as many
again (each overwrite makes a new entry where an old one was freed).

Printed per variant: resident memory when the writes began, at its highest and at the
end; the collections of everything frozen and the longest of them (every thread stopped
meanwhile); the writes made; the frozen garbage left at the end (collected by a last
``gc.unfreeze(); gc.collect()``).
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import sys
import time
from collections import deque

from harness import Member, environment, format_table, rss, save

VARIANTS = ["bounded", "unbounded", "acyclic"]
RATE_PER_MS = 10
IN_FLIGHT = 100


class Request:
    """An application's request: a reference cycle (self, as a traceback or a future's callbacks
    make one) holding a payload."""

    def __init__(self, payload: int, cyclic: bool) -> None:
        self.me = self if cyclic else None
        self.body = bytearray(payload)


def child(variant: str, keys: int, seconds: float, payload: int, first: float) -> None:
    import shoal
    from shoal import housekeeping

    housekeeping.RECLAIM_FIRST = float("inf") if variant == "unbounded" else first
    cyclic = variant != "acyclic"
    node = shoal.Node()
    cache = node.cache("bench", ttl=3600, max_entries=keys)
    node.start()
    node.wait_ready(30)
    names = [f"user:{i:07d}" for i in range(keys)]
    cache.set_many({k: f"acct-{i:08d}" for i, k in enumerate(names)})
    rng = random.Random(7)
    in_flight: deque[Request] = deque(maxlen=IN_FLIGHT)  # the oldest finishes as a new one begins
    start_rss = peak = rss()
    writes = 0
    began = time.monotonic()
    next_ms = began
    set_ = cache.set
    while time.monotonic() - began < seconds:
        for _ in range(RATE_PER_MS):
            set_(names[rng.randrange(keys)], f"acct-{writes:08d}")
            in_flight.append(Request(payload, cyclic))
            writes += 1
        if writes % 1000 == 0:
            peak = max(peak, rss())
        next_ms += 0.001
        pause = next_ms - time.monotonic()
        if pause > 0:
            time.sleep(pause)
    elapsed = time.monotonic() - began
    end_rss = rss()
    figures = node.stats()["frozen_collections"]  # what an operator reads of them
    node.stop()
    in_flight.clear()
    gc.unfreeze()
    left = gc.collect()
    out = {
        "start_rss": start_rss,
        "peak_rss": max(peak, end_rss),
        "end_rss": end_rss,
        "reclaims": figures["count"],
        "reclaim_s": figures["seconds"],
        "longest_s": figures["longest_seconds"],
        "writes": writes,
        "elapsed": elapsed,
        "left": left,
        "found": figures["garbage_found"],
    }
    print(json.dumps(out), flush=True)


def cost_child(keys: int) -> None:
    import shoal

    node = shoal.Node()
    cache = node.cache("bench", ttl=3600, max_entries=keys)
    node.start()
    node.wait_ready(30)
    for start in range(0, keys, 100_000):
        cache.set_many({f"user:{i:07d}": f"acct-{i:08d}" for i in range(start, min(keys, start + 100_000))})
    gc.collect()
    gc.freeze()

    def collect_all() -> float:
        began = time.perf_counter()
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        return time.perf_counter() - began

    took = [collect_all()]
    rng = random.Random(7)
    for _ in range(2):
        for _ in range(keys // 2):
            i = rng.randrange(keys)
            cache.set(f"user:{i:07d}", f"acct-{i:08d}")
        took.append(collect_all())
    node.stop()
    print(json.dumps({"took": took}), flush=True)


def cost(sizes: list[int]) -> str:
    rows: list[list[object] | None] = []
    for keys in sizes:
        m = Member("bench/freeze_leak.py", "--cost-child", str(keys), timeout=1800)
        took = m.hello["took"]
        m.stop()
        print(f"  {keys:,}: {took}", file=sys.stderr, flush=True)
        rows.append([f"{keys:,}", *(f"{t:.2f}" for t in took), *(f"{t / keys * 1e6:.2f}" for t in (took[0], took[-1]))])
    return format_table(
        ["entries", "just filled s", "after N/2 overwrites", "after N", "us/entry filled", "us/entry overwritten"],
        rows,
        title="One collection of everything frozen (gc.unfreeze(); gc.collect(); gc.freeze()), a hosted cache",
        notes=["Every thread of the process stopped for that long. One process per size."],
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--payload", type=int, default=20_000, help="bytes each request holds")
    parser.add_argument("--first", type=float, default=30.0, help="RECLAIM_FIRST in the bounded variant")
    parser.add_argument("--cost", default="", help="entries, comma-separated: time one collection instead")
    parser.add_argument("--child", default="")
    parser.add_argument("--cost-child", type=int, default=0)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.keys, args.seconds, args.payload, args.first)
        return 0
    if args.cost_child:
        cost_child(args.cost_child)
        return 0
    if args.cost:
        text = f"{environment()}\n\n{cost([int(n) for n in args.cost.split(',')])}"
        print(text)
        save("freeze_leak", text, append=True)
        return 0
    rows: list[list[object] | None] = []
    for variant in VARIANTS:
        argv = ("--child", variant, "--keys", str(args.keys), "--seconds", str(args.seconds))
        argv += ("--payload", str(args.payload), "--first", str(args.first))
        m = Member("bench/freeze_leak.py", *argv, timeout=args.seconds + 600)
        r = m.hello
        m.stop()
        print(f"  {variant}: {r}", file=sys.stderr, flush=True)
        mb = 1 << 20
        rows.append(
            [
                variant,
                f"{r['start_rss'] / mb:,.0f}",
                f"{r['peak_rss'] / mb:,.0f}",
                f"{r['end_rss'] / mb:,.0f}",
                r["reclaims"],
                f"{r['longest_s'] * 1000:,.0f}",
                f"{r['reclaim_s'] / r['elapsed']:.2%}",
                f"{r['writes'] / r['elapsed']:,.0f}",
                f"{r['found']:,}",
                f"{r['left']:,}",
            ]
        )
    table = format_table(
        [
            "freeze",
            "RSS MiB at start",
            "highest",
            "at end",
            "collections of all frozen",
            "longest ms",
            "share of time",
            "writes/s",
            "garbage they found",
            "frozen garbage left",
        ],
        rows,
        title=(
            f"{args.keys:,} entries held, {args.seconds:.0f} s of 10k writes/s beside {IN_FLIGHT} requests in flight,"
            f" each a cycle holding {args.payload:,} bytes"
        ),
        notes=[
            "frozen garbage left: objects a last gc.unfreeze(); gc.collect() freed at the end; each request",
            "is one object to the collector. RSS: VmRSS of the process, keys, values and the requests'",
            f"payloads included. The first collection of everything frozen {args.first:.0f} s after the first freeze.",
        ],
    )
    text = f"{environment()}\n\n{table}"
    print(text)
    save("freeze_leak", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
