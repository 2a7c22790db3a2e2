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
import json
import math
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from harness import GcWatch, Member, environment, format_table, outbox_drained, revisions, save

N, OPS, TTL = 100_000, 200_000, 3600


class Figures:
    """What one round of sets costs, split by where it goes: the writer thread's CPU, the node's
    loop thread's CPU (the flush: wire form, log, MAC, socket; the tick's sweep) and the cyclic
    GC (in whichever thread allocated), each per set."""

    def __init__(self, loop_thread: threading.Thread) -> None:
        self._loop_clock = time.pthread_getcpuclockid(loop_thread.ident or 0)
        self._collector = GcWatch()  # never reset: marks are read as differences

    def mark(self) -> tuple[float, float, float, float]:
        return time.thread_time(), time.clock_gettime(self._loop_clock), self._collector.total, time.process_time()


def child(n: int, rounds: int) -> None:
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
    box: Any = cachebox.VTTLCache(1_000_000)
    insert = box.insert
    for k, v in zip(keys, values, strict=True):
        insert(k, v, float(TTL))
    ttl = float(TTL)
    (loop_thread,) = [t for t in threading.enumerate() if t.name.startswith("shoal-node-")]
    figures = Figures(loop_thread)

    time.sleep(2.0)
    outbox_drained(node, "bench")
    out: list[dict[str, float]] = []
    for _ in range(rounds):  # one process, round after round: the steady state, not only a fresh heap
        w0, l0, g0, c0 = figures.mark()
        t0 = time.perf_counter()
        for k, v in zip(seq_k, seq_v, strict=True):
            set_(k, v)
        wall = time.perf_counter() - t0
        outbox_drained(node, "bench")
        wall_drained = time.perf_counter() - t0
        w1, l1, g1, c1 = figures.mark()
        b0, t0 = time.process_time(), time.perf_counter()
        for k, v in zip(seq_k, seq_v, strict=True):
            insert(k, v, ttl)
        box_wall, box_cpu = time.perf_counter() - t0, time.process_time() - b0
        per = 1e9 / OPS
        out.append(
            {
                "wall": wall * per,
                "cpu": (c1 - c0) * per,
                "drained": wall_drained * per,
                "writer_cpu": (w1 - w0) * per,
                "loop_cpu": (l1 - l0) * per,
                "gc": (g1 - g0) * per,
                "box_wall": box_wall * per,
                "box_cpu": box_cpu * per,
            }
        )
    print(json.dumps({**out[0], "rounds": out}), flush=True)
    node.stop()
    peer.stop()


def cell(xs: list[float], fmt: str = ",.0f") -> str:
    return f"{statistics.median(xs):{fmt}} [{min(xs):{fmt}}-{max(xs):{fmt}}]"


def steady_table(got: dict[str, list[dict[str, Any]]], args: argparse.Namespace) -> str:
    """Round 1 (a fresh heap, the table above) against rounds 2 and on of the same processes."""
    rows = []
    for label, runs in got.items():
        for name, part in (("round 1", slice(0, 1)), (f"rounds 2-{args.steady}", slice(1, None))):
            rs = [r for run in runs for r in run["rounds"][part]]
            rows.append(
                [
                    f"{label}, {name}",
                    cell([r["drained"] for r in rs]),
                    cell([r["drained"] / r["box_wall"] for r in rs], ".1f"),
                    cell([r["writer_cpu"] for r in rs]),
                    cell([r["loop_cpu"] for r in rs]),
                    cell([r["gc"] for r in rs]),
                    cell([100 * r["gc"] / r["cpu"] for r in rs], ".0f"),
                ]
            )
    return format_table(
        ["shoal", "wall until drained", "x cachebox", "writer CPU", "loop CPU", "GC", "GC % of CPU"],
        rows,
        title=f"the same, {args.steady} rounds of {OPS:,} sets in each process: ns per set, median [min-max] of rounds",
        notes=[
            "writer CPU: the thread calling set; loop CPU: the node's loop thread (the flush: wire form, catch-up",
            "log, MAC, socket; the tick: wheel sweep and compaction). GC: wall time in the cyclic collector",
            "(gc.callbacks), in either thread, within their CPU. The threads share the GIL: wall is about their sum.",
        ],
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", default="")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--keys", type=int, default=N, help="keys held (digests are kept from digest.KEEP_FROM)")
    parser.add_argument("--steady", type=int, default=1, help="rounds of sets per process (the first is the table's)")
    args = parser.parse_args()
    if args.child:
        child(args.keys, args.steady)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        variants = revisions(args.before, Path(tmp))
        got: dict[str, list[dict[str, float]]] = {label: [] for label, _ in variants}
        for _ in range(args.rounds):
            for label, src in variants:
                os.environ.pop("SHOAL_SRC", None)  # the child's peer runs the same revision (harness.child_env)
                if src is not None:
                    os.environ["SHOAL_SRC"] = str(src)
                argv = ("--child", "--keys", str(args.keys), "--steady", str(args.steady))
                m = Member("bench/setcost.py", *argv, timeout=600, src=src)
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
    if args.steady > 1:
        text += "\n\n" + steady_table(got, args)
    print(text)
    save("setcost", text, append=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
