#!/usr/bin/env python3
"""Soak: steady writes and reads on three member processes, one member restarted periodically.

    python bench/soak.py [--minutes 10] [--restart-every 60] [--rate 2000] [--keys 20000]

Three members on loopback (tests/support/member.py, the processes the cluster tests
drive). For ``--minutes``:

- a writer writes ``--rate`` keys/s in batches through one member, cycling over a
  keyspace of ``--keys`` keys with a new value each pass (so the cache stays one size
  and RSS can show a leak); every acknowledged write is remembered;
- a reader reads windows of 500 keys on the members that are up (local reads);
- a probe, 10 times a second, stamps a key with the wall clock on the writer's member
  (``stamp``) and waits for it on another (``wait_key``, polled inside that process):
  the difference is the replication lag;
- every ``--restart-every`` seconds one member is restarted, in turn, alternately
  gracefully (``stop``) and with SIGKILL; the new process listens on the same address,
  seeded with the others. The writer, reader and probe move off it first, and before a
  kill the last write it acknowledged must have reached another member (asynchronous
  replication loses what is still in a killed process's outbox, by design).

Every ``--report-every`` seconds (30) it prints ops done, lag percentiles, each member's
RSS, and keys *behind*: keys whose value on a member is older than the last one
acknowledged ``--grace`` seconds before (not repaired yet; a member in its first
``--grace`` seconds after a restart is not counted). At the end the load stops, the
members are given ``--settle`` seconds to converge, and every acknowledged key is
checked on every member: a key with an older value, or none, is *lost*. Then a summary:
restarts, RSS over time (flat = no leak), lag, and keys lost. Exit status 1 if any
key was lost. Loopback only; bounded by ``--minutes`` plus the final settle.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import signal
import statistics
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from harness import ROOT, format_table, quantile

sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from tests.faults.harness import SharedMember, Writer, meshed  # noqa: E402
from tests.support.cluster import Cluster, wait_until  # noqa: E402

PREFIX = "soak"
BATCH = 50
READ_WINDOW = 500


def percentile(values: list[float], p: float) -> float:
    found = quantile(values, p / 100)
    return float("nan") if found is None else found


@dataclass
class Slot:
    """One of the three members: the current process at an address, and when it (re)started."""

    member: SharedMember
    started: float
    incarnation: int = 0


@dataclass
class Soak:
    args: argparse.Namespace
    cluster: Cluster = field(default_factory=Cluster)
    slots: list[Slot] = field(default_factory=list)
    away: int | None = None  # index of the member being restarted
    lock: threading.Lock = field(default_factory=threading.Lock)
    halt: threading.Event = field(default_factory=threading.Event)
    reads: int = 0
    read_hits: int = 0
    lags: list[float] = field(default_factory=list)  # ms
    lag_timeouts: int = 0
    restarts: list[dict[str, Any]] = field(default_factory=list)
    rss: list[tuple[float, list[str]]] = field(default_factory=list)
    acked_at: deque[tuple[float, int]] = field(default_factory=deque)
    errors: list[BaseException] = field(default_factory=list)
    # Each load thread holds its lock for one iteration: taking both locks once after
    # marking a member away waits out any iteration that might still use it.
    busy: tuple[threading.Lock, threading.Lock] = field(default_factory=lambda: (threading.Lock(), threading.Lock()))
    source: SharedMember | None = None  # the member the writer (and the probe) write through
    t0: float = 0.0
    last_acked: int = 0

    def options(self) -> dict[str, Any]:
        return {
            "failure_timeout": self.args.failure_timeout,
            "heartbeat_interval": 0.2,
            "anti_entropy_interval": self.args.anti_entropy,
            "boot_wait": 1.0,
        }

    def up(self) -> list[SharedMember]:
        """Members not being restarted."""
        with self.lock:
            return [s.member for i, s in enumerate(self.slots) if i != self.away]

    # -- load -------------------------------------------------------------------------------

    def reader(self) -> None:
        rng = random.Random(1)
        try:
            while not self.halt.is_set():
                with self.busy[0]:
                    member = rng.choice(self.up())
                    start = rng.randrange(0, self.args.keys - READ_WINDOW)
                    hits = member.cmd("get_range", prefix=PREFIX, start=start, count=READ_WINDOW)
                self.reads += READ_WINDOW
                self.read_hits += hits
                self.halt.wait(0.02)
        except BaseException as exc:
            self.errors.append(exc)

    def prober(self) -> None:
        n = 0
        try:
            while not self.halt.is_set():
                with self.busy[1]:
                    source = self.source
                    targets = [m for m in self.up() if m is not source]
                    if source is not None and targets:
                        n += 1
                        key = f"lag{n % 100}"  # a hundred keys, so the probes do not grow the cache
                        stamped = source.cmd("stamp", key=key)
                        seen = random.choice(targets).cmd("wait_key", key=key, value=stamped, timeout=5.0)
                        if seen is None:
                            self.lag_timeouts += 1
                        else:
                            self.lags.append((seen[0] - stamped) * 1000)
                self.halt.wait(0.1)
        except BaseException as exc:
            self.errors.append(exc)

    # -- checks -----------------------------------------------------------------------------

    def behind(self, member: SharedMember, writer: Writer, acked: int) -> int:
        """Keys whose value on ``member`` is older than the last acknowledged after ``acked`` writes."""
        count = 0
        keys = min(acked, self.args.keys)
        for start in range(0, keys, 5000):
            values = member.cmd("values", prefix=PREFIX, start=start, count=min(5000, keys - start))
            for i, value in enumerate(values, start):
                if writer.generation(value) < writer.generation(writer.expected(i, acked)):
                    count += 1
        return count

    def acked_before(self, seconds: float) -> int:
        """Writes acknowledged ``seconds`` ago (from the samples taken every second)."""
        cutoff = time.monotonic() - seconds
        best = 0
        for when, acked in self.acked_at:
            if when <= cutoff:
                best = acked
        return best

    # -- restarts ---------------------------------------------------------------------------

    def restart(self, k: int, writer: Writer) -> None:
        index = k % len(self.slots)
        how = "graceful" if k % 2 == 0 else "kill -9"
        victim = self.slots[index].member
        stay = [s.member for i, s in enumerate(self.slots) if i != index]
        with self.lock:
            self.away = index
            self.source = stay[0]
        for busy in self.busy:  # the readers and the probe are off the victim
            with busy:
                pass
        writer.through(stay[0])
        writer.flushed_from(victim, witness=stay[0])
        began = time.monotonic()
        if how == "graceful":
            victim.stop()
        else:
            victim.kill(signal.SIGKILL)
        reborn = SharedMember(listen=victim.address, seeds=[m.address for m in stay], **self.options())
        self.cluster.members.append(reborn)
        ready = reborn.cmd("ready", timeout=60)
        members = [*stay, reborn]
        wait_until(lambda: meshed(members), 60, what="the mesh after a restart")
        back = time.monotonic() - began
        boot = reborn.cmd("stats")["caches"]["c"]["warm_boot"]
        with self.lock:
            old = self.slots[index]
            self.slots[index] = Slot(reborn, time.monotonic(), old.incarnation + 1)
            self.away = None
        row = {
            "t": round(time.monotonic() - self.t0),
            "member": f"m{index}",
            "how": how,
            "ready": ready,
            "back s": round(back, 2),
            "boot": boot["state"],
            "boot s": boot["seconds"],
            "entries": boot["entries"],
        }
        self.restarts.append(row)
        print(f"  restart {k + 1}: {row}", flush=True)

    # -- the run ----------------------------------------------------------------------------

    def report(self, writer: Writer, since_lags: int, since: float) -> None:
        elapsed = time.monotonic() - self.t0
        lags = self.lags[since_lags:]
        with self.lock:
            slots = list(enumerate(self.slots))
            away = self.away
        snapshot = self.acked_before(self.args.grace)
        rss_row: list[str] = []
        behind: list[str] = []
        for i, slot in slots:
            rss = slot.member.rss_kb() / 1024 if slot.member.alive else float("nan")
            mark = "*" if slot.incarnation else ""
            rss_row.append(f"{rss:.0f}{mark}")
            if i == away or time.monotonic() - slot.started < self.args.grace:
                behind.append(f"m{i} -")
            else:
                behind.append(f"m{i} {self.behind(slot.member, writer, snapshot)}")
        self.rss.append((elapsed, rss_row))
        rate = (writer.acked - self.last_acked) / max(1e-9, time.monotonic() - since)
        self.last_acked = writer.acked
        print(
            f"[{elapsed:6.0f}s] writes {writer.acked} ({rate:.0f}/s)  reads {self.reads}  "
            f"lag ms p50 {percentile(lags, 50):.2f} p99 {percentile(lags, 99):.2f} (n={len(lags)})  "
            f"behind: {', '.join(behind)}  RSS MB: {' '.join(rss_row)}",
            flush=True,
        )

    def run(self) -> int:
        args = self.args
        first = SharedMember(**self.options())
        self.cluster.members.append(first)
        members = [first] + [SharedMember(seeds=[first.address], **self.options()) for _ in range(2)]
        self.cluster.members.extend(members[1:])
        for member in members:
            assert member.cmd("ready", timeout=30) is True
        wait_until(lambda: meshed(members), 30, what="the mesh of three")
        self.t0 = time.monotonic()
        self.slots = [Slot(m, self.t0) for m in members]
        self.last_acked = 0
        print(
            f"soak: {args.minutes} min, 3 members {[m.address for m in members]}, {args.rate} writes/s over "
            f"{args.keys} keys, a restart every {args.restart_every} s (graceful and kill -9 in turn)",
            flush=True,
        )

        writer = Writer(members[0], prefix=PREFIX, batch=BATCH, pause=BATCH / args.rate, keyspace=args.keys)
        self.source = members[0]
        writer.start()
        threads = [threading.Thread(target=self.reader, daemon=True), threading.Thread(target=self.prober, daemon=True)]
        for thread in threads:
            thread.start()

        end = self.t0 + args.minutes * 60
        next_report = self.t0 + args.report_every
        next_restart = self.t0 + args.restart_every
        next_sample = self.t0
        k = 0
        since, since_lags = self.t0, 0
        try:
            while (now := time.monotonic()) < end and not self.errors and not writer.errors:
                if now >= next_sample:
                    self.acked_at.append((now, writer.acked))
                    next_sample = now + 1.0
                if now >= next_restart and now + 10 < end:
                    self.restart(k, writer)
                    k += 1
                    next_restart = time.monotonic() + args.restart_every
                if now >= next_report:
                    self.report(writer, since_lags, since)
                    since, since_lags = time.monotonic(), len(self.lags)
                    next_report += args.report_every
                self.halt.wait(0.05)
        finally:
            self.halt.set()
            acked = writer.stop()
            for thread in threads:
                thread.join(10)
        if self.errors:
            raise self.errors[0]
        self.report(writer, since_lags, since)

        # Converge, then every acknowledged key on every member.
        members = [s.member for s in self.slots]
        settled = time.monotonic()
        with contextlib.suppress(AssertionError):  # what is still missing then is reported as lost
            wait_until(
                lambda: all(self.behind(m, writer, acked) == 0 for m in members), args.settle, 0.5, "convergence"
            )
        settle_s = time.monotonic() - settled
        lost = {f"m{i}": self.behind(m, writer, acked) for i, m in enumerate(members)}
        self.summary(acked, lost, settle_s)
        return 1 if any(lost.values()) else 0

    def summary(self, acked: int, lost: dict[str, int], settle_s: float) -> None:
        seconds = self.args.minutes * 60
        columns = ["t", "member", "how", "back s", "boot", "boot s", "entries"]
        print("\n" + format_table(columns, [[r[c] for c in columns] for r in self.restarts], title="restarts"))
        headers = ["t s", *(f"m{i}" for i in range(len(self.slots)))]
        rows = [[f"{t:.0f}", *row] for t, row in self.rss]
        print("\n" + format_table(headers, rows, title="RSS over time (MB; * = a restarted process)"))
        print("\n== totals ==")
        lags = self.lags
        print(f"writes acknowledged  {acked} ({acked / seconds:.0f}/s) over {self.args.keys} keys")
        hit_rate = self.read_hits / max(1, self.reads)
        print(f"reads                {self.reads} ({self.reads / seconds:.0f}/s), hit rate {hit_rate:.3f}")
        print(
            f"replication lag ms   p50 {percentile(lags, 50):.2f}  p99 {percentile(lags, 99):.2f}  "
            f"max {max(lags, default=float('nan')):.2f}  mean {statistics.fmean(lags) if lags else float('nan'):.2f}  "
            f"(n={len(lags)}, timeouts {self.lag_timeouts})"
        )
        print(f"restarts             {len(self.restarts)}; converged in {settle_s:.1f} s after the load stopped")
        print(f"keys lost            {lost}  (every acknowledged key checked on every member)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--restart-every", type=float, default=60.0, help="seconds between restarts")
    parser.add_argument("--rate", type=int, default=2000, help="writes per second")
    parser.add_argument("--keys", type=int, default=20_000, help="keyspace the writes cycle over")
    parser.add_argument("--report-every", type=float, default=30.0)
    parser.add_argument("--grace", type=float, default=5.0, help="seconds a write may take to reach a member")
    parser.add_argument("--settle", type=float, default=60.0, help="seconds to converge at the end")
    parser.add_argument("--anti-entropy", type=float, default=2.0, help="anti_entropy_interval of the members")
    parser.add_argument("--failure-timeout", type=float, default=2.0)
    args = parser.parse_args()
    if args.keys % BATCH or args.keys < READ_WINDOW:
        parser.error(f"--keys must be a multiple of {BATCH}, at least {READ_WINDOW}")
    soak = Soak(args)
    try:
        return soak.run()
    finally:
        soak.cluster.close()


if __name__ == "__main__":
    sys.exit(main())
