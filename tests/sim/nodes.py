"""Adapters that let the simulator drive shoal's state machines.

``MembershipNode`` drives a bare ``Membership``. A composite node (membership
plus replication, say) follows the same pattern: route each ``SimNode`` call to
the parts that care and return all their actions in one list.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any

from shoal.membership import Membership
from shoal.messages import Message

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
