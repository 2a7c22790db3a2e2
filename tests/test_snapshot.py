"""The snapshot file: a whole, valid file is loaded; anything else is reported and ignored, never half-loaded."""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import signal
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import msgpack
import pytest

from shoal import snapshot
from shoal.clock import NODE_BITS
from shoal.handshake import cluster_key
from shoal.serializer import MsgpackSerializer
from shoal.store import NEVER, WRITE, Entry
from tests.support.cluster import ROOT, Cluster, Member, _env, cluster, wait_until
from tests.test_cli import Serve

__all__ = ["cluster"]  # the fixture, imported for the tests below

NOW = 1_700_000_000.0
PACK = MsgpackSerializer().dumps
SLOW = {"failure_timeout": 1.0, "heartbeat_interval": 0.2, "boot_wait": 0.5}


def version(hlc: int, node: int = 7) -> int:
    return (hlc << NODE_BITS) | node


def entries(n: int, prefix: str = "k", expires: float = NEVER, first_hlc: int = 1) -> list[Entry]:
    return [Entry(f"{prefix}{i}", f"v{i}", expires, version(first_hlc + i)) for i in range(n)]


MEMBER_KEY = snapshot.snapshot_key(cluster_key(b"shoal-test-secret"))
"""The MAC key of files the test cluster's members (tests/support) write and will read."""


def write_cache(path: Path, name: str, rows: list[Entry], now: float = NOW) -> int:
    return snapshot.write(path, [(name, rows, PACK)], now, key=MEMBER_KEY)


# -- the file format ----------------------------------------------------------------------


def test_a_snapshot_read_back_gives_every_entry_of_every_cache_as_write_ops(tmp_path: Path) -> None:
    path = tmp_path / "snap"
    users = [
        Entry("alice", {"age": 30}, NEVER, version(5, 1)),
        Entry(b"raw", b"\x00\xff", NOW + 60.0, version(6, 2)),
        Entry(42, [1, 2, 3], NOW + 0.5, version(7, 3)),
    ]
    pages = entries(3, prefix="page")
    assert snapshot.write(path, [("users", users, PACK), ("pages", pages, PACK)], NOW) == 6

    loaded = snapshot.read(path, NOW)

    assert sorted(loaded) == ["pages", "users"]
    assert loaded["users"] == [(WRITE, e.key, PACK(e.value), float(e), e.version) for e in users]
    assert loaded["pages"] == [(WRITE, e.key, PACK(e.value), NEVER, e.version) for e in pages]


def test_entries_already_expired_when_writing_are_left_out_of_the_file(tmp_path: Path) -> None:
    path = tmp_path / "snap"
    rows = [
        Entry("gone", 1, NOW - 1.0, version(1)),
        Entry("due", 2, NOW, version(2)),
        Entry("kept", 3, NOW + 1, version(3)),
    ]
    assert write_cache(path, "c", rows) == 1
    assert [op[1] for op in snapshot.read(path, NOW)["c"]] == ["kept"]


def test_entries_that_expired_since_the_snapshot_was_written_are_skipped_on_load(tmp_path: Path) -> None:
    path = tmp_path / "snap"
    rows = [Entry("short", 1, NOW + 10.0, version(1)), Entry("long", 2, NOW + 100.0, version(2))]
    rows.append(Entry("forever", 3, NEVER, version(3)))
    assert write_cache(path, "c", rows) == 3

    later = snapshot.read(path, NOW + 50.0)

    assert [op[1] for op in later["c"]] == ["long", "forever"]
    assert snapshot.read(path, NOW + 1000.0) == {"c": [(WRITE, "forever", PACK(3), NEVER, version(3))]}


def test_a_cache_whose_every_entry_expired_is_absent_after_load(tmp_path: Path) -> None:
    path = tmp_path / "snap"
    write_cache(path, "c", entries(5, expires=NOW + 1.0))
    assert snapshot.read(path, NOW + 2.0) == {}


def test_a_cache_named_end_round_trips_like_any_other(tmp_path: Path) -> None:
    """Its records are not the end record: six fields, not three."""
    path = tmp_path / "snap"
    write_cache(path, "end", entries(2))
    assert [op[1] for op in snapshot.read(path, NOW)["end"]] == ["k0", "k1"]


def test_a_snapshot_truncated_anywhere_is_corrupt_never_half_loaded(tmp_path: Path) -> None:
    path = tmp_path / "snap"
    write_cache(path, "c", entries(20))
    whole = path.read_bytes()
    cut = tmp_path / "cut"
    for length in range(len(whole)):
        cut.write_bytes(whole[:length])
        with pytest.raises(snapshot.CorruptSnapshot):
            snapshot.read(cut, NOW)


@pytest.mark.parametrize("mask", [0x01, 0x80, 0xFF])
def test_a_snapshot_with_any_byte_flipped_is_corrupt(tmp_path: Path, mask: int) -> None:
    path = tmp_path / "snap"
    write_cache(path, "c", entries(10))
    whole = path.read_bytes()
    flipped = tmp_path / "flipped"
    for i in range(len(whole)):
        data = bytearray(whole)
        data[i] ^= mask
        flipped.write_bytes(bytes(data))
        with pytest.raises(snapshot.CorruptSnapshot):
            snapshot.read(flipped, NOW, key=MEMBER_KEY)  # the CRC covers the entries, the MAC all


def test_a_snapshot_with_bytes_appended_after_the_end_record_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "snap"
    write_cache(path, "c", entries(3))
    path.write_bytes(path.read_bytes() + b"\x00")
    with pytest.raises(snapshot.CorruptSnapshot):
        snapshot.read(path, NOW)


@pytest.mark.parametrize("content", [b"", b"not a snapshot", b"\x93\xa4nope\x01\xcb" + b"\x00" * 8])
def test_a_file_that_is_not_a_snapshot_is_corrupt(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "snap"
    path.write_bytes(content)
    with pytest.raises(snapshot.CorruptSnapshot):
        snapshot.read(path, NOW)


def test_a_write_that_fails_midway_keeps_the_previous_snapshot_and_leaves_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "snap"
    write_cache(path, "c", entries(10, prefix="old"))
    before = path.read_bytes()
    written = 0

    def failing(value: object) -> bytes:
        nonlocal written
        written += 1
        if written == 500:
            raise OSError("disk full")
        return PACK(value)

    with pytest.raises(OSError, match="disk full"):
        snapshot.write(path, [("c", entries(1000, prefix="new"), failing)], NOW)

    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["snap"]
    assert len(snapshot.read(path, NOW)["c"]) == 10


def crash_while_writing(path: Path, after: int) -> None:
    """A process that dies (no cleanup, no exception handlers) in the middle of writing ``path``."""
    script = textwrap.dedent(
        f"""
        import os
        from shoal import snapshot
        from shoal.serializer import MsgpackSerializer
        from shoal.store import Entry, NEVER
        pack, n = MsgpackSerializer().dumps, 0
        def dumps(value):
            global n
            n += 1
            if n == {after}:
                os._exit(9)
            return pack(value)
        rows = [Entry(f"new{{i}}", "x" * 100, NEVER, (i + 1) << 64) for i in range(5000)]
        snapshot.write({str(path)!r}, [("c", rows, dumps)], {NOW})
        """
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=_env(), capture_output=True, timeout=30)
    assert done.returncode == 9, done.stderr.decode()


def test_a_process_killed_mid_write_leaves_the_previous_snapshot_whole(tmp_path: Path) -> None:
    path = tmp_path / "snap"
    write_cache(path, "c", entries(10, prefix="old"))
    before = path.read_bytes()

    crash_while_writing(path, after=2500)

    assert path.read_bytes() == before
    assert [op[1] for op in snapshot.read(path, NOW)["c"]] == [f"old{i}" for i in range(10)]
    leftovers = [p for p in tmp_path.iterdir() if p.name != "snap"]
    assert len(leftovers) == 1 and leftovers[0].name.startswith("snap.") and leftovers[0].suffix == ".tmp"
    with pytest.raises(snapshot.CorruptSnapshot):
        snapshot.read(leftovers[0], NOW)  # the partial file is never under the target's name


def test_a_process_killed_during_its_first_write_leaves_no_target_at_all(tmp_path: Path) -> None:
    path = tmp_path / "snap"
    crash_while_writing(path, after=2500)
    assert not path.exists()


# -- members restarting from their snapshots (real processes) --------------------------------


def boot_of(member: Member) -> dict[str, object]:
    return member.cmd("stats")["caches"]["c"]["warm_boot"]  # type: ignore[no-any-return]


def stderr_of(member: Member) -> str:
    assert not member.alive and member.proc.stderr is not None
    return member.proc.stderr.read()


@pytest.mark.slow
def test_a_whole_cluster_stopped_gracefully_starts_again_from_its_snapshots(cluster: Cluster, tmp_path: Path) -> None:
    paths = [tmp_path / f"member{i}.snap" for i in range(3)]
    a = cluster.start(snapshot_path=str(paths[0]), **SLOW)
    b = cluster.start(seeds=[a.address], snapshot_path=str(paths[1]), **SLOW)
    c = cluster.start(seeds=[a.address], snapshot_path=str(paths[2]), **SLOW)
    members = [a, b, c]
    for m in members:
        assert m.cmd("ready", timeout=10) is True
    wait_until(lambda: all(len(m.peers_up()) == 2 for m in members), 10, what="the cluster to form")
    a.cmd("set_range", prefix="a", start=0, count=3000)
    b.cmd("set_range", prefix="b", start=0, count=1000)
    b.cmd("set", key="a7", value="overwritten on b")
    wait_until(lambda: all(m.cmd("get", key="a7") == "overwritten on b" for m in members), 10)
    wait_until(lambda: all(m.cmd("len") == 4000 for m in members), 10, what="every write everywhere")
    digest = a.cmd("keys_digest")
    assert all(m.cmd("keys_digest") == digest for m in members)

    addresses = [m.address for m in members]
    for m in members:
        m.stop()
    assert all(p.exists() for p in paths)

    again = [
        cluster.start(listen=addr, seeds=[x for x in addresses if x != addr], snapshot_path=str(path), **SLOW)
        for addr, path in zip(addresses, paths, strict=True)
    ]
    for m in again:
        assert m.cmd("ready", timeout=15) is True
        assert m.cmd("keys_digest") == digest
        assert m.cmd("get", key="a7") == "overwritten on b"
    states = [boot_of(m)["state"] for m in again]
    assert set(states) <= {"snapshot", "warm"} and "snapshot" in states  # from its file, or from a peer that was


@pytest.mark.slow
def test_a_member_restarted_when_no_peer_answers_comes_back_from_its_snapshot(cluster: Cluster, tmp_path: Path) -> None:
    path = tmp_path / "only.snap"
    a = cluster.start(snapshot_path=str(path), **SLOW)
    b = cluster.start(seeds=[a.address], **SLOW)
    wait_until(lambda: b.address in a.peers_up(), 10, what="the pair to form")
    b.cmd("set_range", prefix="k", start=0, count=2000)
    wait_until(lambda: a.cmd("len") == 2000, 10, what="b's writes to reach a")
    digest = a.cmd("keys_digest")
    dead = [a.address, b.address]
    b.kill()
    a.stop()

    alone = cluster.start(seeds=dead, snapshot_path=str(path), **SLOW)

    assert alone.cmd("ready", timeout=10) is True
    assert alone.cmd("keys_digest") == digest
    boot = boot_of(alone)
    assert boot["state"] == "snapshot" and boot["donor"] == "snapshot file" and boot["entries"] == 2000
    assert isinstance(boot["bytes"], int) and boot["bytes"] > 0


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def flip_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 3, len(data) // 3 + 8):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))


@pytest.mark.slow
@pytest.mark.parametrize("damage", [truncate, flip_bytes], ids=["truncated", "flipped"])
def test_a_damaged_snapshot_is_reported_and_ignored_and_the_member_starts_empty_and_healthy(
    cluster: Cluster, tmp_path: Path, damage: object
) -> None:
    path = tmp_path / "damaged.snap"
    write_cache(path, "c", entries(3000), now=0.0)
    damage(path)  # type: ignore[operator]

    member = cluster.start(snapshot_path=str(path), **SLOW)

    assert member.cmd("ready", timeout=10) is True
    assert member.cmd("len") == 0
    assert boot_of(member)["state"] == "no peers"
    member.cmd("set", key="after", value="works")
    assert member.cmd("get", key="after") == "works"
    peer = cluster.start(seeds=[member.address], **SLOW)
    assert peer.cmd("ready", timeout=10) is True
    assert peer.cmd("get", key="after") == "works"
    member.kill()
    assert "ignoring snapshot" in stderr_of(member)


@pytest.mark.slow
def test_a_member_loads_the_snapshot_a_crash_mid_write_left_behind_never_the_partial_file(
    cluster: Cluster, tmp_path: Path
) -> None:
    path = tmp_path / "crashed.snap"
    write_cache(path, "c", entries(500, prefix="old"), now=0.0)
    crash_while_writing(path, after=2500)
    (tmp_path / "crashed.snap.leftover.tmp").write_bytes(b"\x93garbage")  # another crash, earlier

    member = cluster.start(snapshot_path=str(path), **SLOW)

    assert member.cmd("ready", timeout=10) is True
    assert member.cmd("len") == 500
    assert member.cmd("get_range", prefix="old", start=0, count=500) == 500
    assert member.cmd("get_range", prefix="new", start=0, count=5000) == 0
    assert boot_of(member)["state"] == "snapshot"
    member.kill()
    assert "ignoring snapshot" not in stderr_of(member)


def test_expiry_is_kept_as_an_absolute_time_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "snap"
    write_cache(path, "c", [Entry("k", 1, NOW + 0.25, version(1))])
    ((_, _, _, expires, _),) = snapshot.read(path, NOW)["c"]
    assert expires == NOW + 0.25 and not math.isinf(expires)


def test_a_member_stopped_before_its_warm_boot_finished_keeps_the_previous_snapshot(tmp_path: Path) -> None:
    from shoal.node import Node

    path = tmp_path / "snap"
    entry = Entry("kept", "value", NEVER, (1 << NODE_BITS) | 1)
    snapshot.write(path, [("c", [entry], MsgpackSerializer().dumps)], now=0.0)
    before = path.read_bytes()
    # The seed never answers, so the boot is still waiting for peers when the node stops.
    node = Node(seeds=["127.0.0.1:9"], snapshot_path=path, boot_wait=30.0)
    node.cache("c")
    node.start()
    assert not node.wait_ready(0.2)
    node.stop()
    assert path.read_bytes() == before


# -- a file is input like a peer's ---------------------------------------------------------------


def forged_file(
    path: Path, records: list[list[object]], key: bytes | None = None, header: list[object] | None = None
) -> None:
    """A file with a valid CRC (and MAC, given the key) around records of the forger's choice."""
    header = [snapshot.MAGIC, snapshot.FORMAT, NOW] if header is None else header
    data = b"".join(msgpack.packb(r, use_bin_type=True) for r in [header, *records])
    mac = None if key is None else hmac.new(key, data, hashlib.sha256).digest()
    path.write_bytes(data + msgpack.packb(["end", len(records), zlib.crc32(data), mac], use_bin_type=True))


GOOD = ["c", "k", PACK("v"), None, 5, 7]
POISONED = {
    "a list key": ["c", ["k"], PACK("v"), None, 5, 7],
    "a value that is not bytes": ["c", "k", "v", None, 5, 7],
    "version 2**64-1": ["c", "k", PACK("v"), None, 2**64 - 1, 7],
    "a version from the future": ["c", "k", PACK("v"), None, int((NOW + 3600) * 1000) << 16, 7],
    "expiry 1e306": ["c", "k", PACK("v"), 1e306, 5, 7],
    "expiry nan": ["c", "k", PACK("v"), math.nan, 5, 7],
    "a key over MAX_KEY_SIZE": ["c", "x" * 5000, PACK("v"), None, 5, 7],
    "a cache name that is not str": [b"c", "k", PACK("v"), None, 5, 7],
}


@pytest.mark.parametrize("record", POISONED.values(), ids=POISONED.keys())
def test_a_valid_file_holding_an_entry_no_peer_could_send_is_corrupt(tmp_path: Path, record: list[object]) -> None:
    """Finding: a list key, a non-bytes value, version 2**64-1 or expiry 1e306 in a valid file poisoned the member."""
    path = tmp_path / "snap"
    forged_file(path, [GOOD, GOOD])
    assert len(snapshot.read(path, NOW)["c"]) == 2
    forged_file(path, [GOOD, record])
    with pytest.raises(snapshot.CorruptSnapshot):
        snapshot.read(path, NOW)


def test_with_the_cluster_key_a_file_is_read_only_if_its_mac_matches(tmp_path: Path) -> None:
    key, other = snapshot.snapshot_key(b"k" * 32), snapshot.snapshot_key(b"o" * 32)
    path = tmp_path / "snap"
    assert snapshot.write(path, [("c", entries(5), PACK)], NOW, key=key) == 5
    assert len(snapshot.read(path, NOW, key=key)["c"]) == 5
    with pytest.raises(snapshot.CorruptSnapshot, match="MAC"):
        snapshot.read(path, NOW, key=other)
    write_cache(path, "c", entries(5))  # written without a key: a forger's file looks like this
    with pytest.raises(snapshot.CorruptSnapshot, match="MAC"):
        snapshot.read(path, NOW, key=key)
    forged_file(path, [GOOD], key=other)
    with pytest.raises(snapshot.CorruptSnapshot, match="MAC"):
        snapshot.read(path, NOW, key=key)


# -- what may sit at the snapshot path (issue 20, row 14) -----------------------------------


def test_a_fifo_a_link_a_directory_or_an_oversized_file_at_the_path_is_refused_without_waiting(
    tmp_path: Path,
) -> None:
    good = tmp_path / "good.snap"
    write_cache(good, "c", entries(3))
    fifo = tmp_path / "fifo.snap"
    os.mkfifo(fifo)
    link = tmp_path / "link.snap"
    link.symlink_to(good)
    refused = {
        fifo: "not a regular file",
        link: "symbolic link",
        tmp_path: "not a regular file",
    }
    for path, reason in refused.items():
        with pytest.raises(snapshot.CorruptSnapshot, match=reason):
            snapshot.read(path, NOW, key=MEMBER_KEY)
    with pytest.raises(snapshot.CorruptSnapshot, match="over the 100-byte snapshot limit"):
        snapshot.read(good, NOW, key=MEMBER_KEY, max_bytes=100)
    assert len(snapshot.read(good, NOW, key=MEMBER_KEY)["c"]) == 3


@pytest.mark.slow
def test_shoal_serve_with_a_fifo_at_the_snapshot_path_becomes_ready_and_exits_on_sigterm(tmp_path: Path) -> None:
    """Row 14 of issue 20: the member was never ready and its process never exited."""
    fifo = tmp_path / "snapshot"
    os.mkfifo(fifo)
    member = Serve("--listen", "127.0.0.1:0", "--snapshot-path", str(fifo))
    try:
        assert member.line().startswith("listening on ")
        assert member.line(timeout=15) == "ready=True"
        member.proc.send_signal(signal.SIGTERM)
        assert member.proc.wait(15) == 0
        wait_until(lambda: any("not a regular file" in line for line in member.stderr), what="the logged reason")
    finally:
        member.kill()


# -- formats: N reads N-1's files; another format is refused by its number -----------------------


@pytest.mark.parametrize(("format_", "by"), [(snapshot.FORMAT + 1, "a newer release"), (1, "an older release")])
def test_a_snapshot_in_a_format_this_release_does_not_read_is_refused_by_its_number(
    tmp_path: Path, format_: int, by: str
) -> None:
    path = tmp_path / "snap"
    forged_file(path, [GOOD], header=[snapshot.MAGIC, format_, NOW])
    with pytest.raises(snapshot.SnapshotFormat) as refused:
        snapshot.read(path, NOW)
    assert f"is snapshot format {format_}, written by {by}; this release reads format 2" in str(refused.value)


def test_a_header_with_more_items_than_this_release_knows_still_reads(tmp_path: Path) -> None:
    """Items after the third may be added to the header without a format change (and N-1 reads them too)."""
    path = tmp_path / "snap"
    forged_file(path, [GOOD], header=[snapshot.MAGIC, snapshot.FORMAT, NOW, "0.3.0", {"later": 1}])
    assert snapshot.read(path, NOW) == {"c": [(WRITE, "k", PACK("v"), NEVER, version(5))]}
