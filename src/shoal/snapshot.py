"""A snapshot file so a cluster that went down whole comes back warm.

The original Elixir design lost every entry when the last member stopped. A
member given ``snapshot_path`` writes its caches to that file on a graceful stop
and periodically, and loads it at boot when no peer could donate.

Format: a stream of msgpack records. First ``["shoal-snapshot", 1, written_at]``,
then one ``[cache, key, value, expires, hlc, node]`` per entry (the Ops format,
value as serialized bytes), last ``["end", count, crc32]``, where the checksum
covers every byte before the end record. A file without a valid end record, or
whose count or checksum disagrees, is corrupt: it is reported and ignored, never
half-loaded. Writes go to a temporary file in the same directory, are fsynced,
then renamed over the old one, so a crash mid-write leaves the previous snapshot.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import msgpack

from .clock import NODE_BITS, NODE_MASK
from .errors import ShoalError
from .replica import Op
from .store import NEVER, WRITE, Entry

log = logging.getLogger("shoal")

MAGIC = "shoal-snapshot"
FORMAT = 1


class CorruptSnapshot(ShoalError):
    pass


def write(
    path: str | os.PathLike[str],
    caches: Iterable[tuple[str, list[Entry], Callable[[Any], bytes]]],
    now: float,
) -> int:
    """Write every live entry of the given (name, entries, dumps) caches; returns the count."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=target.name + ".", suffix=".tmp", dir=target.parent)
    count = 0
    crc = 0
    try:
        with os.fdopen(fd, "wb") as out:
            pack = msgpack.Packer(use_bin_type=True).pack

            def emit(record: list[Any]) -> None:
                nonlocal crc
                data = pack(record)
                crc = zlib.crc32(data, crc)
                out.write(data)

            emit([MAGIC, FORMAT, now])
            for name, entries, dumps in caches:
                for e in entries:
                    if e > now:
                        expires = None if e == NEVER else float(e)
                        emit([name, e.key, dumps(e.value), expires, e.version >> NODE_BITS, e.version & NODE_MASK])
                        count += 1
            out.write(pack(["end", count, crc]))
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return count


def read(path: str | os.PathLike[str], now: float) -> dict[str, list[Op]]:
    """Unexpired entries by cache; raises CorruptSnapshot for anything but a whole, valid file."""
    data = Path(path).read_bytes()
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, use_list=True, max_buffer_size=len(data) + 1)
    unpacker.feed(data)
    by_cache: dict[str, list[Op]] = {}
    count = crc = 0
    offset = 0
    try:
        header = next(unpacker)
        if not (isinstance(header, list) and header[:2] == [MAGIC, FORMAT]):
            raise CorruptSnapshot(f"{path} is not a shoal snapshot (format {FORMAT})")
        crc = zlib.crc32(data[: unpacker.tell()])
        offset = unpacker.tell()
        for record in unpacker:
            end = unpacker.tell()
            if isinstance(record, list) and len(record) == 3 and record[0] == "end":  # entries have 6 fields
                if record != ["end", count, crc] or end != len(data):
                    raise CorruptSnapshot(f"{path}: count or checksum does not match")
                return by_cache
            crc = zlib.crc32(data[offset:end], crc)
            offset = end
            name, key, value, expires, hlc, node = record
            count += 1
            exp = NEVER if expires is None else float(expires)
            if exp > now:
                by_cache.setdefault(name, []).append((WRITE, key, value, exp, (hlc << NODE_BITS) | node))
    except CorruptSnapshot:
        raise
    except Exception as exc:
        raise CorruptSnapshot(f"{path}: unreadable record ({type(exc).__name__})") from None
    raise CorruptSnapshot(f"{path} is truncated (no end record)")
