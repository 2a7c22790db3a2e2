"""A deterministic in-memory network that carries out the actions of sans-IO nodes.

Theory of operation. Everything happens on one virtual clock (``Sim.now``) driven
by one event queue (a heap ordered by time, then by insertion, so equal times
run in the order they were scheduled) and one ``random.Random(seed)``: the same
seed and the same calls give the same run, event for event, so any failure found
by hypothesis replays exactly.

A node is whatever object implements ``SimNode``: the simulator hands it
connections, messages, dial failures and ticks, and carries out the ``Send``,
``Dial`` and ``Close`` actions it returns, as ``node.py`` does with sockets. Any
other action (``MemberUp``, an entry to apply...) is the node's own business and
is only recorded in ``Sim.effects``. ``MembershipNode`` (nodes.py) adapts a bare
``Membership``; a composite node (membership plus replication, say) is another
adapter that routes the same six calls to its parts.

Nodes have ids and addresses ``sim:N``. A restart keeps the address and takes a
new id, as a real process does. The model of the wire, kept close to TCP and to
``node.py``:

- A connection is a *link* with one *end* per node. Every message is encoded with
  ``wire.encode`` and fed to the receiving end's ``FrameDecoder``, so the wire
  format is exercised; a frame the decoder refuses closes that connection.
- A message arrives after a random delay in ``delay``. With ``reorder`` messages
  on a link may overtake each other; without it each end delivers in order.
  ``drop`` and ``duplicate`` are per-message probabilities (fault injection: TCP
  itself neither drops nor duplicates). ``loss`` is packet loss as TCP sees it: a
  lost message is retransmitted after ``rto`` (doubling while it keeps being lost),
  so it arrives late, and without ``reorder`` everything behind it waits too.
- A dial succeeds after a delay if the address has a running node, reachable and
  not frozen; the handshake is instantaneous and both sides get ``on_connected``.
  A refused dial fails after a delay; one into a partition or to a frozen node
  only after ``dial_timeout``. If both nodes still hold a working link, the
  driver keeps it and the dialer gets ``on_dial_failed`` (node.py does the same).
- ``Close`` ends the closer's side at once (it gets ``on_disconnected``, as
  asyncio's ``connection_lost`` does) and sends a FIN; the far side gets
  ``on_disconnected`` when the FIN arrives.
- A partition makes links between its sides silent: messages and FINs are lost,
  dials time out. Failure detectors notice the silence. An end whose far end is
  gone answers the next message with a reset, which closes it.
- A crash stops the node at once; its operating system closes its sockets, so its
  peers see the connections close (``fin=False`` models a power cut instead: the
  peers hear nothing, not even a reset, until a node boots at that address
  again). A frozen node (SIGSTOP) neither ticks nor handles
  anything; what reaches it waits, in order, until it thaws, and its links stay
  open.
- A slow node (``slow``: a CPU-throttled pod, a loop under load) is alive but late:
  its loop handles one thing at a time, each costing ``factor`` times the nominal
  ``work`` (per event, plus per byte of a frame), so what reaches it waits its turn
  in order, and its timer fires ``factor`` times less often. Its links stay open and
  everything it sends still goes out, late. When the window ends it works off
  what is queued at normal speed. Nodes that are not slow handle everything at once.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from shoal.actions import Close, Dial, Send
from shoal.errors import ProtocolError
from shoal.messages import Message
from shoal.wire import FrameDecoder, encode


class SimNode(Protocol):
    """What the simulator drives. Each call returns the actions to carry out."""

    def on_tick(self, now: float) -> list[Any]: ...

    def on_connected(self, peer: int, listen: str, now: float, dialed: str | None) -> list[Any]:
        """A connection to ``peer`` is up; ``dialed`` is the address we dialed, None if it dialed us."""
        ...

    def on_disconnected(self, peer: int, now: float) -> list[Any]: ...

    def on_dial_failed(self, address: str, now: float) -> list[Any]: ...

    def on_message(self, peer: int, msg: Message, now: float) -> list[Any]: ...

    def on_stop(self, now: float) -> list[Any]:
        """Graceful stop: the last messages to send before the connections close."""
        ...


NodeFactory = Callable[[int, str, random.Random], SimNode]
"""Builds a node from its id, its address and its own seeded random generator."""


@dataclass
class _End:
    """One node's side of a link."""

    link: int
    decoder: FrameDecoder = field(default_factory=FrameDecoder)
    last_arrival: float = 0.0  # without reordering, nothing sent later may arrive sooner


class Sim:
    def __init__(
        self,
        seed: int = 0,
        *,
        delay: tuple[float, float] = (0.001, 0.02),
        drop: float = 0.0,
        duplicate: float = 0.0,
        reorder: bool = True,
        tick_interval: float = 0.1,
        dial_timeout: float = 1.0,
        start: float = 1000.0,
        work: tuple[float, float] = (50e-6, 50e-9),
        loss: float = 0.0,
        rto: float = 0.2,
    ) -> None:
        self.rng = random.Random(seed)
        self.now = start
        self.delay = delay
        self.drop = drop
        self.duplicate = duplicate
        self.reorder = reorder
        self.tick_interval = tick_interval
        self.dial_timeout = dial_timeout
        self.work = work
        self.loss = loss
        self.rto = rto
        """Nominal cost of one event on a node's loop: seconds per event and per frame byte (``slow``)."""
        self.nodes: dict[int, SimNode] = {}
        """Running nodes by id, frozen ones included."""
        self.address_of: dict[int, str] = {}
        """Every node that ever ran, by id."""
        self.effects: list[tuple[float, int, Any]] = []
        """(time, node id, action) for every action that is not transport."""
        self.stats: Counter[str] = Counter()
        self.on_lost: Callable[[Message], None] = lambda msg: None
        """Called with every message the network lost (a partition, a fault, a peer gone)."""
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self._ids = itertools.count(1)
        self._links = itertools.count(1)
        self._factories: dict[str, NodeFactory] = {}
        self._at: dict[str, int] = {}  # address -> the node accepting connections there
        self._frozen: dict[int, list[Callable[[], None]]] = {}
        self._stopping: set[int] = set()
        self._dark: set[str] = set()  # addresses whose host lost power: nothing answers there
        self._ends: dict[tuple[int, int], _End] = {}  # (owner, peer) -> owner's end
        self._side: dict[str, int] = {}  # address -> partition side; unlisted ones share a side
        self._slow: dict[int, tuple[float, float]] = {}  # node -> (factor, until)
        self._busy: dict[int, float] = {}  # node -> when its loop is free again

    # -- the cluster ---------------------------------------------------------------

    def add(self, factory: NodeFactory, address: str | None = None) -> int:
        """Start a node (at a fresh address unless given); return its id."""
        address = address or f"sim:{len(self._factories) + 1}"
        if address in self._at:
            raise ValueError(f"{address} already has a running node")
        self._factories[address] = factory
        self._dark.discard(address)
        node_id = next(self._ids)
        self.nodes[node_id] = factory(node_id, address, random.Random(self.rng.getrandbits(64)))
        self.address_of[node_id] = address
        self._at[address] = node_id
        self._schedule(self.now + self.rng.uniform(0, self.tick_interval), lambda: self._tick(node_id))
        return node_id

    def boot(self, address: str) -> int:
        """Start a new incarnation (new id) of the node last run at ``address``."""
        return self.add(self._factories[address], address)

    def restart(self, node_id: int) -> int:
        """Crash ``node_id`` and start it again at the same address: a new id."""
        self.crash(node_id)
        return self.boot(self.address_of[node_id])

    def crash(self, node_id: int, *, fin: bool = True) -> None:
        """Stop the node at once. With ``fin`` its peers see its connections close.

        Without ``fin`` the host is gone too (a power cut): until something boots
        at its address, its peers' messages and dials go unanswered.
        """
        if node_id not in self.nodes:
            return
        if not fin:
            self._dark.add(self.address_of[node_id])
        del self.nodes[node_id]
        self._frozen.pop(node_id, None)
        self._stopping.discard(node_id)
        if self._at.get(self.address_of[node_id]) == node_id:
            del self._at[self.address_of[node_id]]
        for owner, peer in [key for key in self._ends if key[0] == node_id]:
            end = self._ends.pop((owner, peer))
            if fin:
                self._send_fin(owner, peer, end)

    def stop(self, node_id: int) -> None:
        """Graceful stop: the node's last words go out, then its connections close."""
        node = self.nodes[node_id]
        self._stopping.add(node_id)
        self._at.pop(self.address_of[node_id], None)
        self._perform(node_id, node.on_stop(self.now))
        self._schedule(self.now + self.delay[1], lambda: self.crash(node_id))

    def freeze(self, node_id: int) -> None:
        """SIGSTOP: no ticks, no handling; its connections stay open."""
        if node_id in self.nodes:
            self._frozen.setdefault(node_id, [])

    def thaw(self, node_id: int) -> None:
        """SIGCONT: what reached the node while frozen is handled now, in order."""
        for held in self._frozen.pop(node_id, []):
            if node_id not in self.nodes or node_id in self._frozen:
                break
            held()

    def slow(self, node_id: int, factor: float, seconds: float) -> None:
        """Make the node's loop ``factor`` times slower for ``seconds`` (see the module docstring)."""
        self._slow[node_id] = (factor, self.now + seconds)

    def late(self, node_id: int) -> float:
        """How far behind the node's loop is now (0 when it keeps up)."""
        return max(0.0, self._busy.get(node_id, self.now) - self.now)

    def partition(self, *sides: Iterable[int | str]) -> None:
        """Split the network: nodes on different sides cannot reach each other.

        Sides are given by node id or address but hold addresses, so a restarted
        node stays on its side. Nodes in no side form one more side together.
        """
        self._side = {
            member if isinstance(member, str) else self.address_of[member]: i
            for i, side in enumerate(sides)
            for member in side
        }

    def heal(self) -> None:
        self._side = {}

    def call_later(self, delay: float, event: Callable[[], None]) -> None:
        """Run ``event`` (a fault, say) ``delay`` virtual seconds from now."""
        self._schedule(self.now + delay, event)

    def act(self, node_id: int, call: Callable[[Any, float], list[Any] | None]) -> None:
        """Call into a node from outside (``call(node, now)``) and carry out what it returns."""
        self._perform(node_id, call(self.nodes[node_id], self.now) or [])

    # -- queries ---------------------------------------------------------------------

    def running(self) -> list[int]:
        """Nodes that are running and not on their way out (frozen ones included)."""
        return [node_id for node_id in self.nodes if node_id not in self._stopping]

    def node_at(self, address: str) -> int | None:
        return self._at.get(address)

    def reachable(self, a: int, b: int) -> bool:
        return self._reach(self.address_of[a], self.address_of[b])

    def connected(self, a: int, b: int) -> bool:
        """Both ends of one link are open between ``a`` and ``b``."""
        end_a, end_b = self._ends.get((a, b)), self._ends.get((b, a))
        return end_a is not None and end_b is not None and end_a.link == end_b.link

    # -- running -----------------------------------------------------------------------

    def step(self) -> bool:
        """Run the next event; False if there is none."""
        if not self._queue:
            return False
        when, _, event = heapq.heappop(self._queue)
        self.now = max(self.now, when)
        event()
        return True

    def run_for(self, seconds: float) -> None:
        end = self.now + seconds
        while self._queue and self._queue[0][0] <= end:
            self.step()
        self.now = end

    def run_until(self, done: Callable[[], bool], timeout: float) -> bool:
        """Run until ``done()`` holds (checked after every event) or ``timeout`` virtual seconds pass."""
        end = self.now + timeout
        while not done():
            if not self._queue or self._queue[0][0] > end:
                self.now = end
                return done()
            self.step()
        return True

    # -- internals -------------------------------------------------------------------

    def _schedule(self, when: float, event: Callable[[], None]) -> None:
        heapq.heappush(self._queue, (when, next(self._order), event))

    def _factor(self, node_id: int) -> float:
        slow = self._slow.get(node_id)
        if slow is None:
            return 1.0
        if self.now >= slow[1]:
            del self._slow[node_id]
            return 1.0
        return slow[0]

    def _to(self, node_id: int, event: Callable[[], None], size: int = 0) -> None:
        """Run ``event`` on a node's loop: at once, or after what a slow loop has queued."""
        busy = self._busy.get(node_id)
        factor = self._factor(node_id)
        if factor == 1.0 and (busy is None or busy <= self.now):
            self._busy.pop(node_id, None)
            self._handle(node_id, event)
            return
        start = max(self.now, busy or self.now)
        self._busy[node_id] = start + factor * (self.work[0] + self.work[1] * size)
        self._schedule(start, lambda: self._handle(node_id, event))

    def _handle(self, node_id: int, event: Callable[[], None]) -> None:
        """Run ``event`` on a node now: dropped if it is gone, held if it is frozen."""
        if node_id not in self.nodes:
            return
        held = self._frozen.get(node_id)
        if held is not None:
            held.append(event)
        else:
            event()

    def _latency(self) -> float:
        return self.rng.uniform(*self.delay)

    def _reach(self, a: str, b: str) -> bool:
        return self._side.get(a, -1) == self._side.get(b, -1)

    def _tick(self, node_id: int) -> None:
        node = self.nodes.get(node_id)
        if node is None:
            return
        if node_id not in self._frozen and node_id not in self._stopping:
            self._to(node_id, lambda: self._ticked(node_id))
        self._schedule(self.now + self.tick_interval * self._factor(node_id), lambda: self._tick(node_id))

    def _ticked(self, node_id: int) -> None:
        node = self.nodes.get(node_id)
        if node is not None and node_id not in self._frozen and node_id not in self._stopping:
            self._perform(node_id, node.on_tick(self.now))

    def _perform(self, node_id: int, actions: list[Any]) -> None:
        for action in actions:
            if node_id not in self.nodes:
                return
            if isinstance(action, Send):
                self._send(node_id, action.peer, action.msg)
            elif isinstance(action, Dial):
                self._dial(node_id, action.address)
            elif isinstance(action, Close):
                self._close(node_id, action.peer)
            else:
                self.effects.append((self.now, node_id, action))

    def _send(self, src: int, dst: int, msg: Message) -> None:
        end = self._ends.get((src, dst))
        if end is None:
            self.stats["unroutable"] += 1  # no connection: node.py drops it too
            return
        frame = encode(msg)
        self.stats["sent"] += 1
        if not self.reachable(src, dst):
            self.stats["partitioned"] += 1
            self.on_lost(msg)
            return
        copies = 2 if self.rng.random() < self.duplicate else 1
        for _ in range(copies):
            if self.rng.random() < self.drop:
                self.stats["dropped"] += 1
                self.on_lost(msg)
                continue
            arrival = self._arrival(end)
            self._schedule(arrival, lambda: self._arrive(src, dst, end.link, frame, msg))

    def _arrival(self, end: _End) -> float:
        arrival = self.now + self._latency()
        rto = self.rto
        while self.loss and self.rng.random() < self.loss:  # lost on the wire: TCP sends it again
            self.stats["retransmitted"] += 1
            arrival += rto
            rto *= 2
        if not self.reorder:
            arrival = end.last_arrival = max(arrival, end.last_arrival)
        return arrival

    def _arrive(self, src: int, dst: int, link: int, frame: bytes, msg: Message) -> None:
        if not self.reachable(src, dst):
            self.stats["partitioned"] += 1
            self.on_lost(msg)
        elif dst not in self.nodes:
            self.on_lost(msg)
            if self.address_of[dst] in self._dark:
                self.stats["unanswered"] += 1
            else:
                self._reset(src, dst, link)
        else:
            self._to(dst, lambda: self._receive(src, dst, link, frame), len(frame))

    def _receive(self, src: int, dst: int, link: int, frame: bytes) -> None:
        end = self._ends.get((dst, src))
        if end is None or end.link != link:
            self._reset(src, dst, link)
            return
        try:
            messages = end.decoder.feed(frame)
        except ProtocolError:
            self.stats["refused"] += 1
            self._close(dst, src)
            return
        node = self.nodes[dst]
        for msg in messages:
            self.stats["delivered"] += 1
            self._perform(dst, node.on_message(src, msg, self.now))
            if self._ends.get((dst, src)) is not end:
                break  # the node closed the connection; the rest of the bytes are lost

    def _reset(self, src: int, dst: int, link: int) -> None:
        """The far end of ``src``'s link is gone: TCP answers with a reset."""
        end = self._ends.get((src, dst))
        if end is not None and end.link == link:
            self._schedule(self.now + self._latency(), lambda: self._to(src, lambda: self._lose(src, dst, link)))

    def _send_fin(self, src: int, dst: int, end: _End) -> None:
        if self.reachable(src, dst):
            arrival = self._arrival(end)
            self._schedule(arrival, lambda: self._fin_arrives(src, dst, end.link))

    def _fin_arrives(self, src: int, dst: int, link: int) -> None:
        if self.reachable(src, dst):
            self._to(dst, lambda: self._lose(dst, src, link))

    def _lose(self, owner: int, peer: int, link: int) -> None:
        """``owner``'s end of ``link`` closes under it."""
        end = self._ends.get((owner, peer))
        if end is None or end.link != link or owner not in self.nodes:
            return
        del self._ends[(owner, peer)]
        self._perform(owner, self.nodes[owner].on_disconnected(peer, self.now))

    def _close(self, owner: int, peer: int) -> None:
        end = self._ends.pop((owner, peer), None)
        if end is None:
            return
        self._send_fin(owner, peer, end)
        self._perform(owner, self.nodes[owner].on_disconnected(peer, self.now))

    def _dial(self, src: int, address: str) -> None:
        dst = self._at.get(address)
        if address in self._dark:
            delay = self.dial_timeout  # nothing answers
        elif dst is None or dst == src:
            delay = self._latency()  # connection refused
        elif not self._reach(self.address_of[src], address) or dst in self._frozen:
            delay = self.dial_timeout  # no answer, or a handshake that never finishes
        else:
            delay = 2 * self._latency()
        self._schedule(self.now + delay, lambda: self._to(src, lambda: self._dialed(src, address)))

    def _dialed(self, src: int, address: str) -> None:
        dst = self._at.get(address)
        src_node = self.nodes[src]
        if dst is None or dst == src or dst in self._frozen or not self._reach(self.address_of[src], address):
            self.stats["dial failed"] += 1
            self._perform(src, src_node.on_dial_failed(address, self.now))
            return
        if self.connected(src, dst):
            # Both sides already hold a working connection: the driver keeps it.
            self._perform(src, src_node.on_dial_failed(address, self.now))
            return
        # A half-open end left from an earlier link is replaced without ceremony.
        link = next(self._links)
        self._ends[(src, dst)] = _End(link, last_arrival=self.now)
        self._ends[(dst, src)] = _End(link, last_arrival=self.now)
        self.stats["connections"] += 1
        self._perform(dst, self.nodes[dst].on_connected(src, self.address_of[src], self.now, None))
        if src in self.nodes and self._ends.get((src, dst)) is not None:
            self._perform(src, src_node.on_connected(dst, address, self.now, address))
