"""Adapters that let the simulator drive shoal's state machines.

``MembershipNode`` drives a bare ``Membership``. A composite node (membership
plus replication, say) follows the same pattern: route each ``SimNode`` call to
the parts that care and return all their actions in one list.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from typing import Any

from shoal.cache import Cache, Op
from shoal.clock import HybridClock
from shoal.membership import Membership
from shoal.messages import Digest, Listing, Message, Ops, Pull
from shoal.replication import Replicator

from .network import NodeFactory


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


class ReplicaNode(MembershipNode):
    """Membership plus replication over one cache "c": a member as the sim sees it.

    Every op the member ever held (its own writes and everything it received) is
    kept in ``log``, so a test can compute what last-writer-wins says it must
    converge to.
    """

    def __init__(self, membership: Membership, now: Callable[[], float], interval: float) -> None:
        super().__init__(membership)
        self.cache = Cache(wall=now, tombstone_ttl=1e9, clock=HybridClock(membership.node_id, now))
        self.cache.name = "c"
        self.replicator = Replicator(membership, {"c": self.cache}, interval=interval, rng=membership.rng)
        self.replicator.settled.add("c")  # the simulated members do not warm boot: repair does it all
        self.membership.caches.add("c")
        self.log: list[Op] = []
        received = self.cache.apply

        def apply(ops: Iterable[Op]) -> tuple[int, int]:
            ops = list(ops)
            self.log.extend(ops)
            return received(ops)

        def replicate(op: Op) -> None:
            self.log.append(op)
            self.replicator.outbox.append(("c", op))

        self.cache.apply = apply  # type: ignore[method-assign]
        self.cache.replicate = replicate

    @classmethod
    def factory(  # type: ignore[override]
        cls, now: Callable[[], float], seeds: Iterable[str] = (), interval: float = 1.0, **config: Any
    ) -> NodeFactory:
        seed_list = list(seeds)

        def build(node_id: int, address: str, rng: random.Random) -> ReplicaNode:
            membership = Membership(node_id, address, seeds=[s for s in seed_list if s != address], rng=rng, **config)
            return cls(membership, now, interval)

        return build

    def write(self, call: Callable[[Cache], Any]) -> list[Any]:
        """Run a cache call on this member, then flush what it queued."""
        call(self.cache)
        return self.replicator.flush()

    def on_tick(self, now: float) -> list[Any]:
        return self.membership.tick(now) + self.replicator.flush() + self.replicator.tick(now)

    def on_message(self, peer: int, msg: Message, now: float) -> list[Any]:
        actions = self.membership.received(peer, msg, now)
        if isinstance(msg, (Ops, Digest, Listing, Pull)):
            actions += self.replicator.received(peer, msg)
        return actions

    def on_stop(self, now: float) -> list[Any]:
        return self.replicator.flush() + self.membership.leave()
