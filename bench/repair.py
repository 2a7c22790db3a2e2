#!/usr/bin/env python3
"""Anti-entropy on a large cache: the loop stall of repair rounds, before and after a change.

    python3 run.py bench repair [--sizes 1000000,2000000] [--before REV] [--windows 5] [--interval 2]

Two members hold the same N entries (a donor filled through ``Cache.set_many``, ttl=3600 and
``max_entries=N``; a receiver warm-booted from it), and both open a repair round every
``--interval`` seconds (the default is 10 s; shorter here so a window holds several rounds).
With nothing to repair, a round is two digests compared: what it costs is computing them.
``donor stall`` is the longest gap between ticks of a 1 ms asyncio timer on the donor's loop
over a window of ``3 x interval + 1`` seconds (ideal ~1.1 ms; ``idle`` is the same timer
before the receiver exists, the machine's noise floor), per window, median [min-max].

``--before REV`` runs the same scenario with shoal's ``src/`` as of REV (extracted with git
archive) first, so both lines come from one run on one machine. Measuring starts once the
donor's fill is settled (a member that just loaded or wrote a million entries has digest
work pending: ``--warmup`` seconds, by default 5 s per 100,000 entries folded at the tick).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import ROOT, Cleanup, Member, environment, format_table, revisions, save, spread

MEMBER = "bench/member.py"
TTL = 3600


def measure(n: int, src: Path | None, interval: float, windows: int, warmup: float) -> dict[str, Any]:
    opts = ["--ttl", str(TTL), "--bound", str(n), "--anti-entropy", str(interval)]
    with Cleanup() as run:
        donor = run.add(Member(MEMBER, "donor", "--n", str(n), *opts, timeout=900, src=src))
        idle = donor.call("idle_stall", seconds=2.0)["max_gap_ms"]
        receiver = run.add(
            Member(
                MEMBER, "receiver", "--seed", donor.hello["address"], "--timeout", "300", *opts, timeout=400, src=src
            )
        )
        if not receiver.hello["ready"] or receiver.hello["entries"] != n:
            raise RuntimeError(f"receiver not warm: {receiver.hello['warm_boot']}")
        time.sleep(warmup)
        stalls: list[float] = []
        before = donor.call("stats")["caches"]["c"]
        for _ in range(windows):
            donor.call("stall_reset")
            time.sleep(3 * interval + 1)
            stalls.append(donor.call("stall")["max_gap_ms"])
        after = donor.call("stats")["caches"]["c"]
    return {
        "idle": idle,
        "stalls": stalls,
        "rounds": after["repair_rounds"] - before["repair_rounds"],
        "repaired": after["keys_repaired"] - before["keys_repaired"],
        "fill_s": donor.hello["fill_s"],
        "shoal": donor.hello["shoal"],
    }


def digest_costs(n: int, rounds: int = 5) -> str:
    """In one process: what opening a round costs the loop, the scan (before) against the kept
    digests (after), on a hosted cache of ``n`` entries filled through the public API."""
    import cProfile
    import io
    import pstats
    import statistics

    from shoal.cache import hosted
    from shoal.clock import HybridClock
    from shoal.replication import digests, settled_before

    cache, replica = hosted("c", TTL, n, serializer=None, clock=HybridClock(1, time.time), tombstone_ttl=60)
    for start in range(0, n, 10_000):
        cache.set_many({f"user:{i:06d}": f"acct-{i:08d}" for i in range(start, min(n, start + 10_000))})
    replica.sweep(time.time())  # the node's tick: an addition is folded a second (RIPE) after it is seen
    wall = time.time() + 2.0  # the fill settled
    while replica.sweep(wall):
        pass
    horizon = settled_before(wall)
    assert replica.digests(wall, horizon) == digests(replica.entries(), wall, horizon)
    scan, kept = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        digests(replica.entries(), wall, horizon)
        scan.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        replica.digests(wall, horizon)
        kept.append((time.perf_counter() - t0) * 1000)
    profile = cProfile.Profile()
    profile.enable()
    digests(replica.entries(), wall, horizon)
    replica.digests(wall, horizon)
    profile.disable()
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats("cumulative").print_stats("digest|entries", 6)
    lines = [ln for ln in out.getvalue().splitlines() if "digest" in ln or "entries" in ln or "ncalls" in ln]

    def cell(xs: list[float]) -> str:
        return f"{statistics.median(xs):.1f} ms [{min(xs):.1f}-{max(xs):.1f}]"

    return "\n".join(
        [
            f"The digests of one round, {n:,} entries, in one process ({rounds} times, median [min-max]):",
            f"  before: replication.digests(replica.entries(), ...), a scan   {cell(scan)}",
            f"  after:  Replica.digests (digest.Ledger.read), kept as written  {cell(kept)}",
            "  (before, the scan ran in slices of 4,000 entries, one per tick, after a snapshot of every entry)",
            "cProfile of one of each (the lines that moved):",
            *("  " + ln.strip() for ln in lines),
        ]
    )


READ_CASES = (4_096, 32_768, 131_072)


def read_child() -> None:
    """Printed as one JSON line: what a round's read of the kept digests costs the loop (ms, best
    of 3) with P records pending, P in ``READ_CASES``: a backlog of settled ones (the tick not
    caught up: after a burst, a boot, a dump) and the last second's writes (newer than the line)."""
    import json

    from shoal.clock import NODE_BITS
    from shoal.digest import Behind, horizon_of
    from shoal.replication import settled_before
    from shoal.store import Store

    out: dict[str, dict[int, float | str]] = {"settled": {}, "young": {}}
    for kind, p in [(k, p) for k in out for p in READ_CASES]:
        wall = 1_800_000_000.0
        store = Store(None)
        store.keep_digests(0)
        stamp = horizon_of(int(wall * 1000) - 100)  # the first version of 100 ms ago; counter i below
        for i in range(p):
            store.write(f"user:{i:06d}", f"acct-{i:08d}", wall + TTL, stamp + (i << NODE_BITS), wall)
        ledger = store._ledger
        assert ledger is not None
        if kind == "settled":
            ledger.fold(wall, 0)
            wall += 2.0  # ripe and settled, none folded: what a fold left behind, as its backlog says
            ledger.fold(wall, 0)
        times: list[float] = []
        for _ in range(3):
            t0 = time.perf_counter()
            try:
                store.digests(wall + 0.5, settled_before(wall + 0.5))
            except Behind:
                out[kind][p] = "waits"
                break
            times.append((time.perf_counter() - t0) * 1000)
        else:
            out[kind][p] = min(times)
    print(json.dumps(out), flush=True)


def read_costs(variants: list[tuple[str, Path | None]]) -> str:
    rows = []
    for label, src in variants:
        got = Member("bench/repair.py", "--read-child", timeout=600, src=src).hello
        for kind, what in (("settled", "ripe, settled, not folded"), ("young", "the last second's writes")):
            cells = [got[kind][str(p)] for p in READ_CASES]
            rows.append([label, what, *(c if isinstance(c, str) else f"{c:.1f}" for c in cells)])
    return format_table(
        ["shoal", "records pending", *(f"{p:,}: ms" for p in READ_CASES)],
        rows,
        title="What a round's read of the kept digests costs the loop, with P records not folded yet (best of 3)",
        notes=[
            "'waits': the read raises Behind and the round waits for the tick to fold them (digest.READ_BACKLOG).",
            "A settled record is hashed as a fold hashes it; one newer than the round's line is not.",
        ],
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000000,2000000")
    parser.add_argument("--before", default="", help="a git revision to measure first (e.g. main)")
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--windows", type=int, default=5)
    parser.add_argument("--warmup", type=float, default=-1.0, help="seconds after the boot (default: by size)")
    parser.add_argument("--read-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--reads-only", action="store_true", help="only the read costs (and --before's)")
    args = parser.parse_args()
    if args.read_child:
        read_child()
        return 0
    if args.reads_only:
        with tempfile.TemporaryDirectory() as tmp:
            text = f"{environment()}\n\n{read_costs(revisions(args.before, Path(tmp)))}"
        print(text)
        save("repair", text, append=True)
        return 0
    sizes = [int(x) for x in args.sizes.split(",")]
    head = environment()
    rows: list[list[object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        variants = revisions(args.before, Path(tmp))
        for n in sizes:
            warmup = args.warmup if args.warmup >= 0 else 5.0 + 5.0 * n / 100_000
            for label, src in variants:
                got = measure(n, src, args.interval, args.windows, warmup)
                print(f"  {n:,} {label}: {got}", file=sys.stderr, flush=True)
                rows.append(
                    [
                        f"{n:,}",
                        label,
                        spread(got["stalls"], ".1f"),
                        f"{got['idle']:.1f}",
                        got["rounds"],
                        got["repaired"],
                    ]
                )
            rows.append(None)  # type: ignore[arg-type]
        reads = read_costs(variants)
    table = format_table(
        ["entries", "shoal", "donor stall ms, median [min-max]", "idle ms", "rounds", "keys repaired"],
        rows[:-1],
        title=f"Repair rounds on a large cache: donor loop stall per {3 * args.interval + 1:.0f} s window "
        f"({args.windows} windows, a round every {args.interval:g} s on each member)",
        notes=[
            "Both members hold the same N entries (ttl=3600, max_entries=N); nothing to repair, so a round",
            "costs its digests. stall: longest gap between ticks of a 1 ms timer on the donor's loop.",
            "rounds: repair rounds the donor opened during the windows (it answers the receiver's too).",
        ],
    )
    text = f"{head}\n\n{table}\n\n{digest_costs(max(sizes))}\n\n{reads}"
    print(text)
    path = save("repair", text)
    print(f"saved to {path.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
