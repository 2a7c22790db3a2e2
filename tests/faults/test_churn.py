"""Churn as an orchestrator makes it: the next member is stopped the moment the previous one reports ready.

Three members. In turn, each is stopped (gracefully, or with SIGKILL) while a
survivor takes 200 writes, spread over the step (10 every 0.1 s, from the stop
on, so they go on while the member boots again); it is restarted at its address,
and as soon as it reports ready the next one goes. Ready is the signal a Kubernetes readiness probe
acts on: from then on the member serves reads, and the orchestrator takes the next
pod away. So at that moment every member, the one just back included, must hold
every acknowledged key; no waiting for anti-entropy to catch up later.

Every write goes through a member that stays up for the step; before the
check, the last of them is seen on the third member (connected all along), so
none is merely still on the wire. Before a
member that took writes is killed with SIGKILL, the last of them is seen on another
member (one TCP stream per pair, in order: every earlier one got there too), so a
key counted missing here is one the cluster acknowledged and then failed to have
where it was needed.
"""

from __future__ import annotations

import signal
import threading

import pytest

from tests.faults.harness import SharedMember, settle, start, start_cluster
from tests.support.cluster import Cluster, Member, wait_until

pytestmark = pytest.mark.slow

MEMBERS = 3
WRITES = 200
BATCH = 10
PAUSE = 0.1  # 20 batches: about 2 s of writes, the time a member takes to come back
# The timers a deployment runs with (Node's defaults), not the fast ones of the other fault
# tests: a fast anti-entropy round would hide, between restart and ready, what readiness and
# catch-up owe; only the handshake is bounded tighter, which changes nothing here.
TIMERS: dict[str, float] = {"handshake_timeout": 2.0}


class Acked:
    """Keys acknowledged so far: ``{prefix}{i}`` holds ``v{i}`` for i below each batch's count."""

    def __init__(self) -> None:
        self.batches: dict[str, int] = {}

    def write(self, through: Member, prefix: str, count: int) -> None:
        through.cmd("set_range", prefix=prefix, start=0, count=count, value="v")
        self.batches[prefix] = count

    def missing(self, member: Member) -> int:
        lacking = 0
        for prefix, count in self.batches.items():
            values = member.cmd("values", prefix=prefix, start=0, count=count)
            lacking += sum(v != f"v{i}" for i, v in enumerate(values))
        return lacking


class StepWriter:
    """Writes ``{prefix}0`` .. ``{prefix}199`` through one member, a batch every PAUSE, on its own thread."""

    def __init__(self, acked: Acked, through: Member, prefix: str) -> None:
        self.acked, self.through, self.prefix = acked, through, prefix
        self.errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"writer {prefix}")
        self._done = threading.Event()

    def start(self) -> StepWriter:
        self._thread.start()
        return self

    def join(self) -> None:
        self._thread.join(30)
        assert not self._thread.is_alive(), "the writer is stuck"
        assert not self.errors, self.errors

    def _run(self) -> None:
        try:
            for start in range(0, WRITES, BATCH):
                self.through.cmd("set_range", prefix=self.prefix, start=start, count=BATCH, value="v")
                self.acked.batches[self.prefix] = start + BATCH
                self._done.wait(PAUSE)
        except BaseException as exc:  # reported by join(), on the test's thread
            self.errors.append(exc)


class _AckedAsWritten:
    """``Acked`` seen as one harness ``Written`` per batch, for ``settle``."""

    def __init__(self, prefix: str, count: int) -> None:
        self.prefix = prefix
        self.keys = count

    def expected(self, i: int) -> str:
        return f"v{i}"


@pytest.mark.parametrize("how", ["graceful", "kill -9"])
def test_at_each_ready_during_churn_every_member_holds_every_acknowledged_key(cluster: Cluster, how: str) -> None:
    members: list[Member] = list(start_cluster(cluster, MEMBERS, **TIMERS))
    seeds = [members[0].address]  # one static seed list for every member, restarts included
    acked = Acked()
    acked.write(members[0], "base", WRITES)
    wait_until(lambda: not any(acked.missing(m) for m in members), 20, what="the base keys on every member")

    checks: list[tuple[str, dict[str, int]]] = []
    for i in range(MEMBERS):
        victim, survivor = members[i], members[(i + 1) % MEMBERS]
        others = [m for m in members if m is not victim]
        if how == "graceful":
            victim.stop()
        else:
            # What the victim acknowledged itself must have left it: the last key is on another member.
            for prefix, count in acked.batches.items():
                last = f"{prefix}{count - 1}"
                wait_until(
                    lambda k=last, o=others: any(m.cmd("get", key=k) is not None for m in o),
                    10,
                    what=f"{last} off the victim",
                )
            victim.kill(signal.SIGKILL)
        writer = StepWriter(acked, survivor, f"churn{i}-").start()  # while the victim is away and booting
        reborn = start(cluster, listen=victim.address, seeds=seeds, **TIMERS)
        assert reborn.cmd("ready", timeout=30) is True
        writer.join()
        witness = next(m for m in others if m is not survivor)
        last = f"churn{i}-{WRITES - 1}"
        wait_until(lambda k=last, w=witness: w.cmd("get", key=k) is not None, 10, what=f"{last} on the third member")
        members[i] = reborn
        # The moment it reports ready: what every member holds now is what clients read now.
        checks.append((f"after restarting member {i}", {m.address: acked.missing(m) for m in members}))

    total = sum(sum(counts.values()) for _, counts in checks)
    later = settle(members, [_AckedAsWritten(p, n) for p, n in acked.batches.items()], timeout=30)
    print(f"\nchurn ({how}): {len(acked.batches) * WRITES} keys acknowledged")
    for label, counts in checks:
        print(f"  at ready {label}: missing per member {sorted(counts.values(), reverse=True)}")
    print(f"  missing over {len(checks) * MEMBERS} checks at ready: {total}")
    print(f"  30 s after the last ready, still missing per member: {sorted(later.values(), reverse=True)}")
    tracebacks = sum(m.logged("Traceback") for m in members if isinstance(m, SharedMember))
    assert tracebacks == 0
    assert total == 0, f"{total} acknowledged keys missing over {len(checks) * MEMBERS} checks at ready: {checks}"
    assert not any(later.values())
