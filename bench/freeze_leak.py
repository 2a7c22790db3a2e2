#!/usr/bin/env python3
"""What a node's gc.freeze() keeps of an application's garbage, with and without its bound.

    python3 run.py bench freeze_leak [--keys 1000000] [--seconds 300] [--payload 20000] [--first 30]

A node holding ``--keys`` entries is written 10,000 times a second (10 overwrites a
millisecond) beside an application whose requests, 100 in flight at any time, each
hold a reference cycle with ``--payload`` bytes: a request finishes 10 ms after it began
and its cycle is garbage only the cyclic collector frees. Every request alive at one of
the node's periodic freezes (every ``FREEZE_EVERY`` writes) is frozen with the entries and
never collected: the leak the bound is for (housekeeping.Collector). Each variant runs in
a fresh process:

  bounded      the node as it is: now and then a freeze first collects everything frozen,
               when the process grew beside its caches or the last such collection found
               garbage, as often as ``RECLAIM_SHARE`` allows; the first may come ``--first``
               seconds after the first freeze (``RECLAIM_FIRST``, 300 s in a node, is
               shortened so that a run shows the steady state)
  unbounded    the same without those collections: the code before them
  acyclic      bounded, beside requests that make no cycle: what an application that leaks
               nothing pays for the bound

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
    collector = node._driver._gc
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
    reclaims, reclaim_s, longest = collector.reclaims, collector.reclaim_seconds, collector.longest_reclaim
    found = collector.reclaimed
    node.stop()
    in_flight.clear()
    gc.unfreeze()
    left = gc.collect()
    out = {
        "start_rss": start_rss,
        "peak_rss": max(peak, end_rss),
        "end_rss": end_rss,
        "reclaims": reclaims,
        "reclaim_s": reclaim_s,
        "longest_s": longest,
        "writes": writes,
        "elapsed": elapsed,
        "left": left,
        "found": found,
    }
    print(json.dumps(out), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--payload", type=int, default=20_000, help="bytes each request holds")
    parser.add_argument("--first", type=float, default=30.0, help="RECLAIM_FIRST in the bounded variant")
    parser.add_argument("--child", default="")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.keys, args.seconds, args.payload, args.first)
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
