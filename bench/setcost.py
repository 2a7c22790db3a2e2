#!/usr/bin/env python3
"""What a set on a clustered cache costs, in wall time and in CPU, before and after a change.

    python3 run.py bench setcost [--before REV] [--rounds 5]

On a machine shared with other work, wall-clock ns/op swing several-fold from one minute
to the next (bench/local.py's rows); the CPU a process spends per write does much less.
So each measurement runs in its own process: a started Node with one peer (a member
process, the same revision), its cache ``ttl=3600, max_entries=1M`` filled with 100k
keys through ``set``, then 200,000 ``set``\\ s of random keys (str values) timed; the CPU
time is the process's (all threads: the writer and the node's loop thread, which flushes
the writes and, after the change, folds the digests), taken until the node's outbox is
empty. ``cachebox.VTTLCache.insert`` of the same keys, in the same process right after,
is the ratio's denominator. Variants alternate round by round; median [min-max].
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import Member, environment, format_table, outbox_drained, revisions, save

N, OPS, TTL = 100_000, 200_000, 3600


def child(n: int) -> None:
    import random

    import cachebox

    import shoal

    peer = Member("bench/member.py", "fleet", "--cache", "bench", "--ttl", str(TTL), "--secret", "")
    node = shoal.Node(seeds=[peer.hello["address"]])
    cache = node.cache("bench", ttl=TTL, max_entries=1_000_000)
    node.start()
    node.wait_ready(30)
    keys = [f"user:{i}" for i in range(n)]
    values = [f"acct-{i:08d}" for i in range(n)]
    for k, v in zip(keys, values, strict=True):
        cache.set(k, v)
    rng = random.Random(7)
    idx = [rng.randrange(n) for _ in range(OPS)]
    seq_k, seq_v = [f"user:{i}" for i in idx], [values[i] for i in idx]
    set_ = cache.set

    time.sleep(2.0)
    outbox_drained(node, "bench")
    c0, t0 = time.process_time(), time.perf_counter()
    for k, v in zip(seq_k, seq_v, strict=True):
        set_(k, v)
    wall = time.perf_counter() - t0
    outbox_drained(node, "bench")
    cpu, wall_drained = time.process_time() - c0, time.perf_counter() - t0
    box: Any = cachebox.VTTLCache(1_000_000)
    insert = box.insert
    for k, v in zip(keys, values, strict=True):
        insert(k, v, float(TTL))
    ttl = float(TTL)
    b0, t0 = time.process_time(), time.perf_counter()
    for k, v in zip(seq_k, seq_v, strict=True):
        insert(k, v, ttl)
    box_wall, box_cpu = time.perf_counter() - t0, time.process_time() - b0
    print(
        f'{{"wall": {wall / OPS * 1e9}, "cpu": {cpu / OPS * 1e9}, "drained": {wall_drained / OPS * 1e9}, '
        f'"box_wall": {box_wall / OPS * 1e9}, "box_cpu": {box_cpu / OPS * 1e9}}}',
        flush=True,
    )
    node.stop()
    peer.stop()


def cell(xs: list[float], fmt: str = ",.0f") -> str:
    return f"{statistics.median(xs):{fmt}} [{min(xs):{fmt}}-{max(xs):{fmt}}]"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", default="")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--keys", type=int, default=N, help="keys held (digests are kept from digest.KEEP_FROM)")
    args = parser.parse_args()
    if args.child:
        child(args.keys)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        variants = revisions(args.before, Path(tmp))
        got: dict[str, list[dict[str, float]]] = {label: [] for label, _ in variants}
        for _ in range(args.rounds):
            for label, src in variants:
                os.environ.pop("SHOAL_SRC", None)  # the child's peer runs the same revision (harness.child_env)
                if src is not None:
                    os.environ["SHOAL_SRC"] = str(src)
                m = Member("bench/setcost.py", "--child", "--keys", str(args.keys), timeout=600, src=src)
                got[label].append(m.hello)
                m.stop()
                print(f"  {label}: {m.hello}", file=sys.stderr, flush=True)
    rows = []
    for label, runs in got.items():
        wall = [r["wall"] for r in runs]
        cpu = [r["cpu"] for r in runs]
        ratio_wall = [r["wall"] / r["box_wall"] for r in runs]
        ratio_cpu = [r["cpu"] / r["box_cpu"] for r in runs]
        drained = [r.get("drained", math.nan) for r in runs]
        ratio_drained = [r.get("drained", math.nan) / r["box_wall"] for r in runs]
        rows.append(
            [
                label,
                cell(wall),
                cell(ratio_wall, ".1f"),
                cell(cpu),
                cell(ratio_cpu, ".1f"),
                cell(drained),
                cell(ratio_drained, ".1f"),
            ]
        )
    table = format_table(
        [
            "shoal",
            "set wall ns/op",
            "x cachebox (wall)",
            "set CPU ns/op (all threads)",
            "x cachebox (CPU)",
            "wall until drained",
            "x cachebox",
        ],
        rows,
        title=f"set on a clustered cache (Node + 1 peer), {OPS:,} random sets over {args.keys:,} keys, ttl + bound; "
        f"{args.rounds} processes per variant, median [min-max]",
        notes=[
            "x cachebox: the same round's ratio to cachebox.VTTLCache.insert in the same process (bar: <= 10x).",
            "CPU: process time of the writer's process (writer + the node's loop thread) until the outbox is empty.",
            "wall until drained: the sets and then until the outbox is empty (bench/local.py's clustered set).",
        ],
    )
    text = f"{environment()}\n\n{table}"
    print(text)
    save("setcost", text, append=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
