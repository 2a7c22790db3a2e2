"""Release N runs beside release N-1: a rolling upgrade and its rollback keep the cache warm.

N-1 is the previous release recorded in RELEASES, built from this repository's history
(tests/support/releases.py); N is the working tree. Each test also runs against the working
tree with its newer protocols switched off (``protocol_max=PROTOCOL_MIN``), so the negotiation and the
features gated by it (versions.py) are exercised whatever N-1 is.

The rolling test is an orchestrator's: three members of N-1 take writes throughout; each in
turn is stopped and a member of N starts on its address, and the next one is stopped the
moment the previous one is ready; then the same back to N-1. At each ready the new member
holds every write acknowledged before it started (a write acknowledged later may still be
on its way), and its warm boot came from a peer, of the other release on the first step of
each way (N from an N-1 donor, then N-1 from an N donor).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from shoal.handshake import cluster_key
from shoal.snapshot import read, snapshot_key
from shoal.versions import UNKNOWN_RELEASE, speaks
from shoal.wire import PROTOCOL_MIN
from tests.faults.harness import FAST, SharedMember, Writer, lost, meshed, settle, start
from tests.support.cluster import ROOT, Cluster, Member, cluster, wait_until
from tests.support.releases import Release, previous, self_at

pytestmark = pytest.mark.slow
__all__ = ["cluster"]  # a fixture

NEW = Release("the working tree", ROOT)
SECRET = "shoal-upgrade-test-secret"


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Release:
    return previous(tmp_path_factory.mktemp("releases"))


@pytest.fixture(params=["recorded release", "this tree at its oldest protocol"])
def old(request: pytest.FixtureRequest) -> Iterator[Release]:
    yield request.getfixturevalue("recorded") if request.param == "recorded release" else self_at(PROTOCOL_MIN)


def _read(root: Path, module: str, name: str) -> str:
    """A module-level constant of a tree, as written (a string literal or a number; a comment may follow)."""
    found = re.search(rf"^{name}\s*=\s*(\"[^\"]*\"|'[^']*'|\d+)", (root / "src" / "shoal" / module).read_text(), re.M)
    assert found, f"{name} in {root}/src/shoal/{module}"
    return found.group(1).strip("\"'")


def protocol_max(release: Release) -> int:
    """The newest protocol members of ``release`` offer: their tree's, or less if configured."""
    return int(release.options.get("protocol_max", _read(release.root, "wire.py", "PROTOCOL_VERSION")))


def version_of(release: Release) -> str:
    return _read(release.root, "__init__.py", "__version__")


@dataclass
class Upto:
    """The writes a writer had acknowledged at one moment (harness.Written)."""

    prefix: str
    keys: int
    writer: Writer

    def expected(self, i: int) -> str:
        return self.writer.expected(i)


BOOT = {**FAST, "boot_wait": 5.0}
"""A member given seeds waits this long for its first peer before it boots alone, ready and empty:
ample on a loaded machine, where FAST's one second may not be."""


def launch(cluster: Cluster, release: Release, **kw: Any) -> SharedMember:
    return start(cluster, root=release.root, secret=SECRET, **BOOT, **release.options, **kw)


def check_versions(member: Member, runs: dict[str, Release], mine: Release) -> None:
    """A member of this tree lists, for each peer up, the protocol both speak and the peer's release
    (which the peer says right after the handshake: it may arrive a moment after the ready)."""
    if mine.root != ROOT:
        return  # N-1's member list is N-1's business (0.1 has neither field)

    def wrong() -> list[tuple[object, ...]]:
        found = []
        for peer in member.cmd("members"):
            if peer["state"] == "up":
                theirs = runs[peer["id"]]
                protocol = min(protocol_max(mine), protocol_max(theirs))
                release = version_of(theirs) if speaks(protocol, "release") else UNKNOWN_RELEASE
                if (peer["protocol"], peer["version"]) != (protocol, release):
                    found.append((peer, theirs.name, protocol, release))
        return found

    try:
        wait_until(lambda: not wrong(), 10)
    except AssertionError:
        raise AssertionError(f"{member.address} lists (peer, its release, protocol, release): {wrong()}") from None


def roll(
    cluster: Cluster, members: list[SharedMember], i: int, release: Release, writer: Writer, runs: dict[str, Release]
) -> tuple[SharedMember, Release, str]:
    """Replace member ``i`` by a member of ``release`` on its address, as an orchestrator would;
    the new member, the release of its donor and what its boot took."""
    victim, survivor = members[i], members[(i + 1) % len(members)]
    writer.through(survivor)
    writer.flushed_from(victim, witness=survivor)
    victim.stop()
    writer.wait_for(50)  # writes the stopped member cannot see live
    before = Upto(writer.prefix, writer.acked, writer)
    others = [m for m in members if m is not victim]
    started = time.monotonic()
    reborn = launch(cluster, release, listen=victim.address, seeds=[m.address for m in others])
    runs[reborn.id] = release
    if reborn.cmd("ready", timeout=60) is not True:
        refusals = [f"{m.address}: {line}" for m in others for line in list(m.log) if "closing connection" in line]
        raise AssertionError(
            f"{release.name} at {reborn.address} never ready; its log ends:\n{''.join(list(reborn.log)[-10:])}"
            f"{len(refusals)} connections refused by the others, the last:\n{''.join(refusals[-3:])}"
        )
    took = time.monotonic() - started
    missing = lost(reborn, before)  # at ready, before anything else: the boot's own doing
    boot = reborn.cmd("stats")["caches"]["c"]["warm_boot"]
    assert missing == 0, (
        f"{release.name} at {reborn.address}: {missing} of {before.keys} acknowledged writes missing at ready; "
        f"warm boot {boot}; its log ends:\n{''.join(list(reborn.log)[-15:])}"
    )
    donors = {m.id: runs[m.id] for m in others}
    assert boot["state"] == "warm" and boot["donor"] in donors, boot
    check_versions(reborn, runs, release)
    return reborn, donors[boot["donor"]], f"ready in {took:.1f} s, {boot['entries']} entries"


def test_a_rolling_upgrade_from_the_previous_release_and_its_rollback_keep_every_acknowledged_write(
    cluster: Cluster, old: Release
) -> None:
    runs: dict[str, Release] = {}
    first = launch(cluster, old)
    members = [first, *(launch(cluster, old, seeds=[first.address]) for _ in range(2))]
    runs.update({m.id: old for m in members})
    assert all(m.cmd("ready", timeout=60) is True for m in members)
    wait_until(lambda: meshed(members), 30, what="a full mesh of three")
    writer = Writer(members[-1], prefix="up").start()
    writer.wait_for(200)
    steps: list[str] = []
    try:
        for way, release in (("upgrade", NEW), ("rollback", old)):
            for i in range(len(members)):
                members[i], donor, boot = roll(cluster, members, i, release, writer, runs)
                steps.append(f"{way} {i + 1}: {release.name} {boot} warm from {donor.name}")
                if i == 0:  # both others run the release it replaces
                    assert donor is not release, steps[-1]
    finally:
        acked = writer.stop()
    missing = settle(members, [writer])
    logs = {m.address: m for m in members}
    print(f"\nrolling upgrade {old.name} -> {NEW.name} -> {old.name}: {acked} writes acknowledged")
    print("\n".join(f"  {step}" for step in steps))
    assert missing == {address: 0 for address in logs}
    for text in ("closing connection", "refused a message of kind", "Traceback"):
        said = {m.address: m.logged(text) for m in cluster.members if isinstance(m, SharedMember)}
        assert not any(said.values()), f"{text!r} logged: {said}"


@pytest.mark.parametrize("way", ["N-1 writes, N reads", "N writes, N-1 reads"])
def test_a_snapshot_file_of_one_release_boots_a_member_of_the_other_warm(
    cluster: Cluster, recorded: Release, tmp_path: Path, way: str
) -> None:
    writer_release, reader_release = (recorded, NEW) if way.startswith("N-1") else (NEW, recorded)
    path = tmp_path / "snapshot"
    alone = launch(cluster, writer_release, snapshot_path=str(path))
    assert alone.cmd("ready", timeout=60) is True
    alone.cmd("set_range", prefix="snap", start=0, count=500, value="v")
    alone.stop()  # a graceful stop writes the file
    key = snapshot_key(cluster_key(SECRET.encode()))
    entries = read(path, time.time(), key)
    assert len(entries["c"]) == 500
    reader = launch(cluster, reader_release, snapshot_path=str(path))
    assert reader.cmd("ready", timeout=60) is True
    boot = reader.cmd("stats")["caches"]["c"]["warm_boot"]
    assert (boot["state"], boot["entries"]) == ("snapshot", 500)
    assert reader.cmd("values", prefix="snap", start=0, count=500) == [f"v{i}" for i in range(500)]
