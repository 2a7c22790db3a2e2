"""What a first touch of fresh memory costs this machine, at a 1M boot's heap size and a 5M boot's.

A warm boot of 5M entries takes more time per entry than one of 1M, and the excess is
the receiver's system time: page faults on the first touch of its heap, each dearer at 5M
(bench/results/boot_scale.txt). This script asks whether that is shoal's or the machine's:
it touches the same amounts of fresh memory with no shoal, no msgpack and no Python
objects (one byte per 4 KiB page of an anonymous mmap, each size in a new process), and
then again with small Python objects (pymalloc arenas, what a boot fills). If a fault
costs more per page at the larger size here too, the 5M boot's excess is the machine's
floor, not the member's code.

    python3 run.py bench pagefaults [--sizes 330,1580] [--rounds 3] [--save]
"""

from __future__ import annotations

import argparse
import json
import mmap
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

from harness import environment, format_table, save

PAGE = mmap.PAGESIZE


def touch_mmap(mb: int) -> dict[str, float]:
    """One write per page of a fresh anonymous mapping; the second pass is the loop alone."""
    size = mb * 1_000_000
    area = mmap.mmap(-1, size)
    passes = []
    for _ in range(2):
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        for offset in range(0, size, PAGE):
            area[offset] = 1
        t1, r1 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
        passes.append((t1 - t0, r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime, r1.ru_minflt - r0.ru_minflt))
    (wall, user, system, faults), (wall2, _, _, _) = passes
    return {"wall": wall, "user": user, "system": system, "faults": faults, "loop": wall2}


def touch_objects(mb: int) -> dict[str, float]:
    """Small objects until about ``mb`` MB are held: the pymalloc arenas a boot fills."""
    count = mb * 1_000_000 // 80  # bytes(40): a 73-byte object in an 80-byte block
    held: list[bytes] = []
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    append = held.append
    for _ in range(count):
        append(bytes(40))
    t1, r1 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    return {
        "wall": t1 - t0,
        "user": r1.ru_utime - r0.ru_utime,
        "system": r1.ru_stime - r0.ru_stime,
        "faults": r1.ru_minflt - r0.ru_minflt,
        "loop": 0.0,
    }


def run_child(kind: str, mb: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", kind, str(mb)], check=True, capture_output=True, text=True
    ).stdout
    got: dict[str, float] = json.loads(out)
    return got


def cell(xs: list[float], fmt: str) -> str:
    return f"{statistics.median(xs):{fmt}} [{min(xs):{fmt}}-{max(xs):{fmt}}]"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--sizes", default="330,1580", help="MB to touch, comma-separated (a 1M and a 5M boot's heap)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--save", action="store_true", help="append the table to bench/results/pagefaults.txt")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "MB"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        kind, mb = args.child
        print(json.dumps((touch_mmap if kind == "mmap" else touch_objects)(int(mb))))
        return 0

    sizes = [int(s) for s in args.sizes.split(",")]
    got: dict[tuple[str, int], list[dict[str, float]]] = {}
    for _ in range(args.rounds):  # sizes interleaved, so a drift of the machine hits both
        for kind in ("mmap", "objects"):
            for mb in sizes:
                got.setdefault((kind, mb), []).append(run_child(kind, mb))

    rows: list[list[Any]] = []
    for (kind, mb), runs in got.items():
        rows.append(
            [
                "anonymous mmap, 1 byte/page" if kind == "mmap" else "bytes(40) objects (pymalloc)",
                f"{mb:,}",
                cell([r["faults"] for r in runs], ",.0f"),
                cell([r["system"] for r in runs], ".2f"),
                cell([1e6 * r["system"] / max(r["faults"], 1) for r in runs], ".2f"),
                cell([1e6 * (r["wall"] - r["loop"]) / max(r["faults"], 1) for r in runs], ".2f"),
            ]
        )
    table = format_table(
        ["memory", "MB", "page faults", "system s", "system us/fault", "wall us/fault"],
        rows,
        title=f"First touch of fresh memory, no shoal: each size in a new process, median [min-max] of {args.rounds}",
    )
    notes = (
        "system us/fault: the process's system time over its minor faults (what boot_scale.txt divides the same\n"
        "way for a receiver). wall us/fault: for mmap, the touching pass minus a second pass over the same pages\n"
        "(the Python loop alone); for objects, the whole fill over its faults (includes making the objects).\n"
    )
    text = f"{table}\n{notes}\n{environment()}\n"
    print(text)
    if args.save:
        print(f"saved to {save('pagefaults', text, append=True)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
