"""A snapshot file so a cluster that went down whole comes back warm.

Replication keeps data only while some member is up: when the last one stops,
every entry is gone. A member given ``snapshot_path`` writes its caches to that
file on a graceful stop and periodically, and loads it at boot when no peer
could donate.

Format: a stream of msgpack records. First ``["shoal-snapshot", FORMAT, written_at]``,
then one ``[cache, key, value, expires, hlc, node]`` per entry (the Ops format,
value as serialized bytes), last ``["end", count, crc32, mac]``, where the checksum
covers every byte before the end record and ``mac`` is HMAC-SHA256 of those bytes
under a key derived from the cluster secret (nil for a member without one). A file
without a valid end record, whose count, checksum or MAC disagrees, or holding an
entry a peer could not send either (validation.py: a list key, a value that is not
bytes, an expiry of 1e306, a version from the future), is corrupt: it is reported
and ignored, never half-loaded. The CRC catches a damaged disk; the MAC catches a
file someone wrote on purpose, since a member loads it without any peer to ask.
The format number changes only when a reader of the previous format could not read the new
one; a release reads the formats in ``READS`` (its own and the previous release's), and a
file in any other format is refused by name (``SnapshotFormat``: the member boots from its
peers instead), so a rollback past a format change costs that file, never a wrong load.
Extra trailing items in the header are ignored, so the header may carry more without a
format change. Writes go to a temporary file in the same directory, are fsynced, then renamed
over the old one, so a crash mid-write leaves the previous snapshot.

The path is read only if it is a regular file of at most ``MAX_SNAPSHOT_BYTES``,
opened without following a symbolic link and without blocking: a FIFO there once
kept a member unready and its process from ever exiting (the read never returned).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import hmac
import logging
import os
import stat
import tempfile
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import msgpack

from .clock import MAX_HLC, NODE_BITS, NODE_MASK
from .errors import InvalidEntry, ShoalError
from .replica import Op
from .store import NEVER, WRITE, Entry
from .validation import DEFAULT_MAX_CLOCK_SKEW, check_expiry, check_peer_key, check_version, version_limit

log = logging.getLogger("shoal")

MAX_SNAPSHOT_BYTES = 8 * 1024**3
"""The largest snapshot file read (it is read whole, then applied): far above any cache that fits."""
MAGIC = "shoal-snapshot"
FORMAT = 2
"""The format this release writes (1: before the entries were validated and signed)."""
READS = frozenset({2})
"""The formats this release reads: its own and the previous release's (0.1.x wrote 2)."""
_MAC_LABEL = b"shoal snapshot\x00"


class CorruptSnapshot(ShoalError):
    pass


class SnapshotFormat(CorruptSnapshot):
    """A whole snapshot in a format this release does not read (a newer release's, or a retired one)."""


def snapshot_key(cluster_key: bytes) -> bytes:
    """The snapshot MAC's key, apart from every handshake key though derived from the same secret."""
    return hmac.new(cluster_key, _MAC_LABEL, hashlib.sha256).digest()


def write(
    path: str | os.PathLike[str],
    caches: Iterable[tuple[str, Iterable[Entry], Callable[[Any], bytes]]],
    now: float,
    key: bytes | None = None,
) -> int:
    """Write every live entry of the given (name, entries, dumps) caches; returns the count.

    With ``key`` (``snapshot_key``) the end record carries a MAC that ``read`` requires.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=target.name + ".", suffix=".tmp", dir=target.parent)
    count = 0
    crc = 0
    mac = hmac.new(key, digestmod=hashlib.sha256) if key is not None else None
    try:
        with os.fdopen(fd, "wb") as out:
            pack = msgpack.Packer(use_bin_type=True).pack

            def emit(record: list[Any]) -> None:
                nonlocal crc
                data = pack(record)
                crc = zlib.crc32(data, crc)
                if mac is not None:
                    mac.update(data)
                out.write(data)

            emit([MAGIC, FORMAT, now])
            for name, entries, dumps in caches:
                for e in entries:
                    if e > now:
                        expires = None if e == NEVER else float(e)
                        emit([name, e.key, dumps(e.value), expires, e.version >> NODE_BITS, e.version & NODE_MASK])
                        count += 1
            out.write(pack(["end", count, crc, None if mac is None else mac.digest()]))
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return count


def read_file(path: str | os.PathLike[str], max_bytes: int = MAX_SNAPSHOT_BYTES) -> bytes:
    """The bytes of ``path`` if it is a regular file of at most ``max_bytes`` (see the module docstring).

    FileNotFoundError if there is none; CorruptSnapshot for a link, a FIFO, a device, a
    directory or a file over the cap, so nothing but a plain file is ever waited on or read.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise CorruptSnapshot(f"{path} is a symbolic link; a snapshot path must name a regular file") from None
        raise
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise CorruptSnapshot(f"{path} is not a regular file; a snapshot path must name one")
    with os.fdopen(fd, "rb", buffering=0) as file:
        if info.st_size > max_bytes:
            raise CorruptSnapshot(f"{path} is {info.st_size} bytes, over the {max_bytes}-byte snapshot limit")
        chunks: list[bytes] = []
        total = 0
        while chunk := file.read(min(1 << 24, max_bytes + 1 - total)):
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:  # it grew since fstat
                raise CorruptSnapshot(f"{path} is over the {max_bytes}-byte snapshot limit")
        return b"".join(chunks)


def read(
    path: str | os.PathLike[str],
    now: float,
    key: bytes | None = None,
    max_clock_skew: float = DEFAULT_MAX_CLOCK_SKEW,
    max_bytes: int = MAX_SNAPSHOT_BYTES,
) -> dict[str, list[Op]]:
    """Unexpired entries by cache; raises CorruptSnapshot for anything but a whole, valid file.

    With ``key``, a file whose MAC is missing or wrong is refused. Versions may be at
    most ``max_clock_skew`` ahead of ``now``, like a peer's.
    """
    data = read_file(path, max_bytes)
    limit = version_limit(now, max_clock_skew)
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, use_list=True, max_buffer_size=len(data) + 1)
    unpacker.feed(data)
    by_cache: dict[str, list[Op]] = {}
    count = crc = 0
    offset = 0
    try:
        header = next(unpacker)
        if not (isinstance(header, list) and len(header) >= 3 and header[0] == MAGIC and type(header[1]) is int):
            raise CorruptSnapshot(f"{path} is not a shoal snapshot")
        if header[1] not in READS:
            newer = "a newer release" if header[1] > FORMAT else "an older release"
            raise SnapshotFormat(
                f"{path} is snapshot format {header[1]}, written by {newer}; this release reads format "
                f"{', '.join(map(str, sorted(READS)))}"
            )
        crc = zlib.crc32(data[: unpacker.tell()])
        offset = unpacker.tell()
        for record in unpacker:
            end = unpacker.tell()
            if isinstance(record, list) and len(record) == 4 and record[0] == "end":  # entries have 6 fields
                mac = record[3]
                if record[:3] != ["end", count, crc] or end != len(data) or not (mac is None or type(mac) is bytes):
                    raise CorruptSnapshot(f"{path}: count or checksum does not match")
                if key is not None:
                    expected = hmac.new(key, data[:offset], hashlib.sha256).digest()
                    if mac is None or not hmac.compare_digest(mac, expected):
                        raise CorruptSnapshot(f"{path}: no valid MAC under the cluster secret (written elsewhere?)")
                return by_cache
            crc = zlib.crc32(data[offset:end], crc)
            offset = end
            name, entry_key, value, expires, hlc, node = record
            count += 1
            if type(name) is not str or type(value) is not bytes:
                raise InvalidEntry("a cache name is str and a value is bytes")
            check_peer_key(entry_key)
            if type(hlc) is not int or type(node) is not int or not 0 <= hlc <= MAX_HLC or not 0 <= node <= NODE_MASK:
                raise InvalidEntry("a version is two unsigned 64-bit ints")
            version = (hlc << NODE_BITS) | node
            check_version(version, limit)
            exp = NEVER if expires is None else check_expiry(expires, now)
            if exp > now:
                by_cache.setdefault(name, []).append((WRITE, entry_key, value, exp, version))
    except CorruptSnapshot:
        raise
    except InvalidEntry as exc:
        raise CorruptSnapshot(f"{path}: {exc}") from None
    except Exception as exc:
        raise CorruptSnapshot(f"{path}: unreadable record ({type(exc).__name__})") from None
    raise CorruptSnapshot(f"{path} is truncated (no end record)")
