"""Warm boot: a joining member fills a cache from its largest live peer.

Theory of operation. A member that starts hosting a cache waits briefly for its
first peers (``boot_wait``), asks every member of the cache's group for its size,
and streams a dump from the largest one that is itself warm (``warm_donors`` of
them, 1 by default). So N members booting together cause N dumps in total, one
each, never N dumps each. The donor streams from a snapshot of references (no
copy of the values, no serialisation up front) in chunks of ``CHUNK`` entries,
yielding to its loop and to TCP back-pressure between chunks; the receiver
applies each chunk as it arrives, merging by version, so a live write that
arrived during the boot is never overwritten by older dump data. If the donor
goes down mid-stream, the next largest takes over: entries already applied stay,
and the merge makes the overlap harmless.

``choose_donors``, ``dump_columns`` and ``columns_from_wire`` are pure; ``Booter`` is the node-side
coordinator that runs them on the node's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from .clock import MAX_HLC, NODE_BITS, NODE_MASK
from .errors import FrameTooLarge, ProtocolError
from .messages import DumpChunk, DumpEnd, DumpRequest, SizeReply, SizeRequest
from .serializer import MsgpackSerializer
from .store import Entry, Key
from .wire import encode

if TYPE_CHECKING:
    from .node import Node

log = logging.getLogger("shoal")

CHUNK = 2000
CHUNK_BYTES = 4 * 1024 * 1024
"""What a dump chunk aims at: a count alone does not bound a frame (2,000 values of 8 KB
made a chunk over the 16 MiB frame limit, and the donor's dump died)."""
_KEY_TYPES = {str, bytes, int}
SIZE_WAIT = 1.0


@dataclass
class BootStats:
    state: str = "pending"
    donor: str | None = None
    entries: int = 0
    bytes: int = 0
    seconds: float = 0.0
    donors_tried: int = 0
    dumps_served: int = 0
    bytes_served: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def choose_donors(sizes: dict[int, tuple[int, bool]]) -> list[int]:
    """Peers in the order to ask for a dump: warm ones first, then the largest."""
    return sorted(sizes, key=lambda peer: (not sizes[peer][1], -sizes[peer][0], peer))


def dump_columns(
    entries: list[Entry], dumps: Callable[[Any], bytes] | None, now: float
) -> tuple[list[Any], list[Any], list[float], list[int], list[int]]:
    """Columns (keys, values, expires, hlcs, nodes) of the unexpired entries of a snapshot slice.

    ``dumps`` None sends values as they are (the default msgpack serializer: the
    frame's encoding is the value's encoding, so nothing is encoded twice).
    """
    # An entry replaced or deleted since the snapshot is still sent: the receiver
    # merges by version and holds the delete's tombstone, so it costs nothing, and
    # checking each entry against the table would double the donor's work.
    live = [e for e in entries if e > now]
    keys = [e.key for e in live]
    values = [e.value for e in live] if dumps is None else [dumps(e.value) for e in live]
    expires = [float(e) for e in live]
    hlcs = [e.version >> NODE_BITS for e in live]
    nodes = [e.version & NODE_MASK for e in live]
    return keys, values, expires, hlcs, nodes


def dump_frames(
    entries: list[Entry],
    cache: str,
    stream: int,
    dumps: Callable[[Any], bytes] | None,
    now: Callable[[], float],
    max_frame_size: int,
) -> Iterator[tuple[bytes, int]]:
    """The donor's chunks as encoded frames with their entry counts, bounded in bytes.

    A chunk starts at ``CHUNK`` entries and is resized after each frame to aim at
    ``CHUNK_BYTES``; one that still comes out over ``max_frame_size`` is cut to a
    quarter and encoded again (it costs one wasted encode, once per dump, when values
    are large). An entry too large for a frame on its own (only if a peer configured a
    larger ``max_value_size`` than our frame allows) is left out and logged.
    """
    inline = dumps is None
    size, i = CHUNK, 0
    while i < len(entries):
        part = entries[i : i + size]
        keys, values, expires, hlcs, nodes = dump_columns(part, dumps, now())
        try:
            frame = encode(DumpChunk(cache, stream, keys, values, expires, hlcs, nodes, inline), max_frame_size)
        except FrameTooLarge:
            if size == 1:
                log.error("dump of %s: an entry does not fit a %d-byte frame; left out", cache, max_frame_size)
                i += 1
            else:
                size = max(1, size // 4)
            continue
        i += len(part)
        yield frame, len(keys)
        size = max(1, min(CHUNK, CHUNK_BYTES * len(part) // max(1, len(frame))))


def columns_from_wire(msg: DumpChunk) -> tuple[list[Key], list[Any], list[float], list[int]]:
    """Check a chunk a column at a time (C-speed passes), then build versions."""
    n = len(msg.keys)
    if not len(msg.values) == len(msg.expires) == len(msg.hlcs) == len(msg.nodes) == n:
        raise ProtocolError("dump chunk columns differ in length")
    if not set(map(type, msg.keys)) <= _KEY_TYPES:
        raise ProtocolError("dump chunk keys must be str, bytes or int")
    if not msg.inline and not set(map(type, msg.values)) <= {bytes}:
        raise ProtocolError("serialized dump values must be bytes")
    if not set(map(type, msg.expires)) <= {float, int} or any(map(math.isnan, msg.expires)):
        raise ProtocolError("dump chunk expiries must be numbers")
    for column, top in ((msg.hlcs, MAX_HLC), (msg.nodes, NODE_MASK)):
        if n and (not set(map(type, column)) <= {int} or min(column) < 0 or max(column) > top):
            raise ProtocolError("dump chunk versions must be unsigned 64-bit ints")
    versions = [(h << NODE_BITS) | node for h, node in zip(msg.hlcs, msg.nodes, strict=True)]
    return msg.keys, msg.values, msg.expires, versions


@dataclass
class _Stream:
    cache: str
    donor: int
    done: asyncio.Future[bool]
    entries: int = 0


class Booter:
    def __init__(self, node: Node) -> None:
        self.node = node
        self._sizes: dict[str, dict[int, tuple[int, bool]]] = {}
        self._streams: dict[int, _Stream] = {}
        self._gc_holds = 0
        self._gc_was_enabled = True

    async def boot(self, name: str) -> None:
        node = self.node
        state = node._caches[name]
        stats = state.boot
        stats.state = "booting"
        started = time.monotonic()
        try:
            if node.seeds or node.discovery:
                deadline = started + node.boot_wait
                while time.monotonic() < deadline and not node.membership.group(name):
                    await asyncio.sleep(0.005)
            if not node.membership.group(name):
                stats.state = "no peers"
                return
            sizes = self._sizes[name] = {}
            finished = 0
            with self._gc_paused():
                # Peers come up one by one, so the first round may know only the first seed. If
                # every donor of a round fails (one killed mid-stream, say), the peers that came
                # up since are asked in another round: they are the next largest as much as any.
                while finished < node.warm_donors:
                    group = [p for p in node.membership.group(name) if p not in sizes]
                    if not group:
                        break
                    for peer in group:
                        node.send(peer, SizeRequest(name))
                    deadline = time.monotonic() + SIZE_WAIT
                    while time.monotonic() < deadline and not all(p in sizes for p in group):
                        await asyncio.sleep(0.002)
                    for peer in group:
                        sizes.setdefault(peer, (0, False))  # no answer: asked, not a donor
                    donors = [p for p in choose_donors({p: sizes[p] for p in group}) if sizes[p][0] > 0]
                    for donor in donors:
                        stats.donors_tried += 1
                        if await self._stream_from(name, donor, stats):
                            finished += 1
                            if finished >= node.warm_donors:
                                break
            if not finished and not any(entries for entries, _ in sizes.values()):
                stats.state = "peers empty"
                return
            stats.state = "warm" if finished else "not warmed"
            node.freeze_grown_heap()  # what we loaded, out of the collector's sight
        except asyncio.TimeoutError:
            stats.state = "not warmed (timeout)"
        finally:
            if stats.state != "warm":
                await self._from_snapshot(name, stats)
            self._sizes.pop(name, None)
            stats.seconds = round(time.monotonic() - started, 3)
            state.booted = True
            node.replicator.settled.add(name)
            node._check_ready()
            log.info(
                "warm boot of %s: %s, %d entries (%d bytes) from %s in %.2fs",
                name,
                stats.state,
                stats.entries,
                stats.bytes,
                stats.donor,
                stats.seconds,
            )

    async def _from_snapshot(self, name: str, stats: BootStats) -> None:
        """No peer could donate: the whole cluster was down. Load the snapshot file, if any."""
        ops = await self.node.load_snapshot(name)
        if ops:
            self.node.replicator.apply(name, ops)
            stats.state, stats.donor = "snapshot", "snapshot file"
            stats.entries = len(ops)
            stats.bytes = sum(len(op[2] or b"") for op in ops)

    @contextlib.contextmanager
    def _gc_paused(self) -> Iterator[None]:
        """No cyclic GC while a dump streams in: each collection would walk the
        entries loaded so far, about a third of the boot's time for a million."""
        self._gc_holds += 1
        if self._gc_holds == 1:
            self._gc_was_enabled = gc.isenabled()
            gc.disable()
        try:
            yield
        finally:
            self._gc_holds -= 1
            if self._gc_holds == 0 and self._gc_was_enabled:
                gc.enable()

    async def _stream_from(self, name: str, donor: int, stats: BootStats) -> bool:
        node = self.node
        stream_id = random.getrandbits(62)
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._streams[stream_id] = _Stream(name, donor, done)
        stats.donor = f"{donor:016x}"
        conn = node.peer_conn(donor)
        if conn is None or not node.send(donor, DumpRequest(name, stream_id)):
            del self._streams[stream_id]
            return False
        received_before = conn.bytes_in
        try:
            return await asyncio.wait_for(done, node.warm_timeout)
        except asyncio.TimeoutError:
            log.warning("warm boot of %s: donor %016x timed out; trying the next", name, donor)
            return False
        finally:
            self._streams.pop(stream_id, None)
            stats.bytes += conn.bytes_in - received_before  # what the donor sent us meanwhile

    # -- receiving side ---------------------------------------------------------------

    def on_size_reply(self, peer: int, msg: SizeReply) -> None:
        sizes = self._sizes.get(msg.cache)
        if sizes is not None:
            sizes[peer] = (max(0, msg.entries), msg.ready)

    def on_chunk(self, peer: int, msg: DumpChunk) -> None:
        stream = self._streams.get(msg.stream)
        if stream is None or stream.donor != peer:
            return  # a stream we gave up on
        keys, values, expires, versions = columns_from_wire(msg)
        self.node.replicator.load(stream.cache, keys, values, expires, versions, packed=not msg.inline)
        before = stream.entries
        stream.entries += len(keys)
        self.node._caches[stream.cache].boot.entries += len(keys)  # live: stats() shows a boot's progress
        if stream.entries // 100_000 != before // 100_000:
            log.info("warm boot of %s: %d entries so far", stream.cache, stream.entries)

    def on_end(self, peer: int, msg: DumpEnd) -> None:
        stream = self._streams.get(msg.stream)
        if stream is not None and stream.donor == peer and not stream.done.done():
            whole = msg.entries == stream.entries
            if not whole:
                log.warning("warm boot of %s: donor %016x ended its dump early; trying the next", msg.cache, peer)
            stream.done.set_result(whole)

    def member_down(self, peer: int) -> None:
        for stream in self._streams.values():
            if stream.donor == peer and not stream.done.done():
                log.warning("warm boot donor %016x went down mid-stream; trying the next", peer)
                stream.done.set_result(False)

    # -- donor side ---------------------------------------------------------------------

    def on_size_request(self, peer: int, msg: SizeRequest) -> None:
        state = self.node._caches.get(msg.cache)
        if state is None:
            self.node.send(peer, SizeReply(msg.cache, 0, False))
        else:
            self.node.send(peer, SizeReply(msg.cache, len(state.cache.store.data), state.booted))

    async def serve_dump(self, peer: int, msg: DumpRequest) -> None:
        node = self.node
        state = node._caches.get(msg.cache)
        conn = node.peer_conn(peer)
        if conn is None:
            return
        sent = 0
        if state is not None:
            state.boot.dumps_served += 1
            store = state.cache.store
            serializer = state.cache.serializer
            inline = type(serializer) is MsgpackSerializer
            dumps = None if inline else serializer.dumps
            entries = store.entries()  # references only: cheap, and entries never change
            try:
                for frame, count in dump_frames(entries, msg.cache, msg.stream, dumps, time.time, node.max_frame_size):
                    if conn.closed:
                        return
                    conn.write(frame)
                    sent += count
                    state.boot.bytes_served += len(frame)
                    await conn.drained()
                    await asyncio.sleep(0)
            except Exception:
                # The booter must not wait out its timeout for a dump that died here:
                # an end whose count is not what it received tells it to try the next donor.
                log.exception("dump of %s to %016x failed", msg.cache, peer)
                sent = -1
        if not conn.closed:
            conn.send(DumpEnd(msg.cache, msg.stream, sent))
