"""Adapters that let the simulator drive shoal's state machines.

``MembershipNode`` drives a bare ``Membership``. ``SimMember`` is a whole member:
the same ``Dispatcher`` a ``Node`` runs, hosting one cache "c", with this file as
its driver instead of asyncio: it expands broadcasts and dump streams into
sends, answers snapshot reads (there is no file), and schedules the flush a
write wakes ``FLUSH_DELAY`` later on the simulator's clock, as node.py does on
its loop. A test can hold a peer's backlog high (``hold``: a peer that does not
read) and let it drain (``release``); meanwhile the driver drops an answer sent to
it as node.py does, and counts it in ``Sim.stats["driver dropped"]``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import msgpack

from shoal.actions import Broadcast, Close, ReadSnapshot, Send, StreamDump
from shoal.cache import Cache, hosted
from shoal.clock import HybridClock
from shoal.dispatch import FLUSH_DELAY, Config, Dispatcher
from shoal.errors import ProtocolError
from shoal.membership import Membership
from shoal.messages import Message, Ops, Stream, Writes
from shoal.replica import Op
from shoal.replication import keys_of
from shoal.store import WRITE
from shoal.warmboot import dump_stream
from shoal.wire import DEFAULT_MAX_FRAME, PROTOCOL_VERSION

from .network import NodeFactory, Sim


class MembershipNode:
    def __init__(self, membership: Membership) -> None:
        self.membership = membership

    @classmethod
    def factory(cls, seeds: Iterable[str] = (), **config: Any) -> NodeFactory:
        """A factory for ``Sim.add``; ``config`` goes to ``Membership`` (timeouts, backoff...)."""
        seed_list = list(seeds)

        def build(node_id: int, address: str, rng: random.Random) -> MembershipNode:
            return cls(Membership(node_id, address, seeds=list(seed_list), rng=rng, **config))

        return build

    def on_tick(self, now: float) -> list[Any]:
        return self.membership.tick(now)

    def on_connected(self, peer: int, listen: str, now: float, dialed: str | None) -> list[Any]:
        return self.membership.connected(peer, listen, now, dialed=dialed)

    def on_disconnected(self, peer: int, now: float) -> list[Any]:
        return self.membership.disconnected(peer, now)

    def on_dial_failed(self, address: str, now: float) -> list[Any]:
        self.membership.dial_failed(address, now)
        return []

    def on_message(self, peer: int, msg: Message, now: float) -> list[Any]:
        return self.membership.received(peer, msg, now)

    def on_stop(self, now: float) -> list[Any]:
        return self.membership.leave()


class SimMember:
    """A member as the sim sees it: a ``Dispatcher`` hosting cache "c".

    Every op the member ever held (its own writes, what it received, what a warm
    boot loaded) is kept in ``log``, so a test can compute what last-writer-wins
    says it must converge to. ``snapshot`` is what a ReadSnapshot finds (ops).
    """

    def __init__(self, sim: Sim, node_id: int, address: str, core: Dispatcher, **cache_options: Any) -> None:
        self.sim = sim
        self.node_id = node_id
        self.core = core
        self.membership = core.membership
        self.log: list[Op] = []
        self.snapshot: list[Op] = []
        self.dumps: list[tuple[int, Iterator[Message]]] = []  # streams being served, a chunk per tick
        self.dump_pace = 0.0  # seconds between the chunks of a dump this member serves (0: one per tick)
        self._next_chunk = 0.0
        self.held: dict[int, int] = {}  # unsent bytes per peer, as a test sets them (0 unless held)
        now = lambda: sim.now  # noqa: E731
        self.cache, replica = hosted(
            "c",
            cache_options.get("ttl"),
            cache_options.get("max_entries"),
            serializer=None,
            clock=HybridClock(node_id, now),
            tombstone_ttl=1e9,
            timer=now,
        )
        self.replica = replica
        apply, load = replica.apply, replica.load

        def logged_apply(ops: list[Op], wall: float) -> tuple[int, int]:
            self.log.extend(ops)
            return apply(ops, wall)

        def logged_load(
            keys: list[Any],
            values: list[Any],
            expires: list[Any],
            versions: list[int],
            packed: bool,
            wall: float,
            newest: int | None = None,
        ) -> int:
            for key, value, exp, version in zip(keys, values, expires, versions, strict=True):
                self.log.append((WRITE, key, value if packed else msgpack.packb(value), exp, version))
            return load(keys, values, expires, versions, packed, wall, newest)

        replica.apply = logged_apply  # type: ignore[method-assign]
        replica.load = logged_load  # type: ignore[method-assign]
        core.host("c", replica, sim.now)
        replica.connect(self._local_write)
        core.wake = self._wake
        core.backlog = lambda peer: self.held.get(peer, 0)

    @classmethod
    def factory(cls, sim: Sim, seeds: Iterable[str] = (), interval: float = 1.0, **config: Any) -> NodeFactory:
        """``config`` goes to ``dispatch.Config`` (timeouts, boot_wait...), ``ttl``/``max_entries`` to the cache."""
        seed_list = list(seeds)
        cache_options = {k: config.pop(k) for k in ("ttl", "max_entries") if k in config}
        config.setdefault("boot_wait", 1.0)

        def build(node_id: int, address: str, rng: random.Random) -> SimMember:
            core = Dispatcher(
                node_id,
                address,
                seeds=[s for s in seed_list if s != address],
                config=Config(anti_entropy_interval=interval, **config),
                rng=rng,
            )
            member = cls(sim, node_id, address, core, **cache_options)

            def start() -> None:  # once the sim knows the node: it is listening now
                if node_id in sim.nodes:
                    sim.act(node_id, lambda node, now: node.drive(core.start(now, now)))

            sim.call_later(0, start)
            return member

        return build

    # -- the driver's side ------------------------------------------------------------

    def _local_write(self, op: Op) -> None:
        self.log.append(op)
        self.core.local_write("c", op)

    def _wake(self) -> None:
        node_id, sim = self.node_id, self.sim

        def flush() -> None:
            if node_id in sim.nodes:
                sim.act(node_id, lambda node, now: node.drive(node.core.flush(None, now)))

        sim.call_later(FLUSH_DELAY, flush)

    def drive(self, actions: list[Any]) -> list[Any]:
        """What driver.py's ``_run`` does with sockets, done with simulator sends."""
        out: list[Any] = []
        for action in actions:
            if isinstance(action, Broadcast):
                out += [Send(peer, action.msg) for peer in action.peers]
            elif isinstance(action, StreamDump):
                replica = self.core.replicas.get(action.cache)
                if replica is not None:  # paced, as driver.py paces by back-pressure: a chunk per tick
                    stream = dump_stream(replica, action.stream, lambda: self.sim.now, DEFAULT_MAX_FRAME)
                    self.dumps.append((action.peer, (msg for msg, _ in stream)))
                else:
                    out += self.drive(self.core.dump_done(action.peer, self.sim.now))
            elif (
                isinstance(action, Send)
                and isinstance(action.msg, (Ops, Stream, Writes))
                and self.held.get(action.peer, 0) > self.core.config.max_peer_backlog
            ):
                self.sim.stats["driver dropped"] += 1  # the old driver rule: a test checks it never fires
            elif isinstance(action, ReadSnapshot):
                now = self.sim.now
                out += self.drive(self.core.snapshot_read(action.cache, list(self.snapshot), now, now))
            else:
                out.append(action)
        return out

    def hold(self, peer: int, backlog: int) -> list[Any]:
        """``peer`` stops reading: ``backlog`` bytes wait to be sent to it."""
        self.held[peer] = backlog
        return []

    def release(self, peer: int) -> list[Any]:
        """``peer`` reads again and drains: the driver says so to the core."""
        self.held.pop(peer, None)
        now = self.sim.now
        return self.drive(self.core.drained(peer, now, now))

    def write(self, call: Callable[[Cache], Any]) -> list[Any]:
        """Run a cache call on this member (the flush it wakes follows FLUSH_DELAY later)."""
        call(self.cache)
        return []

    # -- SimNode ----------------------------------------------------------------------

    def on_tick(self, now: float) -> list[Any]:
        out = self.drive(self.core.tick(now, now))
        if now < self._next_chunk:
            return out
        self._next_chunk = now + self.dump_pace
        for peer, stream in list(self.dumps):
            msg = next(stream, None)
            if msg is None or peer not in self.membership.up_peers():
                self.dumps.remove((peer, stream))
                out += self.drive(self.core.dump_done(peer, now))
            else:
                out.append(Send(peer, msg))
        return out

    def on_connected(self, peer: int, listen: str, now: float, dialed: str | None) -> list[Any]:
        # The handshake's choice: the newest protocol both offer (Config.protocol_max).
        other = self.sim.nodes.get(peer)
        theirs = other.core.config.protocol_max if isinstance(other, SimMember) else PROTOCOL_VERSION
        protocol = min(self.core.config.protocol_max, theirs)
        return self.drive(self.core.connected(peer, listen, now, dialed=dialed, protocol=protocol))

    def on_disconnected(self, peer: int, now: float) -> list[Any]:
        return self.drive(self.core.disconnected(peer, now))

    def on_dial_failed(self, address: str, now: float) -> list[Any]:
        return self.drive(self.core.dial_failed(address, now))

    def on_message(self, peer: int, msg: Message, now: float) -> list[Any]:
        try:
            return self.drive(self.core.message(peer, msg, now, now))
        except ProtocolError as exc:  # node.py closes the connection with the reason
            return [Close(peer, str(exc))]

    def on_stop(self, now: float) -> list[Any]:
        return self.drive(self.core.stop(now, now))


def member_of(sim: Sim, node_id: int) -> SimMember:
    """The running ``SimMember`` with this id (a test's handle on a whole member)."""
    found = sim.nodes[node_id]
    assert isinstance(found, SimMember)
    return found


def fill(sim: Sim, node_id: int, count: int) -> None:
    """Write ``count`` keys ``k0..`` with values ``v0..`` on one member."""
    sim.act(node_id, lambda n, now: n.write(lambda c: c.set_many({f"k{i}": f"v{i}" for i in range(count)})))


def batch_len(msg: Message) -> int:
    """How many ops a batch of writes carries (a Writes's are columns, the others' rows)."""
    ops: list[Any] = getattr(msg, "ops", [])
    return len(ops[0]) if isinstance(msg, Writes) else len(ops)


def batch_keys(msg: Message) -> list[Any]:
    """The keys of a batch of writes, whichever form it takes (none for another message)."""
    return keys_of(msg) if isinstance(msg, (Stream, Writes, Ops)) else []
